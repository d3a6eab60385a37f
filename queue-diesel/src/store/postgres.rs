//! PostgreSQL: the claim locks its candidates with `FOR UPDATE SKIP LOCKED`, so concurrent
//! workers on any host take disjoint jobs without waiting on each other.

use diesel::connection::SimpleConnection;
use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamp};

use super::sql::{Prepared, Sql};
use super::{NOTIFY_CHANNEL, SETTLE_LOCK, Session, channel_key};
use crate::error::{Error, Result};

/// Key of the advisory lock that serialises migrations of concurrent workers.
const MIGRATION_LOCK: i64 = 0x7175_6575_655f_6d69; // "queue_mi"

/// Run a statement built as text (prepared once per connection) and load its rows.
pub(super) fn load<T: QueryableByName<Pg> + 'static>(c: &mut PgConnection, sql: &Sql) -> QueryResult<Vec<T>> {
    Prepared(sql).load(c)
}

/// Insert one job with a statement Diesel prepares once per connection (the column-array
/// insert is parsed anew each time). With `wake`, the insert returns its `pg_notify`: the
/// notification is delivered at commit, and costs no round trip of its own.
pub(super) fn job_insert_one(
    c: &mut PgConnection,
    row: &super::rows::NewJobRow<'_>,
    wake: bool,
) -> QueryResult<usize> {
    let insert = diesel::insert_into(crate::schema::queue_job::table).values(row);
    if wake { insert.returning(WakeWorkers).get_result::<bool>(c).map(|_| 1) } else { insert.execute(c) }
}

/// `pg_notify('queue_job', '') IS NULL`, as a `RETURNING` expression of a static shape, so that
/// Diesel keeps the statement prepared (an SQL literal would make it prepare anew each time).
#[derive(Debug, Clone, Copy, diesel::query_builder::QueryId)]
struct WakeWorkers;

impl diesel::Expression for WakeWorkers {
    type SqlType = diesel::sql_types::Bool;
}

impl<QS> diesel::AppearsOnTable<QS> for WakeWorkers {}

impl<QS> diesel::SelectableExpression<QS> for WakeWorkers {}

impl diesel::expression::ValidGrouping<()> for WakeWorkers {
    type IsAggregate = diesel::expression::is_aggregate::Never;
}

impl diesel::query_builder::QueryFragment<Pg> for WakeWorkers {
    fn walk_ast<'b>(&'b self, mut out: diesel::query_builder::AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("pg_notify('");
        out.push_sql(NOTIFY_CHANNEL);
        out.push_sql("', '') IS NULL");
        Ok(())
    }
}

