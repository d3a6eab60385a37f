//! The running service, as a client sees it: a real HTTP request queues a job in the handler's
//! transaction, the in-process worker runs it (an async job), and the service stops cleanly on
//! SIGINT.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One HTTP/1.1 request; the response's status and JSON body.
fn request(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).expect("connects");
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("answered");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    let json = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(json).unwrap_or(Value::String(json.to_owned())))
}

#[test]
fn a_request_queues_a_job_that_the_worker_runs() {
    let db = std::env::temp_dir().join(format!("web-example-{}.sqlite3", std::process::id()));
    let db = db.to_string_lossy().into_owned();
    let mut child = Command::new(env!("CARGO_BIN_EXE_web"))
        .args(["--database-url", &db, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the service starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("a line");
    let addr = line.trim().strip_prefix("listening on ").expect("its address").to_owned();

    let (status, created) = request(&addr, "POST", "/customers", Some(r#"{"email":"ada@example.org"}"#));
    assert_eq!(status, 200, "{created}");
    let uuid = created["job"].as_str().expect("a job uuid").to_owned();
    let start = Instant::now();
    let job = loop {
        let (status, job) = request(&addr, "GET", &format!("/jobs/{uuid}"), None);
        assert_eq!(status, 200, "{job}");
        if job["state"] == "done" || start.elapsed() > Duration::from_secs(30) {
            break job;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["result"], "Welcome, ada@example.org");
    let (status, _) = request(&addr, "GET", "/jobs/not-a-uuid", None);
    assert_eq!(status, 400);

    let stopped = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill runs");
    assert!(stopped.success());
    let status = child.wait().expect("it stops");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{db}{suffix}"));
    }
    assert!(status.success(), "{status}");
}
