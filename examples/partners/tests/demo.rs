//! The demo as a newcomer runs it: in a folder of its own it creates its own SQLite file and
//! ignores `DATABASE_URL`; given a database on its command line, it refuses one whose `partners`
//! table it did not create, and leaves that table as it was.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

fn folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("partners-demo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a folder for the demo");
    dir
}

fn demo(dir: &Path, args: &[&str], database_url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_partners"))
        .args(args)
        .current_dir(dir)
        .env("DATABASE_URL", database_url)
        .env_remove("PARTNERS_EXPORT_DIR")
        .output()
        .expect("the demo starts")
}

/// An application's database with a `partners` table of its own.
fn application_database(dir: &Path) -> String {
    let path = dir.join("application.sqlite3").to_string_lossy().into_owned();
    let mut conn = SqliteConnection::establish(&path).expect("the application's database");
    conn.batch_execute("CREATE TABLE partners (id INTEGER PRIMARY KEY, name TEXT NOT NULL); INSERT INTO partners (name) VALUES ('customer')")
        .expect("the application's table");
    path
}

fn application_rows(path: &str) -> Vec<String> {
    diesel::table! { partners (id) { id -> Integer, name -> Text } }
    let mut conn = SqliteConnection::establish(path).expect("the application's database");
    partners::table.select(partners::name).load(&mut conn).expect("the application's table is still there")
}

#[test]
fn the_demo_ignores_database_url_and_runs_twice_on_its_own_file() {
    let dir = folder("own");
    let application = application_database(&dir);
    for run in 1..=2 {
        let out = demo(&dir, &[], &application);
        assert!(out.status.success(), "run {run}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("database: partners-demo.sqlite3"));
    }
    assert!(dir.join("partners-demo.sqlite3").exists());
    assert_eq!(application_rows(&application), vec!["customer".to_owned()]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_demo_refuses_a_database_whose_partners_it_did_not_create() {
    let dir = folder("refuse");
    let application = application_database(&dir);
    let out = demo(&dir, &["--database-url", &application], "");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has a `partners` table the demo did not create"), "{stderr}");
    assert_eq!(application_rows(&application), vec!["customer".to_owned()]);
    let out = demo(&dir, &["--datbase-url", "x"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected argument \"--datbase-url\""));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_refused_database_gains_no_table() {
    let dir = folder("untouched");
    let application = application_database(&dir);
    let out = demo(&dir, &["--database-url", &application], "");
    assert_eq!(out.status.code(), Some(1));
    let mut conn = SqliteConnection::establish(&application).expect("the application's database");
    diesel::table! { sqlite_master (name) { name -> Text, #[sql_name = "type"] kind -> Text } }
    let tables: Vec<String> = sqlite_master::table
        .filter(sqlite_master::kind.eq("table"))
        .select(sqlite_master::name)
        .load(&mut conn)
        .expect("tables");
    assert_eq!(tables, vec!["partners".to_owned()]);
    let _ = std::fs::remove_dir_all(dir);
}
