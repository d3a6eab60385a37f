//! What a running unit of work (a batch, or a job run alone) shares with whoever watches it: the
//! worker's dispatcher, or the watchdog of a run outside a worker. The run ends exactly once:
//! its executor finishes it, or the watcher gives up on it (its timeout passed, it hung, the
//! worker is stopping past its grace period) and ends its database session.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
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
/// The job a batch is running.
#[derive(Debug, Clone, Copy)]
struct Current {
    id: i64,
    attempts: i32,
    since: Instant,
    generation: u64,
}

/// What a watcher sees of the job a batch is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Running {
    /// The job's row id.
    pub id: i64,
    /// Its tries before this run.
    pub attempts: i32,
    /// How long it has run.
    pub ran: Duration,
    /// Which job it is, for [`JobControl::give_up_hung`].
    pub generation: u64,
}

#[derive(Debug)]
pub(crate) struct JobControl {
    /// `RUNNING`, `FINISHED`, or why the watcher gave up.
    state: AtomicU8,
    /// How to end the session the work runs in; held while the watcher ends it, so the
    /// executor cannot close the connection meanwhile.
    session: Mutex<Option<Session>>,
    /// The job running now in a batch, if one is.
    current: Mutex<Option<Current>>,
    /// Counts the jobs set current, so that a watcher gives up only on the job it saw hang.
    generation: std::sync::atomic::AtomicU64,
    /// The liveness slot the work records its batch jobs in.
    slot: Mutex<Option<std::sync::Arc<crate::liveness::Slot>>>,
    /// The worker is stopping: start no new job, commit what is done.
    winding_down: AtomicBool,
}

impl Default for JobControl {
    fn default() -> Self {
        JobControl {
            state: AtomicU8::new(RUNNING),
            session: Mutex::new(None),
            current: Mutex::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
            slot: Mutex::new(None),
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

    /// The work records its batch jobs in `slot` of its worker's liveness record (so that the
    /// watcher can clear it when it settles a hung job itself).
    pub(crate) fn attach_slot(&self, slot: Option<std::sync::Arc<crate::liveness::Slot>>) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = slot;
    }

    /// Clear the record of the job the work runs (the watcher settled it).
    pub(crate) fn clear_slot(&self) {
        if let Some(slot) = self.slot.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            slot.clear();
        }
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
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Current { id, attempts, since: Instant::now(), generation });
    }

    /// No job of the batch is running.
    pub(crate) fn clear_current(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The job running now in a batch.
    pub(crate) fn current(&self) -> Option<Running> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).map(|c| Running {
            id: c.id,
            attempts: c.attempts,
            ran: c.since.elapsed(),
            generation: c.generation,
        })
    }

    /// Give up on the batch because its job `generation` hung, only if that job is still the
    /// one running (not finished, and the batch not committing): true when this call did.
    pub(crate) fn give_up_hung(&self, generation: u64) -> bool {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.is_some_and(|c| c.generation == generation) && self.give_up(GaveUp::Hung)
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
