//! Channels: the tree of named queues with capacities, in Odoo's syntax
//! `root:4,root.export:1,root.mail:2:sequential`.
//!
//! A job's channel is a dotted name under `root`. It runs under the nearest configured channel
//! (itself or an ancestor), and starts only when that channel and every configured ancestor
//! has a free slot: `root:4,root.export:1` runs at most four jobs, at most one of them an export.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The channel every other channel descends from.
pub const ROOT: &str = "root";
/// The option that makes a channel run its jobs one at a time, in strict order.
const SEQUENTIAL: &str = "sequential";

/// The largest capacity a channel may have. Each unit of `root`'s capacity is a thread and a
/// database connection of the worker; more jobs at once take more workers, not a larger number.
pub const MAX_CAPACITY: usize = 1024;

/// Check that `name` is `root` or a dotted name under it, each part made of letters, digits,
/// `_` or `-`.
pub fn check_name(name: &str) -> Result<()> {
    let mut parts = name.split('.');
    let valid = parts.next() == Some(ROOT)
        && parts.all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if valid { Ok(()) } else { Err(Error::ChannelName(name.to_owned())) }
}

/// The parent of a channel name (`root.export.eu` → `root.export`), `None` for `root`.
pub fn parent(name: &str) -> Option<&str> {
    name.rsplit_once('.').map(|(parent, _)| parent)
}

/// One configured channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// Full dotted name.
    pub name: String,
    /// How many of its jobs (its own and its sub-channels') may run at once.
    pub capacity: usize,
    /// Strict order: one job at a time (its capacity is 1), in order; a failed job blocks the
    /// channel.
    pub sequential: bool,
    /// How often its jobs may start, across every worker (`throttle=`, `rate=`).
    pub limits: Limits,
}

/// How often a channel's jobs may start, across every worker and host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// At least this long between two starts (queue_job's `throttle`).
    pub throttle: Option<std::time::Duration>,
    /// At most this many starts in any period this long (`rate=100/1m`).
    pub rate: Option<(u32, std::time::Duration)>,
}

impl Limits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.throttle.is_some() || self.rate.is_some()
    }
}

/// `30s`, `1m30s`, `250ms`: the same text [`crate::options::parse_duration`] reads.
fn duration_text(d: std::time::Duration) -> String {
    if d.subsec_millis() > 0 || d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

/// A parsed channel configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelConfig {
    channels: BTreeMap<String, Channel>,
}

/// Capacity of `root` when the configuration is empty (queue_job's default `root:1`).
pub const DEFAULT_ROOT_CAPACITY: usize = 1;

impl Default for ChannelConfig {
    fn default() -> Self {
        let root = Channel {
            name: ROOT.into(),
            capacity: DEFAULT_ROOT_CAPACITY,
            sequential: false,
            limits: Limits::default(),
        };
        ChannelConfig { channels: BTreeMap::from([(ROOT.to_owned(), root)]) }
    }
}

impl FromStr for ChannelConfig {
    type Err = Error;

