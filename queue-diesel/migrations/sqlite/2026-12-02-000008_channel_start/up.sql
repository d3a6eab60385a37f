-- Recent job starts of channels with a throttle or a rate limit, shared by every worker: a
-- worker records a start here before it claims the job, under the database's write lock.
CREATE TABLE queue_channel_start (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    channel    TEXT NOT NULL,
    started_at TIMESTAMP NOT NULL
);
CREATE INDEX queue_channel_start_channel ON queue_channel_start (channel, started_at);
