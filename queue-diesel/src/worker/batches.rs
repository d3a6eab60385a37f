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
    /// hold more than a batch, then one per free slot while batches come back full. The slots
    /// shared with other workers are not taken here: each batch's claim takes its own, for its
    /// transaction (no round trip of its own), and finds nothing while they are all taken.
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
        if books.and_then(|b| b.refused_until).is_some_and(|at| at > std::time::Instant::now()) {
            return Ok(());
        }
        let running = books.map_or(0, |b| b.running);
        let full = books.is_some_and(|b| b.full);
        // A wake-up since the last batch began: the running batches may have claimed before the
        // new jobs committed, so one more must look.
        let woken = books.is_none_or(|b| b.started_seq < state.wake_seq);
        let free = state.load.free(channels, node);
        let starts = if full { free } else { usize::from(running == 0 || woken).min(free) };
        let slots = self.channel_slots(node);
        if starts > 0 {
            // Slots kept for jobs run alone go back first: held on the dispatcher's connection,
            // they would refuse this worker's own batch.
            state.slots.flush();
        }
        for _ in 0..starts {
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
                limit: limit.clamp(1, self.config.batch_jobs.max(1)),
                seen: state.seen.clone(),
                ..self.batch_ticket(filter, &state.funcs, &state.alone, &slots)
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
                slots: Vec::new(),
                slots_session: state.slots.session,
            };
            state.in_flight.insert(flight, unit);
            jobs.send(Assignment::Batch { flight, ticket, control }).map_err(|_| Error::NoExecutors)?;
        }
        Ok(())
    }

    /// Whether jobs of channel `node` run in batches: not on a sequential channel (one job at a
    /// time, in strict order) nor a throttled or rate-limited one (each start is counted), nor
    /// when batches are off.
    pub(super) fn runs_batches(&self, node: &str) -> bool {
        let channels = &self.config.channels;
        !channels.is_sequential(node) && !channels.limits(node).any() && self.config.batch_jobs > 0
    }

    /// The channel `node` and its configured ancestors with their capacities: the slots a
    /// batch's claim takes, shared with every worker.
    fn channel_slots(&self, node: &str) -> Arc<[(String, usize)]> {
        self.config.channels.chain(node).map(|c| (c.name.clone(), c.capacity)).collect()
    }

    fn batch_ticket(
        &self,
        filter: &ChannelFilter,
        funcs: &Arc<Vec<&'static str>>,
        alone: &Arc<Vec<&'static str>>,
        slots: &Arc<[(String, usize)]>,
    ) -> BatchTicket {
        BatchTicket {
            worker_id: Arc::from(self.config.worker_id.as_str()),
            channel: filter.clone(),
            funcs: Arc::clone(funcs),
            alone: Arc::clone(alone),
            limit: self.config.batch_jobs.max(1),
            budget: self.config.batch_time,
            seen: None,
            slots: Arc::clone(slots),
        }
    }

    /// A batch claim of each channel, for executors to prepare when they connect.
    pub(super) fn batch_claims(&self) -> Arc<[BatchTicket]> {
        let funcs = Arc::new(self.functions.clone());
        let alone = Arc::new(self.alone.clone());
        self.channel_filters()
            .iter()
            .filter(|filter| self.runs_batches(&filter.node))
            .map(|filter| self.batch_ticket(filter, &funcs, &alone, &self.channel_slots(&filter.node)))
            .collect()
    }
}
