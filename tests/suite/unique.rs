//! Unique periods and states: `.identity_key(k).unique(period, states)` keeps a second job with
//! the key out while one queued within the period exists, or one in the states listed, beyond
//! the identity key's own rule (a job that has not run yet). Concurrent callers agree: eight
//! threads queueing the same key while a worker runs the jobs leave one job.

use std::sync::Barrier;
use std::time::Duration;

use queue_diesel::prelude::*;
use queue_diesel::{JobState, ListParams, MockClock, Shutdown, Worker, WorkerConfig};
use queue_tests::{Partner, StopOnDrop, TestDb, backend_tests, wait_for};

backend_tests!(concurrent_callers_agree_on_one_job, a_period_and_states_keep_a_job_out);

const HOUR: Duration = Duration::from_secs(3600);

fn with_key(db: &Database, key: &str) -> Vec<queue_diesel::Job> {
    db.jobs(&ListParams::default().limit(1000))
        .expect("jobs")
        .into_iter()
        .filter(|j| j.identity_key.as_deref() == Some(key))
        .collect()
}

fn concurrent_callers_agree_on_one_job(t: TestDb) {
    let list = t.partners(&["ada"]);
    let worker = Worker::new(t.db.clone(), WorkerConfig::default().poll_interval(Duration::from_millis(20)))
        .expect("worker");
    let shutdown = Shutdown::new();
    let start = Barrier::new(8);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&shutdown);
        let run = s.spawn(|| worker.run(&shutdown));
        let callers: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    (0..10)
                        .map(|_| {
                            // A worker runs the job meanwhile: once it is done, only the period
                            // keeps the next one out.
                            std::thread::sleep(Duration::from_millis(5));
                            t.db.transaction(Context::new(), |_| {
                                Partner::queue()
                                    .identity_key("nightly")
                                    .unique(HOUR, &[])
                                    .export(&list, "a".into())
                            })
                            .expect("queued")
                            .uuid()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let uuids: Vec<_> = callers.into_iter().flat_map(|c| c.join().expect("no panic")).collect();
        assert!(wait_for(Duration::from_secs(20), || with_key(&t.db, "nightly")
            .iter()
            .all(|j| j.state == JobState::Done)));
        shutdown.trigger();
        run.join().expect("no panic").expect("clean stop");
        let jobs = with_key(&t.db, "nightly");
        assert_eq!(jobs.len(), 1, "one job for 80 calls, not {}", jobs.len());
        assert!(uuids.iter().all(|u| *u == jobs[0].uuid), "every caller got its handle");
    });
}

fn a_period_and_states_keep_a_job_out(t: TestDb) {
    let list = t.partners(&["ada"]);
    let clock =
        MockClock::new(chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0).expect("now"));
    let db = t.reopen(|b| b.clock(std::sync::Arc::new(clock.clone())));
    let queue = |key: &str, period: Duration, states: &[JobState]| {
        db.transaction(Context::new(), |_| {
            Partner::queue().identity_key(key).unique(period, states).export(&list, "a".into())
        })
        .expect("queued")
    };
    let first = queue("export", HOUR, &[]);
    Worker::new(db.clone(), WorkerConfig::default()).expect("worker").run_until_idle().expect("ran");
    assert_eq!(db.job(&first.uuid()).expect("job").state, JobState::Done);
    // Within the period: the done job keeps a new one out.
    let again = queue("export", HOUR, &[]);
    assert!(again.existing() && again.uuid() == first.uuid());
    // Past it, a new job is queued.
    clock.advance(chrono::TimeDelta::hours(2));
    let later = queue("export", HOUR, &[]);
    assert!(!later.existing() && later.uuid() != first.uuid());
    Worker::new(db.clone(), WorkerConfig::default()).expect("worker").run_until_idle().expect("ran");
    // States: a done job with the key keeps a new one out, whenever it was queued…
    clock.advance(chrono::TimeDelta::days(3));
    let kept_out = queue("export", Duration::ZERO, &[JobState::Done]);
    assert_eq!(kept_out.uuid(), later.uuid(), "the newest job holding the key");
    // …and a state no job with the key is in does not.
    let queued = queue("export", Duration::ZERO, &[JobState::Failed]);
    assert!(!queued.existing());
    assert_eq!(with_key(&db, "export").len(), 3);
    // `unique` tells jobs apart by their identity key: without one it is refused.
    let err = db
        .transaction(Context::new(), |_| Partner::queue().unique(HOUR, &[]).export(&list, "a".into()))
        .expect_err("refused");
    assert!(err.to_string().contains("unique needs an identity_key"), "{err}");
}
