//! The integration suite: every test runs on SQLite and, when `QUEUE_TEST_POSTGRES_URL` is set,
//! on PostgreSQL.

mod asynchronous;
mod browser;
mod channels;
mod cli;
mod connections;
mod crash;
mod dashboard;
mod dependencies;
mod isolation;
mod limits;
mod metrics;
mod migrations;
mod modes;
mod operator;
mod options;
mod outcomes;
mod progress;
mod rescue;
mod schedules;
mod store;
mod testing;
mod timeouts;
mod tls;
mod unique;
mod worker;
