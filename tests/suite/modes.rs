//! Enqueue in a transaction, and the three run modes.

use diesel::prelude::*;
use queue_diesel::prelude::*;
use queue_diesel::store::{ListParams, Store};
use queue_diesel::{Error, JobState, Worker, WorkerConfig, with_env};
use queue_tests::{Partner, TestDb, backend_tests, partners};

backend_tests!(
    enqueue_stores_the_call_and_a_worker_runs_it,
    rollback_drops_the_job,
    without_worker_jobs_run_after_commit,
    without_worker_fan_out_runs_the_children_too,
    no_delay_context_flag_runs_at_the_call,
    no_delay_setting_runs_at_the_call_and_reports_failures,
    queueing_outside_a_transaction_is_an_error,
    nested_transactions_share_the_connection,
    with_env_joins_an_application_transaction,
    calls_without_records_run_on_the_model,
    a_held_connection_guard_is_reported_not_a_deadlock,
    oversized_arguments_are_refused_at_the_call,
    bulk_queues_many_jobs_in_few_statements,
    run_until_idle_stops_at_a_job_due_again,
);

fn run_until_idle_stops_at_a_job_due_again(t: TestDb) {
    let list = t.partners(&["ada"]);
    let id =
        t.db.transaction(Context::new(), |_| Partner::queue().retries_at_once(&list)).expect("queued").uuid();
    let worker = worker(&t);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = done.send(worker.run_until_idle().expect("runs"));
        });
        let ran = finished.recv_timeout(std::time::Duration::from_secs(20)).expect("it returns");
        assert!(ran >= 1, "it ran the job");
    });
    let job = t.db.job(&id).expect("job");
    assert_eq!(job.state, JobState::Pending, "due again, for the next call");
}

fn worker(t: &TestDb) -> Worker {
    Worker::new(t.db.clone(), WorkerConfig::default()).expect("functions are linked")
}

fn enqueue_stores_the_call_and_a_worker_runs_it(t: TestDb) {
    let list = t.partners(&["ada", "bob"]);
    let handle =
        t.db.transaction(Context::user(7).with("lang", "fr"), |_env| {
            Partner::queue().priority(30).export(&list, "erp".into())
        })
        .expect("queued");
    let job = t.db.job(&handle.uuid()).expect("stored");
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.func, "res.partner.export");
    assert_eq!(job.model, "res.partner");
    assert_eq!(job.record_ids, vec![list[0].id, list[1].id]);
    assert_eq!(job.args, serde_json::json!({"target": "erp"}));
    assert_eq!(job.context.user_id(), Some(7));
    assert_eq!(job.context.get("lang"), Some(&serde_json::json!("fr")));
    assert_eq!(job.priority, 30);
    assert_eq!(job.channel, "root.export", "the method's default channel");
    assert_eq!(job.max_retries, 3, "the method's default max_retries");
    assert_eq!(job.description, "Export partners.", "the doc line");
    assert_eq!(t.partner(list[0].id).expect("row").exports, 0, "nothing ran yet");

    assert_eq!(worker(&t).run_until_idle().expect("runs"), 1);
    let job = t.db.job(&handle.uuid()).expect("stored");
    assert_eq!(job.state, JobState::Done);
    assert_eq!(job.attempts, 1);
    assert_eq!(job.result.as_deref(), Some("exported ada,bob"));
    assert!(job.date_done.is_some() && job.date_started.is_some());
    let ada = t.partner(list[0].id).expect("row");
    assert_eq!(ada.exports, 1);
    assert_eq!(ada.note, "erp:7:fr", "user and context restored");
}

fn rollback_drops_the_job(t: TestDb) {
    let list = t.partners(&["ada"]);
    let outcome: Result<(), Error> = t.db.transaction(Context::user(1), |_env| {
        Partner::queue().export(&list, "erp".into())?;
        Err(Error::Config("changed my mind".into()))
    });
    assert!(outcome.is_err());
    let jobs = t.db.jobs(&ListParams::default()).expect("list");
    assert!(jobs.is_empty(), "rolled back with its transaction: {jobs:?}");
}

