-- Channels an operator paused: no job of theirs (or of a channel below) starts until resumed.
CREATE TABLE queue_channel_pause (
    channel   TEXT PRIMARY KEY,
    paused_at TIMESTAMP NOT NULL
);
