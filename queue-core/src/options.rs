//! Job options: what a caller may set per call, what a function sets by default, and the
//! library defaults (those of Odoo's `queue_job`).

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};

use serde_json::Value;

use crate::channel;
use crate::context::{Context, QUEUE_BATCH, QUEUE_EXPECTED_AT, QUEUE_NAME, QUEUE_SCHEDULED_AT};
use crate::error::{Error, Result};

/// A context value naming a moment: seconds from now (a number) or an RFC 3339 datetime.
fn moment(key: &str, value: &Value) -> Result<Option<Eta>> {
    let bad = || {
        Error::Option(format!(
            "context key {key}: expected seconds from now or an RFC 3339 datetime, got {value}"
        ))
    };
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => {
            let seconds = n.as_f64().filter(|s| s.is_finite() && *s >= 0.0).ok_or_else(bad)?;
            let micros = (seconds * 1_000_000.0).min(i64::MAX as f64) as i64;
            Ok(Some(Eta::In(TimeDelta::microseconds(micros))))
        }
        Value::String(s) => {
            let at = DateTime::parse_from_rfc3339(s.trim()).map_err(|_| bad())?;
            Ok(Some(Eta::At(at.with_timezone(&Utc))))
        }
        _ => Err(bad()),
    }
}

/// Priority of a job when neither the call nor the function sets one. Lower runs first.
pub const DEFAULT_PRIORITY: i32 = 10;
/// Retries allowed before a job becomes `failed`. `0` means retry forever.
pub const DEFAULT_MAX_RETRIES: i32 = 5;
/// Channel of a job when neither the call nor the function sets one.
pub const DEFAULT_CHANNEL: &str = "root";
/// The longest delay the queue stores: longer etas and retry delays are cut to it (a century).
pub const MAX_DELAY: TimeDelta = TimeDelta::days(36_525);

/// `now + delay`, with the delay cut to [`MAX_DELAY`] (and negative delays to zero), so no
/// input can overflow a timestamp.
pub fn after(now: DateTime<Utc>, delay: TimeDelta) -> DateTime<Utc> {
    let delay = delay.clamp(TimeDelta::zero(), MAX_DELAY);
    now.checked_add_signed(delay).unwrap_or(now)
}

/// [`after`] for a standard duration.
pub fn after_std(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    after(now, TimeDelta::from_std(delay).unwrap_or(MAX_DELAY))
}

/// Parse a duration written like `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"` or a sum such as
/// `"1h30m"`.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let bad =
        || Error::Option(format!("expected a duration like \"30s\", \"5m\" or \"1h30m\", got {text:?}"));
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            _ => return Err(bad()),
        };
        total = unit
            .checked_mul(u32::try_from(value).map_err(|_| bad())?)
            .and_then(|d| total.checked_add(d))
            .ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    if total.is_zero() {
        return Err(Error::Option(format!("expected a duration > 0, got {text:?}")));
    }
    Ok(total)
}

/// Largest encoded arguments a job may carry (1 MiB): jobs point at data, they do not carry it.
pub const DEFAULT_MAX_ARGS_BYTES: usize = 1 << 20;

/// Records per job when the context asks for batches with `queue_batch: true` (Tryton's default).
pub const DEFAULT_BATCH_SIZE: usize = 20;
/// Delay before a retry when the verdict and the function give none (queue_job: 10 minutes).
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(600);

/// When a job may start: after a delay, or at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eta {
    /// This long after the call.
    In(TimeDelta),
    /// Not before this moment.
    At(DateTime<Utc>),
}

impl Eta {
    /// The moment this eta stands for, seen from `now`.
    pub fn resolve(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Eta::In(delay) => after(now, delay),
            Eta::At(at) => at,
        }
    }
}

impl From<TimeDelta> for Eta {
    fn from(delay: TimeDelta) -> Self {
        Eta::In(delay)
    }
}

impl From<Duration> for Eta {
    fn from(delay: Duration) -> Self {
        Eta::In(TimeDelta::from_std(delay).unwrap_or(TimeDelta::MAX))
    }
}

impl From<DateTime<Utc>> for Eta {
    fn from(at: DateTime<Utc>) -> Self {
        Eta::At(at)
    }
}

