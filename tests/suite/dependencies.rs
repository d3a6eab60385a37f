//! Dependencies: chains, groups, failed and cancelled parents.

use queue_diesel::prelude::*;
use queue_diesel::{Error, JobState, OperatorAction, Worker, WorkerConfig};
use queue_tests::{Partner, TestDb, backend_tests};

backend_tests!(
    a_chain_runs_in_order,
    a_group_waits_for_every_parent_and_a_failed_parent_holds_it,
    cancelling_a_parent_cancels_its_waiting_descendants,
    parents_done_or_unknown_at_enqueue,
    without_worker_a_chain_runs_after_commit,
    a_child_added_while_its_parent_runs_is_released,
);

fn state(t: &TestDb, handle: &JobHandle) -> JobState {
    t.db.job(&handle.uuid()).expect("job").state
}

fn run_all(t: &TestDb) -> u64 {
    Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker").run_until_idle().expect("runs")
}

fn a_chain_runs_in_order(t: TestDb) {
    let list = t.partners(&["ada"]);
    let (a, b, c) =
        t.db.transaction(Context::new(), |_| {
            // Priorities would run c first; the chain decides.
            let a = Partner::queue().priority(30).export(&list, "a".into())?;
            let b = Partner::queue().priority(20).depends_on(&a).export(&list, "b".into())?;
            let c = Partner::queue().priority(10).depends_on(&b).export(&list, "c".into())?;
            Ok::<_, Error>((a, b, c))
        })
        .expect("queued");
    assert_eq!(
        (state(&t, &a), state(&t, &b), state(&t, &c)),
        (JobState::Pending, JobState::WaitDependencies, JobState::WaitDependencies)
    );
    assert_eq!(run_all(&t), 3);
    assert_eq!(
        (state(&t, &a), state(&t, &b), state(&t, &c)),
        (JobState::Done, JobState::Done, JobState::Done)
    );
    assert_eq!(t.partner(list[0].id).expect("row").note, "c::-", "c ran last");
    let started = |h: &JobHandle| t.db.job(&h.uuid()).expect("job").date_started.expect("started");
    assert!(started(&a) <= started(&b) && started(&b) <= started(&c));
}

fn a_group_waits_for_every_parent_and_a_failed_parent_holds_it(t: TestDb) {
    let list = t.partners(&["ada"]);
    let (a, b, c) =
        t.db.transaction(Context::new(), |_| {
            let a = Partner::queue().export(&list, "a".into())?;
            let b = Partner::queue().write_then_fail(&list, "broken".into())?;
            let c = Partner::queue().depends_on(&a).depends_on(&b).export(&list, "c".into())?;
            Ok::<_, Error>((a, b, c))
        })
        .expect("queued");
    assert_eq!(run_all(&t), 2);
    assert_eq!((state(&t, &a), state(&t, &b)), (JobState::Done, JobState::Failed));
    assert_eq!(state(&t, &c), JobState::WaitDependencies, "a failed parent keeps it waiting");
    t.db.job_action(&b.uuid(), OperatorAction::SetDone).expect("set done");
    assert_eq!(state(&t, &c), JobState::Pending, "released when the last parent is done");
    assert_eq!(run_all(&t), 1);
    assert_eq!(state(&t, &c), JobState::Done);
}

