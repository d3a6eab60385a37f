//! What a run stores: results, errors, panics, retries, cancellation, deleted records.

use diesel::prelude::*;
use queue_diesel::prelude::*;
use queue_diesel::schema::queue_job;
use queue_diesel::store::ListParams;
use queue_diesel::{Clock, JobHandle, JobId, JobState, MockClock, Worker, WorkerConfig};
use queue_tests::{Partner, TestDb, backend_tests, partners};

backend_tests!(
    an_error_is_stored_and_the_jobs_writes_are_rolled_back,
    a_panic_fails_the_job_and_the_worker_goes_on,
    retry_postpones_until_max_retries_then_fails,
    retry_pattern_sets_the_delays,
    postpone_does_not_use_up_tries,
    a_job_that_leaves_a_transaction_open_fails_and_writes_nothing,
    absurd_retry_delays_are_cut_to_a_century,
    cancel_verdict_cancels,
    deleted_records_are_skipped,
    all_records_deleted_means_nothing_to_do,
    arguments_that_no_longer_decode_fail_with_a_reason,
    jobs_of_unknown_functions_stay_pending,
);

fn run_all(t: &TestDb) -> u64 {
    Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker").run_until_idle().expect("runs")
}

fn queue(t: &TestDb, f: impl FnOnce(&Env) -> Result<JobHandle, queue_diesel::Error>) -> JobId {
    t.db.transaction(Context::user(1), f).expect("queued").uuid()
}

fn an_error_is_stored_and_the_jobs_writes_are_rolled_back(t: TestDb) {
    let list = t.partners(&["ada"]);
    let id = queue(&t, |_| Partner::queue().write_then_fail(&list, "ERP refused".into()));
    run_all(&t);
    let job = t.db.job(&id).expect("job");
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.exc_name.as_deref(), Some("ExportError"));
    assert_eq!(job.exc_message.as_deref(), Some("ERP refused"));
    assert!(job.date_done.is_some());
    assert_eq!(t.partner(list[0].id).expect("row").note, "", "the job's own write was rolled back");
}

fn a_panic_fails_the_job_and_the_worker_goes_on(t: TestDb) {
    let list = t.partners(&["ada"]);
    let boom = queue(&t, |_| Partner::queue().priority(1).explode(&list));
    let after = queue(&t, |_| Partner::queue().priority(2).export(&list, "after".into()));
    assert_eq!(run_all(&t), 2);
    let job = t.db.job(&boom).expect("job");
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.exc_name.as_deref(), Some("panic"));
    assert_eq!(job.exc_message.as_deref(), Some("boom at the core"));
    assert_eq!(t.db.job(&after).expect("job").state, JobState::Done);
}

fn retry_postpones_until_max_retries_then_fails(t: TestDb) {
    let clock =
        MockClock::new(chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0).expect("now"));
    let db = t.reopen(|b| b.clock(std::sync::Arc::new(clock.clone())));
    let list = t.partners(&["ada"]);
    let id = db.transaction(Context::new(), |_| Partner::queue().flaky(&list, 60)).expect("queued").uuid();
    let worker = Worker::new(db.clone(), WorkerConfig::default()).expect("worker");
    assert_eq!(worker.run_until_idle().expect("runs"), 1);
    let job = db.job(&id).expect("job");
    assert_eq!(job.state, JobState::Pending, "postponed");
    assert_eq!(job.attempts, 1);
    assert_eq!(job.exc_message.as_deref(), Some("remote busy"));
    let eta = job.eta.expect("an eta");
    assert_eq!((eta - clock.now()).num_seconds(), 60);
    assert_eq!(worker.run_until_idle().expect("runs"), 0, "not before its eta");
    clock.advance(chrono::TimeDelta::seconds(61));
    assert_eq!(worker.run_until_idle().expect("runs"), 1, "second try; max_retries = 2 ends it");
    let job = db.job(&id).expect("job");
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts, 2);
    assert_eq!(job.exc_name.as_deref(), Some("MaxRetriesReached"));
    assert_eq!(job.exc_message.as_deref(), Some("max retries (2) reached: remote busy"));
}

fn cancel_verdict_cancels(t: TestDb) {
    let list = t.partners(&["ada"]);
    let id = queue(&t, |_| Partner::queue().give_up(&list));
    run_all(&t);
    let job = t.db.job(&id).expect("job");
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(job.result.as_deref(), Some("not needed any more"));
}

fn deleted_records_are_skipped(t: TestDb) {
    let list = t.partners(&["ada", "bob", "cy"]);
    let id = queue(&t, |_| Partner::queue().export(&list, "erp".into()));
    diesel::delete(partners::table.find(list[1].id))
        .execute(&mut *t.db.conn().expect("conn"))
        .expect("deleted");
    run_all(&t);
    let job = t.db.job(&id).expect("job");
    assert_eq!(job.state, JobState::Done);
    assert_eq!(job.result.as_deref(), Some("exported ada,cy"), "bob was deleted; order kept");
}

fn all_records_deleted_means_nothing_to_do(t: TestDb) {
    let list = t.partners(&["ada"]);
    let id = queue(&t, |_| Partner::queue().export(&list, "erp".into()));
    diesel::delete(partners::table).execute(&mut *t.db.conn().expect("conn")).expect("deleted");
    run_all(&t);
    let job = t.db.job(&id).expect("job");
    assert_eq!(job.state, JobState::Done);
    assert_eq!(job.result.as_deref(), Some("all 1 record(s) of res.partner were deleted"));
}

