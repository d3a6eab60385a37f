//! Opening the database: URL → backend → connection pool, migrations, run-mode settings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::r2d2::{self, ManageConnection, Pool, PooledConnection, R2D2Connection};
use queue_core::context::is_truthy;
use queue_core::options::{DEFAULT_BATCH_SIZE, DEFAULT_MAX_ARGS_BYTES};
use queue_core::{Clock, Context, Job, JobId, OperatorAction, SystemClock};

use crate::connection::{AnyConnection, Backend};
use crate::error::{Error, Result};
use crate::store::{Family, ListParams, SetStateParams, Stats, Store, Views};
use crate::transaction::{self, Env};

/// Database used when `DATABASE_URL` is not set: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "queue.sqlite3";
/// Connections kept by the pool when nothing else is configured.
pub const DEFAULT_POOL_SIZE: u32 = 10;

/// A pooled connection of the queue.
pub type PooledConn = PooledConnection<Manager>;

/// A pooled connection that answered a ping this recently is handed out without another.
const TRUSTED_FOR: Duration = Duration::from_secs(1);

/// When a pooled connection last answered a ping (kept with it in the pool).
struct Answered(Instant);

/// Hides the password of a database URL for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Opens connections of one backend for the pool, with the session settings the queue needs.
#[derive(Clone)]
pub struct Manager {
    url: String,
    backend: Backend,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").field("url", &redact(&self.url)).field("backend", &self.backend).finish()
    }
}

impl Manager {
    fn connect(&self) -> Result<AnyConnection> {
        crate::store::connect(&self.url, self.backend)
    }
}

impl ManageConnection for Manager {
    type Connection = AnyConnection;
    type Error = Error;

    fn connect(&self) -> Result<AnyConnection> {
        Manager::connect(self)
    }

    fn is_valid(&self, conn: &mut AnyConnection) -> Result<()> {
        conn.ping().map_err(Error::query("check a pooled connection"))
    }

    fn has_broken(&self, conn: &mut AnyConnection) -> bool {
        std::thread::panicking() || conn.is_broken()
    }
}

/// How a [`Database`] is opened.
#[derive(Clone)]
pub struct DatabaseBuilder {
    url: String,
    worker: bool,
    no_delay: bool,
    pool_size: u32,
    keep_idle: bool,
    migrate: bool,
    batch_size: usize,
    max_args_bytes: usize,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for DatabaseBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseBuilder")
            .field("url", &redact(&self.url))
            .field("worker", &self.worker)
            .field("no_delay", &self.no_delay)
            .field("pool_size", &self.pool_size)
            .field("migrate", &self.migrate)
            .finish()
    }
}

impl DatabaseBuilder {
    /// A worker runs the jobs: rows wait for it (instead of running after commit).
    pub fn worker(mut self, configured: bool) -> Self {
        self.worker = configured;
        self
    }

    /// Run every queued call synchronously, at the call (tests, debugging).
    pub fn no_delay(mut self, no_delay: bool) -> Self {
        self.no_delay = no_delay;
        self
    }

    /// Connections in the pool.
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// Keep an idle connection ready in the pool (the default), opened in the background when
    /// one is taken. A short-lived program turns it off: a connection still being opened when
    /// the process exits can crash it (libpq's TLS is torn down under it).
    pub fn keep_idle(mut self, keep: bool) -> Self {
        self.keep_idle = keep;
        self
    }

    /// Records per job when a context asks for `queue_batch: true` (default 20).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// Largest encoded arguments a queued call may carry (default 1 MiB); larger calls are
    /// refused at the call.
    pub fn max_args_bytes(mut self, bytes: usize) -> Self {
        self.max_args_bytes = bytes;
        self
    }

    /// Apply pending migrations when opening (default: yes).
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Where "now" comes from (tests use a `MockClock`).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Connect, migrate, and return the database.
    pub fn open(self) -> Result<Database> {
        let backend = Backend::from_url(&self.url)?;
        if backend == Backend::Sqlite && self.url.contains(":memory:") {
            return Err(Error::Config(
                "an in-memory SQLite database cannot be shared by a pool and a worker: use a file path"
                    .into(),
            ));
        }
        let manager = Manager { url: self.url.clone(), backend };
        // Fail fast with the driver's own message rather than r2d2's timeout.
        let first = manager.connect()?;
        drop(first);
        let pool = Pool::builder()
            .max_size(self.pool_size)
            .min_idle(Some(u32::from(self.keep_idle)))
            .connection_timeout(Duration::from_secs(30))
            // Database::conn pings a connection only when it has not answered for a while.
            .test_on_check_out(false)
            .error_handler(Box::new(r2d2::LoggingErrorHandler))
            .build(manager)
            .map_err(|e| Error::Connect { url: redact(&self.url), source: Box::new(e) })?;
        let db = Database {
            inner: Arc::new(Inner {
                pool,
                backend,
                url: self.url,
                worker: self.worker,
                no_delay: self.no_delay,
                batch_size: self.batch_size,
                max_args_bytes: self.max_args_bytes,
                clock: self.clock,
                wakers: std::sync::Mutex::new(Vec::new()),
                progress: std::sync::OnceLock::new(),
            }),
        };
        if self.migrate {
            db.migrate()?;
        }
        Ok(db)
    }
}

