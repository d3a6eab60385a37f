//! What a running unit of work (a batch, or a job run alone) shares with whoever watches it: the
//! worker's dispatcher, or the watchdog of a run outside a worker. The run ends exactly once:
//! its executor finishes it, or the watcher gives up on it (its timeout passed, it hung, the
//! worker is stopping past its grace period) and ends its database session.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::connection::AnyConnection;
use crate::error::Result;
use crate::store::{Session, Store};

/// Why a watcher gave up on a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GaveUp {
    /// The job passed its function's timeout.
    TimedOut,
    /// The worker is stopping and the grace period is over: the work is given back.
    Abandoned,
    /// A job ran past the hang limit.
    Hung,
}

const RUNNING: u8 = 0;
const FINISHED: u8 = 1;
const TIMED_OUT: u8 = 2;
const ABANDONED: u8 = 3;
const HUNG: u8 = 4;

/// Shared by a running unit of work and its watcher.
#[derive(Debug)]
pub(crate) struct JobControl {
    /// `RUNNING`, `FINISHED`, or why the watcher gave up.
    state: AtomicU8,
    /// How to end the session the work runs in; held while the watcher ends it, so the
    /// executor cannot close the connection meanwhile.
    session: Mutex<Option<Session>>,
    /// The job running now in a batch (0: none), its tries before this run, and when it
    /// started (milliseconds since `born`).
    current: AtomicI64,
    current_attempts: AtomicI32,
    current_since: AtomicU64,
    born: Instant,
    /// The worker is stopping: start no new job, commit what is done.
    winding_down: AtomicBool,
}

impl Default for JobControl {
    fn default() -> Self {
        JobControl {
            state: AtomicU8::new(RUNNING),
            session: Mutex::new(None),
            current: AtomicI64::new(0),
            current_attempts: AtomicI32::new(0),
            current_since: AtomicU64::new(0),
            born: Instant::now(),
            winding_down: AtomicBool::new(false),
        }
    }
}

impl JobControl {
    /// Give up on the run, unless it has finished or was given up already: true when this call
    /// did. The body sees it through `Env::is_cancelled`.
    pub(crate) fn give_up(&self, why: GaveUp) -> bool {
        let to = match why {
            GaveUp::TimedOut => TIMED_OUT,
            GaveUp::Abandoned => ABANDONED,
            GaveUp::Hung => HUNG,
        };
        self.state.compare_exchange(RUNNING, to, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// Mark the run finished by its executor, unless the watcher gave up on it first: true when
    /// it had not.
    pub(crate) fn finish(&self) -> bool {
        self.state.compare_exchange(RUNNING, FINISHED, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// Why the watcher gave up on the run, if it did.
    pub(crate) fn gave_up(&self) -> Option<GaveUp> {
        match self.state.load(Ordering::SeqCst) {
            TIMED_OUT => Some(GaveUp::TimedOut),
            ABANDONED => Some(GaveUp::Abandoned),
            HUNG => Some(GaveUp::Hung),
            _ => None,
        }
    }

    /// True once the watcher gave up on the run.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.gave_up().is_some()
    }

    /// The work runs on a connection whose session is `session`.
    pub(crate) fn attach(&self, session: Option<Session>) {
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = session;
    }

    /// The work no longer runs on that connection (waits while a watcher ends its session).
    pub(crate) fn detach(&self) {
        self.attach(None);
    }

    /// End the run's session from `other`, another connection of the same database: its
    /// statement stops, its transaction rolls back, its locks are freed. False when no session
    /// is attached.
    pub(crate) fn end_session(&self, other: &mut AnyConnection) -> Result<bool> {
        let session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        match *session {
            Some(s) => other.session_end(s).map(|()| true),
            None => Ok(false),
        }
    }

    /// Job `id` (with `attempts` tries before this run) starts in a batch.
    pub(crate) fn set_current(&self, id: i64, attempts: i32) {
        let since = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.current_attempts.store(attempts, Ordering::SeqCst);
        self.current_since.store(since, Ordering::SeqCst);
        self.current.store(id, Ordering::SeqCst);
    }

    /// No job of the batch is running.
    pub(crate) fn clear_current(&self) {
        self.current.store(0, Ordering::SeqCst);
    }

    /// The job running now in a batch: its id, its tries before this run, how long it has run.
    pub(crate) fn current(&self) -> Option<(i64, i32, Duration)> {
        let id = self.current.load(Ordering::SeqCst);
        (id != 0).then(|| {
            let since = Duration::from_millis(self.current_since.load(Ordering::SeqCst));
            (id, self.current_attempts.load(Ordering::SeqCst), self.born.elapsed().saturating_sub(since))
        })
    }

    /// Ask the work to start no new job and commit what it has done.
    pub(crate) fn wind_down(&self) {
        self.winding_down.store(true, Ordering::SeqCst);
    }

    /// True once [`JobControl::wind_down`] was called.
    pub(crate) fn winding_down(&self) -> bool {
        self.winding_down.load(Ordering::SeqCst)
    }
}
