//! What the store's methods take and give: parameter structs and small results.

use chrono::{DateTime, Utc};
use queue_core::{JobId, JobState, Settlement, Tries};

/// Which channels a claim may take jobs from: `node` and its sub-channels, less the
/// sub-channels configured separately (they are claimed on their own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelFilter {
    /// A configured channel.
    pub node: String,
    /// Configured channels below `node`, left out with their own sub-channels.
    pub excluded: Vec<String>,
}

/// What a claim takes.
#[derive(Debug, Clone)]
pub struct ClaimParams<'a> {
    /// Worker taking the jobs (stored on the rows).
    pub worker_id: &'a str,
    /// Token of this claim: only its holder may finish the jobs.
    pub lease_token: &'a str,
    /// Now: jobs whose eta is later are left.
    pub now: DateTime<Utc>,
    /// At most this many jobs.
    pub limit: i64,
    /// Only jobs in these channels; `None` for every channel.
    pub channel: Option<&'a ChannelFilter>,
    /// Only these jobs (by uuid); `None` for any job.
    pub uuids: Option<&'a [String]>,
    /// Only jobs of these functions (those this binary can run); `None` for any function.
    pub funcs: Option<&'a [&'a str]>,
    /// Take jobs whose eta has not come yet too (runs after commit, with no worker).
    pub ignore_eta: bool,
    /// Channels shared by every worker of the database, with their capacity: a claim of the
    /// head ([`Store::job_claim_head`](super::Store::job_claim_head)) takes one free slot of
    /// each for its transaction, in the same statement, and claims nothing if one is full
    /// (PostgreSQL transaction advisory locks; SQLite's single writer needs none).
    pub slots: &'a [(String, usize)],
}

/// How a run's job is held while its outcome is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold<'a> {
    /// Claimed under this lease (`started`): stored only if the lease still holds.
    Lease(&'a str),
    /// Locked by the current transaction while still `pending` (a batch's job).
    Locked,
}

/// How a run ended, to store on its job with [`Store::job_settle`].
#[derive(Debug, Clone)]
pub struct SettleParams<'a> {
    /// Row id.
    pub id: i64,
    /// How the job is held.
    pub hold: Hold<'a>,
    /// What to store.
    pub settlement: &'a Settlement,
    /// Worker that ran it (stored on the row).
    pub worker_id: &'a str,
    /// When the run started.
    pub started: DateTime<Utc>,
    /// Now.
    pub now: DateTime<Utc>,
}

/// What [`Store::job_done_many`] takes.
#[derive(Debug, Clone)]
pub struct DoneParams<'a> {
    /// Row ids of the jobs, each with the result its function returned.
    pub jobs: &'a [(i64, Option<String>)],
    /// Worker that ran them (stored on the rows).
    pub worker_id: &'a str,
    /// When the batch claimed them: stored as their start.
    pub started: DateTime<Utc>,
    /// Now.
    pub now: DateTime<Utc>,
}

/// What [`Store::job_prune`] takes.
#[derive(Debug, Clone)]
pub struct PruneParams<'a> {
    /// Finished states to delete (`done`, `cancelled`, `failed`).
    pub states: &'a [JobState],
    /// Only jobs that finished before this.
    pub before: DateTime<Utc>,
    /// At most this many in one statement.
    pub limit: i64,
}

/// What [`Store::job_set_state`] takes: an operator's change, applied only if the job is still
/// in the state it was seen in.
#[derive(Debug, Clone)]
pub struct SetStateParams<'a> {
    /// The job.
    pub uuid: &'a JobId,
    /// The state it was seen in.
    pub from: JobState,
    /// The state to set.
    pub to: JobState,
    /// Result text to store (cancel, set done).
    pub result: Option<&'a str>,
    /// Now.
    pub now: DateTime<Utc>,
}