    /// Parse `name[:capacity][:sequential]` items separated by commas. A missing capacity is 1;
    /// a sequential channel's capacity must be 1 (Odoo refuses others too); a missing `root` gets
    /// the sum of its configured children's capacities.
    fn from_str(text: &str) -> Result<Self> {
        let mut channels = BTreeMap::new();
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let mut fields = token.split(':').map(str::trim);
            let name = fields.next().unwrap_or_default();
            check_name(name).map_err(|_| {
                Error::ChannelConfig(format!(
                    "expected a channel name like \"root\" or \"root.export\" in {token:?}, got {name:?}"
                ))
            })?;
            let mut fields = fields.peekable();
            // `name:sequential` leaves the capacity out: 1, the only one a strict order allows.
            let given = fields.next_if(|field| *field != SEQUENTIAL);
            let capacity = match given {
                None => 1,
                Some(cap) => match cap.parse::<usize>() {
                    Err(_) => {
                        return Err(Error::ChannelConfig(format!(
                            "expected a channel capacity (a number of jobs) in {token:?}, got {cap:?}"
                        )));
                    }
                    // Odoo's way of holding a channel: its jobs wait until it gets a capacity.
                    Ok(0) if name != ROOT => 0,
                    Ok(0) => {
                        return Err(Error::ChannelConfig(format!(
                            "root cannot have capacity 0 in {token:?}: no job would run; give a sub-channel capacity 0, or pause channels (queue-worker pause)"
                        )));
                    }
                    Ok(n) if n > MAX_CAPACITY => {
                        return Err(Error::ChannelConfig(format!(
                            "channel capacity {n} in {token:?} is above the limit of {MAX_CAPACITY}: each unit of capacity is a thread and a database connection of the worker; run more workers instead"
                        )));
                    }
                    Ok(n) => n,
                },
            };
            let mut sequential = false;
            let mut limits = Limits::default();
            for option in fields {
                let bad = |why: &str| Error::ChannelConfig(format!("{why} in {token:?}, got {option:?}"));
                let duration = |text: &str, why: &str| {
                    crate::options::parse_duration(text).ok().filter(|d| !d.is_zero()).ok_or_else(|| bad(why))
                };
                match option.split_once('=') {
                    None if option == SEQUENTIAL => sequential = true,
                    Some(("throttle", value)) => {
                        limits.throttle =
                            Some(duration(value, "expected throttle=<duration> like throttle=10s")?);
                    }
                    Some(("rate", value)) => {
                        let expected = "expected rate=<starts>/<period> like rate=100/1m";
                        let (count, period) = value.split_once('/').ok_or_else(|| bad(expected))?;
                        let count = count
                            .trim()
                            .parse::<u32>()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| bad(expected))?;
                        limits.rate = Some((count, duration(period.trim(), expected)?));
                    }
                    _ => {
                        return Err(Error::ChannelConfig(format!(
                            "unknown channel option {option:?} in {token:?}; expected \"sequential\", \"throttle=<duration>\" or \"rate=<starts>/<period>\""
                        )));
                    }
                }
            }
            if sequential && capacity != 1 {
                return Err(Error::ChannelConfig(format!(
                    "a sequential channel runs one job at a time: expected capacity 1 (or none) in {token:?}, got {capacity}"
                )));
            }
            let channel = Channel { name: name.to_owned(), capacity, sequential, limits };
            if channels.insert(name.to_owned(), channel).is_some() {
                return Err(Error::ChannelConfig(format!("channel {name:?} is configured twice")));
            }
        }
        if !channels.contains_key(ROOT) {
            let sum: usize =
                channels.values().filter(|c| parent(&c.name) == Some(ROOT)).map(|c| c.capacity).sum();
            if sum > MAX_CAPACITY {
                return Err(Error::ChannelConfig(format!(
                    "the capacity of root, the sum of its children's ({sum}), is above the limit of {MAX_CAPACITY}: give root a capacity, or run more workers"
                )));
            }
            let root = Channel {
                name: ROOT.into(),
                capacity: sum.max(DEFAULT_ROOT_CAPACITY),
                sequential: false,
                limits: Limits::default(),
            };
            channels.insert(ROOT.to_owned(), root);
        }
        Ok(ChannelConfig { channels })
    }
}

impl fmt::Display for ChannelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, channel) in self.channels.values().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{}", channel.name, channel.capacity)?;
            if channel.sequential {
                f.write_str(":sequential")?;
            }
            if let Some(throttle) = channel.limits.throttle {
                write!(f, ":throttle={}", duration_text(throttle))?;
            }
            if let Some((count, period)) = channel.limits.rate {
                write!(f, ":rate={count}/{}", duration_text(period))?;
            }
        }
        Ok(())
    }
}

impl ChannelConfig {
    /// How often jobs of the configured channel `name` may start.
    pub fn limits(&self, name: &str) -> Limits {
        self.channels.get(name).map_or_else(Limits::default, |c| c.limits)
    }

    /// The configured channels, by name.
    pub fn channels(&self) -> impl Iterator<Item = &Channel> {
        self.channels.values()
    }

    /// True when the configured channel runs its jobs in strict order.
    pub fn is_sequential(&self, name: &str) -> bool {
        self.channels.get(name).is_some_and(|c| c.sequential)
    }

    /// Capacity of a configured channel.
    pub fn capacity(&self, name: &str) -> Option<usize> {
        self.channels.get(name).map(|c| c.capacity)
    }

    /// What is allowed but probably not meant: a channel whose capacity is larger than its
    /// parent's (it can never run more jobs at once than its parent), one line each.
    pub fn warnings(&self) -> Vec<String> {
        self.channels
            .values()
            .filter_map(|c| {
                let parent = self.channels.get(parent(&c.name)?)?;
                (c.capacity > parent.capacity).then(|| {
                    format!(
                        "channel {} has capacity {} but its parent {} has {}: it runs at most {} job(s) at once",
                        c.name, c.capacity, parent.name, parent.capacity, parent.capacity
                    )
                })
            })
            .collect()
    }

    /// Total number of jobs that may run at once: the capacity of `root`.
    pub fn total_capacity(&self) -> usize {
        self.capacity(ROOT).unwrap_or(DEFAULT_ROOT_CAPACITY)
    }

