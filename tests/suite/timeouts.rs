//! Timeouts: a run past its function's timeout is given up, its slot freed, its outcome decided
//! by the worker (failed, or retried per the function's pattern).

use std::time::{Duration, Instant};

use queue_diesel::prelude::*;
use queue_diesel::{Backend, Error, JobState, Shutdown, Worker, WorkerConfig};
use queue_tests::{Partner, StopOnDrop, TestDb, backend_tests, wait_for};

backend_tests!(
    an_overrunning_job_is_given_up_and_its_slot_freed,
    a_cooperative_job_stops_and_is_retried,
    timeouts_hold_in_runs_after_commit,
    timeouts_hold_in_run_until_idle,
);

fn timeouts_hold_in_runs_after_commit(t: TestDb) {
    let db = t.reopen(|b| b.worker(false));
    let list = t.partners(&["ada", "bob"]);
    // No worker: the jobs run right after the commit, on this thread; timeouts still hold, and
    // the job after one that timed out runs on a connection whose session was not ended.
    let (id, next) = db
        .transaction(Context::new(), |_| {
            let id = Partner::queue().priority(1).oversleeps(&list[..1], 800)?.uuid();
            let next = Partner::queue().priority(2).export(&list[1..], "next".into())?.uuid();
            Ok::<_, Error>((id, next))
        })
        .expect("queued");
    let job = db.job(&id).expect("job");
    assert_eq!((job.state, job.exc_name.as_deref()), (JobState::Failed, Some("TimeoutError")));
    assert_eq!(t.partner(list[0].id).expect("partner").note, "", "its write was rolled back");
    assert_eq!(db.job(&next).expect("job").state, JobState::Done);
}

fn timeouts_hold_in_run_until_idle(t: TestDb) {
    let list = t.partners(&["ada"]);
    let id =
        t.db.transaction(Context::new(), |_| Partner::queue().oversleeps(&list, 800)).expect("queued").uuid();
    Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker").run_until_idle().expect("runs");
    let job = t.db.job(&id).expect("job");
    assert_eq!((job.state, job.exc_name.as_deref()), (JobState::Failed, Some("TimeoutError")));
    assert_eq!(t.partner(list[0].id).expect("partner").note, "", "its write was rolled back");
}

fn an_overrunning_job_is_given_up_and_its_slot_freed(t: TestDb) {
    let list = t.partners(&["ada", "bob"]);
    let (slow, next) =
        t.db.transaction(Context::new(), |_| {
            // Other records: the overrunning body still holds its row locks.
            let slow = Partner::queue().priority(1).oversleeps(&list[..1], 3000)?;
            let next = Partner::queue().priority(2).export(&list[1..], "next".into())?;
            Ok::<_, Error>((slow, next))
        })
        .expect("queued");
    let config = WorkerConfig::default().channels("root:1".parse().expect("valid"));
    let worker = Worker::new(t.db.clone(), config).expect("worker");
    let shutdown = Shutdown::new();
    let start = Instant::now();
    let stats = std::thread::scope(|s| {
        let _stop = StopOnDrop(&shutdown);
        let run = s.spawn(|| worker.run(&shutdown));
        assert!(wait_for(Duration::from_secs(20), || t
            .db
            .job(&next.uuid())
            .is_ok_and(|j| j.state == JobState::Done)));
        if t.db.backend() == Backend::Postgres {
            // Not waited for: the next job ran while the overrunning body still slept.
            assert!(start.elapsed() < Duration::from_millis(2500), "took {:?}", start.elapsed());
        }
        assert!(wait_for(Duration::from_secs(20), || t
            .db
            .job(&slow.uuid())
            .is_ok_and(|j| j.state == JobState::Failed)));
        shutdown.trigger();
        run.join().expect("no panic").expect("clean stop")
    });
    assert_eq!(stats.timed_out, 1);
    let job = t.db.job(&slow.uuid()).expect("job");
    assert_eq!(job.exc_name.as_deref(), Some("TimeoutError"));
    assert_eq!(job.exc_message.as_deref(), Some("the job exceeded its timeout of 300ms"));
    // Its write was rolled back; the export's went through.
    assert!(wait_for(Duration::from_secs(10), || t.partner(list[0].id).is_some_and(|p| p.note.is_empty())));
    assert_eq!(t.partner(list[1].id).expect("row").note, "next::-");
    if t.db.backend() == Backend::Postgres {
        // A statement the body is blocked in is cancelled.
        let blocked = t.db.transaction(Context::new(), |_| Partner::queue().blocks_in_sql(&list)).expect("q");
        let worker = Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker");
        let shutdown = Shutdown::new();
        std::thread::scope(|s| {
            let _stop = StopOnDrop(&shutdown);
            let run = s.spawn(|| worker.run(&shutdown));
            assert!(wait_for(Duration::from_secs(20), || {
                t.db.job(&blocked.uuid()).is_ok_and(|j| j.state == JobState::Failed)
            }));
            shutdown.trigger();
            let stats = run.join().expect("no panic").expect("clean stop");
            assert_eq!(stats.released, 0, "nothing left running: the statement was cancelled");
        });
    }
}

fn a_cooperative_job_stops_and_is_retried(t: TestDb) {
    let list = t.partners(&["ada"]);
    let id = t.db.transaction(Context::new(), |_| Partner::queue().polite_loop(&list)).expect("q").uuid();
    let worker = Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker");
    let shutdown = Shutdown::new();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&shutdown);
        let run = s.spawn(|| worker.run(&shutdown));
        assert!(wait_for(Duration::from_secs(20), || {
            t.db.job(&id).is_ok_and(|j| j.state == JobState::Pending && j.attempts == 1)
        }));
        shutdown.trigger();
        run.join().expect("no panic").expect("clean stop");
    });
    let job = t.db.job(&id).expect("job");
    assert_eq!(job.exc_name.as_deref(), Some("Retry"), "its pattern retries it");
    assert_eq!(job.exc_message.as_deref(), Some("the job exceeded its timeout of 200ms"));
    assert!(job.eta.is_some());
}
