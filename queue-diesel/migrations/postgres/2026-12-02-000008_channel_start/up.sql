-- Recent job starts of channels with a throttle or a rate limit, shared by every worker: a
-- worker records a start here before it claims the job, under a lock per channel.
CREATE TABLE queue_channel_start (
    id         BIGSERIAL PRIMARY KEY,
    channel    TEXT NOT NULL,
    started_at TIMESTAMP NOT NULL
);
CREATE INDEX queue_channel_start_channel ON queue_channel_start (channel, started_at);
