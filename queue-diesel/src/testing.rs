//! Helpers for an application's own tests: trap the jobs a piece of code queues, assert on them,
//! then perform them (queue_job's `trap_jobs`, Oban's `assert_enqueued` and `perform_job`).
//!
//! ```no_run
//! # use queue_diesel::prelude::*;
//! # use queue_diesel::testing::JobsTrap;
//! # fn f(db: &Database) -> Result<(), queue_diesel::Error> {
//! let trap = JobsTrap::start();
//! db.transaction(Context::user(1), |_env| {
//!     // … code under test that calls Partner::queue().export(&partners, "crm".into())?
//!     Ok::<_, queue_diesel::Error>(())
//! })?;
//! trap.assert_enqueued("res.partner.export", serde_json::json!({"target": "crm"}));
//! let done = trap.perform(db)?; // runs them now, each in its own transaction
//! # Ok(()) }
//! ```
//!
//! Also for tests: `QUEUE_NO_DELAY=1` or the context key `queue_no_delay` run queued calls at the
//! call, and `Database::builder(url).clock(Arc::new(MockClock::new(…)))` controls time.

use std::cell::RefCell;
use std::fmt::Write as _;

use queue_core::{JobError, JobId, NewJob};
use serde_json::Value;

use crate::connection::in_transaction_on;
use crate::database::Database;
use crate::error::{Error, Result};
use crate::function::{Invocation, registry};
use crate::transaction::{Env, JobRun};

thread_local! {
    /// The traps open on this thread; the innermost catches.
    static TRAPS: RefCell<Vec<Vec<NewJob>>> = const { RefCell::new(Vec::new()) };
}

/// Offer a job to the innermost trap of this thread; gives it back when no trap is open.
pub(crate) fn catch(job: NewJob) -> Option<NewJob> {
    TRAPS.with(|traps| match traps.borrow_mut().last_mut() {
        Some(trap) => {
            trap.push(job);
            None
        }
        None => Some(job),
    })
}

/// While alive, catches every job queued on this thread instead of storing it.
#[derive(Debug)]
pub struct JobsTrap {
    depth: usize,
    _not_send: std::marker::PhantomData<*const ()>,
}

/// What performing a trapped job gave.
#[derive(Debug)]
#[non_exhaustive]
pub struct Performed {
    /// The trapped job.
    pub job: NewJob,
    /// `Ok(result text)` (committed) or the verdict (rolled back).
    pub outcome: std::result::Result<Option<String>, JobError>,
}

impl JobsTrap {
    /// Start trapping jobs queued on this thread.
    pub fn start() -> JobsTrap {
        let depth = TRAPS.with(|traps| {
            let mut traps = traps.borrow_mut();
            traps.push(Vec::new());
            traps.len()
        });
        JobsTrap { depth, _not_send: std::marker::PhantomData }
    }

    /// The jobs caught so far, in queue order.
    pub fn jobs(&self) -> Vec<NewJob> {
        TRAPS.with(|traps| traps.borrow().get(self.depth - 1).cloned().unwrap_or_default())
    }

    /// Forget the jobs caught so far.
    pub fn clear(&self) {
        TRAPS.with(|traps| {
            if let Some(trap) = traps.borrow_mut().get_mut(self.depth - 1) {
                trap.clear();
            }
        });
    }

    /// The caught jobs that match `predicate`.
    pub fn find(&self, predicate: impl Fn(&NewJob) -> bool) -> Vec<NewJob> {
        self.jobs().into_iter().filter(|job| predicate(job)).collect()
    }

    /// Panic unless a job of `func` was caught whose arguments contain `args` (every key of
    /// `args` with an equal value). The message lists what was caught.
    #[track_caller]
    pub fn assert_enqueued(&self, func: &str, args: Value) -> NewJob {
        let matches = self.find(|job| job.func == func && contains(&job.args, &args));
        match matches.into_iter().next() {
            Some(job) => job,
            None => panic!("expected a job of {func} with arguments {args}, found: {}", self.describe()),
        }
    }

    /// Panic unless exactly `n` jobs were caught.
    #[track_caller]
    pub fn assert_count(&self, n: usize) {
        let jobs = self.jobs();
        assert!(jobs.len() == n, "expected {n} queued job(s), found {}: {}", jobs.len(), self.describe());
    }

    /// The caught jobs, one per line, for failure messages.
    pub fn describe(&self) -> String {
        let jobs = self.jobs();
        if jobs.is_empty() {
            return "no job".into();
        }
        let mut text = String::new();
        for job in jobs {
            let _ = write!(
                text,
                "\n  {} records {:?} args {} channel {} priority {}",
                job.func, job.record_ids, job.args, job.options.channel, job.options.priority
            );
        }
        text
    }

    /// Run the caught jobs now, each in its own transaction with its captured context, and
    /// forget them. Jobs they queue are caught in turn (perform again to run those).
    pub fn perform(&self, db: &Database) -> Result<Vec<Performed>> {
        let jobs = self.jobs();
        self.clear();
        let registry = registry()?;
        let mut conn = db.conn()?;
        let mut performed = Vec::with_capacity(jobs.len());
        for job in jobs {
            let function = registry.get(&job.func).ok_or_else(|| Error::UnknownFunction(job.func.clone()))?;
            let inv = Invocation { func: function.name(), record_ids: &job.record_ids, args: &job.args };
            let ran = in_transaction_on::<_, Performing>(&mut conn, |conn| {
                Env::enter(
                    conn,
                    job.context.clone(),
                    db.clone(),
                    Some(JobRun {
                        uuid: job.uuid,
                        id: None,
                        func: function.name(),
                        attempt: 1,
                        control: None,
                        isolation: None,
                    }),
                    |env| crate::run::invoke(env, function, &inv).map_err(Performing::Verdict),
                )
            });
            let outcome = match ran {
                Ok(result) => Ok(result),
                Err(Performing::Verdict(verdict)) => Err(verdict),
                Err(Performing::Library(e)) => return Err(e),
            };
            performed.push(Performed { job, outcome });
        }
        Ok(performed)
    }

    /// The uuids of the caught jobs.
    pub fn uuids(&self) -> Vec<JobId> {
        self.jobs().iter().map(|j| j.uuid).collect()
    }
}

impl Drop for JobsTrap {
    fn drop(&mut self) {
        TRAPS.with(|traps| traps.borrow_mut().truncate(self.depth - 1));
    }
}

enum Performing {
    Verdict(JobError),
    Library(Error),
}

impl From<Error> for Performing {
    fn from(e: Error) -> Self {
        Performing::Library(e)
    }
}

/// True when `actual` has every key of `expected` with an equal value (or equals it outright
/// when `expected` is not an object).
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(actual), Value::Object(expected)) => {
            expected.iter().all(|(key, value)| actual.get(key) == Some(value))
        }
        _ => actual == expected,
    }
}
