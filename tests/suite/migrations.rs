//! The queue's schema beside the application's own Diesel migrations: either can be run, reverted
//! and redone, in any order, without tripping over the other.

use std::path::{Path, PathBuf};
use std::process::Command;

use diesel::prelude::*;
use queue_diesel::prelude::*;
use queue_diesel::store::schema::{script, steps};
use queue_diesel::{Backend, Worker, WorkerConfig};
use queue_tests::{Kind, Partner, TestDb, backend_tests};

backend_tests!(steps_that_diesel_recorded_are_moved_to_the_queues_table);

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = diesel::sql_types::Text)]
    version: String,
}

fn versions(t: &TestDb, table: &str) -> Vec<String> {
    let rows: Vec<Version> = diesel::sql_query(format!("SELECT version FROM {table} ORDER BY version"))
        .load(&mut *t.db.conn().expect("connection"))
        .unwrap_or_default();
    rows.into_iter().map(|r| r.version).collect()
}

fn queue_steps(backend: Backend) -> Vec<String> {
    steps(backend).iter().map(|s| s.name.to_owned()).collect()
}

/// Earlier releases recorded their steps in Diesel's table, among the application's.
fn steps_that_diesel_recorded_are_moved_to_the_queues_table(t: TestDb) {
    let backend = t.db.backend();
    let mut sql = String::from(
        "DROP TABLE queue_schema_migrations; CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY NOT NULL, run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP); INSERT INTO __diesel_schema_migrations (version) VALUES ('20250101000000');",
    );
    for step in steps(backend) {
        let version = step.name.split('_').next().unwrap_or_default().replace('-', "");
        sql.push_str(&format!("INSERT INTO __diesel_schema_migrations (version) VALUES ('{version}');"));
    }
    t.db.conn().expect("connection").batch(&sql).expect("an earlier release's records");
    t.db.migrate().expect("migrates");
    assert_eq!(versions(&t, "queue_schema_migrations"), queue_steps(backend));
    assert_eq!(versions(&t, "__diesel_schema_migrations"), vec!["20250101000000".to_owned()]);
    // Nothing was applied twice: the schema works.
    let list = t.partners(&["ada"]);
    t.db.transaction(Context::user(1), |_| Partner::queue().export(&list, "x".into())).expect("queued");
}

/// The diesel command line (`diesel_cli`), when the suite was built with
/// `QUEUE_TEST_DIESEL_CLI` naming it.
fn diesel_cli() -> &'static str {
    option_env!("QUEUE_TEST_DIESEL_CLI").unwrap_or("diesel")
}

fn diesel(url: &str, dir: &Path, args: &[&str]) -> String {
    let out = Command::new(diesel_cli())
        .args(args)
        .arg("--database-url")
        .arg(url)
        .arg("--migration-dir")
        .arg(dir)
        .output()
        .expect("diesel runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "diesel {args:?}: {text}");
    text
}

/// An application's migrations folder with one step.
fn app_migrations(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("queue-app-migrations-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    add_step(
        &dir,
        "2025-01-01-000000_create_posts",
        "CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT NOT NULL);",
        "DROP TABLE posts;",
    );
    dir
}

fn add_step(dir: &Path, name: &str, up: &str, down: &str) {
    let step = dir.join(name);
    std::fs::create_dir_all(&step).expect("a migration folder");
    std::fs::write(step.join("up.sql"), up).expect("up.sql");
    std::fs::write(step.join("down.sql"), down).expect("down.sql");
}

fn has_table(t: &TestDb, table: &str) -> bool {
    t.db.conn().expect("connection").batch(&format!("SELECT 1 FROM {table} WHERE 1 = 0")).is_ok()
}

fn works(t: &TestDb) {
    let list = t.partners(&["ada"]);
    t.db.transaction(Context::user(1), |_| Partner::queue().export(&list, "x".into())).expect("queued");
    Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker").run_until_idle().expect("runs");
    assert_eq!(t.partner(list[0].id).expect("partner").exports, 1);
}

/// The queue migrates itself at start; the application's `diesel migration run/revert/redo`
/// before and after see only the application's steps.
fn the_applications_diesel_migrations_run_and_revert_beside_the_queues(kind: Kind) {
    let t = TestDb::new(kind, |b| b.migrate(false))
        .expect("a database: QUEUE_TEST_POSTGRES_URL was set at build time");
    let dir = app_migrations(&format!("beside-{kind:?}"));
    diesel(&t.url, &dir, &["migration", "run"]); // before the queue's
    t.db.migrate().expect("the queue migrates itself");
    add_step(
        &dir,
        "2025-03-01-000000_add_tags",
        "CREATE TABLE tags (id INTEGER PRIMARY KEY);",
        "DROP TABLE tags;",
    );
    diesel(&t.url, &dir, &["migration", "run"]); // after the queue's
    assert!(has_table(&t, "posts") && has_table(&t, "tags"));
    let reverted = diesel(&t.url, &dir, &["migration", "revert"]);
    assert!(reverted.contains("2025-03-01-000000_add_tags"), "{reverted}");
    assert!(!has_table(&t, "tags") && has_table(&t, "posts"));
    diesel(&t.url, &dir, &["migration", "redo"]);
    diesel(&t.url, &dir, &["migration", "revert", "--all"]);
    assert!(!has_table(&t, "posts") && !has_table(&t, "tags"));
    assert_eq!(versions(&t, "queue_schema_migrations"), queue_steps(t.db.backend()));
    works(&t);
    let _ = std::fs::remove_dir_all(dir);
}

/// The application copies the queue's SQL into a step of its own: `diesel migration run`
/// creates the queue's tables, the queue then finds nothing to do, and `revert` drops them.
fn the_queues_sql_runs_as_the_applications_own_step(kind: Kind) {
    let t = TestDb::new(kind, |b| b.migrate(false))
        .expect("a database: QUEUE_TEST_POSTGRES_URL was set at build time");
    let dir = app_migrations(&format!("copied-{kind:?}"));
    let backend = t.db.backend();
    add_step(&dir, "2025-02-01-000000_queue", &script(backend, true), &script(backend, false));
    diesel(&t.url, &dir, &["migration", "run"]);
    t.db.migrate().expect("nothing left to apply");
    assert_eq!(versions(&t, "queue_schema_migrations"), queue_steps(backend));
    works(&t);
    diesel(&t.url, &dir, &["migration", "redo", "--all"]);
    diesel(&t.url, &dir, &["migration", "revert", "--all"]);
    assert!(!has_table(&t, "queue_job") && !has_table(&t, "queue_schema_migrations"));
    let _ = std::fs::remove_dir_all(dir);
}

macro_rules! diesel_cli_tests {
    ($($name:ident),*) => {
        $(mod $name {
            use super::*;

            #[test]
            #[cfg_attr(
                not(queue_diesel_cli_tests),
                ignore = "set QUEUE_TEST_DIESEL_CLI to a diesel_cli binary (cargo install diesel_cli) to run it"
            )]
            fn sqlite() {
                $name(Kind::Sqlite);
            }

            #[test]
            #[cfg_attr(
                not(all(queue_diesel_cli_tests, queue_postgres_tests)),
                ignore = "set QUEUE_TEST_DIESEL_CLI and QUEUE_TEST_POSTGRES_URL to run it"
            )]
            fn postgres() {
                $name(Kind::Postgres);
            }
        })*
    };
}

diesel_cli_tests!(
    the_applications_diesel_migrations_run_and_revert_beside_the_queues,
    the_queues_sql_runs_as_the_applications_own_step
);
