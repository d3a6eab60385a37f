ALTER TABLE queue_job DROP COLUMN interruptions;
ALTER TABLE queue_job DROP COLUMN isolation;
