//! The bundled `queue-worker` binary: it migrates and shows jobs, and refuses to run jobs it
//! cannot know.

use std::process::Command;

fn queue_worker(db: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_queue-worker"))
        .args(args)
        .env("DATABASE_URL", db)
        .env("QUEUE_LOG", "error")
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_db(name: &str) -> String {
    let path = std::env::temp_dir().join(format!("queue-cli-{name}-{}.sqlite3", std::process::id()));
    let path = path.to_string_lossy().into_owned();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
    path
}

/// Removes a test database when dropped.
struct Remove(String);

impl Drop for Remove {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0));
        }
    }
}

#[test]
fn run_refuses_without_job_functions() {
    let db = temp_db("run");
    let _remove = Remove(db.clone());
    let (ok, _, err) = queue_worker(&db, &["run"]);
    assert!(!ok);
    assert!(err.contains("no job function is registered in this binary"), "{err}");
    assert!(err.contains("build a worker binary that links your models"), "{err}");
}

#[test]
fn migrate_then_list_show_and_count() {
    let db = temp_db("jobs");
    let _remove = Remove(db.clone());
    let (ok, out, err) = queue_worker(&db, &["migrate"]);
    assert!(ok, "{err}");
    assert!(out.contains("queue schema is up to date"), "{out}");
    let (ok, out, err) = queue_worker(&db, &["jobs", "list"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("UUID"), "{out}");
    let (ok, _, err) = queue_worker(&db, &["jobs", "show", "not-a-uuid"]);
    assert!(!ok);
    assert!(err.contains("expected a job uuid, got \"not-a-uuid\""), "{err}");
    let (ok, _, err) = queue_worker(&db, &["jobs", "show", "6f1c1f43-1b0e-4e0b-9d7b-6a3c1f3f0a11"]);
    assert!(!ok);
    assert!(err.contains("no job with uuid 6f1c1f43-1b0e-4e0b-9d7b-6a3c1f3f0a11"), "{err}");
    let (ok, _, err) = queue_worker(&db, &["jobs", "list", "--state", "exploded"]);
    assert!(!ok);
    assert!(err.contains("unknown job state \"exploded\""), "{err}");
    let (ok, _, _) = queue_worker(&db, &["jobs", "count"]);
    assert!(ok);
    let (ok, out, err) = queue_worker(&db, &["jobs", "prune", "--older-than", "0s"]);
    assert!(ok, "{err}");
    assert!(out.contains("deleted 0 job(s)"), "{out}");
    let (ok, _, err) = queue_worker(&db, &["jobs", "prune", "--older-than", "soon"]);
    assert!(!ok);
    assert!(err.contains(r#"expected a duration like "30s", "5m" or "1h30m", got "soon""#), "{err}");
    let (ok, _, err) = queue_worker(&db, &["jobs", "prune", "--older-than", "1d", "--state", "done,pending"]);
    assert!(!ok);
    assert!(err.contains("only finished jobs can be pruned, not pending ones"), "{err}");
}

#[test]
fn bad_configuration_is_refused_with_the_bad_token() {
    let db = temp_db("config");
    let _remove = Remove(db.clone());
    let (ok, _, err) = queue_worker(&db, &["run", "--channels", "root:4,root.export:x"]);
    assert!(!ok);
    assert!(
        err.contains(r#"expected a channel capacity (a number of jobs) in "root.export:x", got "x""#),
        "{err}"
    );
    let (ok, _, err) = queue_worker("mysql://root:pw@localhost/test", &["jobs", "list"]);
    assert!(!ok);
    assert!(err.contains("MySQL/MariaDB is not supported yet"), "{err}");
    assert!(!err.contains(":pw@"), "password hidden: {err}");
}

#[test]
fn migrate_print_gives_the_schema_for_the_applications_migrations() {
    let db = temp_db("print");
    let (ok, up, err) = queue_worker(&db, &["migrate", "--print", "--backend", "postgres"]);
    assert!(ok, "{err}");
    assert!(up.contains("CREATE TABLE IF NOT EXISTS queue_schema_migrations"), "{up}");
    assert!(up.contains("BIGSERIAL"), "PostgreSQL's SQL: {up}");
    let (ok, down, _) = queue_worker(&db, &["migrate", "--print", "--down"]);
    assert!(ok);
    assert!(down.contains("DROP TABLE queue_job;"), "{down}");
    // Printing opens no database.
    assert!(!std::path::Path::new(&db).exists());
    let (ok, _, err) = queue_worker(&db, &["migrate", "--down"]);
    assert!(!ok);
    assert!(err.contains("--print"), "{err}");
}

#[test]
fn run_refuses_an_absurd_capacity_before_anything_else() {
    let db = temp_db("capacity");
    let _remove = Remove(db.clone());
    let (ok, _, err) = queue_worker(&db, &["run", "--channels", "root:99999999999"]);
    assert!(!ok);
    assert!(
        err.contains("channel capacity 99999999999 in \"root:99999999999\" is above the limit of 1024"),
        "{err}"
    );
    assert!(!std::path::Path::new(&db).exists(), "no database was created");
}
