//! Run with: `cargo run -p partners` (a SQLite file `partners-demo.sqlite3` it creates, no
//! set-up), or `cargo run -p partners -- --database-url postgres://…` for PostgreSQL. Each run
//! starts from empty tables.
//!
//! The demo writes only to a database it was told about on its own command line (it ignores
//! `DATABASE_URL`), and drops only the tables it created itself: it marks them with a
//! `partners_demo` table and refuses a database whose `partners` table is not marked.
//!
//! Shows the three run modes: no worker (jobs run right after commit), no-delay (the method runs
//! at the call), and worker configured (jobs wait for a worker, here started in-process).

use std::process::ExitCode;
use std::time::Duration;

use diesel::prelude::*;
use partners::{Partner, export_dir, partners as table};
use queue_diesel::ListParams;
use queue_diesel::prelude::*;
use queue_diesel::{Shutdown, Worker, WorkerConfig};

const CSV: &str = "Ada Lovelace,ada@example.org\nGrace Hopper,grace@example.org\nAlan Turing,alan@example.org\nEdsger Dijkstra,edsger@example.org\nBarbara Liskov,not-an-email\n";

const USAGE: &str = "usage: partners [--database-url URL]\n\nRuns the demo on URL (a SQLite path or a postgres:// URL), by default on partners-demo.sqlite3 in\nthe current directory. DATABASE_URL is not used: the demo only touches a database named here.";

fn main() -> ExitCode {
    let url = match database_url(std::env::args().skip(1)) {
        Ok(Some(url)) => url,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("{message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match demo(&url) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("demo failed: {text}");
            ExitCode::FAILURE
        }
    }
}

/// The database the command line names (`None` for `--help`).
fn database_url(mut args: impl Iterator<Item = String>) -> Result<Option<String>, String> {
    let mut url = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--database-url" => url = Some(args.next().ok_or("--database-url needs a value")?),
            other => match other.strip_prefix("--database-url=") {
                Some(value) => url = Some(value.to_owned()),
                None => return Err(format!("unexpected argument {other:?}")),
            },
        }
    }
    Ok(Some(url.unwrap_or_else(|| "partners-demo.sqlite3".into())))
}

