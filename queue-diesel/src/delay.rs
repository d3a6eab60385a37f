//! What `Model::queue().method(records, args…)` does: capture the call and store it as a job in
//! the ambient transaction, or run it at once in no-delay mode.

use chrono::{DateTime, Utc};
use queue_core::options::JobOptions;
use queue_core::{JobError, JobId, NewJob};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::function::{Invocation, JobFunction};
use crate::store::Store;
use crate::transaction::{Env, current_env};

/// The job(s) a queued call created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobHandle {
    uuids: Vec<JobId>,
    func: &'static str,
    ran_now: bool,
    existing: bool,
}

impl JobHandle {
    /// The job's public id (`queue-worker jobs show <uuid>`); the first job's when the call was
    /// split into batches.
    pub fn uuid(&self) -> JobId {
        self.uuids.first().copied().unwrap_or_default()
    }

    /// Every job the call created: several when the context's `queue_batch` split the records.
    pub fn uuids(&self) -> &[JobId] {
        &self.uuids
    }

    /// The function name.
    pub fn func(&self) -> &'static str {
        self.func
    }

    /// True when the call ran at once (no-delay mode) and no row was stored.
    pub fn ran_now(&self) -> bool {
        self.ran_now
    }

    /// True when a job with the same identity key was still waiting: no job was added and this
    /// handle is that job's.
    pub fn existing(&self) -> bool {
        self.existing
    }
}

/// Store a call of `function` as a job in the current transaction (several with `queue_batch`).
pub fn enqueue(
    options: &JobOptions,
    function: &'static JobFunction,
    record_ids: Vec<i64>,
    args: Value,
) -> Result<JobHandle> {
    current_env(|env| {
        let db = env.database();
        let now = env.now();
        let size = serde_json::to_vec(&args).map_or(usize::MAX, |bytes| bytes.len());
        if size > db.max_args_bytes() {
            return Err(Error::ArgsTooLarge {
                func: function.name().to_owned(),
                size,
                limit: db.max_args_bytes(),
            });
        }
        let (options, batch) = options.with_context(env.context(), db.batch_size())?;
        let mut resolved = options.resolve(&function.defaults, function.name(), now)?;
        let origin = ORIGIN.with(|origin| origin.borrow().clone());
        if let Some((_, tick)) = &origin {
            // A schedule's job is due at its tick, unless its code says otherwise.
            resolved.eta = resolved.eta.or(Some(*tick));
        }
        let chunks: Vec<Vec<i64>> = match batch {
            Some(size) if record_ids.len() > size => record_ids.chunks(size).map(<[i64]>::to_vec).collect(),
            _ => vec![record_ids],
        };
        if chunks.len() > 1 && resolved.identity_key.is_some() {
            return Err(Error::Core(queue_core::Error::Option(
                "an identity_key cannot be combined with queue_batch: the batches would share one key".into(),
            )));
        }
        let stored_context = env.context().for_job();
        let jobs: Vec<NewJob> = chunks
            .into_iter()
            .map(|ids| NewJob {
                uuid: JobId::new(),
                func: function.name().to_owned(),
                model: function.model().to_owned(),
                record_ids: ids,
                args: args.clone(),
                context: stored_context.clone(),
                options: resolved.clone(),
                parents: options.depends_on.clone(),
                created_at: now,
                origin: origin.as_ref().map(|(origin, _)| origin.clone()),
            })
            .collect();
        // A test's trap (`testing::JobsTrap`) catches the jobs before anything else sees them.
        let uuids: Vec<JobId> = jobs.iter().map(|j| j.uuid).collect();
        let jobs: Vec<NewJob> = jobs.into_iter().filter_map(crate::testing::catch).collect();
        if jobs.is_empty() {
            return Ok(JobHandle { uuids, func: function.name(), ran_now: false, existing: false });
        }
        let mut handle = JobHandle {
            uuids: Vec::with_capacity(jobs.len()),
            func: function.name(),
            ran_now: false,
            existing: false,
        };
        if db.no_delay() || env.context().no_delay() {
            for job in &jobs {
                run_now(env, function, job)?;
                handle.uuids.push(job.uuid);
            }
            handle.ran_now = true;
            return Ok(handle);
        }
        if resolved.identity_key.is_none() && options.depends_on.is_empty() {
            let buffered = BULK.with(|bulk| match bulk.borrow_mut().as_mut() {
                Some(buffer) => {
                    handle.uuids.extend(jobs.iter().map(|j| j.uuid));
                    buffer.extend(jobs.iter().cloned());
                    true
                }
                None => false,
            });
            if buffered {
                return Ok(handle);
            }
        }
        let mut conn = env.any_conn()?;
        if resolved.identity_key.is_some() {
            let (uuid, inserted) = conn.job_insert_unique(&jobs[0])?;
            handle.uuids.push(uuid);
            handle.existing = !inserted;
            if !inserted {
                return Ok(handle);
            }
            if db.worker_configured() && env.first_notify() {
                conn.job_notify().inspect_err(|_| env.notify_failed())?;
            }
        } else {
            let wake = db.worker_configured() && env.first_notify();
            conn.job_insert_many(&jobs, wake).inspect_err(|_| {
                if wake {
                    env.notify_failed();
                }
            })?;
            handle.uuids.extend(jobs.iter().map(|j| j.uuid));
        }
        for uuid in &handle.uuids {
            env.record_queued(*uuid);
        }
        Ok(handle)
    })?
}

