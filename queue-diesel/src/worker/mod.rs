//! The worker: runs jobs under channel capacities on executor threads, wakes on notifications or
//! on a poll timer, and stops gracefully.
//!
//! One dispatcher thread hands out work; `root`'s capacity of executor threads run it. The
//! dispatcher counts what runs per configured channel ([`queue_core::channel::ChannelLoad`]) and
//! hands out no more than a channel's free slots. A unit of work is either
//!
//! - a **batch** (most jobs): the executor selects and locks up to a limit of jobs in one
//!   transaction, runs them one after the other and stores them `done` together (see
//!   [`executor`]). A batch takes one slot, since its jobs run one at a time. Its size adapts so
//!   that it lasts about `batch_time`; or
//! - a **leased job**: jobs of isolated functions, of functions with a timeout, of functions seen
//!   to run long (over [`executor::LONG_RUN`], from then on in this worker), and of sequential
//!   channels are claimed by the dispatcher (committed `started`) and each run in its own
//!   transaction.

pub mod executor;

use executor::JobControl;

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use queue_core::channel::ChannelLoad;
use queue_core::{ChannelConfig, JobId};

use crate::connection::Backend;
use crate::database::Database;
use crate::error::{Error, Result};
use crate::function::{JobFunction, registry};
use crate::maintenance::pruner::{DEFAULT_PRUNE_INTERVAL, parse_keep};
use crate::maintenance::rescuer::{DEFAULT_RESCUE_GRACE, DEFAULT_RESCUE_INTERVAL};
use crate::maintenance::{Pruner, Rescuer, Retention, liveness};
use crate::store::{ChannelFilter, ClaimParams, JobRow, Store};
use executor::{BatchReport, BatchTicket};

/// How often an idle worker looks for due jobs when nothing woke it (PostgreSQL).
pub const DEFAULT_POLL_INTERVAL_POSTGRES: Duration = Duration::from_secs(1);
/// How often an idle worker looks for due jobs on SQLite, which has no notifications.
pub const DEFAULT_POLL_INTERVAL_SQLITE: Duration = Duration::from_millis(250);
/// How long a stopping worker waits for its running jobs before giving them back.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);
/// Longest pause after a failed claim (database down): doubles from 100 ms up to this.
const MAX_CLAIM_BACKOFF: Duration = Duration::from_secs(10);
/// Most jobs a batch transaction runs.
pub const DEFAULT_BATCH_JOBS: usize = 500;
/// How long a batch transaction runs jobs before it commits.
pub const DEFAULT_BATCH_TIME: Duration = Duration::from_millis(50);
/// What a job is assumed to take before any has run: the first batch holds
/// `batch_time / this` jobs.
const FIRST_GUESS_PER_JOB: Duration = Duration::from_millis(5);

/// How a worker runs.
#[derive(Debug, Clone)]
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
        }
    }
}

impl WorkerConfig {
    /// Read `QUEUE_CHANNELS`, `QUEUE_POLL_INTERVAL_MS`, `QUEUE_GRACE_PERIOD_SECS`,
    /// `QUEUE_BATCH_JOBS`, `QUEUE_BATCH_MS`, `QUEUE_KEEP_DONE` and `QUEUE_KEEP_FAILED`.
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

/// `host-pid-random`, unique enough to tell workers apart in job views.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    let tag = JobId::new().to_string();
    format!("{host}-{}-{}", std::process::id(), &tag[..8])
}

/// What the dispatcher reacts to.
#[derive(Debug)]
enum Event {
    /// An executor is done with a unit of work. `unsettled`: a leased job whose outcome could
    /// not be stored, to give back. `batch`: what a batch did (`Err`: it failed and rolled back).
    Finished { flight: u64, unsettled: Option<(i64, String)>, batch: Option<Result<BatchReport, String>> },
    /// A job may have been queued.
    Wake,
    /// Stop claiming and shut down.
    Stop,
}

/// Work handed to an executor.
enum Assignment {
    /// A job claimed under a lease.
    Job { flight: u64, row: Box<JobRow>, control: Arc<JobControl> },
    /// A batch to select and run.
    Batch { flight: u64, ticket: BatchTicket, control: Arc<JobControl> },
}

