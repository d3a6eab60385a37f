//! A batch: one transaction takes the jobs at the head of a channel, in claim order, locks them
//! (the locks are the claim: nothing marks them `started`), runs them one after the other and
//! stores each one's outcome, then commits. A job's writes and its outcome commit together.
//!
//! Each job is kept apart by a savepoint taken when it first touches the connection: a job that
//! fails (an error, a panic, a retry, a cancel) is rolled back to it and its outcome stored in the
//! same transaction, and the batch goes on. No job runs again because of another.
//!
//! A batch stops at the first job that must run alone (its function is isolated, has a timeout
//! or was seen running long, or the job itself is marked to run alone) and leaves it to an alone
//! claim, so the channel's claim order holds whatever path runs its jobs. It also stops when its
//! time is up, when it has taken all the savepoints it may, or when the worker winds down.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use queue_core::ending::settle;
use queue_core::{Ending, JobId, Settlement};

use super::{Isolation, JobControl, aborted_transaction_verdict, chain, prepare};
use crate::connection::{AnyConnection, in_transaction_on};
use crate::database::Database;
use crate::error::Error;
use crate::function::retry_pattern_of;
use crate::liveness::Slot;
use crate::store::{ChannelFilter, ClaimParams, DoneParams, Hold, RunRow, SettleParams, Store};

/// A run longer than this marks its function as long-running: the worker runs its later jobs
/// alone, where they show as `started` and hold no other job back.
pub const LONG_RUN: Duration = Duration::from_secs(1);

/// A claim slower than this on PostgreSQL means the planner has stale statistics (typically a
/// burst of jobs queued into a table analyzed while nearly empty: it then sorts every pending job
/// on each claim instead of reading the claim index in order). A claim that reads the index
/// takes a tenth of a millisecond; one that sorts 5 000 pending jobs, two milliseconds.
pub(crate) const SLOW_CLAIM: Duration = Duration::from_millis(1);

/// What one batch may take.
#[derive(Debug, Clone)]
pub(crate) struct BatchTicket {
    /// Stored on the jobs as the worker that ran them.
    pub worker_id: Arc<str>,
    /// The channel (and sub-channels) to take jobs from.
    pub channel: ChannelFilter,
    /// The functions this worker runs.
    pub funcs: Arc<Vec<&'static str>>,
    /// Those of them whose jobs run alone.
    pub alone: Arc<Vec<&'static str>>,
    /// At most this many jobs.
    pub limit: usize,
    /// No new job is started in the batch once it has run this long.
    pub budget: Duration,
    /// Jobs run so far by a worker that stops when idle: met again, the batch stops.
    pub seen: Option<Arc<Mutex<HashSet<i64>>>>,
    /// The channel and its configured ancestors with their capacities: the claim takes a slot
    /// of each, shared with every worker, for the batch's transaction.
    pub slots: Arc<[(String, usize)]>,
}

impl BatchTicket {
    /// The batch's claim: its channel's head, up to its limit, with its channel slots.
    fn claim(&self, now: DateTime<Utc>) -> ClaimParams<'_> {
        ClaimParams {
            worker_id: &self.worker_id,
            lease_token: "",
            now,
            limit: i64::try_from(self.limit).unwrap_or(i64::MAX),
            channel: Some(&self.channel),
            uuids: None,
            funcs: Some(&self.funcs),
            ignore_eta: false,
            slots: &self.slots,
        }
    }
}

/// Make `conn` ready to claim batches like `ticket`'s: the claim's statement is prepared, so a
/// worker's first job after it starts does not wait for it.
pub(crate) fn prepare_claim(
    db: &Database,
    conn: &mut AnyConnection,
    ticket: &BatchTicket,
) -> Result<(), Error> {
    conn.job_claim_head_prepare(&ticket.claim(db.now()))
}

/// What a batch did.
#[derive(Debug, Clone, Default)]
pub(crate) struct BatchReport {
    /// It left due jobs behind: it found as many as it could take, or stopped early.
    pub more: bool,
    /// It found nothing because its channel's slots were all taken (by other workers, or by
    /// jobs of this one still ending): the channel is worth a look again soon.
    pub refused: bool,
    /// It stopped at a job that runs alone: the channel's head is for an alone claim.
    pub alone_next: bool,
    /// It stopped at a job already run by this worker (one that stops when idle).
    pub repeated: bool,
    /// Jobs whose run ended and was stored.
    pub finished: usize,
    /// Mean run time of its jobs.
    pub per_job: Option<Duration>,
    /// Functions one of whose jobs ran longer than [`LONG_RUN`].
    pub long: Vec<String>,
    /// Jobs queued by its jobs.
    pub queued: Vec<JobId>,
    /// Jobs that waited for its jobs and may run now.
    pub released: usize,
    /// It stopped because it took all the savepoints a transaction may take: the next batch
    /// should take no more jobs than it ran.
    pub savepoints_spent: bool,
    /// Jobs it ran.
    pub ran: usize,
}

