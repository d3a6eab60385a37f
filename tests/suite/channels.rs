//! Channels across workers: capacities shared by every worker of a database, sequential
//! channels, and pauses.

use std::time::Duration;

use queue_diesel::prelude::*;
use queue_diesel::store::ListParams;
use queue_diesel::{Error, JobId, JobState, OperatorAction, Shutdown, Worker, WorkerConfig};
use queue_tests::{Partner, StopOnDrop, TestDb, backend_tests, max_running, wait_for};

backend_tests!(
    capacity_holds_across_worker_processes,
    a_sequential_channel_keeps_order_and_stops_on_failure,
    a_paused_channel_holds_its_jobs_until_resumed,
);

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

fn a_paused_channel_holds_its_jobs_until_resumed(t: TestDb) {
    let list = t.partners(&["ada"]);
    let (exports, below, held, free) =
        t.db.transaction(Context::new(), |_| {
            let exports = vec![
                Partner::queue().export(&list, "a".into())?.uuid(),
                Partner::queue().export(&list, "b".into())?.uuid(),
            ];
            let below = Partner::queue().channel("root.slow.eu").export(&list, "c".into())?.uuid();
            let held = Partner::queue().channel("root.held").export(&list, "d".into())?.uuid();
            let free = Partner::queue().channel("root.slow").export(&list, "e".into())?.uuid();
            Ok::<_, Error>((exports, below, held, free))
        })
        .expect("queued");
    assert!(t.db.pause_channel("root.export").expect("paused"));
    assert!(!t.db.pause_channel("root.export").expect("paused again"), "already paused");
    assert!(t.db.pause_channel("root.slow.eu").expect("paused"));
    assert!(t.db.pause_channel("export").is_err(), "not a channel name");
    let state = |uuid: &JobId| t.db.job(uuid).expect("job").state;
    let channels = "root:2,root.export:1,root.slow:1,root.held:0";
    let config = WorkerConfig::default()
        .channels(channels.parse().expect("valid"))
        .poll_interval(Duration::from_millis(50));
    let worker = Worker::new(t.db.clone(), config).expect("worker");
    let shutdown = Shutdown::new();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chaos"))
            .args(["cli", "--database-url", &t.url])
            .args(args)
            .env("QUEUE_LOG", "error")
            .env("QUEUE_CHANNELS", channels)
            .output()
            .expect("the binary runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&shutdown);
        let run = s.spawn(|| worker.run(&shutdown));
        assert!(
            wait_for(Duration::from_secs(20), || state(&free) == JobState::Done),
            "an unpaused channel runs"
        );
        // A second is more than a worker needs to see a pause.
        std::thread::sleep(Duration::from_millis(1200));
        for uuid in exports.iter().chain([&below, &held]) {
            assert_eq!(state(uuid), JobState::Pending, "held: {uuid}");
        }
        let (ok, out, err) = cli(&["channels", "--json"]);
        assert!(ok, "{err}");
        let listed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        let export =
            listed.as_array().and_then(|l| l.iter().find(|c| c["channel"] == "root.export")).expect("listed");
        assert_eq!(
            (export["paused_by"].as_str(), export["pending"].as_i64()),
            (Some("root.export"), Some(2))
        );
        let (ok, out, _) = cli(&["channels"]);
        assert!(ok && out.contains("held (0)") && out.contains("paused"), "{out}");
        let (ok, _, err) = cli(&["resume", "root.export.crm"]);
        assert!(!ok && err.contains("root.export above it is: resume root.export"), "{err}");
        let (ok, out, err) = cli(&["resume", "root.export"]);
        assert!(ok && out.contains("root.export resumed"), "{out}{err}");
        assert!(
            wait_for(Duration::from_secs(10), || exports.iter().all(|u| state(u) == JobState::Done)),
            "resumed, its jobs run"
        );
        assert_eq!(state(&below), JobState::Pending, "a paused sub-channel of an unpaused one stays held");
        let (ok, _, err) = cli(&["resume", "root.export"]);
        assert!(!ok && err.contains("root.export is not paused"), "{err}");
        assert!(t.db.resume_channel("root.slow.eu").expect("resumed"));
        assert!(wait_for(Duration::from_secs(10), || state(&below) == JobState::Done));
        assert_eq!(state(&held), JobState::Pending, "capacity 0 holds a channel, as in Odoo");
        shutdown.trigger();
        run.join().expect("no panic").expect("clean stop");
    });
}
