//! How a run ended, and what that does to its job: the one place where a verdict, a conflict,
//! a lost worker or a hang becomes the job's next state, its tries and its delay. Every way of
//! running a job (batches, jobs run alone, runs after commit) stores what [`settle`] returns.

use std::time::Duration;

use crate::error::JobError;
use crate::retry::{RetryPattern, delay_for};
use crate::state::JobState;

/// Interruptions that are not the job's fault (a database conflict, a lost session) that a job
/// may meet without using up a try; each one after these counts a try, so that a job that always
/// deadlocks, or that ends its own session, still ends.
pub const FREE_INTERRUPTIONS: i32 = 3;

/// How far a job is kept apart from other jobs when it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Isolation {
    /// It may share a batch transaction with other jobs.
    #[default]
    Shared,
    /// It runs in a transaction of its own: it met a database conflict, or hung, in a batch.
    Transaction,
    /// No other job runs beside it in its worker: a worker died while running it, so it may be
    /// what kills workers; run alone, it can take no other job down with it.
    Process,
}

impl Isolation {
    /// The level stored in the database (0, 1, 2).
    pub fn level(self) -> i32 {
        match self {
            Isolation::Shared => 0,
            Isolation::Transaction => 1,
            Isolation::Process => 2,
        }
    }

    /// The isolation a stored level stands for (unknown levels are the strictest).
    pub fn from_level(level: i32) -> Isolation {
        match level {
            i32::MIN..=0 => Isolation::Shared,
            1 => Isolation::Transaction,
            _ => Isolation::Process,
        }
    }
}

/// How one run of a job ended.
#[derive(Debug)]
pub enum Ending {
    /// The body returned: its result text, or its verdict.
    Returned(Result<Option<String>, JobError>),
    /// Something outside the job stopped it: a deadlock, a serialization failure, a lock that
    /// could not be had, a session the server ended. The job runs again, alone.
    Interrupted {
        /// What happened, for people.
        reason: String,
    },
    /// Its worker died while running it (`WorkerLost`). The try counts; the job runs again
    /// with no other job beside it in its worker, until its tries are spent.
    Died {
        /// What happened, for people.
        message: String,
    },
    /// It ran past the hang limit and was given up on (`Hung`). The try counts; the job runs
    /// again in a transaction of its own.
    Hung {
        /// What happened, for people.
        message: String,
    },
}

/// A job's counters before the run that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tries {
    /// Tries started before this run.
    pub before: i32,
    /// Tries allowed; 0 retries forever.
    pub max_retries: i32,
    /// Interruptions met before this run.
    pub interruptions: i32,
    /// How far it is kept apart from other jobs.
    pub isolation: Isolation,
}

/// An error stored on a job: name, message, details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    /// Short name of the error kind (queue_job's `exc_name`).
    pub name: String,
    /// The error's message.
    pub message: String,
    /// Details: the chain of causes, a backtrace.
    pub info: String,
}

impl Exception {
    fn new(name: impl Into<String>, message: impl Into<String>, info: impl Into<String>) -> Self {
        Exception { name: name.into(), message: message.into(), info: info.into() }
    }
}

/// What a run's ending stores on its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The job's next state: `done`, `failed`, `cancelled`, or `pending` to run again.
    pub state: JobState,
    /// Tries started, this run included when it counts.
    pub attempts: i32,
    /// Interruptions met, this run's included.
    pub interruptions: i32,
    /// For `pending`: how long to wait before the next try.
    pub retry_in: Option<Duration>,
    /// Result for people (done, cancelled).
    pub result: Option<String>,
    /// The error, when there is one.
    pub exc: Option<Exception>,
    /// How far the job is kept apart from other jobs from now on.
    pub isolation: Isolation,
}

impl Settlement {
    fn counted(tries: Tries, state: JobState) -> Self {
        Settlement {
            state,
            attempts: tries.before.saturating_add(1),
            interruptions: tries.interruptions,
            retry_in: None,
            result: None,
            exc: None,
            isolation: tries.isolation,
        }
    }
}

/// Delay before a job interrupted `n` times runs again: a second, doubling up to a minute.
fn interruption_backoff(n: i32) -> Duration {
    Duration::from_secs(1u64 << (n - 1).clamp(0, 6) as u32).min(Duration::from_secs(60))
}

/// True when `attempts` tries use up what `max_retries` allows.
fn spent(attempts: i32, max_retries: i32) -> bool {
    max_retries > 0 && attempts >= max_retries
}

