//! A job run alone: claimed under a lease (committed `started`, its try counted), run in its own
//! transaction that first locks its row (the rescuer's sign of life) and stores its outcome
//! while it still holds the row. Used by the worker for jobs that run alone, and by runs after
//! commit when no worker is configured.
//!
//! A watcher that gives up on a run (timeout, hang) ends the run's session and stores the outcome
//! from outside ([`give_up`]), holding the job against rescuers meanwhile.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use queue_core::ending::settle;
use queue_core::{Ending, JobId, JobState, Tries};

use super::{GaveUp, Isolation, JobControl, aborted_transaction_verdict, chain, prepare, timeout_verdict};
use crate::connection::{AnyConnection, in_transaction_on, poison};
use crate::database::Database;
use crate::error::Error;
use crate::function::registry;
use crate::store::{ClaimParams, Hold, RunRow, SettleParams, Store};

/// How a job run alone ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Outcome {
    /// The job's state after the run. `None` when nothing was stored: the lease was lost, a
    /// watcher gave up on the run (and settles it), or the database failed.
    pub state: Option<JobState>,
    /// Jobs it queued.
    pub queued: Vec<JobId>,
    /// The database failed under it: it must be given back (an interruption) once the
    /// database answers again.
    pub unsettled: bool,
    /// How long its body ran.
    pub took: Duration,
    /// A watcher ended the run's session: the connection must not serve again.
    pub ended: bool,
}

/// Why a job's own transaction did not commit.
enum Abort {
    LeaseLost,
    GaveUp,
    Library(Error),
}

impl From<Error> for Abort {
    fn from(e: Error) -> Self {
        Abort::Library(e)
    }
}

