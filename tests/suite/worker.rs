//! The threaded worker: channel capacities, wake-ups, shutdown, several workers on one database.

use std::time::Duration;

use queue_diesel::prelude::*;
use queue_diesel::store::ListParams;
use queue_diesel::{Backend, JobId, JobState, Shutdown, Worker, WorkerConfig};
use queue_tests::{
    Partner, StopOnDrop, TestDb, backend_tests, max_running, running_now, wait_for, while_running,
};

backend_tests!(
    channel_capacity_limits_concurrent_jobs,
    notify_or_poll_wakes_an_idle_worker,
    shutdown_waits_for_running_jobs,
    shutdown_after_grace_gives_running_jobs_back,
    a_failing_job_leaves_the_rest_of_its_batch_whole,
    a_function_seen_running_long_leaves_the_batches,
    no_batches_when_batch_jobs_is_zero,
    a_running_job_frees_its_identity_key,
    a_job_that_ignores_a_failed_statement_is_blamed_alone,
    a_wake_up_during_a_batch_is_not_lost,
    a_job_queued_elsewhere_wakes_an_idle_worker,
    two_workers_never_run_a_job_twice,
    unusable_worker_settings_are_refused,
    a_database_restart_in_the_middle_of_a_run_loses_nothing,
);

fn all_done(db: &Database, n: usize) -> bool {
    let done = db.jobs(&ListParams::default().state(JobState::Done).limit(100_000));
    done.map(|d| d.len() == n).unwrap_or(false)
}

fn key() -> String {
    JobId::new().to_string()
}

fn channel_capacity_limits_concurrent_jobs(t: TestDb) {
    let list = t.partners(&["ada"]);
    let key = key();
    t.db.transaction(Context::new(), |_| {
        for _ in 0..6 {
            Partner::queue().slow_export(&list, key.clone(), 30)?;
            Partner::queue().export(&list, "erp".into())?;
        }
        Ok::<_, queue_diesel::Error>(())
    })
    .expect("queued");
    let config = WorkerConfig::default().channels("root:3,root.slow:1".parse().expect("valid"));
    let worker = Worker::new(t.db.clone(), config).expect("worker");
    let shutdown = Shutdown::new();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&shutdown);
        let run = s.spawn(|| worker.run(&shutdown));
        assert!(wait_for(Duration::from_secs(30), || all_done(&t.db, 12)), "all jobs ran");
        shutdown.trigger();
        let stats = run.join().expect("no panic").expect("clean stop");
        assert_eq!(stats.claimed, 12);
        assert_eq!(stats.released, 0);
    });
    assert_eq!(max_running(&key), 1, "root.slow:1 never ran two at once");
    assert_eq!(t.partner(list[0].id).expect("row").exports, 6);
}

fn notify_or_poll_wakes_an_idle_worker(t: TestDb) {
    // On PostgreSQL the poll is too slow for the test to pass without LISTEN/NOTIFY.
    let poll = match t.db.backend() {
        Backend::Postgres => Duration::from_secs(120),
        Backend::Sqlite => Duration::from_millis(50),
    };
    let config = WorkerConfig::default().poll_interval(poll);
    let worker = Worker::new(t.db.clone(), config).expect("worker");
    let list = t.partners(&["ada"]);
    let shutdown = Shutdown::new();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&shutdown);
        let run = s.spawn(|| worker.run(&shutdown));
        std::thread::sleep(Duration::from_millis(500)); // idle, past its first claim
        for round in 1..=3 {
            t.db.transaction(Context::new(), |_| Partner::queue().export(&list, "x".into())).expect("queued");
            assert!(wait_for(Duration::from_secs(20), || all_done(&t.db, round)), "woken for job {round}");
        }
        shutdown.trigger();
        run.join().expect("no panic").expect("clean stop");
    });
}

