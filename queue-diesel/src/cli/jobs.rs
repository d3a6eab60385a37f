//! `queue-worker jobs …`: list, show, count, act on jobs one by one or by filter, prune.

use std::time::Duration;

use clap::{Args, Subcommand};
use queue_core::{JobId, JobState, OperatorAction};
use serde_json::{Value, json};

use super::output::{Progress, clip, confirm, job_json, print_json};
use crate::database::Database;
use crate::error::{Error, Result};
use crate::store::{ListParams, PruneParams, Store, Views};

/// Most jobs `jobs list` prints at once.
pub const MAX_LIST: i64 = 10_000;

/// `jobs` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Jobs, newest first.
    List {
        /// Which jobs.
        #[command(flatten)]
        filter: Filter,
        /// At most this many (1 to 10000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=MAX_LIST))]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Everything about one job, with the jobs it waits for and the jobs waiting for it.
    Show {
        /// The job's uuid.
        uuid: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Number of jobs per state (every state, zeros included).
    Count {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run failed or cancelled jobs again, from zero tries: the jobs named, or every job a
    /// filter matches.
    Requeue(Act),
    /// Cancel jobs that have not finished: the jobs named, or every job a filter matches.
    Cancel(Act),
    /// Mark jobs done without running them: the jobs named, or every job a filter matches.
    Done(Act),
    /// Delete finished jobs that finished more than a given time ago.
    Prune {
        /// Age past which finished jobs are deleted: "7d", "12h", "0s" for all.
        #[arg(long)]
        older_than: String,
        /// Which finished states: done, cancelled, failed (repeat or separate with commas).
        #[arg(long, value_delimiter = ',', default_values_t = ["done".to_owned(), "cancelled".to_owned()])]
        state: Vec<String>,
    },
}

/// Which jobs.
#[derive(Debug, Clone, Default, Args)]
pub struct Filter {
    /// Only jobs in this state (pending, started, done, failed, cancelled, …).
    #[arg(long)]
    pub state: Option<String>,
    /// Only jobs of this function.
    #[arg(long)]
    pub func: Option<String>,
    /// Only jobs of this channel (not its sub-channels).
    #[arg(long)]
    pub channel: Option<String>,
    /// Only jobs of this origin: `schedule:<name>` for the jobs a schedule queued.
    #[arg(long)]
    pub origin: Option<String>,
}

impl Filter {
    fn params(&self) -> Result<ListParams> {
        let mut params = ListParams::default();
        if let Some(state) = &self.state {
            params = params.state(state.parse::<JobState>()?);
        }
        if let Some(func) = &self.func {
            params = params.func(func.clone());
        }
        if let Some(channel) = &self.channel {
            params = params.channel(channel.clone());
        }
        if let Some(origin) = &self.origin {
            params = params.origin(origin.clone());
        }
        Ok(params)
    }

    fn is_empty(&self) -> bool {
        self.state.is_none() && self.func.is_none() && self.channel.is_none() && self.origin.is_none()
    }
}

/// The jobs an action applies to.
#[derive(Debug, Args)]
pub struct Act {
    /// Job uuids.
    pub uuids: Vec<String>,
    /// Or every job this filter matches.
    #[command(flatten)]
    pub filter: Filter,
    /// Do not ask for confirmation of an action by filter.
    #[arg(long)]
    pub yes: bool,
}

/// Run a `jobs` subcommand on `db`.
pub(super) fn run(db: &Database, command: JobsCommand) -> Result<()> {
    let mut conn = db.conn()?;
    match command {
        JobsCommand::List { filter, limit, json } => {
            let jobs = conn.job_list(&filter.params()?.limit(limit))?;
            if json {
                return print_json(&Value::Array(jobs.iter().map(|j| job_json(j, None)).collect()));
            }
            println!(
                "{:<36}  {:<17}  {:>4}  {:<16}  {:>3}  {:<20}  {:<32}  {:<32}  {:<24}  ERROR",
                "UUID", "STATE", "PRIO", "CHANNEL", "TRY", "ETA", "FUNCTION", "DESCRIPTION", "ORIGIN"
            );
            for job in jobs {
                let eta = job.eta.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default();
                println!(
                    "{:<36}  {:<17}  {:>4}  {:<16}  {:>3}  {:<20}  {:<32}  {:<32}  {:<24}  {}",
                    job.uuid,
                    job.state,
                    job.priority,
                    clip(&job.channel, 16),
                    job.attempts,
                    eta,
                    clip(&job.func, 32),
                    clip(&job.description, 32),
                    clip(job.origin.as_deref().unwrap_or_default(), 24),
                    clip(&job.error_line(), 80),
                );
            }
            Ok(())
        }
        JobsCommand::Show { uuid, json } => {
            let id = parse_uuid(&uuid)?;
            let job = conn.job_get(&id)?.ok_or_else(|| Error::JobNotFound(uuid.clone()))?;
            let family = conn.job_family(job.id)?;
            let progress = conn.job_progress(job.id)?;
            if json {
                let mut value = job_json(&job, Some(&family));
                if let Value::Object(map) = &mut value {
                    let progress =
                        progress.map(|p| json!({"done": p.done, "total": p.total, "at": p.at.to_rfc3339()}));
                    map.insert("progress".into(), progress.unwrap_or(Value::Null));
                }
                return print_json(&value);
            }
            print!("{}", super::show(&job));
            if let Some(p) = progress {
                let percent = (p.ratio() * 100.0).round();
                println!(
                    "{:<13} {} of {} ({percent}%), at {}",
                    "progress",
                    p.done,
                    p.total,
                    p.at.to_rfc3339()
                );
            }
            for (name, jobs) in [("parents", &family.parents), ("children", &family.children)] {
                let list: Vec<String> =
                    jobs.iter().map(|(uuid, state)| format!("{uuid} ({state})")).collect();
                println!("{name:<13} {}", list.join(", "));
            }
            Ok(())
        }
        JobsCommand::Count { json } => {
            let found = conn.job_count_by_state()?;
            let counts: Vec<(JobState, i64)> = JobState::ALL
                .iter()
                .map(|s| (*s, found.iter().find(|(f, _)| f == s).map_or(0, |(_, n)| *n)))
                .collect();
            if json {
                let map = counts.iter().map(|(s, n)| (s.as_str().to_owned(), json!(n))).collect();
                return print_json(&Value::Object(map));
            }
            for (state, n) in counts {
                println!("{:<17} {n}", state.as_str());
            }
            Ok(())
        }
        JobsCommand::Requeue(act) => apply(db, act, OperatorAction::Requeue),
        JobsCommand::Cancel(act) => apply(db, act, OperatorAction::Cancel),
        JobsCommand::Done(act) => apply(db, act, OperatorAction::SetDone),
        JobsCommand::Prune { older_than, state } => {
            let states = state.iter().map(|s| s.parse::<JobState>()).collect::<Result<Vec<_>, _>>()?;
            let age = if older_than.trim() == "0s" || older_than.trim() == "0" {
                Duration::ZERO
            } else {
                queue_core::options::parse_duration(&older_than)?
            };
            let mut deleted = 0;
            let mut progress = Progress::new("pruning", None);
            // `None`: older than any date, so nothing is that old.
            while let Some(before) = crate::maintenance::pruner::cutoff(db.now(), age) {
                let n = conn.job_prune(&PruneParams { states: &states, before, limit: 5_000 })?;
                deleted += n;
                progress.set(deleted);
                if n < 5_000 {
                    break;
                }
            }
            progress.finish();
            println!("deleted {deleted} job(s)");
            Ok(())
        }
    }
}

pub(super) fn parse_uuid(text: &str) -> Result<JobId> {
    text.parse().map_err(|_| Error::Config(format!("expected a job uuid, got {text:?}")))
}

/// Apply an operator action to the jobs named, or (confirmed) to every job the filter matches;
/// report each refusal, and fail if any.
fn apply(db: &Database, act: Act, action: OperatorAction) -> Result<()> {
    let verb = action.verb();
    let uuids: Vec<JobId> = match (act.uuids.is_empty(), act.filter.is_empty()) {
        (false, true) => act.uuids.iter().map(|u| parse_uuid(u)).collect::<Result<_>>()?,
        (true, false) => {
            let found = db.job_uuids(&act.filter.params()?)?;
            if found.is_empty() {
                println!("no job matches; nothing to {verb}");
                return Ok(());
            }
            if !confirm(verb, found.len(), act.yes)? {
                println!("nothing changed");
                return Ok(());
            }
            found
        }
        (false, false) => {
            return Err(Error::Config(format!("name the jobs to {verb} or give a filter, not both")));
        }
        (true, true) => {
            return Err(Error::Config(format!(
                "name the jobs to {verb}, or choose them with --state, --func or --channel"
            )));
        }
    };
    let by_filter = act.uuids.is_empty();
    let mut refused = 0;
    let mut progress = Progress::new(verb, Some(uuids.len()));
    for (i, uuid) in uuids.iter().enumerate() {
        match db.job_action(uuid, action) {
            Ok(job) if !by_filter => println!("{} {}", job.uuid, job.state),
            Ok(_) => {}
            Err(e) => {
                progress.finish();
                eprintln!("{uuid}: {e}");
                refused += 1;
            }
        }
        progress.set(i + 1);
    }
    progress.finish();
    if by_filter {
        println!("{}: {} of {} job(s)", verb, uuids.len() - refused, uuids.len());
    }
    if refused > 0 {
        return Err(Error::Config(format!("{refused} of {} job(s) refused to {verb}", uuids.len())));
    }
    Ok(())
}
