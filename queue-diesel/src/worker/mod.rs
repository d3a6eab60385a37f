//! The worker: runs jobs under channel capacities on executor threads, wakes on notifications or
//! on a poll timer, watches what runs, and stops gracefully.
//!
//! One dispatcher thread hands out work ([`dispatch`]); `root`'s capacity of executor threads run
//! it ([`executors`]). The dispatcher counts what runs per configured channel and hands out no
//! more than a channel's free slots. A unit of work is either a **batch** (most jobs; see
//! [`crate::run::batch`]), which takes one slot since its jobs run one at a time (its claim takes
//! it, for the batch's transaction, from the slots all workers share), or a **job run alone**
//! (see [`crate::run::alone`]; the dispatcher holds its shared slots, [`slots`]): jobs of
//! isolated functions, of functions with a timeout or seen running long, of sequential
//! channels, and jobs marked to run alone. Both take the jobs at the head of a channel, so one claim order holds for every path.
//! The dispatcher also watches what runs ([`watch`]): timeouts, the hang limit, the graceful stop.

mod batches;
mod dispatch;
mod executors;
mod pauses;
mod schedules;
mod slots;
mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use queue_core::{ChannelConfig, JobId};

use crate::connection::Backend;
use crate::database::Database;
use crate::error::{Error, Result};
use crate::function::{JobFunction, registry};
use crate::liveness::{self, Record};
use crate::maintenance::Retention;
use crate::maintenance::pruner::{DEFAULT_PRUNE_INTERVAL, parse_keep};
use crate::maintenance::rescuer::{DEFAULT_RESCUE_GRACE, DEFAULT_RESCUE_INTERVAL};
use dispatch::{Dispatch, Mode};
use executors::{Event, Executors};

/// How long a job may run in a batch before its function's jobs run alone.
#[cfg(feature = "internals")]
pub use crate::run::batch::LONG_RUN;

/// How often an idle worker looks for due jobs when nothing woke it (PostgreSQL).
pub const DEFAULT_POLL_INTERVAL_POSTGRES: Duration = Duration::from_secs(1);
/// How often an idle worker looks for due jobs on SQLite, which has no notifications.
pub const DEFAULT_POLL_INTERVAL_SQLITE: Duration = Duration::from_millis(250);
/// How long a stopping worker waits for its running jobs before giving them back.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);
/// How long a job may run inside a batch before its neighbours are freed (and, on SQLite, how
/// long any job without a timeout may hold the write lock).
pub const DEFAULT_HANG_LIMIT: Duration = Duration::from_secs(60);
/// Most jobs a batch transaction runs.
pub const DEFAULT_BATCH_JOBS: usize = 500;
/// How long a batch transaction runs jobs before it commits.
pub const DEFAULT_BATCH_TIME: Duration = Duration::from_millis(50);

/// How a worker runs: `WorkerConfig::default()` (which reads nothing from the environment; see
/// [`crate::cli`] for the `QUEUE_*` variables), then the setters, e.g.
/// `WorkerConfig::default().channels("root:4".parse()?)`. Fields can be read and assigned; new
/// ones may come, so the struct is not built with a literal.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Channels and capacities (`QUEUE_CHANNELS`, default `root:1`).
    pub channels: ChannelConfig,
    /// Poll period when no notification comes; `None` picks the backend's default.
    pub poll_interval: Option<Duration>,
    /// How long to wait for running jobs on shutdown.
    pub grace_period: Duration,
    /// Name stored on the jobs this worker takes.
    pub worker_id: String,
    /// How often this worker rescues jobs whose worker is gone.
    pub rescue_interval: Duration,
    /// Jobs claimed less than this long ago are never rescued (their worker may not hold them yet).
    pub rescue_grace: Duration,
    /// Most jobs one batch transaction runs (`QUEUE_BATCH_JOBS`); 0 runs every job alone, in
    /// its own transaction under a lease.
    pub batch_jobs: usize,
    /// A batch starts no new job once it has run this long (`QUEUE_BATCH_MS`), then commits.
    pub batch_time: Duration,
    /// How long finished jobs are kept (`QUEUE_KEEP_DONE`, `QUEUE_KEEP_FAILED`).
    pub retention: Retention,
    /// How often this worker deletes finished jobs past their retention.
    pub prune_interval: Duration,
    /// A job running in a batch longer than this is given up on (`QUEUE_HANG_LIMIT`): its
    /// batch's session is ended so that its neighbours run elsewhere, its try counts and it runs
    /// alone from then on. On SQLite it also bounds how long a job without a timeout holds the
    /// write lock that every other writer waits for.
    pub hang_limit: Duration,
    /// Folder of the files that show this host's workers alive and record what they run
    /// (`QUEUE_STATE_DIR`); `None`: beside a SQLite database, or a folder of the temporary
    /// directory for PostgreSQL.
    pub state_dir: Option<PathBuf>,
    /// Queue the jobs of the binary's periodic schedules as their ticks come (`QUEUE_SCHEDULES`,
    /// default on). Any number of workers may do it: each tick is queued once.
    pub schedules: bool,
}

