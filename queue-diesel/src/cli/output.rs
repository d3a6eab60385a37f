//! How the command line prints: JSON for scripts, tables for people, a progress line and a
//! confirmation on a terminal.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use queue_core::Job;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::store::Family;

/// Print `value` as pretty JSON on standard output.
pub(super) fn print_json(value: &Value) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| Error::Config(format!("cannot print JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// A job as JSON; with its family, its parents and children too.
pub(super) fn job_json(job: &Job, family: Option<&Family>) -> Value {
    let time = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339());
    let mut value = json!({
        "uuid": job.uuid.to_string(),
        "state": job.state.as_str(),
        "function": job.func,
        "model": job.model,
        "description": job.description,
        "records": job.record_ids,
        "args": job.args,
        "user": job.context.user_id(),
        "context": Value::Object(job.context.values().clone()),
        "channel": job.channel,
        "priority": job.priority,
        "eta": time(job.eta),
        "attempts": job.attempts,
        "max_retries": job.max_retries,
        "identity_key": job.identity_key,
        "origin": job.origin,
        "created": job.date_created.to_rfc3339(),
        "started": time(job.date_started),
        "done": time(job.date_done),
        "worker": job.worker_id,
        "result": job.result,
        "exc_name": job.exc_name,
        "exc_message": job.exc_message,
        "exc_info": job.exc_info,
    });
    if let (Some(family), Value::Object(map)) = (family, &mut value) {
        let list = |jobs: &[(queue_core::JobId, queue_core::JobState)]| {
            jobs.iter()
                .map(|(uuid, state)| json!({"uuid": uuid.to_string(), "state": state.as_str()}))
                .collect()
        };
        map.insert("parents".into(), Value::Array(list(&family.parents)));
        map.insert("children".into(), Value::Array(list(&family.children)));
    }
    value
}

/// `text` cut to `width` characters, an ellipsis marking the cut.
pub(super) fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A duration for people: `45s`, `3m 12s`, `2h 5m`, `3d 4h`.
pub(super) fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Ask before changing `count` jobs: yes with `--yes`; else on a terminal, the answer to a
/// question; else a refusal saying to pass `--yes`.
pub(super) fn confirm(what: &str, count: usize, yes: bool) -> Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::Config(format!(
            "{what} {count} job(s)? Standard input is not a terminal to ask: pass --yes to confirm"
        )));
    }
    eprint!("{what} {count} job(s)? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|source| Error::Io { what: "failed to read the answer", source })?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// A progress line on standard error, drawn only on a terminal and at most ten times a second.
#[derive(Debug)]
pub(super) struct Progress {
    label: String,
    total: Option<usize>,
    shown: Option<Instant>,
    draw: bool,
}

impl Progress {
    pub(super) fn new(label: impl Into<String>, total: Option<usize>) -> Progress {
        Progress { label: label.into(), total, shown: None, draw: std::io::stderr().is_terminal() }
    }

    /// `done` units so far.
    pub(super) fn set(&mut self, done: usize) {
        if !self.draw || self.shown.is_some_and(|at| at.elapsed() < Duration::from_millis(100)) {
            return;
        }
        self.shown = Some(Instant::now());
        eprint!("\r{}", self.line(done));
        let _ = std::io::stderr().flush();
    }

    fn line(&self, done: usize) -> String {
        match self.total {
            Some(total) if total > 0 => {
                let width = 30;
                let filled = (done.min(total) * width) / total;
                format!(
                    "{} [{}{}] {done}/{total}",
                    self.label,
                    "#".repeat(filled),
                    "-".repeat(width - filled)
                )
            }
            _ => format!("{} {done}", self.label),
        }
    }

    /// Clear the line.
    pub(super) fn finish(&mut self) {
        if self.draw && self.shown.is_some() {
            eprint!("\r{}\r", " ".repeat(self.line(self.total.unwrap_or(0)).chars().count() + 8));
            let _ = std::io::stderr().flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_clips_read_well() {
        assert_eq!(age(Duration::from_secs(42)), "42s");
        assert_eq!(age(Duration::from_secs(192)), "3m 12s");
        assert_eq!(age(Duration::from_secs(7500)), "2h 5m");
        assert_eq!(age(Duration::from_secs(3 * 86_400 + 4 * 3600)), "3d 4h");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
        let bar = Progress { label: "requeue".into(), total: Some(10), shown: None, draw: false };
        assert_eq!(bar.line(5), format!("requeue [{}{}] 5/10", "#".repeat(15), "-".repeat(15)));
    }
}
