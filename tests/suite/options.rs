//! Job options, Tryton's context keys, claim order and identity keys.

use std::sync::Barrier;

use chrono::{TimeDelta, Utc};
use queue_diesel::prelude::*;
use queue_diesel::store::ListParams;
use queue_diesel::{Error, JobId, JobState, Worker, WorkerConfig};
use queue_tests::{Partner, TestDb, backend_tests, claim_any};

backend_tests!(
    builder_options_are_stored,
    tryton_context_keys_set_channel_eta_and_deadline,
    tryton_context_keys_steer_only_their_call,
    queue_batch_splits_the_records,
    claim_order_is_priority_then_deadline_then_age,
    identity_key_keeps_one_waiting_job,
    identity_key_holds_under_concurrent_enqueues,
    a_retried_job_does_not_hold_its_identity_key,
);

fn builder_options_are_stored(t: TestDb) {
    let list = t.partners(&["ada"]);
    let at = chrono::DateTime::from_timestamp(Utc::now().timestamp() + 7200, 0).expect("valid");
    let handle =
        t.db.transaction(Context::new(), |_| {
            Partner::queue()
                .priority(3)
                .eta(at)
                .max_retries(0)
                .description("Nightly export")
                .channel("root.nightly")
                .identity_key("nightly-ada")
                .export(&list, "erp".into())
        })
        .expect("queued");
    let job = t.db.job(&handle.uuid()).expect("job");
    assert_eq!((job.priority, job.eta, job.max_retries), (3, Some(at), 0));
    assert_eq!((job.description.as_str(), job.channel.as_str()), ("Nightly export", "root.nightly"));
    assert_eq!(job.identity_key.as_deref(), Some("nightly-ada"));
    let err =
        t.db.transaction(Context::new(), |_| Partner::queue().channel("export").export(&list, "erp".into()))
            .expect_err("bad channel");
    assert!(err.to_string().contains(r#"invalid channel name "export""#), "{err}");
}

fn tryton_context_keys_set_channel_eta_and_deadline(t: TestDb) {
    let list = t.partners(&["ada"]);
    let ctx = Context::user(1)
        .with("queue_name", "mail")
        .with("queue_scheduled_at", 3600)
        .with("queue_expected_at", "2031-01-01T00:00:00Z");
    let before = Utc::now();
    let handle = t.db.transaction(ctx, |_| Partner::queue().export(&list, "erp".into())).expect("queued");
    let job = t.db.job(&handle.uuid()).expect("job");
    assert_eq!(job.channel, "root.mail");
    let eta = job.eta.expect("eta");
    assert!(
        eta >= before + TimeDelta::seconds(3599) && eta <= Utc::now() + TimeDelta::seconds(3601),
        "{eta}"
    );
    let worker = Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker");
    assert_eq!(worker.run_until_idle().expect("runs"), 0, "scheduled an hour from now");
    let bad = Context::new().with("queue_scheduled_at", "soon");
    let err = t.db.transaction(bad, |_| Partner::queue().export(&list, "erp".into())).expect_err("refused");
    assert!(err.to_string().contains("context key queue_scheduled_at"), "{err}");
}

fn tryton_context_keys_steer_only_their_call(t: TestDb) {
    let clock = queue_diesel::MockClock::new(
        chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("valid"),
    );
    let db = t.reopen(|b| b.clock(std::sync::Arc::new(clock.clone())));
    let list = t.partners(&["ada", "bob"]);
    let ctx = Context::user(1)
        .with("lang", "fr")
        .with("queue_name", "mail")
        .with("queue_scheduled_at", 3600)
        .with("queue_expected_at", 60)
        .with("queue_batch", 5);
    let handle = db.transaction(ctx, |_| Partner::queue().fan_out(&list, "erp".into())).expect("queued");
    let job = db.job(&handle.uuid()).expect("job");
    assert_eq!(job.channel, "root.mail");
    let stored: Vec<&String> = job.context.values().keys().collect();
    assert_eq!(stored, ["lang"], "the queue keys steer the call and are not stored");
    clock.advance(TimeDelta::seconds(3601));
    let worker = Worker::new(db.clone(), WorkerConfig::default()).expect("worker");
    worker.run_until_idle().expect("runs");
    let children: Vec<_> = db.jobs(&ListParams::default().func("res.partner.export")).expect("list");
    assert_eq!(children.len(), 2, "one export per partner");
    for child in children {
        assert_eq!(child.channel, "root.export", "not re-channelled");
        assert_eq!(child.eta, None, "not delayed by its parent's queue_scheduled_at");
        assert_eq!(child.state, JobState::Done);
        assert_eq!(child.context.get("lang").and_then(|v| v.as_str()), Some("fr"));
    }
}

fn queue_batch_splits_the_records(t: TestDb) {
    let names: Vec<String> = (0..7).map(|i| format!("p{i}")).collect();
    let list = t.partners(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let handle = t
        .db
        .transaction(Context::new().with("queue_batch", 3), |_| Partner::queue().export(&list, "erp".into()))
        .expect("queued");
    assert_eq!(handle.uuids().len(), 3, "7 records in batches of 3");
    let sizes: Vec<usize> =
        handle.uuids().iter().map(|id| t.db.job(id).expect("job").record_ids.len()).collect();
    assert_eq!(sizes, vec![3, 3, 1]);
    let db = t.reopen(|b| b.batch_size(5));
    let handle = db
        .transaction(Context::new().with("queue_batch", true), |_| {
            Partner::queue().export(&list, "erp".into())
        })
        .expect("queued");
    assert_eq!(handle.uuids().len(), 2, "true uses the configured batch size");
    let err = db
        .transaction(Context::new().with("queue_batch", 3), |_| {
            Partner::queue().identity_key("k").export(&list, "erp".into())
        })
        .expect_err("refused");
    assert!(err.to_string().contains("identity_key cannot be combined with queue_batch"), "{err}");
}

fn claim_order_is_priority_then_deadline_then_age(t: TestDb) {
    let list = t.partners(&["ada"]);
    let soon = (Utc::now() + TimeDelta::minutes(5)).to_rfc3339();
    let later = (Utc::now() + TimeDelta::hours(5)).to_rfc3339();
    let queue = |target: &str, priority: i32, ctx: Context| {
        t.db.transaction(ctx, |_| Partner::queue().priority(priority).export(&list, target.into()))
            .expect("queued")
            .uuid()
    };
    let a = queue("a", 10, Context::new());
    let b = queue("b", 10, Context::new().with("queue_expected_at", later));
    let c = queue("c", 10, Context::new().with("queue_expected_at", soon));
    let d = queue("d", 5, Context::new());
    let e = queue("e", 10, Context::new());
    let mut conn = t.db.conn().expect("conn");
    let mut order = Vec::new();
    loop {
        let rows = claim_any(&mut conn, "l", 1);
        let Some(row) = rows.into_iter().next() else { break };
        order.push(row.uuid.parse::<JobId>().expect("uuid"));
    }
    assert_eq!(order, vec![d, a, e, c, b], "priority, then deadline or age, then creation");
}

fn identity_key_keeps_one_waiting_job(t: TestDb) {
    let list = t.partners(&["ada"]);
    let queue = |t: &TestDb| {
        t.db.transaction(Context::new(), |_| {
            Partner::queue().identity_key("export-ada").export(&list, "erp".into())
        })
        .expect("queued")
    };
    let first = queue(&t);
    assert!(!first.existing());
    let second = queue(&t);
    assert!(second.existing());
    assert_eq!(second.uuid(), first.uuid(), "the caller gets the waiting job");
    assert_eq!(t.db.jobs(&ListParams::default()).expect("list").len(), 1);
    Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker").run_until_idle().expect("runs");
    let third = queue(&t);
    assert!(!third.existing(), "once the first has run, the key is free again");
    assert_ne!(third.uuid(), first.uuid());
    // A rolled-back transaction does not hold the key.
    let rolled: Result<(), Error> = t.db.transaction(Context::new(), |_| {
        Partner::queue().identity_key("other").export(&list, "erp".into())?;
        Err(Error::Config("no".into()))
    });
    assert!(rolled.is_err());
    let h = t
        .db
        .transaction(Context::new(), |_| Partner::queue().identity_key("other").export(&list, "x".into()));
    assert!(!h.expect("queued").existing());
}

fn identity_key_holds_under_concurrent_enqueues(t: TestDb) {
    let list = t.partners(&["ada"]);
    let threads = 6;
    let barrier = Barrier::new(threads);
    let uuids: Vec<JobId> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    t.db.transaction(Context::new(), |_| {
                        Partner::queue().identity_key("race").export(&list, "erp".into())
                    })
                    .expect("queued")
                    .uuid()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("no panic")).collect()
    });
    let pending = t.db.jobs(&ListParams::default().state(JobState::Pending)).expect("list");
    assert_eq!(pending.len(), 1, "one job for the key");
    assert!(uuids.iter().all(|u| *u == pending[0].uuid), "every caller got its handle");
}

fn a_retried_job_does_not_hold_its_identity_key(t: TestDb) {
    let list = t.partners(&["ada"]);
    let queue = || {
        t.db.transaction(Context::new(), |_| Partner::queue().identity_key("sync").export(&list, "x".into()))
            .expect("queued")
    };
    let first = queue();
    let mut conn = t.db.conn().expect("conn");
    let rows = claim_any(&mut conn, "lease", 1);
    assert_eq!(rows.len(), 1, "the first job starts");
    let second = queue();
    assert!(!second.existing(), "a job that has started does not hold its key");
    // The first comes back for a retry while the second waits: both wait, no conflict.
    let retried = queue_tests::finish_as(&mut conn, rows[0].id, "lease", JobState::Pending);
    assert!(retried);
    assert_eq!(t.db.job(&first.uuid()).expect("job").state, JobState::Pending);
    assert!(queue().existing(), "the second, never started, holds the key");
}
