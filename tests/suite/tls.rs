//! TLS to PostgreSQL with the default features, against a cluster that accepts TLS connections
//! only (`.ci/tls-postgres` starts one on port 5433 with a certificate authority of its own).
//! The tests run when the suite is built with `QUEUE_TEST_POSTGRES_TLS_URL` and
//! `QUEUE_TEST_POSTGRES_TLS_CA` set.

use diesel::prelude::*;
use queue_diesel::prelude::*;
use queue_diesel::{JobState, Worker, WorkerConfig};
use queue_tests::{Partner, partners};

/// A database of its own on the TLS cluster, dropped at the end.
struct TlsDb {
    base: String,
    name: String,
}

impl TlsDb {
    fn new(tag: &str) -> TlsDb {
        let server = option_env!("QUEUE_TEST_POSTGRES_TLS_URL").unwrap_or_default();
        let base = server.rsplit_once('/').map_or(server, |(base, _)| base).to_owned();
        let name = format!("queue_tls_{tag}_{}", std::process::id());
        let mut admin =
            PgConnection::establish(&format!("{server}?sslmode=require")).expect("the TLS cluster");
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {name}")).execute(&mut admin).expect("drop");
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut admin).expect("create");
        TlsDb { base, name }
    }

    fn url(&self, params: &str) -> String {
        format!("{}/{}?{params}", self.base, self.name)
    }
}

impl Drop for TlsDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&format!("{}/postgres?sslmode=require", self.base)) {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
                .execute(&mut admin);
        }
    }
}

#[derive(QueryableByName)]
struct Ssl {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    ssl: bool,
}

/// The queue opens, migrates, queues, and a worker (claims, runs, LISTEN) runs the job, all over
/// TLS.
fn queue_and_run_over(url: &str) {
    let db = Database::builder(url).worker(true).open().expect("opens over TLS");
    let mut conn = db.conn().expect("connection");
    let ssl: Ssl = diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .get_result(&mut *conn)
        .expect("pg_stat_ssl");
    assert!(ssl.ssl, "the connection is encrypted");
    conn.batch("CREATE TABLE partners (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, exports INTEGER NOT NULL DEFAULT 0, note TEXT NOT NULL DEFAULT '')")
        .expect("partners");
    diesel::insert_into(partners::table)
        .values(partners::name.eq("ada"))
        .execute(&mut *conn)
        .expect("insert");
    drop(conn);
    let list: Vec<Partner> = partners::table
        .select(Partner::as_select())
        .load(&mut *db.conn().expect("connection"))
        .expect("load");
    let handle =
        db.transaction(Context::user(1), |_| Partner::queue().export(&list, "tls".into())).expect("queued");
    Worker::new(db.clone(), WorkerConfig::default()).expect("worker").run_until_idle().expect("runs");
    assert_eq!(db.job(&handle.uuid()).expect("job").state, JobState::Done);
}

fn ca() -> &'static str {
    option_env!("QUEUE_TEST_POSTGRES_TLS_CA").unwrap_or_default()
}

#[test]
#[cfg_attr(
    not(queue_postgres_tls_tests),
    ignore = "run .ci/tls-postgres and build with the variables it prints"
)]
fn sslmode_require_encrypts_every_connection_of_the_queue() {
    let db = TlsDb::new("require");
    queue_and_run_over(&db.url("sslmode=require"));
}

#[test]
#[cfg_attr(
    not(queue_postgres_tls_tests),
    ignore = "run .ci/tls-postgres and build with the variables it prints"
)]
fn sslmode_verify_full_checks_the_servers_certificate() {
    let db = TlsDb::new("verify");
    queue_and_run_over(&db.url(&format!("sslmode=verify-full&sslrootcert={}", ca())));
    // A certificate that did not sign the server's is refused.
    let server_cert = std::path::Path::new(ca()).with_file_name("server.crt");
    let refused =
        Database::open(&db.url(&format!("sslmode=verify-full&sslrootcert={}", server_cert.display())))
            .expect_err("an unknown authority is refused");
    let text = format!("{refused}: {:?}", std::error::Error::source(&refused));
    assert!(text.contains("certificate verify failed"), "{text}");
}

#[test]
#[cfg_attr(
    not(queue_postgres_tls_tests),
    ignore = "run .ci/tls-postgres and build with the variables it prints"
)]
fn a_server_that_requires_tls_refuses_a_plain_connection() {
    let db = TlsDb::new("plain");
    let refused = Database::open(&db.url("sslmode=disable")).expect_err("refused");
    let text = format!("{refused}: {:?}", std::error::Error::source(&refused));
    assert!(text.contains("no encryption"), "{text}");
}
