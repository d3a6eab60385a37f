//! One connection type for every backend, chosen by URL at run time, and the transactions the
//! queue opens on it (with the depth checks that keep a job from closing what it did not open).

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
#[cfg(feature = "postgres")]
use diesel::pg::PgConnection;
#[cfg(feature = "sqlite")]
use diesel::sqlite::SqliteConnection;

use crate::error::Error;

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
compile_error!("queue-diesel needs a backend: enable its `sqlite` or `postgres` feature (or both)");

pub use kind::{AsJobConnection, JobConnection};
pub use multi::{AnyConnection, MultiBackend};

mod kind;

/// Diesel's derive emits helper types (the `MultiBackend` and its value types) without docs.
mod multi {
    #![allow(missing_docs, missing_debug_implementations)]
    #[cfg(feature = "postgres")]
    use super::PgConnection;
    #[cfg(feature = "sqlite")]
    use super::SqliteConnection;

    /// A connection to SQLite or PostgreSQL. Application queries written against it run on
    /// either backend; the queue matches the variant where the SQL differs (claims, notifications).
    #[derive(diesel::MultiConnection)]
    pub enum AnyConnection {
        /// An embedded SQLite database file.
        #[cfg(feature = "sqlite")]
        Sqlite(SqliteConnection),
        /// A PostgreSQL server.
        #[cfg(feature = "postgres")]
        Postgres(PgConnection),
    }
}

impl std::fmt::Debug for AnyConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(_) => "AnyConnection::Sqlite",
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(_) => "AnyConnection::Postgres",
        })
    }
}

/// The database kinds the queue runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// SQLite, through a file path or `sqlite://` URL.
    Sqlite,
    /// PostgreSQL, through a `postgres://` or `postgresql://` URL.
    Postgres,
}

impl Backend {
    /// The backend a database URL names. Anything that is not a PostgreSQL or MySQL URL is a
    /// SQLite path.
    pub fn from_url(url: &str) -> Result<Backend, crate::Error> {
        let lower = url.trim().to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if lower.starts_with("mysql://") || lower.starts_with("mariadb://") {
            Err(crate::Error::Config(format!(
                "unsupported database URL {:?}: MySQL/MariaDB is not supported yet; use a SQLite path or a postgres:// URL",
                crate::database::redact(url)
            )))
        } else if lower.is_empty() {
            Err(crate::Error::Config(
                "empty database URL: expected a SQLite path or a postgres:// URL".into(),
            ))
        } else if let Some((scheme, _)) = lower.split_once("://")
            && scheme != "sqlite"
            && scheme != "file"
        {
            Err(crate::Error::Config(format!(
                "unsupported database URL scheme {scheme:?} in {:?}: expected a SQLite path, sqlite://, or postgres://",
                crate::database::redact(url)
            )))
        } else {
            Ok(Backend::Sqlite)
        }
    }

    /// True when the database has one writer at a time: a transaction that writes blocks every
    /// other writer until it ends (SQLite). Such a database needs no channel slots (one job
    /// writes at a time anyway), and a job must not hold its write lock past the hang limit.
    pub fn single_writer(self) -> bool {
        matches!(self, Backend::Sqlite)
    }

    /// Whether other sessions see a transaction's row locks and can step over them
    /// (`FOR UPDATE SKIP LOCKED`): a worker's running jobs are then known by their locks, which
    /// end with its session. SQLite has one writer and no row locks.
    pub fn locks_rows(self) -> bool {
        matches!(self, Backend::Postgres)
    }

    /// A sentence naming the connection type of this backend, for messages.
    pub fn connection_type(self) -> &'static str {
        match self {
            Backend::Sqlite => "a SqliteConnection (the database is SQLite)",
            Backend::Postgres => "a PgConnection (the database is PostgreSQL)",
        }
    }

    /// Lower-case name, as shown in logs and benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl AnyConnection {
    /// Which backend this connection talks to.
    pub fn backend(&self) -> Backend {
        match self {
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(_) => Backend::Sqlite,
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(_) => Backend::Postgres,
        }
    }

    /// Mark this connection broken: a pool drops it instead of taking it back (after a failed
    /// ping, say).
    pub(crate) fn mark_broken(&mut self) {
        use diesel::connection::TransactionManager;
        <AnyConnection as diesel::Connection>::TransactionManager::transaction_manager_status_mut(self)
            .set_in_error();
    }

    /// Run one or more SQL statements with no result.
    pub fn batch(&mut self, sql: &str) -> diesel::QueryResult<()> {
        match self {
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(c) => c.batch_execute(sql),
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(c) => c.batch_execute(sql),
        }
    }
}

