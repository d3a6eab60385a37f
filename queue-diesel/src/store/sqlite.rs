//! SQLite: claims run under the single write lock (`BEGIN IMMEDIATE`), so no two workers can
//! take the same row. Ending a stuck run's session works on the connection in place: SQLite's
//! serialized threading mode lets another thread interrupt it, roll its transaction back (its
//! write lock is freed for every other writer at once) and make it refuse writes.

use diesel::prelude::*;
use diesel::sqlite::{Sqlite, SqliteConnection};
use libsqlite3_sys as ffi;

use super::Session;
use super::sql::{Prepared, Sql};
use crate::error::{Error, Result};

/// Run a statement built as text (prepared once per connection) and load its rows.
pub(super) fn load<T: QueryableByName<Sqlite> + 'static>(
    c: &mut SqliteConnection,
    sql: &Sql,
) -> QueryResult<Vec<T>> {
    Prepared(sql).load(c)
}

/// Apply the schema's pending steps under the write lock, taken at once: a second process
/// opening the same file waits, then finds nothing to do.
pub(super) fn schema_migrate(c: &mut SqliteConnection, on_step: super::schema::OnStep<'_>) -> Result<()> {
    c.immediate_transaction(|c| super::schema::migrate(c, crate::Backend::Sqlite, applied_steps, on_step))
}

fn applied_steps(c: &mut SqliteConnection) -> Result<Vec<String>> {
    let rows: Vec<super::rows::Version> = diesel::sql_query("SELECT version FROM queue_schema_migrations")
        .load(c)
        .map_err(Error::query("read the queue's schema version"))?;
    Ok(rows.into_iter().map(|r| r.version).collect())
}

thread_local! {
    /// The handle of the connection this thread opened last, noted by [`note_opened`].
    static OPENED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Called by SQLite for every connection the process opens (an automatic extension), on the
/// opening thread: notes its handle.
unsafe extern "C" fn note_opened(
    db: *mut ffi::sqlite3,
    _error: *mut *mut std::os::raw::c_char,
    _api: *const ffi::sqlite3_api_routines,
) -> std::os::raw::c_int {
    OPENED.with(|opened| opened.set(db as usize));
    ffi::SQLITE_OK
}

diesel::define_sql_function! {
    /// The address of this connection's SQLite handle, registered on each connection the queue
    /// opens, so that a worker can end the session of a run that hangs.
    fn queue_connection_handle() -> diesel::sql_types::BigInt;
}

/// Open a connection to `path`, able to tell its handle through [`session`].
pub(crate) fn establish(path: &str) -> diesel::ConnectionResult<SqliteConnection> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    // SAFETY: `note_opened` has the signature SQLite expects of an automatic extension and
    // touches nothing but a thread-local.
    HOOK.call_once(|| unsafe {
        ffi::sqlite3_auto_extension(Some(note_opened));
    });
    OPENED.with(|opened| opened.set(0));
    let conn = SqliteConnection::establish(path)?;
    let handle = OPENED.with(|opened| opened.replace(0)) as i64;
    queue_connection_handle_utils::register_nondeterministic_impl(&conn, move || handle)
        .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
    Ok(conn)
}

/// How long SQLite waits for another writer before giving up.
pub const SQLITE_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The session settings the queue needs: wait for the write lock, write-ahead log, foreign keys.
pub(super) fn configure(mut c: SqliteConnection) -> Result<SqliteConnection> {
    diesel::connection::SimpleConnection::batch_execute(
        &mut c,
        &format!(
            "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
            SQLITE_BUSY_TIMEOUT.as_millis()
        ),
    )
    .map_err(Error::query("configure the SQLite connection"))?;
    Ok(c)
}

pub(super) fn session(c: &mut SqliteConnection) -> Result<Session> {
    let handle: i64 = diesel::select(queue_connection_handle())
        .get_result(c)
        .map_err(Error::query("read the connection's handle"))?;
    match usize::try_from(handle) {
        Ok(handle) if handle != 0 => Ok(Session::Sqlite(handle)),
        _ => Err(Error::Config("the SQLite connection did not note its handle when it opened".into())),
    }
}

/// Run `sql` on a raw handle; `false` when SQLite refused it.
///
/// # Safety
/// `db` must be an open connection.
unsafe fn exec(db: *mut ffi::sqlite3, sql: &std::ffi::CStr) -> bool {
    // SAFETY: the caller keeps `db` open; SQLite's serialized mode orders this call with those
    // of the thread that owns the connection.
    unsafe {
        ffi::sqlite3_exec(db, sql.as_ptr(), None, std::ptr::null_mut(), std::ptr::null_mut())
            == ffi::SQLITE_OK
    }
}

/// End the session of the connection whose handle is `handle`, from another thread: interrupt
/// its statement, make it refuse writes, roll its transaction back. The connection must not be
/// used for anything but being dropped afterwards.
///
/// The caller guarantees the connection is still open (a run's control keeps its owner from
/// closing it until this returns).
pub(super) fn session_end(handle: usize) -> Result<()> {
    let db = handle as *mut ffi::sqlite3;
    // SAFETY: the caller keeps the connection open for the duration of this call (see above).
    unsafe {
        if ffi::sqlite3_db_mutex(db).is_null() {
            return Err(Error::Config(
                "this SQLite connection is not in serialized threading mode: its session cannot be ended from another thread".into(),
            ));
        }
        ffi::sqlite3_interrupt(db);
        if !exec(db, c"PRAGMA query_only = 1") {
            return Err(Error::Config("SQLite refused to make a stuck connection read-only".into()));
        }
        if ffi::sqlite3_get_autocommit(db) == 0 && !exec(db, c"ROLLBACK") {
            return Err(Error::Config("SQLite refused to roll back a stuck connection's transaction".into()));
        }
    }
    Ok(())
}
