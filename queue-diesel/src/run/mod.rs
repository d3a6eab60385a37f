//! Running a job: the one piece of code every path goes through. A claimed job is decoded and
//! its function looked up ([`prepare`]), its environment entered with the user and context it
//! was queued with, its function called with a panic caught ([`invoke`]), and how it ended
//! turned into what is stored on it ([`queue_core::ending::settle`]). Around that:
//!
//! - [`batch`]: many jobs in one transaction, each kept apart by a savepoint taken when it first
//!   touches the connection; a job that fails is rolled back alone and its outcome stored in the
//!   same transaction, so no job runs again because of another;
//! - [`alone`]: a job claimed under a lease (`started`), run in its own transaction, which
//!   stores its outcome while it still holds the row; runs after commit use it too.

pub(crate) mod alone;
pub(crate) mod batch;
pub(crate) mod control;
mod isolation;
mod report;

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use queue_core::{Context, Ending, JobError, JobId, JobResult};
use serde_json::Value;

pub(crate) use control::{GaveUp, JobControl};
pub(crate) use isolation::Isolation;

use crate::connection::{AnyConnection, depth, rollback_to};
use crate::database::Database;
use crate::error::Error;
use crate::function::{Invocation, JobFunction, registry};
use crate::store::{Conflict, RunRow};
use crate::transaction::{Env, JobRun};

/// A claimed job, decoded, its function found: ready to run.
#[derive(Debug)]
pub(crate) struct Ready {
    pub uuid: JobId,
    pub function: &'static JobFunction,
    pub record_ids: Vec<i64>,
    pub args: Value,
    pub context: Context,
}

/// Decode `row` and find its function; `Err` is the verdict of a job that cannot run (its
/// stored data no longer decodes, or this binary does not know its function).
pub(crate) fn prepare(row: &RunRow) -> Result<Ready, JobError> {
    let (uuid, record_ids, args, context) = row.decode().map_err(|e| JobError::Failed {
        name: "DecodeError".into(),
        message: e.to_string(),
        info: chain(&e),
        source: Some(Box::new(e)),
    })?;
    let Some(function) = registry().ok().and_then(|r| r.get(&row.func)) else {
        let message = format!("job function {:?} is not registered in this binary", row.func);
        return Err(JobError::failed("UnknownFunction", message));
    };
    Ok(Ready { uuid, function, record_ids, args, context })
}

/// Call `function` in `env`, a panic caught as a failure (its info says where it happened):
/// the one place a job body is called.
pub(crate) fn invoke(env: &Env, function: &JobFunction, inv: &Invocation<'_>) -> JobResult<Option<String>> {
    report::catch(|| (function.run)(env, inv))
}

/// How one job ran inside a transaction.
#[derive(Debug)]
pub(crate) struct Ran {
    /// How it ended; a failure's writes were already rolled back to its savepoint.
    pub ending: Ending,
    /// Jobs it queued (their rows are in the transaction; gone if it is rolled back).
    pub queued: Vec<JobId>,
    /// How long its body ran.
    pub took: Duration,
}

/// Run `ready` (claimed as `row`, with `attempt` its try number) inside the current transaction
/// of `conn`, kept apart from the transaction's other jobs by `iso`, in a span of its own that
/// records its start and end. `Err` is a failure of the transaction itself (the database, or a
/// body that closed a transaction it did not open): the caller rolls everything back.
pub(crate) fn run(
    db: &Database,
    conn: &mut AnyConnection,
    row: &RunRow,
    ready: &Ready,
    attempt: i32,
    iso: &Rc<Isolation>,
    control: Option<&Arc<JobControl>>,
) -> Result<Ran, Error> {
    let span = report::span(row, ready, attempt);
    let _inside = span.enter();
    let due = row.due.and_utc();
    report::started(row, (db.now() - due).to_std().unwrap_or_default());
    let level = depth(conn).map_err(Error::query("read the transaction depth"))?;
    iso.start(row.id);
    let run = JobRun {
        uuid: ready.uuid,
        id: Some(row.id),
        func: ready.function.name(),
        attempt,
        control: control.cloned(),
        isolation: Some(Rc::clone(iso)),
    };
    let at = Instant::now();
    let (outcome, queued) = Env::enter(conn, ready.context.clone(), db.clone(), Some(run), |env| {
        let inv =
            Invocation { func: ready.function.name(), record_ids: &ready.record_ids, args: &ready.args };
        (invoke(env, ready.function, &inv), env.take_queued())
    });
    let took = at.elapsed();
    if let Some(why) = iso.take_failure() {
        return Err(Error::Config(format!("a savepoint for a job could not be taken: {why}")));
    }
    let found = depth(conn).map_err(Error::query("read the transaction depth"))?;
    if found < level {
        // The body committed or rolled back a transaction it did not open.
        return Err(Error::TransactionDepth { expected: level, found });
    }
    let mut outcome = outcome;
    if found > level {
        // The body opened a transaction it did not close: close it, and fail the job.
        rollback_to(conn, level + 1);
        let e = Error::TransactionDepth { expected: level, found };
        outcome = Err(JobError::Failed {
            name: "QueueError".into(),
            message: e.to_string(),
            info: String::new(),
            source: None,
        });
    }
    let ending = match outcome {
        Ok(result) => Ending::Returned(Ok(result)),
        Err(verdict) => {
            iso.undo(conn)?;
            match verdict.source().and_then(|e| Conflict::of(e)) {
                Some(conflict) => {
                    Ending::Interrupted { reason: format!("{}: {verdict}", conflict.describe()) }
                }
                None => Ending::Returned(Err(verdict)),
            }
        }
    };
    report::ended(row, &ending, took);
    let queued = if matches!(ending, Ending::Returned(Ok(_))) { queued } else { Vec::new() };
    Ok(Ran { ending, queued, took })
}

/// The verdict of a job that went on after one of its statements failed (PostgreSQL then
/// refuses everything until the transaction ends): none of its writes can be kept.
pub(crate) fn aborted_transaction_verdict() -> JobError {
    JobError::failed(
        "TransactionAborted",
        "the job returned after one of its statements failed; PostgreSQL aborted its transaction, so none of its writes could be kept",
    )
}

/// The verdict for a run that passed its function's timeout: retried per the function's retry
/// pattern if it has one, else failed.
pub(crate) fn timeout_verdict(function: &JobFunction) -> JobError {
    let limit = function.timeout().map(|t| format!("{t:?}")).unwrap_or_else(|| "?".into());
    let message = format!("the job exceeded its timeout of {limit}");
    if function.retry_pattern().is_some() {
        JobError::Retry { after: None, reason: message, ignore_attempt: false }
    } else {
        JobError::failed("TimeoutError", message)
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
