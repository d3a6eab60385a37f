-- Claim order: priority, then the deadline (expected_at) or the moment the job became due (eta,
-- else creation), then creation. The claim's ORDER BY repeats this expression to use the index.
DROP INDEX queue_job_claimable;
CREATE INDEX queue_job_claimable ON queue_job (priority, (COALESCE(expected_at, eta, date_created)), id)
    WHERE state = 'pending';

-- At most one job per identity key among those that have never started (a job waiting for a
-- retry has run already: it does not hold its key).
CREATE UNIQUE INDEX queue_job_identity_key ON queue_job (identity_key)
    WHERE identity_key IS NOT NULL AND date_started IS NULL
      AND state IN ('wait_dependencies', 'pending', 'enqueued');
