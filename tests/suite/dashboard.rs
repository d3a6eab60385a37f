//! The web dashboard over real HTTP on a real database: the list with its filters and counts, a
//! job with its links, actions on one job and on a filter, channels and functions; and its
//! rules: job data escaped, actions only with the token, from its own pages, from its own site,
//! and no address beyond loopback without a token.

use std::io::{Read, Write};
use std::net::TcpStream;

use queue_diesel::dashboard::{DashboardConfig, serve};
use queue_diesel::prelude::*;
use queue_diesel::{JobState, Worker, WorkerConfig};
use queue_tests::{Partner, TestDb, backend_tests};

backend_tests!(the_dashboard_shows_and_steers_jobs, the_dashboard_guards_its_actions);

struct Reply {
    status: u16,
    head: String,
    body: String,
}

fn http(address: &str, method: &str, path: &str, headers: &[(&str, &str)], form: &str) -> Reply {
    let mut stream = TcpStream::connect(address).expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        request.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        request.push_str(&format!("Content-Length: {}\r\n", form.len()));
    }
    request.push_str("\r\n");
    request.push_str(form);
    stream.write_all(request.as_bytes()).expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Reply { status, head: head.to_owned(), body: body.to_owned() }
}

fn get(address: &str, path: &str, cookie: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = cookie.map(|c| vec![("Cookie", c)]).unwrap_or_default();
    http(address, "GET", path, &headers, "")
}