/// Queue a job that runs `millis` (alone under a lease, or in a batch), start a worker with
/// `grace`, stop it once the job started.
fn stop_while_running(
    t: &TestDb,
    alone: bool,
    millis: u64,
    grace: Duration,
) -> (JobId, queue_diesel::worker::WorkerStats) {
    let list = t.partners(&["ada"]);
    let key = key();
    let id =
        t.db.transaction(Context::new(), |_| {
            if alone {
                Partner::queue().slow_export_alone(&list, key.clone(), millis)
            } else {
                Partner::queue().slow_export(&list, key.clone(), millis)
            }
        })
        .expect("q")
        .uuid();
    let config = WorkerConfig::default().grace_period(grace);
    let worker = Worker::new(t.db.clone(), config).expect("worker");
    let shutdown = Shutdown::new();
    let stats = std::thread::scope(|s| {
        let _stop = StopOnDrop(&shutdown);
        let run = s.spawn(|| worker.run(&shutdown));
        assert!(wait_for(Duration::from_secs(10), || running_now(&key) > 0), "the job started");
        if alone {
            assert_eq!(t.db.job(&id).expect("job").state, JobState::Started, "a leased job shows as started");
        }
        shutdown.trigger();
        run.join().expect("no panic").expect("clean stop")
    });
    (id, stats)
}

fn shutdown_waits_for_running_jobs(t: TestDb) {
    for alone in [true, false] {
        let (id, stats) = stop_while_running(&t, alone, 400, Duration::from_secs(30));
        assert_eq!((stats.finished, stats.released), (1, 0), "alone: {alone}");
        assert_eq!(t.db.job(&id).expect("job").state, JobState::Done, "finished within the grace period");
    }
}

fn shutdown_after_grace_gives_running_jobs_back(t: TestDb) {
    // On PostgreSQL the run's session is ended and the job given back at once; on SQLite the
    // release waits for the body (one writer), whose transaction then rolls back. A batch's jobs
    // need no release: its transaction rolls back and they are `pending` as they were.
    for alone in [true, false] {
        let (id, stats) = stop_while_running(&t, alone, 1500, Duration::from_millis(100));
        assert_eq!((stats.finished, stats.released), (0, u64::from(alone)), "alone: {alone}");
        let job = t.db.job(&id).expect("job");
        assert_eq!(job.state, JobState::Pending, "given back for another worker");
        assert_eq!(job.attempts, 0, "the interrupted try does not count");
        // The abandoned run finishes later but cannot commit: its lease or its batch is gone.
        std::thread::sleep(Duration::from_millis(1700));
        assert_eq!(t.db.job(&id).expect("job").state, JobState::Pending);
        let next = Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker");
        assert_eq!(next.run_until_idle().expect("runs"), 1);
        assert_eq!(t.db.job(&id).expect("job").state, JobState::Done);
    }
}

