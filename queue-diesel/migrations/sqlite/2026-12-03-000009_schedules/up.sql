-- Periodic jobs: the last tick each schedule queued (or dropped), shared by every worker, and
-- the origin of each job a schedule queued.
CREATE TABLE queue_schedule (
    name       TEXT PRIMARY KEY,
    last_tick  TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
ALTER TABLE queue_job ADD COLUMN origin TEXT;
CREATE INDEX queue_job_origin ON queue_job (origin, state) WHERE origin IS NOT NULL;
