//! Run with: `cargo run -p partners` (SQLite file `partners-demo.sqlite3`, no set-up), or with
//! `DATABASE_URL=postgres://…` for PostgreSQL. Each run starts from empty tables.
//!
//! Shows the three run modes: no worker (jobs run right after commit), no-delay (the method runs
//! at the call), and worker configured (jobs wait for a worker, here started in-process).

use std::process::ExitCode;
use std::time::Duration;

use diesel::prelude::*;
use partners::{Partner, export_dir, partners as table};
use queue_diesel::prelude::*;
use queue_diesel::store::ListParams;
use queue_diesel::{Shutdown, Worker, WorkerConfig};

const CSV: &str = "Ada Lovelace,ada@example.org\nGrace Hopper,grace@example.org\nAlan Turing,alan@example.org\nEdsger Dijkstra,edsger@example.org\nBarbara Liskov,not-an-email\n";

fn main() -> ExitCode {
    match demo() {
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

fn demo() -> Result<(), queue_diesel::Error> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "partners-demo.sqlite3".into());
    reset(&url)?;
    println!("database: {url}\nexports go to {}/\n", export_dir().display());

    // 1. No worker configured: queued calls run right after the commit, in this process.
    println!("== 1. no worker configured: jobs run right after commit ==");
    let db = Database::builder(&url).worker(false).no_delay(false).open()?;
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
    let db = Database::builder(&url).worker(true).no_delay(false).open()?;
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
    let worker = Worker::new(
        db.clone(),
        WorkerConfig { channels: "root:2,root.export:1".parse()?, ..WorkerConfig::default() },
    )?;
    let shutdown = Shutdown::new();
    std::thread::scope(|scope| {
        let run = scope.spawn(|| worker.run(&shutdown));
        while db
            .jobs(&ListParams { state: Some(JobState::Pending), limit: 1, ..ListParams::default() })?
            .len()
            + db.jobs(&ListParams { state: Some(JobState::Started), limit: 1, ..ListParams::default() })?
                .len()
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
    let mut jobs = db.jobs(&ListParams { limit: 100, ..ListParams::default() })?;
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

/// Start from empty tables and an empty export folder, whatever a previous run left.
fn reset(url: &str) -> Result<(), queue_diesel::Error> {
    let _ = std::fs::remove_dir_all(export_dir());
    if queue_diesel::Backend::from_url(url)? == queue_diesel::Backend::Sqlite {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{url}{suffix}"));
        }
        return Ok(());
    }
    let db = Database::builder(url).open()?;
    let mut conn = db.conn()?;
    conn.batch("DROP TABLE IF EXISTS partners; DELETE FROM queue_job;").map_err(query)
}

fn query(e: diesel::result::Error) -> queue_diesel::Error {
    queue_diesel::Error::Query { what: "run a demo query", source: e }
}