/// Insert jobs with one statement of column arrays (`unnest`): the server parses 18 parameters
/// instead of 18 per row, which makes bulk inserts several times faster than a multi-row VALUES.
/// With `wake`, the same statement sends the workers' notification (delivered at commit), which
/// saves the round trip of a `NOTIFY` of its own.
pub(super) fn job_insert_rows(
    c: &mut PgConnection,
    rows: &[super::rows::NewJobRow<'_>],
    wake: bool,
) -> QueryResult<usize> {
    use diesel::sql_types::{Array, Integer, Nullable};
    fn column<'r, T>(
        rows: &'r [super::rows::NewJobRow<'_>],
        f: impl Fn(&'r super::rows::NewJobRow<'_>) -> T,
    ) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    const COLUMNS: &str = "INSERT INTO queue_job (uuid, state, func, model, record_ids, args, context, \
         user_id, priority, eta, expected_at, channel, identity_key, attempts, max_retries, description, \
         date_created, origin) SELECT u.* FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
         $5::text[], $6::text[], $7::text[], $8::bigint[], $9::int[], $10::timestamp[], $11::timestamp[], \
         $12::text[], $13::text[], $14::int[], $15::int[], $16::text[], $17::timestamp[], $18::text[]) AS u";
    let sql = if wake {
        // Materialized: evaluated once, whatever the plan.
        format!("WITH wake AS MATERIALIZED (SELECT pg_notify('{NOTIFY_CHANNEL}', '')) {COLUMNS}, wake")
    } else {
        COLUMNS.to_owned()
    };
    diesel::sql_query(sql)
    .bind::<Array<Text>, _>(column(rows, |r| r.uuid.as_str()))
    .bind::<Array<Text>, _>(column(rows, |r| r.state))
    .bind::<Array<Text>, _>(column(rows, |r| r.func))
    .bind::<Array<Text>, _>(column(rows, |r| r.model))
    .bind::<Array<Text>, _>(column(rows, |r| r.record_ids.as_str()))
    .bind::<Array<Text>, _>(column(rows, |r| r.args.as_str()))
    .bind::<Array<Text>, _>(column(rows, |r| r.context.as_str()))
    .bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.user_id))
    .bind::<Array<Integer>, _>(column(rows, |r| r.priority))
    .bind::<Array<Nullable<Timestamp>>, _>(column(rows, |r| r.eta))
    .bind::<Array<Nullable<Timestamp>>, _>(column(rows, |r| r.expected_at))
    .bind::<Array<Text>, _>(column(rows, |r| r.channel))
    .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.identity_key))
    .bind::<Array<Integer>, _>(column(rows, |r| r.attempts))
    .bind::<Array<Integer>, _>(column(rows, |r| r.max_retries))
    .bind::<Array<Text>, _>(column(rows, |r| r.description))
    .bind::<Array<Timestamp>, _>(column(rows, |r| r.date_created))
    .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.origin))
    .execute(c)
}

pub(super) fn notify(c: &mut PgConnection) -> Result<()> {
    diesel::sql_query(format!("NOTIFY {NOTIFY_CHANNEL}"))
        .execute(c)
        .map(|_| ())
        .map_err(Error::query("notify workers"))
}

pub(super) fn schema_migrate(c: &mut PgConnection, on_step: super::schema::OnStep<'_>) -> Result<()> {
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK)
        .execute(c)
        .map_err(Error::query("lock the schema for migration"))?;
    let outcome = super::schema::migrate(c, crate::Backend::Postgres, |c| {
        let rows: Vec<super::rows::Version> =
            diesel::sql_query("SELECT version FROM queue_schema_migrations")
                .load(c)
                .map_err(Error::query("read the queue's schema version"))?;
        Ok(rows.into_iter().map(|r| r.version).collect())
    }, on_step);
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK)
        .execute(c)
        .map_err(Error::query("unlock the schema after migration"))?;
    outcome
}

/// Namespaces of the transaction locks (`pg_advisory_xact_lock(namespace, key)`).
const IDENTITY_LOCK: i32 = 0x7175_6e69; // "quni"
const START_LOCK: i32 = 0x7174_6872; // "qthr"
const SCHEDULE_LOCK: i32 = 0x7173_6368; // "qsch"

pub(super) fn transaction_lock(c: &mut PgConnection, lock: super::TxLock<'_>) -> Result<()> {
    let (namespace, key, what) = match lock {
        // Keyed as before the namespaces: workers of both versions keep excluding each other.
        super::TxLock::Sequential(channel) => (channel_key(channel), -1, "lock a sequential channel"),
        super::TxLock::IdentityKey(key) => (IDENTITY_LOCK, text_key(key), "lock an identity key"),
        super::TxLock::ChannelStarts(channel) => (START_LOCK, super::channel_key(channel), "lock a channel's starts"),
        super::TxLock::Schedule(name) => (SCHEDULE_LOCK, text_key(name), "lock a schedule"),
    };
    diesel::sql_query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind::<diesel::sql_types::Integer, _>(namespace)
        .bind::<diesel::sql_types::Integer, _>(key)
        .execute(c)
        .map(|_| ())
        .map_err(Error::query(what))
}

/// Key of the advisory lock one pruning transaction at a time holds.
const PRUNE_LOCK: i64 = 0x7175_6575_655f_7072; // "queue_pr"

