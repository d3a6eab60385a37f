//! PostgreSQL: a connection of its own that `LISTEN`s, through libpq directly (Diesel has no
//! notifications), reconnecting with backoff.

use std::ffi::{CStr, CString};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pq_sys as pq;

use super::{MAX_BACKOFF, STOP_CHECK, nap};
use crate::database::redact;
use crate::store::NOTIFY_CHANNEL;

/// Longest the listener blocks before it looks at its stop flag.
/// How often the listener checks that its connection is alive when nothing arrives.
const LISTEN_PING: Duration = Duration::from_secs(10);

/// Start a thread that calls `wake` each time a job is queued (at its commit), until `stop`.
pub(super) fn spawn_listener<E: Send + 'static>(
    url: String,
    events: Sender<E>,
    wake: fn() -> E,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("queue-listen".into()).spawn(move || {
        let mut backoff = Duration::from_millis(100);
        while !stop.load(Ordering::Relaxed) {
            match Listener::connect(&url) {
                Ok(mut conn) => {
                    backoff = Duration::from_millis(100);
                    // Jobs may have been queued while we were not listening.
                    if events.send(wake()).is_err() {
                        return;
                    }
                    if let Err(e) = conn.pump(&events, wake, &stop) {
                        tracing::warn!(error = %e, "listener connection lost; reconnecting");
                    }
                }
                Err(e) => {
                    tracing::warn!(url = %redact(&url), error = %e, retry_in = ?backoff, "cannot listen for new jobs");
                    nap(backoff, &stop);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    })
}

/// libpq settings that keep the listener from blocking for long on a server that vanished
/// without closing the connection (which would also delay a worker's shutdown): a connect
/// timeout, and TCP keepalives that give up on a silent peer within about a minute. Settings the
/// URL already names are left alone.
const LISTENER_OPTIONS: [(&str, &str); 5] = [
    ("connect_timeout", "10"),
    ("keepalives", "1"),
    ("keepalives_idle", "30"),
    ("keepalives_interval", "10"),
    ("keepalives_count", "3"),
];

/// `url` with [`LISTENER_OPTIONS`] added (URI or `key=value` form).
fn bounded(url: &str) -> String {
    let uri = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let mut out = url.to_owned();
    for (key, value) in LISTENER_OPTIONS {
        if url.contains(&format!("{key}=")) {
            continue;
        }
        if uri {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str(&format!("{key}={value}"));
        } else {
            out.push_str(&format!(" {key}={value}"));
        }
    }
    out
}

/// A libpq connection that has run `LISTEN`, closed on drop.
struct Listener {
    conn: *mut pq::PGconn,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // SAFETY: `conn` came from PQconnectdb and is finished exactly once, here.
        unsafe { pq::PQfinish(self.conn) }
    }
}

impl Listener {
    fn connect(url: &str) -> Result<Listener, String> {
        let info =
            CString::new(bounded(url)).map_err(|_| "the database URL contains a NUL byte".to_owned())?;
        // SAFETY: `info` is a valid C string; the result is owned by the `Listener` (even on
        // failure, libpq returns a connection object to finish).
        let conn = unsafe { pq::PQconnectdb(info.as_ptr()) };
        if conn.is_null() {
            return Err("libpq could not allocate a connection".into());
        }
        let listener = Listener { conn };
        // SAFETY: `conn` is a live connection object.
        if unsafe { pq::PQstatus(conn) } != pq::ConnStatusType::CONNECTION_OK {
            return Err(listener.error());
        }
        listener.exec(&format!("LISTEN {NOTIFY_CHANNEL}"))?;
        Ok(listener)
    }

    /// libpq's last error message.
    fn error(&self) -> String {
        // SAFETY: PQerrorMessage returns a C string owned by the connection, valid until the
        // next call on it; it is copied at once.
        unsafe { CStr::from_ptr(pq::PQerrorMessage(self.conn)) }.to_string_lossy().trim().to_owned()
    }

    /// Run a statement that returns no rows.
    fn exec(&self, sql: &str) -> Result<(), String> {
        let sql = CString::new(sql).map_err(|_| "statement contains a NUL byte".to_owned())?;
        // SAFETY: live connection, valid C string; the result is cleared before returning.
        unsafe {
            let result = pq::PQexec(self.conn, sql.as_ptr());
            let status = pq::PQresultStatus(result);
            pq::PQclear(result);
            if matches!(status, pq::ExecStatusType::PGRES_COMMAND_OK | pq::ExecStatusType::PGRES_TUPLES_OK) {
                Ok(())
            } else {
                Err(self.error())
            }
        }
    }

    /// Read what arrived on the socket; true when at least one notification came.
    fn drain(&self) -> Result<bool, String> {
        let mut any = false;
        // SAFETY: live connection; each notification is freed with PQfreemem as libpq requires.
        unsafe {
            if pq::PQconsumeInput(self.conn) == 0 {
                return Err(self.error());
            }
            loop {
                let notification = pq::PQnotifies(self.conn);
                if notification.is_null() {
                    break;
                }
                pq::PQfreemem(notification.cast());
                any = true;
            }
        }
        Ok(any)
    }

    /// Block until the socket is readable or `timeout` passes; true when readable.
    fn wait(&self, timeout: Duration) -> Result<bool, String> {
        // SAFETY: live connection.
        let fd = unsafe { pq::PQsocket(self.conn) };
        if fd < 0 {
            return Err("the listener connection has no socket".into());
        }
        let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        match ready {
            0 => Ok(false),
            n if n > 0 => Ok(true),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted { Ok(false) } else { Err(e.to_string()) }
            }
        }
    }

    /// Forward notifications until the connection fails or `stop` is set.
    fn pump<E>(&mut self, events: &Sender<E>, wake: fn() -> E, stop: &AtomicBool) -> Result<(), String> {
        let mut last_heard = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if self.wait(STOP_CHECK)? {
                last_heard = Instant::now();
                if self.drain()? && events.send(wake()).is_err() {
                    return Ok(());
                }
            } else if last_heard.elapsed() >= LISTEN_PING {
                // A dead server may never make the socket readable: ask it something.
                self.exec("SELECT 1")?;
                last_heard = Instant::now();
                // Notifications that came with the answer.
                if self.drain()? && events.send(wake()).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

// SAFETY: a `Listener` is used by one thread at a time (it is moved into the listener thread);
// libpq connections may move between threads.
unsafe impl Send for Listener {}

#[cfg(test)]
mod tests {
    use super::bounded;

    #[test]
    fn the_listener_bounds_its_waits_without_overriding_the_url() {
        let url = bounded("postgres://u@h/db");
        assert!(url.starts_with("postgres://u@h/db?connect_timeout=10&keepalives=1&"), "{url}");
        let url = bounded("postgres://u@h/db?sslmode=disable&connect_timeout=3");
        assert!(url.contains("connect_timeout=3") && !url.contains("connect_timeout=10"), "{url}");
        assert!(url.contains("&keepalives_idle=30"), "{url}");
        let url = bounded("host=h dbname=db");
        assert!(url.starts_with("host=h dbname=db connect_timeout=10 keepalives=1"), "{url}");
    }
}