fn demo(url: &str) -> Result<(), queue_diesel::Error> {
    let url = url.to_owned();
    reset(&url)?;
    println!("database: {url}\nexports go to {}/\n", export_dir().display());

    // 1. No worker configured: queued calls run right after the commit, in this process.
    println!("== 1. no worker configured: jobs run right after commit ==");
    let db = Database::builder(&url).worker(false).no_delay(false).keep_idle(false).open()?;
    partners::create_tables(&db)?;
    let import = db.transaction(Context::user(7).with("lang", "fr"), |_env| {
        let job = Partner::queue().import_csv(NoRecords, CSV.to_owned(), 2)?;
        println!("queued import {} (runs after commit)", job.uuid());
        Ok::<_, queue_diesel::Error>(job)
    })?;
    println!(
        "import job is now {}: {}",
        db.job(&import.uuid())?.state,
        db.job(&import.uuid())?.result.unwrap_or_default()
    );
    let names: Vec<(String, String)> = table::table
        .select((table::name, table::lang))
        .order(table::id)
        .load(&mut *db.conn()?)
        .map_err(query)?;
    println!("partners created by the chunk jobs (lang restored from the context): {names:?}\n");

    // 2. No-delay: the method runs at the call, inside the caller's transaction.
    println!("== 2. queue_no_delay: the method runs at the call ==");
    db.transaction(Context::user(7).with("queue_no_delay", true), |env| {
        let ada = table::table
            .filter(table::name.eq("Ada Lovelace"))
            .select(Partner::as_select())
            .first(&mut *env.conn())?;
        let handle = Partner::queue().export(&ada, "no-delay".into())?;
        let exports: i32 = table::table.find(ada.id).select(table::exports).first(&mut *env.conn())?;
        println!(
            "ran now: {}; Ada's export count inside the same transaction: {exports}\n",
            handle.ran_now()
        );
        Ok::<_, queue_diesel::Error>(())
    })?;

    // 3. Worker configured: rows wait for a worker; a rolled-back transaction leaves no job.
    println!("== 3. worker configured: jobs wait for the worker ==");
    let db = Database::builder(&url).worker(true).no_delay(false).keep_idle(false).open()?;
    let rolled_back = db.transaction(Context::user(7), |env| {
        let all = table::table.select(Partner::as_select()).load(&mut *env.conn())?;
        Partner::queue().export(&all, "never".into())?;
        Err::<(), _>(queue_diesel::Error::Config("the caller changed its mind".into()))
    });
    println!(
        "rolled back ({}): the job went with it",
        rolled_back.err().map(|e| e.to_string()).unwrap_or_default()
    );
    db.transaction(Context::user(9).with("lang", "en"), |env| {
        let all = table::table.select(Partner::as_select()).order(table::id).load(&mut *env.conn())?;
        let (good, bad): (Vec<Partner>, Vec<Partner>) = all.into_iter().partition(|p| p.email.contains('@'));
        // An identity key: queueing the same export twice keeps one job.
        let export = Partner::queue().priority(20).identity_key("crm-export").export(&good, "crm".into())?;
        let again = Partner::queue().identity_key("crm-export").export(&good, "crm".into())?;
        println!("identity key: the second export is the first one again: {}", again.existing());
        // A chain: the summary waits for the export.
        Partner::queue().depends_on(&export).send_summary(NoRecords, "sales@example.org".into())?;
        Partner::queue()
            .priority(5)
            .description("Export the partner with a bad address")
            .export(&bad, "crm".into())?;
        // Retried by its pattern until the CRM answers.
        Partner::queue().sync_crm(&good)?;
        Ok::<_, queue_diesel::Error>(())
    })?;
    print_jobs(&db, "before the worker")?;

    println!(
        "a worker with channels root:2,root.export:1 runs them (the CRM sync is retried twice, 1 s apart)"
    );
    let worker = Worker::new(db.clone(), WorkerConfig::default().channels("root:2,root.export:1".parse()?))?;
    let shutdown = Shutdown::new();
    std::thread::scope(|scope| {
        let run = scope.spawn(|| worker.run(&shutdown));
        while db.jobs(&ListParams::default().state(JobState::Pending).limit(1))?.len()
            + db.jobs(&ListParams::default().state(JobState::Started).limit(1))?.len()
            > 0
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        shutdown.trigger();
        run.join().map_err(|_| queue_diesel::Error::Config("worker thread panicked".into()))??;
        Ok::<_, queue_diesel::Error>(())
    })?;
    print_jobs(&db, "after the worker")?;
    let file = std::fs::read_to_string(export_dir().join("crm.csv")).unwrap_or_default();
    println!("{}/crm.csv:\n{file}", export_dir().display());
    let summary = std::fs::read_to_string(export_dir().join("summary.txt")).unwrap_or_default();
    println!("{}/summary.txt: {summary}", export_dir().display());
    println!("inspect a job: cargo run -p partners --bin worker -- --database-url {url} jobs show <uuid>");
    Ok(())
}

use queue_diesel::JobState;

fn print_jobs(db: &Database, when: &str) -> Result<(), queue_diesel::Error> {
    println!("jobs {when}:");
    let mut jobs = db.jobs(&ListParams::default().limit(100))?;
    jobs.reverse();
    for job in jobs {
        let outcome = job.result.clone().or(job.exc_message.clone()).unwrap_or_default();
        println!(
            "  {:<17} prio {:>2}  try {}  {:<12} {:<25} {}",
            job.state, job.priority, job.attempts, job.channel, job.func, outcome
        );
    }
    println!();
    Ok(())
}

/// Start from empty tables and an empty export folder, whatever a previous run left; refuse a
/// database with a `partners` table the demo did not create.
fn reset(url: &str) -> Result<(), queue_diesel::Error> {
    let _ = std::fs::remove_dir_all(export_dir());
    let db = Database::builder(url).worker(true).migrate(false).pool_size(1).keep_idle(false).open()?;
    let mut conn = db.conn()?;
    let has = |conn: &mut queue_diesel::AnyConnection, table: &str| {
        conn.batch(&format!("SELECT 1 FROM {table} WHERE 1 = 0")).is_ok()
    };
    if has(&mut conn, "partners") && !has(&mut conn, "partners_demo") {
        return Err(queue_diesel::Error::Config(format!(
            "{} has a `partners` table the demo did not create: give the demo another database (--database-url)",
            db.url()
        )));
    }
    drop(conn);
    db.migrate()?;
    let mut conn = db.conn()?;
    // Only the demo's own tables and jobs go.
    conn.batch("DROP TABLE IF EXISTS partners; DROP TABLE IF EXISTS partners_demo; DELETE FROM queue_job WHERE func LIKE 'res.partner.%'; CREATE TABLE partners_demo (created_by TEXT NOT NULL); INSERT INTO partners_demo VALUES ('the partners demo')")
        .map_err(query)
}

fn query(e: diesel::result::Error) -> queue_diesel::Error {
    queue_diesel::Error::Query { what: "run a demo query", source: e }
}
