//! Watching running work: timeouts, hangs, jobs whose outcome could not be stored, rescues, and
//! the graceful stop.

use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use queue_core::Ending;

use super::Worker;
use super::dispatch::Dispatch;
use super::executors::Event;
use crate::error::Result;
use crate::function::registry;
use crate::maintenance::Rescuer;
use crate::run::alone::give_up;
use crate::run::control::Running;
use crate::run::{GaveUp, chain, timeout_verdict};
use crate::store::{Store, Views};

impl Worker {
    /// How long the dispatcher may wait before it must look at its running work again.
    pub(super) fn watch_interval(&self, state: &Dispatch) -> Duration {
        let now = Instant::now();
        let deadline = state.in_flight.values().filter_map(|f| f.deadline.map(|(at, _)| at)).min();
        let mut wait = deadline.map_or(Duration::MAX, |at| at.saturating_duration_since(now));
        if state.in_flight.values().any(|f| f.leased.is_none()) {
            wait = wait.min((self.config.hang_limit / 4).max(Duration::from_millis(10)));
        }
        wait
    }

    /// Give up on runs past their timeout, jobs run alone that hold a single writer's lock past
    /// the hang limit, and batches whose current job passed the hang limit.
    pub(super) fn watch(&self, state: &mut Dispatch) -> Result<()> {
        let now = Instant::now();
        let due: Vec<(u64, GaveUp, Option<Running>)> = state
            .in_flight
            .iter()
            .filter_map(|(key, f)| match (f.deadline, f.control.current()) {
                (Some((at, why)), _) if at <= now => Some((*key, why, None)),
                (None, Some(running)) if f.leased.is_none() && running.ran >= self.config.hang_limit => {
                    Some((*key, GaveUp::Hung, Some(running)))
                }
                _ => None,
            })
            .collect();
        for (key, why, hung) in due {
            self.give_up_on(state, key, why, hung)?;
        }
        Ok(())
    }

    /// Give up on a unit of work: end its session, settle its job, free its slot, and start an
    /// executor thread in place of the one still stuck in the body. For a batch, `hung` is the
    /// job seen hanging: nothing is done unless it is still the one running.
    fn give_up_on(&self, state: &mut Dispatch, key: u64, why: GaveUp, hung: Option<Running>) -> Result<()> {
        // The executor may have finished it (or, in a batch, moved on) in the meantime.
        let gave_up = state.in_flight.get(&key).is_some_and(|f| match hung {
            Some(running) => f.control.give_up_hung(running.generation),
            None => f.control.give_up(why),
        });
        if !gave_up {
            return Ok(());
        }
        let Some(unit) = state.in_flight.remove(&key) else { return Ok(()) };
        if state.exclusive == Some(key) {
            state.exclusive = None;
        }
        state.load.finish(&unit.node);
        state.slots.release_job(&unit.node, unit.slots, unit.slots_session);
        let limit = self.config.hang_limit;
        let (id, func, lease, ending) = match (&unit.leased, why) {
            (Some((row, lease)), GaveUp::TimedOut) => {
                state.stats.timed_out += 1;
                let function = registry()?.get(&row.func);
                let verdict = function.map_or_else(
                    || queue_core::JobError::failed("TimeoutError", "timed out"),
                    timeout_verdict,
                );
                (row.id, row.func.clone(), Some(Arc::clone(lease)), Ending::Returned(Err(verdict)))
            }
            (Some((row, lease)), _) => {
                let message =
                    format!("it held the database's only write lock past the hang limit of {limit:?}");
                (row.id, row.func.clone(), Some(Arc::clone(lease)), Ending::Hung { message })
            }
            (None, _) => {
                let books = state.batches.entry(unit.node.clone()).or_default();
                books.running = books.running.saturating_sub(1);
                // Its other jobs are `pending` again once its session ends.
                state.wake();
                let message =
                    format!("it ran past the hang limit of {limit:?} in a batch; its neighbours were freed");
                // Its executor's record no longer names it: it is settled here.
                unit.control.clear_slot();
                let id = hung.map_or(0, |running| running.id);
                (id, String::new(), None, Ending::Hung { message })
            }
        };
        tracing::warn!(job_id = id, ?why, "no longer waiting for a job");
        if let Err(e) =
            give_up(&self.db, &unit.control, id, &func, lease.as_deref(), ending, &self.config.worker_id)
        {
            tracing::warn!(job_id = id, error = %chain(&e), "cannot settle a job given up on now; it will be rescued");
        }
        if let Some(executors) = state.executors.as_mut() {
            executors.spawn()?;
        }
        Ok(())
    }

