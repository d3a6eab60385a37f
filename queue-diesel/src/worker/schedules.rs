//! The worker's schedule thread: queues the jobs of the binary's periodic schedules as their
//! ticks come (see [`crate::maintenance::schedules`]).

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::database::Database;
use crate::error::{Error, Result};
use crate::maintenance::schedules::Scheduler;

/// Longest sleep between passes: a clock that jumps (or a test's mock clock) is noticed within it.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// The running schedule thread, until [`Ticking::stop`].
pub(super) struct Ticking {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl Ticking {
    /// Start the thread, unless the binary has no schedule.
    pub(super) fn start(db: &Database) -> Result<Option<Ticking>> {
        let mut scheduler = Scheduler::new(db.clone())?;
        if scheduler.is_empty() {
            return Ok(None);
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("queue-schedules".into())
            .spawn(move || {
                loop {
                    scheduler.pass();
                    match stopped.recv_timeout(scheduler.wait(MAX_SLEEP)) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            })
            .map_err(|source| Error::Io { what: "failed to start the schedule thread", source })?;
        Ok(Some(Ticking { stop, thread }))
    }

    /// Tell the thread to stop; the handle returned waits for its pass in progress to end.
    /// Joined only after the worker's running jobs are dealt with: on SQLite a pass waits for
    /// the write lock a running batch holds, and must not hold up the grace period.
    pub(super) fn stop(self) -> JoinHandle<()> {
        drop(self.stop);
        self.thread
    }
}
