DROP TABLE queue_job;
