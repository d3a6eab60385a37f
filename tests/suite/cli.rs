//! The command line as an operator uses it, on a real database with real jobs: the worker's log
//! (a span per job, failures and panics with where they happened, functions nobody runs), read
//! commands with `--json`, bulk actions by filter, and refusals of what would create or change a
//! database by mistake. The chaos binary (`chaos cli …`) is `queue-worker` with the suite's job
//! functions linked in.

use std::process::Command;

use queue_diesel::prelude::*;
use queue_diesel::{Backend, JobState, Worker, WorkerConfig};
use queue_tests::{Partner, TestDb, backend_tests};
use serde_json::Value;

backend_tests!(
    the_log_shows_each_job_in_its_span,
    read_commands_print_json_and_never_migrate,
    bulk_actions_take_a_filter_and_a_confirmation,
    the_dashboard_command_serves_on_loopback_only_without_a_token,
);

/// Run `chaos cli <args>` on `url`; (success, stdout, stderr).
fn cli(url: &str, envs: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .arg("cli")
        .args(["--database-url", url])
        .args(args)
        .env("QUEUE_LOG", "error")
        .envs(envs.iter().copied())
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn the_log_shows_each_job_in_its_span(t: TestDb) {
    let list = t.partners(&["ada"]);
    let (ok_job, failing, panicking, lost) =
        t.db.transaction(Context::user(7), |_| {
            let ok_job = Partner::queue().export(&list, "crm".into())?.uuid();
            let failing = Partner::queue().write_then_fail(&list, "no route".into())?.uuid();
            let panicking = Partner::queue().explode(&list)?.uuid();
            let lost = Partner::queue().give_up(&list)?.uuid();
            Ok::<_, queue_diesel::Error>((ok_job, failing, panicking, lost))
        })
        .expect("queued");
    // A job of a function no binary has any more.
    queue_tests::orphan(&t.db, &lost);
    let (ok, _, log) = cli(
        &t.url,
        &[("QUEUE_LOG", "info"), ("QUEUE_LOG_FORMAT", "json")],
        &["run", "--until-idle", "--channels", "root:2"],
    );
    assert!(ok, "{log}");
    let events: Vec<Value> = log.lines().filter(|l| l.starts_with('{')).map(json).collect();
    let of = |uuid: &queue_diesel::JobId, message: &str| -> Value {
        events
            .iter()
            .find(|e| e["span"]["uuid"] == uuid.to_string() && e["fields"]["message"] == message)
            .cloned()
            .unwrap_or_else(|| panic!("no {message:?} event for {uuid} in:\n{log}"))
    };
    let started = of(&ok_job, "job started");
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["span"]["function"], "res.partner.export");
    assert_eq!(started["span"]["channel"], "root.export");
    assert_eq!(started["span"]["attempt"], 1);
    assert_eq!(started["span"]["user"], 7);
    assert_eq!(started["span"]["records"], 1);
    assert!(started["fields"]["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{started}");
    let ran = of(&ok_job, "job ran");
    assert_eq!((ran["level"].as_str(), ran["fields"]["verdict"].as_str()), (Some("INFO"), Some("done")));
    assert!(ran["fields"]["duration_ms"].as_f64().is_some(), "{ran}");
    let failed = of(&failing, "job failed");
    assert_eq!(failed["level"], "WARN");
    assert_eq!(failed["fields"]["error"], "ExportError");
    assert_eq!(failed["fields"]["error_message"], "no route");
    let panicked = of(&panicking, "job failed");
    assert_eq!(panicked["fields"]["error_message"], "boom at the core");
    let place = panicked["fields"]["info"].as_str().expect("info");
    assert!(place.contains("panicked at") && place.contains("models.rs:"), "{place}");
    // The same place is stored on the job, for whoever looks at it later.
    let stored = t.db.job(&panicking).expect("job");
    assert!(stored.exc_info.as_deref().is_some_and(|i| i.contains("models.rs:")), "{:?}", stored.exc_info);
    assert!(
        events.iter().any(|e| e["level"] == "WARN" && e["fields"]["function"] == "gone.model.method"),
        "the worker names the function nobody runs:\n{log}"
    );
    // The text format, with a filter in RUST_LOG's form: the same events, no colours in a pipe.
    let list = t.partners(&["bob"]);
    t.db.transaction(Context::new(), |_| Partner::queue().export(&list, "again".into())).expect("queued");
    let (ok, _, log) = cli(
        &t.url,
        &[("QUEUE_LOG", ""), ("RUST_LOG", "warn,queue_diesel=info")],
        &["run", "--until-idle", "--channels", "root:2"],
    );
    assert!(ok, "{log}");
    assert!(log.contains("job ran") && log.contains("function=\"res.partner.export\""), "{log}");
    assert!(!log.contains('\u{1b}'), "no colour codes outside a terminal: {log:?}");
    let (ok, _, err) = cli(&t.url, &[("QUEUE_LOG", "loud")], &["jobs", "count"]);
    assert!(!ok);
    assert!(err.contains("QUEUE_LOG=\"loud\"") && err.contains("expected a level"), "{err}");
}

fn read_commands_print_json_and_never_migrate(t: TestDb) {
    // An empty queue: every state counted, zeros included.
    let (ok, out, err) = cli(&t.url, &[], &["jobs", "count", "--json"]);
    assert!(ok, "{err}");
    let counts = json(&out);
    assert_eq!(counts.as_object().map(|m| m.len()), Some(7), "{out}");
    assert!(counts.as_object().expect("object").values().all(|n| n == 0), "{out}");
    let (ok, out, _) = cli(&t.url, &[], &["jobs", "count"]);
    assert!(ok && out.contains("pending           0") && out.contains("failed            0"), "{out}");
    for bad in ["--limit=0", "--limit=10001", "--limit=-3"] {
        let (ok, _, err) = cli(&t.url, &[], &["jobs", "list", bad]);
        assert!(!ok && err.contains("--limit"), "{bad}: {err}");
    }
    let list = t.partners(&["ada"]);
    let (parent, child) =
        t.db.transaction(Context::new(), |_| {
            let parent = Partner::queue().description("first export").export(&list, "a".into())?;
            let child = Partner::queue().depends_on(&parent).export(&list, "b".into())?;
            Ok::<_, queue_diesel::Error>((parent.uuid(), child.uuid()))
        })
        .expect("queued");
    let (ok, out, err) = cli(&t.url, &[], &["jobs", "show", &child.to_string(), "--json"]);
    assert!(ok, "{err}");
    let shown = json(&out);
    assert_eq!(shown["state"], "wait_dependencies");
    assert_eq!(shown["parents"][0]["uuid"], parent.to_string());
    assert_eq!(shown["parents"][0]["state"], "pending");
    let (ok, out, _) = cli(&t.url, &[], &["jobs", "show", &parent.to_string()]);
    assert!(ok && out.contains(&format!("children      {child} (wait_dependencies)")), "{out}");
    let (ok, out, _) = cli(&t.url, &[], &["jobs", "list", "--json", "--channel", "root.export"]);
    assert!(ok);
    let jobs = json(&out);
    assert_eq!(jobs.as_array().map(Vec::len), Some(2), "{out}");
    assert_eq!(jobs[1]["description"], "first export");
    let (ok, out, _) = cli(&t.url, &[], &["jobs", "list"]);
    assert!(ok && out.lines().next().is_some_and(|h| h.contains("ETA") && h.contains("ERROR")), "{out}");
    assert!(out.contains("first export"), "{out}");
    let (ok, out, err) = cli(&t.url, &[], &["stats", "--json"]);
    assert!(ok, "{err}");
    let stats = json(&out);
    assert_eq!(stats["channels"][0]["channel"], "root.export");
    assert_eq!(stats["channels"][0]["counts"]["pending"], 1);
    assert_eq!(stats["channels"][0]["counts"]["wait_dependencies"], 1);
    assert!(stats["channels"][0]["oldest_pending_seconds"].as_f64().is_some(), "{out}");
    assert_eq!(stats["done"]["15m"], 0);
    let (ok, out, err) = cli(&t.url, &[("QUEUE_CHANNELS", "root:2,root.export:1")], &["channels", "--json"]);
    assert!(ok, "{err}");
    let channels = json(&out);
    let export =
        channels.as_array().and_then(|c| c.iter().find(|c| c["channel"] == "root.export")).expect("listed");
    assert_eq!((export["capacity"].as_u64(), export["pending"].as_i64()), (Some(1), Some(1)), "{out}");
    let (ok, out, _) = cli(&t.url, &[], &["functions", "--json"]);
    assert!(ok);
    let functions = json(&out);
    let timed = functions.as_array().and_then(|f| f.iter().find(|f| f["name"] == "res.partner.oversleeps"));
    assert_eq!(timed.map(|f| f["timeout_seconds"].clone()), Some(serde_json::json!(0.3)), "{out}");

    // Without the queue's tables, read commands say to migrate and create nothing.
    let drop = queue_diesel::migrations::script(t.db.backend(), false);
    t.db.conn().expect("conn").batch(&drop).expect("dropped");
    for args in [&["jobs", "list"][..], &["jobs", "count"], &["stats"], &["channels"]] {
        let (ok, _, err) = cli(&t.url, &[], args);
        assert!(
            !ok && err.contains("has no queue tables: run `queue-worker migrate` first"),
            "{args:?}: {err}"
        );
    }
    let (ok, out, err) = cli(&t.url, &[], &["migrate"]);
    assert!(ok && out.contains("up to date"), "{err}");
    let (ok, _, err) = cli(&t.url, &[], &["jobs", "count"]);
    assert!(ok, "{err}");
    if t.db.backend() == Backend::Sqlite {
        let missing = format!("{}-missing.sqlite3", t.url);
        let (ok, _, err) = cli(&missing, &[], &["jobs", "list"]);
        assert!(!ok && err.contains("there is no database at"), "{err}");
        assert!(!std::path::Path::new(&missing).exists(), "nothing created");
    }
    let typo = format!("{}-typo", t.url.trim_end_matches(".sqlite3"));
    let (ok, _, err) = cli(&typo, &[], &["jobs", "list"]);
    if t.db.backend() == Backend::Sqlite {
        assert!(!ok && err.contains("is neither a postgres:// URL nor a SQLite file"), "{err}");
        assert!(!std::path::Path::new(&typo).exists());
    } else {
        assert!(!ok, "a database that does not exist: {err}");
    }
}

fn bulk_actions_take_a_filter_and_a_confirmation(t: TestDb) {
    let list = t.partners(&["ada", "bob", "cid"]);
    t.db.transaction(Context::new(), |_| {
        for p in &list {
            Partner::queue().write_then_fail(std::slice::from_ref(p), "down".into())?;
        }
        Partner::queue().export(&list, "ok".into())?;
        Ok::<_, queue_diesel::Error>(())
    })
    .expect("queued");
    Worker::new(t.db.clone(), WorkerConfig::default()).expect("worker").run_until_idle().expect("ran");
    let failed = || {
        t.db.jobs(&queue_diesel::ListParams::default().state(JobState::Failed).limit(100))
            .expect("jobs")
            .len()
    };
    assert_eq!(failed(), 3);
    let (ok, out, _) = cli(&t.url, &[], &["jobs", "list", "--state", "failed"]);
    assert!(ok && out.contains("ExportError: down"), "the error's first line: {out}");
    let filter = ["--state", "failed", "--func", "res.partner.write_then_fail"];
    let (ok, _, err) = cli(&t.url, &[], &[&["jobs", "requeue"][..], &filter].concat());
    assert!(!ok && err.contains("requeue 3 job(s)?") && err.contains("pass --yes"), "{err}");
    assert_eq!(failed(), 3, "nothing changed without a confirmation");
    let (ok, _, err) = cli(&t.url, &[], &["jobs", "requeue"]);
    assert!(!ok && err.contains("--state, --func or --channel"), "{err}");
    let (ok, out, err) = cli(&t.url, &[], &[&["jobs", "requeue", "--yes"][..], &filter].concat());
    assert!(ok, "{err}");
    assert!(out.contains("requeue: 3 of 3 job(s)"), "{out}");
    assert_eq!(failed(), 0);
    let pending = t.db.jobs(&queue_diesel::ListParams::default().state(JobState::Pending)).expect("jobs");
    assert_eq!(pending.len(), 3);
    // Each job the action does not apply to is reported, and the command fails.
    let (ok, out, err) = cli(&t.url, &[], &["jobs", "requeue", "--yes", "--channel", "root.export"]);
    assert!(!ok, "a done job cannot be requeued: {out}");
    assert!(err.contains("1 of 1 job(s) refused to requeue"), "{err}");
    let (ok, out, err) =
        cli(&t.url, &[], &["jobs", "done", "--yes", "--func", "res.partner.write_then_fail"]);
    assert!(ok && out.contains("set done: 3 of 3 job(s)"), "{out}{err}");
    let (ok, out, _) = cli(&t.url, &[], &["jobs", "cancel", "--yes", "--state", "pending"]);
    assert!(ok && out.contains("no job matches"), "{out}");
}

fn the_dashboard_command_serves_on_loopback_only_without_a_token(t: TestDb) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let address = format!("127.0.0.1:{port}");
    let mut server = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["cli", "--database-url", &t.url, "dashboard", "--bind", &address])
        .env("QUEUE_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the dashboard starts");
    let served = queue_tests::wait_for(std::time::Duration::from_secs(20), || {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(&address) else { return false };
        let _ = write!(stream, "GET /channels HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        let mut page = String::new();
        let _ = stream.read_to_string(&mut page);
        page.starts_with("HTTP/1.1 200") && page.contains("Channels")
    });
    let _ = server.kill();
    let _ = server.wait();
    assert!(served, "the dashboard served its channels page");
    for args in
        [&["dashboard", "--bind", "0.0.0.0:0"][..], &["run", "--until-idle", "--dashboard", "0.0.0.0:0"]]
    {
        let (ok, _, err) = cli(&t.url, &[("QUEUE_DASHBOARD_TOKEN", "")], args);
        assert!(!ok && err.contains("not loopback, without a token"), "{args:?}: {err}");
    }
    let (ok, _, err) = cli(&t.url, &[], &["dashboard", "--link", "res.partner"]);
    assert!(!ok && err.contains("expected model=url-template"), "{err}");
}
