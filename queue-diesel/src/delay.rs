//! What `Model::queue().method(records, args…)` does: capture the call and store it as a job in
//! the ambient transaction, or run it at once in no-delay mode.

use queue_core::options::JobOptions;
use queue_core::{JobError, JobId, NewJob};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::function::{Invocation, JobFunction};
use crate::store::Store;
use crate::transaction::{Env, current_env};

/// The job a queued call created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobHandle {
    uuid: JobId,
    func: &'static str,
    ran_now: bool,
}

impl JobHandle {
    /// The job's public id (`queue-worker jobs show <uuid>`).
    pub fn uuid(&self) -> JobId {
        self.uuid
    }

    /// The function name.
    pub fn func(&self) -> &'static str {
        self.func
    }

    /// True when the call ran at once (no-delay mode) and no row was stored.
    pub fn ran_now(&self) -> bool {
        self.ran_now
    }
}

/// Store a call of `function` as a job in the current transaction.
pub fn enqueue(
    options: &JobOptions,
    function: &'static JobFunction,
    record_ids: Vec<i64>,
    args: Value,
) -> Result<JobHandle> {
    current_env(|env| {
        let job = NewJob {
            uuid: JobId::new(),
            func: function.name().to_owned(),
            model: function.model().to_owned(),
            record_ids,
            args,
            context: env.context().clone(),
            options: options.resolve(&function.defaults, function.name(), env.now())?,
            created_at: env.now(),
        };
        if env.database().no_delay() || env.context().no_delay() {
            return run_now(env, function, &job);
        }
        let mut conn = env.try_conn()?;
        conn.job_insert_many(std::slice::from_ref(&job))?;
        if env.database().worker_configured() && env.first_notify() {
            conn.job_notify()?;
        }
        env.record_queued(job.uuid);
        Ok(JobHandle { uuid: job.uuid, func: function.name(), ran_now: false })
    })?
}

/// No-delay mode: run the method now, in a savepoint of the caller's transaction, with the
/// caller's environment. Its writes are rolled back if it does not succeed.
fn run_now(env: &Env, function: &'static JobFunction, job: &NewJob) -> Result<JobHandle> {
    let inv = Invocation { func: function.name(), record_ids: &job.record_ids, args: &job.args };
    let verdict = savepoint(env, || (function.run)(env, &inv))?;
    match verdict {
        Ok(_) | Err(JobError::NothingToDo(_)) => {
            Ok(JobHandle { uuid: job.uuid, func: function.name(), ran_now: true })
        }
        Err(verdict) => {
            Err(Error::NoDelayJob { func: function.name().to_owned(), verdict: verdict.to_string() })
        }
    }
}

/// Run `f` between a savepoint and its release (or rollback when `f` gives an error verdict).
fn savepoint<T>(env: &Env, f: impl FnOnce() -> Result<T, JobError>) -> Result<Result<T, JobError>> {
    use diesel::connection::TransactionManager;
    type Tm = <crate::connection::AnyConnection as diesel::Connection>::TransactionManager;
    Tm::begin_transaction(&mut *env.try_conn()?).map_err(Error::query("open a savepoint"))?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let mut conn = env.try_conn()?;
    match outcome {
        Ok(Ok(value)) => {
            Tm::commit_transaction(&mut conn).map_err(Error::query("release a savepoint"))?;
            Ok(Ok(value))
        }
        Ok(Err(verdict)) => {
            Tm::rollback_transaction(&mut conn).map_err(Error::query("roll back a savepoint"))?;
            Ok(Err(verdict))
        }
        Err(panic) => {
            let _ = Tm::rollback_transaction(&mut conn);
            drop(conn);
            std::panic::resume_unwind(panic)
        }
    }
}
