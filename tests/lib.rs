//! Models and harness of the integration suite. Every test gets its own database: a fresh SQLite
//! file, or a freshly created PostgreSQL database (dropped afterwards) when
//! `QUEUE_TEST_POSTGRES_URL` names a server (e.g. `postgres://postgres@127.0.0.1/test`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use queue_diesel::prelude::*;
use queue_diesel::{Backend, DatabaseBuilder};

mod models;
mod schedules;

pub use models::*;
pub use schedules::*;

/// A database for one test, removed when dropped.
pub struct TestDb {
    /// The database, migrated, with the `partners` table.
    pub db: Database,
    /// Its URL.
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    File(String),
    PgDatabase { admin_url: String, name: String },
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestDb({})", self.url)
    }
}

fn unique_name() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let tag = queue_diesel::JobId::new().to_string();
    format!("queue_test_{}_{}_{}", std::process::id(), n, &tag[..8])
}

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A SQLite file.
    Sqlite,
    /// A PostgreSQL database.
    Postgres,
}

/// The PostgreSQL server of the suite, if configured.
pub fn postgres_url() -> Option<String> {
    std::env::var("QUEUE_TEST_POSTGRES_URL").ok().filter(|u| !u.trim().is_empty())
}

impl TestDb {
    /// A fresh database of `kind`, opened with `configure` applied to the builder (by default:
    /// worker configured, no-delay off). `None` for PostgreSQL when no server is configured.
    pub fn new(kind: Kind, configure: impl FnOnce(DatabaseBuilder) -> DatabaseBuilder) -> Option<TestDb> {
        let name = unique_name();
        let (url, cleanup) = match kind {
            Kind::Sqlite => {
                let path =
                    std::env::temp_dir().join(format!("{name}.sqlite3")).to_string_lossy().into_owned();
                (path.clone(), Cleanup::File(path))
            }
            Kind::Postgres => {
                let admin_url = postgres_url()?;
                let mut admin = PgConnection::establish(&admin_url)
                    .unwrap_or_else(|e| panic!("QUEUE_TEST_POSTGRES_URL is set but unreachable: {e}"));
                diesel::sql_query(format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .expect("create a test database");
                let base = admin_url.rsplit_once('/').map(|(base, _)| base).unwrap_or(&admin_url);
                (format!("{base}/{name}"), Cleanup::PgDatabase { admin_url, name })
            }
        };
        let builder = Database::builder(&url).worker(true).no_delay(false).pool_size(8);
        let db = configure(builder).open().expect("open the test database");
        let sql = match db.backend() {
            Backend::Sqlite => {
                "CREATE TABLE partners (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, exports INTEGER NOT NULL DEFAULT 0, note TEXT NOT NULL DEFAULT '')"
            }
            Backend::Postgres => {
                "CREATE TABLE partners (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, exports INTEGER NOT NULL DEFAULT 0, note TEXT NOT NULL DEFAULT '')"
            }
        };
        db.conn().expect("connection").batch(sql).expect("create partners");
        Some(TestDb { db, url, cleanup })
    }

    /// Reopen the same database with other settings (same tables, same rows).
    pub fn reopen(&self, configure: impl FnOnce(DatabaseBuilder) -> DatabaseBuilder) -> Database {
        configure(Database::builder(&self.url).worker(true).no_delay(false).pool_size(8))
            .open()
            .expect("reopen the test database")
    }

    /// Insert partners by name; returns them.
    pub fn partners(&self, names: &[&str]) -> Vec<Partner> {
        let mut conn = self.db.conn().expect("connection");
        for name in names {
            diesel::insert_into(partners::table)
                .values(partners::name.eq(*name))
                .execute(&mut *conn)
                .expect("insert");
        }
        partners::table.select(Partner::as_select()).order(partners::id).load(&mut *conn).expect("load")
    }

    /// One partner as stored now.
    pub fn partner(&self, id: i64) -> Option<Partner> {
        partners::table
            .find(id)
            .select(Partner::as_select())
            .first(&mut *self.db.conn().expect("connection"))
            .optional()
            .expect("load")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{path}{suffix}"));
                }
                let _ = std::fs::remove_dir_all(format!("{path}.workers"));
            }
            Cleanup::PgDatabase { admin_url, name } => {
                let redacted = queue_diesel::database::redact(&self.url);
                let folder = queue_diesel::liveness::folder_of_server(&std::env::temp_dir(), &redacted);
                let _ = std::fs::remove_dir_all(folder);
                if let Ok(mut admin) = PgConnection::establish(admin_url) {
                    let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin);
                }
            }
        }
    }
}

