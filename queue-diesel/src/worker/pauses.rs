//! Paused channels as a worker sees them: read from the database at most every half second, so
//! a pause or a resume reaches every worker within a second.

use std::time::{Duration, Instant};

use crate::database::Database;
use crate::run::chain;
use crate::store::{ChannelFilter, Store};

/// How often the paused channels are read.
pub(super) const REFRESH: Duration = Duration::from_millis(500);

/// The paused channels, as last read.
#[derive(Debug, Default)]
pub(super) struct Pauses {
    paused: Vec<String>,
    read_at: Option<Instant>,
}

impl Pauses {
    /// Read the paused channels again when due; true when they changed.
    pub(super) fn refresh(&mut self, db: &Database) -> bool {
        if self.read_at.is_some_and(|at| at.elapsed() < REFRESH) {
            return false;
        }
        self.read_at = Some(Instant::now());
        match db.conn().and_then(|mut conn| conn.channels_paused()) {
            Ok(rows) => {
                let paused: Vec<String> = rows.into_iter().map(|(channel, _)| channel).collect();
                if paused != self.paused {
                    if !paused.is_empty() {
                        tracing::info!(channels = ?paused, "paused channels");
                    }
                    self.paused = paused;
                    return true;
                }
                false
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), "cannot read the paused channels; keeping the last ones read");
                false
            }
        }
    }

    /// How long until the next read.
    pub(super) fn until_refresh(&self) -> Duration {
        self.read_at.map_or(Duration::ZERO, |at| REFRESH.saturating_sub(at.elapsed()))
    }

    fn covers(paused: &str, channel: &str) -> bool {
        channel == paused || channel.strip_prefix(paused).is_some_and(|rest| rest.starts_with('.'))
    }

    /// `filters` as the pauses leave them: a channel paused (itself or above) is left out, and a
    /// paused channel below one is excluded from its claims.
    pub(super) fn apply(&self, filters: &[ChannelFilter]) -> Vec<ChannelFilter> {
        filters
            .iter()
            .filter(|f| !self.paused.iter().any(|p| Self::covers(p, &f.node)))
            .map(|f| {
                let mut f = f.clone();
                for p in &self.paused {
                    if Self::covers(&f.node, p) && !f.excluded.contains(p) {
                        f.excluded.push(p.clone());
                    }
                }
                f
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_holds_a_channel_and_those_below_it() {
        let filter = |node: &str| ChannelFilter { node: node.into(), excluded: Vec::new() };
        let pauses = Pauses { paused: vec!["root.export".into(), "root.mail.eu".into()], read_at: None };
        let left = pauses.apply(&[filter("root"), filter("root.export"), filter("root.export.crm"), filter("root.exports")]);
        let nodes: Vec<&str> = left.iter().map(|f| f.node.as_str()).collect();
        assert_eq!(nodes, ["root", "root.exports"]);
        assert_eq!(left[0].excluded, ["root.export", "root.mail.eu"]);
        assert!(left[1].excluded.is_empty());
    }
}