fn a_failing_job_leaves_the_rest_of_its_batch_whole(t: TestDb) {
    let list = t.partners(&["a", "b", "c", "d", "e", "f", "g", "h"]);
    // One batch, in this order: each failure rolls the batch back, is stored on its job alone,
    // and the jobs that had succeeded before it run again.
    let ids: Vec<JobId> =
        t.db.transaction(Context::new(), |_| {
            let q = |p: i32| Partner::queue().priority(p);
            Ok::<_, queue_diesel::Error>(vec![
                q(1).export(&list[0], "x".into())?.uuid(),
                q(2).export(&list[1], "x".into())?.uuid(),
                q(3).write_then_fail(&list[2], "remote refused".into())?.uuid(),
                q(4).explode(&list[3])?.uuid(),
                q(5).give_up(&list[4])?.uuid(),
                q(6).export(&list[5], "x".into())?.uuid(),
                q(7).leaves_savepoint(&list[6])?.uuid(),
                q(8).flaky(&list[7], 600)?.uuid(),
            ])
        })
        .expect("queued");
    let worker = Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker");
    while_running(&worker, || {
        let settled =
            || ids.iter().all(|id| t.db.job(id).is_ok_and(|j| j.attempts == 1 && j.lease_token.is_none()));
        assert!(wait_for(Duration::from_secs(20), settled), "every job ran once");
    });
    let job = |i: usize| t.db.job(&ids[i]).expect("job");
    for i in [0, 1, 5] {
        assert_eq!(job(i).state, JobState::Done);
        assert_eq!(t.partner(list[i].id).expect("partner").exports, 1, "written exactly once");
    }
    assert_eq!((job(2).state, job(2).exc_name.as_deref()), (JobState::Failed, Some("ExportError")));
    assert_ne!(t.partner(list[2].id).expect("partner").note, "written", "a failed job's writes roll back");
    assert_eq!((job(3).state, job(3).exc_name.as_deref()), (JobState::Failed, Some("panic")));
    assert_eq!(job(4).state, JobState::Cancelled);
    assert_eq!((job(6).state, job(6).exc_name.as_deref()), (JobState::Failed, Some("QueueError")));
    assert_ne!(t.partner(list[6].id).expect("partner").note, "leaked");
    assert_eq!((job(7).state, job(7).exc_name.as_deref()), (JobState::Pending, Some("Retry")));
}

fn a_job_that_ignores_a_failed_statement_is_blamed_alone(t: TestDb) {
    let list = t.partners(&["a", "b", "c", "d"]);
    // On PostgreSQL `swallows_error` leaves the batch's transaction aborted: the statement after
    // it (the export's) finds that out, and the batch rolls `swallows_error` back to its
    // savepoint and fails it alone; the export goes on untouched. `returns_nul` returns a result
    // PostgreSQL cannot store as text: it is stored with the character replaced.
    let ids: Vec<JobId> =
        t.db.transaction(Context::new(), |_| {
            let q = |p: i32| Partner::queue().priority(p);
            Ok::<_, queue_diesel::Error>(vec![
                q(1).export(&list[0], "x".into())?.uuid(),
                q(2).swallows_error(&list[1])?.uuid(),
                // Its key is freed by the batch's first statement after the aborted one.
                q(3).identity_key("after-the-abort").export(&list[2], "x".into())?.uuid(),
                q(4).returns_nul(&list[3])?.uuid(),
            ])
        })
        .expect("queued");
    let worker = Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker");
    while_running(&worker, || {
        let settled = || ids.iter().all(|id| t.db.job(id).is_ok_and(|j| j.state.is_finished()));
        assert!(wait_for(Duration::from_secs(20), settled), "every job finished");
    });
    let job = |i: usize| t.db.job(&ids[i]).expect("job");
    for i in [0, 2] {
        assert_eq!((job(i).state, job(i).attempts), (JobState::Done, 1), "job {i}");
        assert_eq!(t.partner(list[i].id).expect("partner").exports, 1, "written exactly once");
    }
    match t.db.backend() {
        Backend::Postgres => {
            assert_eq!(
                (job(1).state, job(1).exc_name.as_deref()),
                (JobState::Failed, Some("TransactionAborted"))
            );
        }
        Backend::Sqlite => {
            assert_eq!(job(1).state, JobState::Done, "SQLite does not abort a transaction on an error");
        }
    }
    assert_eq!((job(3).state, job(3).result.as_deref()), (JobState::Done, Some("before\u{fffd}after")));
}

fn a_running_job_frees_its_identity_key(t: TestDb) {
    // A job that has started no longer holds its key, in a batch as alone: it can queue its
    // own successor under the same key.
    t.db.transaction(Context::new(), |_| {
        Partner::queue().identity_key("tick").chain_keyed(NoRecords, "tick".into(), 2)
    })
    .expect("queued");
    let worker = Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker");
    while_running(&worker, || {
        assert!(
            wait_for(Duration::from_secs(10), || all_done(&t.db, 3)),
            "the job and its two successors ran"
        );
    });
    let done = t.db.jobs(&ListParams::default().state(JobState::Done)).expect("list");
    let mut results: Vec<_> = done.iter().filter_map(|j| j.result.clone()).collect();
    results.sort();
    assert_eq!(results, ["last", "successor queued", "successor queued"]);
}

