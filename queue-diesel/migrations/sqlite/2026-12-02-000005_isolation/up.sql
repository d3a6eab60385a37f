-- isolation: how far the job is kept apart from other jobs when it runs. 0: it may share a
-- batch; 1: a transaction of its own (it met a database conflict, or hung, in a batch); 2: no
-- other job beside it in its worker (a worker died while running it).
-- interruptions: runs stopped by something that was not the job's fault (a deadlock, a lost
-- session); the first few do not use up a try.
ALTER TABLE queue_job ADD COLUMN isolation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queue_job ADD COLUMN interruptions INTEGER NOT NULL DEFAULT 0;
