//! Paused channels (`queue_channel_pause`): an operator's pause holds a channel and every
//! channel below it until resumed.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;

use crate::connection::{AnyConnection, with_backend};
use crate::error::{Error, Result};
use crate::schema::queue_channel_pause;

pub(super) fn pause(conn: &mut AnyConnection, channel: &str, now: DateTime<Utc>) -> Result<bool> {
    use queue_channel_pause::dsl;
    let row = (dsl::channel.eq(channel), dsl::paused_at.eq(now.naive_utc()));
    with_backend!(conn, c => diesel::insert_into(dsl::queue_channel_pause)
        .values(row)
        .on_conflict_do_nothing()
        .execute(c))
    .map(|n| n == 1)
    .map_err(Error::query("pause a channel"))
}

pub(super) fn resume(conn: &mut AnyConnection, channel: &str) -> Result<bool> {
    use queue_channel_pause::dsl;
    with_backend!(conn, c => diesel::delete(dsl::queue_channel_pause.filter(dsl::channel.eq(channel))).execute(c))
        .map(|n| n == 1)
        .map_err(Error::query("resume a channel"))
}

pub(super) fn paused(conn: &mut AnyConnection) -> Result<Vec<(String, DateTime<Utc>)>> {
    use queue_channel_pause::dsl;
    let rows: Vec<(String, NaiveDateTime)> = with_backend!(conn, c => dsl::queue_channel_pause
        .select((dsl::channel, dsl::paused_at))
        .order(dsl::channel)
        .load(c))
    .map_err(Error::query("read the paused channels"))?;
    Ok(rows.into_iter().map(|(channel, at)| (channel, at.and_utc())).collect())
}