pub(super) fn prune_lock(c: &mut PgConnection) -> Result<bool> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>("pg_try_advisory_xact_lock(")
        .bind::<BigInt, _>(PRUNE_LOCK)
        .sql(")"))
    .get_result(c)
    .map_err(Error::query("take the prune lock"))
}

pub(super) fn rows_lock_all(c: &mut PgConnection, ids: &[i64]) -> Result<bool> {
    use crate::schema::queue_job;
    let locked: Vec<i64> = queue_job::table
        .filter(queue_job::id.eq_any(ids))
        .select(queue_job::id)
        .for_update()
        .skip_locked()
        .load(c)
        .map_err(Error::query("lock the head of a sequential channel"))?;
    Ok(locked.len() == ids.len())
}

/// FNV-1a of `text`: the same text always takes the same lock (different texts rarely share one,
/// which only serializes them).
fn text_key(text: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in text.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash as i32
}

/// A slot number as the advisory lock's second key.
fn slot_key(slot: usize) -> i32 {
    i32::try_from(slot).unwrap_or(i32::MAX)
}

#[derive(QueryableByName)]
struct Slot {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    slot: i32,
}

/// Take up to `want` free slots of `channel` in one round trip: the lock is tried on the
/// candidates in order and the scan stops as soon as `want` were taken.
pub(super) fn slots_acquire(
    c: &mut PgConnection,
    channel: &str,
    capacity: usize,
    want: usize,
    held: &[usize],
) -> Result<Vec<usize>> {
    use diesel::sql_types::{Array, Integer};
    let candidates: Vec<i32> = (0..capacity).filter(|s| !held.contains(s)).map(slot_key).collect();
    if want == 0 || candidates.is_empty() {
        return Ok(Vec::new());
    }
    let got: Vec<Slot> = diesel::sql_query(
        "SELECT s AS slot FROM unnest($1::int[]) AS s WHERE pg_try_advisory_lock($2, s) LIMIT $3",
    )
    .bind::<Array<Integer>, _>(&candidates)
    .bind::<Integer, _>(channel_key(channel))
    .bind::<BigInt, _>(i64::try_from(want).unwrap_or(i64::MAX))
    .load(c)
    .map_err(Error::query("take channel slots"))?;
    Ok(got.into_iter().filter_map(|s| usize::try_from(s.slot).ok()).collect())
}

#[derive(QueryableByName)]
struct Held {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    held: bool,
}

/// Take a slot of each channel for the transaction with the gate a head claim uses.
pub(super) fn slots_hold(c: &mut PgConnection, slots: &[(String, usize)]) -> Result<bool> {
    let rows: Vec<Held> = load(c, &Sql::slots_gate(slots)).map_err(Error::query("take channel slots"))?;
    Ok(rows.first().is_some_and(|r| r.held))
}

/// Give slots back in one round trip.
pub(super) fn slots_release(c: &mut PgConnection, channel: &str, slots: &[usize]) -> Result<()> {
    use diesel::sql_types::{Array, Integer};
    if slots.is_empty() {
        return Ok(());
    }
    let keys: Vec<i32> = slots.iter().copied().map(slot_key).collect();
    diesel::sql_query("SELECT pg_advisory_unlock($1, s) FROM unnest($2::int[]) AS s")
        .bind::<Integer, _>(channel_key(channel))
        .bind::<Array<Integer>, _>(&keys)
        .execute(c)
        .map(|_| ())
        .map_err(Error::query("give back channel slots"))
}

pub(super) fn analyze(c: &mut PgConnection) -> Result<()> {
    diesel::sql_query("ANALYZE queue_job")
        .execute(c)
        .map(|_| ())
        .map_err(Error::query("refresh the statistics of the jobs table"))
}

pub(super) fn session(c: &mut PgConnection) -> Result<Session> {
    use diesel::dsl::sql;
    use diesel::sql_types::Integer;
    diesel::select(sql::<Integer>("pg_backend_pid()"))
        .get_result(c)
        .map(Session::Postgres)
        .map_err(Error::query("read the session's backend pid"))
}

