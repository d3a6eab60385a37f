//! The queue's benchmark. Run with: `cargo run --release -p queue-bench -- [--database-url URL] [--json]`
//! (SQLite in a temporary file by default; a PostgreSQL URL gets a database of its own, dropped
//! afterwards). Prints a table, or with `--json` one JSON object:
//! `enqueue_single`, `raw_insert_single` (the same row inserted by hand, one per transaction,
//! measured with `enqueue_single`), `enqueue_bulk`, `process`, `process_write`, `process_isolated` (no-op jobs
//! of an isolated function: each claimed under a lease and run in its own transaction; a quarter
//! of `--jobs`), `latency_p50_ms`,
//! `latency_p99_ms`, `latency_max_ms` (queued in this process), `latency_remote_p50_ms`,
//! `latency_remote_p99_ms`, `latency_remote_max_ms` (queued through another database handle, as
//! from another process; each over `--latency-jobs`, p99 the third-highest of 200), `raw_claim_complete`, `raw_insert_jobs` (the rows `enqueue_bulk`
//! stores, into the queue's table, by hand), `raw_claim_complete_batch`,
//! `raw_insert_bulk`, `history` (jobs/s unless named `_ms`), `peak_rss_mb`, and
//! `process_rss_growth_mb` (how much the resident memory grew while workers processed queues).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use diesel::prelude::*;
use queue_diesel::prelude::*;
use queue_diesel::{Backend, JobState, Shutdown, Worker, WorkerConfig};

diesel::table! {
    /// The model the benchmark's jobs run on.
    bench_item (id) {
        /// Row id.
        id -> BigInt,
        /// Written by `write_one`.
        n -> BigInt,
    }
}

diesel::table! {
    /// Rows written by `write_one`.
    bench_write (id) {
        /// Row id.
        id -> BigInt,
        /// A value.
        v -> BigInt,
    }
}

/// The benchmark's model.
#[derive(Debug, Queryable, Selectable, Model)]
#[diesel(table_name = bench_item)]
#[queue(model = "bench.item")]
pub struct Item {
    /// Row id.
    pub id: i64,
    /// Count.
    pub n: i64,
}

/// When each latency job started, by its mark.
static STARTED: Mutex<Option<HashMap<i64, Instant>>> = Mutex::new(None);

#[queueable]
impl Item {
    /// Does nothing.
    pub fn noop(_records: Vec<Item>) -> JobResult {
        Ok(())
    }

    /// Does nothing, each job alone in its own transaction (claimed under a lease).
    #[job(isolated)]
    pub fn noop_alone(_records: Vec<Item>) -> JobResult {
        Ok(())
    }

    /// Inserts one row.
    pub fn write_one(_records: Vec<Item>, env: &Env, v: i64) -> JobResult {
        diesel::insert_into(bench_write::table).values(bench_write::v.eq(v)).execute(&mut *env.conn())?;
        Ok(())
    }

    /// Records when it started.
    pub fn mark(_records: Vec<Item>, mark: i64) -> JobResult {
        let now = Instant::now();
        if let Some(map) = STARTED.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            map.insert(mark, now);
        }
        Ok(())
    }
}

#[derive(Debug, Parser)]
#[command(about = "Benchmark the queue against raw SQL on the same database")]
struct Args {
    /// A PostgreSQL server URL (a database of its own is created); SQLite when absent.
    #[arg(long)]
    database_url: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Jobs per throughput measurement.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Jobs for the latency measurement.
    #[arg(long, default_value_t = 200)]
    latency_jobs: usize,
    /// Finished jobs in the table for `history`.
    #[arg(long, default_value_t = 1_000_000)]
    history: usize,
    /// Run only these measurements (comma-separated): enqueue_single, enqueue_bulk, process,
    /// process_write, process_isolated, latency, raw, history. All when absent.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Channels of the benchmark's worker.
    #[arg(long, default_value = "root:4")]
    channels: String,
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Scratch {
    url: String,
    admin: Option<(String, String)>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        match &self.admin {
            Some((admin, name)) => {
                if let Ok(mut c) = PgConnection::establish(admin) {
                    let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c);
                }
            }
            None => {
                for s in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{s}", self.url));
                }
                let _ = std::fs::remove_dir_all(format!("{}.workers", self.url));
            }
        }
    }
}