fn cancelling_a_parent_cancels_its_waiting_descendants(t: TestDb) {
    let list = t.partners(&["ada"]);
    let (a, b, c, other) =
        t.db.transaction(Context::new(), |_| {
            let a = Partner::queue().give_up(&list)?;
            let b = Partner::queue().depends_on(&a).export(&list, "b".into())?;
            let c = Partner::queue().depends_on(&b).export(&list, "c".into())?;
            let other = Partner::queue().export(&list, "other".into())?;
            Ok::<_, Error>((a, b, c, other))
        })
        .expect("queued");
    run_all(&t);
    assert_eq!(state(&t, &a), JobState::Cancelled, "its own verdict");
    let job_c = t.db.job(&c.uuid()).expect("job");
    assert_eq!((state(&t, &b), job_c.state), (JobState::Cancelled, JobState::Cancelled));
    assert_eq!(job_c.result.as_deref(), Some("a job it depends on was cancelled"));
    assert_eq!(state(&t, &other), JobState::Done, "unrelated jobs are untouched");

    let (d, e) =
        t.db.transaction(Context::new(), |_| {
            let d = Partner::queue().eta(std::time::Duration::from_secs(3600)).export(&list, "d".into())?;
            let e = Partner::queue().depends_on(&d).export(&list, "e".into())?;
            Ok::<_, Error>((d, e))
        })
        .expect("queued");
    t.db.job_action(&d.uuid(), OperatorAction::Cancel).expect("cancelled");
    assert_eq!(state(&t, &e), JobState::Cancelled, "an operator's cancel propagates too");
    // Requeued, the child waits again for its parent, itself requeued later.
    t.db.job_action(&e.uuid(), OperatorAction::Requeue).expect("requeued");
    assert_eq!(state(&t, &e), JobState::WaitDependencies);
    t.db.job_action(&d.uuid(), OperatorAction::SetDone).expect("done");
    assert_eq!(state(&t, &e), JobState::Pending);
}

fn parents_done_or_unknown_at_enqueue(t: TestDb) {
    let list = t.partners(&["ada"]);
    let a = t.db.transaction(Context::new(), |_| Partner::queue().export(&list, "a".into())).expect("queued");
    run_all(&t);
    let b =
        t.db.transaction(Context::new(), |_| Partner::queue().depends_on(&a).export(&list, "b".into()))
            .expect("q");
    assert_eq!(state(&t, &b), JobState::Pending, "its parent is already done");
    // The handle of a job whose transaction rolled back names no job.
    let mut ghost = None;
    let rolled: Result<(), Error> = t.db.transaction(Context::new(), |_| {
        ghost = Some(Partner::queue().export(&list, "ghost".into())?);
        Err(Error::Config("rolled back".into()))
    });
    assert!(rolled.is_err());
    let ghost = ghost.expect("queued before the rollback");
    let err =
        t.db.transaction(Context::new(), |_| Partner::queue().depends_on(&ghost).export(&list, "c".into()))
            .expect_err("unknown parent");
    assert_eq!(err.to_string(), format!("no job with uuid {}", ghost.uuid()));
}

fn without_worker_a_chain_runs_after_commit(t: TestDb) {
    let db = t.reopen(|b| b.worker(false));
    let list = t.partners(&["ada"]);
    let (a, b) = db
        .transaction(Context::new(), |_| {
            let b_first = Partner::queue().priority(1).export(&list, "warm-up".into())?;
            let a = Partner::queue().depends_on(&b_first).export(&list, "a".into())?;
            let b = Partner::queue().priority(0).depends_on(&a).export(&list, "b".into())?;
            Ok::<_, Error>((a, b))
        })
        .expect("ran");
    assert_eq!((state(&t, &a), state(&t, &b)), (JobState::Done, JobState::Done));
    assert_eq!(t.partner(list[0].id).expect("row").note, "b::-");
}

fn a_child_added_while_its_parent_runs_is_released(t: TestDb) {
    let list = t.partners(&["ada"]);
    let parent = t.db.transaction(Context::new(), |_| Partner::queue().export(&list, "p".into())).expect("q");
    let mut conn = t.db.conn().expect("conn");
    let rows = queue_tests::claim_any(&mut conn, "lease", 1);
    assert_eq!(rows.len(), 1);
    let child =
        t.db.transaction(Context::new(), |_| Partner::queue().depends_on(&parent).export(&list, "c".into()));
    let child = child.expect("queued");
    assert_eq!(state(&t, &child), JobState::WaitDependencies);
    let finished = queue_tests::finish_as(&mut conn, rows[0].id, "lease", JobState::Done);
    assert!(finished);
    assert_eq!(state(&t, &child), JobState::Pending, "released although the claimed row did not know it");
}
