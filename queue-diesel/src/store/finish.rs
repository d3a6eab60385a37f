//! Storing how runs ended: a batch's jobs done in one statement, one job's settlement, give-
//! backs, and what finishing does to a job's children.

use diesel::prelude::*;
use queue_core::JobState;

use super::{DoneParams, Error, Hold, Result, SettleParams, Standing};
use crate::connection::{AnyConnection, with_backend};
use crate::schema::queue_job;

diesel::define_sql_function! {
    /// SQL's `COALESCE` over two moments.
    fn coalesce(
        first: diesel::sql_types::Nullable<diesel::sql_types::Timestamp>,
        second: diesel::sql_types::Nullable<diesel::sql_types::Timestamp>,
    ) -> diesel::sql_types::Nullable<diesel::sql_types::Timestamp>;
}

pub(super) fn done_many(conn: &mut AnyConnection, p: &DoneParams<'_>) -> Result<usize> {
    use queue_job::dsl;
    if p.jobs.is_empty() {
        return Ok(0);
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
    );
    let parents: Vec<i64> = with_backend!(conn, c => diesel::update(target)
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
            let result = clean(result);
            with_backend!(conn, c => diesel::update(target).set(dsl::result.eq(result.as_ref())).execute(c))
                .map_err(Error::query("store a job's result"))?;
        }
    }
    let mut released = 0;
    for id in parents {
        released += dependents_settle(conn, id, JobState::Done)?;
    }
    Ok(released)
}

