//! Run jobs. Two paths:
//!
//! - **Batch** ([`run_batch`]): one transaction selects a batch of jobs, locks them, runs them
//!   one after the other and marks them all `done` in one statement, then commits. The locks are
//!   the claim: a crash rolls the whole batch back and its jobs are simply `pending` again. When a
//!   job fails, the batch is rolled back, the failure is stored on that job alone, and the jobs
//!   that had succeeded before it run again in a new batch.
//! - **Lease** ([`run_claimed`]): a job claimed under a lease (committed `started`) runs in its
//!   own transaction, which stores its outcome fenced by the lease. Jobs of isolated functions,
//!   of functions with a timeout or seen running long, and of sequential channels take this
//!   path; so do the jobs of a batch that failed as a whole, one by one.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use queue_core::options::after_std;
use queue_core::retry::delay_for;
use queue_core::{JobError, JobId, JobState};

use crate::connection::AnyConnection;
use crate::database::Database;
use crate::error::Error;
use crate::function::{Invocation, JobFunction, registry};
use crate::store::{BatchRow, ChannelFilter, ClaimParams, DoneParams, FinishParams, JobRow, Store};
use crate::transaction::{Env, JobRun, depth, in_transaction_on};

/// How one run ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunOutcome {
    /// The job's state after the run (`pending` for a retry or a give-back). `None` when nothing
    /// was stored: the lease was lost, or the database failed.
    pub state: Option<JobState>,
    /// Jobs the job queued while it ran.
    pub queued: Vec<JobId>,
    /// Nothing could be stored but the claim may still hold: the caller must give the job back
    /// (`job_release` with its lease) once the database answers again.
    pub unsettled: bool,
}

impl RunOutcome {
    fn stored(state: JobState) -> Self {
        RunOutcome { state: Some(state), ..RunOutcome::default() }
    }

    fn unsettled() -> Self {
        RunOutcome { unsettled: true, ..RunOutcome::default() }
    }
}

/// Shared by a running job and the worker watching it. The run ends exactly once: either its
/// executor finishes it or the worker gives up on it (timeout, or shutdown past the grace
/// period), whichever comes first.
#[derive(Debug, Default)]
pub struct JobControl {
    /// [`RUNNING`], [`FINISHED`], [`TIMED_OUT`] or [`ABANDONED`].
    state: AtomicU8,
    /// PostgreSQL backend pid of the job's connection (0: unknown or no longer running).
    pg_pid: AtomicI32,
}

const RUNNING: u8 = 0;
const FINISHED: u8 = 1;
const TIMED_OUT: u8 = 2;
const ABANDONED: u8 = 3;