/// Run the same Diesel code on the concrete connection of either backend: `$c` is bound to a
/// `&mut SqliteConnection` or a `&mut PgConnection` and `$body` is compiled once for each.
macro_rules! with_backend {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            #[cfg(feature = "sqlite")]
            $crate::connection::AnyConnection::Sqlite($c) => $body,
            #[cfg(feature = "postgres")]
            $crate::connection::AnyConnection::Postgres($c) => $body,
        }
    };
}
pub(crate) use with_backend;

/// How many transactions and savepoints are open on `conn`.
pub(crate) fn depth(conn: &mut AnyConnection) -> diesel::QueryResult<u32> {
    with_backend!(conn, c => AnsiTransactionManager::transaction_manager_status_mut(c)
        .transaction_depth()
        .map(|d| d.map_or(0, |d| d.get())))
}

/// Begin a transaction on `conn`: `BEGIN IMMEDIATE` on SQLite (take the write lock now rather than
/// fail to upgrade it later), `BEGIN` on PostgreSQL; a savepoint when one is already open.
/// Returns the depth it opened.
pub(crate) fn begin(conn: &mut AnyConnection) -> diesel::QueryResult<u32> {
    let outer = depth(conn)?;
    if outer == 0 && conn.backend().single_writer() {
        // One writer: take the write lock now rather than fail to upgrade to it later.
        with_backend!(conn, c => AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE"))?
    } else {
        <AnyConnection as diesel::Connection>::TransactionManager::begin_transaction(conn)?
    }
    Ok(outer + 1)
}

fn commit(conn: &mut AnyConnection) -> diesel::QueryResult<()> {
    <AnyConnection as diesel::Connection>::TransactionManager::commit_transaction(conn)
}

/// Roll back everything opened at depth `level` and above.
pub(crate) fn rollback_to(conn: &mut AnyConnection, level: u32) {
    while depth(conn).is_ok_and(|d| d >= level) {
        if <AnyConnection as diesel::Connection>::TransactionManager::rollback_transaction(conn).is_err() {
            return;
        }
    }
}

/// Mark `conn` unusable: the pool drops it instead of lending it again (its session was ended
/// under it, or it was made to refuse writes).
pub(crate) fn poison(conn: &mut AnyConnection) {
    with_backend!(conn, c => AnsiTransactionManager::transaction_manager_status_mut(c).set_in_error());
}

/// Run `f` inside a transaction (or a savepoint) on `conn`: commit on `Ok`, roll back on `Err`
/// or panic. If `f` leaves the connection at another depth than it found it (it opened a
/// transaction it did not close, or closed ours), everything is rolled back and that is an error.
pub(crate) fn in_transaction_on<T, E>(
    conn: &mut AnyConnection,
    f: impl FnOnce(&mut AnyConnection) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<Error>,
{
    let level = begin(conn).map_err(|e| E::from(Error::query("begin a transaction")(e)))?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut *conn)));
    match outcome {
        Ok(Ok(value)) => {
            let found = depth(conn).unwrap_or(0);
            if found != level {
                rollback_to(conn, level);
                return Err(E::from(Error::TransactionDepth { expected: level, found }));
            }
            // Counted before the commit, so a watcher never sees the commit without the count.
            match commit(conn) {
                Ok(()) => Ok(value),
                Err(e) => {
                    rollback_to(conn, level);
                    Err(E::from(Error::query("commit a transaction")(e)))
                }
            }
        }
        Ok(Err(err)) => {
            rollback_to(conn, level);
            Err(err)
        }
        Err(panic) => {
            rollback_to(conn, level);
            std::panic::resume_unwind(panic)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_from_urls() {
        assert_eq!(Backend::from_url("queue.sqlite3").ok(), Some(Backend::Sqlite));
        assert_eq!(Backend::from_url("sqlite://queue.db").ok(), Some(Backend::Sqlite));
        assert_eq!(Backend::from_url("postgres://u@h/db").ok(), Some(Backend::Postgres));
        assert_eq!(Backend::from_url("PostgreSQL://u@h/db").ok(), Some(Backend::Postgres));
        let err = Backend::from_url("mysql://root:secret@h/db").expect_err("unsupported");
        assert!(err.to_string().contains("MySQL/MariaDB is not supported yet"), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(Backend::from_url("redis://h").is_err());
        assert!(Backend::from_url("  ").is_err());
    }
}
