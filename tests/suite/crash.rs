//! A job that kills its worker process (an abort, a stack overflow, the OOM killer) is contained:
//! each death counts a try, it ends `failed` once its tries are spent, and the jobs that shared
//! its batch run at most once more. Real worker processes (the chaos binary's worker mode, one
//! executor each) are started again each time one dies, as a supervisor would.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use queue_diesel::prelude::*;
use queue_diesel::{JobId, JobState};
use queue_tests::{Counter, TestDb, backend_tests, chaos_counter, chaos_effect};

backend_tests!(a_job_that_kills_its_process_is_contained, run_until_idle_stops_gracefully_on_sigterm);

fn run_until_idle_stops_gracefully_on_sigterm(t: TestDb) {
    use queue_tests::Partner;
    let list = t.partners(&["ada"]);
    let (first, second) =
        t.db.transaction(Context::new(), |_| {
            let first = Partner::queue().priority(1).slow_export_alone(&list, "sigterm".into(), 1500)?.uuid();
            let second =
                Partner::queue().priority(2).slow_export_alone(&list, "sigterm".into(), 1500)?.uuid();
            Ok::<_, queue_diesel::Error>((first, second))
        })
        .expect("queued");
    let worker = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["--worker-of", &t.url, "--worker-channels", "root:1", "--worker-until-idle"])
        .env("QUEUE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a worker process");
    let started = || t.db.job(&first).is_ok_and(|j| j.state == JobState::Started);
    assert!(queue_tests::wait_for(Duration::from_secs(20), started), "the first job runs");
    let status = Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().expect("kill runs");
    assert!(status.success());
    let output = worker.wait_with_output().expect("the worker exits");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "a clean exit: {stderr}");
    assert_eq!(t.db.job(&first).expect("job").state, JobState::Done, "the running job was waited for");
    assert_eq!(
        t.db.job(&second).expect("job").state,
        JobState::Pending,
        "no job was started after the signal"
    );
}

fn a_job_that_kills_its_process_is_contained(t: TestDb) {
    queue_tests::create_chaos_tables(&t.db).expect("tables");
    let log =
        std::env::temp_dir().join(format!("queue-runs-{}.log", JobId::new())).to_string_lossy().into_owned();
    let counter = Counter { id: 1, n: 0 };
    let (ordinary, poison) =
        t.db.transaction(Context::new(), |_| {
            queue_diesel::bulk(|| {
                let mut ids = Vec::new();
                for _ in 0..100 {
                    ids.push(Counter::queue().bump_logged(&counter, 0, log.clone())?.uuid());
                }
                let poison = Counter::queue().poison(&counter)?.uuid();
                for _ in 0..100 {
                    ids.push(Counter::queue().bump_logged(&counter, 0, log.clone())?.uuid());
                }
                Ok::<_, queue_diesel::Error>((ids, poison))
            })
        })
        .expect("queued");
    let settled = || {
        t.db.job(&poison).is_ok_and(|j| j.state.is_finished())
            && ordinary.iter().all(|id| t.db.job(id).is_ok_and(|j| j.state == JobState::Done))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut deaths = 0;
    while !settled() {
        assert!(Instant::now() < deadline, "not settled after {deaths} deaths");
        let mut worker = Command::new(env!("CARGO_BIN_EXE_chaos"))
            .args(["--worker-of", &t.url, "--worker-channels", "root:1"])
            .env("QUEUE_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a worker process");
        loop {
            if let Some(status) = worker.try_wait().expect("wait") {
                assert!(!status.success(), "a worker only stops by dying here");
                deaths += 1;
                break;
            }
            if settled() || Instant::now() > deadline {
                let _ = worker.kill();
                let _ = worker.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let job = t.db.job(&poison).expect("job");
    assert_eq!((job.state, job.exc_name.as_deref()), (JobState::Failed, Some("WorkerLost")));
    assert_eq!(job.attempts, 3, "each death counted one try");
    assert_eq!(deaths, 3, "and it killed its process no more than its tries allow");
    let mut conn = t.db.conn().expect("conn");
    let n: i64 = chaos_counter::table.find(1).select(chaos_counter::n).first(&mut *conn).expect("counter");
    let effects: i64 = chaos_effect::table.count().get_result(&mut *conn).expect("effects");
    assert_eq!((n, effects), (200, 200), "every other job's effect committed once");
    let mut runs: HashMap<String, usize> = HashMap::new();
    for line in std::fs::read_to_string(&log).expect("the log").lines() {
        *runs.entry(line.to_owned()).or_default() += 1;
    }
    let _ = std::fs::remove_file(&log);
    for id in &ordinary {
        let ran = runs.get(&id.to_string()).copied().unwrap_or(0);
        assert!(
            (1..=2).contains(&ran),
            "job {id} ran {ran} times: once, or once more after sharing a batch with the poison"
        );
    }
}