/// A batch that failed as a whole: rolled back, its jobs `pending` as they were.
#[derive(Debug)]
pub(crate) struct BatchFailed {
    /// The database's (or the queue's) reason.
    pub error: Error,
    /// The job that was running when it failed, if one was: it runs alone from now on, and a
    /// session it lost counts as an interruption.
    pub interrupted: Option<i64>,
}

/// Why a batch's transaction did not commit.
enum Abort {
    /// The watcher gave up on it (hang, stop past the grace period): it stores nothing.
    GaveUp,
    Library(Error),
}

impl From<Error> for Abort {
    fn from(e: Error) -> Self {
        Abort::Library(e)
    }
}

/// The jobs a batch ran, by fate.
struct Books<'r> {
    rows: &'r [RunRow],
    done: Vec<(i64, Option<String>)>,
    queued: Vec<(i64, Vec<JobId>)>,
    settled: usize,
}

/// Run a batch (see the module documentation) on `conn`. `slot` records the job running now, so
/// that if the process dies its job is known. An `Err` is a database failure: the batch was
/// rolled back and its jobs are `pending` as they were.
pub(crate) fn run(
    db: &Database,
    conn: &mut AnyConnection,
    ticket: &BatchTicket,
    control: &Arc<JobControl>,
    slot: Option<&Slot>,
) -> Result<BatchReport, BatchFailed> {
    let mut report = BatchReport::default();
    let started = db.now();
    let clock = Instant::now();
    let mut busy = Duration::ZERO;
    let mut runs = 0u32;
    let mut running: Option<i64> = None;
    let mut claim_took = Duration::ZERO;
    let outcome = in_transaction_on::<_, Abort>(conn, |conn| {
        let at = Instant::now();
        let rows = conn.job_claim_head(&ticket.claim(started))?;
        claim_took = at.elapsed();
        report.more = rows.len() >= ticket.limit;
        if rows.is_empty() && !ticket.slots.is_empty() {
            report.refused = !conn.channel_slots_hold(&ticket.slots)?;
        }
        let iso = Rc::new(Isolation::new(conn.savepoint_budget()));
        let mut books = Books { rows: &rows, done: Vec::new(), queued: Vec::new(), settled: 0 };
        let seen = || ticket.seen.as_ref().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()));
        for row in &rows {
            // A job this worker already ran (it stops when idle) ends the batch first, whatever
            // its path: otherwise an alone claim would give it back and a batch stop before it,
            // over and over.
            if seen().is_some_and(|s| s.contains(&row.id)) {
                report.repeated = true;
                break;
            }
            if row.isolation != 0 || ticket.alone.contains(&row.func.as_str()) {
                report.alone_next = true;
                break;
            }
            if runs > 0 && iso.exhausted() {
                report.more = true;
                report.savepoints_spent = true;
                break;
            }
            if runs > 0 && (clock.elapsed() >= ticket.budget || control.winding_down()) {
                report.more = true;
                break;
            }
            if control.is_cancelled() {
                return Err(Abort::GaveUp);
            }
            if let Some(mut seen) = seen() {
                seen.insert(row.id);
            }
            if row.identity_key.is_some() {
                // The job before may have left the transaction aborted: this statement finds out.
                loop {
                    match conn.job_free_keys(&[row.id], started) {
                        Ok(()) => break,
                        Err(e) if iso.recover(conn, &e).is_some() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                iso.wrote();
                blame(db, conn, &iso, &mut books, &ticket.worker_id, started)?;
            }
            control.set_current(row.id, row.attempts);
            if let Some(slot) = slot {
                slot.set(row.id, row.attempts);
            }
            running = Some(row.id);
            let ran = match prepare(row) {
                Ok(ready) => super::run(db, conn, row, &ready, row.attempts + 1, &iso, Some(control))?,
                Err(verdict) => super::Ran {
                    ending: Ending::Returned(Err(verdict)),
                    queued: Vec::new(),
                    took: Duration::ZERO,
                },
            };
            running = None;
            control.clear_current();
            if let Some(slot) = slot {
                slot.clear();
            }
            if control.is_cancelled() {
                // Whatever the body concluded (it may have given up because it was told to),
                // the watcher settles the job.
                return Err(Abort::GaveUp);
            }
            busy += ran.took;
            runs += 1;
            if ran.took >= LONG_RUN && !report.long.contains(&row.func) {
                report.long.push(row.func.clone());
            }
            match ran.ending {
                Ending::Returned(Ok(result)) => {
                    crate::metrics::job_ended(&row.func, &row.channel, queue_core::JobState::Done);
                    books.done.push((row.id, result));
                    books.queued.push((row.id, ran.queued));
                }
                ending => store(db, conn, &iso, &mut books, &ticket.worker_id, started, row, ending)?,
            }
            blame(db, conn, &iso, &mut books, &ticket.worker_id, started)?;
        }
        if control.is_cancelled() {
            return Err(Abort::GaveUp);
        }
        loop {
            let params =
                DoneParams { jobs: &books.done, worker_id: &ticket.worker_id, started, now: db.now() };
            match conn.job_done_many(&params) {
                Ok(released) => {
                    report.released = released;
                    break;
                }
                Err(e) if iso.recover(conn, &e).is_some() => {
                    blame(db, conn, &iso, &mut books, &ticket.worker_id, started)?
                }
                Err(e) => return Err(e.into()),
            }
        }
        let queued: Vec<JobId> = books.queued.into_iter().flat_map(|(_, q)| q).collect();
        Ok((books.done.len() + books.settled, queued))
    });
    control.clear_current();
    if let Some(slot) = slot {
        slot.clear();
    }
    if claim_took >= SLOW_CLAIM && !control.is_cancelled() {
        refresh_statistics(conn);
    }
    report.per_job = (runs > 0).then(|| busy / runs);
    crate::metrics::batch_ran(runs as usize);
    report.ran = runs as usize;
    match outcome {
        Ok((finished, queued)) => {
            report.finished = finished;
            report.queued = queued;
            Ok(report)
        }
        Err(Abort::GaveUp) => Ok(report),
        Err(Abort::Library(error)) => Err(BatchFailed { error, interrupted: running }),
    }
}

