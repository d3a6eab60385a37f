//! Wake-ups: a PostgreSQL `LISTEN` connection polled on a short timer, so an idle worker starts
//! a new job within milliseconds of its commit. Every backend also polls the table (the fallback
//! when a notification is lost or the backend has none).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use diesel::pg::PgConnection;
use diesel::prelude::*;

use crate::database::redact;
use crate::store::NOTIFY_CHANNEL;

/// How often the listener reads its socket. Each read is a non-blocking `recv`, no query.
pub const LISTEN_TICK: Duration = Duration::from_millis(2);
/// How often the listener checks that its connection is alive.
const LISTEN_PING: Duration = Duration::from_secs(10);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Start a thread that calls `wake` each time a job is queued (at its commit), until `stop`.
pub(crate) fn spawn_listener<E: Send + 'static>(
    url: String,
    events: Sender<E>,
    wake: fn() -> E,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("queue-listen".into()).spawn(move || {
        let mut backoff = Duration::from_millis(100);
        while !stop.load(Ordering::Relaxed) {
            match listen(&url) {
                Ok(mut conn) => {
                    backoff = Duration::from_millis(100);
                    // Jobs may have been queued while we were not listening.
                    if events.send(wake()).is_err() {
                        return;
                    }
                    if let Err(e) = pump(&mut conn, &events, wake, &stop) {
                        tracing::warn!(error = %e, "listener connection lost; reconnecting");
                    }
                }
                Err(e) => {
                    tracing::warn!(url = %redact(&url), error = %e, retry_in = ?backoff, "cannot listen for new jobs");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    })
}

fn listen(url: &str) -> Result<PgConnection, Box<dyn std::error::Error>> {
    let mut conn = PgConnection::establish(url)?;
    diesel::sql_query(format!("LISTEN {NOTIFY_CHANNEL}")).execute(&mut conn)?;
    Ok(conn)
}

/// Forward notifications until the connection fails or `stop` is set.
fn pump<E>(
    conn: &mut PgConnection,
    events: &Sender<E>,
    wake: fn() -> E,
    stop: &AtomicBool,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut last_ping = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut woke = false;
        for notification in conn.notifications_iter() {
            notification?;
            woke = true;
        }
        if woke && events.send(wake()).is_err() {
            return Ok(());
        }
        if last_ping.elapsed() >= LISTEN_PING {
            diesel::sql_query("SELECT 1").execute(conn)?;
            last_ping = Instant::now();
        }
        std::thread::sleep(LISTEN_TICK);
    }
    Ok(())
}
