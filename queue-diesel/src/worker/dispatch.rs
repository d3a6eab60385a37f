//! The dispatcher: hands out work under channel capacities, watches it (timeouts, hangs), and
//! stops gracefully.
//!
//! Per configured channel it keeps one claim order whatever path runs the jobs: the jobs at the
//! head of the channel either run in a batch (an executor claims and runs them, and stops at
//! the first job that must run alone) or, when the head is a job that must run alone, are
//! claimed here under a lease, as many as the channel has free slots, and each handed to an
//! executor.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use queue_core::channel::ChannelLoad;
use queue_core::{Isolation, JobId};

use super::executors::{Assignment, Done, Event, Executors};
use super::slots::Slots;
use super::{Shutdown, Worker, WorkerStats};
use crate::connection::AnyConnection;
use crate::error::{Error, Result};
use crate::function::registry;
use crate::maintenance::{Pruner, Rescuer};
use crate::run::batch::{BatchReport, LONG_RUN, SLOW_CLAIM, refresh_statistics};
use crate::run::{GaveUp, JobControl, chain};
use crate::store::{ChannelFilter, ClaimParams, RunRow, Store};

/// How often a worker with a throttled or rate-limited channel tries to start its next job.
const LIMIT_RECHECK: Duration = Duration::from_millis(50);
/// How long a channel whose shared slots were all taken waits before a batch looks again.
const SLOTS_RECHECK: Duration = Duration::from_millis(50);
/// How often a worker names the functions of pending jobs it cannot run.
const UNKNOWN_FUNCTIONS_INTERVAL: Duration = Duration::from_secs(600);
/// Longest pause after a failed claim (database down): doubles from 100 ms up to this.
const MAX_CLAIM_BACKOFF: Duration = Duration::from_secs(10);
/// What a job is assumed to take before any has run: the first batch holds
/// `batch_time / this` jobs.
pub(super) const FIRST_GUESS_PER_JOB: Duration = Duration::from_millis(5);

/// How a worker runs: until stopped, or until no due job is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Serve,
    UntilIdle,
}

/// A unit of work handed to an executor.
#[derive(Debug)]
pub(super) struct Flight {
    /// Its configured channel.
    pub(super) node: String,
    pub(super) control: Arc<JobControl>,
    /// When the watcher gives up on a job run alone, and why.
    pub(super) deadline: Option<(Instant, GaveUp)>,
    /// A job run alone: its row and lease.
    pub(super) leased: Option<(Box<RunRow>, Arc<str>)>,
    /// The dispatcher's wake-up count when it was handed out.
    pub(super) seq: u64,
    /// The shared channel slots it holds, and the slot session they were taken in.
    pub(super) slots: Vec<(String, usize)>,
    pub(super) slots_session: u64,
}

/// What the dispatcher knows of a channel's batches.
#[derive(Debug, Default)]
pub(super) struct BatchBooks {
    pub(super) running: usize,
    /// The last batch found as many jobs as it could take: more are likely waiting.
    pub(super) full: bool,
    /// Recent mean run time of a job, which sizes the next batch.
    pub(super) per_job: Option<Duration>,
    /// Most jobs a batch ran before it took all the savepoints it may (jobs that write need
    /// one each): batches claim no more, so as not to lock rows they will not run.
    pub(super) savepoint_cap: Option<usize>,
    /// The wake-up count when the latest batch began.
    pub(super) started_seq: u64,
    /// The latest batch found the channel's shared slots all taken: no batch starts before
    /// this, and then one looks again.
    pub(super) refused_until: Option<Instant>,
}

/// The dispatcher's books.
#[derive(Debug)]
pub(super) struct Dispatch {
    pub(super) load: ChannelLoad,
    pub(super) in_flight: HashMap<u64, Flight>,
    pub(super) flights: u64,
    pub(super) slots: Slots,
    pub(super) executors: Option<Executors>,
    /// Jobs run alone whose outcome could not be stored: settled as interrupted once the
    /// database answers.
    pub(super) unsettled: Vec<(Box<RunRow>, Arc<str>)>,
    pub(super) stats: WorkerStats,
    /// Channels known to have no due job, per path (true: batches), until a wake-up or a poll.
    pub(super) dry: HashSet<(String, bool)>,
    /// Channels whose head is a job that runs alone.
    pub(super) head_alone: HashSet<String>,
    /// The functions this worker runs, and those of them whose jobs run alone.
    pub(super) funcs: Arc<Vec<&'static str>>,
    pub(super) alone: Arc<Vec<&'static str>>,
    pub(super) batches: HashMap<String, BatchBooks>,
    /// Counts wake-ups: a batch that began before the latest one may have missed its jobs.
    pub(super) wake_seq: u64,
    /// The dispatcher's own connection, for claims (out of the pool: it is set up for claims).
    pub(super) conn: Option<AnyConnection>,
    /// Jobs run so far, when the worker stops once idle.
    pub(super) seen: Option<Arc<Mutex<HashSet<i64>>>>,
    /// Work was handed out in this pass.
    pub(super) handed_out: bool,
    /// A job whose worker died under it runs with nothing else beside it: its flight, while it
    /// runs; its channel, while the worker waits for its other work to end before taking it.
    pub(super) exclusive: Option<u64>,
    pub(super) waiting_for: Option<String>,
}

