//! Chaos test: jobs that each add one to a counter (half of them in batches, half alone under a
//! lease), several worker processes, one of them killed with SIGKILL every few hundred
//! milliseconds and started again. Mixed in: poison jobs that abort their process on every try
//! (as a stack overflow or the OOM killer would), and jobs that hang on their first try, longer
//! than the workers' hang limit. At the end every ordinary and hung job must be done, every poison
//! job failed after its tries, the counter must equal the number of ordinary and hung jobs, no
//! job's effect may have committed twice, and no job may have run on two workers at once (a run
//! that finds its job's lock taken fails the job, which counts as a double effect).
//!
//! ```text
//! cargo run -p queue-tests --bin chaos -- --backend postgres --workers 3
//! cargo run -p queue-tests --bin chaos -- --backend sqlite --workers 2
//! ```
//!
//! PostgreSQL is reached through `--database-url` or `QUEUE_TEST_POSTGRES_URL`; the test creates
//! and drops a database of its own. It prints one line, and exits non-zero if anything was lost,
//! applied twice, or a poison job did not end failed:
//! `chaos backend=postgres jobs=20000 kills=120 aborts=31 rescued=90 done=19990 poison=10 poison_failed=10 hung=5 hung_done=5 lost=0 double_effects=0 seconds=60.1`

use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use diesel::prelude::*;
use queue_diesel::JobState;
use queue_diesel::prelude::*;
use queue_diesel::store::Store;
use queue_tests::{Counter, chaos_counter, chaos_effect};

#[derive(Debug, Parser)]
#[command(about = "Kill workers while they run jobs; check nothing is lost or applied twice")]
struct Args {
    /// `sqlite` or `postgres`.
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// PostgreSQL server (a database of its own is created on it).
    #[arg(long, env = "QUEUE_TEST_POSTGRES_URL")]
    database_url: Option<String>,
    /// Jobs to run.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// How long each job pauses in its body, in microseconds, so that kills land mid-run.
    #[arg(long, default_value_t = 500)]
    pause_us: u64,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Shortest and longest pause between kills, in milliseconds.
    #[arg(long, default_value_t = 200)]
    kill_min_ms: u64,
    #[arg(long, default_value_t = 600)]
    kill_max_ms: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Jobs that abort their worker process on every try (their function allows 3 tries).
    #[arg(long, default_value_t = 10)]
    poison: usize,
    /// Jobs that hang on their first try, past the workers' hang limit.
    #[arg(long, default_value_t = 5)]
    hung: usize,
    /// How long a hung job hangs, in milliseconds.
    #[arg(long, default_value_t = 4000)]
    hang_ms: u64,
    /// Internal: run as one worker process on this database.
    #[arg(long, hide = true)]
    worker_of: Option<String>,
    /// Internal: the channels of a worker process.
    #[arg(long, hide = true, default_value = "root:4")]
    worker_channels: String,
    /// Internal: the worker process runs the due jobs, then exits.
    #[arg(long, hide = true)]
    worker_until_idle: bool,
}

fn main() -> ExitCode {
    // `chaos cli …`: the queue's command line with this binary's job functions linked in.
    if std::env::args().nth(1).as_deref() == Some("cli") {
        return queue_diesel::cli::main_from(std::env::args_os().skip(1));
    }
    let args = Args::parse();
    if let Some(url) = &args.worker_of {
        // A worker process: the queue's own CLI, with quick rescue so the test moves on.
        let until_idle = args.worker_until_idle.then_some("--until-idle");
        let cli = queue_diesel::cli::Cli::parse_from(
            [
                "chaos-worker",
                "--database-url",
                url,
                "run",
                "--channels",
                &args.worker_channels,
                "--hang-limit",
                "1s",
                "--rescue-interval-ms",
                "500",
                "--rescue-grace-ms",
                "1000",
                "--poll-interval-ms",
                "50",
            ]
            .into_iter()
            .chain(until_idle),
        );
        return match queue_diesel::cli::run(cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chaos worker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match orchestrate(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where the test's database lives, and how to remove it.
struct Scratch {
    url: String,
    drop_pg: Option<(String, String)>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        match &self.drop_pg {
            Some((admin, name)) => {
                if let Ok(mut conn) = PgConnection::establish(admin) {
                    let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn);
                }
            }
            None => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", self.url));
                }
                let _ = std::fs::remove_dir_all(format!("{}.workers", self.url));
            }
        }
    }
}

