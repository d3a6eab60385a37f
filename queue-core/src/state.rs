//! The states of a job and the transitions between them.
//!
//! `docs/state_machine.md` draws the same graph; [`JobState::can_become`] is its single source.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// Where a job is in its life. The names are those of Odoo's `queue_job`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobState {
    /// Waits for its parent jobs to be done.
    WaitDependencies,
    /// Ready to run as soon as its eta has passed and its channel has room.
    Pending,
    /// Taken by a worker, not started yet.
    Enqueued,
    /// Running on a worker.
    Started,
    /// Finished successfully (or found nothing to do).
    Done,
    /// Finished with an error, or out of retries. An operator may requeue it.
    Failed,
    /// Cancelled by its own verdict or by an operator. An operator may requeue it.
    Cancelled,
}

impl JobState {
    /// Every state, in life order.
    pub const ALL: [JobState; 7] = [
        JobState::WaitDependencies,
        JobState::Pending,
        JobState::Enqueued,
        JobState::Started,
        JobState::Done,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The name stored in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobState::WaitDependencies => "wait_dependencies",
            JobState::Pending => "pending",
            JobState::Enqueued => "enqueued",
            JobState::Started => "started",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// True for the states a job never leaves without an operator.
    pub const fn is_finished(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Cancelled)
    }

    /// Whether a job in state `self` may move to `next`.
    pub const fn can_become(self, next: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, next),
            (WaitDependencies, Pending | Cancelled)
                | (Pending, Enqueued | Started | Cancelled | Done)
                | (Enqueued, Started | Pending | Cancelled)
                | (Started, Done | Failed | Pending | Cancelled)
                | (Failed, Pending | Done | Cancelled)
                | (Cancelled, Pending | Done)
        )
    }

    /// Check a transition, with an error naming both ends when it is not allowed.
    pub fn transition(self, next: JobState) -> Result<JobState, Error> {
        if self.can_become(next) { Ok(next) } else { Err(Error::IllegalTransition { from: self, to: next }) }
    }
}

/// What an operator may do to a job (queue_job's buttons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperatorAction {
    /// Run a failed or cancelled job again, from zero tries.
    Requeue,
    /// Give up a job that has not finished (a running job's result will not be stored).
    Cancel,
    /// Mark a job done without running it.
    SetDone,
}

impl OperatorAction {
    /// The state the action leads to.
    pub const fn target(self) -> JobState {
        match self {
            OperatorAction::Requeue => JobState::Pending,
            OperatorAction::Cancel => JobState::Cancelled,
            OperatorAction::SetDone => JobState::Done,
        }
    }

    /// The verb, for messages.
    pub const fn verb(self) -> &'static str {
        match self {
            OperatorAction::Requeue => "requeue",
            OperatorAction::Cancel => "cancel",
            OperatorAction::SetDone => "set done",
        }
    }

    /// Whether the action applies to a job in `state`: an edge of the state machine, and for a
    /// requeue only from `failed` or `cancelled` (a pending or running job needs none).
    pub const fn applies_to(self, state: JobState) -> bool {
        match self {
            OperatorAction::Requeue => matches!(state, JobState::Failed | JobState::Cancelled),
            OperatorAction::Cancel | OperatorAction::SetDone => state.can_become(self.target()),
        }
    }

    /// Check the action against the job's state, with an error that says what is allowed.
    pub fn check(self, state: JobState) -> Result<JobState, Error> {
        if self.applies_to(state) {
            Ok(self.target())
        } else {
            let allowed: Vec<&str> =
                JobState::ALL.into_iter().filter(|s| self.applies_to(*s)).map(JobState::as_str).collect();
            Err(Error::OperatorAction(format!(
                "cannot {} a {state} job: only {} jobs can be",
                self.verb(),
                allowed.join(", ")
            )))
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| Error::UnknownState(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>().ok(), Some(state));
            assert_eq!(state.to_string(), state.as_str());
        }
    }

    #[test]
    fn unknown_text_is_an_error_not_a_panic() {
        let err = "exploded".parse::<JobState>().expect_err("not a state");
        assert_eq!(err.to_string(), r#"unknown job state "exploded""#);
    }

    #[test]
    fn done_is_final() {
        for next in JobState::ALL {
            assert!(!JobState::Done.can_become(next), "done -> {next}");
        }
    }

    #[test]
    fn a_running_job_ends_or_returns_to_pending() {
        assert!(JobState::Started.can_become(JobState::Done));
        assert!(JobState::Started.can_become(JobState::Failed));
        assert!(JobState::Started.can_become(JobState::Pending));
        assert!(!JobState::Started.can_become(JobState::WaitDependencies));
    }

    #[test]
    fn operators_requeue_failed_and_cancelled() {
        assert!(JobState::Failed.can_become(JobState::Pending));
        assert!(JobState::Cancelled.can_become(JobState::Pending));
        let err = JobState::Done.transition(JobState::Pending).expect_err("done is final");
        assert_eq!(err.to_string(), "a done job cannot become pending");
    }

    #[test]
    fn operator_actions_follow_the_state_machine() {
        use OperatorAction::*;
        assert_eq!(Requeue.check(JobState::Failed).ok(), Some(JobState::Pending));
        assert_eq!(Requeue.check(JobState::Cancelled).ok(), Some(JobState::Pending));
        assert_eq!(
            Requeue.check(JobState::Done).expect_err("final").to_string(),
            "cannot requeue a done job: only failed, cancelled jobs can be"
        );
        assert!(Requeue.check(JobState::Pending).is_err());
        assert_eq!(Cancel.check(JobState::Started).ok(), Some(JobState::Cancelled));
        assert_eq!(
            Cancel.check(JobState::Done).expect_err("final").to_string(),
            "cannot cancel a done job: only wait_dependencies, pending, enqueued, started, failed jobs can be"
        );
        assert_eq!(SetDone.check(JobState::Failed).ok(), Some(JobState::Done));
        assert!(SetDone.check(JobState::Done).is_err());
        for action in [Requeue, Cancel, SetDone] {
            for state in JobState::ALL {
                if action.applies_to(state) {
                    assert!(state.can_become(action.target()), "{action:?} from {state}");
                }
            }
        }
    }

    #[test]
    fn no_state_moves_to_itself() {
        for state in JobState::ALL {
            assert!(!state.can_become(state), "{state} -> {state}");
        }
    }
}