    /// The configured channel a job of channel `name` runs under: itself or its nearest
    /// configured ancestor (`root` at worst).
    pub fn node_for<'a>(&'a self, name: &'a str) -> &'a str {
        let mut current = name;
        loop {
            if let Some((key, _)) = self.channels.get_key_value(current) {
                return key;
            }
            match parent(current) {
                Some(up) => current = up,
                None => return ROOT,
            }
        }
    }

    /// The configured channels strictly below `node` whose own subtree is not inside another
    /// configured channel below `node`: the names a claim for `node` must leave out.
    pub fn configured_children(&self, node: &str) -> Vec<&str> {
        self.channels
            .keys()
            .filter(|name| name.as_str() != node && self.node_for(parent(name).unwrap_or(ROOT)) == node)
            .map(String::as_str)
            .collect()
    }

    /// The configured ancestors of a configured channel, nearest first, itself included.
    pub fn chain<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Channel> + 'a {
        std::iter::successors(Some(node), |n| parent(n)).filter_map(|n| self.channels.get(n))
    }
}

/// In-process count of running jobs per configured channel, checked against capacities.
#[derive(Debug, Clone, Default)]
pub struct ChannelLoad {
    running: BTreeMap<String, usize>,
}

impl ChannelLoad {
    /// Slots free for one more job under configured channel `node`: the smallest margin left
    /// by `node` and its configured ancestors.
    pub fn free(&self, config: &ChannelConfig, node: &str) -> usize {
        config
            .chain(node)
            .map(|c| c.capacity.saturating_sub(self.running_under(config, &c.name)))
            .min()
            .unwrap_or(0)
    }

    /// Record that a job started under configured channel `node`.
    pub fn start(&mut self, node: &str) {
        *self.running.entry(node.to_owned()).or_default() += 1;
    }

    /// Record that a job under configured channel `node` finished.
    pub fn finish(&mut self, node: &str) {
        if let Some(n) = self.running.get_mut(node) {
            *n = n.saturating_sub(1);
        }
    }

    /// Jobs running in `node` and all configured channels below it.
    pub fn running_under(&self, config: &ChannelConfig, node: &str) -> usize {
        self.running
            .iter()
            .filter(|(name, _)| config.chain(name).any(|c| c.name == node))
            .map(|(_, n)| n)
            .sum()
    }

