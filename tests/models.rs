//! The suite's models: partners with job methods for every outcome, and the chaos test's
//! counter.

use std::time::Duration;

use diesel::prelude::*;
use queue_diesel::Backend;
use queue_diesel::prelude::*;

diesel::table! {
    /// Test model table.
    partners (id) {
        /// Row id.
        id -> BigInt,
        /// Name.
        name -> Text,
        /// Times exported.
        exports -> Integer,
        /// What the last export saw: target, user and lang.
        note -> Text,
    }
}

/// Test model.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Model)]
#[diesel(table_name = partners)]
#[queue(model = "res.partner")]
pub struct Partner {
    /// Row id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Times exported.
    pub exports: i32,
    /// Last export's view of its environment.
    pub note: String,
}

/// Per key: jobs of `slow_export` running now, and the most seen at once.
static RUNNING: std::sync::Mutex<Vec<(String, usize, usize)>> = std::sync::Mutex::new(Vec::new());

fn running(key: &str, delta: isize) {
    let mut all = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    let index = match all.iter().position(|(k, _, _)| k == key) {
        Some(i) => i,
        None => {
            all.push((key.to_owned(), 0, 0));
            all.len() - 1
        }
    };
    let entry = &mut all[index];
    entry.1 = entry.1.saturating_add_signed(delta);
    entry.2 = entry.2.max(entry.1);
}

/// The `slow_export` jobs of `key` running now.
pub fn running_now(key: &str) -> usize {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(k, _, _)| k == key).map_or(0, |e| e.1)
}

/// The most `slow_export` jobs of `key` seen running at once.
pub fn max_running(key: &str) -> usize {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(k, _, _)| k == key).map_or(0, |e| e.2)
}

#[queueable]
impl Partner {
    /// Export partners.
    #[job(channel = "root.export", max_retries = 3)]
    pub fn export(records: Vec<Partner>, env: &Env, target: String) -> JobResult<String> {
        let lang = env.context().get("lang").and_then(|v| v.as_str()).unwrap_or("-").to_owned();
        let note = format!("{target}:{}:{lang}", env.user_id().map(|u| u.to_string()).unwrap_or_default());
        for p in &records {
            diesel::update(partners::table.find(p.id))
                .set((partners::exports.eq(partners::exports + 1), partners::note.eq(&note)))
                .execute(&mut *env.conn())?;
        }
        Ok(format!("exported {}", records.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(",")))
    }

    /// Write, then fail: the write must not survive.
    pub fn write_then_fail(records: Vec<Partner>, env: &Env, message: String) -> JobResult {
        for p in &records {
            diesel::update(partners::table.find(p.id))
                .set(partners::note.eq("written"))
                .execute(&mut *env.conn())?;
        }
        Err(JobError::failed("ExportError", message))
    }

    /// Panics.
    pub fn explode(_records: Vec<Partner>) -> JobResult {
        panic!("boom at the core")
    }

    /// Asks to be retried later.
    #[job(max_retries = 2)]
    pub fn flaky(_records: Vec<Partner>, after_secs: u64) -> JobResult {
        Err(JobError::retry_after(Duration::from_secs(after_secs), "remote busy"))
    }

    /// Retries with the delays of its pattern, forever.
    #[job(retry_pattern = "1:5,3:50", max_retries = 0)]
    pub fn patterned(_records: Vec<Partner>) -> JobResult {
        Err(JobError::retry("not yet"))
    }

    /// Postpones itself without using up its tries.
    #[job(max_retries = 1)]
    pub fn waits_for_data(_records: Vec<Partner>) -> JobResult {
        Err(JobError::postpone(Duration::from_secs(30), "data not there yet"))
    }