pub(super) fn session_end(c: &mut PgConnection, pid: i32) -> Result<()> {
    diesel::sql_query("SELECT pg_terminate_backend($1)")
        .bind::<diesel::sql_types::Integer, _>(pid)
        .execute(c)
        .map(|_| ())
        .map_err(Error::query("end a running job's session"))
}

/// A session setting (`SET …`) for a connection of the queue's own.
pub(super) fn prepare(c: &mut PgConnection, setting: &str) -> Result<()> {
    c.batch_execute(setting).map_err(Error::query("prepare a session"))
}

/// Take (or give back) the advisory lock rescuers respect while this session settles job `id`.
pub(super) fn settle_lock(c: &mut PgConnection, id: i64, lock: bool) -> Result<()> {
    let function = if lock { "pg_advisory_lock" } else { "pg_advisory_unlock" };
    diesel::sql_query(format!("SELECT {function}($1, CAST($2 % 2147483647 AS INTEGER))"))
        .bind::<diesel::sql_types::Integer, _>(SETTLE_LOCK)
        .bind::<BigInt, _>(id)
        .execute(c)
        .map(|_| ())
        .map_err(Error::query("hold a job while settling it"))
}

/// The vtable of the error information Diesel attaches to PostgreSQL errors, learnt from a
/// statement that fails on purpose (see [`establish`]).
static ERROR_VTABLE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

type ErrorInformation = dyn diesel::result::DatabaseErrorInformation + Send + Sync;

fn vtable_of(info: &ErrorInformation) -> usize {
    let fat: *const ErrorInformation = info;
    // SAFETY: a raw pointer to a trait object is two words, the data then the vtable; the words
    // are only compared, never used as pointers.
    let words: [usize; 2] = unsafe { std::mem::transmute(fat) };
    words[1]
}

/// The SQLSTATE of a PostgreSQL error, read from the result Diesel keeps in the error (Diesel
/// itself only maps a few codes to kinds). `None` for another backend's error, or when the
/// error is not shaped as learnt: the reading is checked against the primary message Diesel
/// reports, which lives in the same result.
pub(super) fn sqlstate(info: &ErrorInformation) -> Option<String> {
    use std::ffi::{CStr, c_int};
    let expected = *ERROR_VTABLE.get()?;
    if vtable_of(info) != expected || std::mem::size_of_val(info) != std::mem::size_of::<usize>() {
        return None;
    }
    // SAFETY: the vtable is that of Diesel's PostgreSQL error information, a struct whose only
    // field is the pointer to its `PGresult` (owned by the error, alive while `info` is).
    let result = unsafe { *(info as *const ErrorInformation).cast::<*const pq_sys::PGresult>() };
    if result.is_null() {
        return None;
    }
    // SAFETY: `result` is a live `PGresult`; libpq returns null or a string the result owns.
    let field = |code: u8| unsafe { pq_sys::PQresultErrorField(result, c_int::from(code)) };
    let primary = field(b'M');
    if primary.is_null() || primary.cast::<u8>().cast_const() != info.message().as_ptr() {
        return None;
    }
    let state = field(b'C');
    // SAFETY: non-null fields are NUL-terminated strings owned by the result.
    (!state.is_null()).then(|| unsafe { CStr::from_ptr(state) }.to_string_lossy().into_owned())
}

/// Open a connection to `url`; the first one of the process also learns the shape of Diesel's
/// PostgreSQL errors, so that their SQLSTATE can be read (see [`sqlstate`]).
pub(super) fn establish(url: &str) -> std::result::Result<PgConnection, diesel::ConnectionError> {
    let mut c = PgConnection::establish(url)?;
    if ERROR_VTABLE.get().is_none()
        && let Err(diesel::result::Error::DatabaseError(_, info)) =
            diesel::sql_query("SELECT 1 / 0").execute(&mut c)
    {
        let _ = ERROR_VTABLE.set(vtable_of(info.as_ref()));
        if sqlstate(info.as_ref()).as_deref() != Some("22012") {
            tracing::warn!(
                "cannot read SQLSTATEs of PostgreSQL errors: deadlocks and lock timeouts will be blamed on the jobs that meet them"
            );
        }
    }
    Ok(c)
}

