//! Statements built as text, shared by both backends: claims, the heads of channels, rescues.
//! Only the placeholders and the row lock differ by backend.
use super::{ChannelFilter, ClaimParams, JobState, RescueParams, RunRow};
use crate::connection::Backend;

/// A bound value.
#[derive(Debug, Clone)]
pub(super) enum Bind {
    Text(String),
    Int(i64),
    Time(chrono::NaiveDateTime),
}

/// A statement and its bound values.
#[derive(Debug)]
pub(super) struct Sql {
    pub text: String,
    pub binds: Vec<Bind>,
}

impl Sql {
    /// Claim the claimable jobs `p` asks for under its lease, counting their try.
    pub fn build(p: &ClaimParams<'_>, backend: Backend) -> Sql {
        let mut sql = Sql::claim_update(p);
        sql.push(" WHERE id IN (");
        sql.push_claimable(p, backend, "id");
        sql.push(&format!(") RETURNING {}", RunRow::COLUMNS));
        sql
    }

    /// Claim these pending jobs under a lease (the head a claim chose), counting their try;
    /// on PostgreSQL only those no other transaction holds (none is waited for).
    pub fn take(p: &ClaimParams<'_>, ids: &[i64], backend: Backend) -> Sql {
        let mut sql = Sql::claim_update(p);
        sql.push(" WHERE id IN (SELECT id FROM queue_job WHERE state = 'pending' AND id IN (");
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.bind(Bind::Int(*id));
        }
        if ids.is_empty() {
            sql.push("NULL");
        }
        sql.push(")");
        if backend == Backend::Postgres {
            sql.push(" FOR UPDATE SKIP LOCKED");
        }
        sql.push(&format!(") RETURNING {}", RunRow::COLUMNS));
        sql
    }

    /// `UPDATE queue_job SET` what a claim under `p`'s lease writes: `started`, its try counted.
    fn claim_update(p: &ClaimParams<'_>) -> Sql {
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
        sql
    }

    /// The claimable rows themselves, in claim order, locked (PostgreSQL) but not changed: a
    /// batch's claim, or the head an alone claim looks at.
    pub fn select(p: &ClaimParams<'_>, backend: Backend) -> Sql {
        let mut sql = Sql { text: String::with_capacity(512), binds: Vec::new() };
        sql.push_claimable(p, backend, RunRow::COLUMNS);
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
        if backend == Backend::Postgres {
            for (channel, capacity) in p.slots {
                self.push_slot_gate(channel, *capacity);
            }
        }
        // The same expression as the index queue_job_claimable.
        self.push(" ORDER BY priority, COALESCE(expected_at, eta, date_created), id LIMIT ");
        self.bind(Bind::Int(p.limit));
        if backend == Backend::Postgres {
            self.push(" FOR UPDATE SKIP LOCKED");
        }
    }

    /// `SELECT TRUE AS held` once a slot of each channel of `slots` is the transaction's, no
    /// row when one is full (PostgreSQL).
    #[cfg(feature = "postgres")]
    pub fn slots_gate(slots: &[(String, usize)]) -> Sql {
        let mut sql = Sql { text: String::with_capacity(256), binds: Vec::new() };
        sql.push("SELECT TRUE AS held WHERE TRUE");
        for (channel, capacity) in slots {
            sql.push_slot_gate(channel, *capacity);
        }
        sql
    }

    /// The head of a channel, in claim order: its unfinished jobs (waiting ones aside), for a
    /// sequential claim to walk.
    pub fn heads(filter: &ChannelFilter, limit: i64) -> Sql {
        let mut sql = Sql { text: String::with_capacity(256), binds: Vec::new() };
        sql.push("SELECT id, state, func, eta FROM queue_job WHERE state IN (");
        for (i, state) in
            [JobState::Pending, JobState::Enqueued, JobState::Started, JobState::Failed].iter().enumerate()
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
    pub fn rescue(p: &RescueParams<'_>, backend: Backend) -> Sql {
        let mut sql = Sql { text: String::with_capacity(512), binds: Vec::new() };
        let spent = "max_retries > 0 AND attempts >= max_retries";
        sql.push(&format!("UPDATE queue_job SET state = CASE WHEN {spent} THEN "));
        sql.bind(Bind::Text(JobState::Failed.as_str().into()));
        sql.push(" ELSE ");
        sql.bind(Bind::Text(JobState::Pending.as_str().into()));
        sql.push(&format!(" END, date_done = CASE WHEN {spent} THEN "));
        sql.bind(Bind::Time(p.now.naive_utc()));
        // Its worker died while running it: from now on it runs with no other job beside it.
        sql.push(" ELSE NULL END, eta = NULL, lease_token = NULL, isolation = 2, exc_name = ");
        sql.bind(Bind::Text("WorkerLost".into()));
        sql.push(", exc_message = ");
        sql.bind(Bind::Text("its worker stopped while running it: ".into()));
        sql.push(" || COALESCE(worker_id, '?') || ', try ' || CAST(attempts AS TEXT)");
        // PostgreSQL: the rows no live transaction holds; of those, the ones whose worker is not
        // ending their session to store their outcome itself (a timeout, a hang): it holds this
        // lock from before the session ends until the outcome is stored. The inner query is
        // not flattened (it locks rows), so the lock is only tried on its rows.
        let postgres = backend == Backend::Postgres;
        sql.push(" WHERE id IN (");
        if postgres {
            sql.push("SELECT id FROM (");
        }
        sql.push("SELECT id FROM queue_job WHERE state = ");
        sql.bind(Bind::Text(JobState::Started.as_str().into()));
        sql.push(" AND date_started < ");
        sql.bind(Bind::Time(p.cutoff.naive_utc()));
        if let Some(dead) = p.dead_workers {
            sql.push_in("worker_id", dead.iter().map(String::as_str));
        }
        if postgres {
            sql.push(&format!(
                " FOR UPDATE SKIP LOCKED) AS orphan WHERE pg_try_advisory_xact_lock({}, CAST(id % 2147483647 AS INTEGER))",
                super::SETTLE_LOCK
            ));
        }
        sql.push(")");
        sql.push(" RETURNING id, state, func, channel");
        sql
    }

    /// ` AND` one free slot of `channel`'s `capacity` is now this transaction's (PostgreSQL):
    /// an uncorrelated `EXISTS`, evaluated once before any row, stops at the first slot whose
    /// lock it gets. The lock ends with the transaction, so a batch holds its slot exactly as
    /// long as it runs, and no round trip of its own takes or frees it.
    #[cfg(feature = "postgres")]
    fn push_slot_gate(&mut self, channel: &str, capacity: usize) {
        self.push(" AND EXISTS (SELECT 1 FROM generate_series(0, CAST(");
        self.bind(Bind::Int(i64::try_from(capacity).unwrap_or(i64::MAX)));
        self.push(" AS INTEGER) - 1) AS slot WHERE pg_try_advisory_xact_lock(CAST(");
        self.bind(Bind::Int(i64::from(super::channel_key(channel))));
        self.push(" AS INTEGER), slot))");
    }

    #[cfg(not(feature = "postgres"))]
    fn push_slot_gate(&mut self, _channel: &str, _capacity: usize) {}

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
}

