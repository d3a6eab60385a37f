DROP INDEX queue_job_identity_key;
DROP INDEX queue_job_claimable;
CREATE INDEX queue_job_claimable ON queue_job (priority, id) WHERE state = 'pending';
