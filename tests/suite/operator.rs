//! Operator actions: requeue, cancel, set done.

use queue_diesel::prelude::*;
use queue_diesel::{Error, JobState, OperatorAction, Worker, WorkerConfig};
use queue_tests::{Partner, TestDb, backend_tests, claim_any};

backend_tests!(
    requeue_runs_a_failed_job_again_from_zero,
    cancel_and_set_done_end_jobs_without_running_them,
    cancelling_a_running_job_discards_its_outcome,
    illegal_actions_are_refused_with_what_is_allowed,
);

fn worker(t: &TestDb) -> Worker {
    Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker")
}

fn requeue_runs_a_failed_job_again_from_zero(t: TestDb) {
    let list = t.partners(&["ada"]);
    let id = t.db.transaction(Context::new(), |_| Partner::queue().explode(&list)).expect("queued").uuid();
    worker(&t).run_until_idle().expect("runs");
    assert_eq!(t.db.job(&id).expect("job").state, JobState::Failed);
    let job = t.db.job_action(&id, OperatorAction::Requeue).expect("requeued");
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.attempts, 0);
    assert_eq!((job.exc_name, job.exc_message, job.date_done), (None, None, None));
    assert_eq!(worker(&t).run_until_idle().expect("runs"), 1, "runs again");
    assert_eq!(t.db.job(&id).expect("job").attempts, 1);
}

fn cancel_and_set_done_end_jobs_without_running_them(t: TestDb) {
    let list = t.partners(&["ada"]);
    let (a, b) =
        t.db.transaction(Context::new(), |_| {
            Ok::<_, Error>((
                Partner::queue().export(&list, "a".into())?,
                Partner::queue().export(&list, "b".into())?,
            ))
        })
        .expect("queued");
    let cancelled = t.db.job_action(&a.uuid(), OperatorAction::Cancel).expect("cancelled");
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(cancelled.result.as_deref(), Some("cancelled by an operator"));
    let done = t.db.job_action(&b.uuid(), OperatorAction::SetDone).expect("done");
    assert_eq!(done.state, JobState::Done);
    assert!(done.date_done.is_some());
    assert_eq!(worker(&t).run_until_idle().expect("runs"), 0);
    assert_eq!(t.partner(list[0].id).expect("row").exports, 0, "neither ran");
    // A cancelled job can come back.
    assert_eq!(
        t.db.job_action(&a.uuid(), OperatorAction::Requeue).expect("requeued").state,
        JobState::Pending
    );
}

fn cancelling_a_running_job_discards_its_outcome(t: TestDb) {
    let list = t.partners(&["ada"]);
    let id =
        t.db.transaction(Context::new(), |_| Partner::queue().export(&list, "a".into())).expect("q").uuid();
    let mut conn = t.db.conn().expect("conn");
    let rows = claim_any(&mut conn, "lease", 1);
    assert_eq!(t.db.job_action(&id, OperatorAction::Cancel).expect("cancelled").state, JobState::Cancelled);
    let finished = queue_tests::finish_as(&mut conn, rows[0].id, "lease", JobState::Done);
    assert!(!finished, "the running worker cannot store its outcome");
    assert_eq!(t.db.job(&id).expect("job").state, JobState::Cancelled);
}

fn illegal_actions_are_refused_with_what_is_allowed(t: TestDb) {
    let list = t.partners(&["ada"]);
    let id =
        t.db.transaction(Context::new(), |_| Partner::queue().export(&list, "a".into())).expect("q").uuid();
    let err = t.db.job_action(&id, OperatorAction::Requeue).expect_err("pending needs no requeue");
    assert_eq!(err.to_string(), "cannot requeue a pending job: only failed, cancelled jobs can be");
    worker(&t).run_until_idle().expect("runs");
    let err = t.db.job_action(&id, OperatorAction::Cancel).expect_err("done is final");
    assert_eq!(
        err.to_string(),
        "cannot cancel a done job: only wait_dependencies, pending, enqueued, started, failed jobs can be"
    );
    let missing = queue_diesel::JobId::new();
    let err = t.db.job_action(&missing, OperatorAction::SetDone).expect_err("no such job");
    assert_eq!(err.to_string(), format!("no job with uuid {missing}"));
}
