DROP INDEX queue_job_origin;
ALTER TABLE queue_job DROP COLUMN origin;
DROP TABLE queue_schedule;
