//! The one storage seam the worker, the transaction code and the CLI speak to.
//!
//! [`Store`] is implemented for [`AnyConnection`]: portable statements are written once with
//! Diesel's DSL and compiled for each backend by `with_backend!`; what differs by backend (row
//! locks, advisory locks, notifications, ending a session, reading an error's SQLSTATE) lives
//! in one file per backend. Methods are named noun first and take one params struct where they
//! take more than one value. The implementations are grouped by family: [`claim`](self) (taking
//! jobs), `finish` (storing how runs ended), `jobs` (inserting, reading, operator changes,
//! maintenance).

mod claim;
mod conflict;
mod finish;
mod jobs;
mod limits;
mod params;
mod pauses;
mod progress;
#[cfg(feature = "postgres")]
mod postgres;
mod rows;
mod schedules;
pub mod schema;
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
mod views;

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use queue_core::{Job, JobId, JobState, NewJob};

pub use conflict::{Conflict, sqlstate};
pub use params::*;
pub use rows::RunRow;
pub use views::{ChannelStats, Family, Stats, Views};

use crate::connection::{AnyConnection, Backend};
use crate::error::{Error, Result};

/// A row type the queue's raw statements load, on every backend compiled in.
#[cfg(all(feature = "sqlite", feature = "postgres"))]
trait Row: QueryableByName<diesel::sqlite::Sqlite> + QueryableByName<diesel::pg::Pg> + 'static {}
#[cfg(all(feature = "sqlite", feature = "postgres"))]
impl<T: QueryableByName<diesel::sqlite::Sqlite> + QueryableByName<diesel::pg::Pg> + 'static> Row for T {}
#[cfg(all(feature = "sqlite", not(feature = "postgres")))]
trait Row: QueryableByName<diesel::sqlite::Sqlite> + 'static {}
#[cfg(all(feature = "sqlite", not(feature = "postgres")))]
impl<T: QueryableByName<diesel::sqlite::Sqlite> + 'static> Row for T {}
#[cfg(all(feature = "postgres", not(feature = "sqlite")))]
trait Row: QueryableByName<diesel::pg::Pg> + 'static {}
#[cfg(all(feature = "postgres", not(feature = "sqlite")))]
impl<T: QueryableByName<diesel::pg::Pg> + 'static> Row for T {}

/// PostgreSQL channel the queue's NOTIFY wake-ups are sent on.
#[cfg(feature = "postgres")]
pub const NOTIFY_CHANNEL: &str = "queue_job";

/// First key of the PostgreSQL advisory lock a worker holds on a job while it ends the job's
/// session and stores its outcome (the second key is the job's id): rescuers leave such a job
/// alone.
const SETTLE_LOCK: i32 = 0x7173_6574; // "qset"

