//! Progress a running job reports ([`Env::progress`](crate::Env::progress)): kept in memory,
//! and written to `queue_job_progress` by one thread per database per process, outside the
//! jobs' transactions (so it shows while a job runs, and stays when its transaction rolls back),
//! at most four times a second, the latest value of each job winning.
//!
//! A job's own transaction cannot carry it: nobody else sees it before the commit. On SQLite
//! the writer waits for the write lock like any writer: between batches it gets it at once; a
//! job run alone holds it for its whole run, so its progress lands when it ends.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::connection::Backend;
use crate::run::chain;
use crate::store::Store;

/// How far a job said it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all.
    pub total: u64,
    /// When the job said so.
    pub at: DateTime<Utc>,
}

impl Progress {
    /// `done / total`, between 0 and 1 (0 when `total` is 0).
    pub fn ratio(&self) -> f64 {
        if self.total == 0 { 0.0 } else { (self.done.min(self.total) as f64) / self.total as f64 }
    }
}

/// Least time between two writes.
const PAUSE: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
struct Shared {
    /// Reports not written yet, by job row id.
    waiting: HashMap<i64, Progress>,
    stop: bool,
}

/// The writer of one database: reports go in, a thread writes them.
#[derive(Debug)]
pub(crate) struct Writer {
    shared: Arc<(Mutex<Shared>, Condvar)>,
}

impl Writer {
    /// A writer for the database at `url`; its thread starts with the first report.
    pub(crate) fn start(url: String, backend: Backend) -> Writer {
        let shared: Arc<(Mutex<Shared>, Condvar)> = Arc::default();
        let theirs = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("queue-progress".into())
            .spawn(move || write_until_stopped(&theirs, &url, backend));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the thread that stores job progress");
        }
        Writer { shared }
    }

    /// Job `id` says it is at `progress`.
    pub(crate) fn report(&self, id: i64, progress: Progress) {
        let (lock, wake) = &*self.shared;
        lock.lock().unwrap_or_else(|p| p.into_inner()).waiting.insert(id, progress);
        wake.notify_one();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let (lock, wake) = &*self.shared;
        lock.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
        wake.notify_one();
    }
}

fn write_until_stopped(shared: &(Mutex<Shared>, Condvar), url: &str, backend: Backend) {
    let (lock, wake) = shared;
    let mut conn = None;
    loop {
        let batch: Vec<(i64, Progress)> = {
            let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
            while state.waiting.is_empty() && !state.stop {
                state = wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.waiting.is_empty() {
                return;
            }
            state.waiting.drain().collect()
        };
        if conn.is_none() {
            conn = crate::store::connect(url, backend)
                .map_err(|e| tracing::debug!(error = %chain(&e), "cannot store job progress now"))
                .ok();
        }
        let written = conn.as_mut().map(|c| c.job_progress_save(&batch));
        if !matches!(written, Some(Ok(()))) {
            if let Some(Err(e)) = written {
                tracing::debug!(error = %chain(&e), "cannot store job progress now");
            }
            conn = None;
            // Put back what no newer report replaced, for the next try.
            let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
            if state.stop {
                return;
            }
            for (id, progress) in batch {
                state.waiting.entry(id).or_insert(progress);
            }
        }
        std::thread::sleep(PAUSE);
    }
}