/// The executor threads: how to start one more (to replace one stuck in a timed-out job).
#[derive(Debug)]
struct Executors {
    db: Database,
    jobs: Arc<Mutex<Receiver<Assignment>>>,
    events: Sender<Event>,
    started: usize,
}

impl Executors {
    fn spawn(&mut self) -> Result<()> {
        let db = self.db.clone();
        let jobs = Arc::clone(&self.jobs);
        let events = self.events.clone();
        self.started += 1;
        std::thread::Builder::new()
            .name(format!("queue-exec-{}", self.started))
            .spawn(move || {
                crate::transaction::set_worker_thread(true);
                // Kept between units of work; dropped after a failure (the pool checks the next).
                let mut held: Option<crate::database::PooledConn> = None;
                // The backend pid of `held` (PostgreSQL), read once per connection.
                let mut pid = 0;
                loop {
                    let next = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(assignment) = next else { return };
                    if held.is_none() {
                        match db.conn().and_then(|mut conn| Ok((conn.backend_pid()?, conn))) {
                            Ok((backend, conn)) => {
                                held = Some(conn);
                                pid = backend;
                            }
                            Err(e) => {
                                tracing::error!(error = %executor::chain(&e), "no connection to run jobs")
                            }
                        }
                    }
                    let (flight, control, unsettled, batch) = match assignment {
                        Assignment::Job { flight, row, control } => {
                            let lease = row.lease_token.clone().unwrap_or_default();
                            // Job panics are caught inside; this catches the queue's own, so that
                            // the slot and the job are always accounted for.
                            let outcome = held.as_mut().map(|conn| {
                                catch_unwind(AssertUnwindSafe(|| {
                                    executor::run_claimed_with(&db, conn, &row, Some(Arc::clone(&control)))
                                }))
                            });
                            let unsettled = match outcome {
                                Some(Ok(outcome)) => {
                                    if !outcome.queued.is_empty() {
                                        db.wake();
                                    }
                                    if outcome.state.is_none() {
                                        held = None;
                                    }
                                    outcome.unsettled
                                }
                                _ => {
                                    held = None;
                                    true
                                }
                            };
                            (flight, control, unsettled.then_some((row.id, lease)), None)
                        }
                        Assignment::Batch { flight, ticket, control } => {
                            let report = match held.as_mut() {
                                Some(conn) => catch_unwind(AssertUnwindSafe(|| {
                                    executor::run_batch(&db, conn, &ticket, &control, pid)
                                }))
                                .unwrap_or_else(|_| Err(Error::Config("the batch runner panicked".into())))
                                .map_err(|e| executor::chain(&e)),
                                None => Err("no connection".to_owned()),
                            };
                            if report.is_err() {
                                held = None;
                            }
                            (flight, control, None, Some(report))
                        }
                    };
                    // Whether the worker expired the run first (then a new thread replaced this one).
                    let expired = !control.finish();
                    if events.send(Event::Finished { flight, unsettled, batch }).is_err() || expired {
                        return;
                    }
                }
            })
            .map(|_| ())
            .map_err(|source| Error::Io { what: "failed to start an executor thread", source })
    }
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
pub struct WorkerStats {
    /// Jobs claimed.
    pub claimed: u64,
    /// Jobs whose run ended (in any state).
    pub finished: u64,
    /// Jobs given back at shutdown because they were still running after the grace period.
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
    /// Functions whose jobs run alone under a lease, and those whose jobs run in batches.
    leased: Vec<&'static str>,
    batched: Vec<&'static str>,
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
        // One connection per executor, one for claims, one to spare for the application.
        let needed = config.channels.total_capacity() + 2;
        if (db.pool_size() as usize) < needed {
            return Err(Error::Config(format!(
                "the connection pool holds {} connections but channels {} need {needed} (capacity of root + 2): raise the pool size",
                db.pool_size(),
                config.channels
            )));
        }
        if let Some(path) = db.sqlite_path() {
            liveness::hold(&path, &config.worker_id)?;
        }
        let registry = registry()?;
        let (leased, batched) = functions
            .iter()
            .partition(|name| config.batch_jobs == 0 || registry.get(name).is_none_or(JobFunction::isolated));
        Ok(Worker { db, config, functions, leased, batched })
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

