//! Queueing the jobs of periodic schedules as their ticks come.
//!
//! Each schedule has one row in `queue_schedule`: the last tick dealt with (queued, skipped or
//! dropped). A pass takes the schedule's lock in a transaction, reads that tick, queues the jobs
//! of the ticks that passed since (per its `catch_up`), records the latest and commits: the jobs
//! and the new tick commit together, so across any number of workers and hosts each tick is
//! queued by exactly one pass, and a worker that dies in the middle leaves the tick to the next
//! pass. No leader is needed. A schedule seen for the first time starts from now: it does not
//! catch up on ticks from before it existed.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use queue_core::Context;
use queue_core::schedule::due;

use crate::database::Database;
use crate::error::{Error, Result};
use crate::schedule::{Registered, Tick, schedules};
use crate::store::Store;

/// How long a schedule whose code failed waits before its tick is tried again.
pub const RETRY_AFTER: TimeDelta = TimeDelta::seconds(10);

/// What one pass did for one schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleOutcome {
    /// Seen for the first time: recorded, its ticks count from now.
    Started,
    /// Jobs queued for these ticks.
    Queued(Vec<DateTime<Utc>>),
    /// Ticks passed but nothing was queued: an earlier job was unfinished (`skip_if_unfinished`),
    /// or the ticks were missed (`catch_up`).
    Skipped(Vec<DateTime<Utc>>),
}

/// Queues the jobs of the binary's schedules for one database; remembers when each schedule's
/// next tick falls, so that a pass touches the database only for the schedules that are due.
#[derive(Debug)]
pub struct Scheduler {
    db: Database,
    schedules: &'static [Registered],
    /// Per schedule, when the next pass should look at it; absent: at the next pass.
    next: HashMap<&'static str, DateTime<Utc>>,
}

impl Scheduler {
    /// A scheduler of the schedules linked into this binary (refused when one of them is
    /// unusable).
    pub fn new(db: Database) -> Result<Scheduler> {
        Ok(Scheduler { db, schedules: schedules()?, next: HashMap::new() })
    }

    /// True when the binary has no schedule.
    pub fn is_empty(&self) -> bool {
        self.schedules.is_empty()
    }

    /// Queue the jobs of every schedule whose tick has come (by the database's clock). A
    /// schedule whose code or transaction fails is logged, rolled back and tried again
    /// ten seconds later; the others go on. Returns what was done, per schedule name.
    pub fn pass(&mut self) -> Vec<(&'static str, ScheduleOutcome)> {
        let mut done = Vec::new();
        for registered in self.schedules {
            let name = registered.schedule.name();
            let now = self.db.now();
            if self.next.get(name).is_some_and(|next| *next > now) {
                continue;
            }
            match self.pass_one(registered, now) {
                Ok((outcome, last)) => {
                    // Not from now: a pass that caught up on part of the ticks goes on at once.
                    let next = registered.cron.next_after(last).unwrap_or(DateTime::<Utc>::MAX_UTC);
                    self.next.insert(name, next);
                    if let Some(outcome) = outcome {
                        done.push((name, outcome));
                    }
                }
                Err(e) => {
                    tracing::error!(schedule = name, error = %crate::run::chain(&e), retry_in_s = RETRY_AFTER.num_seconds(), "schedule failed to queue its jobs");
                    self.next.insert(name, now + RETRY_AFTER);
                }
            }
        }
        done
    }

    /// How long until the next pass has something to do (at most `cap`).
    pub fn wait(&self, cap: Duration) -> Duration {
        let now = self.db.now();
        let soonest = self.schedules.iter().map(|r| self.next.get(r.schedule.name()).copied()).min();
        match soonest {
            Some(Some(next)) => (next - now).to_std().unwrap_or(Duration::ZERO).min(cap),
            _ => Duration::ZERO,
        }
    }

    /// One schedule's pass in its own transaction; the outcome (if any tick passed) and the last
    /// tick recorded.
    fn pass_one(
        &self,
        registered: &Registered,
        now: DateTime<Utc>,
    ) -> Result<(Option<ScheduleOutcome>, DateTime<Utc>)> {
        let schedule = registered.schedule;
        let name = schedule.name();
        self.db.transaction(Context::new(), |env| {
            let last = env.any_conn()?.schedule_hold(name)?;
            let Some(last) = last else {
                env.any_conn()?.schedule_record(name, now, now)?;
                tracing::info!(schedule = name, cron = schedule.cron(), "schedule started");
                return Ok((Some(ScheduleOutcome::Started), now));
            };
            let due = due(&registered.cron, last, now, schedule.catch_up_mode());
            let Some(through) = due.through else {
                return Ok((None, last));
            };
            if let Some((first, last_dropped)) = due.dropped {
                tracing::warn!(schedule = name, first = %first, last = %last_dropped, catch_up = %schedule.catch_up_mode(), "missed ticks dropped");
            }
            let origin = schedule.origin();
            let outcome = if due.queue.is_empty() {
                ScheduleOutcome::Skipped(vec![through])
            } else if schedule.skips_if_unfinished() && env.any_conn()?.job_unfinished_of(&origin)? {
                tracing::info!(schedule = name, tick = %through, "tick skipped: a job of an earlier tick is unfinished");
                ScheduleOutcome::Skipped(due.queue)
            } else {
                for at in &due.queue {
                    let tick = Tick { schedule: name.to_owned(), at: *at };
                    let queued = catch_unwind(AssertUnwindSafe(|| {
                        crate::delay::with_origin(origin.clone(), *at, || schedule.queue(env, &tick))
                    }))
                    .unwrap_or_else(|payload| Err(panicked(payload.as_ref()).into()));
                    queued.map_err(|source| Error::Schedule { name: name.to_owned(), source })?;
                }
                tracing::info!(schedule = name, ticks = due.queue.len(), tick = %through, "schedule queued its jobs");
                ScheduleOutcome::Queued(due.queue)
            };
            env.any_conn()?.schedule_record(name, through, now)?;
            Ok((Some(outcome), through))
        })
    }
}

/// What a panic of a schedule's code said.
fn panicked(payload: &(dyn std::any::Any + Send)) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text payload".to_owned());
    format!("its code panicked: {message}")
}

/// A schedule as `queue-worker schedules` shows it.
#[derive(Debug)]
pub struct ScheduleView {
    /// Its name.
    pub name: String,
    /// Its declaration, when this binary links it (a row left by another binary has none).
    pub registered: Option<&'static Registered>,
    /// The last tick dealt with, as recorded in the database (none before a worker saw it).
    pub last_tick: Option<DateTime<Utc>>,
    /// Its next tick from now (or from the last tick, when the database is ahead).
    pub next_tick: Option<DateTime<Utc>>,
}

impl ScheduleView {
    /// The schedules of this binary, and those recorded in the database by another binary, by
    /// name.
    pub fn all(db: &Database) -> Result<Vec<ScheduleView>> {
        let mut recorded: HashMap<String, DateTime<Utc>> = db.conn()?.schedules_recorded()?.into_iter().collect();
        let now = db.now();
        let mut views: Vec<ScheduleView> = schedules()?
            .iter()
            .map(|r| {
                let last_tick = recorded.remove(r.schedule.name());
                let next_tick = r.cron.next_after(last_tick.map_or(now, |l| l.max(now)));
                ScheduleView { name: r.schedule.name().to_owned(), registered: Some(r), last_tick, next_tick }
            })
            .collect();
        views.extend(recorded.into_iter().map(|(name, last)| ScheduleView {
            name,
            registered: None,
            last_tick: Some(last),
            next_tick: None,
        }));
        views.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(views)
    }
}