impl JobControl {
    /// Give up on the run because it passed its timeout, unless it has finished already: true
    /// when this call did. The body sees it through `Env::is_cancelled`.
    pub fn expire(&self) -> bool {
        self.state.compare_exchange(RUNNING, TIMED_OUT, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// Give up on the run because the worker is stopping (it will be given back, its try not
    /// counted), unless it has finished already: true when this call did.
    pub fn abandon(&self) -> bool {
        self.state.compare_exchange(RUNNING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// Mark the run finished by its executor, unless it expired first: true when it had not.
    pub fn finish(&self) -> bool {
        self.pg_pid.store(0, Ordering::SeqCst);
        self.state.compare_exchange(RUNNING, FINISHED, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// True once the worker gave up on the run.
    pub fn is_cancelled(&self) -> bool {
        self.state.load(Ordering::SeqCst) >= TIMED_OUT
    }

    /// The backend pid of the connection running the job, when known.
    pub fn pg_pid(&self) -> Option<i32> {
        Some(self.pg_pid.load(Ordering::SeqCst)).filter(|pid| *pid != 0)
    }
}

/// The verdict for a run that passed its function's timeout: retried per the function's retry
/// pattern if it has one, else failed.
pub(crate) fn timeout_verdict(function: &JobFunction) -> JobError {
    let limit = function.timeout().map(|t| format!("{t:?}")).unwrap_or_else(|| "?".into());
    let message = format!("the job exceeded its timeout of {limit}");
    if function.retry_pattern().is_some() {
        JobError::Retry { after: None, reason: message, ignore_attempt: false }
    } else {
        JobError::Failed { name: "TimeoutError".into(), message, info: String::new() }
    }
}

/// Store the timeout verdict of a job another thread is still running (its lease fences the
/// running body off).
pub(crate) fn store_timeout(
    db: &Database,
    conn: &mut AnyConnection,
    row: &JobRow,
    function: &JobFunction,
) -> RunOutcome {
    let lease = row.lease_token.clone().unwrap_or_default();
    store_verdict(db, conn, row, &lease, Some(function), timeout_verdict(function))
}

/// Why a job's own transaction did not commit.
enum Abort {
    Verdict(JobError),
    LeaseLost,
    /// The worker stopped and gave the job back.
    Abandoned,
    Library(Error),
}

impl From<Error> for Abort {
    fn from(e: Error) -> Self {
        Abort::Library(e)
    }
}

/// Turn a panic payload into a failure verdict.
fn panic_verdict(payload: Box<dyn std::any::Any + Send>) -> JobError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-text payload".to_owned());
    JobError::Failed { name: "panic".into(), message, info: "the job function panicked".into() }
}

/// Run a claimed job on `conn`. Timeouts are not watched here (see [`run_claimed_with`]).
pub fn run_claimed(db: &Database, conn: &mut AnyConnection, row: &JobRow) -> RunOutcome {
    run_claimed_with(db, conn, row, None)
}

/// Run a claimed job on `conn`, under the watch of `control` when given: a cancelled run is
/// rolled back and gets its function's timeout verdict.
pub(crate) fn run_claimed_with(
    db: &Database,
    conn: &mut AnyConnection,
    row: &JobRow,
    control: Option<Arc<JobControl>>,
) -> RunOutcome {
    let lease = row.lease_token.clone().unwrap_or_default();
    let job = match row.decode() {
        Ok(job) => job,
        Err(e) => {
            let verdict =
                JobError::Failed { name: "DecodeError".into(), message: e.to_string(), info: chain(&e) };
            return store_verdict(db, conn, row, &lease, None, verdict);
        }
    };
    let Some(function) = registry().ok().and_then(|r| r.get(&job.func)) else {
        let verdict = JobError::failed(
            "UnknownFunction",
            format!("job function {:?} is not registered in this binary", job.func),
        );
        return store_verdict(db, conn, row, &lease, None, verdict);
    };
    let watched = control.clone();
    let run = JobRun { uuid: job.uuid, attempt: job.attempts, control: watched.clone() };
    let ran = in_transaction_on::<_, Abort>(conn, |conn| {
        // Hold the row for the whole run (the rescuer's sign of life), and make sure the claim
        // still holds: a job rescued or cancelled since must not run.
        let Some(pid) = conn.job_lock_running(row.id, &lease)? else {
            return Err(Abort::LeaseLost);
        };
        if let Some(control) = &watched {
            control.pg_pid.store(pid, Ordering::SeqCst);
        }
        Env::enter(conn, job.context.clone(), db.clone(), Some(run), |env| {
            let inv = Invocation { func: function.name(), record_ids: &job.record_ids, args: &job.args };
            let verdict = catch_unwind(AssertUnwindSafe(|| (function.run)(env, &inv)))
                .unwrap_or_else(|p| Err(panic_verdict(p)));
            match watched.as_ref().map(|c| c.state.load(Ordering::SeqCst)) {
                Some(TIMED_OUT) => return Err(Abort::Verdict(timeout_verdict(function))),
                Some(ABANDONED) => return Err(Abort::Abandoned),
                _ => {}
            }
            let result = verdict.map_err(Abort::Verdict)?;
            let finished = env.try_conn()?.job_finish(&FinishParams {
                id: row.id,
                lease_token: &lease,
                state: JobState::Done,
                result: result.as_deref(),
                exc: None,
                eta: None,
                uncount_attempt: false,
                now: db.now(),
            })?;
            if !finished {
                return Err(Abort::LeaseLost);
            }
            Ok(env.take_queued())
        })
    });
    // The connection goes back to the pool after this: it must not be cancelled for this job.
    if let Some(control) = &watched {
        control.pg_pid.store(0, Ordering::SeqCst);
    }
    match ran {
        Ok(queued) => RunOutcome { queued, ..RunOutcome::stored(JobState::Done) },
        Err(Abort::Verdict(verdict)) => store_verdict(db, conn, row, &lease, Some(function), verdict),
        Err(Abort::LeaseLost) => {
            tracing::warn!(job = %job.uuid, "job was taken over by another worker; its writes were rolled back");
            RunOutcome::default()
        }
        Err(Abort::Abandoned) => RunOutcome { unsettled: true, ..RunOutcome::default() },
        Err(Abort::Library(e)) if e.is_transient() => {
            tracing::warn!(job = %job.uuid, error = %chain(&e), "database unavailable during a job; giving it back");
            match conn.job_release(&[row.id], &lease) {
                Ok(_) => RunOutcome::stored(JobState::Pending),
                Err(_) => RunOutcome::unsettled(),
            }
        }
        Err(Abort::Library(e)) => {
            tracing::error!(job = %job.uuid, error = %chain(&e), "job could not be run");
            let verdict =
                JobError::Failed { name: "QueueError".into(), message: e.to_string(), info: chain(&e) };
            store_verdict(db, conn, row, &lease, Some(function), verdict)
        }
    }
}

/// Store a verdict in its own transaction (the job's writes were rolled back).
fn store_verdict(
    db: &Database,
    conn: &mut AnyConnection,
    row: &JobRow,
    lease: &str,
    function: Option<&JobFunction>,
    verdict: JobError,
) -> RunOutcome {
    let now = db.now();
    let mut uncount_attempt = false;
    let (state, result, exc, eta) = match &verdict {
        JobError::Retry { after, reason, ignore_attempt } => {
            let tries = u32::try_from(row.attempts).unwrap_or(0);
            if !*ignore_attempt && row.max_retries > 0 && row.attempts >= row.max_retries {
                let message = format!("max retries ({}) reached: {reason}", row.max_retries);
                (JobState::Failed, None, Some(("MaxRetriesReached".to_owned(), message, String::new())), None)
            } else {
                uncount_attempt = *ignore_attempt;
                let pattern = function.and_then(JobFunction::retry_pattern);
                let delay = after.unwrap_or_else(|| delay_for(pattern.as_ref(), tries));
                let eta = after_std(now, delay);
                let name = if *ignore_attempt { "Postponed" } else { "Retry" };
                (JobState::Pending, None, Some((name.to_owned(), reason.clone(), String::new())), Some(eta))
            }
        }
        JobError::Cancel(reason) => (JobState::Cancelled, Some(reason.clone()), None, None),
        JobError::NothingToDo(message) => (JobState::Done, Some(message.clone()), None, None),
        JobError::Failed { name, message, info } => {
            (JobState::Failed, None, Some((name.clone(), message.clone(), info.clone())), None)
        }
        other => {
            (JobState::Failed, None, Some(("JobError".to_owned(), other.to_string(), String::new())), None)
        }
    };
    let stored = in_transaction_on::<_, Error>(conn, |conn| {
        conn.job_finish(&FinishParams {
            id: row.id,
            lease_token: lease,
            state,
            result: result.as_deref(),
            exc: exc.as_ref().map(|(n, m, i)| (n.as_str(), m.as_str(), i.as_str())),
            eta,
            uncount_attempt,
            now,
        })
    });
    match stored {
        Ok(true) => RunOutcome::stored(state),
        Ok(false) => {
            tracing::warn!(job = %row.uuid, "job was taken over by another worker; its outcome was not stored");
            RunOutcome::default()
        }
        Err(e) => {
            tracing::error!(job = %row.uuid, error = %chain(&e), "failed to store a job's outcome; it will be given back");
            RunOutcome::unsettled()
        }
    }
}

/// A run longer than this marks its function as long-running: the worker sends its later jobs
/// down the lease path, where they show as `started` and hold no other job back.
pub const LONG_RUN: Duration = Duration::from_secs(1);

/// A claim slower than this on PostgreSQL means the planner has stale statistics (typically a
/// burst of jobs queued into a table analyzed while nearly empty: it then sorts every pending job
/// on each claim instead of reading the claim index in order).
pub(crate) const SLOW_CLAIM: Duration = Duration::from_millis(25);

/// `ANALYZE` the jobs table, at most once per half minute across the process, rather than wait
/// for autovacuum to notice the burst.
pub(crate) fn refresh_statistics(conn: &mut AnyConnection) {
    use std::sync::atomic::AtomicU64;
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

/// What one batch may take.
#[derive(Debug, Clone)]
pub(crate) struct BatchTicket {
    /// Stored on the jobs as the worker that ran them.
    pub worker_id: Arc<str>,
    /// The channel (and sub-channels) to take jobs from.
    pub channel: ChannelFilter,
    /// The functions whose jobs may run in a batch.
    pub funcs: Arc<Vec<&'static str>>,
    /// At most this many jobs.
    pub limit: usize,
    /// No new job is started in the batch once it has run this long.
    pub budget: Duration,
}

/// What a batch did.
#[derive(Debug, Clone, Default)]
pub(crate) struct BatchReport {
    /// The batch left due jobs behind: it found as many as it could take, or stopped early
    /// (its time ran out, or a job failed). False: the channel ran dry.
    pub more: bool,
    /// Jobs whose run ended and was stored: `done` in a batch, or a failure stored alone.
    pub finished: usize,
    /// Mean run time of the jobs the batch ran.
    pub per_job: Option<Duration>,
    /// Functions one of whose jobs ran longer than [`LONG_RUN`].
    pub long: Vec<String>,
    /// Jobs queued by the jobs of the batch.
    pub queued: Vec<JobId>,
}

/// Why a batch's transaction did not commit.
enum BatchAbort {
    /// A job failed: the batch was rolled back. `ran` are the uuids of the jobs that had
    /// succeeded before it, in order.
    Failed {
        ran: Vec<String>,
        row: Box<BatchRow>,
        function: Option<&'static JobFunction>,
        verdict: JobError,
    },
    /// The worker is stopping: everything goes back to `pending`.
    Abandoned,
    Library(Error),
}

impl From<Error> for BatchAbort {
    fn from(e: Error) -> Self {
        BatchAbort::Library(e)
    }
}

/// Run a batch of jobs (see the module documentation) on `conn`, whose PostgreSQL backend pid is
/// `pid` (0 on SQLite). An `Err` is a database failure: the batch was rolled back and its jobs
/// are `pending` as they were.
pub(crate) fn run_batch(
    db: &Database,
    conn: &mut AnyConnection,
    ticket: &BatchTicket,
    control: &Arc<JobControl>,
    pid: i32,
) -> Result<BatchReport, Error> {
    let mut report = BatchReport::default();
    let mut busy = Duration::ZERO;
    let mut runs = 0u32;
    // After a failure: the jobs to run again, by uuid.
    let mut only: Option<Vec<String>> = None;
    loop {
        let started = db.now();
        let clock = Instant::now();
        let more = std::cell::Cell::new(false);
        let claim_took = std::cell::Cell::new(Duration::ZERO);
        // The jobs this round started, in order (to run alone if the batch fails as a whole).
        let started_jobs = std::cell::RefCell::new(Vec::new());
        let ran = in_transaction_on::<_, BatchAbort>(conn, |conn| {
            control.pg_pid.store(pid, Ordering::SeqCst);
            let level = depth(conn).map_err(Error::query("read the transaction depth"))?;
            let at = Instant::now();
            let rows = conn.job_claim_batch(&ClaimParams {
                worker_id: &ticket.worker_id,
                lease_token: "",
                now: started,
                limit: only.as_ref().map_or(ticket.limit, Vec::len) as i64,
                channel: Some(&ticket.channel),
                uuids: only.as_deref(),
                funcs: Some(&ticket.funcs),
                ignore_eta: only.is_some(),
            })?;
            claim_took.set(at.elapsed());
            let keyed: Vec<i64> = rows.iter().filter(|r| r.identity_key.is_some()).map(|r| r.id).collect();
            conn.job_free_keys(&keyed, started)?;
            more.set(only.is_none() && rows.len() as i64 >= ticket.limit as i64);
            let mut done: Vec<(i64, Option<String>)> = Vec::with_capacity(rows.len());
            let mut queued = Vec::new();
            for (i, row) in rows.iter().enumerate() {
                if !done.is_empty() && clock.elapsed() >= ticket.budget {
                    // The rest stay `pending`, unlocked at commit, for the next batch.
                    more.set(true);
                    break;
                }
                if control.is_cancelled() {
                    return Err(BatchAbort::Abandoned);
                }
                started_jobs.borrow_mut().push(row.uuid.clone());
                let at = Instant::now();
                let outcome = run_in_batch(db, conn, row, control, level);
                let took = at.elapsed();
                // Stopping: whatever the body concluded (it may have given up because it was
                // told to), nothing of the batch is stored.
                if control.is_cancelled() {
                    return Err(BatchAbort::Abandoned);
                }
                busy += took;
                runs += 1;
                if took >= LONG_RUN && !report.long.contains(&row.func) {
                    report.long.push(row.func.clone());
                }
                match outcome {
                    Ok((result, more)) => {
                        done.push((row.id, result));
                        queued.extend(more);
                    }
                    Err((function, verdict)) => {
                        if i + 1 < rows.len() {
                            more.set(true);
                        }
                        return Err(BatchAbort::Failed {
                            // Every job before this one succeeded.
                            ran: started_jobs.borrow()[..i].to_vec(),
                            row: Box::new(row.clone()),
                            function,
                            verdict,
                        });
                    }
                }
            }
            if control.is_cancelled() {
                return Err(BatchAbort::Abandoned);
            }
            conn.job_done_many(&DoneParams {
                jobs: &done,
                worker_id: &ticket.worker_id,
                started,
                now: db.now(),
            })?;
            Ok((done.len(), queued))
        });
        // The connection may serve other work now: it must not be ended for this batch.
        control.pg_pid.store(0, Ordering::SeqCst);
        if claim_took.get() >= SLOW_CLAIM {
            refresh_statistics(conn);
        }
        report.more |= more.get();
        report.per_job = (runs > 0).then(|| busy / runs);
        match ran {
            Ok((n, queued)) => {
                report.finished += n;
                report.queued.extend(queued);
                return Ok(report);
            }
            Err(BatchAbort::Failed { verdict, .. }) if is_aborted_transaction(&verdict) => {
                // A body before this job left the transaction aborted: blame is unclear.
                report.finished += run_each_alone(db, conn, &ticket.worker_id, &started_jobs.borrow());
                report.more = true;
                return Ok(report);
            }
            Err(BatchAbort::Failed { ran, row, function, verdict }) => {
                if store_alone(db, conn, &ticket.worker_id, &row, function, verdict) {
                    report.finished += 1;
                }
                if ran.is_empty() {
                    return Ok(report);
                }
                only = Some(ran);
            }
            Err(BatchAbort::Abandoned) => return Ok(report),
            Err(BatchAbort::Library(e)) if !e.is_transient() && !started_jobs.borrow().is_empty() => {
                tracing::warn!(error = %chain(&e), "a batch failed as a whole; running its jobs one by one");
                report.finished += run_each_alone(db, conn, &ticket.worker_id, &started_jobs.borrow());
                report.more = true;
                return Ok(report);
            }
            Err(BatchAbort::Library(e)) => return Err(e),
        }
    }
}

/// True for the failure of a job that only met a transaction some earlier statement had aborted
/// (PostgreSQL refuses every statement after an error until the transaction ends).
fn is_aborted_transaction(verdict: &JobError) -> bool {
    match verdict {
        JobError::Failed { message, info, .. } => {
            let text = format!("{message} {info}");
            text.contains("current transaction is aborted")
        }
        _ => false,
    }
}

/// Run one job of a batch inside the batch's transaction: its result and the jobs it queued, or
/// its function and failure verdict.
#[allow(clippy::type_complexity)]
fn run_in_batch(
    db: &Database,
    conn: &mut AnyConnection,
    row: &BatchRow,
    control: &Arc<JobControl>,
    level: u32,
) -> Result<(Option<String>, Vec<JobId>), (Option<&'static JobFunction>, JobError)> {
    let (uuid, record_ids, args, context) = row.decode().map_err(|e| {
        (None, JobError::Failed { name: "DecodeError".into(), message: e.to_string(), info: chain(&e) })
    })?;
    let Some(function) = registry().ok().and_then(|r| r.get(&row.func)) else {
        let message = format!("job function {:?} is not registered in this binary", row.func);
        return Err((None, JobError::failed("UnknownFunction", message)));
    };
    let run = JobRun { uuid, attempt: row.attempts + 1, control: Some(Arc::clone(control)) };
    let outcome = Env::enter(conn, context, db.clone(), Some(run), |env| {
        let inv = Invocation { func: function.name(), record_ids: &record_ids, args: &args };
        catch_unwind(AssertUnwindSafe(|| (function.run)(env, &inv)))
            .unwrap_or_else(|p| Err(panic_verdict(p)))
            .map(|result| (result, env.take_queued()))
    });
    // A body that left a transaction open (or closed the batch's) cannot share the batch.
    let found = depth(conn).unwrap_or(0);
    if outcome.is_ok() && found != level {
        let e = Error::TransactionDepth { expected: level, found };
        let verdict =
            JobError::Failed { name: "QueueError".into(), message: e.to_string(), info: String::new() };
        return Err((Some(function), verdict));
    }
    outcome.map_err(|verdict| (Some(function), verdict))
}

/// Store the verdict of a job whose batch was rolled back, on that job alone: claim it under a
/// lease (its try counted) and store the verdict, in one transaction. False when the job was no
/// longer `pending` (an operator acted meanwhile) or the database failed (then it stays `pending`
/// and runs again in a later batch).
fn store_alone(
    db: &Database,
    conn: &mut AnyConnection,
    worker_id: &str,
    row: &BatchRow,
    function: Option<&JobFunction>,
    verdict: JobError,
) -> bool {
    let stored = in_transaction_on::<_, Error>(conn, |conn| {
        let lease = JobId::new().to_string();
        let Some(claimed) = claim_alone(db, conn, worker_id, &lease, &row.uuid)? else { return Ok(false) };
        match store_verdict(db, conn, &claimed, &lease, function, verdict).state {
            Some(_) => Ok(true),
            None => Err(Error::LeaseLost(row.uuid.clone())),
        }
    });
    stored.unwrap_or_else(|e| {
        tracing::warn!(job = %row.uuid, error = %chain(&e), "cannot store a failed job's outcome now; it stays pending and will run again");
        false
    })
}

/// Claim one `pending` job by uuid under `lease`, due or not.
fn claim_alone(
    db: &Database,
    conn: &mut AnyConnection,
    worker_id: &str,
    lease: &str,
    uuid: &str,
) -> Result<Option<JobRow>, Error> {
    let uuids = [uuid.to_owned()];
    let rows = conn.job_claim(&ClaimParams {
        worker_id,
        lease_token: lease,
        now: db.now(),
        limit: 1,
        channel: None,
        uuids: Some(&uuids),
        funcs: None,
        ignore_eta: true,
    })?;
    Ok(rows.into_iter().next())
}

/// After a batch failed in a way no single job can be blamed for (its `done` update or its
/// commit was refused, or a body let the transaction abort and a later job paid for it): run
/// each of the jobs it had started alone, on the lease path, where a failure belongs to its job.
/// Returns how many runs ended.
fn run_each_alone(db: &Database, conn: &mut AnyConnection, worker_id: &str, uuids: &[String]) -> usize {
    let mut finished = 0;
    for uuid in uuids {
        let lease = JobId::new().to_string();
        match claim_alone(db, conn, worker_id, &lease, uuid) {
            Ok(Some(row)) => {
                let outcome = run_claimed(db, conn, &row);
                if outcome.unsettled {
                    let _ = conn.job_release(&[row.id], &lease);
                }
                finished += usize::from(outcome.state.is_some());
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(job = %uuid, error = %chain(&e), "cannot run a job alone now; it stays pending");
                return finished;
            }
        }
    }
    finished
}

/// Jobs claimed at once by [`run_after_commit`]: few, so a crash leaves few claimed.
const AFTER_COMMIT_CHUNK: usize = 16;

/// Run jobs queued by a committed transaction when no worker is configured: each in its own
/// transaction, in claim order, a few claimed at a time; jobs they queue in turn run after them.
/// Their etas are not waited for (no worker will come back for them). A job's failure is stored
/// on the job; a failure of the database itself is logged, and the jobs not run yet stay
/// `pending` (a worker, or `queue-worker run --until-idle`, can run them later).
pub(crate) fn run_after_commit(db: &Database, conn: &mut AnyConnection, ids: Vec<JobId>) {
    let worker_id = format!("after-commit-{}", std::process::id());
    if let Some(path) = db.sqlite_path()
        && let Err(e) = crate::maintenance::liveness::hold(&path, &worker_id)
    {
        tracing::error!(error = %chain(&e), "cannot show this process alive; its jobs stay pending");
        return;
    }
    let mut todo = ids;
    // Jobs waiting for a parent in the same batch are not claimable yet: they get another pass
    // once the others ran, as long as passes make progress.
    loop {
        let mut progressed = false;
        let mut waiting = Vec::new();
        while !todo.is_empty() {
            let rest = todo.split_off(todo.len().min(AFTER_COMMIT_CHUNK));
            let chunk = std::mem::replace(&mut todo, rest);
            let uuids: Vec<String> = chunk.iter().map(JobId::to_string).collect();
            let lease = JobId::new().to_string();
            let claimed = conn.job_claim(&ClaimParams {
                worker_id: &worker_id,
                lease_token: &lease,
                now: db.now(),
                limit: uuids.len() as i64,
                channel: None,
                uuids: Some(&uuids),
                funcs: None,
                ignore_eta: true,
            });
            let mut rows = match claimed {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!(error = %chain(&e), "failed to take the jobs queued by a transaction; they stay pending");
                    return;
                }
            };
            rows.sort_by_key(|r| (r.priority, r.id));
            waiting.extend(chunk.into_iter().filter(|id| !rows.iter().any(|r| r.uuid == id.to_string())));
            for row in &rows {
                progressed = true;
                let outcome = run_claimed(db, conn, row);
                if outcome.unsettled {
                    let _ = conn.job_release(&[row.id], row.lease_token.as_deref().unwrap_or_default());
                }
                todo.extend(outcome.queued);
            }
        }
        if waiting.is_empty() || !progressed {
            return;
        }
        todo = waiting;
    }
}

/// An error and its causes on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