/// Store a job's outcome in the batch's transaction.
#[allow(clippy::too_many_arguments)]
fn store(
    db: &Database,
    conn: &mut AnyConnection,
    iso: &Isolation,
    books: &mut Books<'_>,
    worker_id: &str,
    started: DateTime<Utc>,
    row: &RunRow,
    ending: Ending,
) -> Result<(), Abort> {
    let pattern = retry_pattern_of(&row.func);
    let settlement = settle(ending, row.tries(false), pattern.as_ref());
    loop {
        match settle_row(db, conn, worker_id, started, row.id, &settlement) {
            Ok(_) => break,
            Err(e) if iso.recover(conn, &e).is_some() => {}
            Err(e) => return Err(e.into()),
        }
    }
    iso.wrote();
    books.settled += 1;
    crate::metrics::job_ended(&row.func, &row.channel, settlement.state);
    Ok(())
}

fn settle_row(
    db: &Database,
    conn: &mut AnyConnection,
    worker_id: &str,
    started: DateTime<Utc>,
    id: i64,
    settlement: &Settlement,
) -> Result<bool, Error> {
    conn.job_settle(&SettleParams { id, hold: Hold::Locked, settlement, worker_id, started, now: db.now() })
}

/// The jobs found to have left the transaction aborted were rolled back: take them out of the
/// done ones and store their failure.
fn blame(
    db: &Database,
    conn: &mut AnyConnection,
    iso: &Isolation,
    books: &mut Books<'_>,
    worker_id: &str,
    started: DateTime<Utc>,
) -> Result<(), Abort> {
    for id in iso.take_blamed() {
        books.done.retain(|(done, _)| *done != id);
        books.queued.retain(|(job, _)| *job != id);
        let Some(row) = books.rows.iter().find(|r| r.id == id) else { continue };
        let ending = Ending::Returned(Err(aborted_transaction_verdict()));
        store(db, conn, iso, books, worker_id, started, row, ending)?;
    }
    Ok(())
}

/// `ANALYZE` the jobs table, at most once per half minute across the process, rather than wait
/// for autovacuum to notice a burst (the planner would sort every pending job on each claim).
pub(crate) fn refresh_statistics(conn: &mut AnyConnection) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now < last + 30 || LAST.compare_exchange(last, now, Ordering::SeqCst, Ordering::Relaxed).is_err() {
        return;
    }
    tracing::info!("claims are slow: refreshing the statistics of the jobs table");
    if let Err(e) = conn.table_analyze() {
        tracing::warn!(error = %chain(&e), "cannot refresh the statistics of the jobs table");
    }
}
