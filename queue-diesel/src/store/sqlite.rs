//! SQLite: the claim is one atomic `UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING *`.
//! SQLite has one writer at a time, so no two workers can take the same row.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamp};
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::claim::{Bind, Sql};
use crate::connection::Backend;
use crate::error::{Error, Result};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Run a statement built by `claim::Sql` and load its rows.
pub(super) fn load<T: QueryableByName<Sqlite> + 'static>(
    c: &mut SqliteConnection,
    sql: &Sql,
) -> QueryResult<Vec<T>> {
    let mut query = diesel::sql_query(sql.text_for(Backend::Sqlite)).into_boxed::<Sqlite>();
    for bind in &sql.binds {
        query = match bind {
            Bind::Text(v) => query.bind::<Text, _>(v.clone()),
            Bind::Int(v) => query.bind::<BigInt, _>(*v),
            Bind::Time(v) => query.bind::<Timestamp, _>(*v),
        };
    }
    query.load(c)
}

pub(super) fn schema_migrate(c: &mut SqliteConnection) -> Result<()> {
    c.run_pending_migrations(MIGRATIONS).map(|_| ()).map_err(Error::Migration)
}