/// One chainable setter per field: `WorkerConfig::default().grace_period(d)`.
macro_rules! setters {
    ($($field:ident: $ty:ty),* $(,)?) => {
        impl WorkerConfig {
            $(
                #[doc = concat!("Set [`WorkerConfig::", stringify!($field), "`].")]
                #[must_use]
                pub fn $field(mut self, value: $ty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

setters!(
    channels: ChannelConfig,
    grace_period: Duration,
    worker_id: String,
    rescue_interval: Duration,
    rescue_grace: Duration,
    batch_jobs: usize,
    batch_time: Duration,
    retention: Retention,
    prune_interval: Duration,
    hang_limit: Duration,
    schedules: bool,
);

impl WorkerConfig {
    /// Set [`WorkerConfig::poll_interval`].
    #[must_use]
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = Some(every);
        self
    }

    /// Set [`WorkerConfig::state_dir`].
    #[must_use]
    pub fn state_dir(mut self, folder: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(folder.into());
        self
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            channels: ChannelConfig::default(),
            poll_interval: None,
            grace_period: DEFAULT_GRACE_PERIOD,
            worker_id: default_worker_id(),
            rescue_interval: DEFAULT_RESCUE_INTERVAL,
            rescue_grace: DEFAULT_RESCUE_GRACE,
            batch_jobs: DEFAULT_BATCH_JOBS,
            batch_time: DEFAULT_BATCH_TIME,
            retention: Retention::default(),
            prune_interval: DEFAULT_PRUNE_INTERVAL,
            hang_limit: DEFAULT_HANG_LIMIT,
            state_dir: None,
            schedules: true,
        }
    }
}

impl WorkerConfig {
    /// Read `QUEUE_CHANNELS`, `QUEUE_POLL_INTERVAL_MS`, `QUEUE_GRACE_PERIOD_SECS`,
    /// `QUEUE_BATCH_JOBS`, `QUEUE_BATCH_MS`, `QUEUE_KEEP_DONE`, `QUEUE_KEEP_FAILED`,
    /// `QUEUE_HANG_LIMIT`, `QUEUE_STATE_DIR` and `QUEUE_SCHEDULES`.
    pub fn from_env() -> Result<Self> {
        let mut config = WorkerConfig::default();
        if let Ok(text) = std::env::var("QUEUE_CHANNELS") {
            config.channels = text.parse()?;
        }
        if let Ok(text) = std::env::var("QUEUE_POLL_INTERVAL_MS") {
            let ms = parse_positive(&text, "QUEUE_POLL_INTERVAL_MS")?;
            config.poll_interval = Some(Duration::from_millis(ms));
        }
        if let Ok(text) = std::env::var("QUEUE_GRACE_PERIOD_SECS") {
            config.grace_period = Duration::from_secs(parse_positive(&text, "QUEUE_GRACE_PERIOD_SECS")?);
        }
        if let Ok(text) = std::env::var("QUEUE_BATCH_JOBS") {
            config.batch_jobs = text.trim().parse().map_err(|_| {
                Error::Config(format!("expected a whole number >= 0 in QUEUE_BATCH_JOBS, got {text:?}"))
            })?;
        }
        if let Ok(text) = std::env::var("QUEUE_BATCH_MS") {
            config.batch_time = Duration::from_millis(parse_positive(&text, "QUEUE_BATCH_MS")?);
        }
        if let Ok(text) = std::env::var("QUEUE_KEEP_DONE") {
            config.retention.done = parse_keep(&text, "QUEUE_KEEP_DONE")?;
        }
        if let Ok(text) = std::env::var("QUEUE_KEEP_FAILED") {
            config.retention.failed = parse_keep(&text, "QUEUE_KEEP_FAILED")?;
        }
        if let Ok(text) = std::env::var("QUEUE_HANG_LIMIT") {
            config.hang_limit = parse_limit(&text, "QUEUE_HANG_LIMIT")?;
        }
        if let Ok(text) = std::env::var("QUEUE_STATE_DIR")
            && !text.trim().is_empty()
        {
            config.state_dir = Some(PathBuf::from(text.trim()));
        }
        if let Ok(text) = std::env::var("QUEUE_SCHEDULES") {
            config.schedules = match text.trim() {
                "1" | "true" | "on" | "yes" => true,
                "0" | "false" | "off" | "no" => false,
                _ => return Err(Error::Config(format!("expected on or off in QUEUE_SCHEDULES, got {text:?}"))),
            };
        }
        Ok(config)
    }
}

fn parse_positive(text: &str, name: &str) -> Result<u64> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| Error::Config(format!("expected a whole number > 0 in {name}, got {text:?}")))
}

/// Parse a duration setting such as `QUEUE_HANG_LIMIT` (`"60s"`, `"2m"`).
pub fn parse_limit(text: &str, name: &str) -> Result<Duration> {
    queue_core::options::parse_duration(text)
        .map_err(|e| Error::Config(format!("{name}: expected a duration like \"60s\" or \"2m\": {e}")))
}

/// `host-pid-random`, unique enough to tell workers apart in job views.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    let tag = JobId::new().to_string();
    format!("{host}-{}-{}", std::process::id(), &tag[..8])
}