    /// Writes inside a savepoint it never closes: a misuse the queue must catch.
    pub fn leaves_savepoint(records: Vec<Partner>, env: &Env) -> JobResult {
        use diesel::connection::TransactionManager;
        type Tm = <queue_diesel::AnyConnection as diesel::Connection>::TransactionManager;
        Tm::begin_transaction(&mut *env.conn())?;
        for p in &records {
            diesel::update(partners::table.find(p.id))
                .set(partners::note.eq("leaked"))
                .execute(&mut *env.conn())?;
        }
        Ok(())
    }

    /// Writes, then sleeps past its timeout without looking.
    #[job(timeout = "300ms")]
    pub fn oversleeps(records: Vec<Partner>, env: &Env, millis: u64) -> JobResult {
        for p in &records {
            diesel::update(partners::table.find(p.id))
                .set(partners::note.eq("overslept"))
                .execute(&mut *env.conn())?;
        }
        std::thread::sleep(Duration::from_millis(millis));
        Ok(())
    }

    /// Loops until told it ran out of time; retried per its pattern.
    #[job(timeout = "200ms", retry_pattern = "1:60")]
    pub fn polite_loop(_records: Vec<Partner>, env: &Env) -> JobResult {
        loop {
            env.check_cancelled()?;
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Blocks in a long statement (PostgreSQL), which the timeout cancels.
    #[job(timeout = "300ms")]
    pub fn blocks_in_sql(_records: Vec<Partner>, env: &Env) -> JobResult {
        diesel::sql_query("SELECT pg_sleep(30)").execute(&mut *env.conn())?;
        Ok(())
    }

    /// Ignores a failed statement: on PostgreSQL that leaves its transaction aborted.
    pub fn swallows_error(_records: Vec<Partner>, env: &Env) -> JobResult {
        let _ = diesel::sql_query("SELECT * FROM no_such_table").execute(&mut *env.conn());
        Ok(())
    }

    /// Returns a result PostgreSQL cannot store (a NUL character in text).
    pub fn returns_nul(_records: Vec<Partner>) -> JobResult<String> {
        Ok("before\0after".into())
    }

    /// Queues its successor under its own identity key while it runs, `left` times.
    pub fn chain_keyed(_records: Vec<Partner>, key: String, left: u32) -> JobResult<String> {
        if left == 0 {
            return Ok("last".into());
        }
        let next = Partner::queue().identity_key(key.clone()).chain_keyed(NoRecords, key, left - 1)?;
        Ok(if next.existing() { "successor dropped".into() } else { "successor queued".into() })
    }

    /// Cancels itself.
    pub fn give_up(_records: Vec<Partner>) -> JobResult {
        Err(JobError::Cancel("not needed any more".into()))
    }

    /// Queues one export per record.
    pub fn fan_out(records: Vec<Partner>, target: String) -> JobResult<String> {
        for p in &records {
            Partner::queue().export(p, target.clone())?;
        }
        Ok(format!("{} job(s)", records.len()))
    }

    /// Sleeps while counting how many of `key` run at once (for channel capacity tests).
    #[job(channel = "root.slow")]
    pub fn slow_export(_records: Vec<Partner>, key: String, millis: u64) -> JobResult {
        running(&key, 1);
        std::thread::sleep(Duration::from_millis(millis));
        running(&key, -1);
        Ok(())
    }

    /// `slow_export`, each job alone in its own transaction under a lease.
    #[job(channel = "root.slow", isolated)]
    pub fn slow_export_alone(_records: Vec<Partner>, key: String, millis: u64) -> JobResult {
        running(&key, 1);
        std::thread::sleep(Duration::from_millis(millis));
        running(&key, -1);
        Ok(())
    }

    /// Runs on the model with no records.
    pub fn count_all(_records: Vec<Partner>, env: &Env) -> JobResult<String> {
        let n: i64 = partners::table.count().get_result(&mut *env.conn())?;
        Ok(format!("{n} partners"))
    }

    /// Writes to its records, then "sends a mail": appends a line (its uuid and try) to the
    /// file at `path`, an effect outside the database that cannot be rolled back.
    pub fn send_reminder(records: Vec<Partner>, env: &Env, path: String) -> JobResult {
        for p in &records {
            diesel::update(partners::table.find(p.id))
                .set(partners::exports.eq(partners::exports + 1))
                .execute(&mut *env.conn())?;
        }
        let line =
            format!("{} {}\n", env.job_id().map(|id| id.to_string()).unwrap_or_default(), env.attempt());
        append(&path, &line);
        Ok(())
    }

    /// Locks its record, then the partner `other`: on PostgreSQL a transaction holding `other`
    /// and waiting for this record makes it a deadlock.
    pub fn lock_both(records: Vec<Partner>, env: &Env, other: i64, flag: String) -> JobResult {
        for p in &records {
            diesel::update(partners::table.find(p.id))
                .set(partners::note.eq("first"))
                .execute(&mut *env.conn())?;
        }
        raise(&flag);
        diesel::update(partners::table.find(other))
            .set(partners::note.eq("second"))
            .execute(&mut *env.conn())?;
        Ok(())
    }

    /// Meets a database conflict every time: PostgreSQL, a row lock the test holds
    /// (`NOWAIT`); SQLite, a write through a connection of its own, which the job's transaction
    /// (holding the write lock) keeps busy.
    #[job(max_retries = 2)]
    pub fn always_conflicts(_records: Vec<Partner>, env: &Env, held: i64) -> JobResult {
        match env.database().sqlite_path() {
            Some(path) => {
                let mut other = diesel::SqliteConnection::establish(&path)
                    .map_err(|e| JobError::failed("Connect", e.to_string()))?;
                diesel::sql_query("PRAGMA busy_timeout = 20").execute(&mut other)?;
                diesel::sql_query("UPDATE partners SET note = 'other'").execute(&mut other)?;
            }
            None => {
                diesel::sql_query("SELECT id FROM partners WHERE id = $1 FOR UPDATE NOWAIT")
                    .bind::<diesel::sql_types::BigInt, _>(held)
                    .execute(&mut *env.conn())?;
            }
        }
        Ok(())
    }

    /// PostgreSQL: ends its own database session.
    #[job(max_retries = 2)]
    pub fn ends_own_session(_records: Vec<Partner>, env: &Env) -> JobResult {
        diesel::sql_query("SELECT pg_terminate_backend(pg_backend_pid())").execute(&mut *env.conn())?;
        Ok(())
    }

    /// Sleeps without touching the database: its transaction sits idle meanwhile.
    #[job(isolated)]
    pub fn idles(records: Vec<Partner>, env: &Env, millis: u64) -> JobResult {
        std::thread::sleep(Duration::from_millis(millis));
        for p in &records {
            diesel::update(partners::table.find(p.id))
                .set(partners::note.eq("idled"))
                .execute(&mut *env.conn())?;
        }
        Ok(())
    }

    /// Writes, then hangs for `millis` on its first try (raising `flag` while it does); done
    /// at once on later tries.
    pub fn hangs_once(records: Vec<Partner>, env: &Env, millis: u64, flag: String) -> JobResult {
        for p in &records {
            diesel::update(partners::table.find(p.id))
                .set(partners::note.eq("hung"))
                .execute(&mut *env.conn())?;
        }
        if env.attempt() == 1 {
            raise(&flag);
            std::thread::sleep(Duration::from_millis(millis));
            lower(&flag);
        }
        Ok(())
    }

    /// Due again at once, every time, alone.
    #[job(isolated, max_retries = 0)]
    pub fn retries_at_once(_records: Vec<Partner>) -> JobResult {
        Err(JobError::retry_after(Duration::ZERO, "again"))
    }

    /// Records `tag` in the order jobs start (see [`started_order`]).
    pub fn ordered(_records: Vec<Partner>, key: String, tag: String) -> JobResult {
        record_start(&key, &tag);
        Ok(())
    }

    /// `ordered`, each job alone.
    #[job(isolated)]
    pub fn ordered_alone(_records: Vec<Partner>, key: String, tag: String) -> JobResult {
        record_start(&key, &tag);
        Ok(())
    }

    /// `ordered`, with a timeout.
    #[job(timeout = "30s")]
    pub fn ordered_timed(_records: Vec<Partner>, key: String, tag: String) -> JobResult {
        record_start(&key, &tag);
        Ok(())
    }

    /// `ordered`, taking `millis` (a job over a second marks the function as long-running).
    pub fn ordered_slow(_records: Vec<Partner>, key: String, tag: String, millis: u64) -> JobResult {
        record_start(&key, &tag);
        std::thread::sleep(Duration::from_millis(millis));
        Ok(())
    }

    /// Appends the moment it starts (microseconds since the epoch) to `path`.
    #[job(channel = "root.mail")]
    pub fn stamped(_records: Vec<Partner>, path: String) -> JobResult {
        let micros =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
        append(&path, &format!("{micros}\n"));
        Ok(())
    }

    /// Reports its progress over `steps` steps of `step_ms` each, then fails when told to.
    #[job(max_retries = 1)]
    pub fn progresses(_records: Vec<Partner>, env: &Env, steps: u64, step_ms: u64, fail: bool) -> JobResult {
        for step in 0..steps {
            env.progress(step, steps);
            std::thread::sleep(Duration::from_millis(step_ms));
        }
        env.progress(steps, steps);
        if fail {
            return Err(JobError::failed("ProgressError", "failed after the last step"));
        }
        Ok(())
    }
}

/// Append `line` to the file at `path`.
pub fn append(path: &str, line: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open the log");
    file.write_all(line.as_bytes()).expect("append to the log");
}

/// Named flags the jobs raise for the tests to see (a job holding a lock, a job hanging).
static FLAGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Raise the flag `name`.
pub fn raise(name: &str) {
    FLAGS.lock().unwrap_or_else(|p| p.into_inner()).push(name.to_owned());
}

/// Lower the flag `name`.
pub fn lower(name: &str) {
    FLAGS.lock().unwrap_or_else(|p| p.into_inner()).retain(|f| f != name);
}

/// True while the flag `name` is raised.
pub fn raised(name: &str) -> bool {
    FLAGS.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|f| f == name)
}

/// Per key: the tags of `ordered*` jobs, in the order they started.
static STARTS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

fn record_start(key: &str, tag: &str) {
    STARTS.lock().unwrap_or_else(|p| p.into_inner()).push((key.to_owned(), tag.to_owned()));
}

/// The tags of `ordered*` jobs of `key`, in the order they started.
pub fn started_order(key: &str) -> Vec<String> {
    STARTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, t)| t.clone())
        .collect()
}

