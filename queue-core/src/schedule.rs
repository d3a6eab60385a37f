//! Periodic jobs: when a schedule's ticks fall, and which ticks a pass queues after the last one
//! it recorded (`catch_up`).
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use queue_core::schedule::{CatchUp, Cron, due};
//!
//! // 03:00 every day in Paris; seconds may be given as a sixth field in front.
//! let cron = Cron::parse("0 3 * * *", "Europe/Paris")?;
//! let last = Utc.with_ymd_and_hms(2026, 12, 1, 2, 0, 0).unwrap(); // 03:00 in Paris
//! assert_eq!(cron.next_after(last), Some(Utc.with_ymd_and_hms(2026, 12, 2, 2, 0, 0).unwrap()));
//!
//! // Three days without a worker: only the latest tick is queued by default.
//! let now = Utc.with_ymd_and_hms(2026, 12, 4, 9, 0, 0).unwrap();
//! let ticks = due(&cron, last, now, CatchUp::Last);
//! assert_eq!(ticks.queue, [Utc.with_ymd_and_hms(2026, 12, 4, 2, 0, 0).unwrap()]);
//! assert_eq!(due(&cron, last, now, CatchUp::All).queue.len(), 3);
//! # Ok::<(), String>(())
//! ```

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};

/// A cron pattern in a time zone: five fields (minute, hour, day of month, month, day of week),
/// or six with seconds in front (and an optional year last), as well as `@daily`-style names.
#[derive(Clone)]
pub struct Cron {
    text: String,
    pattern: croner::Cron,
    zone: Tz,
}

impl fmt::Debug for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cron({:?} in {})", self.text, self.zone.name())
    }
}

impl Cron {
    /// Parse `pattern`, whose ticks fall on the wall clock of `time_zone` (an IANA name such as
    /// `"Europe/Paris"`, or `"UTC"`). The error names the value that is wrong.
    pub fn parse(pattern: &str, time_zone: &str) -> Result<Cron, String> {
        let zone: Tz = time_zone.trim().parse().map_err(|_| {
            format!("unknown time zone {time_zone:?}: expected an IANA name like \"Europe/Paris\" or \"UTC\"")
        })?;
        let parser = CronParser::builder().seconds(Seconds::Optional).build();
        let parsed = parser
            .parse(pattern)
            .map_err(|e| format!("invalid cron pattern {pattern:?}: {e} (expected five fields, \"minute hour day month weekday\", or six with seconds first)"))?;
        let cron = Cron { text: pattern.trim().to_owned(), pattern: parsed, zone };
        // A pattern such as "0 0 30 2 *" parses but never matches: refuse it now rather than at
        // its first tick.
        let reference = DateTime::<Utc>::UNIX_EPOCH + TimeDelta::days(20_000);
        if cron.next_after(reference).is_none() {
            return Err(format!("cron pattern {pattern:?} matches no time"));
        }
        Ok(cron)
    }

    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        &self.text
    }

    /// The time zone's name.
    pub fn time_zone(&self) -> &'static str {
        self.zone.name()
    }

    /// The first tick strictly after `after`; `None` when there is none within the parser's
    /// search bound.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.zone);
        self.pattern.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
    }

    /// The latest tick at or before `at`.
    pub fn latest_at(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.zone);
        self.pattern.find_previous_occurrence(&local, true).ok().map(|t| t.with_timezone(&Utc))
    }
}

/// Which ticks a schedule queues when several passed since its last one (a time without any
/// worker): `last` by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// Only a tick that is on time (at most [`ON_TIME`] old): missed ticks are dropped.
    None,
    /// The latest tick that passed, once; earlier missed ticks are dropped.
    #[default]
    Last,
    /// Every tick that passed, oldest first (at most [`MAX_TICKS_PER_PASS`] per pass).
    All,
}

impl CatchUp {
    /// The name used in attributes and shown by `queue-worker schedules`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CatchUp::None => "none",
            CatchUp::Last => "last",
            CatchUp::All => "all",
        }
    }
}

impl fmt::Display for CatchUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CatchUp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "none" => Ok(CatchUp::None),
            "last" => Ok(CatchUp::Last),
            "all" => Ok(CatchUp::All),
            other => Err(format!("invalid catch_up {other:?}: expected \"none\", \"last\" or \"all\"")),
        }
    }
}

