//! The rescuer: jobs left `started` by a worker that is gone go back to `pending` (their try
//! counted), or become `failed` once their tries are spent, so a job that kills its worker
//! cannot loop forever. Jobs a dead worker was running inside batches (rolled back with it, so
//! `pending` again) are found in its liveness file and settled the same way. Every worker runs
//! it when it starts and now and then; `run_once` runs one pass.

use std::time::Duration;

use crate::database::Database;
use crate::error::Result;
use std::path::PathBuf;

use queue_core::{Ending, JobState};

use crate::liveness;
use crate::run::alone::settle_id;
use crate::run::chain;
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
    folder: PathBuf,
}

impl Rescuer {
    /// A rescuer for `db` that leaves jobs claimed less than `grace` ago alone, reading the
    /// liveness files of the default folder.
    pub fn new(db: Database, grace: Duration) -> Rescuer {
        let folder = db.liveness_folder(None);
        Rescuer { db, grace, folder }
    }

    /// The same rescuer, reading the liveness files of `folder` (`QUEUE_STATE_DIR`).
    pub fn with_folder(self, folder: PathBuf) -> Rescuer {
        Rescuer { folder, ..self }
    }

    /// One pass: settle the jobs dead workers were running in batches, and rescue the `started`
    /// jobs whose worker is gone.
    pub fn run_once(&self) -> Result<RescueStats> {
        let mut stats = self.reap()?;
        let mut conn = self.db.conn()?;
        let now = self.db.now();
        let cutoff = now - chrono::TimeDelta::from_std(self.grace).unwrap_or(chrono::TimeDelta::zero());
        // Row locks tell the living from the dead; without them, the liveness files do.
        let dead = if self.db.backend().locks_rows() {
            None
        } else {
            let workers = conn.job_started_workers(cutoff)?;
            Some(workers.into_iter().filter(|w| liveness::is_dead(&self.folder, w)).collect::<Vec<_>>())
        };
        if dead.as_ref().is_some_and(Vec::is_empty) {
            return Ok(stats);
        }
        let rescued =
            conn.job_rescue_orphaned(&RescueParams { cutoff, now, dead_workers: dead.as_deref() })?;
        for job in rescued {
            crate::metrics::job_rescued(&job.func, &job.channel);
            crate::metrics::job_ended(&job.func, &job.channel, job.state);
            if job.state == queue_core::JobState::Failed {
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

    /// Settle the jobs that workers of this host were running in batches when they died: each
    /// such run counts a try and the job runs alone from then on (a job that kills its process
    /// then dies alone, where its tries run out, instead of taking batch after batch down).
    fn reap(&self) -> Result<RescueStats> {
        let mut stats = RescueStats::default();
        for dead in liveness::reap(&self.folder) {
            let mut settled_all = true;
            for (id, attempts) in &dead.running {
                let message = format!(
                    "its worker {} died while running it in a batch (try {})",
                    dead.worker,
                    attempts + 1
                );
                let ending = Ending::Died { message };
                let settled = self
                    .db
                    .conn()
                    .and_then(|mut conn| settle_id(&self.db, &mut conn, *id, "", None, ending, &dead.worker));
                match settled {
                    Ok(Some(JobState::Failed)) => stats.failed += 1,
                    Ok(Some(_)) => stats.requeued += 1,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(job_id = id, error = %chain(&e), "cannot settle a job of a dead worker now");
                        settled_all = false;
                    }
                }
            }
            if settled_all {
                dead.remove();
            }
        }
        Ok(stats)
    }
}