fn scratch(args: &Args) -> Result<Scratch, Box<dyn std::error::Error>> {
    let name = format!("queue_chaos_{}", std::process::id());
    match args.backend.as_str() {
        "sqlite" => {
            let url = std::env::temp_dir().join(format!("{name}.sqlite3")).to_string_lossy().into_owned();
            let scratch = Scratch { url, drop_pg: None };
            drop(Scratch { url: scratch.url.clone(), drop_pg: None });
            Ok(scratch)
        }
        "postgres" => {
            let admin = args.database_url.clone().ok_or("set --database-url or QUEUE_TEST_POSTGRES_URL")?;
            let mut conn = PgConnection::establish(&admin)?;
            diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn)?;
            diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut conn)?;
            let base = admin.rsplit_once('/').map(|(base, _)| base).unwrap_or(&admin);
            Ok(Scratch { url: format!("{base}/{name}"), drop_pg: Some((admin, name)) })
        }
        other => Err(format!("expected --backend sqlite or postgres, got {other:?}").into()),
    }
}

/// A tiny deterministic generator for the pauses between kills.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The worker processes: killed when dropped, so that an error leaves none behind.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in &mut self.0 {
            let _ = worker.kill();
            let _ = worker.wait();
        }
    }
}

fn spawn_worker(url: &str) -> std::io::Result<Child> {
    Command::new(std::env::current_exe()?)
        .args(["--worker-of", url])
        .env("QUEUE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

fn orchestrate(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let scratch = scratch(args)?;
    let db = Database::builder(&scratch.url).worker(true).no_delay(false).open()?;
    queue_tests::create_chaos_tables(&db)?;
    let counter = Counter { id: 1, n: 0 };
    // Where the poison and hung jobs go: spread evenly among the ordinary ones.
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Plain,
        Poison,
        Hung,
    }
    let mut kinds = vec![Kind::Plain; args.jobs];
    let mut place = |count: usize, offset: usize, kind: Kind| {
        for k in 0..count.min(args.jobs) {
            let mut at = ((4 * k + offset) * args.jobs) / (4 * count);
            while kinds[at % args.jobs] != Kind::Plain {
                at += 1;
            }
            kinds[at % args.jobs] = kind;
        }
    };
    place(args.poison, 2, Kind::Poison);
    place(args.hung, 1, Kind::Hung);
    let (mut poison_ids, mut hung_ids) = (Vec::new(), Vec::new());
    db.transaction(Context::new(), |_| {
        queue_diesel::bulk(|| {
            for (i, kind) in kinds.iter().enumerate() {
                match kind {
                    Kind::Poison => poison_ids.push(Counter::queue().poison(&counter)?.uuid()),
                    Kind::Hung => hung_ids
                        .push(Counter::queue().hang_first(&counter, args.pause_us, args.hang_ms)?.uuid()),
                    Kind::Plain if i % 2 == 0 => {
                        Counter::queue().bump(&counter, args.pause_us)?;
                    }
                    Kind::Plain => {
                        Counter::queue().bump_alone(&counter, args.pause_us)?;
                    }
                }
            }
            Ok::<_, queue_diesel::Error>(())
        })?;
        Ok::<_, queue_diesel::Error>(())
    })?;
    let jobs = args.jobs as i64;

    let start = Instant::now();
    let mut workers =
        Workers((0..args.workers).map(|_| spawn_worker(&scratch.url)).collect::<Result<_, _>>()?);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let (mut kills, mut aborts) = (0u64, 0u64);
    let mut next_kill =
        start + Duration::from_millis(args.kill_min_ms + rng.below(args.kill_max_ms - args.kill_min_ms + 1));
    let deadline = start + Duration::from_secs(args.timeout_secs);
    let count = |state: JobState| -> Result<i64, queue_diesel::Error> {
        Ok(db.conn()?.job_count_by_state()?.into_iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| n))
    };
    loop {
        if count(JobState::Done)? + count(JobState::Failed)? >= jobs || Instant::now() > deadline {
            break;
        }
        // Workers a poison job killed start again, as a supervisor would start them.
        for worker in &mut workers.0 {
            if worker.try_wait()?.is_some() {
                aborts += 1;
                *worker = spawn_worker(&scratch.url)?;
            }
        }
        if Instant::now() >= next_kill {
            let victim = rng.below(workers.0.len() as u64) as usize;
            workers.0[victim].kill()?; // SIGKILL
            workers.0[victim].wait()?;
            kills += 1;
            workers.0[victim] = spawn_worker(&scratch.url)?;
            next_kill = Instant::now()
                + Duration::from_millis(
                    args.kill_min_ms + rng.below(args.kill_max_ms - args.kill_min_ms + 1),
                );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(workers);

    let mut conn = db.conn()?;
    let done = count(JobState::Done)?;
    let failed = count(JobState::Failed)?;
    let n: i64 = chaos_counter::table.find(1).select(chaos_counter::n).first(&mut *conn)?;
    let effects: i64 = chaos_effect::table.count().get_result(&mut *conn)?;
    let job = |id: &queue_diesel::JobId| db.job(id);
    let mut poison_failed = 0;
    for id in &poison_ids {
        let job = job(id)?;
        if job.state == JobState::Failed && job.exc_name.as_deref() == Some("WorkerLost") && job.attempts >= 3
        {
            poison_failed += 1;
        }
    }
    let mut hung_done = 0;
    for id in &hung_ids {
        hung_done += i64::from(job(id)?.state == JobState::Done);
    }
    let attempts: i64 = {
        use queue_diesel::schema::queue_job::dsl;
        dsl::queue_job
            .filter(dsl::func.ne("chaos.counter.poison"))
            .select(diesel::dsl::sum(dsl::attempts))
            .first::<Option<i64>>(&mut *conn)?
            .unwrap_or(0)
    };
    let counted = jobs - poison_ids.len() as i64;
    // A job whose effect committed twice adds one more to the counter; a second commit of its
    // effect row would have failed the job instead.
    let double_effects = (n - effects).max(0) + (failed - poison_failed).max(0);
    let lost = jobs - done - failed;
    let rescued = (attempts - counted).max(0);
    println!(
        "chaos backend={} jobs={jobs} kills={kills} aborts={aborts} rescued={rescued} done={done} poison={} poison_failed={poison_failed} hung={} hung_done={hung_done} lost={lost} double_effects={double_effects} seconds={seconds:.1}",
        db.backend().name(),
        poison_ids.len(),
        hung_ids.len(),
    );
    let ok = done == counted
        && n == counted
        && effects == counted
        && lost == 0
        && double_effects == 0
        && poison_failed == poison_ids.len() as i64
        && hung_done == hung_ids.len() as i64;
    if !ok {
        eprintln!("chaos: failed (counter={n}, effects={effects}, failed jobs={failed})");
        let params = queue_diesel::ListParams::default().state(JobState::Failed).limit(20);
        for job in db.jobs(&params)? {
            eprintln!(
                "  failed {} {} attempts={} interruptions={}: {} {}",
                job.uuid,
                job.func,
                job.attempts,
                job.interruptions,
                job.exc_name.unwrap_or_default(),
                job.exc_message.unwrap_or_default()
            );
        }
    }
    Ok(ok)
}
