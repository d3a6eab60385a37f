//! SQLite: a watcher that reads `PRAGMA data_version`, woken by the kernel when the database's
//! write-ahead log is written (Linux: inotify), and every few milliseconds anyway.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{MAX_BACKOFF, nap};

/// How often the SQLite watcher reads `PRAGMA data_version` when nothing woke it.
pub const WATCH_TICK: Duration = Duration::from_millis(2);

/// After a write to the log, how many times (50 µs apart) the version is read again while it
/// has not changed: the frames are written a moment before the commit is visible.
const SETTLE_READS: u32 = 20;

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
    fn version(c: &mut diesel::SqliteConnection) -> QueryResult<i64> {
        diesel::sql_query("PRAGMA data_version").get_result::<Version>(c).map(|v| v.data_version)
    }
    std::thread::Builder::new().name("queue-watch".into()).spawn(move || {
        let mut conn: Option<diesel::SqliteConnection> = None;
        let mut log: Option<LogWatch> = None;
        let mut last = None;
        while !stop.load(Ordering::Relaxed) {
            let written = match &log {
                Some(watch) => watch.wait(WATCH_TICK),
                None => {
                    std::thread::sleep(WATCH_TICK);
                    false
                }
            };
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
            // The log exists once a connection has opened the database in WAL mode.
            if log.as_ref().is_none_or(LogWatch::lost) {
                log = LogWatch::open(&format!("{path}-wal"));
            }
            let mut read = version(c);
            let mut settle = if written { SETTLE_READS } else { 0 };
            while settle > 0 && matches!((&read, last), (Ok(v), Some(l)) if *v == l) {
                std::thread::sleep(Duration::from_micros(50));
                read = version(c);
                settle -= 1;
            }
            match read {
                Ok(data_version) => {
                    let changed = last.is_some_and(|v| v != data_version);
                    if changed && events.send(wake()).is_err() {
                        return;
                    }
                    last = Some(data_version);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the database's version; reconnecting");
                    conn = None;
                    log = None;
                    last = None;
                }
            }
        }
    })
}

/// A kernel watch on the write-ahead log file: every commit writes to it.
#[cfg(target_os = "linux")]
struct LogWatch {
    fd: libc::c_int,
    lost: std::cell::Cell<bool>,
}

#[cfg(target_os = "linux")]
impl LogWatch {
    /// Watch `file` for writes; `None` when it cannot be watched (then the tick alone serves).
    fn open(file: &str) -> Option<LogWatch> {
        let name = std::ffi::CString::new(file).ok()?;
        // SAFETY: plain system calls; the descriptor is owned by the `LogWatch`, closed on drop.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            if fd < 0 {
                return None;
            }
            let watch = LogWatch { fd, lost: std::cell::Cell::new(false) };
            let mask = libc::IN_MODIFY | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF;
            if libc::inotify_add_watch(fd, name.as_ptr(), mask) < 0 {
                return None;
            }
            Some(watch)
        }
    }

    /// Wait up to `timeout` for a write; true when one came. Drains the events.
    fn wait(&self, timeout: Duration) -> bool {
        let mut poll = libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 };
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut poll, 1, millis) } <= 0 {
            return false;
        }
        let mut buffer = [0u8; 4096];
        let mut written = false;
        loop {
            // SAFETY: reads into a buffer of the given length.
            let n = unsafe { libc::read(self.fd, buffer.as_mut_ptr().cast(), buffer.len()) };
            let Ok(n) = usize::try_from(n) else { break };
            if n == 0 {
                break;
            }
            let mut at = 0;
            while at + std::mem::size_of::<libc::inotify_event>() <= n {
                // SAFETY: the kernel wrote whole events; read_unaligned copes with the buffer's
                // alignment.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buffer.as_ptr().add(at).cast()) };
                if event.mask & libc::IN_MODIFY != 0 {
                    written = true;
                }
                if event.mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_IGNORED) != 0 {
                    self.lost.set(true);
                }
                at += std::mem::size_of::<libc::inotify_event>() + event.len as usize;
            }
        }
        written
    }

    /// True once the watched file was deleted or moved: watch the new one.
    fn lost(&self) -> bool {
        self.lost.get()
    }
}

#[cfg(target_os = "linux")]
impl Drop for LogWatch {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned and closed once.
        unsafe { libc::close(self.fd) };
    }
}

/// Elsewhere the tick alone serves.
#[cfg(not(target_os = "linux"))]
struct LogWatch;

#[cfg(not(target_os = "linux"))]
impl LogWatch {
    fn open(_file: &str) -> Option<LogWatch> {
        None
    }

    fn wait(&self, timeout: Duration) -> bool {
        std::thread::sleep(timeout);
        false
    }

    fn lost(&self) -> bool {
        true
    }
}
