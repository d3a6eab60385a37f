//! Progress a job reports (`env.progress`): stored outside its transaction, so it shows while
//! the job runs (PostgreSQL; on SQLite the job holds the only write lock, so it lands when the
//! job ends), stays when the job fails, and is forgotten when the job is requeued.

use std::process::Command;
use std::time::Duration;

use queue_diesel::prelude::*;
use queue_diesel::{Backend, JobState, OperatorAction, Shutdown, Worker, WorkerConfig};
use queue_tests::{Partner, StopOnDrop, TestDb, backend_tests, wait_for};

backend_tests!(progress_shows_while_a_job_runs_and_stays_after_it);

fn progress_shows_while_a_job_runs_and_stays_after_it(t: TestDb) {
    let list = t.partners(&["ada"]);
    let job =
        t.db.transaction(Context::new(), |_| Partner::queue().progresses(&list, 5, 150, true))
            .expect("queued");
    let uuid = job.uuid();
    let worker = Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker");
    let shutdown = Shutdown::new();
    let mut seen_running = Vec::new();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&shutdown);
        let run = s.spawn(|| worker.run(&shutdown));
        let finished = wait_for(Duration::from_secs(20), || {
            let state = t.db.job(&uuid).expect("job").state;
            if let Some(p) = t.db.job_progress(&uuid).expect("progress")
                && state != JobState::Failed
            {
                seen_running.push(p.done);
            }
            state == JobState::Failed
        });
        assert!(finished, "the job ran to its failure");
        shutdown.trigger();
        run.join().expect("no panic").expect("clean stop");
    });
    if t.db.backend() == Backend::Postgres {
        assert!(seen_running.iter().any(|done| (1..5).contains(done)), "seen while it ran: {seen_running:?}");
    }
    // The last report is stored even though the job's transaction rolled back.
    assert!(
        wait_for(Duration::from_secs(5), || t
            .db
            .job_progress(&uuid)
            .expect("progress")
            .is_some_and(|p| p.done == 5)),
        "{:?}",
        t.db.job_progress(&uuid)
    );
    let progress = t.db.job_progress(&uuid).expect("progress").expect("stored");
    assert_eq!((progress.done, progress.total, progress.ratio()), (5, 5, 1.0));
    let out = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["cli", "--database-url", &t.url, "jobs", "show", &uuid.to_string(), "--json"])
        .env("QUEUE_LOG", "error")
        .output()
        .expect("the binary runs");
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!((shown["progress"]["done"].as_u64(), shown["progress"]["total"].as_u64()), (Some(5), Some(5)));
    let out = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["cli", "--database-url", &t.url, "jobs", "show", &uuid.to_string()])
        .env("QUEUE_LOG", "error")
        .output()
        .expect("the binary runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("progress      5 of 5 (100%)"), "{text}");
    // Requeued, it starts afresh.
    t.db.job_action(&uuid, OperatorAction::Requeue).expect("requeued");
    assert_eq!(t.db.job_progress(&uuid).expect("progress"), None);
    // Outside a stored job's run, a report does nothing.
    t.db.transaction(Context::new(), |env| {
        env.progress(1, 2);
        Ok::<_, queue_diesel::Error>(())
    })
    .expect("no effect");
}
