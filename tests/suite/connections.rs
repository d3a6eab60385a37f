//! An application written for one backend keeps its own connection type: it queues from its own
//! pooled `PgConnection` or `SqliteConnection`, in its own transaction, and job bodies get that
//! type, so backend-only Diesel code (`ilike`, arrays, `insert_or_ignore_into`, multi-row
//! inserts) compiles and runs in a job.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::sqlite::SqliteConnection;
use queue_diesel::prelude::*;
use queue_diesel::{
    Backend, JobConnection, JobState, NoRecords, Worker, WorkerConfig, current_env, with_env,
};
use queue_tests::{TestDb, backend_tests};

backend_tests!(
    a_job_gets_the_connection_type_it_asks_for,
    a_job_asking_for_the_other_backend_fails_clearly,
    a_panic_inside_with_env_gives_the_connection_back,
    pooled_connections_the_server_ended_are_replaced,
);

diesel::table! {
    /// Notes of an application written for PostgreSQL: `tags` exists there only.
    pg_notes (id) {
        /// Row id.
        id -> BigInt,
        /// Text.
        body -> Text,
        /// Words to index.
        tags -> Array<Text>,
    }
}

diesel::table! {
    /// Notes of an application written for SQLite.
    lite_notes (id) {
        /// Row id.
        id -> BigInt,
        /// Text.
        body -> Text,
    }
}

diesel::table! {
    /// What the index jobs wrote.
    note_words (note_id, word) {
        /// The note.
        note_id -> BigInt,
        /// One word.
        word -> Text,
    }
}

/// A note of the PostgreSQL application: it loads on `PgConnection` only.
#[derive(Debug, Queryable, Selectable, Model)]
#[diesel(table_name = pg_notes)]
#[queue(model = "test.pg_note")]
pub struct PgNote {
    /// Row id.
    pub id: i64,
    /// Text.
    pub body: String,
    /// Words to index.
    pub tags: Vec<String>,
}

#[queueable]
impl PgNote {
    /// Index the tags of the notes whose body matches `pattern`, ignoring case.
    pub fn index(records: Vec<PgNote>, env: &Env<PgConnection>, pattern: String) -> JobResult<String> {
        let conn: &mut PgConnection = &mut env.conn();
        let ids: Vec<i64> = records.iter().map(|n| n.id).collect();
        let matching: Vec<i64> = pg_notes::table
            .filter(pg_notes::id.eq_any(&ids))
            .filter(pg_notes::body.ilike(&pattern))
            .select(pg_notes::id)
            .load(conn)?;
        let rows: Vec<_> = records
            .iter()
            .filter(|n| matching.contains(&n.id) && !n.body.is_empty())
            .flat_map(|n| {
                n.tags.iter().map(|t| (note_words::note_id.eq(n.id), note_words::word.eq(t.clone())))
            })
            .collect();
        let written =
            diesel::insert_into(note_words::table).values(&rows).on_conflict_do_nothing().execute(conn)?;
        Ok(format!("{written} words for user {:?}", env.user_id()))
    }
}

/// A note of the SQLite application.
#[derive(Debug, Queryable, Selectable, Model)]
#[diesel(table_name = lite_notes)]
#[queue(model = "test.lite_note")]
pub struct LiteNote {
    /// Row id.
    pub id: i64,
    /// Text.
    pub body: String,
}

#[queueable]
impl LiteNote {
    /// Index each word of the notes, once.
    pub fn index(records: Vec<LiteNote>, env: &Env<SqliteConnection>) -> JobResult<String> {
        let conn: &mut SqliteConnection = &mut env.conn();
        let rows: Vec<_> = records
            .iter()
            .flat_map(|n| {
                n.body
                    .split_whitespace()
                    .map(|w| (note_words::note_id.eq(n.id), note_words::word.eq(w.to_owned())))
            })
            .collect();
        let written = diesel::insert_or_ignore_into(note_words::table).values(&rows).execute(conn)?;
        Ok(format!("{written} words for user {:?}", env.user_id()))
    }
}

