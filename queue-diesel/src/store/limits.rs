//! Throttles and rate limits: the right to start jobs of a channel, taken by any worker under a
//! lock per channel (PostgreSQL: an advisory lock; SQLite: its one writer), recorded in
//! `queue_channel_start` so that every worker and host counts the same starts.

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use diesel::prelude::*;
use queue_core::channel::Limits;

use crate::connection::{AnyConnection, in_transaction_on, with_backend};
use crate::error::{Error, Result};
use crate::schema::queue_channel_start;

fn delta(d: std::time::Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// Take the right to start up to `want` jobs of `channel` now under `limits`; returns one id per
/// start granted (none when the channel must wait).
pub(super) fn reserve(
    conn: &mut AnyConnection,
    channel: &str,
    limits: &Limits,
    want: usize,
    now: DateTime<Utc>,
) -> Result<Vec<i64>> {
    use queue_channel_start::dsl;
    in_transaction_on::<_, Error>(conn, |conn| {
        conn.transaction_lock(super::TxLock::ChannelStarts(channel))?;
        let keep = limits.throttle.max(limits.rate.map(|(_, period)| period)).unwrap_or_default();
        let old = (now - delta(keep)).naive_utc();
        let mine = dsl::queue_channel_start.filter(dsl::channel.eq(channel));
        with_backend!(conn, c => diesel::delete(mine.filter(dsl::started_at.lt(old))).execute(c))
            .map_err(Error::query("forget old channel starts"))?;
        let mut allowed = want;
        if let Some(throttle) = limits.throttle {
            let last: Option<NaiveDateTime> = with_backend!(conn, c => mine
                .select(diesel::dsl::max(dsl::started_at))
                .first(c))
            .map_err(Error::query("read a channel's last start"))?;
            let free = last.is_none_or(|last| now.naive_utc() >= last + delta(throttle));
            allowed = if free { allowed.min(1) } else { 0 };
        }
        if let Some((count, period)) = limits.rate {
            let since = (now - delta(period)).naive_utc();
            let recent: i64 = with_backend!(conn, c => mine
                .filter(dsl::started_at.gt(since))
                .count()
                .get_result(c))
            .map_err(Error::query("count a channel's recent starts"))?;
            let left = usize::try_from(i64::from(count) - recent).unwrap_or(0);
            allowed = allowed.min(left);
        }
        let mut ids = Vec::with_capacity(allowed);
        for _ in 0..allowed {
            let row = (dsl::channel.eq(channel), dsl::started_at.eq(now.naive_utc()));
            let id: i64 = with_backend!(conn, c => diesel::insert_into(dsl::queue_channel_start)
                .values(row)
                .returning(dsl::id)
                .get_result(c))
            .map_err(Error::query("record a channel start"))?;
            ids.push(id);
        }
        Ok(ids)
    })
}

/// Give back starts taken but not used (fewer jobs were there to claim).
pub(super) fn release(conn: &mut AnyConnection, ids: &[i64]) -> Result<()> {
    use queue_channel_start::dsl;
    if ids.is_empty() {
        return Ok(());
    }
    with_backend!(conn, c => diesel::delete(dsl::queue_channel_start.filter(dsl::id.eq_any(ids))).execute(c))
        .map(|_| ())
        .map_err(Error::query("give back channel starts"))
}
