-- The jobs table churns: every job is inserted, updated once or twice and, after its retention,
-- deleted. Vacuum it after 2 % of its rows changed rather than PostgreSQL's default 20 %, so dead
-- rows are reclaimed while the table is still small, and keep its statistics fresh.
ALTER TABLE queue_job SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 1
);