impl From<NaiveDateTime> for Eta {
    /// A naive datetime is taken as UTC.
    fn from(at: NaiveDateTime) -> Self {
        Eta::At(at.and_utc())
    }
}

/// The defaults a job function declares with `#[job(...)]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FunctionDefaults {
    /// Default channel of the function's jobs.
    pub channel: Option<&'static str>,
    /// Default priority of the function's jobs.
    pub priority: Option<i32>,
    /// Default retries of the function's jobs.
    pub max_retries: Option<i32>,
    /// Default description: the method's first doc line.
    pub description: Option<&'static str>,
    /// Delays between tries (`"1:10,5:60"`); checked when the registry is built.
    pub retry_pattern: Option<&'static str>,
    /// Longest a run may take (`"5m"`); checked when the registry is built.
    pub timeout: Option<&'static str>,
    /// Run each job alone in its own transaction under a lease, never in a batch with other
    /// jobs: a job that runs long and should show as `started` while it does, or whose body must
    /// not share a transaction with another job's (one that takes table locks, say).
    pub isolated: bool,
}

/// Options set on one call through the delayable builder (`Model::queue().priority(30)…`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobOptions {
    /// Lower runs first.
    pub priority: Option<i32>,
    /// Not before this.
    pub eta: Option<Eta>,
    /// Retries before `failed`; `0` retries forever.
    pub max_retries: Option<i32>,
    /// Human description shown to operators.
    pub description: Option<String>,
    /// Channel the job runs in.
    pub channel: Option<String>,
    /// Key that identifies the job: a second job with the same key is not queued while the
    /// first has not run.
    pub identity_key: Option<String>,
    /// Deadline: among jobs of one priority, the sooner deadline runs first.
    pub expected_at: Option<Eta>,
    /// Jobs that must be done before this one starts (queue_job's `chain`, `group`, `on_done`).
    pub depends_on: Vec<crate::job::JobId>,
    /// How far the identity key keeps a second job out, beyond a job that has not run yet.
    pub unique: Option<Unique>,
}

/// How far an identity key keeps a second job out (`.unique(period, states)`): besides a job
/// with the key that has not run yet, one queued within `period`, or one in any of `states`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unique {
    /// A job with the key queued this recently keeps the new one out.
    pub period: Option<std::time::Duration>,
    /// A job with the key in one of these states keeps the new one out.
    pub states: Vec<crate::state::JobState>,
}

/// [`Unique`] resolved against the time of the call: what the store checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUnique {
    /// A job with the key queued at or after this keeps the new one out.
    pub since: Option<DateTime<Utc>>,
    /// A job with the key in one of these states keeps the new one out.
    pub states: Vec<crate::state::JobState>,
}

/// Options with every default applied and every value checked: what is stored on the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedOptions {
    /// Lower runs first.
    pub priority: i32,
    /// Not before this, if set.
    pub eta: Option<DateTime<Utc>>,
    /// Retries before `failed`; `0` retries forever.
    pub max_retries: i32,
    /// Human description.
    pub description: String,
    /// A valid channel name.
    pub channel: String,
    /// Identity key, if any.
    pub identity_key: Option<String>,
    /// Deadline used in ordering, if any.
    pub expected_at: Option<DateTime<Utc>>,
    /// How far the identity key keeps a second job out, beyond one that has not run yet.
    pub unique: Option<ResolvedUnique>,
}