fn main() -> Res<()> {
    let args = Args::parse();
    let name = format!("queue_bench_{}", std::process::id());
    let scratch = match &args.database_url {
        Some(admin) => {
            let mut c = PgConnection::establish(admin)?;
            diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut c)?;
            // The same server and options (`?sslmode=…`), another database.
            let (path, query) = admin.split_once('?').map_or((admin.as_str(), None), |(p, q)| (p, Some(q)));
            let base = path.rsplit_once('/').map(|(b, _)| b).unwrap_or(path);
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            Scratch { url: format!("{base}/{name}{query}"), admin: Some((admin.clone(), name)) }
        }
        None => Scratch {
            url: std::env::temp_dir().join(format!("{name}.sqlite3")).to_string_lossy().into_owned(),
            admin: None,
        },
    };
    let channels: queue_diesel::ChannelConfig = args.channels.parse()?;
    let pool = u32::try_from(2 * channels.total_capacity() + 4)?;
    let db = Database::builder(&scratch.url).worker(true).no_delay(false).pool_size(pool).open()?;
    let serial = if db.backend() == Backend::Postgres { "BIGSERIAL" } else { "INTEGER" };
    db.conn()?.batch(&format!(
        "CREATE TABLE bench_item (id {serial} PRIMARY KEY, n BIGINT NOT NULL DEFAULT 0);
         CREATE TABLE bench_write (id {serial} PRIMARY KEY, v BIGINT NOT NULL);
         CREATE TABLE bench_raw (id {serial} PRIMARY KEY, state TEXT NOT NULL, payload TEXT NOT NULL);
         CREATE INDEX bench_raw_pending ON bench_raw (id) WHERE state = 'pending';"
    ))?;
    let mut results: Vec<(&str, f64)> = Vec::new();
    let known = [
        "enqueue_single",
        "enqueue_bulk",
        "process",
        "process_write",
        "process_isolated",
        "latency",
        "raw",
        "history",
    ];
    if let Some(bad) = args.only.iter().find(|o| !known.contains(&o.as_str())) {
        return Err(
            format!("unknown measurement {bad:?} in --only; expected some of {}", known.join(", ")).into()
        );
    }
    let want = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);

    // enqueue_single: one job per transaction; raw_insert_single: the same row by hand, in the
    // same run, for comparison.
    if want("enqueue_single") {
        let n = (args.jobs / 4).max(100);
        let start = Instant::now();
        for _ in 0..n {
            db.transaction(Context::new(), |_| Item::queue().noop(NoRecords))?;
        }
        results.push(("enqueue_single", n as f64 / start.elapsed().as_secs_f64()));
        clear(&db)?;
        results.push(("raw_insert_single", raw_insert_single(&db, n)?));
        clear(&db)?;
    }

    // enqueue_bulk: many per transaction; process: those jobs, no-ops.
    if want("enqueue_bulk") || want("process") {
        let start = Instant::now();
        enqueue_noops(&db, args.jobs)?;
        results.push(("enqueue_bulk", args.jobs as f64 / start.elapsed().as_secs_f64()));
        if want("process") {
            results.push(("process", process(&db, &channels, args.jobs)?));
        }
        clear(&db)?;
    }

    // process_write: jobs writing one row each.
    if want("process_write") {
        db.transaction(Context::new(), |_| {
            queue_diesel::bulk(|| {
                for v in 0..args.jobs {
                    Item::queue().write_one(NoRecords, v as i64)?;
                }
                Ok(())
            })
        })?;
        results.push(("process_write", process(&db, &channels, args.jobs)?));
        clear(&db)?;
    }

    // process_isolated: jobs that each run alone, in their own transaction.
    if want("process_isolated") {
        let n = (args.jobs / 4).max(100);
        db.transaction(Context::new(), |_| {
            queue_diesel::bulk(|| {
                for _ in 0..n {
                    Item::queue().noop_alone(NoRecords)?;
                }
                Ok(())
            })
        })?;
        results.push(("process_isolated", process(&db, &channels, n)?));
        clear(&db)?;
    }

    if want("latency") {
        latencies(&db, &scratch.url, &channels, args.latency_jobs, &mut results)?;
    }
    if want("raw") {
        results.push(("raw_insert_jobs", raw_insert_jobs(&db, args.jobs)?));
        clear(&db)?;
        results.push(("raw_insert_bulk", raw_insert_bulk(&db, args.jobs)?));
        results.push(("raw_claim_complete", raw_claim_complete(&db, 1)?));
        raw_fill(&db, args.jobs)?;
        results.push(("raw_claim_complete_batch", raw_claim_complete(&db, 100)?));
        clear(&db)?;
    }

    // history: process again with many finished jobs in the table.
    if want("history") {
        fill_history(&db, args.history)?;
        enqueue_noops(&db, args.jobs)?;
        results.push(("history", process(&db, &channels, args.jobs)?));
    }

    results.push(("peak_rss_mb", peak_rss_mb()));
    results.push(("process_rss_growth_mb", *PROCESS_RSS_GROWTH.lock().unwrap_or_else(|p| p.into_inner())));
    print(&args, &db, &channels, &results);
    drop(db);
    drop(scratch);
    Ok(())
}