/// What [`Store::job_rescue_orphaned`] takes.
#[derive(Debug, Clone)]
pub struct RescueParams<'a> {
    /// Only jobs started before this (their worker had time to lock them).
    pub cutoff: DateTime<Utc>,
    /// Now.
    pub now: DateTime<Utc>,
    /// SQLite: the workers known dead. PostgreSQL: `None`, row locks tell.
    pub dead_workers: Option<&'a [String]>,
}

/// What [`Database::jobs`](crate::Database::jobs) takes: filters and a limit, set with
/// `ListParams::default().state(JobState::Failed).limit(20)`.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ListParams {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this function.
    pub func: Option<String>,
    /// Only jobs of this channel (not its sub-channels).
    pub channel: Option<String>,
    /// Only jobs of this model.
    pub model: Option<String>,
    /// Only jobs whose error (name, message or details) contains this text.
    pub error: Option<String>,
    /// Only jobs queued at or after this time.
    pub created_from: Option<DateTime<Utc>>,
    /// Only jobs queued before this time.
    pub created_until: Option<DateTime<Utc>>,
    /// Only jobs of this origin (`schedule:<name>`).
    pub origin: Option<String>,
    /// At most this many, newest first.
    pub limit: i64,
    /// Skip this many first (paging).
    pub offset: i64,
}

impl ListParams {
    /// Only jobs in `state`.
    #[must_use]
    pub fn state(mut self, state: JobState) -> Self {
        self.state = Some(state);
        self
    }

    /// Only jobs of the function `func` (`res.partner.export`).
    #[must_use]
    pub fn func(mut self, func: impl Into<String>) -> Self {
        self.func = Some(func.into());
        self
    }

    /// Only jobs of the channel `channel` (`root.export`; not its sub-channels).
    #[must_use]
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = Some(channel.into());
        self
    }

    /// Only jobs of the model `model` (`res.partner`).
    #[must_use]
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Only jobs whose error's name, message or details contain `text`.
    #[must_use]
    pub fn error_containing(mut self, text: impl Into<String>) -> Self {
        self.error = Some(text.into());
        self
    }

    /// Only jobs queued at or after `from` and before `until` (either may be left open).
    #[must_use]
    pub fn created_between(mut self, from: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>) -> Self {
        self.created_from = from;
        self.created_until = until;
        self
    }

    /// Only jobs of the origin `origin`: `schedule:<name>` for a schedule's jobs.
    #[must_use]
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// At most `limit` jobs, newest first.
    #[must_use]
    pub fn limit(mut self, limit: i64) -> Self {
        self.limit = limit;
        self
    }

    /// Skip the first `offset` jobs (the next page).
    #[must_use]
    pub fn offset(mut self, offset: i64) -> Self {
        self.offset = offset;
        self
    }

    /// `text` as a LIKE pattern that matches it anywhere, its wildcards escaped with `\`.
    pub(crate) fn error_pattern(&self) -> Option<String> {
        self.error.as_ref().map(|text| {
            let escaped = text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            format!("%{escaped}%")
        })
    }
}

/// Where a job stands, read to settle it from outside its run (its worker died, it hung).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// Its state.
    pub state: JobState,
    /// Its counters.
    pub tries: Tries,
    /// Its lease, when it is `started`.
    pub lease_token: Option<String>,
    /// Its function.
    pub func: String,
    /// Its channel.
    pub channel: String,
}

/// A job put back or failed because its worker was gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescued {
    /// Its row id.
    pub id: i64,
    /// Its state now.
    pub state: JobState,
    /// Its function.
    pub func: String,
    /// Its channel.
    pub channel: String,
}

/// How to reach a connection's session from another thread, to end it: what a worker does to
/// a run that passed its timeout or hung, or that is still running when the worker stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    /// A PostgreSQL backend, by pid: another connection terminates it.
    #[cfg(feature = "postgres")]
    Postgres(i32),
    /// A SQLite connection handle: its transaction is rolled back in place, and the connection
    /// refuses writes from then on (so the stuck body can change nothing).
    #[cfg(feature = "sqlite")]
    Sqlite(usize),
}