    /// Jobs running in total.
    pub fn total(&self) -> usize {
        self.running.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> ChannelConfig {
        text.parse().expect("valid configuration")
    }

    #[test]
    fn parses_odoo_syntax() {
        let c = config("root:4,root.export:1,root.mail:1:sequential,root.sms:sequential");
        assert_eq!(c.capacity("root"), Some(4));
        assert_eq!(c.capacity("root.export"), Some(1));
        assert!(c.channels().any(|ch| ch.name == "root.mail" && ch.sequential));
        assert!(c.is_sequential("root.sms"));
        assert_eq!(c.capacity("root.sms"), Some(1), "sequential without a capacity means 1");
        assert_eq!(c.to_string(), "root:4,root.export:1,root.mail:1:sequential,root.sms:1:sequential");
    }

    #[test]
    fn defaults() {
        assert_eq!(ChannelConfig::default().total_capacity(), 1);
        assert_eq!(config("").total_capacity(), 1);
        assert_eq!(config("root.a:2,root.b:3").total_capacity(), 5);
        assert_eq!(config("root, root.x").capacity("root.x"), Some(1));
    }

    #[test]
    fn a_child_larger_than_its_parent_is_warned_about() {
        assert_eq!(
            config("root:2,root.export:8,root.export.crm:9").warnings(),
            vec![
                "channel root.export has capacity 8 but its parent root has 2: it runs at most 2 job(s) at once",
                "channel root.export.crm has capacity 9 but its parent root.export has 8: it runs at most 8 job(s) at once",
            ]
        );
        assert!(config("root:4,root.export:1024").warnings().len() == 1);
        assert!(config("root:4,root.export:2").warnings().is_empty());
        let err = "root.a:1000,root.b:1000".parse::<ChannelConfig>().expect_err("too many");
        assert!(err.to_string().contains("the sum of its children's (2000)"), "{err}");
        assert_eq!(config("root:1024").total_capacity(), MAX_CAPACITY);
    }

    #[test]
    fn throttles_and_rates_are_channel_options() {
        let c = config(
            "root:4,root.mail:2:throttle=10s,root.sms:4:rate=100/1m,root.push:1:throttle=250ms:rate=3/1s",
        );
        assert_eq!(c.limits("root.mail").throttle, Some(std::time::Duration::from_secs(10)));
        assert_eq!(c.limits("root.sms").rate, Some((100, std::time::Duration::from_secs(60))));
        assert!(c.limits("root.push").throttle.is_some() && c.limits("root.push").rate.is_some());
        assert!(!c.limits("root").any());
        assert_eq!(c.to_string().parse::<ChannelConfig>().expect("printed"), c);
        for (text, message) in [
            (
                "root.mail:1:throttle=soon",
                r#"expected throttle=<duration> like throttle=10s in "root.mail:1:throttle=soon", got "throttle=soon""#,
            ),
            (
                "root.mail:1:throttle=0s",
                r#"expected throttle=<duration> like throttle=10s in "root.mail:1:throttle=0s""#,
            ),
            (
                "root.sms:1:rate=100",
                r#"expected rate=<starts>/<period> like rate=100/1m in "root.sms:1:rate=100", got "rate=100""#,
            ),
            ("root.sms:1:rate=0/1m", r#"expected rate=<starts>/<period> like rate=100/1m"#),
            ("root.sms:1:rate=5/often", r#"expected rate=<starts>/<period> like rate=100/1m"#),
            ("root.sms:1:speed=5", r#"unknown channel option "speed=5" in "root.sms:1:speed=5""#),
        ] {
            let err = text.parse::<ChannelConfig>().expect_err(text).to_string();
            assert!(err.contains(message), "{text}: {err}");
        }
    }

    #[test]
    fn errors_name_the_bad_token() {
        let cases = [
            (
                "root:0",
                r#"invalid channel configuration: root cannot have capacity 0 in "root:0": no job would run; give a sub-channel capacity 0, or pause channels (queue-worker pause)"#,
            ),
            (
                "root:4,root.export:x",
                r#"invalid channel configuration: expected a channel capacity (a number of jobs) in "root.export:x", got "x""#,
            ),
            (
                "export:1",
                r#"invalid channel configuration: expected a channel name like "root" or "root.export" in "export:1", got "export""#,
            ),
            (
                "root:1:fast",
                r#"invalid channel configuration: unknown channel option "fast" in "root:1:fast"; expected "sequential", "throttle=<duration>" or "rate=<starts>/<period>""#,
            ),
            ("root:1,root:2", r#"invalid channel configuration: channel "root" is configured twice"#),
            (
                "root:4,root.mail:2:sequential",
                r#"invalid channel configuration: a sequential channel runs one job at a time: expected capacity 1 (or none) in "root.mail:2:sequential", got 2"#,
            ),
            (
                "root.mail:sequential:2",
                r#"invalid channel configuration: unknown channel option "2" in "root.mail:sequential:2"; expected "sequential", "throttle=<duration>" or "rate=<starts>/<period>""#,
            ),
            (
                "root:99999999999",
                r#"invalid channel configuration: channel capacity 99999999999 in "root:99999999999" is above the limit of 1024: each unit of capacity is a thread and a database connection of the worker; run more workers instead"#,
            ),
            (
                "root..a:1",
                r#"invalid channel configuration: expected a channel name like "root" or "root.export" in "root..a:1", got "root..a""#,
            ),
        ];
        for (text, message) in cases {
            let err = text.parse::<ChannelConfig>().expect_err(text);
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn jobs_run_under_the_nearest_configured_channel() {
        let c = config("root:4,root.export:1,root.export.eu.big:1");
        assert_eq!(c.node_for("root"), "root");
        assert_eq!(c.node_for("root.mail"), "root");
        assert_eq!(c.node_for("root.export"), "root.export");
        assert_eq!(c.node_for("root.export.eu"), "root.export");
        assert_eq!(c.node_for("root.export.eu.big.x"), "root.export.eu.big");
        assert_eq!(c.configured_children("root"), vec!["root.export"]);
        assert_eq!(c.configured_children("root.export"), vec!["root.export.eu.big"]);
        assert!(c.configured_children("root.export.eu.big").is_empty());
    }

    #[test]
    fn capacity_holds_for_a_channel_and_its_ancestors() {
        let c = config("root:3,root.export:1");
        let mut load = ChannelLoad::default();
        assert_eq!(load.free(&c, "root.export"), 1);
        load.start("root.export");
        assert_eq!(load.free(&c, "root.export"), 0);
        assert_eq!(load.free(&c, "root"), 2);
        load.start("root");
        load.start("root");
        assert_eq!(load.free(&c, "root"), 0);
        assert_eq!(load.running_under(&c, "root"), 3);
        load.finish("root");
        assert_eq!(load.free(&c, "root"), 1);
        assert_eq!(load.free(&c, "root.export"), 0, "root.export is still full");
        load.finish("root.export");
        assert_eq!(load.free(&c, "root.export"), 1);
        assert_eq!(load.total(), 1);
    }

    #[test]
    fn channel_names() {
        assert!(check_name("root").is_ok());
        assert!(check_name("root.export_2.eu-west").is_ok());
        for bad in ["", "export", "root.", "root..x", "root.a b", "rooted"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
