//! Batches: how many a channel gets, and what each may claim.

use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use super::Worker;
use super::dispatch::{Dispatch, FIRST_GUESS_PER_JOB, Flight};
use super::executors::Assignment;
use crate::error::{Error, Result};
use crate::run::JobControl;
use crate::run::batch::BatchTicket;
use crate::store::ChannelFilter;

impl Worker {
    /// Hand batches of `filter`'s channel to executors: one while the channel is not known to
    /// hold more than a batch, then one per free slot while batches come back full.
    pub(super) fn start_batches(
        &self,
        filter: &ChannelFilter,
        state: &mut Dispatch,
        jobs: &Sender<Assignment>,
    ) -> Result<()> {
        let channels = &self.config.channels;
        let node = &filter.node;
        if state.dry.contains(&(node.clone(), true)) {
            return Ok(());
        }
        let books = state.batches.get(node);
        let running = books.map_or(0, |b| b.running);
        let full = books.is_some_and(|b| b.full);
        // A wake-up since the last batch began: the running batches may have claimed before the
        // new jobs committed, so one more must look.
        let woken = books.is_none_or(|b| b.started_seq < state.wake_seq);
        let free = state.load.free(channels, node);
        let starts = if full { free } else { usize::from(running == 0 || woken).min(free) };
        for _ in 0..starts {
            let taken = state.slots.acquire(channels, node, 1);
            if taken.first().is_none_or(|(_, slots)| slots.is_empty()) {
                break;
            }
            let slots: Vec<(String, usize)> =
                taken.into_iter().filter_map(|(name, slots)| Some((name, *slots.first()?))).collect();
            let books = state.batches.entry(node.clone()).or_default();
            books.running += 1;
            books.full = false;
            books.started_seq = state.wake_seq;
            let per_job = books.per_job.unwrap_or(FIRST_GUESS_PER_JOB).max(Duration::from_micros(1));
            let by_time = (self.config.batch_time.as_secs_f64() / per_job.as_secs_f64()) as usize;
            // A batch that ran out of savepoints before its time: jobs that write; claim no
            // more than it ran, plus one to notice when they stop writing.
            let limit = books.savepoint_cap.map_or(by_time, |cap| by_time.min(cap + 1));
            let ticket = BatchTicket {
                worker_id: Arc::from(self.config.worker_id.as_str()),
                channel: filter.clone(),
                funcs: Arc::clone(&state.funcs),
                alone: Arc::clone(&state.alone),
                limit: limit.clamp(1, self.config.batch_jobs.max(1)),
                budget: self.config.batch_time,
                seen: state.seen.clone(),
            };
            state.load.start(node);
            state.handed_out = true;
            let control = Arc::new(JobControl::default());
            let flight = state.next_flight();
            let unit = Flight {
                node: node.clone(),
                control: Arc::clone(&control),
                deadline: None,
                leased: None,
                seq: state.wake_seq,
                slots,
                slots_session: state.slots.session,
            };
            state.in_flight.insert(flight, unit);
            jobs.send(Assignment::Batch { flight, ticket, control }).map_err(|_| Error::NoExecutors)?;
        }
        Ok(())
    }
}
