//! `run --metrics`: a real worker process serves Prometheus metrics while it runs jobs; the
//! numbers scraped agree with the database.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use queue_diesel::prelude::*;
use queue_diesel::{JobState, ListParams};
use queue_tests::{Partner, TestDb, backend_tests, wait_for};

backend_tests!(metrics_agree_with_the_database);

fn get(address: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The value of the sample `name{labels}` in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn metrics_agree_with_the_database(t: TestDb) {
    let list = t.partners(&["ada", "bob"]);
    t.db.transaction(Context::new(), |_| {
        for _ in 0..3 {
            Partner::queue().export(&list, "crm".into())?;
        }
        for p in &list {
            Partner::queue().write_then_fail(std::slice::from_ref(p), "down".into())?;
        }
        Partner::queue().flaky(&list, 600)?;
        Ok::<_, queue_diesel::Error>(())
    })
    .expect("queued");
    let long =
        t.db.transaction(Context::new(), |_| Partner::queue().progresses(&list, 40, 100, false))
            .expect("queued")
            .uuid();
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let address = free.local_addr().expect("address").to_string();
    drop(free);
    let mut worker = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["cli", "--database-url", &t.url, "run", "--channels", "root:2,root.export:1"])
        .args(["--metrics", &address, "--poll-interval-ms", "50"])
        .env("QUEUE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("a worker process");
    let count =
        |state: JobState| t.db.jobs(&ListParams::default().state(state).limit(100)).map_or(0, |j| j.len());
    // While the long job runs, its progress is a gauge.
    let series = format!(r#"queue_job_progress_ratio{{uuid="{long}",function="res.partner.progresses"}}"#);
    let mut ratio = None;
    wait_for(Duration::from_secs(30), || {
        ratio = get(&address, "/metrics").and_then(|page| sample(&page, &series));
        ratio.is_some()
    });
    let settled = wait_for(Duration::from_secs(30), || {
        count(JobState::Done) == 4 && count(JobState::Failed) == 2 && count(JobState::Pending) == 1
    });
    let page = wait_for(Duration::from_secs(10), || get(&address, "/metrics").is_some())
        .then(|| get(&address, "/metrics"))
        .flatten();
    let missing = get(&address, "/other");
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(settled, "the jobs ran");
    let page = page.expect("the metrics were served");
    assert!(ratio.is_some_and(|r| (0.0..=1.0).contains(&r)), "a running job's progress: {ratio:?}");
    assert_eq!(sample(&page, &series), None, "gone once the job ended");
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(page.contains("Content-Type: application/openmetrics-text"), "{page}");
    let export = r#"{function="res.partner.export",channel="root.export"}"#;
    let failing = r#"{function="res.partner.write_then_fail",channel="root"}"#;
    let flaky = r#"{function="res.partner.flaky",channel="root"}"#;
    assert_eq!(sample(&page, &format!("queue_jobs_started_total{export}")), Some(3.0), "{page}");
    assert_eq!(sample(&page, &format!("queue_jobs_done_total{export}")), Some(3.0), "{page}");
    assert_eq!(sample(&page, &format!("queue_jobs_failed_total{failing}")), Some(2.0), "{page}");
    assert_eq!(sample(&page, &format!("queue_jobs_retried_total{flaky}")), Some(1.0), "{page}");
    assert_eq!(sample(&page, &format!("queue_job_run_seconds_count{export}")), Some(3.0), "{page}");
    assert_eq!(sample(&page, &format!("queue_job_latency_seconds_count{export}")), Some(3.0), "{page}");
    // Read from the database at the scrape.
    assert_eq!(sample(&page, r#"queue_jobs{channel="root.export",state="done"}"#), Some(3.0), "{page}");
    assert_eq!(sample(&page, r#"queue_jobs{channel="root",state="failed"}"#), Some(2.0), "{page}");
    assert_eq!(sample(&page, r#"queue_jobs{channel="root",state="pending"}"#), Some(1.0), "{page}");
    assert_eq!(sample(&page, r#"queue_channel_capacity{channel="root.export"}"#), Some(1.0), "{page}");
    assert_eq!(sample(&page, r#"queue_channel_running{channel="root.export"}"#), Some(0.0), "{page}");
    assert!(sample(&page, r#"queue_pool_connections{state="idle"}"#).is_some(), "{page}");
    assert!(sample(&page, "queue_batch_jobs_count").is_some_and(|n| n >= 1.0), "{page}");
    assert!(page.trim_end().ends_with("# EOF"), "{page}");
    assert!(missing.is_some_and(|m| m.starts_with("HTTP/1.1 404")), "other paths are not found");
}