thread_local! {
    /// Jobs queued inside [`bulk`], inserted together when it returns.
    static BULK: std::cell::RefCell<Option<Vec<NewJob>>> = const { std::cell::RefCell::new(None) };
    /// The origin and tick stored on the jobs queued inside [`with_origin`].
    static ORIGIN: std::cell::RefCell<Option<(String, DateTime<Utc>)>> = const { std::cell::RefCell::new(None) };
}

/// Run `f` with `origin` stored on every job it queues (a schedule's jobs carry
/// `schedule:<name>`) and `tick` as their eta when they set none; the previous origin is
/// restored afterwards, also on a panic.
pub(crate) fn with_origin<T>(origin: String, tick: DateTime<Utc>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<(String, DateTime<Utc>)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            ORIGIN.with(|origin| *origin.borrow_mut() = previous);
        }
    }
    let _restore = Restore(ORIGIN.with(|o| o.borrow_mut().replace((origin, tick))));
    f()
}

/// Queue many jobs at once: calls made inside `f` are kept in memory and inserted with
/// multi-row statements when `f` returns, in the current transaction (jobs with an identity key
/// or parents are inserted at their call, as usual). Much faster than one insert per call.
///
/// ```no_run
/// # use queue_diesel::prelude::*;
/// # fn f(db: &Database) -> Result<(), queue_diesel::Error> {
/// db.transaction(Context::new(), |_env| {
///     queue_diesel::bulk(|| {
///         for _ in 0..10_000 {
///             // Model::queue().method(…)?;
///         }
///         Ok(())
///     })
/// })?;
/// # Ok(()) }
/// ```
pub fn bulk<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    if BULK.with(|bulk| bulk.borrow().is_some()) {
        return f();
    }
    BULK.with(|bulk| *bulk.borrow_mut() = Some(Vec::new()));
    // Takes the buffer back even if `f` panics.
    struct Take;
    impl Drop for Take {
        fn drop(&mut self) {
            BULK.with(|bulk| bulk.borrow_mut().take());
        }
    }
    let take = Take;
    let value = f();
    let jobs = BULK.with(|bulk| bulk.borrow_mut().take()).unwrap_or_default();
    drop(take);
    let value = value?;
    if jobs.is_empty() {
        return Ok(value);
    }
    current_env(|env| {
        let mut conn = env.any_conn()?;
        let wake = env.database().worker_configured() && env.first_notify();
        conn.job_insert_many(&jobs, wake).inspect_err(|_| {
            if wake {
                env.notify_failed();
            }
        })?;
        for job in &jobs {
            env.record_queued(job.uuid);
        }
        Ok::<_, Error>(())
    })??;
    Ok(value)
}

/// No-delay mode: run the method now, in a savepoint of the caller's transaction, with the
/// caller's environment. Its writes are rolled back if it does not succeed.
fn run_now(env: &Env, function: &'static JobFunction, job: &NewJob) -> Result<()> {
    let inv = Invocation { func: function.name(), record_ids: &job.record_ids, args: &job.args };
    let verdict = savepoint(env, || crate::run::invoke(env, function, &inv))?;
    match verdict {
        Ok(_) | Err(JobError::NothingToDo(_)) => Ok(()),
        Err(verdict) => {
            Err(Error::NoDelayJob { func: function.name().to_owned(), verdict: verdict.to_string() })
        }
    }
}

/// Run `f` between a savepoint and its release (or rollback when `f` gives an error verdict).
fn savepoint<T>(env: &Env, f: impl FnOnce() -> Result<T, JobError>) -> Result<Result<T, JobError>> {
    use diesel::connection::TransactionManager;
    type Tm = <crate::connection::AnyConnection as diesel::Connection>::TransactionManager;
    Tm::begin_transaction(&mut *env.any_conn()?).map_err(Error::query("open a savepoint"))?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let Ok(mut conn) = env.any_conn() else {
        // The body kept a connection guard alive (only possible by leaking it): nothing can be
        // rolled back from here; the enclosing transaction's rollback will.
        return match outcome {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(_) => Err(Error::ConnectionBusy),
        };
    };
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
