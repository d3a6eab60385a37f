//! SQLite: a watcher that reads `PRAGMA data_version`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{MAX_BACKOFF, nap};

/// How often the SQLite watcher reads `PRAGMA data_version`.
pub const WATCH_TICK: Duration = Duration::from_millis(2);

/// Start a thread that calls `wake` whenever another connection commits to the SQLite database
/// at `path`, until `stop`. The worker's own commits wake it too: telling them apart is not
/// reliable (one read may see an own commit and a foreign one together), and an extra wake-up
/// costs one claim at most.
pub(super) fn spawn_watcher<E: Send + 'static>(
    path: String,
    events: Sender<E>,
    wake: fn() -> E,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Version {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        data_version: i64,
    }
    std::thread::Builder::new().name("queue-watch".into()).spawn(move || {
        let mut conn: Option<diesel::SqliteConnection> = None;
        let mut last = None;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(WATCH_TICK);
            if conn.is_none() {
                match diesel::SqliteConnection::establish(&path) {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch the database for new jobs; polling only");
                        nap(MAX_BACKOFF, &stop);
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            match diesel::sql_query("PRAGMA data_version").get_result::<Version>(c) {
                Ok(Version { data_version }) => {
                    let changed = last.is_some_and(|v| v != data_version);
                    if changed && events.send(wake()).is_err() {
                        return;
                    }
                    last = Some(data_version);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the database's version; reconnecting");
                    conn = None;
                    last = None;
                }
            }
        }
    })
}
