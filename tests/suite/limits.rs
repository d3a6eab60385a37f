//! Throttles and rate limits hold across workers: three worker processes share a channel with
//! `throttle=` and one with `rate=`, and the moments their jobs start keep the bounds.

use std::process::{Command, Stdio};
use std::time::Duration;

use queue_diesel::prelude::*;
use queue_diesel::{JobState, ListParams};
use queue_tests::{Partner, TestDb, backend_tests, wait_for};

backend_tests!(throttles_and_rates_hold_across_three_workers);

/// The start moments written to `path`, in order, in microseconds.
fn starts(path: &str) -> Vec<u128> {
    let mut times: Vec<u128> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    times.sort_unstable();
    times
}

fn throttles_and_rates_hold_across_three_workers(t: TestDb) {
    let list = t.partners(&["ada"]);
    let dir = std::env::temp_dir().join(format!("queue-limits-{}", queue_diesel::JobId::new()));
    std::fs::create_dir_all(&dir).expect("folder");
    let mail = dir.join("mail").to_string_lossy().into_owned();
    let sms = dir.join("sms").to_string_lossy().into_owned();
    t.db.transaction(Context::new(), |_| {
        for _ in 0..6 {
            Partner::queue().stamped(&list, mail.clone())?;
        }
        for _ in 0..7 {
            Partner::queue().channel("root.sms").stamped(&list, sms.clone())?;
        }
        Ok::<_, queue_diesel::Error>(())
    })
    .expect("queued");
    let channels = "root:4,root.mail:2:throttle=300ms,root.sms:4:rate=3/1s";
    let workers: Vec<_> = (0..3)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_chaos"))
                .args([
                    "cli",
                    "--database-url",
                    &t.url,
                    "run",
                    "--channels",
                    channels,
                    "--poll-interval-ms",
                    "50",
                ])
                .env("QUEUE_LOG", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("a worker process")
        })
        .collect();
    let done = wait_for(Duration::from_secs(60), || {
        t.db.jobs(&ListParams::default().state(JobState::Done).limit(100)).map_or(0, |j| j.len()) == 13
    });
    for mut worker in workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    assert!(done, "every job ran");
    // A start is counted when a worker takes the right to it, a moment before the body runs
    // (a claim and a thread hand-over later: tens of milliseconds on a loaded machine, seen
    // up to 80): the bodies' moments keep the bound up to that moment. Without the limits the
    // jobs would start within a few milliseconds of each other.
    let slack = 150_000;
    let mail = starts(&mail);
    assert_eq!(mail.len(), 6);
    for pair in mail.windows(2) {
        assert!(pair[1] - pair[0] + slack >= 300_000, "throttle=300ms held: {mail:?}");
    }
    let sms = starts(&sms);
    assert_eq!(sms.len(), 7);
    for window in sms.windows(4) {
        assert!(window[3] - window[0] + slack >= 1_000_000, "rate=3/1s held: {sms:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