/// The application's database, seen by the queue: a connection pool plus run-mode settings.
/// Cheap to clone; clones share the pool.
#[derive(Debug, Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool<Manager>,
    backend: Backend,
    url: String,
    worker: bool,
    no_delay: bool,
    batch_size: usize,
    max_args_bytes: usize,
    clock: Arc<dyn Clock>,
    /// Workers of this process to wake when a transaction of this process queues jobs.
    wakers: std::sync::Mutex<Vec<(u64, Waker)>>,
    /// Stores the progress jobs of this process report, once one does.
    progress: std::sync::OnceLock<crate::progress::Writer>,
}

/// Wakes one worker.
type Waker = Box<dyn Fn() + Send + Sync>;

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &redact(&self.url))
            .field("backend", &self.backend)
            .field("pool_size", &self.pool.max_size())
            .field("worker", &self.worker)
            .field("no_delay", &self.no_delay)
            .finish()
    }
}

impl Database {
    /// Settings for `url` (a SQLite path or a `postgres://` URL), read from the environment:
    /// `QUEUE_WORKER=1` (a worker runs the jobs), `QUEUE_NO_DELAY=1` (run at the call).
    pub fn builder(url: impl Into<String>) -> DatabaseBuilder {
        let env_flag = |name: &str| std::env::var(name).is_ok_and(|v| is_truthy(&v));
        DatabaseBuilder {
            url: url.into(),
            worker: env_flag("QUEUE_WORKER"),
            no_delay: env_flag("QUEUE_NO_DELAY"),
            pool_size: DEFAULT_POOL_SIZE,
            keep_idle: true,
            migrate: true,
            batch_size: DEFAULT_BATCH_SIZE,
            max_args_bytes: DEFAULT_MAX_ARGS_BYTES,
            clock: Arc::new(SystemClock),
        }
    }

    /// Open `url` with the settings of the environment, and migrate.
    pub fn open(url: &str) -> Result<Database> {
        Database::builder(url).open()
    }

    /// Open `DATABASE_URL`, or the SQLite file `queue.sqlite3` when it is not set, and migrate.
    pub fn open_default() -> Result<Database> {
        Database::open(&default_url())
    }

    /// Which backend the URL chose.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// The URL, with its password hidden.
    pub fn url(&self) -> String {
        redact(&self.inner.url)
    }

    /// The file of a SQLite database (`None` on PostgreSQL).
    pub fn sqlite_path(&self) -> Option<String> {
        (self.inner.backend == Backend::Sqlite)
            .then(|| self.inner.url.strip_prefix("sqlite://").unwrap_or(&self.inner.url).to_owned())
    }

    /// The folder of this host's liveness files for this database: beside a SQLite file, or
    /// under `state_dir` (by default the temporary directory) for a server.
    pub(crate) fn liveness_folder(&self, state_dir: Option<&std::path::Path>) -> std::path::PathBuf {
        match self.sqlite_path() {
            Some(path) => crate::liveness::folder_of_sqlite(&path),
            None => {
                let base = state_dir.map_or_else(std::env::temp_dir, std::path::Path::to_path_buf);
                crate::liveness::folder_of_server(&base, &self.url())
            }
        }
    }

    /// The URL as given (with its password), for connections outside the pool.
    pub(crate) fn raw_url(&self) -> String {
        self.inner.url.clone()
    }

    /// Most connections the pool opens.
    pub fn pool_size(&self) -> u32 {
        self.inner.pool.max_size()
    }

