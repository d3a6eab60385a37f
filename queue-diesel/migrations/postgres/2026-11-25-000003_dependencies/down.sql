DROP TABLE queue_job_dependency;
ALTER TABLE queue_job DROP COLUMN has_dependents;