/// The value of the hidden `key` field of a page's forms.
fn form_key(page: &str) -> String {
    let at = page.find(r#"name="key" value=""#).expect("a form with its key") + r#"name="key" value=""#.len();
    page[at..].split('"').next().expect("key").to_owned()
}

fn ran(t: &TestDb) {
    Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker").run_until_idle().expect("ran");
}

fn the_dashboard_shows_and_steers_jobs(t: TestDb) {
    let list = t.partners(&["ada"]);
    let (fine, broken) =
        t.db.transaction(Context::user(3), |_| {
            let fine = Partner::queue().export(&list, "crm".into())?.uuid();
            let broken = Partner::queue().write_then_fail(&list, "<script>alert(1)</script>".into())?.uuid();
            Ok::<_, queue_diesel::Error>((fine, broken))
        })
        .expect("queued");
    ran(&t);
    let config = DashboardConfig::new("127.0.0.1:0")
        .token(Some("s3cret".into()))
        .channels("root:2,root.export:1".parse().expect("channels"))
        .link("res.partner=https://erp.example.org/partners/{id}")
        .expect("link");
    let address = serve(t.db.clone(), config).expect("serving").to_string();

    let all = get(&address, "/", None);
    assert_eq!(all.status, 200, "{}", all.body);
    assert!(all.body.contains(&fine.to_string()) && all.body.contains(&broken.to_string()), "{}", all.body);
    assert!(all.body.contains("failed 1") && all.body.contains("done 1"), "counts per state: {}", all.body);
    assert!(all.body.contains("root.export 1"), "counts per channel: {}", all.body);
    assert!(all.body.contains(r#"http-equiv="refresh""#), "the list refreshes itself");
    let failed = get(&address, "/?state=failed", None);
    assert!(
        failed.body.contains(&broken.to_string()) && !failed.body.contains(&fine.to_string()),
        "{}",
        failed.body
    );
    let by_error = get(&address, "/?error=alert%281%29&channel=root", None);
    assert!(
        by_error.body.contains(&broken.to_string()) && by_error.body.contains("1 job(s)"),
        "{}",
        by_error.body
    );
    let none = get(&address, "/?func=res.partner.export&from=2000-01-01&to=2000-01-02", None);
    assert!(none.body.contains("0 job(s)"), "{}", none.body);
    let bad = get(&address, "/?from=yesterday", None);
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("expected a date like 2026-12-02 in from"), "{}", bad.body);
    // Job data is escaped: no script from a job runs in a page.
    for page in [&failed.body, &get(&address, &format!("/jobs/{broken}"), None).body] {
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
    }
    let job = get(&address, &format!("/jobs/{broken}"), None);
    let id = list[0].id;
    assert!(job.body.contains(&format!(r#"href="https://erp.example.org/partners/{id}""#)), "{}", job.body);
    assert!(job.body.contains("ExportError") && job.body.contains("Arguments"), "{}", job.body);
    assert!(!job.body.contains("Actions"), "no actions without the token");
    assert_eq!(get(&address, "/jobs/6f1c1f43-1b0e-4e0b-9d7b-6a3c1f3f0a11", None).status, 404);

    // The token given once is kept in a cookie, and dropped from the address.
    let login = get(&address, &format!("/jobs/{broken}?token=s3cret"), None);
    assert_eq!(login.status, 303, "{}", login.head);
    assert!(login.head.contains("queue_dashboard_token=s3cret; HttpOnly; SameSite=Strict"), "{}", login.head);
    assert!(login.head.contains(&format!("location: /jobs/{broken}")), "{}", login.head);
    let cookie = "queue_dashboard_token=s3cret";
    let job = get(&address, &format!("/jobs/{broken}"), Some(cookie));
    assert!(
        job.body.contains("Actions") && job.body.contains(&format!("/jobs/{broken}/requeue")),
        "{}",
        job.body
    );
    assert!(!job.body.contains(&format!("/jobs/{broken}/done\"")) || job.body.contains("Set done"));
    let key = form_key(&job.body);
    let requeued = http(
        &address,
        "POST",
        &format!("/jobs/{broken}/requeue"),
        &[("Cookie", cookie), ("Origin", &format!("http://{address}"))],
        &format!("key={key}"),
    );
    assert_eq!(requeued.status, 303, "{}", requeued.body);
    assert_eq!(t.db.job(&broken).expect("job").state, JobState::Pending);
    let shown = get(&address, &format!("/jobs/{broken}?message=x"), Some(cookie));
    assert!(shown.body.contains("class=\"message\""), "{}", shown.body);
    // The same rules as the command line: a pending job cannot be requeued.
    let refused = http(
        &address,
        "POST",
        &format!("/jobs/{broken}/requeue"),
        &[("Cookie", cookie)],
        &format!("key={key}"),
    );
    assert_eq!(refused.status, 303);
    let location = refused.head.lines().find(|l| l.starts_with("location:")).expect("redirect").to_owned();
    assert!(location.contains("refused%20to%20requeue"), "{location}");

    // Bulk: every failed job, after confirming how many.
    ran(&t);
    let page = get(&address, "/?state=failed", Some(cookie));
    assert!(page.body.contains("Cancel 1 job(s)"), "{}", page.body);
    let stale = http(
        &address,
        "POST",
        "/bulk/cancel",
        &[("Cookie", cookie)],
        &format!("key={key}&state=failed&expected=5"),
    );
    assert_eq!(stale.status, 303);
    assert_eq!(t.db.job(&broken).expect("job").state, JobState::Failed, "a changed count changes nothing");
    let bulk = http(
        &address,
        "POST",
        "/bulk/cancel",
        &[("Cookie", cookie)],
        &format!("key={key}&state=failed&expected=1"),
    );
    assert_eq!(bulk.status, 303);
    assert!(bulk.head.contains("cancel%3A%201%20of%201%20job%28s%29"), "{}", bulk.head);
    assert_eq!(t.db.job(&broken).expect("job").state, JobState::Cancelled);

    // Channels and functions, with the functions of pending jobs nobody here runs.
    let lost = t.db.transaction(Context::new(), |_| Partner::queue().give_up(&list)).expect("queued").uuid();
    queue_tests::orphan(&t.db, &lost);
    let channels = get(&address, "/channels", None);
    assert!(
        channels.body.contains("root.export") && channels.body.contains("<td>1</td>"),
        "{}",
        channels.body
    );
    let functions = get(&address, "/functions", None);
    assert!(
        functions.body.contains("res.partner.export") && functions.body.contains("300ms"),
        "{}",
        functions.body
    );
    assert!(functions.body.contains("gone.model.method"), "{}", functions.body);
}

fn the_dashboard_guards_its_actions(t: TestDb) {
    let list = t.partners(&["ada"]);
    let broken =
        t.db.transaction(Context::new(), |_| Partner::queue().write_then_fail(&list, "no".into()))
            .expect("queued")
            .uuid();
    ran(&t);
    // Read-only without a token.
    let open = serve(t.db.clone(), DashboardConfig::new("127.0.0.1:0")).expect("serving").to_string();
    let page = get(&open, &format!("/jobs/{broken}"), None);
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("Actions"));
    let refused = http(&open, "POST", &format!("/jobs/{broken}/requeue"), &[], "key=anything");
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("actions need a token"), "{}", refused.body);

    let guarded = DashboardConfig::new("127.0.0.1:0").token(Some("s3cret".into()));
    let address = serve(t.db.clone(), guarded).expect("serving").to_string();
    let cookie = "queue_dashboard_token=s3cret";
    let key = form_key(&get(&address, &format!("/jobs/{broken}"), Some(cookie)).body);
    let path = format!("/jobs/{broken}/requeue");
    let form = format!("key={key}");
    let wrong_token = http(&address, "POST", &path, &[("Cookie", "queue_dashboard_token=guess")], &form);
    assert_eq!(wrong_token.status, 403);
    let no_key = http(&address, "POST", &path, &[("Cookie", cookie)], "key=forged");
    assert_eq!(no_key.status, 403);
    assert!(no_key.body.contains("did not come from one of this dashboard"), "{}", no_key.body);
    let elsewhere =
        http(&address, "POST", &path, &[("Cookie", cookie), ("Origin", "http://evil.example")], &form);
    assert_eq!(elsewhere.status, 403);
    assert!(elsewhere.body.contains("another site"), "{}", elsewhere.body);
    assert_eq!(get(&address, "/?token=guess", None).status, 403);
    assert_eq!(t.db.job(&broken).expect("job").state, JobState::Failed, "nothing changed");
    let bearer = http(&address, "POST", &path, &[("Authorization", "Bearer s3cret")], &form);
    assert_eq!(bearer.status, 303);
    assert_eq!(t.db.job(&broken).expect("job").state, JobState::Pending);

    // Beyond loopback: refused without a token; with one, every page needs it.
    let err = serve(t.db.clone(), DashboardConfig::new("0.0.0.0:0")).expect_err("refused");
    assert!(err.to_string().contains("not loopback, without a token"), "{err}");
    let wide =
        serve(t.db.clone(), DashboardConfig::new("0.0.0.0:0").token(Some("s3cret".into()))).expect("serving");
    let local = format!("127.0.0.1:{}", wide.port());
    assert_eq!(get(&local, "/", None).status, 401);
    assert_eq!(get(&local, "/", Some(cookie)).status, 200);
}