    /// Settle jobs run alone whose outcome could not be stored (the database failed under
    /// them): each counts as an interruption.
    pub(super) fn settle(&self, state: &mut Dispatch) {
        let mut unsettled = std::mem::take(&mut state.unsettled);
        unsettled.retain(|(row, lease)| {
            let ending = Ending::Interrupted { reason: "the database failed under it".into() };
            let settled = self.db.conn().and_then(|mut conn| {
                crate::run::alone::settle_outside(
                    &self.db,
                    &mut conn,
                    row,
                    Some(lease),
                    ending,
                    &self.config.worker_id,
                )
            });
            match settled {
                Ok(_) => {
                    state.stats.released += 1;
                    false
                }
                Err(e) => {
                    tracing::warn!(job_id = row.id, error = %chain(&e), "cannot give a job back yet");
                    true
                }
            }
        });
        state.unsettled = unsettled;
    }

    /// Name the functions of pending jobs this worker cannot run (not linked into it): they
    /// wait for a worker that can, and an operator should know.
    pub(super) fn report_unknown_functions(&self) {
        let found = self.db.conn().and_then(|mut conn| conn.job_unknown_functions(&self.functions));
        match found {
            Ok(unknown) => {
                for (function, jobs) in unknown {
                    tracing::warn!(function = %function, jobs, "pending jobs of a function this worker does not have; they wait for a worker that does");
                }
            }
            Err(e) => tracing::warn!(error = %chain(&e), "cannot look for pending jobs of unknown functions"),
        }
    }

    /// One rescue pass: jobs whose worker is gone, and jobs a dead worker was running in batches.
    pub(super) fn rescue(&self, rescuer: &Rescuer, state: &mut Dispatch) {
        match rescuer.run_once() {
            Ok(rescued) => {
                state.stats.rescued += rescued.requeued + rescued.failed;
                if rescued.requeued > 0 {
                    state.wake();
                }
            }
            Err(e) => tracing::warn!(error = %chain(&e), "rescue pass failed"),
        }
    }

    /// Stop: let running batches commit what they have done, wait for running work up to the
    /// grace period, then end the sessions of what still runs and give its jobs back.
    pub(super) fn drain(&self, events: &Receiver<Event>, state: &mut Dispatch) {
        for unit in state.in_flight.values() {
            unit.control.wind_down();
        }
        let deadline = Instant::now() + self.config.grace_period;
        while !state.in_flight.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(Event::Finished { flight, done }) => state.finished(flight, done),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        for (_, unit) in state.in_flight.drain() {
            if !unit.control.give_up(GaveUp::Abandoned) {
                continue;
            }
            let given_back = self.db.conn().and_then(|mut conn| {
                // A job run alone: the one running now (it may follow the first in a chain).
                let leased = unit.leased.as_ref().map(|(row, lease)| (row.id, lease));
                let id = leased.map(|(id, _)| id);
                if let Some(id) = id {
                    conn.job_settle_lock(id)?;
                }
                let ended = unit.control.end_session(&mut conn);
                let released = match (leased, &ended) {
                    (Some((id, lease)), Ok(_)) => conn.job_release(&[id], lease).map(|n| n as u64),
                    _ => Ok(0),
                };
                if let Some(id) = id
                    && let Err(e) = conn.job_settle_unlock(id)
                {
                    // Closing the connection frees the lock.
                    crate::connection::poison(&mut conn);
                    return Err(e);
                }
                ended?;
                released
            });
            match given_back {
                Ok(n) => state.stats.released += n,
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "could not give running work back; it will be rescued")
                }
            }
        }
        state.slots.flush();
        self.settle(state);
        for (row, _) in &state.unsettled {
            tracing::error!(
                job_id = row.id,
                "could not give a job back; it stays started until it is rescued"
            );
        }
    }
}
