//! The application's worker binary, as an operator runs it: it runs the queued jobs, and stops
//! cleanly on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use partners::{Partner, partners as table};
use queue_diesel::JobState;
use queue_diesel::ListParams;
use queue_diesel::prelude::*;

fn temp_path(name: &str) -> String {
    let path = std::env::temp_dir().join(format!("partners-{name}-{}.sqlite3", std::process::id()));
    let path = path.to_string_lossy().into_owned();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
    path
}

#[test]
fn worker_binary_runs_jobs_and_stops_on_sigterm() {
    let url = temp_path("worker");
    let out_dir = std::env::temp_dir().join(format!("partners-out-{}", std::process::id()));
    let db = Database::builder(&url).worker(true).no_delay(false).open().expect("open");
    partners::create_tables(&db).expect("tables");
    diesel::insert_into(table::table)
        .values((
            table::name.eq("Ada"),
            table::email.eq("ada@example.org"),
            table::lang.eq("en"),
            table::exports.eq(0),
        ))
        .execute(&mut *db.conn().expect("conn"))
        .expect("insert");
    db.transaction(Context::user(2), |env| {
        let all = table::table.select(Partner::as_select()).load(&mut *env.conn())?;
        Partner::queue().export(&all, "bin".into())?;
        Ok::<_, queue_diesel::Error>(())
    })
    .expect("queued");

    let child = Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(["run", "--channels", "root:2,root.export:1", "--poll-interval-ms", "50"])
        .env("DATABASE_URL", &url)
        .env("PARTNERS_EXPORT_DIR", &out_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker starts");
    let start = Instant::now();
    let done = || db.jobs(&ListParams::default().state(JobState::Done)).map(|j| j.len()).unwrap_or(0);
    while done() < 1 && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    assert!(status.success());
    let output = child.wait_with_output().expect("worker exits");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(done(), 1, "the job ran: {stderr}");
    assert!(output.status.success(), "clean exit on SIGTERM: {stderr}");
    assert!(stderr.contains("worker stopped"), "{stderr}");
    let file = std::fs::read_to_string(out_dir.join("bin.csv")).expect("export written");
    assert_eq!(file, "Ada,ada@example.org,en,user 2\n");
    let _ = std::fs::remove_dir_all(&out_dir);

    // Operator actions from the command line: a done job cannot be requeued.
    let uuid = db.jobs(&ListParams::default()).expect("list")[0].uuid.to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(["jobs", "requeue", &uuid])
        .env("DATABASE_URL", &url)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot requeue a done job: only failed, cancelled jobs can be"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(["jobs", "show", &uuid])
        .env("DATABASE_URL", &url)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("res.partner.export") && stdout.contains("exported 1 partner(s) to bin"),
        "{stdout}"
    );
    drop(db);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{url}{suffix}"));
    }
    let _ = std::fs::remove_dir_all(format!("{url}.workers"));
}
