//! `queue-worker stats`, `channels`, `functions` and `schedules`: the queue at a glance.

use chrono::{DateTime, TimeDelta, Utc};
use queue_core::{ChannelConfig, JobState};
use serde_json::{Value, json};

use super::output::{age, print_json};
use crate::database::Database;
use crate::error::Result;
use crate::function::registry;
use crate::store::{ListParams, Stats, Views};

/// The windows `stats` counts finished jobs over, in minutes.
const WINDOWS: [i64; 3] = [1, 5, 15];

/// The states `stats` shows as columns, in life order.
const COLUMNS: [JobState; 7] = JobState::ALL;

fn read(db: &Database) -> Result<(Stats, DateTime<Utc>)> {
    let now = db.now();
    let since: Vec<DateTime<Utc>> = WINDOWS.iter().map(|m| now - TimeDelta::minutes(*m)).collect();
    Ok((db.conn()?.job_stats(now, &since)?, now))
}

fn oldest(due: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<std::time::Duration> {
    due.map(|d| (now - d).to_std().unwrap_or_default())
}

/// `stats`: jobs per channel and state, the oldest due pending job per channel, and the jobs
/// finished in the last minutes.
pub(super) fn stats(db: &Database, json: bool) -> Result<()> {
    let (stats, now) = read(db)?;
    if json {
        let channels: Vec<Value> = stats
            .channels
            .iter()
            .map(|c| {
                let counts = COLUMNS.iter().map(|s| (s.as_str().to_owned(), json!(c.count(*s)))).collect();
                json!({
                    "channel": c.channel,
                    "counts": Value::Object(counts),
                    "oldest_pending_seconds": oldest(c.oldest_due, now).map(|d| d.as_secs_f64()),
                })
            })
            .collect();
        let windows = |counts: &[i64]| -> Value {
            WINDOWS.iter().zip(counts).map(|(m, n)| (format!("{m}m"), json!(n))).collect()
        };
        return print_json(&json!({
            "channels": channels,
            "done": windows(&stats.done_since),
            "failed": windows(&stats.failed_since),
        }));
    }
    print!("{:<24}", "CHANNEL");
    for state in COLUMNS {
        print!("  {:>10}", short(state));
    }
    println!("  OLDEST PENDING");
    for c in &stats.channels {
        print!("{:<24}", c.channel);
        for state in COLUMNS {
            print!("  {:>10}", c.count(state));
        }
        println!("  {}", oldest(c.oldest_due, now).map(age).unwrap_or_else(|| "-".into()));
    }
    if stats.channels.is_empty() {
        println!("(no jobs)");
    }
    let windows = WINDOWS.map(|m| format!("{m}m")).join(" / ");
    let list = |counts: &[i64]| counts.iter().map(i64::to_string).collect::<Vec<_>>().join(" / ");
    println!("done in the last {windows}: {}", list(&stats.done_since));
    println!("failed in the last {windows}: {}", list(&stats.failed_since));
    Ok(())
}

/// A state's column header.
fn short(state: JobState) -> &'static str {
    match state {
        JobState::WaitDependencies => "WAITING",
        other => match other.as_str() {
            "pending" => "PENDING",
            "enqueued" => "ENQUEUED",
            "started" => "STARTED",
            "done" => "DONE",
            "failed" => "FAILED",
            "cancelled" => "CANCELLED",
            _ => "?",
        },
    }
}

