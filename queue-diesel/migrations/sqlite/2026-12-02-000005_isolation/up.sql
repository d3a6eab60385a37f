-- run_alone: the job runs in a transaction of its own from now on, never in a batch (its worker
-- died while it ran, it hung, or it met a database conflict inside a batch).
-- interruptions: runs stopped by something that was not the job's fault (a deadlock, a lost
-- session); the first few do not use up a try.
ALTER TABLE queue_job ADD COLUMN run_alone BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE queue_job ADD COLUMN interruptions INTEGER NOT NULL DEFAULT 0;