/// What `ending` stores on a job whose counters were `tries`, for a function whose retry pattern
/// is `pattern`.
pub fn settle(ending: Ending, tries: Tries, pattern: Option<&RetryPattern>) -> Settlement {
    match ending {
        Ending::Returned(Ok(result)) => Settlement { result, ..Settlement::counted(tries, JobState::Done) },
        Ending::Returned(Err(verdict)) => settle_verdict(verdict, tries, pattern),
        Ending::Interrupted { reason } => {
            let interruptions = tries.interruptions.saturating_add(1);
            let counts = tries.interruptions >= FREE_INTERRUPTIONS;
            let attempts = tries.before.saturating_add(i32::from(counts));
            let note = if counts {
                format!(
                    "{reason} (interruption {interruptions}; from the {}th on, each counts a try)",
                    FREE_INTERRUPTIONS + 1
                )
            } else {
                format!("{reason} (interruption {interruptions}, not counted as a try)")
            };
            if counts && spent(attempts, tries.max_retries) {
                let message = format!("max retries ({}) reached: {note}", tries.max_retries);
                return Settlement {
                    exc: Some(Exception::new("MaxRetriesReached", message, "")),
                    interruptions,
                    attempts,
                    isolation: tries.isolation.max(Isolation::Transaction),
                    ..Settlement::counted(tries, JobState::Failed)
                };
            }
            Settlement {
                state: JobState::Pending,
                attempts,
                interruptions,
                retry_in: Some(interruption_backoff(interruptions)),
                result: None,
                exc: Some(Exception::new("Interrupted", note, "")),
                isolation: tries.isolation.max(Isolation::Transaction),
            }
        }
        Ending::Died { message } => lost("WorkerLost", message, Isolation::Process, tries),
        Ending::Hung { message } => lost("Hung", message, Isolation::Transaction, tries),
    }
}

/// A run that never ended: its try counts, and the job runs again at least this `isolated`.
fn lost(name: &str, message: String, isolated: Isolation, tries: Tries) -> Settlement {
    let mut settled = Settlement::counted(tries, JobState::Pending);
    settled.isolation = tries.isolation.max(isolated);
    if spent(settled.attempts, tries.max_retries) {
        settled.state = JobState::Failed;
        settled.exc = Some(Exception::new(name, format!("{message}; its tries are spent"), ""));
    } else {
        settled.retry_in = Some(Duration::ZERO);
        settled.exc = Some(Exception::new(name, message, ""));
    }
    settled
}

