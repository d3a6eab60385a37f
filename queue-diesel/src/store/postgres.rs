//! PostgreSQL: the claim locks its candidates with `FOR UPDATE SKIP LOCKED`, so concurrent
//! workers on any host take disjoint jobs without waiting on each other.

use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamp};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::NOTIFY_CHANNEL;
use super::claim::{Bind, Sql};
use crate::connection::Backend;
use crate::error::{Error, Result};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Key of the advisory lock that serialises migrations of concurrent workers.
const MIGRATION_LOCK: i64 = 0x7175_6575_655f_6d69; // "queue_mi"

/// Run a statement built by `claim::Sql` and load its rows.
pub(super) fn load<T: QueryableByName<Pg> + 'static>(c: &mut PgConnection, sql: &Sql) -> QueryResult<Vec<T>> {
    let mut query = diesel::sql_query(sql.text_for(Backend::Postgres)).into_boxed::<Pg>();
    for bind in &sql.binds {
        query = match bind {
            Bind::Text(v) => query.bind::<Text, _>(v.clone()),
            Bind::Int(v) => query.bind::<BigInt, _>(*v),
            Bind::Time(v) => query.bind::<Timestamp, _>(*v),
        };
    }
    query.load(c)
}

pub(super) fn job_notify(c: &mut PgConnection) -> Result<()> {
    diesel::sql_query(format!("NOTIFY {NOTIFY_CHANNEL}"))
        .execute(c)
        .map(|_| ())
        .map_err(Error::query("notify workers"))
}

pub(super) fn schema_migrate(c: &mut PgConnection) -> Result<()> {
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK)
        .execute(c)
        .map_err(Error::query("lock the schema for migration"))?;
    let outcome = c.run_pending_migrations(MIGRATIONS).map(|_| ()).map_err(Error::Migration);
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK)
        .execute(c)
        .map_err(Error::query("unlock the schema after migration"))?;
    outcome
}
