//! The pruner: finished jobs are deleted once they are old enough, so the jobs table stays the
//! size of the work in progress rather than of the whole history. `done` and `cancelled` jobs go
//! after a day by default, `failed` ones (which wait for an operator) after thirty days. Every
//! worker runs it now and then; on PostgreSQL one worker at a time.

use std::time::Duration;

use queue_core::JobState;

use crate::connection::AnyConnection;
use crate::connection::in_transaction_on;
use crate::database::Database;
use crate::error::{Error, Result};
use crate::store::{PruneParams, Store};

/// How long `done` and `cancelled` jobs are kept.
pub const DEFAULT_KEEP_DONE: Duration = Duration::from_secs(24 * 3600);
/// How long `failed` jobs are kept.
pub const DEFAULT_KEEP_FAILED: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often a worker prunes.
pub const DEFAULT_PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Jobs deleted per statement (each in its own short transaction).
const CHUNK: i64 = 5_000;
/// Most jobs one pass deletes, so that a worker catching up on a long history goes back to its
/// jobs in between.
const MAX_PER_PASS: usize = 20_000;

/// How long finished jobs are kept; `None` keeps them forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `done` and `cancelled` jobs.
    pub done: Option<Duration>,
    /// `failed` jobs.
    pub failed: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { done: Some(DEFAULT_KEEP_DONE), failed: Some(DEFAULT_KEEP_FAILED) }
    }
}

/// `now - keep`; `None` when that is before any date (nothing is that old).
pub(crate) fn cutoff(
    now: chrono::DateTime<chrono::Utc>,
    keep: Duration,
) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::TimeDelta::from_std(keep).ok().and_then(|keep| now.checked_sub_signed(keep))
}

/// Parse a retention setting: a duration (`"36h"`, `"7d"`) or `"forever"`.
pub fn parse_keep(text: &str, name: &str) -> Result<Option<Duration>> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("forever") {
        return Ok(None);
    }
    queue_core::options::parse_duration(text)
        .map(Some)
        .map_err(|e| Error::Config(format!("{name}: expected a duration like \"7d\" or \"forever\": {e}")))
}

/// Deletes old finished jobs.
#[derive(Debug, Clone)]
pub struct Pruner {
    db: Database,
    retention: Retention,
}

impl Pruner {
    /// A pruner for `db` keeping finished jobs as long as `retention` says.
    pub fn new(db: Database, retention: Retention) -> Pruner {
        Pruner { db, retention }
    }

    /// One pass: delete what is past its retention, at most a bounded number of jobs. Returns
    /// how many were deleted (0 when another PostgreSQL worker is pruning).
    pub fn run_once(&self) -> Result<usize> {
        let classes = [
            (self.retention.done, &[JobState::Done, JobState::Cancelled][..]),
            (self.retention.failed, &[JobState::Failed][..]),
        ];
        let mut conn = self.db.conn()?;
        let mut deleted = 0;
        for (keep, states) in classes {
            let Some(keep) = keep else { continue };
            let Some(before) = cutoff(self.db.now(), keep) else { continue };
            while deleted < MAX_PER_PASS {
                let params = PruneParams { states, before, limit: CHUNK };
                let Some(n) = prune_chunk(&mut conn, &params)? else { return Ok(deleted) };
                deleted += n;
                if n < CHUNK as usize {
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "pruned finished jobs past their retention");
        }
        Ok(deleted)
    }
}

/// Delete one chunk in its own transaction; `None` when another PostgreSQL session is pruning.
fn prune_chunk(conn: &mut AnyConnection, params: &PruneParams<'_>) -> Result<Option<usize>> {
    in_transaction_on::<_, Error>(conn, |conn| {
        if !conn.job_prune_lock()? {
            return Ok(None);
        }
        conn.job_prune(params).map(Some)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_is_a_duration_or_forever() {
        assert_eq!(parse_keep("7d", "k").expect("ok"), Some(Duration::from_secs(7 * 24 * 3600)));
        assert_eq!(parse_keep(" Forever ", "k").expect("ok"), None);
        let e = parse_keep("a while", "QUEUE_KEEP_DONE").expect_err("refused").to_string();
        assert!(e.starts_with("QUEUE_KEEP_DONE: expected a duration like \"7d\" or \"forever\""), "{e}");
    }

    #[test]
    fn a_retention_longer_than_the_calendar_keeps_everything() {
        let now = chrono::Utc::now();
        assert_eq!(cutoff(now, Duration::from_secs(u64::MAX)), None);
        assert_eq!(cutoff(now, Duration::from_secs(100_000_000 * 86_400)), None);
        assert_eq!(cutoff(now, Duration::from_secs(60)), Some(now - chrono::TimeDelta::seconds(60)));
    }
}