/// From this many rows on, jobs are inserted with `COPY` rather than one `INSERT`.
pub(super) const COPY_FROM_ROWS: usize = 200;

/// Insert jobs with `COPY … FROM STDIN` (text format): for large batches the fastest way in.
pub(super) fn job_copy_rows(c: &mut PgConnection, rows: &[super::rows::NewJobRow<'_>]) -> Result<usize> {
    use diesel::prelude::ExecuteCopyFromDsl;

    use crate::schema::queue_job::dsl;
    let columns = (
        dsl::uuid,
        dsl::state,
        dsl::func,
        dsl::model,
        dsl::record_ids,
        dsl::args,
        dsl::context,
        dsl::user_id,
        dsl::priority,
        dsl::eta,
        dsl::expected_at,
        dsl::channel,
        dsl::identity_key,
        dsl::attempts,
        dsl::max_retries,
        dsl::description,
        dsl::date_created,
        dsl::origin,
    );
    diesel::copy_from(dsl::queue_job)
        .from_raw_data(columns, |out: &mut dyn std::io::Write| {
            let mut line = String::with_capacity(512);
            for r in rows {
                line.clear();
                copy_row(&mut line, r);
                out.write_all(line.as_bytes())
                    .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?;
            }
            Ok::<_, diesel::result::Error>(())
        })
        .execute(c)
        .map_err(Error::query("copy jobs in"))
}

/// A moment as PostgreSQL's text input reads it, whatever the year (chrono writes `+10000` for
/// years past 9999 and counts a year 0; PostgreSQL wants `10000` and `… BC`).
fn copy_time(t: chrono::NaiveDateTime) -> String {
    use chrono::{Datelike, Timelike};
    let (year, era) = if t.year() > 0 { (t.year(), "") } else { (1 - t.year(), " BC") };
    format!(
        "{year:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}{era}",
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond() / 1000
    )
}

/// One row of `COPY`'s text format: fields separated by tabs, `\N` for NULL, backslash escapes.
fn copy_row(line: &mut String, r: &super::rows::NewJobRow<'_>) {
    use std::fmt::Write;
    /// A field and the tab after it.
    fn field(line: &mut String, value: Option<&str>) {
        match value {
            Some(value) => {
                for ch in value.chars() {
                    match ch {
                        '\\' => line.push_str("\\\\"),
                        '\t' => line.push_str("\\t"),
                        '\n' => line.push_str("\\n"),
                        '\r' => line.push_str("\\r"),
                        other => line.push(other),
                    }
                }
            }
            None => line.push_str("\\N"),
        }
        line.push('\t');
    }
    let time = |t: Option<chrono::NaiveDateTime>| t.map(copy_time);
    field(line, Some(&r.uuid));
    field(line, Some(r.state));
    field(line, Some(r.func));
    field(line, Some(r.model));
    field(line, Some(&r.record_ids));
    field(line, Some(&r.args));
    field(line, Some(&r.context));
    field(line, r.user_id.map(|u| u.to_string()).as_deref());
    let _ = write!(line, "{}\t", r.priority);
    field(line, time(r.eta).as_deref());
    field(line, time(r.expected_at).as_deref());
    field(line, Some(r.channel));
    field(line, r.identity_key);
    let _ = write!(line, "{}\t{}\t", r.attempts, r.max_retries);
    field(line, Some(r.description));
    field(line, time(Some(r.date_created)).as_deref());
    field(line, r.origin);
    // The last field's tab ends the row instead.
    line.pop();
    line.push('\n');
}
