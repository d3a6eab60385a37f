//! Job progress (`queue_job_progress`): written outside the jobs' transactions, read by operators.

use diesel::prelude::*;
use diesel::upsert::excluded;

use crate::connection::{AnyConnection, in_transaction_on, with_backend};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::schema::{queue_job, queue_job_progress};

pub(super) fn save(conn: &mut AnyConnection, reports: &[(i64, Progress)]) -> Result<()> {
    use queue_job_progress::dsl;
    in_transaction_on::<_, Error>(conn, |conn| {
        for (id, p) in reports {
            let row = (
                dsl::job_id.eq(id),
                dsl::done.eq(i64::try_from(p.done).unwrap_or(i64::MAX)),
                dsl::total.eq(i64::try_from(p.total).unwrap_or(i64::MAX)),
                dsl::updated_at.eq(p.at.naive_utc()),
            );
            with_backend!(conn, c => diesel::insert_into(dsl::queue_job_progress)
                .values(row)
                .on_conflict(dsl::job_id)
                .do_update()
                .set((
                    dsl::done.eq(excluded(dsl::done)),
                    dsl::total.eq(excluded(dsl::total)),
                    dsl::updated_at.eq(excluded(dsl::updated_at)),
                ))
                .execute(c))
            .map_err(Error::query("store job progress"))?;
        }
        Ok(())
    })
}

pub(super) fn get(conn: &mut AnyConnection, id: i64) -> Result<Option<Progress>> {
    use queue_job_progress::dsl;
    let row: Option<(i64, i64, chrono::NaiveDateTime)> = with_backend!(conn, c => dsl::queue_job_progress
        .filter(dsl::job_id.eq(id))
        .select((dsl::done, dsl::total, dsl::updated_at))
        .first(c)
        .optional())
    .map_err(Error::query("read job progress"))?;
    Ok(row.map(|(done, total, at)| Progress {
        done: u64::try_from(done).unwrap_or(0),
        total: u64::try_from(total).unwrap_or(0),
        at: at.and_utc(),
    }))
}

/// Forget the progress of job `id` (it runs afresh).
pub(super) fn forget(conn: &mut AnyConnection, id: i64) -> Result<()> {
    use queue_job_progress::dsl;
    with_backend!(conn, c => diesel::delete(dsl::queue_job_progress.filter(dsl::job_id.eq(id))).execute(c))
        .map(|_| ())
        .map_err(Error::query("forget job progress"))
}

/// Forget the progress of jobs that are gone (pruned).
pub(super) fn forget_gone(conn: &mut AnyConnection) -> Result<()> {
    use queue_job_progress::dsl;
    let gone = dsl::queue_job_progress.filter(diesel::dsl::not(diesel::dsl::exists(
        queue_job::table.filter(queue_job::id.eq(dsl::job_id)),
    )));
    with_backend!(conn, c => diesel::delete(gone).execute(c))
        .map(|_| ())
        .map_err(Error::query("forget the progress of pruned jobs"))
}
