-- One row per job. Timestamps are UTC (timestamp without time zone).
CREATE TABLE queue_job (
    id            BIGSERIAL PRIMARY KEY,
    uuid          TEXT      NOT NULL UNIQUE,
    state         TEXT      NOT NULL,
    func          TEXT      NOT NULL,
    model         TEXT      NOT NULL,
    record_ids    TEXT      NOT NULL DEFAULT '[]',
    args          TEXT      NOT NULL DEFAULT '{}',
    context       TEXT      NOT NULL DEFAULT '{}',
    user_id       BIGINT,
    priority      INTEGER   NOT NULL DEFAULT 10,
    eta           TIMESTAMP,
    expected_at   TIMESTAMP,
    channel       TEXT      NOT NULL DEFAULT 'root',
    identity_key  TEXT,
    attempts      INTEGER   NOT NULL DEFAULT 0,
    max_retries   INTEGER   NOT NULL DEFAULT 5,
    description   TEXT      NOT NULL DEFAULT '',
    result        TEXT,
    exc_name      TEXT,
    exc_message   TEXT,
    exc_info      TEXT,
    date_created  TIMESTAMP NOT NULL,
    date_enqueued TIMESTAMP,
    date_started  TIMESTAMP,
    date_done     TIMESTAMP,
    worker_id     TEXT,
    lease_token   TEXT
);

-- The claim reads only pending rows, in claim order: finished rows never enter this index.
CREATE INDEX queue_job_claimable ON queue_job (priority, id) WHERE state = 'pending';
-- Operator views filter by state and show the newest first.
CREATE INDEX queue_job_state ON queue_job (state, id);