/// Run a job claimed under `lease` on `conn`, watched by `control` when given.
pub(crate) fn run(
    db: &Database,
    conn: &mut AnyConnection,
    row: &RunRow,
    lease: &str,
    worker_id: &str,
    control: Option<&Arc<JobControl>>,
) -> Outcome {
    let started = db.now();
    let mut took = Duration::ZERO;
    let ran = in_transaction_on::<_, Abort>(conn, |conn| {
        // Hold the row for the whole run, and make sure the claim still holds: a job rescued or
        // cancelled since must not run.
        if !conn.job_lock_running(row.id, lease)? {
            return Err(Abort::LeaseLost);
        }
        let iso = Rc::new(Isolation::new(conn.savepoint_budget()));
        let (ending, mut queued, pattern) = match prepare(row) {
            Ok(ready) => {
                let ran = super::run(db, conn, row, &ready, row.attempts, &iso, control)?;
                took = ran.took;
                (ran.ending, ran.queued, ready.function.retry_pattern())
            }
            Err(verdict) => (Ending::Returned(Err(verdict)), Vec::new(), None),
        };
        if control.is_some_and(|c| c.is_cancelled()) {
            return Err(Abort::GaveUp);
        }
        let mut settlement = settle(ending, row.tries(true), pattern.as_ref());
        loop {
            let params = SettleParams {
                id: row.id,
                hold: Hold::Lease(lease),
                settlement: &settlement,
                worker_id,
                started,
                now: db.now(),
            };
            match conn.job_settle(&params) {
                Ok(true) => {
                    crate::metrics::job_ended(&row.func, &row.channel, settlement.state);
                    break;
                }
                Ok(false) => return Err(Abort::LeaseLost),
                Err(e) if iso.recover(conn, &e).is_some() => {
                    iso.take_blamed();
                    queued.clear();
                    let ending = Ending::Returned(Err(aborted_transaction_verdict()));
                    settlement = settle(ending, row.tries(true), None);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok((settlement.state, queued))
    });
    match ran {
        Ok((state, queued)) => Outcome { state: Some(state), queued, took, ..Outcome::default() },
        Err(Abort::LeaseLost) => {
            tracing::warn!(job = %row.uuid, "job was taken over by another worker; its writes were rolled back");
            Outcome { took, ..Outcome::default() }
        }
        Err(Abort::GaveUp) => Outcome { took, ..Outcome::default() },
        Err(Abort::Library(e)) if e.is_transient() => {
            tracing::warn!(job = %row.uuid, error = %chain(&e), "the database failed under a job; giving it back");
            let ending = Ending::Interrupted { reason: format!("the database failed under it: {e}") };
            match settle_outside(db, conn, row, Some(lease), ending, worker_id) {
                Ok(_) => Outcome { state: Some(JobState::Pending), took, ..Outcome::default() },
                Err(_) => Outcome { unsettled: true, took, ..Outcome::default() },
            }
        }
        Err(Abort::Library(e)) => {
            tracing::error!(job = %row.uuid, error = %chain(&e), "job could not be run");
            let verdict = queue_core::JobError::Failed {
                name: "QueueError".into(),
                message: e.to_string(),
                info: chain(&e),
                source: Some(Box::new(e)),
            };
            let state = settle_outside(db, conn, row, Some(lease), Ending::Returned(Err(verdict)), worker_id)
                .ok()
                .flatten();
            Outcome { state, took, ..Outcome::default() }
        }
    }
}

/// Store `ending` on the job of `row` from outside its run, in a transaction of its own on
/// `conn`: a job `started` under `lease`, or (no lease) a batch's job, `pending` again. Returns
/// the state stored, `None` when the job was no longer held so.
pub(crate) fn settle_outside(
    db: &Database,
    conn: &mut AnyConnection,
    row: &RunRow,
    lease: Option<&str>,
    ending: Ending,
    worker_id: &str,
) -> Result<Option<JobState>, Error> {
    settle_id(db, conn, row.id, &row.func, lease, ending, worker_id)
}

/// [`settle_outside`] for a job known by its id and function.
pub(crate) fn settle_id(
    db: &Database,
    conn: &mut AnyConnection,
    id: i64,
    func: &str,
    lease: Option<&str>,
    ending: Ending,
    worker_id: &str,
) -> Result<Option<JobState>, Error> {
    let pattern = crate::function::retry_pattern_of(func);
    in_transaction_on::<_, Error>(conn, |conn| {
        let Some(standing) = conn.job_standing(id)? else { return Ok(None) };
        let (hold, tries) = match (standing.state, lease) {
            (JobState::Pending, None) => (Hold::Locked, standing.tries),
            (JobState::Started, Some(lease)) if standing.lease_token.as_deref() == Some(lease) => {
                // The claim counted the run already.
                (Hold::Lease(lease), Tries { before: standing.tries.before - 1, ..standing.tries })
            }
            _ => return Ok(None),
        };
        let died = matches!(ending, Ending::Died { .. });
        let settlement = settle(ending, tries, pattern.as_ref());
        let now = db.now();
        let params = SettleParams { id, hold, settlement: &settlement, worker_id, started: now, now };
        let stored = conn.job_settle(&params)?;
        if stored {
            if died {
                crate::metrics::job_rescued(&standing.func, &standing.channel);
            }
            crate::metrics::job_ended(&standing.func, &standing.channel, settlement.state);
        }
        Ok(stored.then_some(settlement.state))
    })
}

/// A watcher gives up on a run (`why`): end its session from another connection, so that its
/// statement stops, its transaction rolls back and its locks are freed at once, then store
/// `ending` on its job (`started` under `lease`, or, without one, a batch's `pending` job). The
/// job is held against rescuers meanwhile. Returns the state stored.
pub(crate) fn give_up(
    db: &Database,
    control: &JobControl,
    id: i64,
    func: &str,
    lease: Option<&str>,
    ending: Ending,
    worker_id: &str,
) -> Result<Option<JobState>, Error> {
    let mut other = db.conn()?;
    other.job_settle_lock(id)?;
    let ended = control.end_session(&mut other);
    let stored = ended.and_then(|_| settle_id(db, &mut other, id, func, lease, ending, worker_id));
    let unlocked = other.job_settle_unlock(id);
    if unlocked.is_err() {
        // Closing the connection frees the lock: rescuers must not leave the job alone forever.
        poison(&mut other);
    }
    let stored = stored?;
    unlocked?;
    Ok(stored)
}

/// Jobs claimed at once by [`after_commit`]: few, so a crash leaves few claimed.
const AFTER_COMMIT_CHUNK: usize = 16;

/// Run jobs queued by a committed transaction when no worker is configured: each alone, in claim
/// order, a few claimed at a time; jobs they queue in turn run after them. Their etas are not
/// waited for (no worker will come back for them); their timeouts hold. A job's failure is
/// stored on the job; a failure of the database itself is logged, and the jobs not run yet stay
/// `pending` (a worker, or `queue-worker run --until-idle`, can run them later).
pub(crate) fn after_commit(db: &Database, conn: &mut AnyConnection, ids: Vec<JobId>) {
    let worker_id = format!("after-commit-{}", std::process::id());
    if let Some(path) = db.sqlite_path()
        && let Err(e) = crate::liveness::hold(&crate::liveness::folder_of_sqlite(&path), &worker_id)
    {
        tracing::error!(error = %chain(&e), "cannot show this process alive; its jobs stay pending");
        return;
    }
    let mut todo = ids;
    // A connection whose session a timeout ended is replaced by one from the pool.
    let mut fresh: Option<crate::database::PooledConn> = None;
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
            let claimed = fresh.as_deref_mut().unwrap_or(&mut *conn).job_claim(&ClaimParams {
                worker_id: &worker_id,
                lease_token: &lease,
                now: db.now(),
                limit: uuids.len() as i64,
                channel: None,
                uuids: Some(&uuids),
                funcs: None,
                ignore_eta: true,
                slots: &[],
            });
            let rows = match claimed {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!(error = %chain(&e), "failed to take the jobs queued by a transaction; they stay pending");
                    return;
                }
            };
            waiting.extend(chunk.into_iter().filter(|id| !rows.iter().any(|r| r.uuid == id.to_string())));
            for row in &rows {
                progressed = true;
                let current = fresh.as_deref_mut().unwrap_or(&mut *conn);
                let outcome = run_watched(db, current, row, &lease, &worker_id);
                if outcome.ended {
                    match db.conn() {
                        Ok(c) => fresh = Some(c),
                        Err(e) => {
                            tracing::error!(error = %chain(&e), "no connection to run the jobs queued by a transaction; they stay claimed until a worker rescues them");
                            return;
                        }
                    }
                }
                let current = fresh.as_deref_mut().unwrap_or(&mut *conn);
                if outcome.unsettled {
                    let _ = current.job_release(&[row.id], &lease);
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

/// [`run`] a job on this thread; when its function has a timeout, a watchdog thread gives up on
/// it once the timeout passes (the body is told through `Env::is_cancelled`; its writes are
/// rolled back and the timeout's verdict stored at once).
pub(crate) fn run_watched(
    db: &Database,
    conn: &mut AnyConnection,
    row: &RunRow,
    lease: &str,
    worker_id: &str,
) -> Outcome {
    let function = registry().ok().and_then(|r| r.get(&row.func));
    let Some((function, timeout)) = function.and_then(|f| Some((f, f.timeout()?))) else {
        return run(db, conn, row, lease, worker_id, None);
    };
    let control = Arc::new(JobControl::default());
    match conn.session() {
        Ok(session) => control.attach(Some(session)),
        Err(e) => tracing::warn!(error = %chain(&e), "cannot watch a job's timeout"),
    }
    let (done, finished) = mpsc::channel::<()>();
    let outcome = std::thread::scope(|scope| {
        let watcher = &control;
        scope.spawn(move || {
            if finished.recv_timeout(timeout) == Err(RecvTimeoutError::Timeout) && watcher.give_up(GaveUp::TimedOut) {
                let ending = Ending::Returned(Err(timeout_verdict(function)));
                if let Err(e) = give_up(db, watcher, row.id, &row.func, Some(lease), ending, worker_id) {
                    tracing::warn!(job = %row.uuid, error = %chain(&e), "cannot store a job's timeout; it will be rescued");
                }
            }
        });
        let outcome = run(db, conn, row, lease, worker_id, Some(&control));
        let finished_first = control.finish();
        drop(done);
        (outcome, finished_first)
    });
    control.detach();
    let (outcome, finished_first) = outcome;
    if !finished_first {
        // Its session was ended under it: the connection must not serve again.
        poison(conn);
        return Outcome { state: None, ended: true, ..outcome };
    }
    outcome
}