impl Dispatch {
    pub(super) fn new(worker: &Worker, executors: Executors, mode: Mode) -> Dispatch {
        Dispatch {
            load: ChannelLoad::default(),
            in_flight: HashMap::new(),
            flights: 0,
            slots: Slots::for_database(&worker.db),
            executors: Some(executors),
            unsettled: Vec::new(),
            stats: WorkerStats::default(),
            dry: HashSet::new(),
            head_alone: HashSet::new(),
            funcs: Arc::new(worker.functions.clone()),
            alone: Arc::new(worker.alone.clone()),
            batches: HashMap::new(),
            wake_seq: 0,
            conn: None,
            seen: (mode == Mode::UntilIdle).then(Default::default),
            handed_out: false,
            exclusive: None,
            waiting_for: None,
        }
    }

    /// Jobs may have been queued: every channel is worth a look again.
    pub(super) fn wake(&mut self) {
        self.dry.clear();
        self.wake_seq += 1;
    }

    pub(super) fn next_flight(&mut self) -> u64 {
        self.flights += 1;
        self.flights
    }

    /// An executor is done with `flight`.
    pub(super) fn finished(&mut self, flight: u64, done: Done) {
        let Some(unit) = self.in_flight.remove(&flight) else {
            // Given up on already; the watcher settled it.
            return;
        };
        if self.exclusive == Some(flight) {
            self.exclusive = None;
        }
        self.load.finish(&unit.node);
        self.slots.release_job(&unit.node, unit.slots, unit.slots_session);
        let report = match done {
            Done::Alone(outcome) => {
                self.stats.finished += u64::from(outcome.state.is_some());
                // A job done may have released the jobs that waited for it.
                if !outcome.queued.is_empty() || outcome.state == Some(queue_core::JobState::Done) {
                    self.wake();
                }
                if let Some((row, _)) = &unit.leased
                    && outcome.took >= LONG_RUN
                {
                    self.learn_long(&row.func);
                }
                if outcome.unsettled {
                    self.unsettled.extend(unit.leased);
                }
                return;
            }
            Done::Batch(report) => report,
        };
        let books = self.batches.entry(unit.node.clone()).or_default();
        books.running = books.running.saturating_sub(1);
        match report {
            Ok(report) => self.batch_finished(unit.node, unit.seq, report),
            Err(e) => {
                tracing::warn!(error = %e, "a batch failed and was rolled back; its jobs stay pending");
                books.full = false;
            }
        }
    }

    fn batch_finished(&mut self, node: String, seq: u64, report: BatchReport) {
        if !report.queued.is_empty() || report.released > 0 {
            self.wake();
        }
        self.stats.claimed += report.finished as u64;
        self.stats.finished += report.finished as u64;
        if report.alone_next {
            self.head_alone.insert(node.clone());
            self.dry.remove(&(node.clone(), false));
        }
        let books = self.batches.entry(node.clone()).or_default();
        books.full = report.more;
        books.refused_until = report.refused.then(|| Instant::now() + SLOTS_RECHECK);
        if let Some(per_job) = report.per_job {
            books.per_job = Some(books.per_job.map_or(per_job, |old| (old + per_job) / 2));
        }
        if report.savepoints_spent {
            books.savepoint_cap = Some(report.ran.max(1));
        } else if report.ran > books.savepoint_cap.unwrap_or(usize::MAX) {
            books.savepoint_cap = None;
        }
        if report.more {
            // Whatever a concurrent batch concluded, jobs are left.
            self.dry.remove(&(node.clone(), true));
        }
        // Dry, unless a wake-up came after it began (its jobs may have committed after its
        // claim), another batch still runs (it may hold the rows), or it stopped early.
        // Refused its slots: not dry, looked at again after a while.
        let dry = report.repeated
            || (!report.more
                && !report.alone_next
                && !report.refused
                && books.running == 0
                && seq == self.wake_seq);
        if dry {
            self.dry.insert((node, true));
        }
        for func in report.long {
            self.learn_long(&func);
        }
    }