diesel::table! {
    /// The chaos test's counter: each job adds one.
    chaos_counter (id) {
        /// Row id.
        id -> BigInt,
        /// How many jobs applied their effect.
        n -> BigInt,
    }
}

diesel::table! {
    /// One row per job whose effect committed: a second commit of the same job would break the
    /// primary key.
    chaos_effect (job) {
        /// The job's uuid.
        job -> Text,
    }
}

/// The chaos test's model.
#[derive(Debug, Clone, Queryable, Selectable, Model)]
#[diesel(table_name = chaos_counter)]
#[queue(model = "chaos.counter")]
pub struct Counter {
    /// Row id.
    pub id: i64,
    /// Count.
    pub n: i64,
}

#[queueable]
impl Counter {
    /// Add one to the counter and record the job's effect, in the job's transaction. On
    /// PostgreSQL it also takes a transaction lock named after the job: finding it taken means
    /// another worker is running the same job at this moment, and fails the job (SQLite runs one
    /// job at a time by construction).
    pub fn bump(records: Vec<Counter>, env: &Env, pause_us: u64) -> JobResult {
        bump_counters(&records, env, pause_us)
    }

    /// `bump`, each job alone in its own transaction under a lease.
    #[job(isolated)]
    pub fn bump_alone(records: Vec<Counter>, env: &Env, pause_us: u64) -> JobResult {
        bump_counters(&records, env, pause_us)
    }

