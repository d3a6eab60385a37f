//! The rescuer: jobs left `started` by a worker that is gone go back to `pending` (their try
//! counted), or become `failed` once their tries are spent, so a job that kills its worker
//! cannot loop forever. Every worker runs it now and then; `run_once` runs one pass.

use std::time::Duration;

use crate::connection::Backend;
use crate::database::Database;
use crate::error::Result;
use crate::maintenance::liveness;
use crate::store::{RescueParams, Store};

/// A job claimed this recently is left alone: its worker may not have locked it yet.
pub const DEFAULT_RESCUE_GRACE: Duration = Duration::from_secs(5);
/// How often a worker looks for orphaned jobs.
pub const DEFAULT_RESCUE_INTERVAL: Duration = Duration::from_secs(5);

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RescueStats {
    /// Jobs put back to `pending`.
    pub requeued: u64,
    /// Jobs failed because their tries were spent.
    pub failed: u64,
}

/// Finds and rescues orphaned jobs.
#[derive(Debug, Clone)]
pub struct Rescuer {
    db: Database,
    grace: Duration,
}

impl Rescuer {
    /// A rescuer for `db` that leaves jobs claimed less than `grace` ago alone.
    pub fn new(db: Database, grace: Duration) -> Rescuer {
        Rescuer { db, grace }
    }

    /// One pass: rescue the `started` jobs whose worker is gone.
    pub fn run_once(&self) -> Result<RescueStats> {
        let mut conn = self.db.conn()?;
        let now = self.db.now();
        let cutoff = now - chrono::TimeDelta::from_std(self.grace).unwrap_or(chrono::TimeDelta::zero());
        let dead = match self.db.backend() {
            // Row locks tell the living from the dead.
            Backend::Postgres => None,
            Backend::Sqlite => {
                let path = self.db.sqlite_path().unwrap_or_default();
                let workers = conn.job_started_workers(cutoff)?;
                Some(workers.into_iter().filter(|w| liveness::is_dead(&path, w)).collect::<Vec<_>>())
            }
        };
        if dead.as_ref().is_some_and(Vec::is_empty) {
            return Ok(RescueStats::default());
        }
        let rescued =
            conn.job_rescue_orphaned(&RescueParams { cutoff, now, dead_workers: dead.as_deref() })?;
        let mut stats = RescueStats::default();
        for (_, state) in rescued {
            if state == queue_core::JobState::Failed {
                stats.failed += 1;
            } else {
                stats.requeued += 1;
            }
        }
        if stats != RescueStats::default() {
            tracing::warn!(
                requeued = stats.requeued,
                failed = stats.failed,
                "rescued jobs whose worker is gone"
            );
        }
        Ok(stats)
    }
}
