//! The dashboard in a real browser: headless Chromium driven through chromedriver (the W3C
//! WebDriver protocol, spoken here over plain HTTP) against the real server on a real database.
//! It loads the list, filters it to failed jobs, opens one, requeues it, and checks the row.
//! With `QUEUE_SCREENSHOTS` naming a folder, it saves the pictures the README shows.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use queue_diesel::dashboard::{DashboardConfig, serve};
use queue_diesel::prelude::*;
use queue_diesel::{JobState, Worker, WorkerConfig};
use queue_tests::{Kind, Partner, TestDb, wait_for};
use serde_json::{Value, json};

/// The chromedriver the suite was built for.
fn chromedriver() -> &'static str {
    option_env!("QUEUE_TEST_CHROMEDRIVER").unwrap_or("chromedriver")
}

/// A chromedriver process, ended when dropped.
struct Driver {
    child: Child,
    address: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver session.
struct Browser<'d> {
    driver: &'d Driver,
    session: String,
}

fn call(address: &str, method: &str, path: &str, body: Option<&Value>) -> Value {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut stream = TcpStream::connect(address).expect("chromedriver answers");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let text = read_response(&mut stream);
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(value["value"]["error"].is_null(), "{method} {path}: {value}");
    value["value"].clone()
}

/// The body of one HTTP response (chromedriver keeps its connections open: read by length, or
/// by chunks).
fn read_response(stream: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let head_end = loop {
        let n = stream.read(&mut buf).expect("read");
        assert!(n > 0, "chromedriver closed the connection");
        raw.extend_from_slice(&buf[..n]);
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let mut body = raw[head_end..].to_vec();
    if let Some(length) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
    {
        while body.len() < length {
            let n = stream.read(&mut buf).expect("read");
            assert!(n > 0, "chromedriver closed the connection");
            body.extend_from_slice(&buf[..n]);
        }
        return String::from_utf8_lossy(&body[..length]).into_owned();
    }
    // Chunked: read until the last chunk, then strip the chunk sizes.
    while !body.windows(5).any(|w| w == b"0\r\n\r\n") {
        let n = stream.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    let mut out = Vec::new();
    let mut rest = &body[..];
    while let Some(at) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..at]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = at + 2;
        out.extend_from_slice(&rest[start..(start + size).min(rest.len())]);
        rest = &rest[(start + size + 2).min(rest.len())..];
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Driver {
    fn start() -> Driver {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let child = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let address = format!("127.0.0.1:{port}");
        assert!(
            wait_for(Duration::from_secs(20), || TcpStream::connect(&address).is_ok()),
            "chromedriver listens"
        );
        Driver { child, address }
    }

    fn browser(&self) -> Browser<'_> {
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"]}
        }}});
        let created = call(&self.address, "POST", "/session", Some(&capabilities));
        Browser { driver: self, session: created["sessionId"].as_str().expect("a session").to_owned() }
    }
}

impl Browser<'_> {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        call(&self.driver.address, method, &format!("/session/{}{path}", self.session), body.as_ref())
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    fn find(&self, css: &str) -> String {
        let found = self.call("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("an element")
            .to_owned()
    }

    fn click(&self, css: &str) {
        let element = self.find(css);
        self.call("POST", &format!("/element/{element}/click"), Some(json!({})));
    }

    fn url(&self) -> String {
        self.call("GET", "/url", None).as_str().unwrap_or_default().to_owned()
    }

    fn source(&self) -> String {
        self.call("GET", "/source", None).as_str().unwrap_or_default().to_owned()
    }

    /// Save a picture of the page as `name`.png in `QUEUE_SCREENSHOTS`, when set.
    fn picture(&self, name: &str) {
        let Some(folder) = std::env::var_os("QUEUE_SCREENSHOTS") else { return };
        let encoded = self.call("GET", "/screenshot", None);
        let bytes = base64(encoded.as_str().expect("a picture"));
        std::fs::write(std::path::Path::new(&folder).join(format!("{name}.png")), bytes).expect("saved");
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            call(&self.driver.address, "DELETE", &format!("/session/{}", self.session), None)
        });
    }
}

fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> =
        text.bytes().filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/').map(value).collect();
    digits
        .chunks(4)
        .flat_map(|c| {
            let n = c.iter().enumerate().fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            bytes.into_iter().take(c.len().saturating_sub(1))
        })
        .collect()
}

