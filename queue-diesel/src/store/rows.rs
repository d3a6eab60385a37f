//! The shapes of the queue's rows: as stored, as inserted, and the columns a run needs.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use queue_core::{Context, Isolation, Job, JobId, JobState, NewJob, Tries};

use crate::error::{Error, Result};
use crate::schema::queue_job;

/// A `queue_job` row as stored: JSON still encoded, state still text.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = queue_job)]
#[allow(missing_docs)]
pub struct JobRow {
    pub id: i64,
    pub uuid: String,
    pub state: String,
    pub func: String,
    pub model: String,
    pub record_ids: String,
    pub args: String,
    pub context: String,
    pub user_id: Option<i64>,
    pub priority: i32,
    pub eta: Option<NaiveDateTime>,
    pub expected_at: Option<NaiveDateTime>,
    pub channel: String,
    pub identity_key: Option<String>,
    pub attempts: i32,
    pub max_retries: i32,
    pub description: String,
    pub result: Option<String>,
    pub exc_name: Option<String>,
    pub exc_message: Option<String>,
    pub exc_info: Option<String>,
    pub date_created: NaiveDateTime,
    pub date_enqueued: Option<NaiveDateTime>,
    pub date_started: Option<NaiveDateTime>,
    pub date_done: Option<NaiveDateTime>,
    pub worker_id: Option<String>,
    pub lease_token: Option<String>,
    #[allow(dead_code, reason = "part of the row; only the queue's SQL reads it")]
    pub has_dependents: bool,
    pub isolation: i32,
    pub interruptions: i32,
    pub origin: Option<String>,
}

#[derive(Insertable)]
#[diesel(table_name = queue_job)]
// NULL rather than DEFAULT for `None` (the columns default to NULL anyway): the statement keeps one
// shape, which Diesel can keep prepared.
#[diesel(treat_none_as_default_value = false)]
pub(super) struct NewJobRow<'a> {
    pub(super) uuid: String,
    pub(super) state: &'a str,
    pub(super) func: &'a str,
    pub(super) model: &'a str,
    pub(super) record_ids: String,
    pub(super) args: String,
    pub(super) context: String,
    pub(super) user_id: Option<i64>,
    pub(super) priority: i32,
    pub(super) eta: Option<NaiveDateTime>,
    pub(super) expected_at: Option<NaiveDateTime>,
    pub(super) channel: &'a str,
    pub(super) identity_key: Option<&'a str>,
    pub(super) attempts: i32,
    pub(super) max_retries: i32,
    pub(super) description: &'a str,
    pub(super) date_created: NaiveDateTime,
    pub(super) origin: Option<&'a str>,
}

impl<'a> NewJobRow<'a> {
    pub(super) fn from_job(job: &'a NewJob) -> Result<Self> {
        Ok(NewJobRow {
            uuid: job.uuid.to_string(),
            state: if job.parents.is_empty() {
                JobState::Pending.as_str()
            } else {
                JobState::WaitDependencies.as_str()
            },
            func: &job.func,
            model: &job.model,
            record_ids: encode(&job.record_ids, "record ids")?,
            args: encode(&job.args, "job arguments")?,
            context: job.context.values_json()?,
            user_id: job.context.user_id(),
            priority: job.options.priority,
            eta: job.options.eta.map(|t| t.naive_utc()),
            expected_at: job.options.expected_at.map(|t| t.naive_utc()),
            channel: &job.options.channel,
            identity_key: job.options.identity_key.as_deref(),
            attempts: 0,
            max_retries: job.options.max_retries,
            description: &job.options.description,
            date_created: job.created_at.naive_utc(),
            origin: job.origin.as_deref(),
        })
    }
}