    /// `bump`, noting each run of its body in the file at `log` (an effect outside the
    /// database: runs that were rolled back show there too).
    pub fn bump_logged(records: Vec<Counter>, env: &Env, pause_us: u64, log: String) -> JobResult {
        append(&log, &format!("{}\n", env.job_id().map(|id| id.to_string()).unwrap_or_default()));
        bump_counters(&records, env, pause_us)
    }

    /// Kills its own process, as an abort, a stack overflow or the OOM killer would.
    #[job(max_retries = 3)]
    pub fn poison(_records: Vec<Counter>) -> JobResult {
        std::process::abort()
    }

    /// Hangs for `hang_ms` on its first try, then counts like `bump`.
    pub fn hang_first(records: Vec<Counter>, env: &Env, pause_us: u64, hang_ms: u64) -> JobResult {
        if env.attempt() == 1 {
            std::thread::sleep(Duration::from_millis(hang_ms));
        }
        bump_counters(&records, env, pause_us)
    }
}

/// The body of the chaos jobs: lock, pause (so that kills land mid-run), count, record.
fn bump_counters(records: &[Counter], env: &Env, pause_us: u64) -> JobResult {
    let job = env.job_id().map(|id| id.to_string()).unwrap_or_default();
    if let queue_diesel::AnyConnection::Postgres(c) = &mut *env.conn() {
        #[derive(QueryableByName)]
        struct Free {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            free: bool,
        }
        let lock: Free = diesel::sql_query("SELECT pg_try_advisory_xact_lock(hashtext($1)) AS free")
            .bind::<diesel::sql_types::Text, _>(&job)
            .get_result(c)?;
        if !lock.free {
            return Err(JobError::failed("Overlap", format!("job {job} runs on two workers at once")));
        }
    }
    std::thread::sleep(Duration::from_micros(pause_us));
    for counter in records {
        diesel::update(chaos_counter::table.find(counter.id))
            .set(chaos_counter::n.eq(chaos_counter::n + 1))
            .execute(&mut *env.conn())?;
    }
    diesel::insert_into(chaos_effect::table).values(chaos_effect::job.eq(job)).execute(&mut *env.conn())?;
    Ok(())
}

