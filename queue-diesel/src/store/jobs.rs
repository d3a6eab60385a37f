//! Inserting and reading jobs, operators' changes, and maintenance (rescue, prune).

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use queue_core::{Job, JobId, JobState, NewJob};

use super::rows::{JobRow, NewJobRow, RescuedRow};
use super::sql::Sql;
#[cfg(feature = "postgres")]
use super::postgres;
use super::{Error, ListParams, PruneParams, RescueParams, Result, SetStateParams, Store};
use crate::connection::{AnyConnection, with_backend};
use crate::schema::queue_job;

pub(super) fn insert_many(conn: &mut AnyConnection, jobs: &[NewJob], wake: bool) -> Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    if jobs.iter().any(|j| !j.parents.is_empty()) {
        for job in jobs {
            insert_unique(conn, job)?;
        }
        if wake {
            conn.job_notify()?;
        }
        return Ok(());
    }
    let rows = jobs.iter().map(NewJobRow::from_job).collect::<Result<Vec<_>>>()?;
    match conn {
        #[cfg(feature = "postgres")]
        AnyConnection::Postgres(c) if rows.len() >= postgres::COPY_FROM_ROWS => {
            postgres::job_copy_rows(c, &rows)?;
            if wake {
                postgres::notify(c)?;
            }
        }
        #[cfg(feature = "postgres")]
        AnyConnection::Postgres(c) if rows.len() == 1 => {
            postgres::job_insert_one(c, &rows[0], wake).map_err(Error::query("insert a job"))?;
        }
        #[cfg(feature = "postgres")]
        AnyConnection::Postgres(c) => {
            postgres::job_insert_rows(c, &rows, wake).map_err(Error::query("insert jobs"))?;
        }
        #[cfg(feature = "sqlite")]
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

pub(super) fn insert_unique(conn: &mut AnyConnection, job: &NewJob) -> Result<(JobId, bool)> {
    use queue_job::dsl;
    let mut row = NewJobRow::from_job(job)?;
    let parents = if job.parents.is_empty() { Vec::new() } else { parents_of(conn, job, &mut row)? };
    if let (Some(key), Some(unique)) = (job.options.identity_key.as_deref(), &job.options.unique)
        && let Some(uuid) = unique_holder(conn, key, unique)?
    {
        return Ok((uuid, false));
    }
    let Some(key) = job.options.identity_key.as_deref() else {
        let id: i64 = with_backend!(conn, c => diesel::insert_into(queue_job::table)
            .values(&row)
            .returning(dsl::id)
            .get_result(c))
        .map_err(Error::query("insert a job"))?;
        link_parents(conn, id, &parents)?;
        return Ok((job.uuid, true));
    };
    // The existing job may start between our insert and our look-up; then the key is free
    // again and the next insert succeeds.
    for _ in 0..5 {
        let inserted: Option<i64> = with_backend!(conn, c => diesel::insert_into(queue_job::table)
            .values(&row)
            .on_conflict_do_nothing()
            .returning(dsl::id)
            .get_result(c)
            .optional())
        .map_err(Error::query("insert a job with an identity key"))?;
        if let Some(id) = inserted {
            link_parents(conn, id, &parents)?;
            return Ok((job.uuid, true));
        }
        let waiting =
            [JobState::WaitDependencies, JobState::Pending, JobState::Enqueued].map(JobState::as_str);
        let existing: Option<String> = with_backend!(conn, c => dsl::queue_job
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

/// The job with `key` that keeps a new one out under `unique` (queued since its period began,
/// or in one of its states), if any. Callers with the same key are serialized until their
/// transactions end (PostgreSQL: an advisory lock; SQLite: its one writer), so the second sees
/// what the first queued.
fn unique_holder(
    conn: &mut AnyConnection,
    key: &str,
    unique: &queue_core::options::ResolvedUnique,
) -> Result<Option<JobId>> {
    use queue_job::dsl;
    conn.transaction_lock(super::TxLock::IdentityKey(key))?;
    let states: Vec<&str> = unique.states.iter().map(|s| s.as_str()).collect();
    let since = unique.since.map(|t| t.naive_utc());
    let found: Option<String> = with_backend!(conn, c => {
        let mut query = dsl::queue_job.filter(dsl::identity_key.eq(key)).select(dsl::uuid).into_boxed();
        query = match since {
            Some(since) => query.filter(dsl::state.eq_any(states.clone()).or(dsl::date_created.ge(since))),
            None => query.filter(dsl::state.eq_any(states.clone())),
        };
        query.order(dsl::id.desc()).first(c).optional()
    })
    .map_err(Error::query("find the job that keeps a unique one out"))?;
    found
        .map(|uuid| {
            uuid.parse::<JobId>().map_err(|e| Error::Decode { what: "uuid", job: uuid.clone(), source: Box::new(e) })
        })
        .transpose()
}

pub(super) fn get(conn: &mut AnyConnection, uuid: &JobId) -> Result<Option<Job>> {
    use queue_job::dsl;
    let row: Option<JobRow> = with_backend!(conn, c => dsl::queue_job
        .filter(dsl::uuid.eq(uuid.to_string()))
        .select(JobRow::as_select())
        .first(c)
        .optional())
    .map_err(Error::query("read a job"))?;
    row.map(|r| r.decode()).transpose()
}

/// Narrow the boxed `queue_job` query `$query` to the jobs `$params` (a [`ListParams`]) asks for.
macro_rules! filter_jobs {
    ($query:ident, $params:expr) => {{
        use $crate::schema::queue_job::dsl as jobs;
        let p: &$crate::store::ListParams = $params;
        if let Some(state) = p.state {
            $query = $query.filter(jobs::state.eq(state.as_str()));
        }
        if let Some(func) = &p.func {
            $query = $query.filter(jobs::func.eq(func.clone()));
        }
        if let Some(channel) = &p.channel {
            $query = $query.filter(jobs::channel.eq(channel.clone()));
        }
        if let Some(model) = &p.model {
            $query = $query.filter(jobs::model.eq(model.clone()));
        }
        if let Some(origin) = &p.origin {
            $query = $query.filter(jobs::origin.eq(origin.clone()));
        }
        if let Some(pattern) = p.error_pattern() {
            $query = $query.filter(
                jobs::exc_name
                    .like(pattern.clone())
                    .escape('\\')
                    .or(jobs::exc_message.like(pattern.clone()).escape('\\'))
                    .or(jobs::exc_info.like(pattern).escape('\\')),
            );
        }
        if let Some(from) = p.created_from {
            $query = $query.filter(jobs::date_created.ge(from.naive_utc()));
        }
        if let Some(until) = p.created_until {
            $query = $query.filter(jobs::date_created.lt(until.naive_utc()));
        }
    }};
}
pub(super) use filter_jobs;

pub(super) fn list(conn: &mut AnyConnection, params: &ListParams) -> Result<Vec<Job>> {
    use queue_job::dsl;
    let limit = if params.limit > 0 { params.limit } else { 100 };
    let rows: Vec<JobRow> = with_backend!(conn, c => {
        let mut query = dsl::queue_job.select(JobRow::as_select()).into_boxed();
        filter_jobs!(query, params);
        query.order(dsl::id.desc()).limit(limit).offset(params.offset.max(0)).load(c)
    })
    .map_err(Error::query("list jobs"))?;
    rows.iter().map(JobRow::decode).collect()
}

#[cfg_attr(not(any(feature = "cli", feature = "internals")), allow(dead_code))]
pub(super) fn count_by_state(conn: &mut AnyConnection) -> Result<Vec<(JobState, i64)>> {
    use queue_job::dsl;
    let rows: Vec<(String, i64)> = with_backend!(conn, c => dsl::queue_job
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

pub(super) fn set_state(conn: &mut AnyConnection, p: &SetStateParams<'_>) -> Result<bool> {
    use queue_job::dsl;
    let target =
        dsl::queue_job.filter(dsl::uuid.eq(p.uuid.to_string())).filter(dsl::state.eq(p.from.as_str()));
    let n = if p.to == JobState::Pending {
        // A requeued job whose parents are not all done goes back to waiting for them.
        use crate::schema::queue_job_dependency as dep;
        let me: Option<i64> = with_backend!(conn, c => dsl::queue_job
            .filter(dsl::uuid.eq(p.uuid.to_string()))
            .select(dsl::id)
            .first(c)
            .optional())
        .map_err(Error::query("read a job"))?;
        let parents = dep::table.filter(dep::child_id.eq(me.unwrap_or(-1))).select(dep::parent_id);
        let open: i64 = with_backend!(conn, c => dsl::queue_job
            .filter(dsl::id.eq_any(parents))
            .filter(dsl::state.ne(JobState::Done.as_str()))
            .count()
            .get_result(c))
        .map_err(Error::query("check the parents of a job"))?;
        let state = if open > 0 { JobState::WaitDependencies } else { JobState::Pending };
        if let Some(id) = me {
            super::progress::forget(conn, id)?;
        }
        let changes = (
            dsl::state.eq(state.as_str()),
            dsl::attempts.eq(0),
            dsl::interruptions.eq(0),
            dsl::eta.eq(None::<NaiveDateTime>),
            dsl::date_done.eq(None::<NaiveDateTime>),
            dsl::result.eq(None::<String>),
            dsl::exc_name.eq(None::<String>),
            dsl::exc_message.eq(None::<String>),
            dsl::exc_info.eq(None::<String>),
            dsl::lease_token.eq(None::<String>),
            dsl::worker_id.eq(None::<String>),
        );
        with_backend!(conn, c => diesel::update(target).set(changes).execute(c))
    } else {
        let done_at = p.to.is_finished().then_some(p.now.naive_utc());
        let changes = (
            dsl::state.eq(p.to.as_str()),
            dsl::date_done.eq(done_at),
            dsl::result.eq(p.result),
            dsl::lease_token.eq(None::<String>),
        );
        with_backend!(conn, c => diesel::update(target).set(changes).execute(c))
    }
    .map_err(Error::query("change a job's state"))?;
    if n == 1 && matches!(p.to, JobState::Done | JobState::Cancelled) {
        let id: i64 = with_backend!(conn, c => dsl::queue_job
            .filter(dsl::uuid.eq(p.uuid.to_string()))
            .select(dsl::id)
            .first(c))
        .map_err(Error::query("read a job"))?;
        super::finish::dependents_settle(conn, id, p.to)?;
    }
    Ok(n == 1)
}

pub(super) fn prune(conn: &mut AnyConnection, p: &PruneParams<'_>) -> Result<usize> {
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
    let mut oldest: Vec<i64> = with_backend!(conn, c => dsl::queue_job
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
    let waiting = dsl::queue_job.filter(dsl::state.eq(JobState::WaitDependencies.as_str())).select(dsl::id);
    let needed: Vec<i64> = with_backend!(conn, c => dep::table
        .filter(dep::parent_id.eq_any(&oldest))
        .filter(dep::child_id.eq_any(waiting))
        .select(dep::parent_id)
        .load(c))
    .map_err(Error::query("find the parents still waited for"))?;
    oldest.retain(|id| !needed.contains(id));
    // The state is checked again: an operator may have requeued one meanwhile.
    let target = dsl::queue_job.filter(dsl::id.eq_any(&oldest)).filter(dsl::state.eq_any(&states));
    let deleted =
        with_backend!(conn, c => diesel::delete(target).execute(c)).map_err(Error::query("prune finished jobs"))?;
    super::progress::forget_gone(conn)?;
    Ok(deleted)
}

pub(super) fn rescue_orphaned(
    conn: &mut AnyConnection,
    p: &RescueParams<'_>,
) -> Result<Vec<super::Rescued>> {
    let sql = Sql::rescue(p, conn.backend());
    let rows: Vec<RescuedRow> = conn.load_sql(&sql, "rescue orphaned jobs")?;
    rows.into_iter()
        .map(|r| Ok(super::Rescued { id: r.id, state: r.state.parse::<JobState>()?, func: r.func, channel: r.channel }))
        .collect()
}

pub(super) fn started_workers(conn: &mut AnyConnection, cutoff: DateTime<Utc>) -> Result<Vec<String>> {
    use queue_job::dsl;
    let workers: Vec<Option<String>> = with_backend!(conn, c => dsl::queue_job
        .filter(dsl::state.eq(JobState::Started.as_str()))
        .filter(dsl::date_started.lt(cutoff.naive_utc()))
        .select(dsl::worker_id)
        .distinct()
        .load(c))
    .map_err(Error::query("list the workers of running jobs"))?;
    Ok(workers.into_iter().flatten().collect())
}

/// Row ids of a new job's parents; sets the row's state from theirs (all done: pending; one
/// cancelled: cancelled). On PostgreSQL the parents are locked (`FOR SHARE`) until commit, so
/// a parent cannot finish unseen between this look-up and the child's insert.
fn parents_of(conn: &mut AnyConnection, job: &NewJob, row: &mut NewJobRow<'_>) -> Result<Vec<i64>> {
    use queue_job::dsl;
    let mut uuids: Vec<String> = job.parents.iter().map(JobId::to_string).collect();
    uuids.sort_unstable();
    uuids.dedup();
    let found: Vec<(i64, String, String)> = match conn {
        #[cfg(feature = "sqlite")]
        AnyConnection::Sqlite(c) => {
            dsl::queue_job.filter(dsl::uuid.eq_any(&uuids)).select((dsl::id, dsl::uuid, dsl::state)).load(c)
        }
        #[cfg(feature = "postgres")]
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
fn link_parents(conn: &mut AnyConnection, child: i64, parents: &[i64]) -> Result<()> {
    use crate::schema::queue_job_dependency as dep;
    use queue_job::dsl;
    if parents.is_empty() {
        return Ok(());
    }
    let links: Vec<_> = parents.iter().map(|p| (dep::child_id.eq(child), dep::parent_id.eq(*p))).collect();
    with_backend!(conn, c => diesel::insert_into(dep::table).values(&links).execute(c))
        .map_err(Error::query("link a job to its parents"))?;
    with_backend!(conn, c => diesel::update(dsl::queue_job.filter(dsl::id.eq_any(parents)))
        .set(dsl::has_dependents.eq(true))
        .execute(c))
    .map_err(Error::query("mark the parents of a job"))?;
    Ok(())
}