fn arguments_that_no_longer_decode_fail_with_a_reason(t: TestDb) {
    let list = t.partners(&["ada"]);
    let id = queue(&t, |_| Partner::queue().export(&list, "erp".into()));
    // As if an older version of the code had stored another shape.
    diesel::update(queue_job::table)
        .set(queue_job::args.eq(r#"{"target": 42}"#))
        .execute(&mut *t.db.conn().expect("conn"))
        .expect("updated");
    run_all(&t);
    let job = t.db.job(&id).expect("job");
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.exc_name.as_deref(), Some("ArgumentError"));
    let message = job.exc_message.unwrap_or_default();
    assert!(
        message.starts_with("cannot decode argument `target` of res.partner.export: invalid type"),
        "{message}"
    );

    // Invalid JSON altogether: the row cannot even be decoded, and still is not lost.
    let id = queue(&t, |_| Partner::queue().export(&list, "erp".into()));
    diesel::update(queue_job::table.filter(queue_job::uuid.eq(id.to_string())))
        .set(queue_job::args.eq("{not json"))
        .execute(&mut *t.db.conn().expect("conn"))
        .expect("updated");
    run_all(&t);
    let row: (String, Option<String>) = queue_job::table
        .filter(queue_job::uuid.eq(id.to_string()))
        .select((queue_job::state, queue_job::exc_name))
        .first(&mut *t.db.conn().expect("conn"))
        .expect("row");
    assert_eq!(row, ("failed".to_owned(), Some("DecodeError".to_owned())));
}

fn jobs_of_unknown_functions_stay_pending(t: TestDb) {
    let list = t.partners(&["ada"]);
    let id = queue(&t, |_| Partner::queue().export(&list, "erp".into()));
    diesel::update(queue_job::table)
        .set(queue_job::func.eq("res.partner.removed_method"))
        .execute(&mut *t.db.conn().expect("conn"))
        .expect("updated");
    assert_eq!(run_all(&t), 0, "this binary does not know the function");
    assert_eq!(t.db.job(&id).expect("job").state, JobState::Pending, "left for a binary that knows it");
    let pending = t.db.jobs(&ListParams::default().state(JobState::Pending)).expect("list");
    assert_eq!(pending.len(), 1);
}

fn mock_db(t: &TestDb) -> (Database, MockClock) {
    let clock =
        MockClock::new(chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0).expect("now"));
    (t.reopen(|b| b.clock(std::sync::Arc::new(clock.clone()))), clock)
}

fn retry_pattern_sets_the_delays(t: TestDb) {
    let (db, clock) = mock_db(&t);
    let list = t.partners(&["ada"]);
    let id = db.transaction(Context::new(), |_| Partner::queue().patterned(&list)).expect("queued").uuid();
    let worker = Worker::new(db.clone(), WorkerConfig::default()).expect("worker");
    let mut delays = Vec::new();
    for _ in 0..4 {
        assert_eq!(worker.run_until_idle().expect("runs"), 1);
        let job = db.job(&id).expect("job");
        assert_eq!(job.state, JobState::Pending, "max_retries = 0 retries forever");
        let eta = job.eta.expect("eta");
        delays.push((eta - clock.now()).num_seconds());
        clock.set(eta);
    }
    assert_eq!(delays, vec![5, 5, 50, 50], "1:5 from the first try, 3:50 from the third");
    assert_eq!(db.job(&id).expect("job").attempts, 4);
}

fn postpone_does_not_use_up_tries(t: TestDb) {
    let (db, clock) = mock_db(&t);
    let list = t.partners(&["ada"]);
    let id =
        db.transaction(Context::new(), |_| Partner::queue().waits_for_data(&list)).expect("queued").uuid();
    let worker = Worker::new(db.clone(), WorkerConfig::default()).expect("worker");
    for _ in 0..3 {
        assert_eq!(worker.run_until_idle().expect("runs"), 1);
        let job = db.job(&id).expect("job");
        assert_eq!((job.state, job.attempts), (JobState::Pending, 0), "max_retries = 1, yet still pending");
        assert_eq!(job.exc_name.as_deref(), Some("Postponed"));
        assert_eq!((job.eta.expect("eta") - clock.now()).num_seconds(), 30);
        clock.advance(chrono::TimeDelta::seconds(30));
    }
}

fn a_job_that_leaves_a_transaction_open_fails_and_writes_nothing(t: TestDb) {
    let list = t.partners(&["ada"]);
    let id = queue(&t, |_| Partner::queue().leaves_savepoint(&list));
    assert_eq!(run_all(&t), 1);
    let job = t.db.job(&id).expect("job");
    assert_eq!(job.state, JobState::Failed);
    let message = job.exc_message.unwrap_or_default();
    assert!(message.starts_with("transaction left at depth 2 instead of 1"), "{message}");
    assert_eq!(t.partner(list[0].id).expect("row").note, "", "rolled back");
    // The worker's connection is clean again: the next job runs.
    let next = queue(&t, |_| Partner::queue().export(&list, "after".into()));
    assert_eq!(run_all(&t), 1);
    assert_eq!(t.db.job(&next).expect("job").state, JobState::Done);
}

fn absurd_retry_delays_are_cut_to_a_century(t: TestDb) {
    let list = t.partners(&["ada"]);
    let id = queue(&t, |_| Partner::queue().flaky(&list, u64::MAX));
    assert_eq!(run_all(&t), 1, "the worker survives");
    let job = t.db.job(&id).expect("job");
    assert_eq!(job.state, JobState::Pending);
    let years = (job.eta.expect("eta") - chrono::Utc::now()).num_days() / 365;
    assert_eq!(years, 100);
}