/// The queue's storage operations.
pub trait Store {
    /// Take up to `limit` claimable jobs (pending, eta passed), in claim order, mark them
    /// `started` under the claim's lease (their try counted) and return them.
    fn job_claim(&mut self, params: &ClaimParams<'_>) -> Result<Vec<RunRow>>;
    /// The claimable jobs at the head of a channel, in claim order, locked by the current
    /// transaction without changing them (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite's write
    /// lock, taken by `BEGIN IMMEDIATE`, already excludes every other writer). A batch runs
    /// them in this transaction; an alone claim takes the first ones with [`Store::job_take`].
    fn job_claim_head(&mut self, params: &ClaimParams<'_>) -> Result<Vec<RunRow>>;
    /// Make this connection ready for [`Store::job_claim_head`] with `params`, reading no row
    /// and taking no lock: the statement is prepared (PostgreSQL also loads the table's
    /// metadata into the session), so a first claim costs what later ones do.
    fn job_claim_head_prepare(&mut self, params: &ClaimParams<'_>) -> Result<()>;
    /// Take one free slot of each channel of `slots` (with its capacity) for the current
    /// transaction, as a head claim does ([`ClaimParams::slots`]): `false` when one has none
    /// free. Slots the transaction holds already count as free. SQLite: always `true`.
    fn channel_slots_hold(&mut self, slots: &[(String, usize)]) -> Result<bool>;
    /// Claim for a sequential channel (`params.channel`): only the jobs at the head of its claim
    /// order, and none past a failed job (it blocks the channel until an operator acts) or a job
    /// not due yet. Serialised per channel across workers.
    fn job_claim_sequential(&mut self, params: &ClaimParams<'_>) -> Result<Vec<RunRow>>;
    /// Mark these `pending` jobs (chosen from the head) `started` under the claim's lease.
    fn job_take(&mut self, params: &ClaimParams<'_>, ids: &[i64]) -> Result<Vec<RunRow>>;
    /// Take the right to start up to `want` jobs of the configured channel `channel` now under
    /// its throttle and rate limit, across every worker; one id per start granted.
    fn channel_starts_reserve(
        &mut self,
        channel: &str,
        limits: &queue_core::channel::Limits,
        want: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>>;
    /// Give back starts taken with [`Store::channel_starts_reserve`] but not used.
    fn channel_starts_release(&mut self, ids: &[i64]) -> Result<()>;
    /// Pause `channel` (and every channel below it); false when it was paused already.
    fn channel_pause(&mut self, channel: &str, now: DateTime<Utc>) -> Result<bool>;
    /// Resume `channel`; false when it was not paused (itself).
    fn channel_resume(&mut self, channel: &str) -> Result<bool>;
    /// The channels paused, and since when.
    fn channels_paused(&mut self) -> Result<Vec<(String, DateTime<Utc>)>>;
    /// Inside a transaction: hold the schedule `name` until the transaction ends (another
    /// worker's pass on it waits) and read the last tick recorded for it.
    fn schedule_hold(&mut self, name: &str) -> Result<Option<DateTime<Utc>>>;
    /// Record `tick` as the last tick of the schedule `name` that is queued or dropped.
    fn schedule_record(&mut self, name: &str, tick: DateTime<Utc>, now: DateTime<Utc>) -> Result<()>;
    /// The schedules recorded, by name, with their last tick.
    fn schedules_recorded(&mut self) -> Result<Vec<(String, DateTime<Utc>)>>;
    /// True when a job of `origin` is not finished yet (waiting, pending or started).
    fn job_unfinished_of(&mut self, origin: &str) -> Result<bool>;
    /// Store the progress jobs reported (by row id), outside their transactions.
    fn job_progress_save(&mut self, reports: &[(i64, crate::progress::Progress)]) -> Result<()>;
    /// The progress job `id` last reported.
    fn job_progress(&mut self, id: i64) -> Result<Option<crate::progress::Progress>>;
    /// Take up to `want` of the `capacity` slots of `channel` that all workers share, skipping
    /// the `held` ones: PostgreSQL session advisory locks, freed by [`Store::channel_slots_release`]
    /// or when the connection ends (a crashed worker frees its slots by itself). On SQLite, whose
    /// single writer already runs one job at a time, every slot asked for is granted.
    fn channel_slots_acquire(
        &mut self,
        channel: &str,
        capacity: usize,
        want: usize,
        held: &[usize],
    ) -> Result<Vec<usize>>;
    /// Give back channel slots taken with [`Store::channel_slots_acquire`].
    fn channel_slots_release(&mut self, channel: &str, slots: &[usize]) -> Result<()>;
    /// Inside a batch transaction: mark jobs run by the batch `done`, their try counted, in one
    /// statement, then store the results of those that returned one and release the children of
    /// those that had dependents. Returns how many children were released.
    fn job_done_many(&mut self, params: &DoneParams<'_>) -> Result<usize>;
    /// Store how a run ended: its state, tries, delay, result or error, in the run's own
    /// transaction while the job is still held. False when it no longer is (its lease was lost,
    /// an operator changed it).
    fn job_settle(&mut self, params: &SettleParams<'_>) -> Result<bool>;
    /// Where a job stands, its row locked for the transaction (PostgreSQL).
    fn job_standing(&mut self, id: i64) -> Result<Option<Standing>>;
    /// Delete up to `limit` jobs in one of `states` that finished before `before`, oldest
    /// first, with their dependency links. Returns how many were deleted.
    fn job_prune(&mut self, params: &PruneParams<'_>) -> Result<usize>;
    /// Take the right to prune for the current transaction: `false` while another session
    /// holds it (PostgreSQL: a transaction advisory lock, so concurrent workers do not delete
    /// the same rows; SQLite's single writer already serializes them: always `true`).
    fn job_prune_lock(&mut self) -> Result<bool>;
    /// Refresh the planner's statistics of the jobs table (PostgreSQL `ANALYZE`; nothing on
    /// SQLite, whose claims name their index).
    fn table_analyze(&mut self) -> Result<()>;
    /// Inside a batch transaction: set the start of the selected jobs that have an identity key,
    /// so that their key is free for a new job as soon as the batch commits (a caller queueing
    /// the same key meanwhile waits for that commit, then queues anew; the job itself may queue
    /// its successor under its own key).
    fn job_free_keys(&mut self, ids: &[i64], started: DateTime<Utc>) -> Result<()>;
    /// Count jobs per state.
    #[cfg_attr(not(any(feature = "cli", feature = "internals")), allow(dead_code))]
    fn job_count_by_state(&mut self) -> Result<Vec<(JobState, i64)>>;
    /// One job by uuid.
    fn job_get(&mut self, uuid: &JobId) -> Result<Option<Job>>;
    /// Insert new jobs: `pending`, or `wait_dependencies` for a job whose parents are not all done
    /// (a job whose parent was cancelled is inserted `cancelled`). With `wake`, workers listening
    /// for new jobs are woken at commit, in the same round trip where the backend allows
    /// (PostgreSQL: the insert carries its `pg_notify`).
    fn job_insert_many(&mut self, jobs: &[NewJob], wake: bool) -> Result<()>;
    /// Insert a job that has an identity key, unless a job with that key has not started yet:
    /// then nothing is inserted and that job's uuid is returned (with `false`). The database's
    /// unique index decides, so concurrent callers agree.
    fn job_insert_unique(&mut self, job: &NewJob) -> Result<(JobId, bool)>;
    /// Jobs, newest first.
    fn job_list(&mut self, params: &ListParams) -> Result<Vec<Job>>;
    /// Inside a job's transaction, before its body: lock its row for the run (PostgreSQL), which
    /// tells the rescuer the worker is alive. False when the claim no longer holds (the job was
    /// rescued or cancelled meanwhile): the body must not run.
    fn job_lock_running(&mut self, id: i64, lease_token: &str) -> Result<bool>;
    /// Wake the workers listening for new jobs (PostgreSQL NOTIFY, sent at commit).
    fn job_notify(&mut self) -> Result<()>;
    /// Move a job from `from` to `to` for an operator; false when it was no longer in `from`.
    /// To `pending` starts the job afresh: no tries, no eta, no error, no result.
    fn job_set_state(&mut self, params: &SetStateParams<'_>) -> Result<bool>;
    /// Put `started` jobs whose worker is gone back to `pending` (their try counted, to run
    /// alone from now on), or fail them when their tries are spent. Returns each rescued job's
    /// id and new state.
    fn job_rescue_orphaned(&mut self, params: &RescueParams<'_>) -> Result<Vec<Rescued>>;
    /// Workers of the jobs `started` before `cutoff` (for the SQLite rescuer's liveness check).
    fn job_started_workers(&mut self, cutoff: DateTime<Utc>) -> Result<Vec<String>>;
    /// Give jobs back (`started` → `pending`) without counting the try, if the lease holds.
    fn job_release(&mut self, ids: &[i64], lease_token: &str) -> Result<usize>;
    /// Hold job `id` while this connection settles it from outside its run (PostgreSQL: an
    /// advisory lock that rescuers respect), until [`Store::job_settle_unlock`].
    fn job_settle_lock(&mut self, id: i64) -> Result<()>;
    /// End [`Store::job_settle_lock`].
    fn job_settle_unlock(&mut self, id: i64) -> Result<()>;
    /// Inside a transaction: a savepoint that a job's writes can be rolled back to.
    fn savepoint_take(&mut self) -> Result<()>;
    /// Roll back to the latest savepoint of [`Store::savepoint_take`] (it stays, empty).
    fn savepoint_rollback(&mut self) -> Result<()>;
    /// How to reach this connection's session from another thread.
    fn session(&mut self) -> Result<Session>;
    /// End `session` (another connection's): its statement stops, its transaction rolls back,
    /// its locks are freed. PostgreSQL terminates the backend from this connection; SQLite rolls
    /// the other connection back in place and makes it refuse writes.
    fn session_end(&mut self, session: Session) -> Result<()>;
    /// Settings of a connection that runs jobs: PostgreSQL's `idle_in_transaction_session_timeout`
    /// must not end a transaction in which a job is working outside the database.
    fn session_prepare_for_jobs(&mut self) -> Result<()>;
    /// Settings of a connection that only claims jobs under a lease: on PostgreSQL its commits
    /// need not wait for the disk (the run that follows commits after it, and a commit that
    /// reaches the disk takes every earlier one with it; a claim lost in a server crash is a job
    /// that never started).
    fn session_prepare_for_claims(&mut self) -> Result<()>;
    /// Create or update the queue's tables.
    fn schema_migrate(&mut self, on_step: schema::OnStep<'_>) -> Result<()>;
}

/// What a transaction lock serializes until the transaction ends.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
enum TxLock<'a> {
    /// The callers queueing jobs with this identity key.
    IdentityKey(&'a str),
    /// The workers taking starts of this channel.
    ChannelStarts(&'a str),
    /// The workers queueing the ticks of this schedule.
    Schedule(&'a str),
    /// The claims of this sequential channel.
    Sequential(&'a str),
}

impl AnyConnection {
    /// Run a statement built as text on either backend and load its rows.
    fn load_sql<T: Row>(&mut self, sql: &sql::Sql, what: &'static str) -> Result<Vec<T>> {
        match self {
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(c) => sqlite::load(c, sql),
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(c) => postgres::load(c, sql),
        }
        .map_err(Error::query(what))
    }

    /// Serialize what `lock` names until the current transaction ends (PostgreSQL: a
    /// transaction advisory lock; SQLite's one writer already does).
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    fn transaction_lock(&mut self, lock: TxLock<'_>) -> Result<()> {
        match self {
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(_) => Ok(()),
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(c) => postgres::transaction_lock(c, lock),
        }
    }

    /// Lock the rows of `ids` for the transaction unless another transaction holds one of
    /// them (none is waited for): `false` then (PostgreSQL). SQLite's writer already holds
    /// every row: `true`.
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    fn rows_lock_all(&mut self, ids: &[i64]) -> Result<bool> {
        match self {
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(_) => Ok(true),
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(c) => postgres::rows_lock_all(c, ids),
        }
    }

    /// Most savepoints one transaction should take: PostgreSQL keeps the subtransactions of a
    /// transaction in a per-session cache of 64; past it, every other session's snapshots get
    /// slower. The bound leaves room for the savepoints job bodies take themselves. SQLite has
    /// no such cache.
    pub(crate) fn savepoint_budget(&self) -> usize {
        match self {
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(_) => usize::MAX,
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(_) => 32,
        }
    }
}

impl Store for AnyConnection {
    fn job_claim(&mut self, params: &ClaimParams<'_>) -> Result<Vec<RunRow>> {
        claim::leased(self, params)
    }

    fn job_claim_head(&mut self, params: &ClaimParams<'_>) -> Result<Vec<RunRow>> {
        claim::head(self, params)
    }

    fn job_claim_head_prepare(&mut self, params: &ClaimParams<'_>) -> Result<()> {
        claim::prepare_head(self, params)
    }

    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    fn channel_slots_hold(&mut self, slots: &[(String, usize)]) -> Result<bool> {
        match self {
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(_) => Ok(true),
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(c) => postgres::slots_hold(c, slots),
        }
    }

    fn job_claim_sequential(&mut self, params: &ClaimParams<'_>) -> Result<Vec<RunRow>> {
        claim::sequential(self, params)
    }

    fn job_take(&mut self, params: &ClaimParams<'_>, ids: &[i64]) -> Result<Vec<RunRow>> {
        claim::take(self, params, ids)
    }

    fn channel_starts_reserve(
        &mut self,
        channel: &str,
        limits: &queue_core::channel::Limits,
        want: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>> {
        limits::reserve(self, channel, limits, want, now)
    }

    fn channel_starts_release(&mut self, ids: &[i64]) -> Result<()> {
        limits::release(self, ids)
    }

    fn schedule_hold(&mut self, name: &str) -> Result<Option<DateTime<Utc>>> {
        schedules::hold(self, name)
    }

    fn schedule_record(&mut self, name: &str, tick: DateTime<Utc>, now: DateTime<Utc>) -> Result<()> {
        schedules::record(self, name, tick, now)
    }

    fn schedules_recorded(&mut self) -> Result<Vec<(String, DateTime<Utc>)>> {
        schedules::recorded(self)
    }

    fn job_unfinished_of(&mut self, origin: &str) -> Result<bool> {
        schedules::unfinished(self, origin)
    }

    fn channel_pause(&mut self, channel: &str, now: DateTime<Utc>) -> Result<bool> {
        pauses::pause(self, channel, now)
    }

    fn channel_resume(&mut self, channel: &str) -> Result<bool> {
        pauses::resume(self, channel)
    }

    fn channels_paused(&mut self) -> Result<Vec<(String, DateTime<Utc>)>> {
        pauses::paused(self)
    }

    fn job_progress_save(&mut self, reports: &[(i64, crate::progress::Progress)]) -> Result<()> {
        progress::save(self, reports)
    }

    fn job_progress(&mut self, id: i64) -> Result<Option<crate::progress::Progress>> {
        progress::get(self, id)
    }

    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    fn channel_slots_acquire(
        &mut self,
        channel: &str,
        capacity: usize,
        want: usize,
        held: &[usize],
    ) -> Result<Vec<usize>> {
        match self {
            // One writer at a time: SQLite itself keeps every channel within its capacity.
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(_) => Ok((0..want).collect()),
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(c) => postgres::slots_acquire(c, channel, capacity, want, held),
        }
    }

    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    fn channel_slots_release(&mut self, channel: &str, slots: &[usize]) -> Result<()> {
        match self {
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(_) => Ok(()),
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(c) => postgres::slots_release(c, channel, slots),
        }
    }

    fn job_done_many(&mut self, params: &DoneParams<'_>) -> Result<usize> {
        finish::done_many(self, params)
    }

    fn job_settle(&mut self, params: &SettleParams<'_>) -> Result<bool> {
        finish::settle(self, params)
    }

    fn job_standing(&mut self, id: i64) -> Result<Option<Standing>> {
        finish::standing(self, id)
    }

    fn job_prune(&mut self, params: &PruneParams<'_>) -> Result<usize> {
        jobs::prune(self, params)
    }

    fn job_prune_lock(&mut self) -> Result<bool> {
        match self {
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(_) => Ok(true),
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(c) => postgres::prune_lock(c),
        }
    }

    fn table_analyze(&mut self) -> Result<()> {
        match self {
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(_) => Ok(()),
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(c) => postgres::analyze(c),
        }
    }

    fn job_free_keys(&mut self, ids: &[i64], started: DateTime<Utc>) -> Result<()> {
        claim::free_keys(self, ids, started)
    }

    fn job_count_by_state(&mut self) -> Result<Vec<(JobState, i64)>> {
        jobs::count_by_state(self)
    }

    fn job_get(&mut self, uuid: &JobId) -> Result<Option<Job>> {
        jobs::get(self, uuid)
    }

    fn job_insert_many(&mut self, new: &[NewJob], wake: bool) -> Result<()> {
        jobs::insert_many(self, new, wake)
    }

    fn job_insert_unique(&mut self, job: &NewJob) -> Result<(JobId, bool)> {
        jobs::insert_unique(self, job)
    }

    fn job_list(&mut self, params: &ListParams) -> Result<Vec<Job>> {
        jobs::list(self, params)
    }

    fn job_lock_running(&mut self, id: i64, lease_token: &str) -> Result<bool> {
        finish::lock_running(self, id, lease_token)
    }

    fn job_notify(&mut self) -> Result<()> {
        match self {
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(_) => Ok(()),
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(c) => postgres::notify(c),
        }
    }

    fn job_set_state(&mut self, params: &SetStateParams<'_>) -> Result<bool> {
        jobs::set_state(self, params)
    }

    fn job_rescue_orphaned(&mut self, params: &RescueParams<'_>) -> Result<Vec<Rescued>> {
        jobs::rescue_orphaned(self, params)
    }

    fn job_started_workers(&mut self, cutoff: DateTime<Utc>) -> Result<Vec<String>> {
        jobs::started_workers(self, cutoff)
    }

    fn job_release(&mut self, ids: &[i64], lease_token: &str) -> Result<usize> {
        finish::release(self, ids, lease_token)
    }

    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    fn job_settle_lock(&mut self, id: i64) -> Result<()> {
        match self {
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(_) => Ok(()),
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(c) => postgres::settle_lock(c, id, true),
        }
    }

    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    fn job_settle_unlock(&mut self, id: i64) -> Result<()> {
        match self {
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(_) => Ok(()),
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(c) => postgres::settle_lock(c, id, false),
        }
    }

    fn savepoint_take(&mut self) -> Result<()> {
        self.batch("SAVEPOINT queue_job").map_err(Error::query("take a savepoint for a job"))
    }

    fn savepoint_rollback(&mut self) -> Result<()> {
        self.batch("ROLLBACK TO SAVEPOINT queue_job").map_err(Error::query("roll a job's writes back"))
    }

    fn session(&mut self) -> Result<Session> {
        match self {
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(c) => sqlite::session(c),
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(c) => postgres::session(c),
        }
    }

    fn session_end(&mut self, session: Session) -> Result<()> {
        match (self, session) {
            #[cfg(feature = "sqlite")]
            (_, Session::Sqlite(handle)) => sqlite::session_end(handle),
            #[cfg(feature = "postgres")]
            (AnyConnection::Postgres(c), Session::Postgres(pid)) => postgres::session_end(c, pid),
            #[cfg(all(feature = "sqlite", feature = "postgres"))]
            (AnyConnection::Sqlite(_), Session::Postgres(_)) => {
                Err(Error::Config("a PostgreSQL session cannot be ended from a SQLite connection".into()))
            }
        }
    }

    fn session_prepare_for_jobs(&mut self) -> Result<()> {
        match self {
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(_) => Ok(()),
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(c) => postgres::prepare(c, "SET idle_in_transaction_session_timeout = 0"),
        }
    }

    fn session_prepare_for_claims(&mut self) -> Result<()> {
        match self {
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(_) => Ok(()),
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(c) => postgres::prepare(c, "SET synchronous_commit = off"),
        }
    }

    fn schema_migrate(&mut self, on_step: schema::OnStep<'_>) -> Result<()> {
        match self {
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(c) => sqlite::schema_migrate(c, on_step),
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(c) => postgres::schema_migrate(c, on_step),
        }
    }
}

/// Open a connection to `url` (of `backend`) with the session settings the queue needs.
pub(crate) fn connect(url: &str, backend: Backend) -> Result<AnyConnection> {
    let connect_err = |e: diesel::ConnectionError| Error::Connect {
        url: crate::database::redact(url),
        source: Box::new(e),
    };
    match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            let c = sqlite::establish(path).map_err(connect_err)?;
            sqlite::configure(c).map(AnyConnection::Sqlite)
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres => postgres::establish(url).map(AnyConnection::Postgres).map_err(connect_err),
        #[allow(unreachable_patterns, reason = "reached when a backend's feature is off")]
        other => Err(Error::Config(format!(
            "this build of queue-diesel has no {} support: enable its `{}` feature",
            other.name(),
            other.name()
        ))),
    }
}

/// A channel's 32-bit key for PostgreSQL advisory locks (FNV-1a of its name): stable across
/// processes and versions.
#[cfg(feature = "postgres")]
pub fn channel_key(channel: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in channel.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    i32::from_ne_bytes(hash.to_ne_bytes())
}
