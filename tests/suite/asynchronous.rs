//! `async fn` job methods: the executor drives the future on its own thread, the job's writes
//! stay in its transaction (committed with `done`, rolled back with a failure), and a job run
//! at the call awaits the same way.

use queue_diesel::prelude::*;
use queue_diesel::{JobState, Worker, WorkerConfig};
use queue_tests::{Partner, TestDb, backend_tests};

backend_tests!(an_async_job_writes_in_its_own_transaction, an_async_job_runs_at_the_call_in_no_delay_mode);

fn an_async_job_writes_in_its_own_transaction(t: TestDb) {
    let list = t.partners(&["ada", "grace"]);
    let (good, bad) =
        t.db.transaction(Context::user(1), |_| {
            let good = Partner::queue().export_later(&list[0], false)?;
            let bad = Partner::queue().max_retries(1).export_later(&list[1], true)?;
            Ok::<_, queue_diesel::Error>((good, bad))
        })
        .expect("queued");
    Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker").run_until_idle().expect("runs");
    let good = t.db.job(&good.uuid()).expect("job");
    assert_eq!(good.state, JobState::Done);
    assert_eq!(good.result.as_deref(), Some("1 exported on try 1"));
    let bad = t.db.job(&bad.uuid()).expect("job");
    assert_eq!(bad.state, JobState::Failed);
    assert_eq!(bad.exc_name.as_deref(), Some("AsyncError"));
    assert_eq!(t.partner(list[0].id).expect("ada").exports, 1);
    assert_eq!(t.partner(list[1].id).expect("grace").exports, 0, "the failed job's write was rolled back");
}

fn an_async_job_runs_at_the_call_in_no_delay_mode(t: TestDb) {
    let list = t.partners(&["ada"]);
    let db = t.reopen(|b| b.worker(false).no_delay(true));
    let handle =
        db.transaction(Context::user(1), |_| Partner::queue().export_later(&list, false)).expect("ran");
    assert!(handle.ran_now());
    assert_eq!(t.partner(list[0].id).expect("ada").exports, 1);
}
