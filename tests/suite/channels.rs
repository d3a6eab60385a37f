//! Channels across workers: capacities shared by every worker of a database, and sequential
//! channels.

use std::time::Duration;

use queue_diesel::prelude::*;
use queue_diesel::store::ListParams;
use queue_diesel::{Error, JobId, JobState, OperatorAction, Shutdown, Worker, WorkerConfig};
use queue_tests::{Partner, StopOnDrop, TestDb, backend_tests, max_running, wait_for};

backend_tests!(capacity_holds_across_worker_processes, a_sequential_channel_keeps_order_and_stops_on_failure);

fn done(db: &Database) -> usize {
    db.jobs(&ListParams::default().state(JobState::Done).limit(1000)).map_or(0, |j| j.len())
}

fn capacity_holds_across_worker_processes(t: TestDb) {
    let list = t.partners(&["ada"]);
    let key = JobId::new().to_string();
    t.db.transaction(Context::new(), |_| {
        for _ in 0..8 {
            Partner::queue().slow_export(&list, key.clone(), 60)?;
        }
        Ok::<_, Error>(())
    })
    .expect("queued");
    // Two workers, each with its own pool (as two processes would have), each allowed four jobs
    // at once but only one in root.slow: across both, one at a time.
    let config = || WorkerConfig::default().channels("root:4,root.slow:1".parse().expect("valid"));
    let first = Worker::new(t.db.clone(), config()).expect("worker");
    let second = Worker::new(t.reopen(|b| b), config()).expect("worker");
    let shutdown = Shutdown::new();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&shutdown);
        let a = s.spawn(|| first.run(&shutdown));
        let b = s.spawn(|| second.run(&shutdown));
        assert!(wait_for(Duration::from_secs(60), || done(&t.db) == 8), "all jobs ran");
        shutdown.trigger();
        let a = a.join().expect("no panic").expect("clean stop");
        let b = b.join().expect("no panic").expect("clean stop");
        assert_eq!(a.claimed + b.claimed, 8);
    });
    assert_eq!(max_running(&key), 1, "root.slow:1 held across both workers");
}

fn a_sequential_channel_keeps_order_and_stops_on_failure(t: TestDb) {
    let list = t.partners(&["ada", "bob"]);
    let (first, second, third, other) =
        t.db.transaction(Context::new(), |_| {
            let first = Partner::queue().channel("root.seq").write_then_fail(&list[..1], "broken".into())?;
            let second = Partner::queue().channel("root.seq").export(&list[..1], "second".into())?;
            let third = Partner::queue().channel("root.seq").export(&list[..1], "third".into())?;
            let other = Partner::queue().channel("root.other").export(&list[1..], "other".into())?;
            Ok::<_, Error>((first, second, third, other))
        })
        .expect("queued");
    let state = |h: &JobHandle| t.db.job(&h.uuid()).expect("job").state;
    let config = WorkerConfig::default()
        .channels("root:3,root.seq:1:sequential".parse().expect("valid"))
        .poll_interval(Duration::from_millis(20));
    let worker = Worker::new(t.db.clone(), config).expect("worker");
    let shutdown = Shutdown::new();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&shutdown);
        let run = s.spawn(|| worker.run(&shutdown));
        assert!(wait_for(Duration::from_secs(20), || state(&first) == JobState::Failed
            && state(&other) == JobState::Done));
        std::thread::sleep(Duration::from_millis(300));
        // Strict order (priority, deadline, creation): a failed job blocks the rest.
        assert_eq!(
            (state(&second), state(&third)),
            (JobState::Pending, JobState::Pending),
            "blocked by the failure"
        );
        t.db.job_action(&first.uuid(), OperatorAction::SetDone).expect("unblocked by an operator");
        assert!(wait_for(Duration::from_secs(20), || state(&third) == JobState::Done));
        shutdown.trigger();
        run.join().expect("no panic").expect("clean stop");
    });
    let started = |h: &JobHandle| t.db.job(&h.uuid()).expect("job").date_started.expect("started");
    assert!(started(&second) <= started(&third));
    assert_eq!(t.partner(list[0].id).expect("row").note, "third::-");
}
