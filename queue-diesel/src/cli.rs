//! The `queue-worker` command: run jobs and look at the queue.
//!
//! The bundled `queue-worker` binary links no job function, so it can migrate and show jobs but
//! refuses to `run`. An application builds its own worker binary that links its models and calls
//! [`main`]:
//!
//! ```no_run
//! // src/bin/worker.rs of the application
//! use my_app as _; // link the crate whose #[queueable] methods the worker runs
//! # mod my_app {}
//! fn main() -> std::process::ExitCode {
//!     queue_diesel::cli::main()
//! }
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use queue_core::{ChannelConfig, JobId, JobState, OperatorAction};

use crate::database::{DEFAULT_DATABASE_URL, Database};
use crate::error::{Error, Result};
use crate::function::registry;
use crate::maintenance::Retention;
use crate::maintenance::pruner::parse_keep;
use crate::store::{ListParams, PruneParams, Store};
use crate::worker::{Shutdown, Worker, WorkerConfig};

/// Command line of `queue-worker`.
#[derive(Debug, Parser)]
#[command(name = "queue-worker", version, about = "Run queued jobs and look at the queue")]
pub struct Cli {
    /// Database: a SQLite file path or a postgres:// URL.
    #[arg(long, global = true, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run jobs until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Create or update the queue's tables, then exit; or print them as SQL (--print).
    Migrate(MigrateArgs),
    /// Look at jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// List the job functions linked into this binary.
    Functions,
}

/// Options of `migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Print the queue's schema as SQL for the application's own migration folder (its up.sql)
    /// instead of applying it; it records its steps, so the queue finds nothing left to do.
    #[arg(long)]
    pub print: bool,
    /// With --print: the SQL that drops the queue's tables (the migration's down.sql).
    #[arg(long, requires = "print")]
    pub down: bool,
    /// With --print: the backend to print for (sqlite or postgres), instead of the database
    /// URL's. No database is opened.
    #[arg(long, requires = "print", value_parser = ["sqlite", "postgres"])]
    pub backend: Option<String>,
}

/// Options of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Channels and capacities, e.g. "root:4,root.export:1".
    #[arg(long, env = "QUEUE_CHANNELS", default_value = "root:1")]
    pub channels: String,
    /// Poll period in milliseconds when no notification comes (default: 1000 on PostgreSQL,
    /// 250 on SQLite).
    #[arg(long, env = "QUEUE_POLL_INTERVAL_MS")]
    pub poll_interval_ms: Option<u64>,
    /// Seconds to wait for running jobs on shutdown before giving them back.
    #[arg(long, env = "QUEUE_GRACE_PERIOD_SECS", default_value_t = 30)]
    pub grace_period_secs: u64,
    /// Run the due jobs, then exit (as `run` runs them; SIGINT or SIGTERM stop it gracefully).
    #[arg(long)]
    pub until_idle: bool,
    /// How often to look for jobs whose worker is gone, in milliseconds.
    #[arg(long, env = "QUEUE_RESCUE_INTERVAL_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rescue_interval_ms: u64,
    /// Jobs claimed less than this many milliseconds ago are never rescued.
    #[arg(long, env = "QUEUE_RESCUE_GRACE_MS", default_value_t = 5000)]
    pub rescue_grace_ms: u64,
    /// Most jobs one batch transaction runs; 0 runs every job alone, under a lease.
    #[arg(long, env = "QUEUE_BATCH_JOBS", default_value_t = crate::worker::DEFAULT_BATCH_JOBS)]
    pub batch_jobs: usize,
    /// A batch starts no new job once it has run this many milliseconds, then commits.
    #[arg(long, env = "QUEUE_BATCH_MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_ms: u64,
    /// How long done and cancelled jobs are kept: a duration ("1d", "12h") or "forever".
    #[arg(long, env = "QUEUE_KEEP_DONE", default_value = "1d")]
    pub keep_done: String,
    /// How long failed jobs are kept: a duration ("30d") or "forever".
    #[arg(long, env = "QUEUE_KEEP_FAILED", default_value = "30d")]
    pub keep_failed: String,
    /// A job running in a batch longer than this frees its neighbours and runs alone from then
    /// on; on SQLite, no job without a timeout holds the write lock longer ("60s", "2m").
    #[arg(long, env = "QUEUE_HANG_LIMIT", default_value = "60s")]
    pub hang_limit: String,
    /// Folder of the files that show this host's workers alive and record what they run
    /// (default: beside a SQLite database, or in the temporary directory for PostgreSQL).
    #[arg(long, env = "QUEUE_STATE_DIR")]
    pub state_dir: Option<std::path::PathBuf>,
}

