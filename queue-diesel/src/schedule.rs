//! Periodic jobs: schedules declared with `#[job(cron = "…")]` on a method, or in code with
//! [`schedule!`](crate::schedule!), registered with `inventory` like job functions. Workers queue
//! their jobs as the ticks come (see [`Scheduler`](crate::Scheduler)): exactly one pass queues
//! each tick, whatever the number of workers and hosts.

use std::collections::HashSet;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
pub use queue_core::schedule::{CatchUp, Cron};

use crate::error::{Error, Result};
use crate::function::JobFunction;
use crate::transaction::Env;

/// What a schedule's code returns: any error (a query, a queueing error) rolls its tick back,
/// to be tried again.
pub type ScheduleResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The code that queues a tick's jobs, in the pass's transaction.
pub type QueueTick = fn(&Env, &Tick) -> ScheduleResult;

/// A periodic schedule: a cron pattern in a time zone and the code that queues its jobs.
///
/// Built in a `const` context and registered with [`schedule!`](crate::schedule!):
///
/// ```no_run
/// # use queue_diesel::prelude::*;
/// use queue_diesel::schedule::Schedule;
///
/// queue_diesel::schedule!(
///     Schedule::new("partners.morning_digest", "0 8 * * mon-fri", |env, tick| {
///         // Load the records with Diesel through env.conn(), then queue:
///         // Partner::queue().send_digest(&partners, tick.at().date_naive())?;
///         let _ = (env, tick);
///         Ok(())
///     })
///     .time_zone("Europe/Paris")
///     .skip_if_unfinished()
/// );
/// ```
#[derive(Debug)]
pub struct Schedule {
    name: Option<&'static str>,
    function: Option<&'static JobFunction>,
    cron: &'static str,
    time_zone: &'static str,
    catch_up: CatchUp,
    skip_if_unfinished: bool,
    queue: QueueTick,
}

inventory::collect!(Schedule);

impl Schedule {
    /// A schedule named `name` (unique among the binary's schedules) that runs `queue` at each
    /// tick of `cron`: five fields (`minute hour day month weekday`) or six with seconds first,
    /// in UTC unless [`Schedule::time_zone`] says otherwise.
    pub const fn new(name: &'static str, cron: &'static str, queue: QueueTick) -> Self {
        Schedule {
            name: Some(name),
            function: None,
            cron,
            time_zone: "UTC",
            catch_up: CatchUp::Last,
            skip_if_unfinished: false,
            queue,
        }
    }

    /// The schedule `#[job(cron = "…")]` declares for `function`: named after it.
    #[doc(hidden)]
    pub const fn of_function(function: &'static JobFunction, cron: &'static str, queue: QueueTick) -> Self {
        Schedule {
            name: None,
            function: Some(function),
            cron,
            time_zone: "UTC",
            catch_up: CatchUp::Last,
            skip_if_unfinished: false,
            queue,
        }
    }

    /// The time zone whose wall clock the pattern follows (an IANA name such as
    /// `"Europe/Paris"`); daylight saving changes neither skip nor repeat a tick.
    #[must_use]
    pub const fn time_zone(mut self, time_zone: &'static str) -> Self {
        self.time_zone = time_zone;
        self
    }

    /// Which ticks missed while no worker ran are queued: [`CatchUp::Last`] by default.
    #[must_use]
    pub const fn catch_up(mut self, catch_up: CatchUp) -> Self {
        self.catch_up = catch_up;
        self
    }

    /// Skip a tick while a job of an earlier tick is not finished yet (waiting, pending or
    /// running).
    #[must_use]
    pub const fn skip_if_unfinished(mut self) -> Self {
        self.skip_if_unfinished = true;
        self
    }

    /// The schedule's name: given, or its function's (`res.partner.cleanup`).
    pub fn name(&self) -> &str {
        match (self.name, self.function) {
            (Some(name), _) => name,
            (None, Some(function)) => function.name(),
            (None, None) => "",
        }
    }

    /// The cron pattern, as written.
    pub fn cron(&self) -> &'static str {
        self.cron
    }

    /// The time zone's name, as written.
    pub fn time_zone_name(&self) -> &'static str {
        self.time_zone
    }

    /// Which missed ticks are queued.
    pub fn catch_up_mode(&self) -> CatchUp {
        self.catch_up
    }

    /// True when a tick is skipped while an earlier tick's job is unfinished.
    pub fn skips_if_unfinished(&self) -> bool {
        self.skip_if_unfinished
    }

    /// The function whose method declares this schedule, if one does.
    pub fn function(&self) -> Option<&'static JobFunction> {
        self.function
    }

    /// The origin stored on this schedule's jobs: `schedule:<name>`.
    pub fn origin(&self) -> String {
        format!("schedule:{}", self.name())
    }

    pub(crate) fn queue(&self, env: &Env, tick: &Tick) -> ScheduleResult {
        (self.queue)(env, tick)
    }
}

/// Register a [`Schedule`] (built in a `const` expression) with the binary's schedules: every
/// worker of a binary that links it queues its jobs, and `queue-worker schedules` lists it.
#[macro_export]
macro_rules! schedule {
    ($schedule:expr $(,)?) => {
        $crate::__private::inventory::submit! { $schedule }
    };
}

/// One tick of a schedule, given to the code that queues its jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    pub(crate) schedule: String,
    pub(crate) at: DateTime<Utc>,
}

impl Tick {
    /// When the tick fell (the job may be queued a little later, or much later when catching
    /// up).
    pub fn at(&self) -> DateTime<Utc> {
        self.at
    }

    /// The schedule's name.
    pub fn schedule(&self) -> &str {
        &self.schedule
    }
}

/// A registered schedule with its pattern parsed.
#[derive(Debug)]
pub struct Registered {
    /// The schedule as declared.
    pub schedule: &'static Schedule,
    /// Its pattern in its time zone.
    pub cron: Cron,
}

/// The schedules linked into this binary, in name order, each checked: its name is unique, its
/// pattern and time zone parse. The first problem is the error, naming the schedule.
pub fn schedules() -> Result<&'static [Registered]> {
    static SCHEDULES: OnceLock<std::result::Result<Vec<Registered>, (String, String)>> = OnceLock::new();
    SCHEDULES
        .get_or_init(|| {
            let mut all: Vec<&'static Schedule> = inventory::iter::<Schedule>.into_iter().collect();
            all.sort_by(|a, b| a.name().cmp(b.name()));
            let mut seen = HashSet::new();
            let mut registered = Vec::with_capacity(all.len());
            for schedule in all {
                let name = schedule.name();
                if name.trim().is_empty() {
                    return Err((name.to_owned(), "a schedule needs a name".to_owned()));
                }
                if !seen.insert(name) {
                    return Err((
                        name.to_owned(),
                        "registered twice; schedule names must be unique".to_owned(),
                    ));
                }
                let cron = Cron::parse(schedule.cron, schedule.time_zone)
                    .map_err(|reason| (name.to_owned(), reason))?;
                registered.push(Registered { schedule, cron });
            }
            Ok(registered)
        })
        .as_deref()
        .map_err(|(name, reason)| {
            Error::Core(queue_core::Error::Schedule { name: name.clone(), reason: reason.clone() })
        })
}