fn run_all(t: &TestDb) -> u64 {
    Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker").run_until_idle().expect("runs")
}

fn words(t: &TestDb) -> Vec<(i64, String)> {
    note_words::table
        .select((note_words::note_id, note_words::word))
        .order((note_words::note_id, note_words::word))
        .load(&mut *t.db.conn().expect("connection"))
        .expect("words")
}

/// The application's own pool of its own connection type.
fn own_pool<C: JobConnection + diesel::r2d2::R2D2Connection>(t: &TestDb) -> Pool<ConnectionManager<C>> {
    Pool::builder().max_size(2).build(ConnectionManager::<C>::new(&t.url)).expect("the application's pool")
}

/// Inside `with_env` on the application's own connection, the queue's view refuses to hand it
/// out as an `AnyConnection` (it is not one).
fn any_view_is_refused() {
    let refused = current_env(|env| env.try_conn().map(|_| ()).err()).expect("in a transaction");
    let refused = refused.expect("refused").to_string();
    assert!(refused.contains("cannot be used as AnyConnection"), "{refused}");
}

fn a_job_gets_the_connection_type_it_asks_for(t: TestDb) {
    let mut admin = t.db.conn().expect("connection");
    match t.db.backend() {
        Backend::Postgres => {
            admin
                .batch("CREATE TABLE pg_notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL, tags TEXT[] NOT NULL); CREATE TABLE note_words (note_id BIGINT NOT NULL, word TEXT NOT NULL, PRIMARY KEY (note_id, word))")
                .expect("tables");
            drop(admin);
            let pool = own_pool::<PgConnection>(&t);
            let mut conn = pool.get().expect("pooled");
            let queued = conn
                .transaction::<_, diesel::result::Error, _>(|conn| {
                    diesel::insert_into(pg_notes::table)
                        .values(&vec![
                            (pg_notes::body.eq("Rust and Diesel"), pg_notes::tags.eq(vec!["rust", "diesel"])),
                            (pg_notes::body.eq("cooking"), pg_notes::tags.eq(vec!["food"])),
                        ])
                        .execute(conn)?;
                    let notes: Vec<PgNote> =
                        pg_notes::table.select(PgNote::as_select()).order(pg_notes::id).load(conn)?;
                    let (queued, ids) = with_env(&t.db, conn, Context::user(3), |env| {
                        // The application's own PostgreSQL code runs on the same connection.
                        let found: i64 = pg_notes::table
                            .filter(pg_notes::body.ilike("%RUST%"))
                            .count()
                            .get_result(&mut *env.conn())?;
                        assert_eq!(found, 1);
                        any_view_is_refused();
                        PgNote::queue()
                            .index(&notes, "%rust%".into())
                            .map_err(|e| diesel::result::Error::QueryBuilderError(Box::new(e)))
                    });
                    queued?;
                    Ok(ids)
                })
                .expect("committed");
            assert_eq!(queued.len(), 1);
        }
        Backend::Sqlite => {
            admin
                .batch("CREATE TABLE lite_notes (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL); CREATE TABLE note_words (note_id BIGINT NOT NULL, word TEXT NOT NULL, PRIMARY KEY (note_id, word))")
                .expect("tables");
            drop(admin);
            let pool = own_pool::<SqliteConnection>(&t);
            let mut conn = pool.get().expect("pooled");
            let queued = conn
                .transaction::<_, diesel::result::Error, _>(|conn| {
                    diesel::insert_into(lite_notes::table)
                        .values(&vec![lite_notes::body.eq("diesel rust"), lite_notes::body.eq("rust rust")])
                        .execute(conn)?;
                    let notes: Vec<LiteNote> =
                        lite_notes::table.select(LiteNote::as_select()).order(lite_notes::id).load(conn)?;
                    let (queued, ids) = with_env(&t.db, conn, Context::user(3), |env| {
                        any_view_is_refused();
                        {
                            // The application's own SQLite code runs on the same connection.
                            let conn: &mut SqliteConnection = &mut env.conn();
                            diesel::insert_or_ignore_into(lite_notes::table)
                                .values((lite_notes::id.eq(1), lite_notes::body.eq("ignored")))
                                .execute(conn)?;
                        }
                        LiteNote::queue()
                            .index(&notes)
                            .map_err(|e| diesel::result::Error::QueryBuilderError(Box::new(e)))
                    });
                    queued?;
                    Ok(ids)
                })
                .expect("committed");
            assert_eq!(queued.len(), 1);
        }
    }
    assert_eq!(run_all(&t), 1);
    let jobs = t.db.jobs(&Default::default()).expect("jobs");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].state, JobState::Done, "{:?}", jobs[0].exc_message);
    let expected: Vec<(i64, String)> = match t.db.backend() {
        Backend::Postgres => vec![(1, "diesel".into()), (1, "rust".into())],
        Backend::Sqlite => vec![(1, "diesel".into()), (1, "rust".into()), (2, "rust".into())],
    };
    assert_eq!(
        jobs[0].result.as_deref(),
        Some(format!("{} words for user Some(3)", expected.len()).as_str())
    );
    assert_eq!(words(&t), expected);
}