impl JobOptions {
    /// Fill the options the call left unset from Tryton's context keys: `queue_name` (channel;
    /// a name not under `root` is put under it), `queue_scheduled_at` (eta) and
    /// `queue_expected_at` (deadline), each a number of seconds from now or an RFC 3339 moment.
    /// Returns the options and the batch size `queue_batch` asks for (`true` is `default_batch`).
    pub fn with_context(
        &self,
        context: &Context,
        default_batch: usize,
    ) -> Result<(JobOptions, Option<usize>)> {
        let mut options = self.clone();
        if options.channel.is_none()
            && let Some(value) = context.get(QUEUE_NAME)
        {
            let name = value.as_str().filter(|s| !s.trim().is_empty()).ok_or_else(|| {
                Error::Option(format!("context key {QUEUE_NAME}: expected a channel name, got {value}"))
            })?;
            let name = name.trim();
            options.channel = Some(if name == channel::ROOT || name.starts_with("root.") {
                name.to_owned()
            } else {
                format!("{}.{name}", channel::ROOT)
            });
        }
        if options.eta.is_none()
            && let Some(value) = context.get(QUEUE_SCHEDULED_AT)
        {
            options.eta = moment(QUEUE_SCHEDULED_AT, value)?;
        }
        if options.expected_at.is_none()
            && let Some(value) = context.get(QUEUE_EXPECTED_AT)
        {
            options.expected_at = moment(QUEUE_EXPECTED_AT, value)?;
        }
        let batch = match context.get(QUEUE_BATCH) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(default_batch.max(1)),
            Some(value) => match value.as_u64() {
                Some(0) => None,
                Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                None => {
                    return Err(Error::Option(format!(
                        "context key {QUEUE_BATCH}: expected true or a number of records per job, got {value}"
                    )));
                }
            },
        };
        Ok((options, batch))
    }

    /// Apply the function's defaults, then the library's, and check the result.
    ///
    /// `fallback_description` is used when neither the call nor the function gives one
    /// (queue_job uses the function's name).
    pub fn resolve(
        &self,
        defaults: &FunctionDefaults,
        fallback_description: &str,
        now: DateTime<Utc>,
    ) -> Result<ResolvedOptions> {
        let max_retries = self.max_retries.or(defaults.max_retries).unwrap_or(DEFAULT_MAX_RETRIES);
        if max_retries < 0 {
            return Err(Error::Option(format!(
                "expected max_retries >= 0 (0 retries forever), got {max_retries}"
            )));
        }
        let channel = self
            .channel
            .clone()
            .or_else(|| defaults.channel.map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_CHANNEL.to_owned());
        channel::check_name(&channel)?;
        if let Some(key) = &self.identity_key
            && key.is_empty()
        {
            return Err(Error::Option("identity_key must not be empty".into()));
        }
        if self.unique.is_some() && self.identity_key.is_none() {
            return Err(Error::Option(
                "unique needs an identity_key: the key that tells which jobs are the same".into(),
            ));
        }
        let unique = match &self.unique {
            Some(unique) => {
                let since = match unique.period {
                    Some(period) => Some(
                        now - chrono::TimeDelta::from_std(period)
                            .map_err(|_| Error::Option(format!("unique period {period:?} is too long")))?,
                    ),
                    None => None,
                };
                Some(ResolvedUnique { since, states: unique.states.clone() })
            }
            None => None,
        };
        Ok(ResolvedOptions {
            unique,
            expected_at: self.expected_at.map(|eta| eta.resolve(now)),
            priority: self.priority.or(defaults.priority).unwrap_or(DEFAULT_PRIORITY),
            eta: self.eta.map(|eta| eta.resolve(now)),
            max_retries,
            description: self
                .description
                .clone()
                .or_else(|| defaults.description.map(str::to_owned))
                .unwrap_or_else(|| fallback_description.to_owned()),
            channel,
            identity_key: self.identity_key.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).expect("valid timestamp")
    }

    #[test]
    fn library_defaults_are_queue_jobs() {
        let resolved = JobOptions::default().resolve(&FunctionDefaults::default(), "m.f", now()).expect("ok");
        assert_eq!(resolved.priority, 10);
        assert_eq!(resolved.max_retries, 5);
        assert_eq!(resolved.channel, "root");
        assert_eq!(resolved.description, "m.f");
        assert_eq!(resolved.eta, None);
    }

    #[test]
    fn call_beats_function_beats_library() {
        let defaults = FunctionDefaults {
            channel: Some("root.export"),
            priority: Some(20),
            max_retries: Some(3),
            description: Some("Export partners"),
            retry_pattern: None,
            timeout: None,
            isolated: false,
        };
        let from_function = JobOptions::default().resolve(&defaults, "m.f", now()).expect("ok");
        assert_eq!(from_function.channel, "root.export");
        assert_eq!(from_function.priority, 20);
        assert_eq!(from_function.max_retries, 3);
        assert_eq!(from_function.description, "Export partners");

        let call = JobOptions {
            priority: Some(30),
            channel: Some("root.mail".into()),
            eta: Some(Eta::In(TimeDelta::hours(5))),
            ..JobOptions::default()
        };
        let resolved = call.resolve(&defaults, "m.f", now()).expect("ok");
        assert_eq!(resolved.priority, 30);
        assert_eq!(resolved.channel, "root.mail");
        assert_eq!(resolved.eta, Some(now() + TimeDelta::hours(5)));
    }

    #[test]
    fn bad_options_are_refused_with_the_value() {
        let call = JobOptions { max_retries: Some(-1), ..JobOptions::default() };
        let err = call.resolve(&FunctionDefaults::default(), "m.f", now()).expect_err("bad");
        assert_eq!(
            err.to_string(),
            "invalid job option: expected max_retries >= 0 (0 retries forever), got -1"
        );
        let call = JobOptions { channel: Some("export".into()), ..JobOptions::default() };
        assert!(call.resolve(&FunctionDefaults::default(), "m.f", now()).is_err());
    }

    #[test]
    fn tryton_context_keys_fill_unset_options() {
        let ctx = Context::new()
            .with("queue_name", "mail")
            .with("queue_scheduled_at", 60)
            .with("queue_expected_at", "2030-01-02T03:04:05Z")
            .with("queue_batch", true);
        let (options, batch) = JobOptions::default().with_context(&ctx, 20).expect("valid");
        assert_eq!(options.channel.as_deref(), Some("root.mail"));
        assert_eq!(options.eta, Some(Eta::In(TimeDelta::seconds(60))));
        let deadline =
            DateTime::parse_from_rfc3339("2030-01-02T03:04:05Z").expect("valid").with_timezone(&Utc);
        assert_eq!(options.expected_at, Some(Eta::At(deadline)));
        assert_eq!(batch, Some(20));

        let call = JobOptions { channel: Some("root.export".into()), ..JobOptions::default() };
        let (options, _) = call.with_context(&ctx.clone().with("queue_batch", 5), 20).expect("valid");
        assert_eq!(options.channel.as_deref(), Some("root.export"), "the call wins");
        let (_, batch) = call.with_context(&Context::new().with("queue_batch", 5), 20).expect("valid");
        assert_eq!(batch, Some(5));
    }

    #[test]
    fn bad_context_values_are_refused_with_the_key() {
        let cases = [
            (
                "queue_scheduled_at",
                Value::from("tomorrow"),
                r#"invalid job option: context key queue_scheduled_at: expected seconds from now or an RFC 3339 datetime, got "tomorrow""#,
            ),
            (
                "queue_expected_at",
                Value::from(-5),
                "invalid job option: context key queue_expected_at: expected seconds from now or an RFC 3339 datetime, got -5",
            ),
            (
                "queue_batch",
                Value::from("many"),
                r#"invalid job option: context key queue_batch: expected true or a number of records per job, got "many""#,
            ),
            (
                "queue_name",
                Value::from(3),
                "invalid job option: context key queue_name: expected a channel name, got 3",
            ),
        ];
        for (key, value, message) in cases {
            let err =
                JobOptions::default().with_context(&Context::new().with(key, value), 20).expect_err(key);
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").ok(), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s").ok(), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m").ok(), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m").ok(), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration(" 2d ").ok(), Some(Duration::from_secs(172_800)));
        for bad in ["", "5", "m", "5 minutes", "1.5h", "-3s", "0s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_duration("5x").expect_err("unit").to_string(),
            r#"invalid job option: expected a duration like "30s", "5m" or "1h30m", got "5x""#
        );
    }

    #[test]
    fn huge_delays_are_cut_not_overflowed() {
        assert_eq!(Eta::from(Duration::MAX).resolve(now()), now() + MAX_DELAY);
        assert_eq!(Eta::In(TimeDelta::MAX).resolve(now()), now() + MAX_DELAY);
        assert_eq!(Eta::In(TimeDelta::seconds(-5)).resolve(now()), now());
        assert_eq!(after_std(now(), Duration::from_secs(u64::MAX)), now() + MAX_DELAY);
    }

    #[test]
    fn eta_from_std_duration_and_datetime() {
        assert_eq!(Eta::from(Duration::from_secs(60)).resolve(now()), now() + TimeDelta::minutes(1));
        assert_eq!(Eta::from(now()).resolve(now() + TimeDelta::days(1)), now());
    }
}
