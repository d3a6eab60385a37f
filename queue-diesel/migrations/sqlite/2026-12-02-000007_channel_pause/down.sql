DROP TABLE queue_channel_pause;