/// Create the chaos test's tables (a counter at 0 and the effects) in `db`.
pub fn create_chaos_tables(db: &Database) -> Result<(), queue_diesel::Error> {
    let sql = match db.backend() {
        Backend::Sqlite => {
            "CREATE TABLE chaos_counter (id INTEGER PRIMARY KEY, n BIGINT NOT NULL); CREATE TABLE chaos_effect (job TEXT PRIMARY KEY);"
        }
        Backend::Postgres => {
            "CREATE TABLE chaos_counter (id BIGINT PRIMARY KEY, n BIGINT NOT NULL); CREATE TABLE chaos_effect (job TEXT PRIMARY KEY);"
        }
    };
    let mut conn = db.conn()?;
    conn.batch(sql)?;
    diesel::insert_into(chaos_counter::table)
        .values((chaos_counter::id.eq(1), chaos_counter::n.eq(0)))
        .execute(&mut *conn)?;
    Ok(())
}

/// Pending once (after asking to be polled again): the executor parks and is woken.
pub async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await;
}

#[queueable]
impl Partner {
    /// Export after awaiting, then fail after writing when asked.
    pub async fn export_later(records: Vec<Partner>, env: &Env, fail: bool) -> JobResult<String> {
        yield_once().await;
        for p in &records {
            diesel::update(partners::table.find(p.id))
                .set(partners::exports.eq(partners::exports + 1))
                .execute(&mut *env.conn())?;
        }
        yield_once().await;
        if fail {
            return Err(JobError::failed("AsyncError", "failed after writing"));
        }
        Ok(format!("{} exported on try {}", records.len(), env.attempt()))
    }
}
