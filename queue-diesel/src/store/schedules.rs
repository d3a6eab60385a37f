//! Periodic schedules (`queue_schedule`): the last tick each schedule dealt with, read and moved
//! on under a lock per schedule (PostgreSQL: an advisory lock; SQLite: its one writer), so that
//! every worker on every host agrees on which ticks are queued.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use queue_core::JobState;

use crate::connection::{AnyConnection, with_backend};
use crate::error::{Error, Result};
use crate::schema::{queue_job, queue_schedule};

pub(super) fn hold(conn: &mut AnyConnection, name: &str) -> Result<Option<DateTime<Utc>>> {
    use queue_schedule::dsl;
    conn.transaction_lock(super::TxLock::Schedule(name))?;
    let last: Option<NaiveDateTime> = with_backend!(conn, c => dsl::queue_schedule
        .filter(dsl::name.eq(name))
        .select(dsl::last_tick)
        .first(c)
        .optional())
    .map_err(Error::query("read a schedule's last tick"))?;
    Ok(last.map(|t| t.and_utc()))
}

pub(super) fn record(conn: &mut AnyConnection, name: &str, tick: DateTime<Utc>, now: DateTime<Utc>) -> Result<()> {
    use queue_schedule::dsl;
    let row = (dsl::name.eq(name), dsl::last_tick.eq(tick.naive_utc()), dsl::updated_at.eq(now.naive_utc()));
    let changes = (dsl::last_tick.eq(tick.naive_utc()), dsl::updated_at.eq(now.naive_utc()));
    with_backend!(conn, c => diesel::insert_into(dsl::queue_schedule)
        .values(row)
        .on_conflict(dsl::name)
        .do_update()
        .set(changes)
        .execute(c))
    .map(|_| ())
    .map_err(Error::query("record a schedule's last tick"))
}

pub(super) fn recorded(conn: &mut AnyConnection) -> Result<Vec<(String, DateTime<Utc>)>> {
    use queue_schedule::dsl;
    let rows: Vec<(String, NaiveDateTime)> = with_backend!(conn, c => dsl::queue_schedule
        .select((dsl::name, dsl::last_tick))
        .order(dsl::name)
        .load(c))
    .map_err(Error::query("read the schedules"))?;
    Ok(rows.into_iter().map(|(name, tick)| (name, tick.and_utc())).collect())
}

pub(super) fn unfinished(conn: &mut AnyConnection, origin: &str) -> Result<bool> {
    use queue_job::dsl;
    let open = [JobState::WaitDependencies, JobState::Pending, JobState::Enqueued, JobState::Started].map(JobState::as_str);
    let found: Option<i64> = with_backend!(conn, c => dsl::queue_job
        .filter(dsl::origin.eq(origin))
        .filter(dsl::state.eq_any(open))
        .select(dsl::id)
        .first(c)
        .optional())
    .map_err(Error::query("look for a schedule's unfinished job"))?;
    Ok(found.is_some())
}
