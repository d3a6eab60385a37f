//! Wake-ups: a PostgreSQL `LISTEN` connection whose socket the listener thread blocks on, so an
//! idle worker hears of a job the moment its transaction commits. Every backend also polls the
//! table (the fallback when a notification is lost or the backend has none).
//!
//! Diesel's connection does not expose its socket, so the listener holds a libpq connection of
//! its own.
//!
//! SQLite has no notifications; a watcher reads `PRAGMA data_version` every couple of
//! milliseconds instead (it changes when another connection commits, and reading it costs no
//! I/O), so a job queued by another process wakes an idle worker just as fast.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::database::Database;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

/// Longest a watcher blocks before it looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Sleep `total`, or less once `stop` is set.
fn nap(total: Duration, stop: &AtomicBool) {
    let until = Instant::now() + total;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(STOP_CHECK));
    }
}

/// Start the thread that calls `wake` when another connection queues a job in `db`, until
/// `stop`: a `LISTEN` on PostgreSQL, a watch of the file's version on SQLite.
pub(crate) fn spawn<E: Send + 'static>(
    db: &Database,
    events: Sender<E>,
    wake: fn() -> E,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    match db.sqlite_path() {
        #[cfg(feature = "sqlite")]
        Some(path) => sqlite::spawn_watcher(path, events, wake, stop),
        #[cfg(feature = "postgres")]
        None => postgres::spawn_listener(db.raw_url(), events, wake, stop),
        #[allow(unreachable_patterns, reason = "reached when a backend's feature is off")]
        _ => Err(std::io::Error::other("no notifications for this backend in this build")),
    }
}