/// Enqueue-commit → start on an idle worker, queued in its process and through another handle.
fn latencies(
    db: &Database,
    url: &str,
    channels: &queue_diesel::ChannelConfig,
    n: usize,
    results: &mut Vec<(&str, f64)>,
) -> Res<()> {
    let (p50, p99, max) = latency(db, db, channels, n)?;
    results.push(("latency_p50_ms", p50));
    results.push(("latency_p99_ms", p99));
    results.push(("latency_max_ms", max));
    clear(db)?;
    // The same, queued through another handle of the database, as another process would: the
    // worker learns of it through NOTIFY on PostgreSQL, its data_version watcher on SQLite.
    let other = Database::builder(url).worker(true).no_delay(false).pool_size(2).open()?;
    let (p50, p99, max) = latency(db, &other, channels, n)?;
    drop(other);
    results.push(("latency_remote_p50_ms", p50));
    results.push(("latency_remote_p99_ms", p99));
    results.push(("latency_remote_max_ms", max));
    clear(db)
}

/// The results as a table, or as one JSON object with `--json`.
fn print(args: &Args, db: &Database, channels: &queue_diesel::ChannelConfig, results: &[(&str, f64)]) {
    if args.json {
        let object: serde_json::Map<String, serde_json::Value> = results
            .iter()
            .map(|(k, v)| {
                // Latencies to a hundredth of a millisecond: their targets are fractions of one.
                let scale = if k.ends_with("_ms") { 100.0 } else { 10.0 };
                ((*k).to_owned(), serde_json::json!((v * scale).round() / scale))
            })
            .collect();
        println!("{}", serde_json::Value::Object(object));
    } else {
        println!("backend {} ({} jobs, channels {})", db.backend().name(), args.jobs, channels);
        for (k, v) in results {
            let unit = if k.ends_with("_ms") {
                "ms"
            } else if k.ends_with("_mb") {
                "MiB"
            } else {
                "jobs/s"
            };
            let digits = if unit == "ms" { 2 } else { 1 };
            println!("{k:<26} {v:>12.digits$} {unit}");
        }
    }
}

fn enqueue_noops(db: &Database, n: usize) -> Res<()> {
    db.transaction(Context::new(), |_| {
        queue_diesel::bulk(|| {
            for _ in 0..n {
                Item::queue().noop(NoRecords)?;
            }
            Ok(())
        })
    })?;
    Ok(())
}

/// Empty the tables between measurements. On PostgreSQL, vacuum them too, as autovacuum does
/// within a minute of a burst: until then the claim index still holds the dead entries of the
/// jobs just deleted, and every claim steps over them (measured: idle latency p50 about 3 ms
/// instead of 1 ms right after 40 000 jobs).
fn clear(db: &Database) -> Res<()> {
    let mut conn = db.conn()?;
    conn.batch("DELETE FROM queue_job; DELETE FROM bench_write; DELETE FROM bench_raw;")?;
    if db.backend() == Backend::Postgres {
        // One statement each: VACUUM cannot run inside the implicit transaction of a batch.
        for table in ["queue_job", "bench_write", "bench_raw"] {
            conn.batch(&format!("VACUUM ANALYZE {table}"))?;
        }
    }
    Ok(())
}

