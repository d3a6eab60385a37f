//! Taking jobs: under a lease (`started`, their try counted), or locked at the head of a channel
//! for a batch or an alone claim to choose from.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use queue_core::JobState;

use super::rows::{HeadRow, RunRow};
use super::sql::Sql;
use super::{ClaimParams, TxLock};
use crate::connection::{AnyConnection, in_transaction_on, with_backend};
use crate::error::{Error, Result};
use crate::schema::queue_job;

const SEQUENTIAL_HEAD_BUSY: &str = "the head of a sequential channel is locked";

pub(super) fn leased(conn: &mut AnyConnection, params: &ClaimParams<'_>) -> Result<Vec<RunRow>> {
    if params.limit <= 0 {
        return Ok(Vec::new());
    }
    conn.load_sql(&Sql::build(params, conn.backend()), "claim jobs")
}

pub(super) fn head(conn: &mut AnyConnection, params: &ClaimParams<'_>) -> Result<Vec<RunRow>> {
    if params.limit <= 0 {
        return Ok(Vec::new());
    }
    conn.load_sql(&Sql::select(params, conn.backend()), "claim the head of a channel")
}

/// The head claim's statement with a limit of zero: the limit is a bound value, so the text is
/// the one a claim sends; with no row to return, no row is read and the slot gate (which the
/// plan only evaluates before its first row) takes no lock.
pub(super) fn prepare_head(conn: &mut AnyConnection, params: &ClaimParams<'_>) -> Result<()> {
    let params = ClaimParams { limit: 0, ..params.clone() };
    let rows: Vec<RunRow> = conn.load_sql(&Sql::select(&params, conn.backend()), "prepare a claim")?;
    debug_assert!(rows.is_empty());
    Ok(())
}

pub(super) fn take(conn: &mut AnyConnection, params: &ClaimParams<'_>, ids: &[i64]) -> Result<Vec<RunRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut rows: Vec<RunRow> = conn.load_sql(&Sql::take(params, ids, conn.backend()), "claim jobs")?;
    // RETURNING gives no order: give them back in the order they were chosen.
    rows.sort_by_key(|row| ids.iter().position(|id| *id == row.id));
    Ok(rows)
}

pub(super) fn sequential(conn: &mut AnyConnection, p: &ClaimParams<'_>) -> Result<Vec<RunRow>> {
    let Some(filter) = p.channel else { return leased(conn, p) };
    if p.limit <= 0 {
        return Ok(Vec::new());
    }
    in_transaction_on::<_, Error>(conn, |conn| {
        // One sequential claim per channel at a time, across all workers.
        conn.transaction_lock(TxLock::Sequential(&filter.node))?;
        let sql = Sql::heads(filter, p.limit + 64);
        let heads: Vec<HeadRow> = conn.load_sql(&sql, "read the head of a sequential channel")?;
        let now = p.now.naive_utc();
        let mut chosen = Vec::new();
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
                    chosen.push(head.id);
                    if chosen.len() as i64 >= p.limit {
                        break;
                    }
                }
                _ => {}
            }
        }
        if chosen.is_empty() {
            return Ok(Vec::new());
        }
        // A head row locked by another transaction (an operator's change) must not be skipped:
        // what follows it would run out of order.
        if !conn.rows_lock_all(&chosen)? {
            return Err(Error::Config(SEQUENTIAL_HEAD_BUSY.into()));
        }
        take(conn, p, &chosen)
    })
    .or_else(|e| match e {
        Error::Config(message) if message == SEQUENTIAL_HEAD_BUSY => Ok(Vec::new()),
        other => Err(other),
    })
}

pub(super) fn free_keys(conn: &mut AnyConnection, ids: &[i64], started: DateTime<Utc>) -> Result<()> {
    use queue_job::dsl;
    if ids.is_empty() {
        return Ok(());
    }
    let target = dsl::queue_job.filter(dsl::id.eq_any(ids));
    with_backend!(conn, c => diesel::update(target)
        .set(dsl::date_started.eq(Some(started.naive_utc())))
        .execute(c))
    .map(|_| ())
    .map_err(Error::query("free the identity keys of a batch"))
}
