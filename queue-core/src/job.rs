//! The persisted shape of a job, as plain data.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::context::Context;
use crate::options::ResolvedOptions;
use crate::state::JobState;

/// The public identity of a job: a UUID, stable across databases and shown to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub Uuid);

impl JobId {
    /// A fresh id: time-ordered (UUID version 7) with 74 random bits, so ids queued one after
    /// the other land next to each other in the database's unique index instead of all over it.
    pub fn new() -> Self {
        JobId(Uuid::now_v7())
    }
}

impl Default for JobId {
    fn default() -> Self {
        JobId::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim()).map(JobId)
    }
}

/// The name a job function is registered and stored under: `"<model>.<method>"`.
pub fn function_name(model: &str, method: &str) -> String {
    format!("{model}.{method}")
}

/// A job to insert: everything captured at the call.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// Public id.
    pub uuid: JobId,
    /// Registered function name (`"res.partner.export"`).
    pub func: String,
    /// Model name of the records (`"res.partner"`).
    pub model: String,
    /// Ids of the records the method runs on.
    pub record_ids: Vec<i64>,
    /// Arguments, as a JSON object keyed by parameter name.
    pub args: Value,
    /// User and context of the caller.
    pub context: Context,
    /// Options with defaults applied.
    pub options: ResolvedOptions,
    /// Jobs that must be done before this one starts.
    pub parents: Vec<JobId>,
    /// When the call was made.
    pub created_at: DateTime<Utc>,
    /// What queued it when it was not a call of the application's code: `schedule:<name>` for
    /// the jobs of a periodic schedule.
    pub origin: Option<String>,
}

/// A stored job, as read back from the database.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Row id, local to one database: the order of creation.
    pub id: i64,
    /// Public id.
    pub uuid: JobId,
    /// Current state.
    pub state: JobState,
    /// Registered function name.
    pub func: String,
    /// Model name of the records.
    pub model: String,
    /// Ids of the records.
    pub record_ids: Vec<i64>,
    /// Arguments, as a JSON object.
    pub args: Value,
    /// Captured user and context.
    pub context: Context,
    /// Lower runs first.
    pub priority: i32,
    /// Not before this.
    pub eta: Option<DateTime<Utc>>,
    /// Deadline: it runs before jobs of its priority that are due later.
    pub expected_at: Option<DateTime<Utc>>,
    /// Channel name.
    pub channel: String,
    /// Identity key, if any.
    pub identity_key: Option<String>,
    /// Tries started so far.
    pub attempts: i32,
    /// Retries allowed; `0` retries forever.
    pub max_retries: i32,
    /// Human description.
    pub description: String,
    /// What the job returned, for people.
    pub result: Option<String>,
    /// Short name of the error of the last failed try.
    pub exc_name: Option<String>,
    /// Message of that error.
    pub exc_message: Option<String>,
    /// Details of that error.
    pub exc_info: Option<String>,
    /// When the job was queued.
    pub date_created: DateTime<Utc>,
    /// When it became claimable last (queued, or due again after a retry).
    pub date_enqueued: Option<DateTime<Utc>>,
    /// When a worker took it last.
    pub date_started: Option<DateTime<Utc>>,
    /// When it reached done, failed or cancelled.
    pub date_done: Option<DateTime<Utc>>,
    /// The worker that holds or held it.
    pub worker_id: Option<String>,
    /// Token of the current claim; only its holder may finish the job.
    pub lease_token: Option<String>,
    /// How far it is kept apart from other jobs when it runs: a conflict or a hang makes it run
    /// in a transaction of its own, a worker that died under it makes it run with no other job
    /// beside it.
    pub isolation: crate::ending::Isolation,
    /// Runs stopped by something that was not the job's fault (a deadlock, a lost session).
    pub interruptions: i32,
    /// What queued it when it was not a call of the application's code: `schedule:<name>` for
    /// the jobs of a periodic schedule.
    pub origin: Option<String>,
}

impl Job {
    /// The first line of its error, `name: message`; empty when it has none.
    pub fn error_line(&self) -> String {
        let message = self.exc_message.as_deref().and_then(|m| m.lines().next()).unwrap_or_default();
        match self.exc_name.as_deref() {
            Some(name) if !message.is_empty() => format!("{name}: {message}"),
            Some(name) => name.to_owned(),
            None => message.to_owned(),
        }
    }
}
