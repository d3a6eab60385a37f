-- How far a running job says it is (`Env::progress`): written outside the job's transaction,
-- so that it shows while the job runs. No foreign key: its check would wait for the lock the
-- running job holds on its row.
CREATE TABLE queue_job_progress (
    job_id     BIGINT PRIMARY KEY,
    done       BIGINT NOT NULL,
    total      BIGINT NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