    /// Wake the workers of this process: jobs were just committed. (Other processes learn of
    /// them through NOTIFY on PostgreSQL, or their next poll.)
    pub(crate) fn wake(&self) {
        for (_, wake) in self.inner.wakers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            wake();
        }
    }

    /// Call `wake` whenever a transaction of this process queues jobs, until
    /// [`Database::remove_waker`] with the returned number.
    pub(crate) fn add_waker(&self, wake: impl Fn() + Send + Sync + 'static) -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.wakers.lock().unwrap_or_else(|p| p.into_inner()).push((id, Box::new(wake)));
        id
    }

    /// Stop waking a worker.
    pub(crate) fn remove_waker(&self, id: u64) {
        self.inner.wakers.lock().unwrap_or_else(|p| p.into_inner()).retain(|(n, _)| *n != id);
    }

    /// True when a worker runs the jobs (they are not run after commit).
    pub fn worker_configured(&self) -> bool {
        self.inner.worker
    }

    /// Largest encoded arguments a queued call may carry.
    pub fn max_args_bytes(&self) -> usize {
        self.inner.max_args_bytes
    }

    /// Records per job for `queue_batch: true`.
    pub fn batch_size(&self) -> usize {
        self.inner.batch_size
    }

    /// True when queued calls run at the call.
    pub fn no_delay(&self) -> bool {
        self.inner.no_delay
    }

    /// Now, from the clock the database was opened with (the system clock unless a test set a
    /// `MockClock`). Etas are computed from the clock of the process that queues or retries.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// A connection from the pool. It is checked with a ping (a round trip on PostgreSQL) only
    /// when it has not answered one for a second, so a busy application pays no round trip per
    /// checkout while a connection that a restarted server dropped is still found and replaced.
    pub fn conn(&self) -> Result<PooledConn> {
        let connect_error = |e: r2d2::PoolError| Error::Connect { url: self.url(), source: Box::new(e) };
        // Every pooled connection may be dead (a restarted server): one more try opens a new one.
        let mut tries = self.inner.pool.max_size() + 1;
        loop {
            let mut conn = self.inner.pool.get().map_err(connect_error)?;
            let now = Instant::now();
            let answered = PooledConnection::extensions(&conn).get::<Answered>().map(|a| a.0);
            if answered.is_some_and(|at| now.duration_since(at) < TRUSTED_FOR) {
                return Ok(conn);
            }
            match conn.ping() {
                Ok(()) => {
                    PooledConnection::extensions_mut(&mut conn).insert(Answered(now));
                    return Ok(conn);
                }
                Err(e) => {
                    // Marked broken, the pool drops it instead of taking it back.
                    conn.mark_broken();
                    tries -= 1;
                    if tries == 0 {
                        return Err(Error::query("check a pooled connection")(e));
                    }
                }
            }
        }
    }

    /// Job `id` of this database says it is at `progress`: stored soon, outside its transaction.
    pub(crate) fn report_progress(&self, id: i64, progress: crate::progress::Progress) {
        self.inner
            .progress
            .get_or_init(|| crate::progress::Writer::start(self.inner.url.clone(), self.inner.backend))
            .report(id, progress);
    }

    /// The progress job `uuid` last reported ([`Env::progress`]), if it reported any since it
    /// was queued or requeued.
    pub fn job_progress(&self, uuid: &JobId) -> Result<Option<crate::progress::Progress>> {
        let mut conn = self.conn()?;
        let job = conn.job_get(uuid)?.ok_or_else(|| Error::JobNotFound(uuid.to_string()))?;
        conn.job_progress(job.id)
    }

    /// The pool's connections: how many are open, and how many of those are idle.
    pub fn pool_state(&self) -> (u32, u32) {
        let state = self.inner.pool.state();
        (state.connections, state.idle_connections)
    }

    /// Bring the queue's tables up to date.
    pub fn migrate(&self) -> Result<()> {
        self.migrate_telling(|_, _, _| {})
    }

    /// [`Database::migrate`], telling `on_step` of each step applied: its name, how many are
    /// applied so far, and how many in all.
    pub fn migrate_telling(&self, mut on_step: impl FnMut(&str, usize, usize)) -> Result<()> {
        self.conn()?.schema_migrate(&mut on_step)
    }

    /// Run `f` in a transaction with `context` as the ambient context. Jobs queued inside are
    /// stored in this transaction (and dropped if it rolls back); when no worker is configured
    /// they run right after the commit, each in its own transaction.
    pub fn transaction<T, E>(&self, context: Context, f: impl FnOnce(&Env) -> Result<T, E>) -> Result<T, E>
    where
        E: From<Error>,
    {
        transaction::run(self, context, f)
    }

    /// Run jobs queued with [`crate::with_env`] once their transaction has committed, each in its
    /// own transaction (what `transaction` does by itself when no worker is configured).
    pub fn run_jobs(&self, ids: Vec<JobId>) -> Result<()> {
        let mut conn = self.conn()?;
        crate::run::alone::after_commit(self, &mut conn, ids);
        Ok(())
    }

    pub(crate) fn same_as(&self, other: &Database) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// One job by uuid.
    pub fn job(&self, uuid: &JobId) -> Result<Job> {
        self.conn()?.job_get(uuid)?.ok_or_else(|| Error::JobNotFound(uuid.to_string()))
    }

    /// An operator's action on a job: requeue (failed or cancelled → pending, from zero tries),
    /// cancel, or set done. Refused with a clear error when the job's state does not allow it;
    /// returns the job as it is after the change.
    pub fn job_action(&self, uuid: &JobId, action: OperatorAction) -> Result<Job> {
        let mut conn = self.conn()?;
        let job = conn.job_get(uuid)?.ok_or_else(|| Error::JobNotFound(uuid.to_string()))?;
        let to = action.check(job.state)?;
        let result = match action {
            OperatorAction::Requeue => None,
            OperatorAction::Cancel => Some("cancelled by an operator"),
            OperatorAction::SetDone => Some("set done by an operator"),
        };
        // The change and what it does to the job's children commit together.
        let params = SetStateParams { uuid, from: job.state, to, result, now: self.now() };
        let changed =
            crate::connection::in_transaction_on::<_, Error>(&mut conn, |c| c.job_set_state(&params))?;
        if !changed {
            let now = conn.job_get(uuid)?.map(|j| j.state.to_string()).unwrap_or_else(|| "deleted".into());
            return Err(Error::Config(format!(
                "job {uuid} changed from {} to {now} meanwhile; look at it again before acting",
                job.state
            )));
        }
        conn.job_get(uuid)?.ok_or_else(|| Error::JobNotFound(uuid.to_string()))
    }

    /// Jobs, newest first.
    pub fn jobs(&self, params: &ListParams) -> Result<Vec<Job>> {
        self.conn()?.job_list(params)
    }

    /// Every job `params` matches, its limit aside, oldest first: the jobs a bulk action by
    /// filter applies to.
    pub fn job_uuids(&self, params: &ListParams) -> Result<Vec<JobId>> {
        self.conn()?.job_uuids(params)
    }

    /// Functions of pending jobs that are not in `known`, with how many jobs each: jobs that
    /// wait for a worker that has their function.
    pub fn unknown_functions(&self, known: &[&str]) -> Result<Vec<(String, i64)>> {
        self.conn()?.job_unknown_functions(known)
    }

    /// Pause `channel` and every channel below it: no job of theirs starts until
    /// [`Database::resume_channel`]; running jobs finish. Workers see it within a second. Returns
    /// false when it was paused already.
    pub fn pause_channel(&self, channel: &str) -> Result<bool> {
        queue_core::channel::check_name(channel)?;
        self.conn()?.channel_pause(channel, self.now())
    }

    /// Resume a paused channel (a channel below a paused one stays paused with it). Returns false
    /// when it was not paused itself.
    pub fn resume_channel(&self, channel: &str) -> Result<bool> {
        queue_core::channel::check_name(channel)?;
        let resumed = self.conn()?.channel_resume(channel)?;
        // Workers of this process look again at once.
        self.wake();
        Ok(resumed)
    }

    /// The paused channels, and since when.
    pub fn paused_channels(&self) -> Result<Vec<(String, DateTime<Utc>)>> {
        self.conn()?.channels_paused()
    }

    /// How many jobs `params` matches, its limit and offset aside.
    pub fn job_count(&self, params: &ListParams) -> Result<i64> {
        self.conn()?.job_count_matching(params)
    }

    /// The jobs job `uuid` waits for, and the jobs waiting for it.
    pub fn job_family(&self, uuid: &JobId) -> Result<Family> {
        let mut conn = self.conn()?;
        let job = conn.job_get(uuid)?.ok_or_else(|| Error::JobNotFound(uuid.to_string()))?;
        conn.job_family(job.id)
    }

    /// Jobs per channel and state, the oldest due pending job of each channel, and the jobs
    /// finished since each of `since`.
    pub fn stats(&self, since: &[DateTime<Utc>]) -> Result<Stats> {
        self.conn()?.job_stats(self.now(), since)
    }

    /// The queue's schema steps this database has not applied yet (all of them where its
    /// tables are missing); empty when it is up to date.
    pub fn schema_pending(&self) -> Result<Vec<&'static str>> {
        self.conn()?.schema_pending()
    }
}

/// `DATABASE_URL`, or [`DEFAULT_DATABASE_URL`].
pub fn default_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        let builder = Database::builder("postgres://u:secret@h:5432/db");
        assert!(!format!("{builder:?}").contains("secret"));
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("queue.sqlite3"), "queue.sqlite3");
    }
}
