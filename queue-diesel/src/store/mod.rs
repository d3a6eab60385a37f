//! The one storage seam the worker, the transaction code and the CLI speak to.
//!
//! [`Store`] is implemented for [`AnyConnection`]: portable statements are written once with
//! Diesel's DSL and compiled for each backend by `with_backend!`; the claim, which differs, lives
//! in one file per backend. Methods are named noun first and take one params struct where they
//! take more than one value.

mod postgres;
mod sqlite;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use queue_core::{Context, Job, JobId, JobState, NewJob};

use crate::connection::{AnyConnection, with_backend};
use crate::error::{Error, Result};
use crate::schema::queue_job;

/// PostgreSQL channel the queue's NOTIFY wake-ups are sent on.
pub const NOTIFY_CHANNEL: &str = "queue_job";

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
    pub has_dependents: bool,
}

#[derive(Insertable)]
#[diesel(table_name = queue_job)]
struct NewJobRow<'a> {
    uuid: String,
    state: &'a str,
    func: &'a str,
    model: &'a str,
    record_ids: String,
    args: String,
    context: String,
    user_id: Option<i64>,
    priority: i32,
    eta: Option<NaiveDateTime>,
    expected_at: Option<NaiveDateTime>,
    channel: &'a str,
    identity_key: Option<&'a str>,
    attempts: i32,
    max_retries: i32,
    description: &'a str,
    date_created: NaiveDateTime,
}

impl<'a> NewJobRow<'a> {
    fn from_job(job: &'a NewJob) -> Result<Self> {
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
            date_started: self.date_started.map(|t| t.and_utc()),
            date_done: self.date_done.map(|t| t.and_utc()),
            worker_id: self.worker_id.clone(),
            lease_token: self.lease_token.clone(),
        })
    }
}

/// The columns of a job a batch needs to run it (a batch reads no more: every column costs a
/// by-name lookup per row).
#[derive(Debug, Clone, QueryableByName)]
#[diesel(table_name = queue_job)]
#[allow(missing_docs)]
pub struct BatchRow {
    pub id: i64,
    pub uuid: String,
    pub func: String,
    pub record_ids: String,
    pub args: String,
    pub context: String,
    pub user_id: Option<i64>,
    pub attempts: i32,
    pub identity_key: Option<String>,
}

impl BatchRow {
    /// The columns, for the claim's `SELECT`.
    pub(crate) const COLUMNS: &'static str =
        "id, uuid, func, record_ids, args, context, user_id, attempts, identity_key";

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
}

/// Which channels a claim may take jobs from: `node` and its sub-channels, less the
/// sub-channels configured separately (they are claimed on their own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelFilter {
    /// A configured channel.
    pub node: String,
    /// Configured channels below `node`, left out with their own sub-channels.
    pub excluded: Vec<String>,
}

/// What [`Store::job_claim`] takes.
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
}

/// How a started job ends: written by [`Store::job_finish`] only if the lease still holds.
#[derive(Debug, Clone)]
pub struct FinishParams<'a> {
    /// Row id.
    pub id: i64,
    /// The claim's token.
    pub lease_token: &'a str,
    /// `done`, `failed`, `cancelled`, or `pending` for a retry.
    pub state: JobState,
    /// Result for people.
    pub result: Option<&'a str>,
    /// Error name, message and details.
    pub exc: Option<(&'a str, &'a str, &'a str)>,
    /// For a retry: not before this.
    pub eta: Option<DateTime<Utc>>,
    /// Take back the try the claim counted (a postponed job).
    pub uncount_attempt: bool,
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

/// What [`Store::job_list`] takes.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this function.
    pub func: Option<String>,
    /// At most this many, newest first.
    pub limit: i64,
}