    /// A job of `func` ran long: the function's jobs run alone from now on, in this worker.
    fn learn_long(&mut self, func: &str) {
        if let Some(name) = self.funcs.iter().find(|f| **f == func)
            && !self.alone.contains(name)
        {
            tracing::info!(function = %func, limit = ?LONG_RUN, "a job ran long: the function's jobs now run alone, under a lease");
            let mut alone = self.alone.as_ref().clone();
            alone.push(name);
            self.alone = Arc::new(alone);
        }
    }

    /// How long until a channel refused its shared slots is worth a batch again.
    pub(super) fn until_slots_recheck(&self) -> Duration {
        let now = Instant::now();
        self.batches
            .values()
            .filter_map(|b| b.refused_until)
            .map(|at| at.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::MAX)
    }

    /// The dispatcher's connection, opened when needed.
    fn conn(&mut self, worker: &Worker) -> Result<&mut AnyConnection> {
        if self.conn.is_none() {
            let mut conn = crate::store::connect(&worker.db.raw_url(), worker.db.backend())?;
            conn.session_prepare_for_claims()?;
            self.conn = Some(conn);
        }
        self.conn.as_mut().ok_or(Error::ConnectionBusy)
    }
}

impl Worker {
    /// What each configured channel claims, deepest channels first: a sub-channel with its own
    /// capacity is not starved by the backlog of its parent.
    pub(super) fn channel_filters(&self) -> Vec<ChannelFilter> {
        let channels = &self.config.channels;
        let mut filters: Vec<ChannelFilter> = channels
            .channels()
            .map(|c| ChannelFilter {
                node: c.name.clone(),
                excluded: channels.configured_children(&c.name).into_iter().map(str::to_owned).collect(),
            })
            .collect();
        filters.sort_by_key(|f| std::cmp::Reverse(f.node.matches('.').count()));
        filters
    }