/// `jobs` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Jobs, newest first.
    List {
        /// Only jobs in this state (pending, started, done, failed, cancelled, …).
        #[arg(long)]
        state: Option<String>,
        /// Only jobs of this function.
        #[arg(long)]
        func: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Everything about one job.
    Show {
        /// The job's uuid.
        uuid: String,
    },
    /// Number of jobs per state.
    Count,
    /// Run failed or cancelled jobs again, from zero tries.
    Requeue {
        /// Job uuids.
        #[arg(required = true)]
        uuids: Vec<String>,
    },
    /// Cancel jobs that have not finished.
    Cancel {
        /// Job uuids.
        #[arg(required = true)]
        uuids: Vec<String>,
    },
    /// Mark jobs done without running them.
    Done {
        /// Job uuids.
        #[arg(required = true)]
        uuids: Vec<String>,
    },
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

/// Parse the process arguments, run, and turn the outcome into an exit code (errors are printed
/// with their causes).
pub fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("queue-worker: {}", crate::run::chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Log to stderr at the level in `QUEUE_LOG` (error, warn, info, debug, trace; default info).
pub fn init_logging() {
    let level = std::env::var("QUEUE_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).try_init();
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => {
            // Check everything that can be checked before touching the database.
            let channels: ChannelConfig = args.channels.parse()?;
            if registry()?.is_empty() {
                return Err(Error::NoFunctions);
            }
            // Room for a replacement executor per overrunning job still holding its connection.
            let pool = u32::try_from(2 * channels.total_capacity() + 2).unwrap_or(u32::MAX);
            let db = Database::builder(&cli.database_url).worker(true).pool_size(pool.max(4)).open()?;
            let config = WorkerConfig {
                channels,
                poll_interval: args.poll_interval_ms.map(Duration::from_millis),
                grace_period: Duration::from_secs(args.grace_period_secs),
                rescue_interval: Duration::from_millis(args.rescue_interval_ms),
                rescue_grace: Duration::from_millis(args.rescue_grace_ms),
                batch_jobs: args.batch_jobs,
                batch_time: Duration::from_millis(args.batch_ms),
                retention: Retention {
                    done: parse_keep(&args.keep_done, "--keep-done")?,
                    failed: parse_keep(&args.keep_failed, "--keep-failed")?,
                },
                hang_limit: crate::worker::parse_limit(&args.hang_limit, "--hang-limit")?,
                state_dir: args.state_dir.filter(|d| !d.as_os_str().is_empty()),
                ..WorkerConfig::default()
            };
            let worker = Worker::new(db, config)?;
            let shutdown = Shutdown::new();
            shutdown.on_signals()?;
            if args.until_idle {
                let stats = worker.run_until_idle_with(&shutdown)?;
                println!("ran {} job(s)", stats.finished);
                return Ok(());
            }
            worker.run(&shutdown)?;
            Ok(())
        }
        Command::Migrate(args) if args.print => {
            let backend = match args.backend.as_deref() {
                Some("postgres") => crate::Backend::Postgres,
                Some(_) => crate::Backend::Sqlite,
                None => crate::Backend::from_url(&cli.database_url)?,
            };
            print!("{}", crate::store::schema::script(backend, !args.down));
            Ok(())
        }
        Command::Migrate(_) => {
            let db = Database::builder(&cli.database_url).migrate(false).open()?;
            db.migrate()?;
            println!("queue schema is up to date ({})", db.url());
            Ok(())
        }
        Command::Functions => {
            let names = registry()?.names();
            if names.is_empty() {
                println!("no job function is linked into this binary");
            }
            for name in names {
                println!("{name}");
            }
            Ok(())
        }
        Command::Jobs(command) => {
            let db = Database::open(&cli.database_url)?;
            let mut conn = db.conn()?;
            match command {
                JobsCommand::List { state, func, limit } => {
                    let state = state.map(|s| s.parse::<JobState>()).transpose()?;
                    let jobs = conn.job_list(&ListParams { state, func, limit })?;
                    println!(
                        "{:<36}  {:<17}  {:>4}  {:<16}  {:>3}  FUNCTION",
                        "UUID", "STATE", "PRIO", "CHANNEL", "TRY"
                    );
                    for job in jobs {
                        println!(
                            "{:<36}  {:<17}  {:>4}  {:<16}  {:>3}  {}",
                            job.uuid, job.state, job.priority, job.channel, job.attempts, job.func
                        );
                    }
                    Ok(())
                }
                JobsCommand::Requeue { uuids } => act(&db, &uuids, OperatorAction::Requeue),
                JobsCommand::Cancel { uuids } => act(&db, &uuids, OperatorAction::Cancel),
                JobsCommand::Done { uuids } => act(&db, &uuids, OperatorAction::SetDone),
                JobsCommand::Show { uuid } => {
                    let id = parse_uuid(&uuid)?;
                    let job = conn.job_get(&id)?.ok_or_else(|| Error::JobNotFound(uuid.clone()))?;
                    print!("{}", show(&job));
                    Ok(())
                }
                JobsCommand::Prune { older_than, state } => {
                    let states =
                        state.iter().map(|s| s.parse::<JobState>()).collect::<Result<Vec<_>, _>>()?;
                    let age = if older_than.trim() == "0s" || older_than.trim() == "0" {
                        Duration::ZERO
                    } else {
                        queue_core::options::parse_duration(&older_than)?
                    };
                    let mut deleted = 0;
                    // `None`: older than any date, so nothing is that old.
                    while let Some(before) = crate::maintenance::pruner::cutoff(db.now(), age) {
                        let n = conn.job_prune(&PruneParams { states: &states, before, limit: 5_000 })?;
                        deleted += n;
                        if n < 5_000 {
                            break;
                        }
                    }
                    println!("deleted {deleted} job(s)");
                    Ok(())
                }
                JobsCommand::Count => {
                    for (state, n) in conn.job_count_by_state()? {
                        println!("{state:<17} {n}");
                    }
                    Ok(())
                }
            }
        }
    }
}

fn parse_uuid(text: &str) -> Result<JobId> {
    text.parse().map_err(|_| Error::Config(format!("expected a job uuid, got {text:?}")))
}

/// Apply an operator action to each job; report each, fail if any was refused.
fn act(db: &Database, uuids: &[String], action: OperatorAction) -> Result<()> {
    let mut refused = 0;
    for text in uuids {
        match parse_uuid(text).and_then(|id| db.job_action(&id, action)) {
            Ok(job) => println!("{} {}", job.uuid, job.state),
            Err(e) => {
                eprintln!("{text}: {e}");
                refused += 1;
            }
        }
    }
    if refused > 0 {
        return Err(Error::Config(format!(
            "{refused} of {} job(s) refused to {}",
            uuids.len(),
            action.verb()
        )));
    }
    Ok(())
}

/// A job as `name: value` lines.
fn show(job: &queue_core::Job) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let time = |v: Option<chrono::DateTime<chrono::Utc>>| v.map(|t| t.to_rfc3339()).unwrap_or_default();
    let fields = [
        ("uuid", job.uuid.to_string()),
        ("state", job.state.to_string()),
        ("function", job.func.clone()),
        ("description", job.description.clone()),
        ("model", job.model.clone()),
        ("records", format!("{:?}", job.record_ids)),
        ("args", job.args.to_string()),
        ("user", job.context.user_id().map(|u| u.to_string()).unwrap_or_default()),
        ("context", serde_json::Value::Object(job.context.values().clone()).to_string()),
        ("channel", job.channel.clone()),
        ("priority", job.priority.to_string()),
        ("eta", time(job.eta)),
        (
            "attempts",
            format!(
                "{} of {}",
                job.attempts,
                if job.max_retries == 0 { "unlimited".to_owned() } else { job.max_retries.to_string() }
            ),
        ),
        ("identity key", opt(&job.identity_key)),
        ("created", job.date_created.to_rfc3339()),
        ("started", time(job.date_started)),
        ("done", time(job.date_done)),
        ("worker", opt(&job.worker_id)),
        ("result", opt(&job.result)),
        ("exc name", opt(&job.exc_name)),
        ("exc message", opt(&job.exc_message)),
        ("exc info", opt(&job.exc_info)),
    ];
    fields.iter().map(|(k, v)| format!("{k:<13} {v}\n")).collect()
}