fn without_worker_jobs_run_after_commit(t: TestDb) {
    let db = t.reopen(|b| b.worker(false));
    let list = t.partners(&["ada"]);
    let id = list[0].id;
    let handle = db
        .transaction(Context::user(3).with("lang", "de"), |env| {
            let handle = Partner::queue().export(&list, "crm".into())?;
            let seen: i32 = partners::table.find(id).select(partners::exports).first(&mut *env.conn())?;
            assert_eq!(seen, 0, "not run before the commit");
            Ok::<_, Error>(handle)
        })
        .expect("committed");
    let job = db.job(&handle.uuid()).expect("stored");
    assert_eq!(job.state, JobState::Done, "ran right after commit");
    assert_eq!(t.partner(id).expect("row").note, "crm:3:de");
}

fn without_worker_fan_out_runs_the_children_too(t: TestDb) {
    let db = t.reopen(|b| b.worker(false));
    let list = t.partners(&["ada", "bob", "cy"]);
    db.transaction(Context::user(1), |_env| Partner::queue().fan_out(&list, "fan".into())).expect("queued");
    let jobs = db.jobs(&ListParams::default()).expect("list");
    assert_eq!(jobs.len(), 4, "the fan-out job and its three children");
    assert!(jobs.iter().all(|j| j.state == JobState::Done), "{jobs:?}");
    for p in &list {
        assert_eq!(t.partner(p.id).expect("row").exports, 1);
    }
}

fn no_delay_context_flag_runs_at_the_call(t: TestDb) {
    let list = t.partners(&["ada"]);
    let id = list[0].id;
    t.db.transaction(Context::user(5).with("queue_no_delay", true), |env| {
        let handle = Partner::queue().export(&list, "now".into())?;
        assert!(handle.ran_now());
        let note: String = partners::table.find(id).select(partners::note).first(&mut *env.conn())?;
        assert_eq!(note, "now:5:-", "ran synchronously, in this transaction");
        Ok::<_, Error>(())
    })
    .expect("ran");
    assert!(t.db.jobs(&ListParams::default()).expect("list").is_empty(), "no row is stored");
}

fn no_delay_setting_runs_at_the_call_and_reports_failures(t: TestDb) {
    // What QUEUE_NO_DELAY=1 sets.
    let db = t.reopen(|b| b.no_delay(true));
    let list = t.partners(&["ada"]);
    let outcome = db.transaction(Context::new(), |_env| {
        Partner::queue().write_then_fail(&list, "refused".into())?;
        Ok::<_, Error>(())
    });
    let err = outcome.expect_err("the job's failure reaches the caller");
    assert_eq!(
        err.to_string(),
        "job res.partner.write_then_fail run without delay failed: ExportError: refused"
    );
    assert_eq!(t.partner(list[0].id).expect("row").note, "", "its writes were rolled back");
    db.transaction(Context::new(), |_env| Partner::queue().export(&list, "x".into())).expect("ran");
    assert_eq!(t.partner(list[0].id).expect("row").exports, 1);
}

fn queueing_outside_a_transaction_is_an_error(t: TestDb) {
    let list = t.partners(&["ada"]);
    let err = Partner::queue().export(&list, "erp".into()).expect_err("no transaction");
    assert!(matches!(err, Error::NoTransaction), "{err}");
    assert!(err.to_string().contains("Database::transaction"), "{err}");
}

fn nested_transactions_share_the_connection(t: TestDb) {
    let list = t.partners(&["ada", "bob"]);
    t.db.transaction(Context::user(1), |_env| {
        Partner::queue().export(&list[..1], "outer".into())?;
        // A failed inner transaction rolls back its savepoint only.
        let inner: Result<(), Error> = t.db.transaction(Context::user(2), |_env| {
            Partner::queue().export(&list[1..], "inner-failed".into())?;
            Err(Error::Config("inner failure".into()))
        });
        assert!(inner.is_err());
        t.db.transaction(Context::user(2), |env| {
            assert_eq!(env.user_id(), Some(2));
            Partner::queue().export(&list[1..], "inner".into())
        })?;
        Ok::<_, Error>(())
    })
    .expect("committed");
    let mut targets: Vec<String> =
        t.db.jobs(&ListParams::default())
            .expect("list")
            .into_iter()
            .map(|j| j.args["target"].as_str().unwrap_or_default().to_owned())
            .collect();
    targets.sort();
    assert_eq!(targets, vec!["inner", "outer"]);
}

