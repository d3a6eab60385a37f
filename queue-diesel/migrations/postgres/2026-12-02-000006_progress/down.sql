DROP TABLE queue_job_progress;