    /// Run the due jobs on this thread, one at a time, until none is left; return how many ran.
    /// Channel capacities do not matter here (one job at a time). For tests and one-shot runs.
    pub fn run_until_idle(&self) -> Result<u64> {
        let mut conn = self.db.conn()?;
        let mut ran = 0;
        let mut seen = HashSet::new();
        loop {
            let lease = JobId::new().to_string();
            let rows = conn.job_claim(&ClaimParams {
                worker_id: &self.config.worker_id,
                lease_token: &lease,
                now: self.db.now(),
                limit: 1,
                channel: None,
                uuids: None,
                funcs: Some(&self.functions),
                ignore_eta: false,
            })?;
            let Some(row) = rows.into_iter().next() else { return Ok(ran) };
            let again = !seen.insert(row.id);
            let outcome = executor::run_claimed(&self.db, &mut conn, &row);
            if outcome.unsettled {
                conn.job_release(&[row.id], row.lease_token.as_deref().unwrap_or_default())?;
            }
            ran += 1;
            // A job retried with no delay is due again at once: one run per call is enough.
            if again {
                return Ok(ran);
            }
        }
    }

    /// Run until `shutdown` is triggered: claim under the channel capacities, run on
    /// `root`-capacity executor threads, then stop gracefully.
    pub fn run(&self, shutdown: &Shutdown) -> Result<WorkerStats> {
        let (events_tx, events_rx) = mpsc::channel::<Event>();
        shutdown.attach(events_tx.clone());
        if shutdown.is_triggered() {
            return Ok(WorkerStats::default());
        }
        let (jobs_tx, jobs_rx) = mpsc::channel::<Assignment>();
        let mut executors = Executors {
            db: self.db.clone(),
            jobs: Arc::new(Mutex::new(jobs_rx)),
            events: events_tx.clone(),
            started: 0,
        };
        for _ in 0..self.config.channels.total_capacity() {
            executors.spawn()?;
        }
        let wake_tx = Mutex::new(events_tx.clone());
        let waker = self.db.add_waker(move || {
            let _ = wake_tx.lock().unwrap_or_else(|p| p.into_inner()).send(Event::Wake);
        });
        let stop_listener = Arc::new(AtomicBool::new(false));
        let listener = match self.db.sqlite_path() {
            None => crate::notify::spawn_listener(
                self.db.raw_url(),
                events_tx.clone(),
                || Event::Wake,
                Arc::clone(&stop_listener),
            ),
            Some(path) => crate::notify::spawn_sqlite_watcher(
                path,
                events_tx.clone(),
                || Event::Wake,
                Arc::clone(&stop_listener),
            ),
        }
        .map_err(|source| Error::Io { what: "failed to start the listener thread", source })?;
        tracing::info!(
            worker = %self.config.worker_id,
            database = %self.db.url(),
            channels = %self.config.channels,
            functions = self.functions.len(),
            "worker started"
        );
        let mut state = Dispatch {
            executors: Some(executors),
            slots: Slots::for_database(&self.db),
            leased: self.leased.clone(),
            batched: Arc::new(self.batched.clone()),
            ..Dispatch::default()
        };
        let fatal = self.dispatch(shutdown, &events_rx, &jobs_tx, &mut state).err();
        stop_listener.store(true, Ordering::Relaxed);
        self.db.remove_waker(waker);
        drop(jobs_tx);
        self.drain(&events_rx, &mut state);
        // Its connection is closed before this returns (it notices the flag within 100 ms, or
        // once a connection attempt or a ping to a vanished server times out).
        let _ = listener.join();
        let stats = state.stats;
        tracing::info!(
            claimed = stats.claimed,
            finished = stats.finished,
            released = stats.released,
            "worker stopped"
        );
        match fatal {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }

    /// Give back jobs whose outcome could not be stored; keep those the database refused.
    fn settle(&self, unsettled: &mut Vec<(i64, String)>, stats: &mut WorkerStats) {
        unsettled.retain(|(id, lease)| {
            match self.db.conn().and_then(|mut conn| conn.job_release(&[*id], lease)) {
                Ok(n) => {
                    stats.released += n as u64;
                    false
                }
                Err(e) => {
                    tracing::warn!(job_id = id, error = %executor::chain(&e), "cannot give a job back yet");
                    true
                }
            }
        });
    }

    /// The claim loop, until shutdown or a fatal error.
    fn dispatch(
        &self,
        shutdown: &Shutdown,
        events: &Receiver<Event>,
        jobs: &Sender<Assignment>,
        state: &mut Dispatch,
    ) -> Result<()> {
        let channels = &self.config.channels;
        // Deepest channels first: a sub-channel with its own capacity is not starved by the
        // backlog of its parent.
        let mut filters: Vec<ChannelFilter> = channels
            .channels()
            .map(|c| ChannelFilter {
                node: c.name.clone(),
                excluded: channels.configured_children(&c.name).into_iter().map(str::to_owned).collect(),
            })
            .collect();
        filters.sort_by_key(|f| std::cmp::Reverse(f.node.matches('.').count()));
        let poll = self.poll_interval();
        let mut last_poll = Instant::now();
        let rescuer = Rescuer::new(self.db.clone(), self.config.rescue_grace);
        let mut last_rescue = Instant::now();
        let pruner = Pruner::new(self.db.clone(), self.config.retention);
        let mut last_prune = Instant::now();
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_triggered() {
            if last_poll.elapsed() >= poll {
                state.wake();
                last_poll = Instant::now();
            }
            if !state.unsettled.is_empty() {
                self.settle(&mut state.unsettled, &mut state.stats);
            }
            if last_rescue.elapsed() >= self.config.rescue_interval {
                last_rescue = Instant::now();
                match rescuer.run_once() {
                    Ok(rescued) => {
                        state.stats.rescued += rescued.requeued + rescued.failed;
                        if rescued.requeued > 0 {
                            state.wake();
                        }
                    }
                    Err(e) => tracing::warn!(error = %executor::chain(&e), "rescue pass failed"),
                }
            }
            if last_prune.elapsed() >= self.config.prune_interval {
                last_prune = Instant::now();
                if let Err(e) = pruner.run_once() {
                    tracing::warn!(error = %executor::chain(&e), "prune pass failed");
                }
            }
            let mut failed = false;
            for filter in &filters {
                let sequential = channels.is_sequential(&filter.node);
                let leased = if sequential { self.functions.clone() } else { state.leased.clone() };
                if !leased.is_empty()
                    && let Err(e) = self.claim_leased(filter, &leased, sequential, state, jobs)
                {
                    if matches!(e, Error::Config(_)) {
                        return Err(e);
                    }
                    tracing::warn!(error = %executor::chain(&e), retry_in = ?backoff, "failed to claim jobs");
                    failed = true;
                    break;
                }
                if !sequential && !state.batched.is_empty() {
                    self.start_batches(filter, state, jobs)?;
                }
            }
            let wait = if failed {
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_CLAIM_BACKOFF);
                wait
            } else {
                backoff = Duration::from_millis(100);
                let until_poll = poll.saturating_sub(last_poll.elapsed());
                match state.next_deadline() {
                    Some(deadline) => until_poll.min(deadline.saturating_duration_since(Instant::now())),
                    None => until_poll,
                }
            };
            match events.recv_timeout(wait) {
                Ok(event) => {
                    let mut next = Some(event);
                    while let Some(event) = next {
                        match event {
                            Event::Finished { flight, unsettled, batch } => {
                                state.finished(flight, unsettled, batch)
                            }
                            Event::Wake => state.wake(),
                            Event::Stop => break,
                        }
                        next = events.try_recv().ok();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.expire(state)?;
        }
        Ok(())
    }

    /// Claim jobs of `funcs` in `filter`'s channel under a lease, as many as the channel has free
    /// slots, and hand each to an executor. `Err(Error::Config)` when no executor is left.
    fn claim_leased(
        &self,
        filter: &ChannelFilter,
        funcs: &[&'static str],
        sequential: bool,
        state: &mut Dispatch,
        jobs: &Sender<Assignment>,
    ) -> Result<()> {
        let channels = &self.config.channels;
        let free = state.load.free(channels, &filter.node);
        if free == 0 || state.dry.contains(&(filter.node.clone(), false)) {
            return Ok(());
        }
        // Slots shared with every worker: as many as this channel and each configured ancestor
        // can spare.
        let mut taken = state.slots.acquire(channels, &filter.node, free);
        let want = taken.first().map_or(0, |(_, slots)| slots.len());
        if want == 0 {
            return Ok(());
        }
        let lease = JobId::new().to_string();
        let params = ClaimParams {
            worker_id: &self.config.worker_id,
            lease_token: &lease,
            now: self.db.now(),
            limit: want as i64,
            channel: Some(filter),
            uuids: None,
            funcs: Some(funcs),
            ignore_eta: false,
        };
        let claimed = self.db.conn().and_then(|mut conn| {
            let at = Instant::now();
            let rows = if sequential { conn.job_claim_sequential(&params) } else { conn.job_claim(&params) };
            if at.elapsed() >= executor::SLOW_CLAIM {
                executor::refresh_statistics(&mut conn);
            }
            rows
        });
        let claimed_count = claimed.as_ref().map_or(0, Vec::len);
        let mut row_slots: Vec<Vec<(String, usize)>> = vec![Vec::new(); claimed_count];
        for (channel, slots) in &mut taken {
            for (i, slot) in slots.drain(..claimed_count.min(slots.len())).enumerate() {
                row_slots[i].push((channel.clone(), slot));
            }
        }
        state.slots.release(taken);
        let rows = claimed?;
        if rows.len() < want {
            state.dry.insert((filter.node.clone(), false));
        }
        for (row, slots) in rows.into_iter().zip(row_slots) {
            state.load.start(&filter.node);
            let control = Arc::new(JobControl::default());
            let timeout = registry()?.get(&row.func).and_then(JobFunction::timeout);
            let flight = state.next_flight();
            state.in_flight.insert(
                flight,
                Flight {
                    node: filter.node.clone(),
                    control: Arc::clone(&control),
                    deadline: timeout.map(|t| Instant::now() + t),
                    leased: Some((row.id, lease.clone())),
                    batch: false,
                    seq: state.wake_seq,
                    row: timeout.map(|_| row.clone()),
                    slots,
                    slots_session: state.slots.session,
                },
            );
            state.stats.claimed += 1;
            if jobs.send(Assignment::Job { flight, row: Box::new(row), control }).is_err() {
                return Err(Error::Config("all executor threads stopped".into()));
            }
        }
        Ok(())
    }

    /// Hand batches of `filter`'s channel to executors: one while the channel is not known to
    /// hold more than a batch, then one per free slot while batches come back full.
    fn start_batches(
        &self,
        filter: &ChannelFilter,
        state: &mut Dispatch,
        jobs: &Sender<Assignment>,
    ) -> Result<()> {
        let channels = &self.config.channels;
        let node = &filter.node;
        if state.dry.contains(&(node.clone(), true)) {
            return Ok(());
        }
        let books = state.batches.get(node);
        let running = books.map_or(0, |b| b.running);
        let full = books.is_some_and(|b| b.full);
        // A wake-up since the last batch began: the running batches may have claimed before the
        // new jobs committed, so one more must look.
        let woken = books.is_none_or(|b| b.started_seq < state.wake_seq);
        let free = state.load.free(channels, node);
        let starts = if full { free } else { usize::from(running == 0 || woken).min(free) };
        for _ in 0..starts {
            let taken = state.slots.acquire(channels, node, 1);
            if taken.first().is_none_or(|(_, slots)| slots.is_empty()) {
                break;
            }
            let slots: Vec<(String, usize)> =
                taken.into_iter().filter_map(|(name, slots)| Some((name, *slots.first()?))).collect();
            let books = state.batches.entry(node.clone()).or_default();
            books.running += 1;
            books.full = false;
            books.started_seq = state.wake_seq;
            let per_job = books.per_job.unwrap_or(FIRST_GUESS_PER_JOB).max(Duration::from_micros(1));
            let limit = (self.config.batch_time.as_secs_f64() / per_job.as_secs_f64()) as usize;
            let ticket = BatchTicket {
                worker_id: Arc::from(self.config.worker_id.as_str()),
                channel: filter.clone(),
                funcs: Arc::clone(&state.batched),
                limit: limit.clamp(1, self.config.batch_jobs.max(1)),
                budget: self.config.batch_time,
            };
            state.load.start(node);
            let control = Arc::new(JobControl::default());
            let flight = state.next_flight();
            state.in_flight.insert(
                flight,
                Flight {
                    node: node.clone(),
                    control: Arc::clone(&control),
                    deadline: None,
                    leased: None,
                    batch: true,
                    seq: state.wake_seq,
                    row: None,
                    slots,
                    slots_session: state.slots.session,
                },
            );
            if jobs.send(Assignment::Batch { flight, ticket, control }).is_err() {
                return Err(Error::Config("all executor threads stopped".into()));
            }
        }
        Ok(())
    }

    /// Give up on runs past their function's timeout: tell the body, end its session
    /// (PostgreSQL), store the verdict fenced by the lease (PostgreSQL; on SQLite the running
    /// transaction holds the write lock, so the executor stores it when the body returns), free
    /// the slot and start an executor thread in place of the one still stuck in the body.
    fn expire(&self, state: &mut Dispatch) -> Result<()> {
        use diesel::RunQueryDsl;
        let now = Instant::now();
        let expired: Vec<u64> = state
            .in_flight
            .iter()
            .filter(|(_, flight)| flight.deadline.is_some_and(|d| d <= now))
            .map(|(key, _)| *key)
            .collect();
        for key in expired {
            // The executor may have finished it in the meantime: its `Finished` settles it.
            if !state.in_flight.get(&key).is_some_and(|f| f.control.expire()) {
                continue;
            }
            let Some(flight) = state.in_flight.remove(&key) else { continue };
            state.load.finish(&flight.node);
            state.slots.release_job(flight.slots.clone(), flight.slots_session);
            state.stats.timed_out += 1;
            let job_id = flight.leased.as_ref().map_or(0, |(id, _)| *id);
            tracing::warn!(job_id, "job ran out of time; no longer waiting for it");
            if self.db.backend() == Backend::Postgres
                && let Some(row) = &flight.row
                && let Some(function) = registry()?.get(&row.func)
            {
                match self.db.conn() {
                    Ok(mut conn) => {
                        // End the run's session: its statement stops, its transaction rolls back
                        // and its locks (its job row among them) are freed at once. The pooled
                        // connection is found dead and replaced when it is next checked out.
                        if let Some(pid) = flight.control.pg_pid() {
                            let end = diesel::sql_query("SELECT pg_terminate_backend($1)")
                                .bind::<diesel::sql_types::Integer, _>(pid)
                                .execute(&mut *conn);
                            if let Err(e) = end {
                                tracing::warn!(job_id, error = %e, "could not end the job's session");
                            }
                        }
                        executor::store_timeout(&self.db, &mut conn, row, function);
                    }
                    Err(e) => {
                        tracing::warn!(error = %executor::chain(&e), "cannot store a timeout now; the job's executor will")
                    }
                }
            }
            if let Some(executors) = state.executors.as_mut() {
                executors.spawn()?;
            }
        }
        Ok(())
    }

    /// Wait for running jobs up to the grace period, then give back those still running and
    /// those whose outcome could not be stored.
    fn drain(&self, events: &Receiver<Event>, state: &mut Dispatch) {
        let deadline = Instant::now() + self.config.grace_period;
        while !state.in_flight.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(Event::Finished { flight, unsettled, batch }) => state.finished(flight, unsettled, batch),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        // Still running: end their sessions (PostgreSQL), so their transactions roll back and
        // free their rows, then give back the leased ones (a batch's jobs are `pending` again
        // once its transaction rolls back).
        for (_, flight) in state.in_flight.drain() {
            let job_id = flight.leased.as_ref().map_or(0, |(id, _)| *id);
            if flight.control.abandon()
                && let Some(pid) = flight.control.pg_pid()
            {
                use diesel::RunQueryDsl;
                let end = self.db.conn().and_then(|mut conn| {
                    diesel::sql_query("SELECT pg_terminate_backend($1)")
                        .bind::<diesel::sql_types::Integer, _>(pid)
                        .execute(&mut *conn)
                        .map_err(crate::Error::query("end a running job's session"))
                });
                if let Err(e) = end {
                    tracing::warn!(job_id, error = %executor::chain(&e), "could not end a running job's session");
                }
            }
            state.unsettled.extend(flight.leased);
        }
        self.settle(&mut state.unsettled, &mut state.stats);
        for (id, _) in &state.unsettled {
            tracing::error!(job_id = id, "could not give a job back; it stays started until it is rescued");
        }
    }
}

/// A leased job or a batch handed to an executor.
#[derive(Debug)]
struct Flight {
    /// Its configured channel.
    node: String,
    control: Arc<JobControl>,
    /// When its function's timeout runs out.
    deadline: Option<Instant>,
    /// A leased job: its id and lease.
    leased: Option<(i64, String)>,
    /// A batch (else a leased job).
    batch: bool,
    /// The dispatcher's wake-up count when it was handed out.
    seq: u64,
    /// The claimed row, kept for jobs with a deadline (to store their timeout).
    row: Option<JobRow>,
    /// The shared channel slots it holds, and the slot session they were taken in.
    slots: Vec<(String, usize)>,
    slots_session: u64,
}

/// The channel slots this worker holds, shared with every worker of the database: PostgreSQL
/// advisory locks on one connection of its own, which the server frees if this process dies.
#[derive(Debug, Default)]
struct Slots {
    /// `None` on SQLite (its single writer keeps channels within capacity) or while
    /// disconnected.
    conn: Option<crate::connection::AnyConnection>,
    url: Option<String>,
    held: HashMap<String, Vec<usize>>,
    /// Counts reconnections: slots of an earlier session were freed with it and must not be
    /// unlocked again (the number may belong to another job now).
    session: u64,
}

impl Slots {
    fn for_database(db: &Database) -> Slots {
        let url = (db.backend() == Backend::Postgres).then(|| db.raw_url());
        Slots { conn: None, url, held: HashMap::new(), session: 0 }
    }

    /// Up to `want` slots of `node` and of each configured ancestor, as many of each: the list
    /// per channel, nearest first. Empty lists when the channel is full across workers.
    fn acquire(&mut self, channels: &ChannelConfig, node: &str, want: usize) -> Vec<(String, Vec<usize>)> {
        let chain: Vec<(String, usize)> =
            channels.chain(node).map(|c| (c.name.clone(), c.capacity)).collect();
        let Some(url) = self.url.clone() else {
            return chain.into_iter().map(|(name, _)| (name, (0..want).collect())).collect();
        };
        if self.conn.is_none() {
            match diesel::Connection::establish(&url) {
                Ok(c) => {
                    self.conn = Some(crate::connection::AnyConnection::Postgres(c));
                    self.session += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the database to take channel slots");
                    return Vec::new();
                }
            }
        }
        let mut taken: Vec<(String, Vec<usize>)> = Vec::new();
        let mut want = want;
        for (name, capacity) in chain {
            let held = self.held.get(&name).cloned().unwrap_or_default();
            let Some(conn) = self.conn.as_mut() else { break };
            match conn.channel_slots_acquire(&name, capacity, want, &held) {
                Ok(got) => {
                    want = got.len();
                    self.held.entry(name.clone()).or_default().extend(&got);
                    taken.push((name, got));
                }
                Err(e) => {
                    tracing::warn!(error = %executor::chain(&e), "cannot take channel slots; reconnecting");
                    // The server freed this connection's locks with it.
                    self.conn = None;
                    self.held.clear();
                    return Vec::new();
                }
            }
            if want == 0 {
                break;
            }
        }
        // Every channel of the chain keeps as many slots as the scarcest one gave.
        let mut extra = Vec::new();
        for (name, slots) in &mut taken {
            if slots.len() > want {
                extra.push((name.clone(), slots.split_off(want)));
            }
        }
        self.release(extra);
        taken
    }

    /// Give slots back.
    fn release(&mut self, slots: Vec<(String, Vec<usize>)>) {
        for (name, slots) in slots {
            if slots.is_empty() {
                continue;
            }
            if let Some(held) = self.held.get_mut(&name) {
                held.retain(|s| !slots.contains(s));
            }
            if let Some(conn) = self.conn.as_mut()
                && let Err(e) = conn.channel_slots_release(&name, &slots)
            {
                tracing::warn!(error = %executor::chain(&e), "cannot give channel slots back; reconnecting");
                self.conn = None;
                self.held.clear();
            }
        }
    }

    /// Give back the slots of a finished job, if they are still this session's.
    fn release_job(&mut self, slots: Vec<(String, usize)>, session: u64) {
        if session == self.session {
            self.release(slots.into_iter().map(|(name, slot)| (name, vec![slot])).collect());
        }
    }
}

/// The dispatcher's books.
#[derive(Debug, Default)]
struct Dispatch {
    load: ChannelLoad,
    /// Work handed to executors, by flight number.
    in_flight: HashMap<u64, Flight>,
    flights: u64,
    slots: Slots,
    executors: Option<Executors>,
    /// Jobs whose outcome could not be stored, to give back.
    unsettled: Vec<(i64, String)>,
    stats: WorkerStats,
    /// Channels known to have no due job, per path (true: batches), until a wake-up or a poll.
    dry: HashSet<(String, bool)>,
    /// Functions whose jobs run alone under a lease; those whose jobs run in batches.
    leased: Vec<&'static str>,
    batched: Arc<Vec<&'static str>>,
    /// Batches per channel.
    batches: HashMap<String, BatchBooks>,
    /// Counts wake-ups (notifications, polls, rescues): a batch that began before the latest
    /// one may have missed the jobs it announced.
    wake_seq: u64,
}

/// What the dispatcher knows of a channel's batches.
#[derive(Debug, Default)]
struct BatchBooks {
    /// Batches running.
    running: usize,
    /// The last batch found as many jobs as it could take: more are likely waiting.
    full: bool,
    /// Recent mean run time of a job, which sizes the next batch.
    per_job: Option<Duration>,
    /// The wake-up count when the latest batch began.
    started_seq: u64,
}

impl Dispatch {
    fn next_deadline(&self) -> Option<Instant> {
        self.in_flight.values().filter_map(|f| f.deadline).min()
    }

    /// Jobs may have been queued: every channel is worth a look again.
    fn wake(&mut self) {
        self.dry.clear();
        self.wake_seq += 1;
    }

    fn next_flight(&mut self) -> u64 {
        self.flights += 1;
        self.flights
    }

    fn finished(
        &mut self,
        flight: u64,
        unsettled: Option<(i64, String)>,
        batch: Option<std::result::Result<BatchReport, String>>,
    ) {
        let Some(done) = self.in_flight.remove(&flight) else {
            // Expired already; its executor could not store anything either.
            self.unsettled.extend(unsettled);
            return;
        };
        self.load.finish(&done.node);
        self.slots.release_job(done.slots, done.slots_session);
        self.unsettled.extend(unsettled);
        if !done.batch {
            self.stats.finished += 1;
            return;
        };
        let books = self.batches.entry(done.node.clone()).or_default();
        books.running = books.running.saturating_sub(1);
        match batch {
            Some(Ok(report)) => {
                if !report.queued.is_empty() {
                    self.dry.clear();
                    self.wake_seq += 1;
                }
                self.stats.claimed += report.finished as u64;
                self.stats.finished += report.finished as u64;
                books.full = report.more;
                if report.more {
                    // Whatever a concurrent batch concluded, jobs are left.
                    self.dry.remove(&(done.node.clone(), true));
                }
                if let Some(per_job) = report.per_job {
                    books.per_job = Some(books.per_job.map_or(per_job, |old| (old + per_job) / 2));
                }
                // Dry, unless a wake-up came after it began (its jobs may have committed after
                // its claim) or another batch still runs (this one may have come up short only
                // because that one holds the rows).
                if !books.full && books.running == 0 && done.seq == self.wake_seq {
                    self.dry.insert((done.node, true));
                }
                if !report.long.is_empty() {
                    let mut batched = self.batched.as_ref().clone();
                    for func in &report.long {
                        if let Some(at) = batched.iter().position(|f| f == func) {
                            tracing::info!(function = %func, limit = ?executor::LONG_RUN, "a job ran long: the function's jobs now run alone, under a lease");
                            self.leased.push(batched.remove(at));
                        }
                    }
                    self.batched = Arc::new(batched);
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "a batch failed and was rolled back; its jobs stay pending");
                books.full = false;
                if books.running == 0 && done.seq == self.wake_seq {
                    self.dry.insert((done.node, true));
                }
            }
            None => {}
        }
    }
}