/// Asks a running worker to stop; cheap to clone, usable from any thread or signal handler.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    events: Arc<Mutex<Option<Sender<Event>>>>,
}

impl Shutdown {
    /// A fresh, untriggered handle.
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// Ask the worker to stop: it stops claiming, waits for its running jobs up to the grace
    /// period, then gives back what is still running.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Some(tx) = self.events.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = tx.send(Event::Stop);
        }
    }

    /// True once [`Shutdown::trigger`] was called.
    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    fn attach(&self, tx: Sender<Event>) {
        *self.events.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    /// Trigger on SIGINT or SIGTERM; a second signal exits at once.
    pub fn on_signals(&self) -> Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
            .map_err(|source| Error::Io { what: "failed to install signal handlers", source })?;
        let this = self.clone();
        std::thread::Builder::new()
            .name("queue-signals".into())
            .spawn(move || {
                let mut seen = 0;
                for signal in signals.forever() {
                    seen += 1;
                    if seen > 1 {
                        tracing::warn!(signal, "second signal: exiting without waiting for running jobs");
                        std::process::exit(130);
                    }
                    tracing::info!(signal, "stopping: no new jobs; waiting for running jobs");
                    this.trigger();
                }
            })
            .map_err(|source| Error::Io { what: "failed to start the signal thread", source })?;
        Ok(())
    }
}

/// Counts of what a worker did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Jobs claimed.
    pub claimed: u64,
    /// Jobs whose run ended (in any state).
    pub finished: u64,
    /// Jobs given back: still running after the grace period at shutdown, or interrupted by
    /// the database.
    pub released: u64,
    /// Runs given up because they passed their function's timeout.
    pub timed_out: u64,
    /// Jobs of dead workers this worker rescued.
    pub rescued: u64,
}

/// A worker bound to a database and a configuration.
#[derive(Debug)]
pub struct Worker {
    db: Database,
    config: WorkerConfig,
    functions: Vec<&'static str>,
    /// Functions whose jobs run alone.
    alone: Vec<&'static str>,
}

impl Worker {
    /// A worker for the job functions linked into this binary; refuses to exist with none.
    pub fn new(db: Database, config: WorkerConfig) -> Result<Worker> {
        let functions = registry()?.names();
        if functions.is_empty() {
            return Err(Error::NoFunctions);
        }
        if config.poll_interval.is_some_and(|p| p.is_zero()) {
            return Err(Error::Config("expected a poll interval > 0 ms".into()));
        }
        if config.hang_limit.is_zero() {
            return Err(Error::Config("expected a hang limit > 0".into()));
        }
        // One connection per executor, one for claims, one to spare for the application.
        let needed = config.channels.total_capacity() + 2;
        if (db.pool_size() as usize) < needed {
            return Err(Error::Config(format!(
                "the connection pool holds {} connections but channels {} need {needed} (capacity of root + 2): raise the pool size",
                db.pool_size(),
                config.channels
            )));
        }
        let registry = registry()?;
        // An unusable schedule stops the worker here, with the schedule's name.
        crate::schedule::schedules()?;
        let alone = functions
            .iter()
            .copied()
            .filter(|name| config.batch_jobs == 0 || registry.get(name).is_none_or(JobFunction::isolated))
            .collect();
        let worker = Worker { db, config, functions, alone };
        liveness::hold(&worker.liveness_folder(), &worker.config.worker_id)?;
        Ok(worker)
    }

    /// The functions this worker runs (jobs of other functions stay pending for a binary that
    /// knows them).
    pub fn functions(&self) -> &[&'static str] {
        &self.functions
    }