    /// The claim loop, until shutdown, idleness (in `UntilIdle` mode) or a fatal error.
    pub(super) fn dispatch(
        &self,
        shutdown: &Shutdown,
        events: &Receiver<Event>,
        jobs: &Sender<Assignment>,
        state: &mut Dispatch,
        mode: Mode,
    ) -> Result<()> {
        let channels = &self.config.channels;
        let filters = self.channel_filters();
        let poll = self.poll_interval();
        let mut last_poll = Instant::now();
        let rescuer =
            Rescuer::new(self.db.clone(), self.config.rescue_grace).with_folder(self.liveness_folder());
        let pruner = Pruner::new(self.db.clone(), self.config.retention);
        let (mut last_rescue, mut last_prune) = (Instant::now(), Instant::now());
        let mut last_unknown = Instant::now();
        let mut pauses = super::pauses::Pauses::default();
        // A throttled channel may start its next job before anything wakes the worker.
        let limited = channels.channels().any(|c| c.limits.any());
        let recheck = if limited { LIMIT_RECHECK } else { Duration::MAX };
        let mut backoff = Duration::from_millis(100);
        self.report_unknown_functions();
        if mode == Mode::Serve {
            self.rescue(&rescuer, state);
        }
        while !shutdown.is_triggered() {
            if mode == Mode::Serve {
                if last_poll.elapsed() >= poll {
                    state.wake();
                    last_poll = Instant::now();
                }
                if last_rescue.elapsed() >= self.config.rescue_interval {
                    last_rescue = Instant::now();
                    self.rescue(&rescuer, state);
                }
                if last_unknown.elapsed() >= UNKNOWN_FUNCTIONS_INTERVAL {
                    last_unknown = Instant::now();
                    self.report_unknown_functions();
                }
                if last_prune.elapsed() >= self.config.prune_interval {
                    last_prune = Instant::now();
                    if let Err(e) = pruner.run_once() {
                        tracing::warn!(error = %chain(&e), "prune pass failed");
                    }
                }
            }
            self.settle(state);
            if pauses.refresh(&self.db) {
                // A channel resumed: its jobs are worth a look.
                state.wake();
            }
            state.handed_out = false;
            let mut failed = false;
            for filter in &pauses.apply(&filters) {
                if let Err(e) = self.hand_out(filter, state, jobs) {
                    if matches!(e, Error::NoExecutors) {
                        return Err(e);
                    }
                    tracing::warn!(error = %chain(&e), retry_in = ?backoff, "failed to claim jobs");
                    state.conn = None;
                    failed = true;
                    break;
                }
            }
            // Slots of finished work that no channel reused go back to the other workers.
            state.slots.flush();
            // Idle, unless a channel waits for shared slots other workers hold: its jobs are due.
            let waiting = state.until_slots_recheck() < Duration::MAX;
            if mode == Mode::UntilIdle && !failed && !state.handed_out && state.in_flight.is_empty() && !waiting {
                return Ok(());
            }
            let wait = if failed {
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_CLAIM_BACKOFF);
                wait
            } else {
                backoff = Duration::from_millis(100);
                let until_poll = poll.saturating_sub(last_poll.elapsed());
                let watch = self.watch_interval(state);
                until_poll.min(watch).min(pauses.until_refresh()).min(recheck).min(state.until_slots_recheck())
            };
            match events.recv_timeout(wait) {
                Ok(event) => {
                    let mut next = Some(event);
                    while let Some(event) = next {
                        match event {
                            Event::Finished { flight, done } => state.finished(flight, done),
                            Event::Wake => state.wake(),
                            Event::Stop => break,
                        }
                        next = events.try_recv().ok();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.watch(state)?;
        }
        Ok(())
    }

    /// Hand out the work of one channel: jobs that run alone at its head, then batches. Nothing
    /// while a job runs that must have its worker to itself, or while the worker waits for its
    /// other work to end to run one (then only that job's channel is looked at).
    fn hand_out(
        &self,
        filter: &ChannelFilter,
        state: &mut Dispatch,
        jobs: &Sender<Assignment>,
    ) -> Result<()> {
        let node = &filter.node;
        if state.exclusive.is_some() || state.waiting_for.as_ref().is_some_and(|waiting| waiting != node) {
            return Ok(());
        }
        let sequential = self.config.channels.is_sequential(node);
        let batches = self.runs_batches(node);
        if !batches || state.head_alone.contains(node) {
            self.claim_alone(filter, sequential, !batches, state, jobs)?;
        }
        if batches && !state.head_alone.contains(node) {
            self.start_batches(filter, state, jobs)?;
        }
        Ok(())
    }

    /// Claim the jobs that run alone at the head of `filter`'s channel under a lease, as many as
    /// the channel has free slots, and hand each to an executor. `all_alone`: every job of the
    /// channel runs alone (sequential channels, no batches).
    fn claim_alone(
        &self,
        filter: &ChannelFilter,
        sequential: bool,
        all_alone: bool,
        state: &mut Dispatch,
        jobs: &Sender<Assignment>,
    ) -> Result<()> {
        let channels = &self.config.channels;
        let node = &filter.node;
        let free = state.load.free(channels, node);
        if free == 0 || state.dry.contains(&(node.clone(), false)) {
            return Ok(());
        }
        // Slots shared with every worker: as many as this channel and each configured ancestor
        // can spare.
        let mut taken = state.slots.acquire(channels, node, free);
        let want = taken.first().map_or(0, |(_, slots)| slots.len());
        if want == 0 {
            return Ok(());
        }
        // The channel's throttle and rate limit, held across every worker: starts are taken
        // before the claim, and those the claim did not use given back after it.
        let limits = channels.limits(node);
        let mut starts = Vec::new();
        if limits.any() {
            let now = self.db.now();
            match state.conn(self).and_then(|conn| conn.channel_starts_reserve(node, &limits, want, now)) {
                Ok(ids) => starts = ids,
                Err(e) => {
                    state.slots.release(taken);
                    return Err(e);
                }
            }
            if starts.is_empty() {
                state.slots.release(taken);
                return Ok(());
            }
        }
        let want = if limits.any() { starts.len() } else { want };
        let lease: Arc<str> = Arc::from(JobId::new().to_string());
        let funcs = Arc::clone(&state.funcs);
        let params = ClaimParams {
            worker_id: &self.config.worker_id,
            lease_token: &lease,
            now: self.db.now(),
            limit: want as i64,
            channel: Some(filter),
            uuids: None,
            funcs: Some(&funcs),
            ignore_eta: false,
            slots: &[],
        };
        let alone_funcs = Arc::clone(&state.alone);
        let idle = state.in_flight.is_empty();
        let alone =
            |row: &RunRow| all_alone || row.isolation != 0 || alone_funcs.contains(&row.func.as_str());
        let at = Instant::now();
        let claimed = state.conn(self).and_then(|conn| {
            if sequential {
                return conn.job_claim_sequential(&params).map(|rows| (rows, false, false, false));
            }
            // Two statements, each its own transaction: the head (locked only for the statement,
            // to step over what other claims hold), then the chosen jobs, taken only if still
            // pending and not locked meanwhile. (One statement choosing the leading jobs with a
            // window function measured slower.)
            (|| -> Result<_> {
                let head = conn.job_claim_head(&params)?;
                let mut prefix: Vec<&RunRow> = head.iter().take_while(|row| alone(row)).collect();
                let batchable_next = prefix.len() < head.len();
                let empty = head.len() < want && !batchable_next;
                // A job whose worker died under it runs with nothing beside it: first, and only
                // once this worker runs nothing else.
                if let Some(at) = prefix.iter().position(|row| row.isolation() == Isolation::Process) {
                    if at > 0 {
                        prefix.truncate(at);
                    } else if idle {
                        prefix.truncate(1);
                    } else {
                        return Ok((Vec::new(), false, false, true));
                    }
                }
                let ids: Vec<i64> = prefix.iter().map(|row| row.id).collect();
                Ok((conn.job_take(&params, &ids)?, batchable_next, empty, false))
            })()
        });
        if at.elapsed() >= SLOW_CLAIM
            && let Ok(conn) = state.conn(self)
        {
            refresh_statistics(conn);
        }
        let (rows, batchable_next, empty, wait) = match claimed {
            Ok(found) => found,
            Err(e) => {
                state.slots.release(taken);
                return Err(e);
            }
        };
        if starts.len() > rows.len() {
            let unused = starts.split_off(rows.len());
            if let Err(e) = state.conn(self).and_then(|conn| conn.channel_starts_release(&unused)) {
                tracing::warn!(error = %chain(&e), "cannot give back unused channel starts; the channel waits a little longer");
            }
        }
        state.waiting_for = wait.then(|| node.clone());
        let exclusive = rows.first().is_some_and(|row| row.isolation() == Isolation::Process);
        let mut row_slots: Vec<Vec<(String, usize)>> = vec![Vec::new(); rows.len()];
        for (channel, slots) in &mut taken {
            for (i, slot) in slots.drain(..rows.len().min(slots.len())).enumerate() {
                row_slots[i].push((channel.clone(), slot));
            }
        }
        state.slots.release(taken);
        if batchable_next {
            state.head_alone.remove(node);
        }
        if rows.len() < want && !batchable_next && !wait {
            state.dry.insert((node.clone(), false));
            if empty && !all_alone {
                state.head_alone.remove(node);
            }
        }
        for (row, slots) in rows.into_iter().zip(row_slots) {
            if let Some(seen) = &state.seen
                && !seen.lock().unwrap_or_else(|p| p.into_inner()).insert(row.id)
            {
                // Run once already by this worker, which stops when idle: give it back.
                state.conn(self)?.job_release(&[row.id], &lease)?;
                state.slots.release_job(node, slots, state.slots.session);
                state.dry.insert((node.clone(), false));
                continue;
            }
            let flight = self.hand_alone(filter, row, &lease, slots, state, jobs)?;
            if exclusive {
                state.exclusive = Some(flight);
            }
        }
        Ok(())
    }

    /// Hand a job claimed under `lease` to an executor; returns its flight.
    fn hand_alone(
        &self,
        filter: &ChannelFilter,
        row: RunRow,
        lease: &Arc<str>,
        slots: Vec<(String, usize)>,
        state: &mut Dispatch,
        jobs: &Sender<Assignment>,
    ) -> Result<u64> {
        state.load.start(&filter.node);
        state.handed_out = true;
        let control = Arc::new(JobControl::default());
        let timeout = registry()?.get(&row.func).and_then(|f| f.timeout());
        let deadline = match timeout {
            Some(t) => Some((Instant::now() + t, GaveUp::TimedOut)),
            // One writer: a job holding the write lock past the hang limit blocks every writer.
            None if self.db.backend().single_writer() => {
                Some((Instant::now() + self.config.hang_limit, GaveUp::Hung))
            }
            None => None,
        };
        let flight = state.next_flight();
        let row = Box::new(row);
        state.in_flight.insert(
            flight,
            Flight {
                node: filter.node.clone(),
                control: Arc::clone(&control),
                deadline,
                leased: Some((row.clone(), Arc::clone(lease))),
                seq: state.wake_seq,
                slots,
                slots_session: state.slots.session,
            },
        );
        state.stats.claimed += 1;
        jobs.send(Assignment::Alone { flight, row, lease: Arc::clone(lease), control })
            .map_err(|_| Error::NoExecutors)?;
        Ok(flight)
    }
}