fn no_batches_when_batch_jobs_is_zero(t: TestDb) {
    // `batch_jobs: 0` (QUEUE_BATCH_JOBS=0): every job runs alone, visibly `started`.
    let list = t.partners(&["ada"]);
    let worker = Worker::new(t.db.clone(), WorkerConfig::default().batch_jobs(0)).expect("worker");
    while_running(&worker, || {
        let key = key();
        let id =
            t.db.transaction(Context::new(), |_| Partner::queue().slow_export(&list, key.clone(), 300))
                .expect("queued")
                .uuid();
        assert!(wait_for(Duration::from_secs(10), || running_now(&key) > 0), "the job started");
        assert_eq!(t.db.job(&id).expect("job").state, JobState::Started);
    });
}

fn a_function_seen_running_long_leaves_the_batches(t: TestDb) {
    let list = t.partners(&["ada"]);
    let worker = Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker");
    while_running(&worker, || {
        let queue = |millis: u64| {
            let key = key();
            let job = t
                .db
                .transaction(Context::new(), |_| Partner::queue().slow_export(&list, key.clone(), millis));
            (key, job.expect("queued").uuid())
        };
        // Runs in a batch: while it runs it is still `pending` to everyone else.
        let (key, first) = queue(1_100);
        assert!(wait_for(Duration::from_secs(10), || running_now(&key) > 0), "the first job started");
        assert_eq!(t.db.job(&first).expect("job").state, JobState::Pending);
        assert!(wait_for(Duration::from_secs(10), || t
            .db
            .job(&first)
            .is_ok_and(|j| j.state == JobState::Done)));
        // It ran longer than LONG_RUN: the function's next job runs alone, visibly `started`.
        let (key, second) = queue(300);
        assert!(wait_for(Duration::from_secs(10), || running_now(&key) > 0), "the second job started");
        assert_eq!(t.db.job(&second).expect("job").state, JobState::Started);
    });
}

fn a_job_queued_elsewhere_wakes_an_idle_worker(t: TestDb) {
    // Queued through another handle of the database, as another process would: no in-process
    // wake-up; NOTIFY on PostgreSQL, the data_version watcher on SQLite. No poll to fall back on.
    let list = t.partners(&["ada"]);
    let config = WorkerConfig::default().poll_interval(Duration::from_secs(120));
    let worker = Worker::new(t.db.clone(), config).expect("worker");
    let elsewhere = t.reopen(|b| b);
    while_running(&worker, || {
        std::thread::sleep(Duration::from_millis(300)); // idle, past its first claim
        for round in 1..=3 {
            elsewhere
                .transaction(Context::new(), |_| Partner::queue().export(&list, "x".into()))
                .expect("queued");
            assert!(wait_for(Duration::from_secs(10), || all_done(&t.db, round)), "woken for job {round}");
        }
    });
}

fn a_wake_up_during_a_batch_is_not_lost(t: TestDb) {
    // Each job is queued while the batch of the one before is still running: that batch claimed
    // before the new job committed, so the wake-up must start another batch once it ends. With no
    // poll to fall back on (two minutes), a lost wake-up fails the wait.
    let list = t.partners(&["ada"]);
    let config = WorkerConfig::default().poll_interval(Duration::from_secs(120));
    let worker = Worker::new(t.db.clone(), config).expect("worker");
    while_running(&worker, || {
        std::thread::sleep(Duration::from_millis(300)); // idle, past its first claim
        for round in 0..8 {
            let key = key();
            t.db.transaction(Context::new(), |_| Partner::queue().slow_export(&list, key.clone(), 60))
                .expect("queued");
            assert!(wait_for(Duration::from_secs(10), || max_running(&key) > 0), "job {round} started");
        }
        assert!(wait_for(Duration::from_secs(10), || all_done(&t.db, 8)), "all ran");
    });
}

