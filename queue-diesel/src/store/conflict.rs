//! Database errors that come from concurrency, not from the job that met them: a deadlock, a
//! serialization failure, a lock that could not be had, a session the server ended. A job that
//! meets one runs again without being blamed. PostgreSQL errors are told apart by SQLSTATE (their
//! message text depends on the server's `lc_messages`); SQLite's messages are never translated.

use diesel::result::{DatabaseErrorKind, Error as DieselError};

#[cfg(feature = "postgres")]
use super::postgres;

/// A database error caused by other sessions or by the server, not by the job that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Conflict {
    /// Two transactions waited for each other and the database ended one (SQLSTATE 40P01).
    Deadlock,
    /// A serializable or repeatable-read transaction lost to a concurrent one (40001).
    SerializationFailure,
    /// A lock could not be had in time (`lock_timeout`, `NOWAIT`; 55P03).
    LockNotAvailable,
    /// The transaction was aborted by an earlier statement (25P02).
    AbortedTransaction,
    /// SQLite: another connection holds the lock the statement needs (`SQLITE_BUSY`,
    /// `SQLITE_LOCKED`).
    Busy,
    /// The session was ended or lost: the server shut down, an operator or a timeout ended it,
    /// the connection broke (57P01, 57P02, 25P03, 57P05, a closed connection).
    SessionLost,
}

impl Conflict {
    /// The conflict `error` or one of its causes is, if any: looks for a `diesel::result::Error`
    /// along the chain of sources.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Option<Conflict> {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(diesel) = e.downcast_ref::<DieselError>() {
                return Conflict::of_diesel(diesel);
            }
            current = e.source();
        }
        None
    }

    /// The conflict a Diesel error is, if any.
    pub fn of_diesel(error: &DieselError) -> Option<Conflict> {
        match error {
            DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => {
                Some(Conflict::SerializationFailure)
            }
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => Some(Conflict::SessionLost),
            DieselError::DatabaseError(_, info) => match code_of(info.as_ref()).as_deref() {
                Some("40P01") => Some(Conflict::Deadlock),
                Some("40001") => Some(Conflict::SerializationFailure),
                Some("55P03") => Some(Conflict::LockNotAvailable),
                Some("25P02") => Some(Conflict::AbortedTransaction),
                Some("57P01" | "57P02" | "57P03" | "25P03" | "57P05") => Some(Conflict::SessionLost),
                Some(_) => None,
                // Not a PostgreSQL error: SQLite's messages are fixed English text.
                None if info.message().contains("database is locked")
                    || info.message().contains("database table is locked") =>
                {
                    Some(Conflict::Busy)
                }
                None => None,
            },
            DieselError::BrokenTransactionManager => Some(Conflict::SessionLost),
            _ => None,
        }
    }

    /// A short description, stored on the job that met the conflict.
    pub fn describe(self) -> &'static str {
        match self {
            Conflict::Deadlock => "a deadlock with another transaction",
            Conflict::SerializationFailure => "a serialization failure against a concurrent transaction",
            Conflict::LockNotAvailable => "a lock that could not be had in time",
            Conflict::AbortedTransaction => "a transaction aborted by an earlier statement",
            Conflict::Busy => "the database was locked by another connection",
            Conflict::SessionLost => "its database session was ended or lost",
        }
    }
}

/// The SQLSTATE of a PostgreSQL error that Diesel returned, e.g. `"40P01"` for a deadlock;
/// `None` for an error of another backend, or one whose code could not be read.
pub fn sqlstate(error: &DieselError) -> Option<String> {
    match error {
        DieselError::DatabaseError(_, info) => code_of(info.as_ref()),
        _ => None,
    }
}

/// The SQLSTATE in an error's details, when the error is PostgreSQL's.
fn code_of(info: &(dyn diesel::result::DatabaseErrorInformation + Send + Sync + 'static)) -> Option<String> {
    #[cfg(feature = "postgres")]
    return postgres::sqlstate(info);
    #[cfg(not(feature = "postgres"))]
    {
        let _ = info;
        None
    }
}