pub(super) fn dependents_settle(
    conn: &mut AnyConnection,
    parent_id: i64,
    parent_state: JobState,
) -> Result<usize> {
    use crate::schema::queue_job_dependency as dep;
    use queue_job::dsl;
    let waiting = JobState::WaitDependencies.as_str();
    match parent_state {
        JobState::Done => {
            // The waiting children of this job, released when all their parents are done.
            let children = dep::table.filter(dep::parent_id.eq(parent_id)).select(dep::child_id);
            let ids: Vec<i64> = with_backend!(conn, c => dsl::queue_job
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
                #[cfg(feature = "postgres")]
                #[allow(irrefutable_let_patterns, reason = "the only variant without the sqlite feature")]
                if let AnyConnection::Postgres(c) = &mut *conn {
                    dsl::queue_job
                        .filter(dsl::id.eq(child))
                        .select(dsl::id)
                        .for_update()
                        .load::<i64>(c)
                        .map_err(Error::query("lock a child job"))?;
                }
                let parents = dep::table.filter(dep::child_id.eq(child)).select(dep::parent_id);
                let open: i64 = with_backend!(conn, c => dsl::queue_job
                    .filter(dsl::id.eq_any(parents))
                    .filter(dsl::state.ne(JobState::Done.as_str()))
                    .count()
                    .get_result(c))
                .map_err(Error::query("check the parents of a job"))?;
                if open == 0 {
                    let target = dsl::queue_job.filter(dsl::id.eq(child)).filter(dsl::state.eq(waiting));
                    released += with_backend!(conn, c => diesel::update(target)
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
                let ids: Vec<i64> = with_backend!(conn, c => dsl::queue_job
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
                cancelled += with_backend!(conn, c => diesel::update(target).set(changes).execute(c))
                    .map_err(Error::query("cancel the descendants of a job"))?;
                parents = ids;
            }
            Ok(cancelled)
        }
        _ => Ok(0),
    }
}

pub(super) fn release(conn: &mut AnyConnection, ids: &[i64], lease_token: &str) -> Result<usize> {
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
    with_backend!(conn, c => diesel::update(target).set(changes).execute(c))
        .map_err(Error::query("release jobs"))
}

pub(super) fn lock_running(conn: &mut AnyConnection, id: i64, lease_token: &str) -> Result<bool> {
    use queue_job::dsl;
    let target = dsl::queue_job
        .filter(dsl::id.eq(id))
        .filter(dsl::lease_token.eq(lease_token))
        .filter(dsl::state.eq(JobState::Started.as_str()))
        .select(dsl::id);
    match conn {
        #[cfg(feature = "sqlite")]
        AnyConnection::Sqlite(c) => target.first::<i64>(c).optional(),
        #[cfg(feature = "postgres")]
        AnyConnection::Postgres(c) => target.for_update().first::<i64>(c).optional(),
    }
    .map(|found| found.is_some())
    .map_err(Error::query("lock a running job"))
}

/// Text as both backends store it: PostgreSQL refuses NUL characters in text.
pub(super) fn clean(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') { text.replace('\0', "\u{fffd}").into() } else { text.into() }
}

pub(super) fn settle(conn: &mut AnyConnection, p: &SettleParams<'_>) -> Result<bool> {
    use queue_job::dsl;
    let s = p.settlement;
    let now = p.now.naive_utc();
    let started = p.started.naive_utc();
    // A retry's new eta; otherwise the job keeps the one it had (when it was due).
    let eta = s.retry_in.map(|delay| queue_core::options::after_std(p.now, delay).naive_utc());
    let result = s.result.as_deref().map(clean);
    let exc = s.exc.as_ref().map(|e| (clean(&e.name), clean(&e.message), clean(&e.info)));
    let changes = (
        dsl::state.eq(s.state.as_str()),
        dsl::attempts.eq(s.attempts),
        dsl::interruptions.eq(s.interruptions),
        dsl::isolation.eq(s.isolation.level()),
        dsl::eta.eq(coalesce(eta, dsl::eta)),
        dsl::result.eq(result.as_deref()),
        dsl::exc_name.eq(exc.as_ref().map(|e| e.0.as_ref())),
        dsl::exc_message.eq(exc.as_ref().map(|e| e.1.as_ref())),
        dsl::exc_info.eq(exc.as_ref().map(|e| e.2.as_ref())),
        dsl::date_done.eq(s.state.is_finished().then_some(now)),
        dsl::date_started.eq(Some(started)),
        dsl::date_enqueued.eq(Some(started)),
        dsl::worker_id.eq(Some(p.worker_id)),
        dsl::lease_token.eq(None::<String>),
    );
    let held = dsl::queue_job.filter(dsl::id.eq(p.id));
    // The row as updated says whether children were added meanwhile (not the claimed copy).
    let updated: Option<bool> = match p.hold {
        Hold::Lease(lease) => {
            let target =
                held.filter(dsl::lease_token.eq(lease)).filter(dsl::state.eq(JobState::Started.as_str()));
            with_backend!(conn, c => diesel::update(target)
                .set(changes.clone())
                .returning(dsl::has_dependents)
                .get_result(c)
                .optional())
        }
        Hold::Locked => {
            let target = held.filter(dsl::state.eq(JobState::Pending.as_str()));
            with_backend!(conn, c => diesel::update(target)
                .set(changes.clone())
                .returning(dsl::has_dependents)
                .get_result(c)
                .optional())
        }
    }
    .map_err(Error::query("store how a job's run ended"))?;
    if updated == Some(true) {
        dependents_settle(conn, p.id, s.state)?;
    }
    Ok(updated.is_some())
}

pub(super) fn standing(conn: &mut AnyConnection, id: i64) -> Result<Option<Standing>> {
    use queue_job::dsl;
    let target = dsl::queue_job.filter(dsl::id.eq(id)).select((
        dsl::state,
        dsl::attempts,
        dsl::max_retries,
        dsl::interruptions,
        dsl::isolation,
        dsl::lease_token,
        dsl::func,
        dsl::channel,
    ));
    type Found = (String, i32, i32, i32, i32, Option<String>, String, String);
    let found: Option<Found> = match conn {
        #[cfg(feature = "sqlite")]
        AnyConnection::Sqlite(c) => target.first(c).optional(),
        #[cfg(feature = "postgres")]
        AnyConnection::Postgres(c) => target.for_update().first(c).optional(),
    }
    .map_err(Error::query("read where a job stands"))?;
    let Some((state, attempts, max_retries, interruptions, isolation, lease_token, func, channel)) = found else {
        return Ok(None);
    };
    let isolation = queue_core::Isolation::from_level(isolation);
    Ok(Some(Standing {
        state: state.parse::<JobState>()?,
        tries: queue_core::Tries { before: attempts, max_retries, interruptions, isolation },
        lease_token,
        func,
        channel,
    }))
}
