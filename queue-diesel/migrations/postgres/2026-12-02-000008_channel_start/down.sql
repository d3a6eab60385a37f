DROP TABLE queue_channel_start;