fn two_workers_never_run_a_job_twice(t: TestDb) {
    let names: Vec<String> = (0..120).map(|i| format!("p{i}")).collect();
    let list = t.partners(&names.iter().map(String::as_str).collect::<Vec<_>>());
    t.db.transaction(Context::new(), |_| {
        for p in &list {
            Partner::queue().export(p, "x".into())?;
        }
        Ok::<_, queue_diesel::Error>(())
    })
    .expect("queued");
    let config = || WorkerConfig::default().channels("root:2".parse().expect("valid"));
    let first = Worker::new(t.db.clone(), config()).expect("worker");
    let second = Worker::new(t.reopen(|b| b), config()).expect("worker");
    let shutdown = Shutdown::new();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&shutdown);
        let a = s.spawn(|| first.run(&shutdown));
        let b = s.spawn(|| second.run(&shutdown));
        assert!(wait_for(Duration::from_secs(60), || all_done(&t.db, list.len())), "all jobs ran");
        shutdown.trigger();
        let a = a.join().expect("no panic").expect("clean stop");
        let b = b.join().expect("no panic").expect("clean stop");
        assert_eq!(a.claimed + b.claimed, list.len() as u64, "each job claimed once");
    });
    for p in &list {
        assert_eq!(t.partner(p.id).expect("row").exports, 1, "{} exported exactly once", p.name);
    }
}

fn unusable_worker_settings_are_refused(t: TestDb) {
    let config = WorkerConfig::default().poll_interval(Duration::ZERO);
    let err = Worker::new(t.db.clone(), config).expect_err("zero poll");
    assert_eq!(err.to_string(), "expected a poll interval > 0 ms");
    let config = WorkerConfig::default().channels("root:40".parse().expect("parses"));
    let err = Worker::new(t.db.clone(), config).expect_err("pool too small");
    assert!(
        err.to_string().contains("the connection pool holds 8 connections but channels root:40 need 42"),
        "{err}"
    );
}

fn a_database_restart_in_the_middle_of_a_run_loses_nothing(t: TestDb) {
    if t.db.backend() != Backend::Postgres {
        return; // A SQLite file has no server to restart.
    }
    let names: Vec<String> = (0..40).map(|i| format!("p{i}")).collect();
    let list = t.partners(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let key = key();
    t.db.transaction(Context::new(), |_| {
        for p in &list {
            Partner::queue().slow_export(p, key.clone(), 20)?;
        }
        Ok::<_, queue_diesel::Error>(())
    })
    .expect("queued");
    let config = WorkerConfig::default()
        .channels("root:2".parse().expect("valid"))
        .rescue_interval(Duration::from_millis(200))
        .rescue_grace(Duration::from_millis(500));
    let worker = Worker::new(t.reopen(|b| b), config).expect("worker");
    let shutdown = Shutdown::new();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&shutdown);
        let run = s.spawn(|| worker.run(&shutdown));
        assert!(wait_for(Duration::from_secs(20), || done_count(&t.db) >= 5));
        // What a server restart looks like from the worker: every session of this database ends.
        let mut admin = diesel::PgConnection::establish(&t.url).expect("connect");
        use diesel::{Connection, RunQueryDsl};
        diesel::sql_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .execute(&mut admin)
        .expect("sessions ended");
        assert!(
            wait_for(Duration::from_secs(60), || all_done(&t.db, list.len())),
            "the worker reconnected and finished"
        );
        shutdown.trigger();
        run.join().expect("no panic").expect("clean stop");
    });
    assert_eq!(done_count(&t.db), list.len(), "nothing lost");
}

fn done_count(db: &Database) -> usize {
    db.jobs(&ListParams::default().state(JobState::Done).limit(100_000)).map_or(0, |d| d.len())
}