/// The queue's storage operations.
pub trait Store {
    /// Take up to `limit` claimable jobs (pending, eta passed), in order of priority then
    /// creation, mark them `started` under the claim's lease and return them.
    fn job_claim(&mut self, params: &ClaimParams<'_>) -> Result<Vec<JobRow>>;
    /// Claim for a sequential channel (`params.channel`): only the jobs at the head of its claim
    /// order, and none past a failed job (it blocks the channel until an operator acts) or a job
    /// not due yet. Serialised per channel across workers.
    fn job_claim_sequential(&mut self, params: &ClaimParams<'_>) -> Result<Vec<JobRow>>;
    /// Take up to `want` of the `capacity` slots of `channel` that all workers share, skipping
    /// the `held` ones: PostgreSQL session advisory locks, freed by [`Store::channel_slots_release`]
    /// or when the connection ends (a crashed worker frees its slots by itself). On SQLite, whose
    /// single writer already runs one job at a time, every slot asked for is granted.
    fn channel_slots_acquire(
        &mut self,
        channel: &str,
        capacity: usize,
        want: usize,
        held: &[usize],
    ) -> Result<Vec<usize>>;
    /// Give back channel slots taken with [`Store::channel_slots_acquire`].
    fn channel_slots_release(&mut self, channel: &str, slots: &[usize]) -> Result<()>;
    /// Inside a batch transaction: select up to `limit` claimable jobs in claim order and lock
    /// them for the transaction, without changing them (`FOR UPDATE SKIP LOCKED` on PostgreSQL;
    /// SQLite's write lock, taken by `BEGIN IMMEDIATE`, already excludes every other writer).
    /// `lease_token` and `worker_id` are not used: the transaction is the claim.
    fn job_claim_batch(&mut self, params: &ClaimParams<'_>) -> Result<Vec<BatchRow>>;
    /// Inside a batch transaction: mark the jobs selected by [`Store::job_claim_batch`] `done`,
    /// their try counted, in one statement, then store the results of those that returned one
    /// and release the children of those that had dependents.
    fn job_done_many(&mut self, params: &DoneParams<'_>) -> Result<()>;
    /// Delete up to `limit` jobs in one of `states` that finished before `before`, oldest
    /// first, with their dependency links. Returns how many were deleted.
    fn job_prune(&mut self, params: &PruneParams<'_>) -> Result<usize>;
    /// Refresh the planner's statistics of the jobs table (PostgreSQL `ANALYZE`; nothing on
    /// SQLite, whose claims name their index).
    fn table_analyze(&mut self) -> Result<()>;
    /// Inside a batch transaction: set the start of the selected jobs that have an identity key,
    /// so that their key is free for a new job as soon as the batch commits (a caller queueing
    /// the same key meanwhile waits for that commit, then queues anew; the job itself may queue
    /// its successor under its own key).
    fn job_free_keys(&mut self, ids: &[i64], started: DateTime<Utc>) -> Result<()>;
    /// PostgreSQL backend pid of this connection (0 on SQLite).
    fn backend_pid(&mut self) -> Result<i32>;
    /// Count jobs per state.
    fn job_count_by_state(&mut self) -> Result<Vec<(JobState, i64)>>;
    /// End a started job, only if `lease_token` still holds it. False when the lease was lost.
    fn job_finish(&mut self, params: &FinishParams<'_>) -> Result<bool>;
    /// One job by uuid.
    fn job_get(&mut self, uuid: &JobId) -> Result<Option<Job>>;
    /// After a job became `done` or `cancelled`: release the children whose parents are now all
    /// done, or cancel the waiting descendants of a cancelled job. Returns how many changed.
    fn job_dependents_settle(&mut self, parent_id: i64, parent_state: JobState) -> Result<usize>;
    /// Insert new jobs: `pending`, or `wait_dependencies` for a job whose parents are not all done
    /// (a job whose parent was cancelled is inserted `cancelled`).
    fn job_insert_many(&mut self, jobs: &[NewJob]) -> Result<()>;
    /// Insert a job that has an identity key, unless a job with that key has not started yet:
    /// then nothing is inserted and that job's uuid is returned (with `false`). The database's
    /// unique index decides, so concurrent callers agree.
    fn job_insert_unique(&mut self, job: &NewJob) -> Result<(JobId, bool)>;
    /// Jobs, newest first.
    fn job_list(&mut self, params: &ListParams) -> Result<Vec<Job>>;
    /// Inside a job's transaction, before its body: lock its row for the run (PostgreSQL), which
    /// tells the rescuer the worker is alive. Returns the session's backend pid (PostgreSQL; 0 on
    /// SQLite), or `None` when the claim no longer holds (the job was rescued or cancelled
    /// meanwhile): the body must not run.
    fn job_lock_running(&mut self, id: i64, lease_token: &str) -> Result<Option<i32>>;
    /// Wake the workers listening for new jobs (PostgreSQL NOTIFY, sent at commit).
    fn job_notify(&mut self) -> Result<()>;
    /// Move a job from `from` to `to` for an operator; false when it was no longer in `from`.
    /// To `pending` starts the job afresh: no tries, no eta, no error, no result.
    fn job_set_state(&mut self, params: &SetStateParams<'_>) -> Result<bool>;
    /// Put `started` jobs whose worker is gone back to `pending` (their try counted), or fail
    /// them when their tries are spent. Returns each rescued job's id and new state.
    fn job_rescue_orphaned(&mut self, params: &RescueParams<'_>) -> Result<Vec<(i64, JobState)>>;
    /// Workers of the jobs `started` before `cutoff` (for the SQLite rescuer's liveness check).
    fn job_started_workers(&mut self, cutoff: DateTime<Utc>) -> Result<Vec<String>>;
    /// Give jobs back (`started` → `pending`) without counting the try, if the lease holds.
    fn job_release(&mut self, ids: &[i64], lease_token: &str) -> Result<usize>;
    /// Create or update the queue's tables.
    fn schema_migrate(&mut self) -> Result<()>;
}

impl AnyConnection {
    /// Run a statement built by `claim::Sql` on either backend and load its rows.
    fn load_sql<T>(&mut self, sql: &claim::Sql, what: &'static str) -> Result<Vec<T>>
    where
        T: QueryableByName<diesel::sqlite::Sqlite> + QueryableByName<diesel::pg::Pg> + 'static,
    {
        match self {
            AnyConnection::Sqlite(c) => sqlite::load(c, sql),
            AnyConnection::Postgres(c) => postgres::load(c, sql),
        }
        .map_err(Error::query(what))
    }
}

impl Store for AnyConnection {
    fn job_claim(&mut self, params: &ClaimParams<'_>) -> Result<Vec<JobRow>> {
        if params.limit <= 0 {
            return Ok(Vec::new());
        }
        self.load_sql(&claim::Sql::build(params, self.backend()), "claim jobs")
    }

    fn job_claim_batch(&mut self, params: &ClaimParams<'_>) -> Result<Vec<BatchRow>> {
        if params.limit <= 0 {
            return Ok(Vec::new());
        }
        self.load_sql(&claim::Sql::select(params, self.backend()), "claim a batch of jobs")
    }

    fn job_done_many(&mut self, p: &DoneParams<'_>) -> Result<()> {
        use queue_job::dsl;
        if p.jobs.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = p.jobs.iter().map(|(id, _)| *id).collect();
        let started = p.started.naive_utc();
        let target =
            dsl::queue_job.filter(dsl::id.eq_any(&ids)).filter(dsl::state.eq(JobState::Pending.as_str()));
        let changes = (
            dsl::state.eq(JobState::Done.as_str()),
            dsl::attempts.eq(dsl::attempts + 1),
            dsl::date_enqueued.eq(Some(started)),
            dsl::date_started.eq(Some(started)),
            dsl::date_done.eq(Some(p.now.naive_utc())),
            dsl::worker_id.eq(Some(p.worker_id)),
            dsl::lease_token.eq(None::<String>),
            dsl::result.eq(None::<String>),
            dsl::exc_name.eq(None::<String>),
            dsl::exc_message.eq(None::<String>),
            dsl::exc_info.eq(None::<String>),
            dsl::eta.eq(None::<NaiveDateTime>),
        );
        let parents: Vec<i64> = with_backend!(self, c => diesel::update(target)
            .set(changes)
            .returning((dsl::id, dsl::has_dependents))
            .load::<(i64, bool)>(c))
        .map_err(Error::query("store a batch of done jobs"))
        .and_then(|rows| {
            // The batch holds these rows since it selected them: each must have been updated.
            if rows.len() == ids.len() {
                Ok(rows.into_iter().filter(|(_, parent)| *parent).map(|(id, _)| id).collect())
            } else {
                Err(Error::BatchLost { expected: ids.len(), found: rows.len() })
            }
        })?;
        for (id, result) in p.jobs {
            if let Some(result) = result {
                let target = dsl::queue_job.filter(dsl::id.eq(*id));
                with_backend!(self, c => diesel::update(target).set(dsl::result.eq(result)).execute(c))
                    .map_err(Error::query("store a job's result"))?;
            }
        }
        for id in parents {
            self.job_dependents_settle(id, JobState::Done)?;
        }
        Ok(())
    }

    fn job_prune(&mut self, p: &PruneParams<'_>) -> Result<usize> {
        use queue_job::dsl;
        if p.states.is_empty() || p.limit <= 0 {
            return Ok(0);
        }
        if let Some(bad) = p.states.iter().find(|s| !s.is_finished()) {
            return Err(Error::Config(format!("only finished jobs can be pruned, not {bad} ones")));
        }
        let states: Vec<&str> = p.states.iter().map(|s| s.as_str()).collect();
        use crate::schema::queue_job_dependency as dep;
        let before = p.before.naive_utc();
        // A job inserted `cancelled` (its parent was) never got a `date_done`: its creation counts.
        let old = dsl::date_done.lt(before).or(dsl::date_done.is_null().and(dsl::date_created.lt(before)));
        let mut oldest: Vec<i64> = with_backend!(self, c => dsl::queue_job
            .select(dsl::id)
            .filter(dsl::state.eq_any(&states))
            .filter(old)
            .order(dsl::id)
            .limit(p.limit)
            .load(c))
        .map_err(Error::query("find finished jobs to prune"))?;
        if oldest.is_empty() {
            return Ok(0);
        }
        // A parent whose children still wait for it (a failed one, until an operator acts) stays:
        // its links are what keeps them waiting.
        let waiting =
            dsl::queue_job.filter(dsl::state.eq(JobState::WaitDependencies.as_str())).select(dsl::id);
        let needed: Vec<i64> = with_backend!(self, c => dep::table
            .filter(dep::parent_id.eq_any(&oldest))
            .filter(dep::child_id.eq_any(waiting))
            .select(dep::parent_id)
            .load(c))
        .map_err(Error::query("find the parents still waited for"))?;
        oldest.retain(|id| !needed.contains(id));
        // The state is checked again: an operator may have requeued one meanwhile.
        let target = dsl::queue_job.filter(dsl::id.eq_any(&oldest)).filter(dsl::state.eq_any(&states));
        with_backend!(self, c => diesel::delete(target).execute(c))
            .map_err(Error::query("prune finished jobs"))
    }

    fn job_free_keys(&mut self, ids: &[i64], started: DateTime<Utc>) -> Result<()> {
        use queue_job::dsl;
        if ids.is_empty() {
            return Ok(());
        }
        let target = dsl::queue_job.filter(dsl::id.eq_any(ids));
        with_backend!(self, c => diesel::update(target)
            .set(dsl::date_started.eq(Some(started.naive_utc())))
            .execute(c))
        .map(|_| ())
        .map_err(Error::query("free the identity keys of a batch"))
    }

    fn table_analyze(&mut self) -> Result<()> {
        match self {
            AnyConnection::Sqlite(_) => Ok(()),
            AnyConnection::Postgres(c) => diesel::sql_query("ANALYZE queue_job")
                .execute(c)
                .map(|_| ())
                .map_err(Error::query("refresh the statistics of the jobs table")),
        }
    }

    fn backend_pid(&mut self) -> Result<i32> {
        use diesel::dsl::sql;
        use diesel::sql_types::Integer;
        match self {
            AnyConnection::Sqlite(_) => Ok(0),
            AnyConnection::Postgres(c) => diesel::select(sql::<Integer>("pg_backend_pid()"))
                .get_result(c)
                .map_err(Error::query("read the session's backend pid")),
        }
    }

    fn job_claim_sequential(&mut self, p: &ClaimParams<'_>) -> Result<Vec<JobRow>> {
        let Some(filter) = p.channel else { return self.job_claim(p) };
        if p.limit <= 0 {
            return Ok(Vec::new());
        }
        crate::transaction::in_transaction_on::<_, Error>(self, |conn| {
            if let AnyConnection::Postgres(c) = conn {
                // One sequential claim per channel at a time, across all workers.
                diesel::sql_query("SELECT pg_advisory_xact_lock($1, -1)")
                    .bind::<diesel::sql_types::Integer, _>(channel_key(&filter.node))
                    .execute(c)
                    .map_err(Error::query("lock a sequential channel"))?;
            }
            let sql = claim::Sql::heads(filter, p.limit + 64);
            let heads: Vec<HeadRow> = conn.load_sql(&sql, "read the head of a sequential channel")?;
            let now = p.now.naive_utc();
            let mut take = Vec::new();
            for head in heads {
                match head.state.parse::<JobState>()? {
                    // Strict order: a failed job blocks the channel; so does one not due yet.
                    JobState::Failed | JobState::Started | JobState::Enqueued => break,
                    JobState::Pending if head.eta.is_some_and(|eta| eta > now) => break,
                    JobState::Pending => {
                        // A job this binary cannot run waits at the head for one that can.
                        if p.funcs.is_some_and(|funcs| !funcs.contains(&head.func.as_str())) {
                            break;
                        }
                        take.push(head.uuid);
                        if take.len() as i64 >= p.limit {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            if take.is_empty() {
                return Ok(Vec::new());
            }
            let rows =
                conn.job_claim(&ClaimParams { uuids: Some(&take), limit: take.len() as i64, ..p.clone() })?;
            if rows.len() < take.len() {
                // A head row is locked by another transaction: claiming what follows it would
                // break the order. Take nothing this time.
                return Err(Error::Config(SEQUENTIAL_HEAD_BUSY.into()));
            }
            Ok(rows)
        })
        .or_else(|e| match e {
            Error::Config(message) if message == SEQUENTIAL_HEAD_BUSY => Ok(Vec::new()),
            other => Err(other),
        })
    }

    fn channel_slots_acquire(
        &mut self,
        channel: &str,
        capacity: usize,
        want: usize,
        held: &[usize],
    ) -> Result<Vec<usize>> {
        let AnyConnection::Postgres(c) = self else {
            // One writer at a time: SQLite itself keeps every channel within its capacity.
            return Ok((0..want).collect());
        };
        let key = channel_key(channel);
        let mut got = Vec::with_capacity(want);
        for slot in (0..capacity).filter(|s| !held.contains(s)) {
            if got.len() >= want {
                break;
            }
            let locked: bool = diesel::select(
                diesel::dsl::sql::<diesel::sql_types::Bool>("pg_try_advisory_lock(")
                    .bind::<diesel::sql_types::Integer, _>(key)
                    .sql(", ")
                    .bind::<diesel::sql_types::Integer, _>(i32::try_from(slot).unwrap_or(i32::MAX))
                    .sql(")"),
            )
            .get_result(c)
            .map_err(Error::query("take a channel slot"))?;
            if locked {
                got.push(slot);
            }
        }
        Ok(got)
    }

    fn channel_slots_release(&mut self, channel: &str, slots: &[usize]) -> Result<()> {
        let AnyConnection::Postgres(c) = self else { return Ok(()) };
        let key = channel_key(channel);
        for slot in slots {
            diesel::select(
                diesel::dsl::sql::<diesel::sql_types::Bool>("pg_advisory_unlock(")
                    .bind::<diesel::sql_types::Integer, _>(key)
                    .sql(", ")
                    .bind::<diesel::sql_types::Integer, _>(i32::try_from(*slot).unwrap_or(i32::MAX))
                    .sql(")"),
            )
            .get_result::<bool>(c)
            .map_err(Error::query("give back a channel slot"))?;
        }
        Ok(())
    }

    fn job_count_by_state(&mut self) -> Result<Vec<(JobState, i64)>> {
        use queue_job::dsl;
        let rows: Vec<(String, i64)> = with_backend!(self, c => dsl::queue_job
            .group_by(dsl::state)
            .select((dsl::state, diesel::dsl::count_star()))
            .load(c))
        .map_err(Error::query("count jobs"))?;
        let mut counts = Vec::with_capacity(rows.len());
        for (state, n) in rows {
            counts.push((state.parse::<JobState>()?, n));
        }
        counts.sort();
        Ok(counts)
    }

    fn job_finish(&mut self, p: &FinishParams<'_>) -> Result<bool> {
        use queue_job::dsl;
        let now = p.now.naive_utc();
        let done_at = p.state.is_finished().then_some(now);
        let (exc_name, exc_message, exc_info) = match p.exc {
            Some((n, m, i)) => (Some(n), Some(m), Some(i)),
            None => (None, None, None),
        };
        let target = dsl::queue_job
            .filter(dsl::id.eq(p.id))
            .filter(dsl::lease_token.eq(p.lease_token))
            .filter(dsl::state.eq(JobState::Started.as_str()));
        let changes = (
            dsl::state.eq(p.state.as_str()),
            dsl::result.eq(p.result),
            dsl::exc_name.eq(exc_name),
            dsl::exc_message.eq(exc_message),
            dsl::exc_info.eq(exc_info),
            dsl::date_done.eq(done_at),
            dsl::eta.eq(p.eta.map(|t| t.naive_utc())),
            dsl::lease_token.eq(None::<String>),
            dsl::attempts.eq(dsl::attempts - i32::from(p.uncount_attempt)),
        );
        // The row as updated says whether children were added meanwhile (not the claimed copy).
        let updated: Option<bool> = with_backend!(self, c => diesel::update(target)
            .set(changes)
            .returning(dsl::has_dependents)
            .get_result(c)
            .optional())
        .map_err(Error::query("store a job's outcome"))?;
        if updated == Some(true) {
            self.job_dependents_settle(p.id, p.state)?;
        }
        Ok(updated.is_some())
    }

    fn job_dependents_settle(&mut self, parent_id: i64, parent_state: JobState) -> Result<usize> {
        use crate::schema::queue_job_dependency as dep;
        use queue_job::dsl;
        let waiting = JobState::WaitDependencies.as_str();
        match parent_state {
            JobState::Done => {
                // The waiting children of this job, released when all their parents are done.
                let children = dep::table.filter(dep::parent_id.eq(parent_id)).select(dep::child_id);
                let ids: Vec<i64> = with_backend!(self, c => dsl::queue_job
                    .filter(dsl::id.eq_any(children))
                    .filter(dsl::state.eq(waiting))
                    .select(dsl::id)
                    .load(c))
                .map_err(Error::query("find the children of a job"))?;
                let mut released = 0;
                for child in ids {
                    // Lock the child first: two parents finishing at once then count one after
                    // the other, the second seeing the first's commit (a fresh snapshot per
                    // statement under READ COMMITTED). SQLite has one writer anyway.
                    if let AnyConnection::Postgres(c) = &mut *self {
                        dsl::queue_job
                            .filter(dsl::id.eq(child))
                            .select(dsl::id)
                            .for_update()
                            .load::<i64>(c)
                            .map_err(Error::query("lock a child job"))?;
                    }
                    let parents = dep::table.filter(dep::child_id.eq(child)).select(dep::parent_id);
                    let open: i64 = with_backend!(self, c => dsl::queue_job
                        .filter(dsl::id.eq_any(parents))
                        .filter(dsl::state.ne(JobState::Done.as_str()))
                        .count()
                        .get_result(c))
                    .map_err(Error::query("check the parents of a job"))?;
                    if open == 0 {
                        let target = dsl::queue_job.filter(dsl::id.eq(child)).filter(dsl::state.eq(waiting));
                        released += with_backend!(self, c => diesel::update(target)
                            .set(dsl::state.eq(JobState::Pending.as_str()))
                            .execute(c))
                        .map_err(Error::query("release a child job"))?;
                    }
                }
                Ok(released)
            }
            JobState::Cancelled => {
                // Every waiting descendant, level by level.
                let mut parents = vec![parent_id];
                let mut cancelled = 0;
                while !parents.is_empty() {
                    let children =
                        dep::table.filter(dep::parent_id.eq_any(parents.clone())).select(dep::child_id);
                    let ids: Vec<i64> = with_backend!(self, c => dsl::queue_job
                        .filter(dsl::id.eq_any(children))
                        .filter(dsl::state.eq(waiting))
                        .select(dsl::id)
                        .load(c))
                    .map_err(Error::query("find the descendants of a job"))?;
                    if ids.is_empty() {
                        break;
                    }
                    let target =
                        dsl::queue_job.filter(dsl::id.eq_any(ids.clone())).filter(dsl::state.eq(waiting));
                    let changes = (
                        dsl::state.eq(JobState::Cancelled.as_str()),
                        dsl::result.eq("a job it depends on was cancelled"),
                        dsl::date_done.eq(Some(chrono::Utc::now().naive_utc())),
                    );
                    cancelled += with_backend!(self, c => diesel::update(target).set(changes).execute(c))
                        .map_err(Error::query("cancel the descendants of a job"))?;
                    parents = ids;
                }
                Ok(cancelled)
            }
            _ => Ok(0),
        }
    }

    fn job_get(&mut self, uuid: &JobId) -> Result<Option<Job>> {
        use queue_job::dsl;
        let row: Option<JobRow> = with_backend!(self, c => dsl::queue_job
            .filter(dsl::uuid.eq(uuid.to_string()))
            .select(JobRow::as_select())
            .first(c)
            .optional())
        .map_err(Error::query("read a job"))?;
        row.map(|r| r.decode()).transpose()
    }

    fn job_insert_many(&mut self, jobs: &[NewJob]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        if jobs.iter().any(|j| !j.parents.is_empty()) {
            for job in jobs {
                self.job_insert_unique(job)?;
            }
            return Ok(());
        }
        let rows = jobs.iter().map(NewJobRow::from_job).collect::<Result<Vec<_>>>()?;
        match self {
            AnyConnection::Postgres(c) => {
                for chunk in rows.chunks(5000) {
                    postgres::job_insert_rows(c, chunk).map_err(Error::query("insert jobs"))?;
                }
            }
            AnyConnection::Sqlite(c) => {
                // In-process: one prepared single-row statement, run per row, beats parsing a
                // statement of thousands of values.
                for row in &rows {
                    diesel::insert_into(queue_job::table)
                        .values(row)
                        .execute(c)
                        .map_err(Error::query("insert jobs"))?;
                }
            }
        }
        Ok(())
    }

    fn job_insert_unique(&mut self, job: &NewJob) -> Result<(JobId, bool)> {
        use queue_job::dsl;
        let mut row = NewJobRow::from_job(job)?;
        let parents = if job.parents.is_empty() { Vec::new() } else { self.parents_of(job, &mut row)? };
        let Some(key) = job.options.identity_key.as_deref() else {
            let id: i64 = with_backend!(self, c => diesel::insert_into(queue_job::table)
                .values(&row)
                .returning(dsl::id)
                .get_result(c))
            .map_err(Error::query("insert a job"))?;
            self.link_parents(id, &parents)?;
            return Ok((job.uuid, true));
        };
        // The existing job may start between our insert and our look-up; then the key is free
        // again and the next insert succeeds.
        for _ in 0..5 {
            let inserted: Option<i64> = with_backend!(self, c => diesel::insert_into(queue_job::table)
                .values(&row)
                .on_conflict_do_nothing()
                .returning(dsl::id)
                .get_result(c)
                .optional())
            .map_err(Error::query("insert a job with an identity key"))?;
            if let Some(id) = inserted {
                self.link_parents(id, &parents)?;
                return Ok((job.uuid, true));
            }
            let waiting =
                [JobState::WaitDependencies, JobState::Pending, JobState::Enqueued].map(JobState::as_str);
            let existing: Option<String> = with_backend!(self, c => dsl::queue_job
                .filter(dsl::identity_key.eq(key))
                .filter(dsl::date_started.is_null())
                .filter(dsl::state.eq_any(waiting))
                .select(dsl::uuid)
                .first(c)
                .optional())
            .map_err(Error::query("find the job with an identity key"))?;
            if let Some(uuid) = existing {
                let uuid = uuid.parse::<JobId>().map_err(|e| Error::Decode {
                    what: "uuid",
                    job: uuid.clone(),
                    source: Box::new(e),
                })?;
                return Ok((uuid, false));
            }
        }
        Err(Error::Config(format!("identity key {key:?} keeps changing hands; try again")))
    }

    fn job_list(&mut self, params: &ListParams) -> Result<Vec<Job>> {
        use queue_job::dsl;
        let limit = if params.limit > 0 { params.limit } else { 100 };
        let rows: Vec<JobRow> = with_backend!(self, c => {
            let mut query = dsl::queue_job.select(JobRow::as_select()).into_boxed();
            if let Some(state) = params.state {
                query = query.filter(dsl::state.eq(state.as_str()));
            }
            if let Some(func) = &params.func {
                query = query.filter(dsl::func.eq(func.clone()));
            }
            query.order(dsl::id.desc()).limit(limit).load(c)
        })
        .map_err(Error::query("list jobs"))?;
        rows.iter().map(JobRow::decode).collect()
    }

    fn job_lock_running(&mut self, id: i64, lease_token: &str) -> Result<Option<i32>> {
        use diesel::dsl::sql;
        use diesel::sql_types::Integer;
        use queue_job::dsl;
        let target = dsl::queue_job
            .filter(dsl::id.eq(id))
            .filter(dsl::lease_token.eq(lease_token))
            .filter(dsl::state.eq(JobState::Started.as_str()));
        match self {
            AnyConnection::Sqlite(c) => target.select(sql::<Integer>("0")).first(c).optional(),
            AnyConnection::Postgres(c) => {
                target.select(sql::<Integer>("pg_backend_pid()")).for_update().first(c).optional()
            }
        }
        .map_err(Error::query("lock a running job"))
    }

    fn job_rescue_orphaned(&mut self, p: &RescueParams<'_>) -> Result<Vec<(i64, JobState)>> {
        let sql = claim::Sql::rescue(p, self.backend());
        let rows: Vec<RescuedRow> = self.load_sql(&sql, "rescue orphaned jobs")?;
        rows.into_iter().map(|r| Ok((r.id, r.state.parse::<JobState>()?))).collect()
    }

    fn job_started_workers(&mut self, cutoff: DateTime<Utc>) -> Result<Vec<String>> {
        use queue_job::dsl;
        let workers: Vec<Option<String>> = with_backend!(self, c => dsl::queue_job
            .filter(dsl::state.eq(JobState::Started.as_str()))
            .filter(dsl::date_started.lt(cutoff.naive_utc()))
            .select(dsl::worker_id)
            .distinct()
            .load(c))
        .map_err(Error::query("list the workers of running jobs"))?;
        Ok(workers.into_iter().flatten().collect())
    }

    fn job_notify(&mut self) -> Result<()> {
        match self {
            AnyConnection::Sqlite(_) => Ok(()),
            AnyConnection::Postgres(c) => postgres::job_notify(c),
        }
    }

    fn job_release(&mut self, ids: &[i64], lease_token: &str) -> Result<usize> {
        use queue_job::dsl;
        let target = dsl::queue_job
            .filter(dsl::id.eq_any(ids))
            .filter(dsl::lease_token.eq(lease_token))
            .filter(dsl::state.eq(JobState::Started.as_str()));
        let changes = (
            dsl::state.eq(JobState::Pending.as_str()),
            dsl::attempts.eq(dsl::attempts - 1),
            dsl::lease_token.eq(None::<String>),
            dsl::worker_id.eq(None::<String>),
        );
        with_backend!(self, c => diesel::update(target).set(changes).execute(c))
            .map_err(Error::query("release jobs"))
    }

    fn job_set_state(&mut self, p: &SetStateParams<'_>) -> Result<bool> {
        use queue_job::dsl;
        let target =
            dsl::queue_job.filter(dsl::uuid.eq(p.uuid.to_string())).filter(dsl::state.eq(p.from.as_str()));
        let n = if p.to == JobState::Pending {
            // A requeued job whose parents are not all done goes back to waiting for them.
            use crate::schema::queue_job_dependency as dep;
            let me: Option<i64> = with_backend!(self, c => dsl::queue_job
                .filter(dsl::uuid.eq(p.uuid.to_string()))
                .select(dsl::id)
                .first(c)
                .optional())
            .map_err(Error::query("read a job"))?;
            let parents = dep::table.filter(dep::child_id.eq(me.unwrap_or(-1))).select(dep::parent_id);
            let open: i64 = with_backend!(self, c => dsl::queue_job
                .filter(dsl::id.eq_any(parents))
                .filter(dsl::state.ne(JobState::Done.as_str()))
                .count()
                .get_result(c))
            .map_err(Error::query("check the parents of a job"))?;
            let state = if open > 0 { JobState::WaitDependencies } else { JobState::Pending };
            let changes = (
                dsl::state.eq(state.as_str()),
                dsl::attempts.eq(0),
                dsl::eta.eq(None::<NaiveDateTime>),
                dsl::date_done.eq(None::<NaiveDateTime>),
                dsl::result.eq(None::<String>),
                dsl::exc_name.eq(None::<String>),
                dsl::exc_message.eq(None::<String>),
                dsl::exc_info.eq(None::<String>),
                dsl::lease_token.eq(None::<String>),
                dsl::worker_id.eq(None::<String>),
            );
            with_backend!(self, c => diesel::update(target).set(changes).execute(c))
        } else {
            let done_at = p.to.is_finished().then_some(p.now.naive_utc());
            let changes = (
                dsl::state.eq(p.to.as_str()),
                dsl::date_done.eq(done_at),
                dsl::result.eq(p.result),
                dsl::lease_token.eq(None::<String>),
            );
            with_backend!(self, c => diesel::update(target).set(changes).execute(c))
        }
        .map_err(Error::query("change a job's state"))?;
        if n == 1 && matches!(p.to, JobState::Done | JobState::Cancelled) {
            let id: i64 = with_backend!(self, c => dsl::queue_job
                .filter(dsl::uuid.eq(p.uuid.to_string()))
                .select(dsl::id)
                .first(c))
            .map_err(Error::query("read a job"))?;
            self.job_dependents_settle(id, p.to)?;
        }
        Ok(n == 1)
    }

    fn schema_migrate(&mut self) -> Result<()> {
        match self {
            AnyConnection::Sqlite(c) => sqlite::schema_migrate(c),
            AnyConnection::Postgres(c) => postgres::schema_migrate(c),
        }
    }
}

/// A rescued job.
#[derive(Debug, QueryableByName)]
struct RescuedRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    state: String,
}

const SEQUENTIAL_HEAD_BUSY: &str = "the head of a sequential channel is locked";

/// A job at the head of a sequential channel.
#[derive(Debug, QueryableByName)]
struct HeadRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    #[allow(dead_code)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    uuid: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    state: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    func: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamp>)]
    eta: Option<NaiveDateTime>,
}

/// A channel's 32-bit key for PostgreSQL advisory locks (FNV-1a of its name): stable across
/// processes and versions.
pub fn channel_key(channel: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in channel.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    i32::from_ne_bytes(hash.to_ne_bytes())
}

impl AnyConnection {
    /// Row ids of a new job's parents; sets the row's state from theirs (all done: pending; one
    /// cancelled: cancelled). On PostgreSQL the parents are locked (`FOR SHARE`) until commit, so
    /// a parent cannot finish unseen between this look-up and the child's insert.
    fn parents_of(&mut self, job: &NewJob, row: &mut NewJobRow<'_>) -> Result<Vec<i64>> {
        use queue_job::dsl;
        let mut uuids: Vec<String> = job.parents.iter().map(JobId::to_string).collect();
        uuids.sort_unstable();
        uuids.dedup();
        let found: Vec<(i64, String, String)> = match self {
            AnyConnection::Sqlite(c) => dsl::queue_job
                .filter(dsl::uuid.eq_any(&uuids))
                .select((dsl::id, dsl::uuid, dsl::state))
                .load(c),
            AnyConnection::Postgres(c) => dsl::queue_job
                .filter(dsl::uuid.eq_any(&uuids))
                .select((dsl::id, dsl::uuid, dsl::state))
                .for_share()
                .load(c),
        }
        .map_err(Error::query("read the parents of a job"))?;
        if let Some(missing) = uuids.iter().find(|u| !found.iter().any(|(_, f, _)| f == *u)) {
            return Err(Error::JobNotFound(missing.clone()));
        }
        let states: Vec<&str> = found.iter().map(|(_, _, state)| state.as_str()).collect();
        row.state = if states.contains(&JobState::Cancelled.as_str()) {
            JobState::Cancelled.as_str()
        } else if states.iter().all(|s| *s == JobState::Done.as_str()) {
            JobState::Pending.as_str()
        } else {
            JobState::WaitDependencies.as_str()
        };
        Ok(found.into_iter().map(|(id, _, _)| id).collect())
    }

    /// Record that job `child` depends on `parents`.
    fn link_parents(&mut self, child: i64, parents: &[i64]) -> Result<()> {
        use crate::schema::queue_job_dependency as dep;
        use queue_job::dsl;
        if parents.is_empty() {
            return Ok(());
        }
        let links: Vec<_> =
            parents.iter().map(|p| (dep::child_id.eq(child), dep::parent_id.eq(*p))).collect();
        with_backend!(self, c => diesel::insert_into(dep::table).values(&links).execute(c))
            .map_err(Error::query("link a job to its parents"))?;
        with_backend!(self, c => diesel::update(dsl::queue_job.filter(dsl::id.eq_any(parents)))
            .set(dsl::has_dependents.eq(true))
            .execute(c))
        .map_err(Error::query("mark the parents of a job"))?;
        Ok(())
    }
}

fn encode<T: serde::Serialize + ?Sized>(value: &T, what: &str) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|source| queue_core::Error::Encode { what: what.to_owned(), source }.into())
}

/// The claim statement, shared by both backends: only the placeholders and the row lock differ.
mod claim {
    use super::{ChannelFilter, ClaimParams, JobState};
    use crate::connection::Backend;

    /// A bound value.
    #[derive(Debug, Clone)]
    pub(super) enum Bind {
        Text(String),
        Int(i64),
        Time(chrono::NaiveDateTime),
    }

    #[derive(Debug)]
    pub(super) struct Sql {
        pub text: String,
        pub binds: Vec<Bind>,
    }

    impl Sql {
        pub fn build(p: &ClaimParams<'_>, backend: Backend) -> Sql {
            let mut sql = Sql { text: String::with_capacity(512), binds: Vec::new() };
            let now = p.now.naive_utc();
            sql.push("UPDATE queue_job SET state = ");
            sql.bind(Bind::Text(JobState::Started.as_str().into()));
            sql.push(", attempts = attempts + 1, date_started = ");
            sql.bind(Bind::Time(now));
            sql.push(", date_enqueued = ");
            sql.bind(Bind::Time(now));
            sql.push(", worker_id = ");
            sql.bind(Bind::Text(p.worker_id.into()));
            sql.push(", lease_token = ");
            sql.bind(Bind::Text(p.lease_token.into()));
            sql.push(" WHERE id IN (");
            sql.push_claimable(p, backend, "id");
            sql.push(") RETURNING *");
            sql
        }

        /// The claimable rows themselves, locked (PostgreSQL) but not changed: a batch's claim.
        pub fn select(p: &ClaimParams<'_>, backend: Backend) -> Sql {
            let mut sql = Sql { text: String::with_capacity(512), binds: Vec::new() };
            sql.push_claimable(p, backend, super::BatchRow::COLUMNS);
            sql
        }

        /// `SELECT columns` of the claimable rows `p` asks for, in claim order.
        fn push_claimable(&mut self, p: &ClaimParams<'_>, backend: Backend, columns: &str) {
            let now = p.now.naive_utc();
            // The state is written out, not bound: the planner must see `state = 'pending'` to use
            // the partial index of claimable rows (SQLite never matches a partial index against a
            // bound parameter), or every claim sorts the whole backlog.
            // SQLite's planner prefers the plain state index and sorts the whole backlog; the
            // claimable index gives the rows in claim order and stops at the limit.
            let index = if backend == Backend::Sqlite && p.uuids.is_none() {
                " INDEXED BY queue_job_claimable"
            } else {
                ""
            };
            self.push(&format!("SELECT {columns} FROM queue_job{index} WHERE state = 'pending'"));
            if !p.ignore_eta {
                self.push(" AND (eta IS NULL OR eta <= ");
                self.bind(Bind::Time(now));
                self.push(")");
            }
            if let Some(filter) = p.channel {
                self.push_channel_filter(filter);
            }
            if let Some(uuids) = p.uuids {
                self.push_in("uuid", uuids.iter().map(String::as_str));
            }
            if let Some(funcs) = p.funcs {
                self.push_in("func", funcs.iter().copied());
            }
            // The same expression as the index queue_job_claimable.
            self.push(" ORDER BY priority, COALESCE(expected_at, eta, date_created), id LIMIT ");
            self.bind(Bind::Int(p.limit));
            if backend == Backend::Postgres {
                self.push(" FOR UPDATE SKIP LOCKED");
            }
        }

        /// The head of a channel, in claim order: its unfinished jobs (waiting ones aside), for a
        /// sequential claim to walk.
        pub fn heads(filter: &ChannelFilter, limit: i64) -> Sql {
            let mut sql = Sql { text: String::with_capacity(256), binds: Vec::new() };
            sql.push("SELECT id, uuid, state, func, eta FROM queue_job WHERE state IN (");
            for (i, state) in [JobState::Pending, JobState::Enqueued, JobState::Started, JobState::Failed]
                .iter()
                .enumerate()
            {
                if i > 0 {
                    sql.push(", ");
                }
                sql.bind(Bind::Text(state.as_str().into()));
            }
            sql.push(")");
            sql.push_channel_filter(filter);
            // Not by eta: a head waiting for its retry stays the head.
            sql.push(" ORDER BY priority, COALESCE(expected_at, date_created), id LIMIT ");
            sql.bind(Bind::Int(limit));
            sql
        }

        /// Rescue `started` jobs whose worker is gone: dead workers named (SQLite) or rows that
        /// no live transaction holds (PostgreSQL, `SKIP LOCKED`).
        pub fn rescue(p: &super::RescueParams<'_>, backend: Backend) -> Sql {
            let mut sql = Sql { text: String::with_capacity(512), binds: Vec::new() };
            let spent = "max_retries > 0 AND attempts >= max_retries";
            sql.push(&format!("UPDATE queue_job SET state = CASE WHEN {spent} THEN "));
            sql.bind(Bind::Text(JobState::Failed.as_str().into()));
            sql.push(" ELSE ");
            sql.bind(Bind::Text(JobState::Pending.as_str().into()));
            sql.push(&format!(" END, date_done = CASE WHEN {spent} THEN "));
            sql.bind(Bind::Time(p.now.naive_utc()));
            sql.push(" ELSE NULL END, eta = NULL, lease_token = NULL, exc_name = ");
            sql.bind(Bind::Text("WorkerLost".into()));
            sql.push(", exc_message = ");
            sql.bind(Bind::Text("its worker stopped while running it: ".into()));
            sql.push(" || COALESCE(worker_id, '?') || ', try ' || CAST(attempts AS TEXT)");
            sql.push(" WHERE id IN (SELECT id FROM queue_job WHERE state = ");
            sql.bind(Bind::Text(JobState::Started.as_str().into()));
            sql.push(" AND date_started < ");
            sql.bind(Bind::Time(p.cutoff.naive_utc()));
            if let Some(dead) = p.dead_workers {
                sql.push_in("worker_id", dead.iter().map(String::as_str));
            }
            if backend == Backend::Postgres {
                sql.push(" FOR UPDATE SKIP LOCKED");
            }
            sql.push(") RETURNING id, state");
            sql
        }

        /// ` AND column IN (…)` with one bound value each; an empty list matches nothing.
        fn push_in<'v>(&mut self, column: &str, values: impl Iterator<Item = &'v str>) {
            self.push(&format!(" AND {column} IN ("));
            let mut any = false;
            for value in values {
                if any {
                    self.push(", ");
                }
                self.bind(Bind::Text(value.to_owned()));
                any = true;
            }
            if !any {
                self.push("NULL");
            }
            self.push(")");
        }

        /// Jobs of `filter.node` and its sub-channels, less the excluded sub-channels.
        fn push_channel_filter(&mut self, filter: &ChannelFilter) {
            if filter.node != queue_core::channel::ROOT {
                self.push(" AND (channel = ");
                self.bind(Bind::Text(filter.node.clone()));
                self.push(" OR ");
                self.push_prefix_expr(&filter.node);
                self.push(")");
            }
            for excluded in &filter.excluded {
                self.push(" AND channel <> ");
                self.bind(Bind::Text(excluded.clone()));
                self.push(" AND NOT (");
                self.push_prefix_expr(excluded);
                self.push(")");
            }
        }

        fn push(&mut self, text: &str) {
            self.text.push_str(text);
        }

        fn bind(&mut self, value: Bind) {
            self.binds.push(value);
            self.text.push('\u{1}');
        }

        /// `substr(channel, 1, len) = 'name.'`: the sub-channels of `name`, compared exactly
        /// (LIKE would treat `_` as a wildcard and ignore case on SQLite).
        fn push_prefix_expr(&mut self, name: &str) {
            // The length is a number we computed, not input: inlined, it keeps the argument an
            // integer on PostgreSQL (a bound BIGINT has no substr overload).
            let prefix = format!("{name}.");
            self.push(&format!("substr(channel, 1, {}) = ", prefix.len()));
            self.bind(Bind::Text(prefix));
        }

        /// The statement with the backend's placeholders.
        pub fn text_for(&self, backend: Backend) -> String {
            let mut out = String::with_capacity(self.text.len() + 16);
            let mut n = 0;
            for ch in self.text.chars() {
                if ch == '\u{1}' {
                    n += 1;
                    match backend {
                        Backend::Sqlite => out.push('?'),
                        Backend::Postgres => {
                            out.push('$');
                            out.push_str(&n.to_string());
                        }
                    }
                } else {
                    out.push(ch);
                }
            }
            out
        }
    }
}
