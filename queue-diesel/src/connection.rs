//! One connection type for every backend, chosen by URL at run time.

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::sqlite::SqliteConnection;

pub use multi::{AnyConnection, MultiBackend};

/// Diesel's derive emits helper types (the `MultiBackend` and its value types) without docs.
mod multi {
    #![allow(missing_docs, missing_debug_implementations)]
    use super::{PgConnection, SqliteConnection};

    /// A connection to SQLite or PostgreSQL. Application queries written against it run on
    /// either backend; the queue matches the variant where the SQL differs (claims, notifications).
    #[derive(diesel::MultiConnection)]
    pub enum AnyConnection {
        /// An embedded SQLite database file.
        Sqlite(SqliteConnection),
        /// A PostgreSQL server.
        Postgres(PgConnection),
    }
}

impl std::fmt::Debug for AnyConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AnyConnection::Sqlite(_) => "AnyConnection::Sqlite",
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
            AnyConnection::Sqlite(_) => Backend::Sqlite,
            AnyConnection::Postgres(_) => Backend::Postgres,
        }
    }

    /// Run one or more SQL statements with no result.
    pub fn batch(&mut self, sql: &str) -> diesel::QueryResult<()> {
        match self {
            AnyConnection::Sqlite(c) => c.batch_execute(sql),
            AnyConnection::Postgres(c) => c.batch_execute(sql),
        }
    }
}

/// Run the same Diesel code on the concrete connection of either backend: `$c` is bound to a
/// `&mut SqliteConnection` or a `&mut PgConnection` and `$body` is compiled once for each.
macro_rules! with_backend {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::connection::AnyConnection::Sqlite($c) => $body,
            $crate::connection::AnyConnection::Postgres($c) => $body,
        }
    };
}
pub(crate) use with_backend;

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