/// A statement built as text, run as a prepared statement: Diesel keeps it per connection, keyed
/// by its text, so a claim is parsed and planned once per connection and then sent in one round
/// trip (a `sql_query` is prepared anew, one more round trip, each time).
#[derive(Debug, Clone, Copy)]
pub(super) struct Prepared<'a>(pub &'a Sql);

impl diesel::query_builder::QueryId for Prepared<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl diesel::query_builder::Query for Prepared<'_> {
    type SqlType = diesel::sql_types::Untyped;
}

impl<DB> diesel::query_builder::QueryFragment<DB> for Prepared<'_>
where
    DB: diesel::backend::Backend
        + diesel::sql_types::HasSqlType<diesel::sql_types::Text>
        + diesel::sql_types::HasSqlType<diesel::sql_types::BigInt>
        + diesel::sql_types::HasSqlType<diesel::sql_types::Timestamp>,
    String: diesel::serialize::ToSql<diesel::sql_types::Text, DB>,
    i64: diesel::serialize::ToSql<diesel::sql_types::BigInt, DB>,
    chrono::NaiveDateTime: diesel::serialize::ToSql<diesel::sql_types::Timestamp, DB>,
{
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, DB>,
    ) -> diesel::QueryResult<()> {
        use diesel::sql_types::{BigInt, Text, Timestamp};
        let mut binds = self.0.binds.iter();
        for (i, part) in self.0.text.split('\u{1}').enumerate() {
            if i > 0 {
                match binds.next() {
                    Some(Bind::Text(v)) => out.push_bind_param::<Text, _>(v)?,
                    Some(Bind::Int(v)) => out.push_bind_param::<BigInt, _>(v)?,
                    Some(Bind::Time(v)) => out.push_bind_param::<Timestamp, _>(v)?,
                    None => {
                        return Err(diesel::result::Error::QueryBuilderError(
                            "a statement has more placeholders than values".into(),
                        ));
                    }
                }
            }
            out.push_sql(part);
        }
        Ok(())
    }
}

impl<Conn> diesel::RunQueryDsl<Conn> for Prepared<'_> {}