    fn poll_interval(&self) -> Duration {
        self.config.poll_interval.unwrap_or(match self.db.backend() {
            Backend::Sqlite => DEFAULT_POLL_INTERVAL_SQLITE,
            Backend::Postgres => DEFAULT_POLL_INTERVAL_POSTGRES,
        })
    }

    /// The folder of this host's liveness files for the worker's database.
    fn liveness_folder(&self) -> PathBuf {
        self.db.liveness_folder(self.config.state_dir.as_deref())
    }

    /// Run the due jobs until none is left, as [`Worker::run`] runs them (batches, jobs run
    /// alone, capacities, timeouts, the hang limit); return how many runs ended. A job retried
    /// meanwhile is not run twice. For tests and one-shot runs.
    pub fn run_until_idle(&self) -> Result<u64> {
        self.run_in(&Shutdown::new(), Mode::UntilIdle).map(|stats| stats.finished)
    }

    /// [`Worker::run_until_idle`], stopping gracefully (like [`Worker::run`]) when `shutdown`
    /// is triggered.
    pub fn run_until_idle_with(&self, shutdown: &Shutdown) -> Result<WorkerStats> {
        self.run_in(shutdown, Mode::UntilIdle)
    }

    /// Run until `shutdown` is triggered: claim under the channel capacities, run on
    /// `root`-capacity executor threads, then stop gracefully.
    pub fn run(&self, shutdown: &Shutdown) -> Result<WorkerStats> {
        self.run_in(shutdown, Mode::Serve)
    }

    fn run_in(&self, shutdown: &Shutdown, mode: Mode) -> Result<WorkerStats> {
        let (events_tx, events_rx) = mpsc::channel::<Event>();
        shutdown.attach(events_tx.clone());
        if shutdown.is_triggered() {
            return Ok(WorkerStats::default());
        }
        let capacity = self.config.channels.total_capacity();
        let record = Record::open(&self.liveness_folder(), &self.config.worker_id, capacity * 4)?;
        let (jobs_tx, jobs_rx) = mpsc::channel();
        let mut executors = Executors {
            db: self.db.clone(),
            worker_id: Arc::from(self.config.worker_id.as_str()),
            jobs: Arc::new(Mutex::new(jobs_rx)),
            events: events_tx.clone(),
            record: Some(record),
            started: 0,
            connect_first: mode == Mode::Serve,
            claims: self.batch_claims(),
        };
        for _ in 0..capacity {
            executors.spawn()?;
        }
        // A replacement started later (for an executor stuck in a job given up on) connects on
        // its own thread: the dispatcher must not wait for a server that does not answer.
        executors.connect_first = false;
        let stop_listener = Arc::new(AtomicBool::new(false));
        let mut waker = None;
        let mut listener = None;
        if mode == Mode::Serve {
            let wake_tx = Mutex::new(events_tx.clone());
            waker = Some(self.db.add_waker(move || {
                let _ = wake_tx.lock().unwrap_or_else(|p| p.into_inner()).send(Event::Wake);
            }));
            let spawned = crate::notify::spawn(
                &self.db,
                events_tx.clone(),
                || Event::Wake,
                Arc::clone(&stop_listener),
            );
            listener = Some(
                spawned
                    .map_err(|source| Error::Io { what: "failed to start the listener thread", source })?,
            );
            tracing::info!(
                worker = %self.config.worker_id,
                database = %self.db.url(),
                channels = %self.config.channels,
                functions = self.functions.len(),
                "worker started"
            );
            for warning in self.config.channels.warnings() {
                tracing::warn!("{warning}");
            }
        }
        let ticking = match mode {
            Mode::Serve if self.config.schedules => schedules::Ticking::start(&self.db)?,
            _ => None,
        };
        let mut state = Dispatch::new(self, executors, mode);
        let fatal = self.dispatch(shutdown, &events_rx, &jobs_tx, &mut state, mode).err();
        stop_listener.store(true, Ordering::Relaxed);
        let ticking = ticking.map(schedules::Ticking::stop);
        if let Some(waker) = waker {
            self.db.remove_waker(waker);
        }
        drop(jobs_tx);
        self.drain(&events_rx, &mut state);
        if let Some(ticking) = ticking {
            let _ = ticking.join();
        }
        // Its connection is closed before this returns (it notices the flag within 100 ms, or
        // once a connection attempt or a ping to a vanished server times out).
        if let Some(listener) = listener {
            let _ = listener.join();
        }
        let stats = state.stats;
        if mode == Mode::Serve {
            tracing::info!(
                claimed = stats.claimed,
                finished = stats.finished,
                released = stats.released,
                "worker stopped"
            );
        }
        match fatal {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }
}