fn a_job_asking_for_the_other_backend_fails_clearly(t: TestDb) {
    let handle =
        t.db.transaction(Context::user(1), |_| match t.db.backend() {
            Backend::Postgres => LiteNote::queue().index(NoRecords),
            Backend::Sqlite => PgNote::queue().index(NoRecords, "%".into()),
        })
        .expect("queued");
    run_all(&t);
    let job = t.db.job(&handle.uuid()).expect("job");
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.exc_name.as_deref(), Some("ConnectionTypeError"));
    let message = job.exc_message.unwrap_or_default();
    let expected = match t.db.backend() {
        Backend::Postgres => {
            "test.lite_note.index works on a SqliteConnection, but this worker's connection is a PgConnection (the database is PostgreSQL)"
        }
        Backend::Sqlite => {
            "test.pg_note.index works on a PgConnection, but this worker's connection is a SqliteConnection (the database is SQLite)"
        }
    };
    assert_eq!(message, expected);
}

/// The application's connection is lent to the queue for the scope of `with_env`: a panic there
/// leaves it in place and usable.
fn lend_survives_a_panic<C: JobConnection + diesel::r2d2::R2D2Connection>(t: &TestDb) {
    let pool = own_pool::<C>(t);
    let mut conn = pool.get().expect("pooled");
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        with_env(&t.db, &mut conn, Context::user(1), |_| panic!("the application's code panics"))
    }));
    assert!(unwound.is_err());
    diesel::connection::SimpleConnection::batch_execute(&mut *conn, "SELECT 1")
        .expect("the connection works");
}

fn a_panic_inside_with_env_gives_the_connection_back(t: TestDb) {
    match t.db.backend() {
        Backend::Postgres => lend_survives_a_panic::<PgConnection>(&t),
        Backend::Sqlite => lend_survives_a_panic::<SqliteConnection>(&t),
    }
}

/// PostgreSQL ends every session of the pool (as a restart would): once they are past the
/// second a connection is trusted without a ping, the pool hands out working connections again.
fn pooled_connections_the_server_ended_are_replaced(t: TestDb) {
    if t.db.backend() != Backend::Postgres {
        return;
    }
    let db = t.reopen(|b| b.pool_size(3));
    let list = t.partners(&["ada"]);
    // Three connections, used once each.
    let held: Vec<_> = (0..3).map(|_| db.conn().expect("a connection")).collect();
    drop(held);
    let mut admin = PgConnection::establish(&t.url).expect("admin connection");
    let ended: Vec<bool> = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    ))
    .load(&mut admin)
    .expect("sessions ended");
    assert!(ended.len() >= 3, "the pool's sessions were there: {ended:?}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for _ in 0..5 {
        let id = db
            .transaction(Context::new(), |_| queue_tests::Partner::queue().export(&list, "crm".into()))
            .expect("queued on a working connection")
            .uuid();
        assert_eq!(db.job(&id).expect("read back").state, JobState::Pending);
    }
}