fn with_env_joins_an_application_transaction(t: TestDb) {
    let list = t.partners(&["ada"]);
    let mut conn = t.db.conn().expect("connection");
    let committed: Result<Vec<queue_diesel::JobId>, diesel::result::Error> = conn.transaction(|conn| {
        let (handle, ids) =
            with_env(&t.db, conn, Context::user(4), |_env| Partner::queue().export(&list, "own".into()));
        assert!(handle.is_ok());
        Ok(ids)
    });
    let ids = committed.expect("committed");
    assert_eq!(ids.len(), 1);
    let rolled_back: Result<(), diesel::result::Error> = conn.transaction(|conn| {
        let _ = with_env(&t.db, conn, Context::user(4), |_env| Partner::queue().export(&list, "gone".into()));
        Err(diesel::result::Error::RollbackTransaction)
    });
    assert!(rolled_back.is_err());
    drop(conn);
    let jobs = t.db.jobs(&ListParams::default()).expect("list");
    assert_eq!(jobs.len(), 1, "the rolled-back job is gone");
    t.db.run_jobs(ids).expect("run");
    assert_eq!(t.partner(list[0].id).expect("row").note, "own:4:-");
}

fn calls_without_records_run_on_the_model(t: TestDb) {
    t.partners(&["ada", "bob"]);
    let handle =
        t.db.transaction(Context::new(), |_env| Partner::queue().count_all(NoRecords)).expect("queued");
    worker(&t).run_until_idle().expect("runs");
    let job = t.db.job(&handle.uuid()).expect("stored");
    assert_eq!(job.state, JobState::Done);
    assert_eq!(job.result.as_deref(), Some("2 partners"));
}

fn a_held_connection_guard_is_reported_not_a_deadlock(t: TestDb) {
    let list = t.partners(&["ada"]);
    let outcome = t.db.transaction(Context::new(), |env| {
        let _guard = env.conn();
        Partner::queue().export(&list, "x".into()).map(|_| ())
    });
    assert!(matches!(outcome, Err(Error::ConnectionBusy)), "{outcome:?}");
    // The store is reachable through the same guard type once released.
    let mut conn = t.db.conn().expect("connection");
    assert!(conn.job_list(&ListParams::default()).expect("list").is_empty());
}

fn oversized_arguments_are_refused_at_the_call(t: TestDb) {
    let db = t.reopen(|b| b.max_args_bytes(1000));
    let list = t.partners(&["ada"]);
    let err = db
        .transaction(Context::new(), |_| Partner::queue().export(&list, "x".repeat(2000)))
        .expect_err("too large");
    assert_eq!(
        err.to_string(),
        "arguments of res.partner.export take 2013 bytes encoded, more than the limit of 1000: store large data in a table and pass its id"
    );
    assert!(db.jobs(&ListParams::default()).expect("list").is_empty(), "nothing stored");
    db.transaction(Context::new(), |_| Partner::queue().export(&list, "x".repeat(500)))
        .expect("within the limit");
}

fn bulk_queues_many_jobs_in_few_statements(t: TestDb) {
    let list = t.partners(&["ada"]);
    let handles =
        t.db.transaction(Context::user(2), |_| {
            queue_diesel::bulk(|| {
                (0..2500)
                    .map(|i| Partner::queue().export(&list, format!("t{i}")))
                    .collect::<Result<Vec<_>, _>>()
            })
        })
        .expect("queued");
    assert_eq!(handles.len(), 2500);
    let stored = t.db.job(&handles[1234].uuid()).expect("stored");
    assert_eq!(stored.args["target"], "t1234");
    assert_eq!(stored.context.user_id(), Some(2));
    let rolled: Result<(), Error> = t.db.transaction(Context::new(), |_| {
        queue_diesel::bulk(|| Partner::queue().export(&list, "gone".into()).map(|_| ()))?;
        Err(Error::Config("rolled back".into()))
    });
    assert!(rolled.is_err());
    assert_eq!(t.db.jobs(&ListParams::default().limit(10_000)).expect("list").len(), 2500);
}
