//! Operator actions: requeue, cancel, set done.

use std::time::Duration;

use diesel::prelude::*;
use queue_diesel::maintenance::{Pruner, Retention};
use queue_diesel::prelude::*;
use queue_diesel::schema::queue_job_dependency;
use queue_diesel::{AnyConnection, Error, JobState, MockClock, OperatorAction, Worker, WorkerConfig};
use queue_tests::{Partner, TestDb, backend_tests, claim_any};

backend_tests!(
    requeue_runs_a_failed_job_again_from_zero,
    cancel_and_set_done_end_jobs_without_running_them,
    cancelling_a_running_job_discards_its_outcome,
    illegal_actions_are_refused_with_what_is_allowed,
    finished_jobs_are_pruned_past_their_retention,
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

fn finished_jobs_are_pruned_past_their_retention(t: TestDb) {
    let clock =
        MockClock::new(chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0).expect("now"));
    let db = t.reopen(|b| b.clock(std::sync::Arc::new(clock.clone())));
    let list = t.partners(&["ada", "bob"]);
    let ids = db
        .transaction(Context::new(), |_| {
            let parent = Partner::queue().export(&list[0], "x".into())?;
            let child = Partner::queue().depends_on(&parent).export(&list[1], "x".into())?;
            let failing = Partner::queue().write_then_fail(&list[1], "no".into())?;
            Ok::<_, Error>([
                parent.uuid(),
                child.uuid(),
                Partner::queue().give_up(&list[0])?.uuid(),
                Partner::queue().write_then_fail(&list[0], "no".into())?.uuid(),
                Partner::queue().flaky(&list[0], 3600)?.uuid(),
                failing.uuid(),
                Partner::queue().depends_on(&failing).export(&list[1], "y".into())?.uuid(),
            ])
        })
        .expect("queued");
    Worker::new(db.clone(), WorkerConfig::default()).expect("worker").run_until_idle().expect("runs");
    let state = |i: usize| db.job(&ids[i]).map(|j| j.state);
    let states: Vec<_> = (0..7).map(|i| state(i).expect("job")).collect();
    use JobState::*;
    assert_eq!(states, [Done, Done, Cancelled, Failed, Pending, Failed, WaitDependencies]);
    let links = || -> i64 {
        let mut conn = db.conn().expect("conn");
        match &mut *conn {
            AnyConnection::Sqlite(c) => queue_job_dependency::table.count().get_result(c),
            AnyConnection::Postgres(c) => queue_job_dependency::table.count().get_result(c),
        }
        .expect("count")
    };
    assert_eq!(links(), 2);

    let hour = Duration::from_secs(3600);
    let pruner = Pruner::new(db.clone(), Retention { done: Some(hour), failed: Some(2 * hour) });
    assert_eq!(pruner.run_once().expect("prunes"), 0, "nothing is old enough yet");
    clock.advance(chrono::TimeDelta::minutes(90));
    assert_eq!(pruner.run_once().expect("prunes"), 3, "done and cancelled jobs past an hour");
    assert!((0..3).all(|i| matches!(state(i), Err(Error::JobNotFound(_)))), "deleted");
    assert_eq!(links(), 1, "their dependency links went with them");
    assert_eq!((state(3).expect("kept"), state(4).expect("kept")), (Failed, Pending));
    clock.advance(chrono::TimeDelta::minutes(60));
    assert_eq!(pruner.run_once().expect("prunes"), 1, "failed jobs past two hours");
    assert_eq!(state(4).expect("an unfinished job is never pruned"), Pending);
    assert_eq!(state(5).expect("a parent still waited for stays"), Failed);
    assert_eq!(links(), 1);
    let forever = Pruner::new(db.clone(), Retention { done: None, failed: None });
    clock.advance(chrono::TimeDelta::days(365));
    assert_eq!(forever.run_once().expect("prunes"), 0);
}
