//! The connection types an application may use with the queue: [`AnyConnection`] (one code base
//! on both backends), or the concrete `PgConnection` and `SqliteConnection` of an application
//! written for one backend, whose job bodies then use that backend's own Diesel features.

#[cfg(feature = "postgres")]
use diesel::pg::PgConnection;
#[cfg(feature = "sqlite")]
use diesel::sqlite::SqliteConnection;

use super::{AnyConnection, Backend};

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::AnyConnection {}
    #[cfg(feature = "postgres")]
    impl Sealed for super::PgConnection {}
    #[cfg(feature = "sqlite")]
    impl Sealed for super::SqliteConnection {}
}

/// A connection type the queue can queue jobs on and give to job bodies: [`AnyConnection`],
/// `PgConnection` or `SqliteConnection`.
///
/// A job method taking `env: &Env<PgConnection>` gets `&mut PgConnection` from `env.conn()`; a
/// worker on SQLite fails such a job with a message naming both. The application queues from its
/// own connection with [`crate::with_env`].
#[diagnostic::on_unimplemented(
    message = "the queue cannot give a job a `{Self}`",
    label = "not a connection type of the queue",
    note = "job environments are `Env` (AnyConnection), `Env<PgConnection>` or `Env<SqliteConnection>`"
)]
pub trait JobConnection: diesel::Connection + sealed::Sealed + 'static {
    /// The backends this type can be: both for `AnyConnection`, one for the others.
    const BACKENDS: &'static [Backend];

    /// The type's name, for messages.
    const NAME: &'static str;

    /// This type's view of a queue connection, when it is of this type.
    #[doc(hidden)]
    fn view(any: &mut AnyConnection) -> Option<&mut Self>;

    /// Run `f` with this connection seen as an [`AnyConnection`] (the type the queue's own
    /// statements run on); the connection is back in place when `f` returns or unwinds.
    #[doc(hidden)]
    fn lend<R>(&mut self, f: impl FnOnce(&mut AnyConnection) -> R) -> R;
}

impl JobConnection for AnyConnection {
    const BACKENDS: &'static [Backend] = &[Backend::Sqlite, Backend::Postgres];
    const NAME: &'static str = "AnyConnection";

    fn view(any: &mut AnyConnection) -> Option<&mut Self> {
        Some(any)
    }

    fn lend<R>(&mut self, f: impl FnOnce(&mut AnyConnection) -> R) -> R {
        f(self)
    }
}

#[cfg(feature = "postgres")]
impl JobConnection for PgConnection {
    const BACKENDS: &'static [Backend] = &[Backend::Postgres];
    const NAME: &'static str = "PgConnection";

    fn view(any: &mut AnyConnection) -> Option<&mut Self> {
        match any {
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(c) => Some(c),
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(_) => None,
        }
    }

    fn lend<R>(&mut self, f: impl FnOnce(&mut AnyConnection) -> R) -> R {
        lend_owned(
            self,
            AnyConnection::Postgres,
            |any| match any {
                #[cfg(feature = "postgres")]
                AnyConnection::Postgres(c) => Ok(c),
                #[allow(unreachable_patterns, reason = "the only variant without the other backend")]
                other => Err(other),
            },
            f,
        )
    }
}

#[cfg(feature = "sqlite")]
impl JobConnection for SqliteConnection {
    const BACKENDS: &'static [Backend] = &[Backend::Sqlite];
    const NAME: &'static str = "SqliteConnection";

    fn view(any: &mut AnyConnection) -> Option<&mut Self> {
        match any {
            #[cfg(feature = "sqlite")]
            AnyConnection::Sqlite(c) => Some(c),
            #[cfg(feature = "postgres")]
            AnyConnection::Postgres(_) => None,
        }
    }

    fn lend<R>(&mut self, f: impl FnOnce(&mut AnyConnection) -> R) -> R {
        lend_owned(
            self,
            AnyConnection::Sqlite,
            |any| match any {
                #[cfg(feature = "sqlite")]
                AnyConnection::Sqlite(c) => Ok(c),
                #[allow(unreachable_patterns, reason = "the only variant without the other backend")]
                other => Err(other),
            },
            f,
        )
    }
}

/// What [`crate::with_env`] accepts: a connection of a [`JobConnection`] type, or one taken
/// from an r2d2 pool of them (the application's `Pool<ConnectionManager<PgConnection>>` or the
/// queue's own pool).
pub trait AsJobConnection {
    /// The connection type jobs queued through it see.
    type Connection: JobConnection;

    /// The connection itself.
    fn as_job_connection(&mut self) -> &mut Self::Connection;
}

impl<C: JobConnection> AsJobConnection for C {
    type Connection = C;

    fn as_job_connection(&mut self) -> &mut C {
        self
    }
}

impl<C> AsJobConnection for diesel::r2d2::PooledConnection<diesel::r2d2::ConnectionManager<C>>
where
    C: JobConnection + diesel::r2d2::R2D2Connection,
{
    type Connection = C;

    fn as_job_connection(&mut self) -> &mut C {
        self
    }
}

impl AsJobConnection for crate::database::PooledConn {
    type Connection = AnyConnection;

    fn as_job_connection(&mut self) -> &mut AnyConnection {
        self
    }
}

/// Move the connection behind `slot` into an [`AnyConnection`] for the duration of `f`, and
/// back when `f` returns or unwinds.
///
/// Diesel connections are plain movable values (their server handles are pointers to the heap),
/// so the move changes nothing for the session.
fn lend_owned<C, R>(
    slot: &mut C,
    wrap: fn(C) -> AnyConnection,
    unwrap: fn(AnyConnection) -> Result<C, AnyConnection>,
    f: impl FnOnce(&mut AnyConnection) -> R,
) -> R {
    /// Writes the connection back into its slot, also while unwinding.
    struct Back<C> {
        slot: *mut C,
        any: Option<AnyConnection>,
        unwrap: fn(AnyConnection) -> Result<C, AnyConnection>,
    }
    impl<C> Drop for Back<C> {
        fn drop(&mut self) {
            match self.any.take().map(self.unwrap) {
                // SAFETY: `slot` was read out by `lend_owned` and nothing was written there
                // since (it is borrowed mutably for the whole call): this write refills it.
                Some(Ok(conn)) => unsafe { std::ptr::write(self.slot, conn) },
                // The queue never replaces the connection it is lent; if that ever happened, the
                // slot could not be refilled and the caller's `&mut` would point at a moved value.
                _ => {
                    eprintln!("queue: a lent connection was replaced by another kind; aborting");
                    std::process::abort()
                }
            }
        }
    }
    let slot: *mut C = slot;
    // SAFETY: `slot` comes from a `&mut C`, so it is valid and unique for this call. The value
    // is moved out here and written back by `Back::drop` before this function returns or
    // unwinds (nothing between this read and `Back`'s construction can panic), so the caller
    // never observes the slot empty and the connection is dropped exactly once.
    let owned = unsafe { std::ptr::read(slot) };
    let mut back = Back { slot, any: Some(wrap(owned)), unwrap };
    let Some(any) = back.any.as_mut() else { unreachable!("set just above") };
    f(any)
}