/// A tick at most this late is on time: `catch_up = "none"` still queues it.
pub const ON_TIME: TimeDelta = TimeDelta::seconds(60);

/// Most ticks one pass queues for a schedule catching up with `all`; the following pass goes on
/// from the last one queued.
pub const MAX_TICKS_PER_PASS: usize = 100;

/// What a pass does for one schedule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Due {
    /// The ticks to queue a job for, oldest first.
    pub queue: Vec<DateTime<Utc>>,
    /// The ticks dropped (missed while no worker ran), as the first and last of them.
    pub dropped: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The tick to record as the schedule's last: every tick up to it is dealt with. `None` when
    /// no tick passed.
    pub through: Option<DateTime<Utc>>,
}

/// The ticks of `cron` after `last` (the last tick recorded) up to `now`, and which of them to
/// queue under `catch_up`.
pub fn due(cron: &Cron, last: DateTime<Utc>, now: DateTime<Utc>, catch_up: CatchUp) -> Due {
    let Some(first) = cron.next_after(last).filter(|t| *t <= now) else {
        return Due::default();
    };
    if catch_up == CatchUp::All {
        let mut queue = vec![first];
        while queue.len() < MAX_TICKS_PER_PASS {
            match queue.last().and_then(|t| cron.next_after(*t)) {
                Some(next) if next <= now => queue.push(next),
                _ => break,
            }
        }
        let through = queue.last().copied();
        return Due { queue, dropped: None, through };
    }
    let latest = cron.latest_at(now).filter(|t| *t >= first).unwrap_or(first);
    let on_time = catch_up == CatchUp::Last || now - latest <= ON_TIME;
    let dropped_last = if on_time { cron.latest_at(latest - TimeDelta::seconds(1)) } else { Some(latest) };
    let dropped = dropped_last.filter(|t| *t >= first).map(|t| (first, t));
    Due { queue: if on_time { vec![latest] } else { Vec::new() }, dropped, through: Some(latest) }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).single().expect("valid time")
    }

    #[test]
    fn five_or_six_fields_in_a_time_zone() {
        let daily = Cron::parse("0 3 * * *", "UTC").expect("valid");
        assert_eq!(daily.next_after(utc(2026, 12, 2, 3, 0, 0)), Some(utc(2026, 12, 3, 3, 0, 0)));
        let every_ten_seconds = Cron::parse("*/10 * * * * *", "UTC").expect("valid");
        assert_eq!(every_ten_seconds.next_after(utc(2026, 12, 2, 3, 0, 1)), Some(utc(2026, 12, 2, 3, 0, 10)));
        // 03:00 in Paris is 02:00 UTC in winter and 01:00 UTC in summer.
        let paris = Cron::parse("0 3 * * *", "Europe/Paris").expect("valid");
        assert_eq!(paris.next_after(utc(2026, 12, 2, 12, 0, 0)), Some(utc(2026, 12, 3, 2, 0, 0)));
        assert_eq!(paris.next_after(utc(2026, 7, 2, 12, 0, 0)), Some(utc(2026, 7, 3, 1, 0, 0)));
        assert_eq!(paris.time_zone(), "Europe/Paris");
        assert_eq!(
            Cron::parse("@hourly", "UTC").expect("valid").next_after(utc(2026, 1, 1, 0, 30, 0)),
            Some(utc(2026, 1, 1, 1, 0, 0))
        );
    }

    #[test]
    fn daylight_saving_days_have_their_ticks_once() {
        // Paris skips 02:00–03:00 on 2026-03-29 and repeats 02:00–03:00 on 2026-10-25.
        let at_half_past_two = Cron::parse("30 2 * * *", "Europe/Paris").expect("valid");
        let spring: Vec<_> = ticks(&at_half_past_two, utc(2026, 3, 27, 12, 0, 0), 3);
        assert_eq!(spring.len(), 3);
        assert!(spring.windows(2).all(|w| w[1] - w[0] >= TimeDelta::hours(23)), "{spring:?}");
        let autumn: Vec<_> = ticks(&at_half_past_two, utc(2026, 10, 23, 12, 0, 0), 3);
        assert_eq!(autumn[1].date_naive(), utc(2026, 10, 25, 0, 0, 0).date_naive());
        assert_eq!(
            autumn[2].date_naive(),
            utc(2026, 10, 26, 0, 0, 0).date_naive(),
            "once on the repeated hour"
        );
    }

    fn ticks(cron: &Cron, mut after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        for _ in 0..n {
            after = cron.next_after(after).expect("a tick");
            out.push(after);
        }
        out
    }

    #[test]
    fn bad_patterns_and_zones_are_named() {
        let e = Cron::parse("0 3 * *", "UTC").expect_err("four fields");
        assert!(e.starts_with("invalid cron pattern \"0 3 * *\""), "{e}");
        let e = Cron::parse("0 25 * * *", "UTC").expect_err("hour 25");
        assert!(e.contains("\"0 25 * * *\""), "{e}");
        let e = Cron::parse("0 3 * * *", "Europe/Pari").expect_err("zone");
        assert!(e.starts_with("unknown time zone \"Europe/Pari\""), "{e}");
        let e = Cron::parse("0 0 30 2 *", "UTC").expect_err("never");
        assert!(e.contains("matches no time"), "{e}");
        assert_eq!(
            "sometimes".parse::<CatchUp>().expect_err("bad"),
            "invalid catch_up \"sometimes\": expected \"none\", \"last\" or \"all\""
        );
    }

    #[test]
    fn catch_up_after_downtime() {
        let hourly = Cron::parse("0 * * * *", "UTC").expect("valid");
        let last = utc(2026, 12, 2, 10, 0, 0);
        // Nothing passed yet.
        assert_eq!(due(&hourly, last, utc(2026, 12, 2, 10, 59, 59), CatchUp::All), Due::default());
        // One tick, just passed: every mode queues it.
        for mode in [CatchUp::None, CatchUp::Last, CatchUp::All] {
            let d = due(&hourly, last, utc(2026, 12, 2, 11, 0, 2), mode);
            assert_eq!(d.queue, [utc(2026, 12, 2, 11, 0, 0)], "{mode}");
            assert_eq!(d.dropped, None, "{mode}");
            assert_eq!(d.through, Some(utc(2026, 12, 2, 11, 0, 0)));
        }
        // Down from 10:30 to 14:20: ticks 11, 12, 13 and 14 passed.
        let now = utc(2026, 12, 2, 14, 20, 0);
        let all = due(&hourly, last, now, CatchUp::All);
        assert_eq!(all.queue.len(), 4);
        assert_eq!(all.through, Some(utc(2026, 12, 2, 14, 0, 0)));
        let latest = due(&hourly, last, now, CatchUp::Last);
        assert_eq!(latest.queue, [utc(2026, 12, 2, 14, 0, 0)]);
        assert_eq!(latest.dropped, Some((utc(2026, 12, 2, 11, 0, 0), utc(2026, 12, 2, 13, 0, 0))));
        let none = due(&hourly, last, now, CatchUp::None);
        assert!(none.queue.is_empty(), "20 minutes late is not on time");
        assert_eq!(none.dropped, Some((utc(2026, 12, 2, 11, 0, 0), utc(2026, 12, 2, 14, 0, 0))));
        assert_eq!(none.through, Some(utc(2026, 12, 2, 14, 0, 0)));
        // Back at 14:00:30: the latest tick is on time, the others are dropped.
        let none = due(&hourly, last, utc(2026, 12, 2, 14, 0, 30), CatchUp::None);
        assert_eq!(none.queue, [utc(2026, 12, 2, 14, 0, 0)]);
        // A clock behind the recorded tick queues nothing.
        assert_eq!(due(&hourly, last, utc(2026, 12, 2, 9, 0, 0), CatchUp::All), Due::default());
    }

    #[test]
    fn catching_up_all_goes_on_from_where_a_pass_stopped() {
        let every_second = Cron::parse("* * * * * *", "UTC").expect("valid");
        let last = utc(2026, 12, 2, 10, 0, 0);
        let now = last + TimeDelta::seconds(250);
        let first = due(&every_second, last, now, CatchUp::All);
        assert_eq!(first.queue.len(), MAX_TICKS_PER_PASS);
        let second = due(&every_second, first.through.expect("some"), now, CatchUp::All);
        assert_eq!(second.queue[0], last + TimeDelta::seconds(101));
        let third = due(&every_second, second.through.expect("some"), now, CatchUp::All);
        assert_eq!(third.queue.len(), 50);
        assert_eq!(third.through, Some(now));
    }
}
