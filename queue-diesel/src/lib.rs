//! A job queue that lives in the application's own database, built on Diesel.
//!
//! Mark a model with `#[derive(Model)]` and its methods with `#[queueable]`; then
//! `Partner::queue().priority(30).export(&partners, "erp".into())?` stores a job in the current
//! transaction, capturing the function, the record ids, the JSON arguments, the user and the
//! context. A worker runs it later in its own transaction, with the records re-loaded by id and
//! the user and context restored. Without a worker, queued calls run right after the commit;
//! with `QUEUE_NO_DELAY=1` they run at the call.
//!
//! ```no_run
//! use diesel::prelude::*;
//! use queue_diesel::prelude::*;
//!
//! diesel::table! { partners (id) { id -> BigInt, name -> Text } }
//!
//! #[derive(Queryable, Selectable, Model)]
//! #[diesel(table_name = partners)]
//! #[queue(model = "res.partner")]
//! pub struct Partner { pub id: i64, pub name: String }
//!
//! #[queueable]
//! impl Partner {
//!     /// Export partners to the ERP.
//!     #[job(channel = "root.export", max_retries = 3)]
//!     pub fn export(records: Vec<Partner>, env: &Env, target: String) -> JobResult {
//!         for partner in &records {
//!             println!("user {:?} exports {} to {target}", env.user_id(), partner.name);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> Result<(), queue_diesel::Error> {
//! let db = Database::open_default()?; // DATABASE_URL, else ./queue.sqlite3; migrates
//! db.transaction(Context::user(7).with("lang", "fr"), |env| {
//!     let list = partners::table.select(Partner::as_select()).load(&mut *env.conn())?;
//!     Partner::queue().priority(30).export(&list, "erp".into())?;
//!     Ok::<_, queue_diesel::Error>(())
//! })?;
//! # Ok(()) }
//! ```
//!
//! ## Where things are
//!
//! The public surface is what the crate root re-exports, plus [`cli`], [`testing`] and
//! [`migrations`]. Inside, imports run one way: connection → store → database → running a job →
//! worker, maintenance, CLI.
//!
//! | room | what |
//! |---|---|
//! | `connection` | [`AnyConnection`], the connection types jobs may ask for, transactions |
//! | `store` | the storage seam: every SQL statement of the queue, one driver per backend |
//! | `database` | [`Database`]: open a pool from a URL (SQLite default), migrate, settings |
//! | `transaction` | the ambient transaction and its [`Env`] |
//! | `delay` | what a queued call does |
//! | `function` | the registry of job functions and how one is called |
//! | `run` | running a job, the one way every path uses: batches, jobs run alone |
//! | `worker` | [`Worker`]: claim under channel capacities, hand out work, watch it, shut down |
//! | `liveness` | how a worker shows it is alive and records what it runs, without writes |
//! | `maintenance` | rescue of jobs whose worker is gone, pruning of old jobs |
//! | [`cli`] | the `queue-worker` command, reusable in an application's own worker binary |
//! | [`metrics`] | Prometheus metrics of the jobs a process runs, and of its queue |
//! | `dashboard` | the web dashboard (feature `dashboard`) |
//! | [`testing`] | trap, assert and perform queued jobs in an application's tests |
//!
//! ## Features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `sqlite` | yes | SQLite, through Diesel's `SqliteConnection` |
//! | `postgres` | yes | PostgreSQL, through Diesel's `PgConnection` (libpq) |
//! | `bundled` | yes | build SQLite, and with `postgres` libpq and OpenSSL (TLS), from source: no system library needed |
//! | `cli` | yes | the `queue-worker` command line ([`cli`]); brings `sqlite` and `metrics` |
//! | `metrics` | with `cli` | Prometheus metrics ([`metrics`]) |
//! | `dashboard` | no | the web dashboard (`dashboard`; with `cli`, `queue-worker dashboard` and `run --dashboard`) |
//! | `tokio` | no | async job methods run inside a Tokio runtime; `Database::spawn_transaction` for async handlers |
//! | `internals` | no | the storage, liveness and maintenance internals, for this project's own tests and benchmark; not a stable API |
//!
//! Without `bundled`, `sqlite` links the system's SQLite and `postgres` the system's libpq (with
//! its own TLS). A URL of a backend left out of the build is refused with the feature to enable.
#![deny(missing_docs)]