impl JobRow {
    /// Decode the row; a value that does not decode is an error naming the field and the job.
    pub fn decode(&self) -> Result<Job> {
        let fail = |what: &'static str| {
            let job = self.uuid.clone();
            move |e: Box<dyn std::error::Error + Send + Sync>| Error::Decode { what, job, source: e }
        };
        let state = self.state.parse::<JobState>().map_err(|e| fail("state")(e.into()))?;
        let uuid = self.uuid.parse::<JobId>().map_err(|e| fail("uuid")(e.into()))?;
        let record_ids: Vec<i64> =
            serde_json::from_str(&self.record_ids).map_err(|e| fail("record ids")(e.into()))?;
        let args = serde_json::from_str(&self.args).map_err(|e| fail("arguments")(e.into()))?;
        let context =
            Context::from_json(self.user_id, &self.context).map_err(|e| fail("context")(e.into()))?;
        Ok(Job {
            id: self.id,
            uuid,
            state,
            func: self.func.clone(),
            model: self.model.clone(),
            record_ids,
            args,
            context,
            priority: self.priority,
            eta: self.eta.map(|t| t.and_utc()),
            expected_at: self.expected_at.map(|t| t.and_utc()),
            channel: self.channel.clone(),
            identity_key: self.identity_key.clone(),
            attempts: self.attempts,
            max_retries: self.max_retries,
            description: self.description.clone(),
            result: self.result.clone(),
            exc_name: self.exc_name.clone(),
            exc_message: self.exc_message.clone(),
            exc_info: self.exc_info.clone(),
            date_created: self.date_created.and_utc(),
            date_enqueued: self.date_enqueued.map(|t| t.and_utc()),
            date_started: self.date_started.map(|t| t.and_utc()),
            date_done: self.date_done.map(|t| t.and_utc()),
            worker_id: self.worker_id.clone(),
            lease_token: self.lease_token.clone(),
            isolation: queue_core::Isolation::from_level(self.isolation),
            interruptions: self.interruptions,
            origin: self.origin.clone(),
        })
    }
}

/// The columns a run needs (and no more: every column costs a by-name lookup per row).
#[derive(Debug, Clone, QueryableByName)]
#[diesel(table_name = queue_job)]
#[allow(missing_docs)]
pub struct RunRow {
    pub id: i64,
    pub uuid: String,
    pub func: String,
    pub record_ids: String,
    pub args: String,
    pub context: String,
    pub user_id: Option<i64>,
    pub attempts: i32,
    pub max_retries: i32,
    pub interruptions: i32,
    pub identity_key: Option<String>,
    pub isolation: i32,
    pub channel: String,
    /// When it became due: its eta, or when it was queued.
    #[diesel(sql_type = diesel::sql_types::Timestamp)]
    pub due: NaiveDateTime,
}

impl RunRow {
    /// The columns, for a claim's `SELECT` or `RETURNING`.
    pub(crate) const COLUMNS: &'static str = "id, uuid, func, record_ids, args, context, user_id, \
         attempts, max_retries, interruptions, identity_key, isolation, channel, \
         COALESCE(eta, date_created) AS due";

    /// Decode what running the job needs: uuid, record ids, arguments, context.
    pub fn decode(&self) -> Result<(JobId, Vec<i64>, serde_json::Value, Context)> {
        let fail = |what: &'static str| {
            let job = self.uuid.clone();
            move |e: Box<dyn std::error::Error + Send + Sync>| Error::Decode { what, job, source: e }
        };
        let uuid = self.uuid.parse::<JobId>().map_err(|e| fail("uuid")(e.into()))?;
        let record_ids = serde_json::from_str(&self.record_ids).map_err(|e| fail("record ids")(e.into()))?;
        let args = serde_json::from_str(&self.args).map_err(|e| fail("arguments")(e.into()))?;
        let context =
            Context::from_json(self.user_id, &self.context).map_err(|e| fail("context")(e.into()))?;
        Ok((uuid, record_ids, args, context))
    }

    /// The job's counters before this run: a lease claim has counted the run already (`leased`),
    /// a batch counts it when it stores the outcome.
    pub fn tries(&self, leased: bool) -> Tries {
        Tries {
            before: self.attempts - i32::from(leased),
            max_retries: self.max_retries,
            interruptions: self.interruptions,
            isolation: self.isolation(),
        }
    }

    /// How far the job is kept apart from other jobs.
    pub fn isolation(&self) -> Isolation {
        Isolation::from_level(self.isolation)
    }
}

/// A rescued job.
#[derive(Debug, QueryableByName)]
pub(super) struct RescuedRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub(super) id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub(super) state: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub(super) func: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub(super) channel: String,
}

/// A job at the head of a channel: enough to tell whether a claim may take it.
#[derive(Debug, QueryableByName)]
pub(super) struct HeadRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub(super) id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub(super) state: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub(super) func: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamp>)]
    pub(super) eta: Option<NaiveDateTime>,
}

pub(super) fn encode<T: serde::Serialize + ?Sized>(value: &T, what: &str) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|source| queue_core::Error::Encode { what: what.to_owned(), source }.into())
}

/// One applied step of the queue's schema.
#[derive(Debug, QueryableByName)]
pub(super) struct Version {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub version: String,
}