/// Whether any job is unfinished: one row looked up per state through its index. (A count
/// here, every 20 ms, cost the server a fifth of its CPU while the worker under measure ran.)
fn any_unfinished(db: &Database) -> Res<bool> {
    for state in [JobState::Pending, JobState::Started] {
        if !db.jobs(&queue_diesel::ListParams::default().state(state).limit(1))?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Run a worker until the queue is empty; jobs/s for `n` jobs.
/// The most the process's resident memory grew while a worker processed a queue, in MiB.
static PROCESS_RSS_GROWTH: Mutex<f64> = Mutex::new(0.0);

fn process(db: &Database, channels: &queue_diesel::ChannelConfig, n: usize) -> Res<f64> {
    let worker = Worker::new(db.clone(), WorkerConfig::default().channels(channels.clone()))?;
    let shutdown = Shutdown::new();
    let start = Instant::now();
    let before = rss_mb();
    let elapsed = std::thread::scope(|s| -> Res<Duration> {
        let run = s.spawn(|| worker.run(&shutdown));
        while any_unfinished(db)? {
            std::thread::sleep(Duration::from_millis(20));
            let mut growth = PROCESS_RSS_GROWTH.lock().unwrap_or_else(|p| p.into_inner());
            *growth = growth.max(rss_mb() - before);
        }
        let elapsed = start.elapsed();
        shutdown.trigger();
        run.join().map_err(|_| "worker panicked")??;
        Ok(elapsed)
    })?;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Enqueue-commit → start over `n` jobs queued one at a time through `queue_on` to an idle worker
/// of `db`: p50, p99, max in ms.
fn latency(
    db: &Database,
    queue_on: &Database,
    channels: &queue_diesel::ChannelConfig,
    n: usize,
) -> Res<(f64, f64, f64)> {
    *STARTED.lock().unwrap_or_else(|p| p.into_inner()) = Some(HashMap::new());
    let worker = Worker::new(db.clone(), WorkerConfig::default().channels(channels.clone()))?;
    let shutdown = Shutdown::new();
    let mut samples = Vec::with_capacity(n);
    std::thread::scope(|s| -> Res<()> {
        let run = s.spawn(|| worker.run(&shutdown));
        std::thread::sleep(Duration::from_millis(300));
        for mark in 0..n as i64 {
            queue_on.transaction(Context::new(), |_| Item::queue().mark(NoRecords, mark))?;
            let committed = Instant::now();
            let deadline = committed + Duration::from_secs(30);
            loop {
                let started = STARTED
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .and_then(|m| m.get(&mark).copied());
                if let Some(at) = started {
                    samples.push(at.saturating_duration_since(committed).as_secs_f64() * 1000.0);
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("job {mark} did not start within 30 s").into());
                }
                // The job stamps its own start: polling gently leaves the cores to the worker.
                std::thread::sleep(Duration::from_micros(200));
            }
            // Let the worker go idle again.
            std::thread::sleep(Duration::from_millis(5));
        }
        shutdown.trigger();
        run.join().map_err(|_| "worker panicked")??;
        Ok(())
    })?;
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Ok((at(0.5), at(0.99), samples.last().copied().unwrap_or(0.0)))
}

fn raw_fill(db: &Database, n: usize) -> Res<()> {
    let mut conn = db.conn()?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let values: Vec<String> = chunk.iter().map(|i| format!("('pending', 'job {i}')")).collect();
        conn.batch(&format!("INSERT INTO bench_raw (state, payload) VALUES {}", values.join(", ")))?;
    }
    Ok(())
}

/// Multi-row INSERT of 100 per transaction; rows/s.
fn raw_insert_bulk(db: &Database, n: usize) -> Res<f64> {
    let start = Instant::now();
    raw_fill(db, n)?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// One job row per transaction, inserted by hand into the queue's table (`BEGIN`, `INSERT`,
/// `COMMIT`, as any application would): what `enqueue_single` is measured against; rows/s.
fn raw_insert_single(db: &Database, n: usize) -> Res<f64> {
    let mut conn = db.conn()?;
    let begin = if db.backend() == Backend::Postgres { "BEGIN" } else { "BEGIN IMMEDIATE" };
    let start = Instant::now();
    for _ in 0..n {
        let now = chrono::Utc::now().naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string();
        conn.batch(begin)?;
        conn.batch(&format!(
            "INSERT INTO queue_job (uuid, state, func, model, record_ids, args, context, priority, channel, attempts, max_retries, description, date_created) \
             VALUES ('{}', 'pending', 'bench.item.noop', 'bench.item', '[]', '{{}}', '{{}}', 10, 'root', 0, 5, 'Does nothing.', '{now}')",
            uuid::Uuid::now_v7()
        ))?;
        conn.batch("COMMIT")?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Multi-row INSERT of 100 job rows per transaction into the queue's own table (its indexes
/// included), the rows `enqueue_bulk` stores; rows/s.
fn raw_insert_jobs(db: &Database, n: usize) -> Res<f64> {
    let mut conn = db.conn()?;
    let now = chrono::Utc::now().naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    let start = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let values: Vec<String> = chunk
            .iter()
            .map(|_| {
                format!(
                    "('{}', 'pending', 'bench.item.noop', 'bench.item', '[]', '{{}}', '{{}}', 10, 'root', 0, 5, 'Does nothing.', '{now}')",
                    uuid::Uuid::now_v7()
                )
            })
            .collect();
        conn.batch(&format!(
            "INSERT INTO queue_job (uuid, state, func, model, record_ids, args, context, priority, channel, attempts, max_retries, description, date_created) VALUES {}",
            values.join(", ")
        ))?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Claim `batch` rows and complete them, one transaction each, until none is left; rows/s.
fn raw_claim_complete(db: &Database, batch: usize) -> Res<f64> {
    let mut conn = db.conn()?;
    let lock = if db.backend() == Backend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
    let begin = if db.backend() == Backend::Postgres { "BEGIN" } else { "BEGIN IMMEDIATE" };
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    let start = Instant::now();
    let mut total = 0usize;
    loop {
        conn.batch(begin)?;
        let sql = format!(
            "UPDATE bench_raw SET state = 'started' WHERE id IN (SELECT id FROM bench_raw WHERE state = 'pending' ORDER BY id LIMIT {batch}{lock}) RETURNING id"
        );
        let ids: Vec<Id> = match &mut *conn {
            queue_diesel::AnyConnection::Sqlite(c) => diesel::sql_query(sql).load(c)?,
            queue_diesel::AnyConnection::Postgres(c) => diesel::sql_query(sql).load(c)?,
        };
        if ids.is_empty() {
            conn.batch("COMMIT")?;
            break;
        }
        let list: Vec<String> = ids.iter().map(|i| i.id.to_string()).collect();
        conn.batch(&format!("UPDATE bench_raw SET state = 'done' WHERE id IN ({}); COMMIT", list.join(",")))?;
        total += ids.len();
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Insert `n` finished jobs in a few statements.
fn fill_history(db: &Database, n: usize) -> Res<()> {
    let mut conn = db.conn()?;
    let sql = match db.backend() {
        Backend::Postgres => format!(
            "INSERT INTO queue_job (uuid, state, func, model, date_created, date_done, attempts, max_retries, description)
             SELECT md5(random()::text || g::text), 'done', 'bench.item.noop', 'bench.item', now(), now(), 1, 5, 'history'
             FROM generate_series(1, {n}) g; ANALYZE queue_job;"
        ),
        Backend::Sqlite => format!(
            "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {n})
             INSERT INTO queue_job (uuid, state, func, model, date_created, date_done, attempts, max_retries, description)
             SELECT 'history-' || i, 'done', 'bench.item.noop', 'bench.item', '2026-01-01 00:00:00', '2026-01-01 00:00:00', 1, 5, 'history' FROM g;
             ANALYZE;"
        ),
    };
    conn.batch(&sql)?;
    Ok(())
}

/// Peak resident memory of this process (Linux), in MiB.
fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// The process's resident memory now, in MiB.
fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

/// A `/proc/self/status` line in kB, as MiB (0 where there is no such file).
fn status_mb(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}