/// A module that is private, or public but hidden with the `internals` feature (for the
/// project's own tests and benchmark).
macro_rules! internal {
    ($($name:ident),* $(,)?) => {$(
        #[cfg(feature = "internals")]
        #[doc(hidden)]
        pub mod $name;
        #[cfg(not(feature = "internals"))]
        mod $name;
    )*};
}

pub mod asynchronous;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "dashboard")]
pub mod dashboard;
#[cfg(feature = "metrics")]
pub mod metrics;
mod progress;
pub use progress::Progress;
/// Without the `metrics` feature, nothing is counted.
#[cfg(not(feature = "metrics"))]
pub(crate) mod metrics {
    use std::time::Duration;

    use queue_core::JobState;

    pub(crate) fn job_started(_function: &str, _channel: &str, _latency: Duration) {}
    pub(crate) fn job_ran(_function: &str, _channel: &str, _took: Duration) {}
    pub(crate) fn job_ended(_function: &str, _channel: &str, _state: JobState) {}
    pub(crate) fn job_rescued(_function: &str, _channel: &str) {}
    pub(crate) fn batch_ran(_jobs: usize) {}
    pub(crate) fn job_progress(_uuid: &queue_core::JobId, _function: &str, _ratio: f64) {}
    pub(crate) fn job_progress_end(_uuid: &str, _function: &str) {}
}
mod connection;
mod delay;
mod error;
mod function;
mod model;
mod notify;
mod run;
pub mod schedule;
pub mod testing;
mod transaction;
internal!(database, liveness, maintenance, schema, store, worker);

/// The queue's schema as SQL, for applications that keep it in their own migrations (see
/// `queue-worker migrate --print`).
pub mod migrations {
    pub use crate::store::schema::{Step, script, steps};
}

pub use connection::{AnyConnection, AsJobConnection, Backend, JobConnection, MultiBackend};
pub use database::{Database, DatabaseBuilder, PooledConn};
pub use delay::{JobHandle, bulk};
pub use error::{Error, Result};
pub use function::{JobFunction, registry};
pub use maintenance::Retention;
pub use maintenance::schedules::{ScheduleOutcome, ScheduleView, Scheduler};
pub use model::{LoadRecords, Model, NoRecords, Records};
pub use queue_core::{
    self as core, ChannelConfig, Clock, Context, Eta, Job, JobError, JobId, JobOptions, JobResult, JobState,
    MockClock, OperatorAction, SystemClock,
};
pub use queue_derive::{Model, queueable};
pub use store::{ChannelStats, Conflict, Family, ListParams, Stats, sqlstate};
pub use transaction::{ConnGuard, Env, current_env, in_transaction, with_env};
pub use worker::{Shutdown, Worker, WorkerConfig, WorkerStats};

/// What an application module needs: `use queue_diesel::prelude::*;`.
pub mod prelude {
    pub use crate::{Context, Database, Env, JobError, JobHandle, JobResult, Model, NoRecords, queueable};
}

/// Used by the code the macros generate; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::asynchronous::block_on;
    pub use crate::delay::enqueue;
    pub use crate::function::{
        Invocation, JobFunction, JobReturn, Registration, arg, encode_arg, load_records, typed_env,
    };
    pub use crate::model::{LoadRecords, Model, NoRecords, Records};
    pub use crate::schedule::{CatchUp, Schedule, ScheduleResult, Tick};
    pub use crate::{AnyConnection, Env, Error, JobConnection, JobHandle};
    pub use diesel;
    pub use inventory;
    pub use queue_core::options::{FunctionDefaults, JobOptions, Unique};
    pub use queue_core::{Eta, JobResult};
    pub use serde_json::{Map, Value};
}

/// The README's examples, compiled with the doc tests (fragments are marked `ignore`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