fn settle_verdict(verdict: JobError, tries: Tries, pattern: Option<&RetryPattern>) -> Settlement {
    match verdict {
        JobError::Retry { after, reason, ignore_attempt: true } => Settlement {
            state: JobState::Pending,
            attempts: tries.before,
            interruptions: tries.interruptions,
            retry_in: Some(
                after.unwrap_or_else(|| delay_for(pattern, u32::try_from(tries.before).unwrap_or(0))),
            ),
            result: None,
            exc: Some(Exception::new("Postponed", reason, "")),
            isolation: tries.isolation,
        },
        JobError::Retry { after, reason, ignore_attempt: false } => {
            let settled = Settlement::counted(tries, JobState::Pending);
            if spent(settled.attempts, tries.max_retries) {
                let message = format!("max retries ({}) reached: {reason}", tries.max_retries);
                return Settlement {
                    exc: Some(Exception::new("MaxRetriesReached", message, "")),
                    ..Settlement::counted(tries, JobState::Failed)
                };
            }
            let this_try = u32::try_from(settled.attempts).unwrap_or(0);
            Settlement {
                retry_in: Some(after.unwrap_or_else(|| delay_for(pattern, this_try))),
                exc: Some(Exception::new("Retry", reason, "")),
                ..settled
            }
        }
        JobError::Cancel(reason) => {
            Settlement { result: Some(reason), ..Settlement::counted(tries, JobState::Cancelled) }
        }
        JobError::NothingToDo(message) => {
            Settlement { result: Some(message), ..Settlement::counted(tries, JobState::Done) }
        }
        JobError::Failed { name, message, info, .. } => Settlement {
            exc: Some(Exception::new(name, message, info)),
            ..Settlement::counted(tries, JobState::Failed)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: Tries = Tries { before: 0, max_retries: 3, interruptions: 0, isolation: Isolation::Shared };

    fn returned(verdict: JobError, tries: Tries) -> Settlement {
        settle(Ending::Returned(Err(verdict)), tries, None)
    }

    #[test]
    fn done_counts_the_try_and_keeps_the_result() {
        let s = settle(Ending::Returned(Ok(Some("3 exported".into()))), FRESH, None);
        assert_eq!((s.state, s.attempts, s.result.as_deref()), (JobState::Done, 1, Some("3 exported")));
        assert_eq!(s.exc, None);
        let s = returned(JobError::NothingToDo("gone".into()), FRESH);
        assert_eq!((s.state, s.result.as_deref()), (JobState::Done, Some("gone")));
    }

    #[test]
    fn retries_wait_and_end_failed_once_spent() {
        let pattern: RetryPattern = "1:5,3:50".parse().expect("valid");
        let s = settle(Ending::Returned(Err(JobError::retry("busy"))), FRESH, Some(&pattern));
        assert_eq!((s.state, s.attempts, s.retry_in), (JobState::Pending, 1, Some(Duration::from_secs(5))));
        let s = returned(JobError::retry_after(Duration::from_secs(7), "busy"), FRESH);
        assert_eq!(s.retry_in, Some(Duration::from_secs(7)));
        let last = Tries { before: 2, ..FRESH };
        let s = returned(JobError::retry("busy"), last);
        assert_eq!((s.state, s.attempts), (JobState::Failed, 3));
        assert_eq!(s.exc.expect("error").message, "max retries (3) reached: busy");
        let forever = Tries { before: 99, max_retries: 0, ..FRESH };
        assert_eq!(returned(JobError::retry("busy"), forever).state, JobState::Pending);
    }

    #[test]
    fn postponing_uses_no_try() {
        let s = returned(JobError::postpone(Duration::from_secs(30), "later"), Tries { before: 2, ..FRESH });
        assert_eq!((s.state, s.attempts), (JobState::Pending, 2));
        assert_eq!(s.exc.expect("note").name, "Postponed");
    }

    #[test]
    fn failures_and_cancels_are_final() {
        let s = returned(JobError::failed("ExportError", "refused"), FRESH);
        assert_eq!((s.state, s.attempts), (JobState::Failed, 1));
        assert_eq!(s.exc.expect("error").name, "ExportError");
        let s = returned(JobError::Cancel("not needed".into()), FRESH);
        assert_eq!((s.state, s.result.as_deref()), (JobState::Cancelled, Some("not needed")));
    }

    #[test]
    fn interruptions_are_free_then_count() {
        let mut tries = FRESH;
        for n in 1..=FREE_INTERRUPTIONS {
            let s = settle(Ending::Interrupted { reason: "deadlock detected".into() }, tries, None);
            assert_eq!((s.state, s.attempts, s.interruptions), (JobState::Pending, 0, n));
            assert_eq!(s.isolation, Isolation::Transaction);
            tries.interruptions = s.interruptions;
        }
        let s = settle(Ending::Interrupted { reason: "deadlock detected".into() }, tries, None);
        assert_eq!((s.state, s.attempts), (JobState::Pending, 1), "the fourth counts");
        let s = settle(Ending::Interrupted { reason: "deadlock".into() }, Tries { before: 2, ..tries }, None);
        assert_eq!((s.state, s.attempts), (JobState::Failed, 3), "and can spend the last try");
    }

    #[test]
    fn a_lost_run_counts_and_runs_apart() {
        let died = || Ending::Died { message: "its worker died".into() };
        let s = settle(died(), FRESH, None);
        assert_eq!((s.state, s.attempts, s.isolation), (JobState::Pending, 1, Isolation::Process));
        let s = settle(died(), Tries { before: 2, ..FRESH }, None);
        assert_eq!((s.state, s.attempts), (JobState::Failed, 3));
        assert_eq!(s.exc.expect("error").name, "WorkerLost");
        let s = settle(Ending::Hung { message: "hung".into() }, FRESH, None);
        assert_eq!((s.state, s.attempts, s.isolation), (JobState::Pending, 1, Isolation::Transaction));
        let suspect = Tries { isolation: Isolation::Process, ..FRESH };
        let s = settle(Ending::Hung { message: "hung".into() }, suspect, None);
        assert_eq!(s.isolation, Isolation::Process, "isolation never loosens");
        assert_eq!(Isolation::from_level(Isolation::Process.level()), Isolation::Process);
    }
}
