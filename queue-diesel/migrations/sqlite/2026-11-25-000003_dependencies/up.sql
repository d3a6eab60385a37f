-- A child job waits (wait_dependencies) until every parent is done.
CREATE TABLE queue_job_dependency (
    child_id  INTEGER NOT NULL REFERENCES queue_job (id) ON DELETE CASCADE,
    parent_id INTEGER NOT NULL REFERENCES queue_job (id) ON DELETE CASCADE,
    PRIMARY KEY (child_id, parent_id)
);
CREATE INDEX queue_job_dependency_parent ON queue_job_dependency (parent_id);
-- Set on a parent when a child is added: finishing a job without children costs nothing more.
ALTER TABLE queue_job ADD COLUMN has_dependents BOOLEAN NOT NULL DEFAULT FALSE;
