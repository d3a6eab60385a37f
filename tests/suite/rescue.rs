//! Rescue: jobs left `started` by a worker that is gone go back to `pending`, or fail once their
//! tries are spent; jobs of live workers are left alone.

use std::time::Duration;

use diesel::Connection;
use queue_diesel::liveness;
use queue_diesel::maintenance::Rescuer;
use queue_diesel::prelude::*;
use queue_diesel::store::{ClaimParams, Store};
use queue_diesel::{Backend, Error, JobState, Worker, WorkerConfig};
use queue_tests::{Partner, TestDb, backend_tests};

backend_tests!(
    jobs_of_a_dead_worker_are_requeued_and_live_ones_left_alone,
    a_job_that_keeps_killing_its_worker_fails
);

fn claim_as(t: &TestDb, worker: &str, lease: &str) -> Vec<queue_diesel::store::RunRow> {
    t.db.conn()
        .expect("conn")
        .job_claim(&ClaimParams {
            worker_id: worker,
            lease_token: lease,
            now: chrono::Utc::now(),
            limit: 1,
            channel: None,
            uuids: None,
            funcs: None,
            ignore_eta: false,
            slots: &[],
        })
        .expect("claim")
}

fn jobs_of_a_dead_worker_are_requeued_and_live_ones_left_alone(t: TestDb) {
    let list = t.partners(&["ada"]);
    let (dead, alive) =
        t.db.transaction(Context::new(), |_| {
            Ok::<_, Error>((
                Partner::queue().export(&list, "a".into())?,
                Partner::queue().export(&list, "b".into())?,
            ))
        })
        .expect("queued");
    // A worker that claimed a job and died before running it (no lock, no liveness file).
    assert_eq!(claim_as(&t, "gone-worker", "lease-dead").len(), 1);
    // A live worker: its job's transaction holds the row (PostgreSQL), its process holds its
    // liveness lock (SQLite).
    let path = t.db.sqlite_path();
    if let Some(path) = &path {
        liveness::hold(&liveness::folder_of_sqlite(path), "live-worker").expect("liveness");
    }
    let rows = claim_as(&t, "live-worker", "lease-alive");
    assert_eq!(rows.len(), 1);
    let rescuer = Rescuer::new(t.db.clone(), Duration::ZERO);
    std::thread::sleep(Duration::from_millis(20));
    let stats = if t.db.backend() == Backend::Postgres {
        let mut holder = t.db.conn().expect("conn");
        let outcome = holder.transaction::<_, Error, _>(|c| {
            assert!(c.job_lock_running(rows[0].id, "lease-alive")?, "the claim holds");
            rescuer.run_once()
        });
        outcome.expect("rescued")
    } else {
        rescuer.run_once().expect("rescued")
    };
    assert_eq!((stats.requeued, stats.failed), (1, 0));
    let rescued = t.db.job(&dead.uuid()).expect("job");
    assert_eq!(rescued.state, JobState::Pending);
    assert_eq!(rescued.attempts, 1, "the lost try counts");
    assert_eq!(rescued.exc_name.as_deref(), Some("WorkerLost"));
    assert!(rescued.exc_message.unwrap_or_default().contains("gone-worker"));
    assert_eq!(t.db.job(&alive.uuid()).expect("job").state, JobState::Started, "a live worker's job stays");
    // The dead worker's lease is gone: were it to come back, it could not store anything.
    let mut conn = t.db.conn().expect("conn");
    assert!(!conn.job_lock_running(rescued.id, "lease-dead").expect("check"));
    drop(conn);
    // A worker runs the rescued job.
    let worker = Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker");
    assert_eq!(worker.run_until_idle().expect("runs"), 1);
    assert_eq!(t.db.job(&dead.uuid()).expect("job").state, JobState::Done);
}

fn a_job_that_keeps_killing_its_worker_fails(t: TestDb) {
    let list = t.partners(&["ada"]);
    let handle =
        t.db.transaction(Context::new(), |_| Partner::queue().max_retries(2).export(&list, "a".into()))
            .expect("q");
    let rescuer = Rescuer::new(t.db.clone(), Duration::ZERO);
    for round in 1..=2 {
        assert_eq!(claim_as(&t, &format!("crashing-{round}"), "lease").len(), 1, "round {round}");
        std::thread::sleep(Duration::from_millis(10));
        rescuer.run_once().expect("rescued");
    }
    let job = t.db.job(&handle.uuid()).expect("job");
    assert_eq!(job.state, JobState::Failed, "two lost tries of two allowed");
    assert_eq!(job.exc_name.as_deref(), Some("WorkerLost"));
    assert!(job.date_done.is_some());
}