/// Triggers a worker's shutdown when dropped, so a failed assertion never leaves a worker
/// thread running inside `std::thread::scope`.
#[derive(Debug)]
pub struct StopOnDrop<'a>(pub &'a queue_diesel::Shutdown);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.trigger();
    }
}

/// Run `worker` on a thread of its own while `body` runs, then stop it and check it stopped
/// cleanly; returns what `body` returned.
pub fn while_running<R>(worker: &queue_diesel::Worker, body: impl FnOnce() -> R) -> R {
    let shutdown = queue_diesel::Shutdown::new();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&shutdown);
        let run = s.spawn(|| worker.run(&shutdown));
        let value = body();
        shutdown.trigger();
        run.join().expect("no panic").expect("clean stop");
        value
    })
}

/// Claim up to `limit` due jobs of any channel and function under `lease` (worker "w1").
pub fn claim_any(
    conn: &mut queue_diesel::AnyConnection,
    lease: &str,
    limit: i64,
) -> Vec<queue_diesel::store::RunRow> {
    use queue_diesel::store::{ClaimParams, Store};
    conn.job_claim(&ClaimParams {
        worker_id: "w1",
        lease_token: lease,
        now: chrono::Utc::now(),
        limit,
        channel: None,
        uuids: None,
        funcs: None,
        ignore_eta: false,
        slots: &[],
    })
    .expect("claim")
}

/// End a claimed job as `state` under `lease`, as a worker would; false when the lease is gone.
pub fn finish_as(
    conn: &mut queue_diesel::AnyConnection,
    id: i64,
    lease: &str,
    state: queue_diesel::JobState,
) -> bool {
    use queue_diesel::store::{Hold, SettleParams, Store};
    let now = chrono::Utc::now();
    let settlement = queue_diesel::core::Settlement {
        state,
        attempts: 1,
        interruptions: 0,
        retry_in: (state == queue_diesel::JobState::Pending).then_some(Duration::ZERO),
        result: None,
        exc: None,
        isolation: queue_diesel::core::Isolation::Shared,
    };
    let params = SettleParams {
        id,
        hold: Hold::Lease(lease),
        settlement: &settlement,
        worker_id: "w1",
        started: now,
        now,
    };
    conn.job_settle(&params).expect("finish")
}

/// Give job `uuid` a function no binary has (`gone.model.method`), as if the code that queued
/// it had been removed since.
pub fn orphan(db: &Database, uuid: &queue_diesel::JobId) {
    let renamed =
        diesel::sql_query(format!("UPDATE queue_job SET func = 'gone.model.method' WHERE uuid = '{uuid}'"));
    match &mut *db.conn().expect("conn") {
        queue_diesel::AnyConnection::Sqlite(c) => renamed.execute(c),
        queue_diesel::AnyConnection::Postgres(c) => renamed.execute(c),
    }
    .expect("renamed");
}

/// Wait until `done` holds, up to `limit`; false if it never did.
pub fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

/// Define each test once per backend: `backend_tests!(name, …)` expects `fn name(t: TestDb)`
/// (opened with worker configured) and emits `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    let t = $crate::TestDb::new($crate::Kind::Sqlite, |b| b).expect("sqlite always works");
                    super::$name(t);
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                #[cfg_attr(
                    not(queue_postgres_tests),
                    ignore = "set QUEUE_TEST_POSTGRES_URL (e.g. postgres://postgres@127.0.0.1/test) to run the PostgreSQL tests"
                )]
                fn $name() {
                    let t = $crate::TestDb::new($crate::Kind::Postgres, |b| b)
                        .expect("QUEUE_TEST_POSTGRES_URL was set when the suite was built: set it when it runs too");
                    super::$name(t);
                }
            )*
        }
    };
}