/// `channels`: each configured channel (`--channels`) with its capacity, and what its jobs and
/// those of its unconfigured sub-channels are doing.
pub(super) fn channels(db: &Database, config: &ChannelConfig, json: bool) -> Result<()> {
    let (stats, now) = read(db)?;
    let paused = db.paused_channels()?;
    let paused_by = |name: &str| {
        paused.iter().find(|(p, _)| name == p || name.starts_with(&format!("{p}."))).map(|(p, _)| p.clone())
    };
    struct Row {
        name: String,
        capacity: usize,
        sequential: bool,
        running: i64,
        pending: i64,
        failed: i64,
        oldest: Option<DateTime<Utc>>,
    }
    let mut rows: Vec<Row> = config
        .channels()
        .map(|c| Row {
            name: c.name.clone(),
            capacity: c.capacity,
            sequential: config.is_sequential(&c.name),
            running: 0,
            pending: 0,
            failed: 0,
            oldest: None,
        })
        .collect();
    for c in &stats.channels {
        let node = config.node_for(&c.channel);
        if let Some(row) = rows.iter_mut().find(|r| r.name == node) {
            row.running += c.count(JobState::Started);
            row.pending += c.count(JobState::Pending);
            row.failed += c.count(JobState::Failed);
            row.oldest = match (row.oldest, c.oldest_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    if json {
        let list: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "channel": r.name,
                    "capacity": r.capacity,
                    "sequential": r.sequential,
                    "running": r.running,
                    "pending": r.pending,
                    "failed": r.failed,
                    "paused_by": paused_by(&r.name),
                    "oldest_pending_seconds": oldest(r.oldest, now).map(|d| d.as_secs_f64()),
                })
            })
            .collect();
        return print_json(&Value::Array(list));
    }
    println!(
        "{:<24}  {:>8}  {:>7}  {:>7}  {:>7}  {:<14}  OLDEST PENDING",
        "CHANNEL", "CAPACITY", "RUNNING", "PENDING", "FAILED", "STATE"
    );
    for r in rows {
        let capacity = if r.sequential { format!("{} seq", r.capacity) } else { r.capacity.to_string() };
        let state = match paused_by(&r.name) {
            Some(p) if p == r.name => "paused".to_owned(),
            Some(p) => format!("paused ({p})"),
            None if r.capacity == 0 => "held (0)".to_owned(),
            None => "running".to_owned(),
        };
        println!(
            "{:<24}  {:>8}  {:>7}  {:>7}  {:>7}  {:<14}  {}",
            r.name,
            capacity,
            r.running,
            r.pending,
            r.failed,
            state,
            oldest(r.oldest, now).map(age).unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
}

/// `functions`: the job functions linked into this binary, with their options.
pub(super) fn functions(json: bool) -> Result<()> {
    let registry = registry()?;
    let names = registry.names();
    if json {
        let list: Vec<Value> = names
            .iter()
            .filter_map(|name| registry.get(name))
            .map(|f| {
                json!({
                    "name": f.name(),
                    "timeout_seconds": f.timeout().map(|t| t.as_secs_f64()),
                    "retry_pattern": f.retry_pattern().map(|p| p.to_string()),
                    "isolated": f.isolated(),
                })
            })
            .collect();
        return print_json(&Value::Array(list));
    }
    if names.is_empty() {
        println!("no job function is linked into this binary");
    }
    for name in names {
        println!("{name}");
    }
    Ok(())
}

/// `schedules`: the periodic schedules of this binary (and those another binary recorded), with
/// their last and next tick and the newest job each queued.
pub(super) fn schedules(db: &Database, json: bool) -> Result<()> {
    let views = crate::ScheduleView::all(db)?;
    let mut rows = Vec::with_capacity(views.len());
    for view in &views {
        let origin = format!("schedule:{}", view.name);
        let last_job = db.jobs(&ListParams::default().origin(origin).limit(1))?.into_iter().next();
        rows.push((view, last_job));
    }
    let time = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339());
    if json {
        let list: Vec<Value> = rows
            .iter()
            .map(|(view, job)| {
                let schedule = view.registered.map(|r| r.schedule);
                json!({
                    "name": view.name,
                    "in_this_binary": view.registered.is_some(),
                    "cron": schedule.map(|s| s.cron()),
                    "time_zone": schedule.map(|s| s.time_zone_name()),
                    "catch_up": schedule.map(|s| s.catch_up_mode().as_str()),
                    "skip_if_unfinished": schedule.map(|s| s.skips_if_unfinished()),
                    "function": schedule.and_then(|s| s.function()).map(|f| f.name()),
                    "last_tick": time(view.last_tick),
                    "next_tick": time(view.next_tick),
                    "last_job": job.as_ref().map(|j| json!({"uuid": j.uuid.to_string(), "state": j.state.as_str(), "eta": time(j.eta)})),
                })
            })
            .collect();
        return print_json(&Value::Array(list));
    }
    if rows.is_empty() {
        println!("no schedule is linked into this binary or recorded in the database");
        return Ok(());
    }
    let short = |t: Option<DateTime<Utc>>| {
        t.map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
    };
    println!(
        "{:<32}  {:<20}  {:<16}  {:<8}  {:<19}  {:<19}  LAST JOB",
        "SCHEDULE", "CRON", "TIME ZONE", "CATCH-UP", "LAST TICK (UTC)", "NEXT TICK (UTC)"
    );
    for (view, job) in rows {
        let (cron, zone, catch_up) = match view.registered.map(|r| r.schedule) {
            Some(s) => {
                let catch_up = if s.skips_if_unfinished() {
                    format!("{},skip", s.catch_up_mode())
                } else {
                    s.catch_up_mode().to_string()
                };
                (s.cron().to_owned(), s.time_zone_name().to_owned(), catch_up)
            }
            None => ("(not in this binary)".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        let last_job = job.map_or_else(|| "-".to_owned(), |j| format!("{} {}", j.uuid, j.state));
        println!(
            "{:<32}  {:<20}  {:<16}  {:<8}  {:<19}  {:<19}  {last_job}",
            super::output::clip(&view.name, 32),
            super::output::clip(&cron, 20),
            zone,
            catch_up,
            short(view.last_tick),
            short(view.next_tick),
        );
    }
    Ok(())
}
