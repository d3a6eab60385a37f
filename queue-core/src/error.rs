//! Library failures ([`Error`]) apart from a job's own verdict ([`JobError`]).

use std::fmt;
use std::time::Duration;

use crate::state::JobState;

/// A failure of the queue itself: bad configuration, bad input, an illegal operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A state name read from storage or typed by an operator is not a known state.
    #[error("unknown job state {0:?}")]
    UnknownState(String),
    /// An operation would move a job along an edge the state machine does not have.
    #[error("a {from} job cannot become {to}")]
    IllegalTransition {
        /// The job's current state.
        from: JobState,
        /// The state that was asked for.
        to: JobState,
    },
    /// An operator action does not apply to the job's state.
    #[error("{0}")]
    OperatorAction(String),
    /// A channel configuration string could not be parsed.
    #[error("invalid channel configuration: {0}")]
    ChannelConfig(String),
    /// A channel name given to a job is not under `root`, or is malformed.
    #[error("invalid channel name {0:?}: expected \"root\" or a dotted name under it, like \"root.export\"")]
    ChannelName(String),
    /// A retry pattern could not be parsed.
    #[error("invalid retry pattern: {0}")]
    RetryPattern(String),
    /// Two job functions were registered under the same name.
    #[error("job function {0:?} is registered twice; function names must be unique")]
    DuplicateFunction(String),
    /// A schedule's cron pattern, time zone or option is unusable.
    #[error("schedule {name:?}: {reason}")]
    Schedule {
        /// The schedule's name.
        name: String,
        /// What is wrong, naming the value.
        reason: String,
    },
    /// A job option has a value the queue cannot store.
    #[error("invalid job option: {0}")]
    Option(String),
    /// Job arguments or context could not be encoded to JSON.
    #[error("failed to encode {what} as JSON")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The encoder's reason.
        #[source]
        source: serde_json::Error,
    },
}

/// Result of a library operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A job's own verdict, returned by a job function that did not finish normally.
///
/// Any error type converts into [`JobError::Failed`] with `?`, so a job body can use the errors of
/// the libraries it calls. The other variants are verdicts the body chooses on purpose.
#[non_exhaustive]
pub enum JobError {
    /// Run the job again later (queue_job's `RetryableJobError`). `after` overrides the delay the
    /// job's retry pattern would give; the job becomes `failed` once its retries are spent.
    Retry {
        /// Delay before the next try; `None` uses the function's pattern or the default.
        after: Option<Duration>,
        /// Why the job must be retried; stored as the job's message.
        reason: String,
        /// Do not count this try against `max_retries` (queue_job's `ignore_retry`, modelqueue's
        /// `Retry`): for "not now" rather than "went wrong".
        ignore_attempt: bool,
    },
    /// Stop trying: the job becomes `cancelled` with this reason.
    Cancel(String),
    /// The job had nothing to do: it becomes `done` with this message as its result.
    NothingToDo(String),
    /// The job failed: it becomes `failed` with these details.
    Failed {
        /// Short name of the error kind (queue_job's `exc_name`).
        name: String,
        /// The error's message.
        message: String,
        /// Longer details: the chain of causes, or a backtrace.
        info: String,
        /// The error itself, when the failure came from one (`?` on any error keeps it): the
        /// worker looks in it for database conflicts, and code can match on it.
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
}

impl JobError {
    /// A retry after the function's default delay.
    pub fn retry(reason: impl Into<String>) -> Self {
        JobError::Retry { after: None, reason: reason.into(), ignore_attempt: false }
    }

    /// A retry after `after`.
    pub fn retry_after(after: Duration, reason: impl Into<String>) -> Self {
        JobError::Retry { after: Some(after), reason: reason.into(), ignore_attempt: false }
    }

    /// Try again after `after` without counting this try: the job is not ready yet (a
    /// resource is busy, data is not there yet). It can postpone itself forever.
    pub fn postpone(after: Duration, reason: impl Into<String>) -> Self {
        JobError::Retry { after: Some(after), reason: reason.into(), ignore_attempt: true }
    }

    /// A failure with a name and message of the caller's choosing.
    pub fn failed(name: impl Into<String>, message: impl Into<String>) -> Self {
        JobError::Failed { name: name.into(), message: message.into(), info: String::new(), source: None }
    }

    /// The error a failure came from, if it came from one: `job_error.source()` and
    /// `downcast_ref` find, say, the `diesel::result::Error` a body returned with `?`.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            JobError::Failed { source: Some(source), .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Retry { after: Some(after), reason, ignore_attempt: true } => {
                write!(f, "postponed by {after:?}: {reason}")
            }
            JobError::Retry { after: Some(after), reason, .. } => write!(f, "retry in {after:?}: {reason}"),
            JobError::Retry { after: None, reason, .. } => write!(f, "retry: {reason}"),
            JobError::Cancel(reason) => write!(f, "cancelled: {reason}"),
            JobError::NothingToDo(message) => write!(f, "nothing to do: {message}"),
            JobError::Failed { name, message, .. } => write!(f, "{name}: {message}"),
        }
    }
}

impl<E> From<E> for JobError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        let full = std::any::type_name::<E>();
        // Keep the last path segment of the type (before any generics) as the short name.
        let base = full.split('<').next().unwrap_or(full);
        let name = base.rsplit("::").next().unwrap_or(base).to_owned();
        let mut info = String::new();
        let mut source = error.source();
        while let Some(cause) = source {
            info.push_str("caused by: ");
            info.push_str(&cause.to_string());
            info.push('\n');
            source = cause.source();
        }
        if info.is_empty() {
            info = format!("{error:?}");
        }
        let message = error.to_string();
        JobError::Failed { name, message, info, source: Some(Box::new(error)) }
    }
}

/// What a job function returns: `Ok` (done), or a [`JobError`] verdict.
pub type JobResult<T = ()> = std::result::Result<T, JobError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("disk full")]
    struct DiskFull;

    #[derive(Debug, thiserror::Error)]
    #[error("export failed")]
    struct ExportFailed(#[source] DiskFull);

    #[test]
    fn any_error_converts_to_failed_with_its_causes() {
        let verdict: JobError = ExportFailed(DiskFull).into();
        match verdict {
            JobError::Failed { ref name, ref message, ref info, .. } => {
                assert_eq!(name, "ExportFailed");
                assert_eq!(message, "export failed");
                assert_eq!(info, "caused by: disk full\n");
                let kept = verdict.source().and_then(|e| e.downcast_ref::<ExportFailed>());
                assert!(kept.is_some(), "the error itself is kept");
            }
            other => panic!("expected Failed, got {other}"),
        }
    }

    #[test]
    fn verdicts_display_their_reason() {
        assert_eq!(JobError::retry("busy").to_string(), "retry: busy");
        assert_eq!(JobError::retry_after(Duration::from_secs(3), "busy").to_string(), "retry in 3s: busy");
        assert_eq!(JobError::Cancel("gone".into()).to_string(), "cancelled: gone");
    }
}
