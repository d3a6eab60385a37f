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

mod jobs;
mod logging;
mod output;
mod overview;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use queue_core::ChannelConfig;

pub use jobs::{Act, Filter, JobsCommand};
pub use logging::{LogFormat, parse_filter};

use crate::connection::Backend;
use crate::database::{DEFAULT_DATABASE_URL, Database};
use crate::error::{Error, Result};
use crate::function::registry;
use crate::maintenance::Retention;
use crate::maintenance::pruner::parse_keep;
use crate::worker::{Shutdown, Worker, WorkerConfig};

/// Command line of `queue-worker`.
#[derive(Debug, Parser)]
#[command(name = "queue-worker", version, about = "Run queued jobs and look at the queue")]
pub struct Cli {
    /// Database: a SQLite file path or a postgres:// URL.
    #[arg(long, global = true, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// How log lines look: text (coloured on a terminal) or json (one object per line). Which
    /// lines: QUEUE_LOG, else RUST_LOG (a level, or directives like "info,my_app=debug").
    #[arg(long, global = true, env = "QUEUE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
    /// Look at jobs, and act on them.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Jobs per channel and state, the oldest pending job of each channel, and the jobs
    /// finished in the last minutes.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The configured channels: capacity, running, pending and failed jobs, oldest pending job.
    Channels {
        /// Channels and capacities, as given to `run`.
        #[arg(long, env = "QUEUE_CHANNELS", default_value = "root:1")]
        channels: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the web dashboard until SIGINT/SIGTERM: jobs, a job, actions, channels, functions.
    #[cfg(feature = "dashboard")]
    Dashboard {
        /// Address to listen on; another than loopback needs a token.
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: String,
        /// The channels the workers run, for the channels page.
        #[arg(long, env = "QUEUE_CHANNELS", default_value = "root:1")]
        channels: String,
        /// The dashboard's options.
        #[command(flatten)]
        options: DashboardArgs,
    },
    /// Pause a channel and every channel below it: no job of theirs starts until `resume`;
    /// running jobs finish. Every worker sees it within a second.
    Pause {
        /// The channel, e.g. root.export.
        channel: String,
    },
    /// Resume a paused channel.
    Resume {
        /// The channel, e.g. root.export.
        channel: String,
    },
    /// The periodic schedules: pattern, time zone, last and next tick, newest job.
    Schedules {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the job functions linked into this binary.
    Functions {
        /// Print JSON, with each function's options.
        #[arg(long)]
        json: bool,
    },
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
    /// Queue the jobs of the binary's periodic schedules as their ticks come (on or off). Any
    /// number of workers may: each tick is queued once.
    #[arg(long, env = "QUEUE_SCHEDULES", default_value = "on", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub schedules: bool,
    /// Folder of the files that show this host's workers alive and record what they run
    /// (default: beside a SQLite database, or in the temporary directory for PostgreSQL).
    #[arg(long, env = "QUEUE_STATE_DIR")]
    pub state_dir: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics at http://ADDRESS/metrics, e.g. 127.0.0.1:9187 (they show job
    /// names and counts: keep the address private).
    #[arg(long, env = "QUEUE_METRICS", value_name = "ADDRESS")]
    pub metrics: Option<String>,
    /// Serve the web dashboard at http://ADDRESS/ too (see `dashboard`).
    #[cfg(feature = "dashboard")]
    #[arg(long, value_name = "ADDRESS")]
    pub dashboard: Option<String>,
    /// The dashboard's options.
    #[cfg(feature = "dashboard")]
    #[command(flatten)]
    pub dashboard_options: DashboardArgs,
}

/// Options of the web dashboard.
#[cfg(feature = "dashboard")]
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// The secret actions need (and every page, off loopback); the browser gives it once as
    /// ?token=….
    #[arg(long, env = "QUEUE_DASHBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A link from a job to its records: model=url-template with {id}, e.g.
    /// `res.partner=https://erp.example.org/partners/{id}` (repeat, or separate with commas).
    #[arg(long = "link", env = "QUEUE_DASHBOARD_LINKS", value_delimiter = ',')]
    pub links: Vec<String>,
    /// Seconds between refreshes of the list pages; 0 for none.
    #[arg(long, env = "QUEUE_DASHBOARD_REFRESH_SECS", default_value_t = 10)]
    pub refresh_secs: u32,
}

#[cfg(feature = "dashboard")]
impl DashboardArgs {
    fn config(&self, bind: &str, channels: ChannelConfig) -> Result<crate::dashboard::DashboardConfig> {
        let mut config = crate::dashboard::DashboardConfig::new(bind)
            .token(self.token.clone())
            .channels(channels)
            .refresh_secs(self.refresh_secs);
        for spec in self.links.iter().filter(|l| !l.trim().is_empty()) {
            config = config.link(spec)?;
        }
        Ok(config)
    }
}

/// Parse the process arguments, run, and turn the outcome into an exit code (errors are printed
/// with their causes).
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// [`main`] with these arguments (the first is the program's name).
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Err(e) = logging::init(cli.log_format) {
        eprintln!("queue-worker: {}", crate::run::chain(&e));
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("queue-worker: {}", crate::run::chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Log to standard error as `queue-worker` does: the filter in `QUEUE_LOG`, else `RUST_LOG`,
/// else `info`; text, or JSON when `QUEUE_LOG_FORMAT=json`. For an application's own worker
/// binary that does not go through [`main`].
pub fn init_logging() -> Result<()> {
    let format = match std::env::var("QUEUE_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        Ok("text") | Ok("") | Err(_) => LogFormat::Text,
        Ok(other) => {
            return Err(Error::Config(format!("QUEUE_LOG_FORMAT={other:?}: expected text or json")));
        }
    };
    logging::init(format)
}

/// File name endings taken for SQLite databases when the URL has no scheme.
const SQLITE_EXTENSIONS: [&str; 5] = ["sqlite", "sqlite3", "db", "db3", "s3db"];

/// Refuse a URL that is neither a known scheme nor a file path with a SQLite ending: a typo
/// must not create a stray database file.
pub fn check_url(url: &str) -> Result<Backend> {
    let backend = Backend::from_url(url)?;
    let lower = url.trim().to_ascii_lowercase();
    let explicit = lower.starts_with("sqlite:") || lower.starts_with("file:");
    let path = std::path::Path::new(url.trim());
    let known = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| SQLITE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
    if backend == Backend::Sqlite && !explicit && !known {
        return Err(Error::Config(format!(
            "{:?} is neither a postgres:// URL nor a SQLite file ending in .{}; write sqlite://{} to use that file anyway",
            crate::database::redact(url),
            SQLITE_EXTENSIONS.join(", ."),
            url.trim()
        )));
    }
    Ok(backend)
}

/// Open a database that already holds the queue's tables, up to date, without creating or
/// changing anything: a missing or unmigrated database is an error that says to migrate.
pub fn open_existing(url: &str) -> Result<Database> {
    let backend = check_url(url)?;
    if backend == Backend::Sqlite {
        let file = url.trim().strip_prefix("sqlite://").unwrap_or(url.trim());
        let file = file.split('?').next().unwrap_or(file);
        if !std::path::Path::new(file).exists() {
            return Err(Error::Config(format!(
                "there is no database at {file:?}; create it with `queue-worker migrate`, or give --database-url"
            )));
        }
    }
    let db = Database::builder(url).migrate(false).pool_size(2).keep_idle(false).open()?;
    let pending = db.schema_pending()?;
    if !pending.is_empty() {
        let all = pending.len() == crate::store::schema::steps(backend).len();
        let what = if all {
            "has no queue tables".to_owned()
        } else {
            format!("has queue tables {} step(s) behind this binary", pending.len())
        };
        return Err(Error::Config(format!("{} {what}: run `queue-worker migrate` first", db.url())));
    }
    Ok(db)
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
            check_url(&cli.database_url)?;
            // No idle connection kept: one still being opened at exit could crash the process.
            let db = Database::builder(&cli.database_url)
                .worker(true)
                .pool_size(pool.max(4))
                .keep_idle(false)
                .open()?;
            if let Some(address) = &args.metrics {
                crate::metrics::serve(address, db.clone(), channels.clone())?;
            }
            #[cfg(feature = "dashboard")]
            if let Some(address) = &args.dashboard {
                let config = args.dashboard_options.config(address, channels.clone())?;
                crate::dashboard::serve(db.clone(), config)?;
            }
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
                schedules: args.schedules,
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
            check_url(&cli.database_url)?;
            let db = Database::builder(&cli.database_url).migrate(false).keep_idle(false).open()?;
            let mut bar: Option<output::Progress> = None;
            db.migrate_telling(|_, done, total| {
                bar.get_or_insert_with(|| output::Progress::new("migrating", Some(total))).set(done)
            })?;
            if let Some(mut bar) = bar {
                bar.finish();
            }
            println!("queue schema is up to date ({})", db.url());
            Ok(())
        }
        Command::Functions { json } => overview::functions(json),
        Command::Schedules { json } => overview::schedules(&open_existing(&cli.database_url)?, json),
        Command::Pause { channel } => {
            let db = open_existing(&cli.database_url)?;
            let newly = db.pause_channel(&channel)?;
            println!("{channel} {}", if newly { "paused" } else { "was paused already" });
            Ok(())
        }
        Command::Resume { channel } => {
            let db = open_existing(&cli.database_url)?;
            if db.resume_channel(&channel)? {
                println!("{channel} resumed");
                return Ok(());
            }
            let held_by = db
                .paused_channels()?
                .into_iter()
                .map(|(c, _)| c)
                .find(|c| channel.starts_with(&format!("{c}.")));
            match held_by {
                Some(above) => Err(Error::Config(format!(
                    "{channel} is not paused itself, but {above} above it is: resume {above}"
                ))),
                None => Err(Error::Config(format!("{channel} is not paused"))),
            }
        }
        Command::Jobs(command) => jobs::run(&open_existing(&cli.database_url)?, command),
        Command::Stats { json } => overview::stats(&open_existing(&cli.database_url)?, json),
        Command::Channels { channels, json } => {
            let config: ChannelConfig = channels.parse()?;
            overview::channels(&open_existing(&cli.database_url)?, &config, json)
        }
        #[cfg(feature = "dashboard")]
        Command::Dashboard { bind, channels, options } => {
            let config = options.config(&bind, channels.parse()?)?;
            let db = open_existing(&cli.database_url)?;
            let shutdown = Shutdown::new();
            shutdown.on_signals()?;
            let bound = crate::dashboard::serve(db, config)?;
            println!("dashboard at http://{bound}/ (stop with Ctrl-C)");
            while !shutdown.is_triggered() {
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        }
    }
}

/// A job as `name: value` lines.
pub(super) fn show(job: &queue_core::Job) -> String {
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
        ("origin", opt(&job.origin)),
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