fn a_person_finds_and_requeues_a_failed_job(kind: Kind) {
    let t = TestDb::new(kind, |b| b).expect("a database");
    let list = t.partners(&["Ada Lovelace", "Grace Hopper", "Alan Turing"]);
    let (done, failed) =
        t.db.transaction(Context::user(2), |_| {
            let mut done = Vec::new();
            for (i, partner) in list.iter().enumerate() {
                let job = Partner::queue()
                    .description(format!("Export partner {}", partner.name))
                    .priority(10 + i as i32)
                    .export(std::slice::from_ref(partner), "crm".into())?;
                done.push(job.uuid());
            }
            let failed = Partner::queue()
                .description("Export to the old CRM")
                .write_then_fail(&list[..1], "connection refused by crm.example.org".into())?
                .uuid();
            Partner::queue().write_then_fail(&list[1..2], "invalid address".into())?;
            Partner::queue().flaky(&list[2..], 3600)?;
            Ok::<_, queue_diesel::Error>((done, failed))
        })
        .expect("queued");
    Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker").run_until_idle().expect("ran");
    let config = DashboardConfig::new("127.0.0.1:0")
        .token(Some("s3cret".into()))
        .channels("root:4,root.export:1".parse().expect("channels"))
        .link("res.partner=https://erp.example.org/partners/{id}")
        .expect("link")
        .refresh_secs(0);
    let dashboard = format!("http://{}", serve(t.db.clone(), config).expect("serving"));
    let driver = Driver::start();
    let browser = driver.browser();

    browser.open(&format!("{dashboard}/?token=s3cret"));
    assert_eq!(browser.url(), format!("{dashboard}/"), "the token leaves the address");
    let list_page = browser.source();
    assert!(done.iter().all(|u| list_page.contains(&u.to_string())), "{list_page}");
    browser.picture("dashboard-jobs");
    // Filter to the failed jobs with the form.
    browser.click(r#"select[name="state"] option[value="failed"]"#);
    browser.click(r#"form[action="/"] button[type="submit"]"#);
    // A click that submits a form returns before the next page has loaded.
    assert!(
        wait_for(Duration::from_secs(10), || browser.url().contains("state=failed")),
        "{}",
        browser.url()
    );
    let failed_page = browser.source();
    assert!(failed_page.contains(&failed.to_string()), "{failed_page}");
    assert!(!failed_page.contains(&done[0].to_string()), "only failed jobs: {failed_page}");
    assert!(failed_page.contains("2 job(s)"), "{failed_page}");
    // Open it, and requeue it.
    browser.click(&format!(r#"a[href="/jobs/{failed}"]"#));
    assert!(wait_for(Duration::from_secs(10), || browser.url().ends_with(&format!("/jobs/{failed}"))));
    let job_page = browser.source();
    assert!(job_page.contains("connection refused by crm.example.org"), "{job_page}");
    assert!(job_page.contains("https://erp.example.org/partners/"), "{job_page}");
    browser.picture("dashboard-failed-job");
    browser.click(&format!(r#"form[action="/jobs/{failed}/requeue"] button"#));
    let requeued =
        wait_for(Duration::from_secs(10), || browser.source().contains("requeue: the job is pending now"));
    assert!(requeued, "{}", browser.source());
    assert_eq!(t.db.job(&failed).expect("job").state, JobState::Pending, "the row in the database");
}

#[test]
#[cfg_attr(
    not(queue_browser_tests),
    ignore = "set QUEUE_TEST_CHROMEDRIVER to Debian's chromedriver (apt install chromium chromium-driver) to run it"
)]
fn a_person_finds_and_requeues_a_failed_job_on_sqlite() {
    a_person_finds_and_requeues_a_failed_job(Kind::Sqlite);
}

#[test]
#[cfg_attr(
    not(all(queue_browser_tests, queue_postgres_tests)),
    ignore = "set QUEUE_TEST_CHROMEDRIVER and QUEUE_TEST_POSTGRES_URL to run it"
)]
fn a_person_finds_and_requeues_a_failed_job_on_postgres() {
    a_person_finds_and_requeues_a_failed_job(Kind::Postgres);
}
