//! Periodic schedules (see the suite's in `tests/schedules.rs`, all in the year 2099): each tick
//! is queued by exactly one pass, with its origin and its tick as the job's eta; missed ticks are
//! caught up per `catch_up`; `skip_if_unfinished` skips a tick while an earlier job runs; a
//! schedule whose code fails keeps its tick; concurrent passes (one pool each, as workers on
//! several hosts) queue each tick once; a worker ticks by itself, unless told not to; worker
//! processes killed and started again among others leave no tick missed or queued twice.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use diesel::prelude::*;
use queue_diesel::prelude::*;
use queue_diesel::{
    JobState, ListParams, MockClock, ScheduleOutcome, ScheduleView, Scheduler, Worker, WorkerConfig,
};
use queue_tests::{Partner, TestDb, backend_tests, partners, wait_for, while_running};

backend_tests!(
    each_tick_is_queued_once_with_its_origin_and_eta,
    missed_ticks_follow_catch_up,
    a_tick_is_skipped_while_an_earlier_job_is_unfinished,
    a_failing_schedule_keeps_its_tick_and_tries_again,
    concurrent_passes_queue_each_tick_once,
    a_worker_ticks_unless_told_not_to,
    the_command_line_lists_schedules_and_their_jobs,
    worker_processes_share_the_ticks,
);

const HOURLY: &str = "schedule:suite.hourly_export";
const NIGHTLY: &str = "schedule:suite.report.nightly";
const QUARTER: &str = "schedule:suite.quarter_hourly";
const AUDIT: &str = "schedule:suite.audit";

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).single().expect("a valid time")
}

/// The test's database seen through a mock clock set at `start`.
fn at(t: &TestDb, start: DateTime<Utc>) -> (Database, MockClock) {
    let clock = MockClock::new(start);
    (t.reopen(|b| b.clock(Arc::new(clock.clone()))), clock)
}

/// The etas of the jobs of `origin`, oldest first.
fn etas(db: &Database, origin: &str) -> Vec<DateTime<Utc>> {
    let mut etas: Vec<DateTime<Utc>> = db
        .jobs(&ListParams::default().origin(origin).limit(1000))
        .expect("list")
        .into_iter()
        .map(|j| j.eta.expect("a schedule's job is due at its tick"))
        .collect();
    etas.sort();
    etas
}

fn queued(ticks: &[DateTime<Utc>]) -> ScheduleOutcome {
    ScheduleOutcome::Queued(ticks.to_vec())
}

/// A scheduler that has seen every schedule once (at the clock's time).
fn started(db: &Database) -> Scheduler {
    let mut scheduler = Scheduler::new(db.clone()).expect("the suite's schedules are valid");
    let outcomes = scheduler.pass();
    let names: Vec<&str> = outcomes.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["suite.audit", "suite.hourly_export", "suite.quarter_hourly", "suite.report.nightly"]);
    assert!(outcomes.iter().all(|(_, o)| *o == ScheduleOutcome::Started), "{outcomes:?}");
    scheduler
}

fn each_tick_is_queued_once_with_its_origin_and_eta(t: TestDb) {
    let (db, clock) = at(&t, utc(2099, 3, 1, 0, 0, 30));
    let list = t.partners(&["ada", "bob"]);
    let mut scheduler = started(&db);
    assert_eq!(scheduler.pass(), [], "no tick passed");
    assert_eq!(db.jobs(&ListParams::default()).expect("list").len(), 0, "a new schedule does not catch up");

    clock.set(utc(2099, 3, 1, 1, 0, 5));
    assert_eq!(
        scheduler.pass(),
        [
            ("suite.audit", queued(&[utc(2099, 3, 1, 0, 30, 0)])),
            ("suite.hourly_export", queued(&[utc(2099, 3, 1, 1, 0, 0)])),
            ("suite.quarter_hourly", queued(&[utc(2099, 3, 1, 1, 0, 0)])),
        ]
    );
    let jobs = db.jobs(&ListParams::default().origin(HOURLY)).expect("list");
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.origin.as_deref(), Some(HOURLY));
    assert_eq!(job.func, "res.partner.export");
    assert_eq!(job.eta, Some(utc(2099, 3, 1, 1, 0, 0)), "due at its tick");
    assert_eq!(job.record_ids, list.iter().map(|p| p.id).collect::<Vec<_>>());
    // Another worker's pass (a scheduler that remembers nothing) finds every tick dealt with.
    assert_eq!(Scheduler::new(db.clone()).expect("schedules").pass(), []);
    assert_eq!(scheduler.pass(), []);

    let ran =
        Worker::new(db.clone(), WorkerConfig::default()).expect("worker").run_until_idle().expect("runs");
    assert_eq!(ran, 3);
    assert_eq!(db.job(&job.uuid).expect("job").state, JobState::Done);
    let ada = t.partner(list[0].id).expect("ada");
    assert_eq!((ada.exports, ada.note.as_str()), (1, "2099-03-01T01:00:00+00:00::-"));
    let views = ScheduleView::all(&db).expect("views");
    let hourly = views.iter().find(|v| v.name == "suite.hourly_export").expect("listed");
    assert_eq!(hourly.last_tick, Some(utc(2099, 3, 1, 1, 0, 0)));
    assert_eq!(hourly.next_tick, Some(utc(2099, 3, 1, 2, 0, 0)));
}

fn missed_ticks_follow_catch_up(t: TestDb) {
    let (db, clock) = at(&t, utc(2099, 3, 1, 0, 0, 30));
    let mut scheduler = started(&db);
    // Three and a half days without a worker.
    clock.set(utc(2099, 3, 4, 12, 5, 30));
    let nights = [
        utc(2099, 3, 1, 2, 0, 0),
        utc(2099, 3, 2, 2, 0, 0),
        utc(2099, 3, 3, 2, 0, 0),
        utc(2099, 3, 4, 2, 0, 0),
    ];
    assert_eq!(
        scheduler.pass(),
        [
            // last (the default): the latest missed tick only.
            ("suite.audit", queued(&[utc(2099, 3, 4, 11, 30, 0)])),
            ("suite.hourly_export", queued(&[utc(2099, 3, 4, 12, 0, 0)])),
            // none: the 12:00 tick is five minutes late, so it is dropped too.
            ("suite.quarter_hourly", ScheduleOutcome::Skipped(vec![utc(2099, 3, 4, 12, 0, 0)])),
            // all: every night, 03:00 in Paris.
            ("suite.report.nightly", queued(&nights)),
        ]
    );
    assert_eq!(etas(&db, NIGHTLY), nights);
    assert_eq!(etas(&db, HOURLY), [utc(2099, 3, 4, 12, 0, 0)]);
    assert!(etas(&db, QUARTER).is_empty());
    // Over the change to summer time (the night of 29 March 2099 in Paris), 03:00 comes at
    // 01:00 UTC: one job per night still.
    clock.set(utc(2099, 4, 2, 12, 0, 0));
    scheduler.pass();
    let all = etas(&db, NIGHTLY);
    assert_eq!(all.len(), 33, "1 March to 2 April");
    assert_eq!(all[28], utc(2099, 3, 29, 1, 0, 0));
    assert_eq!(all[27], utc(2099, 3, 28, 2, 0, 0));
    assert_eq!(all.last(), Some(&utc(2099, 4, 2, 1, 0, 0)));
}

fn a_tick_is_skipped_while_an_earlier_job_is_unfinished(t: TestDb) {
    let (db, clock) = at(&t, utc(2099, 3, 1, 0, 0, 30));
    t.partners(&["ada"]);
    let mut scheduler = started(&db);
    clock.set(utc(2099, 3, 1, 1, 0, 5));
    scheduler.pass();
    clock.set(utc(2099, 3, 1, 2, 0, 5));
    let outcomes = scheduler.pass();
    let hourly = outcomes.iter().find(|(n, _)| *n == "suite.hourly_export").map(|(_, o)| o.clone());
    assert_eq!(
        hourly,
        Some(ScheduleOutcome::Skipped(vec![utc(2099, 3, 1, 2, 0, 0)])),
        "01:00's export is pending"
    );
    assert_eq!(etas(&db, HOURLY), [utc(2099, 3, 1, 1, 0, 0)]);

    Worker::new(db.clone(), WorkerConfig::default()).expect("worker").run_until_idle().expect("runs");
    clock.set(utc(2099, 3, 1, 3, 0, 5));
    let outcomes = scheduler.pass();
    assert!(outcomes.contains(&("suite.hourly_export", queued(&[utc(2099, 3, 1, 3, 0, 0)]))), "{outcomes:?}");
    assert_eq!(etas(&db, HOURLY), [utc(2099, 3, 1, 1, 0, 0), utc(2099, 3, 1, 3, 0, 0)]);
}

fn a_failing_schedule_keeps_its_tick_and_tries_again(t: TestDb) {
    let start = utc(2099, 3, 1, 0, 0, 30);
    let (db, clock) = at(&t, start);
    let refusing = t.partners(&["refuse"]);
    let mut scheduler = started(&db);
    clock.set(utc(2099, 3, 1, 0, 30, 5));
    assert_eq!(
        scheduler.pass(),
        [("suite.quarter_hourly", queued(&[utc(2099, 3, 1, 0, 30, 0)]))],
        "the audit failed, the others went on"
    );
    let audit =
        |db: &Database| ScheduleView::all(db).expect("views").into_iter().find(|v| v.name == "suite.audit");
    assert_eq!(audit(&db).expect("listed").last_tick, Some(start), "its tick was rolled back");
    assert!(etas(&db, AUDIT).is_empty());

    // Its code panics now: the same, and the scheduler goes on.
    diesel::update(partners::table.find(refusing[0].id))
        .set(partners::name.eq("panic"))
        .execute(&mut *db.conn().expect("connection"))
        .expect("renamed");
    assert_eq!(scheduler.pass(), [], "tried again only after a pause");
    clock.advance(chrono::TimeDelta::seconds(10));
    assert_eq!(scheduler.pass(), []);
    assert_eq!(audit(&db).expect("listed").last_tick, Some(start), "rolled back again");

    diesel::delete(partners::table.find(refusing[0].id))
        .execute(&mut *db.conn().expect("connection"))
        .expect("deleted");
    assert_eq!(scheduler.pass(), [], "tried again only after a pause");
    clock.advance(chrono::TimeDelta::seconds(10));
    assert_eq!(scheduler.pass(), [("suite.audit", queued(&[utc(2099, 3, 1, 0, 30, 0)]))]);
    assert_eq!(etas(&db, AUDIT), [utc(2099, 3, 1, 0, 30, 0)]);
}

fn concurrent_passes_queue_each_tick_once(t: TestDb) {
    let clock = MockClock::new(utc(2099, 3, 1, 0, 0, 30));
    let hosts: Vec<Database> =
        (0..8).map(|_| t.reopen(|b| b.clock(Arc::new(clock.clone())).pool_size(2))).collect();
    started(&hosts[0]);
    clock.set(utc(2099, 3, 3, 12, 0, 5));
    let barrier = Barrier::new(hosts.len());
    let outcomes: Vec<Vec<(&str, ScheduleOutcome)>> = std::thread::scope(|s| {
        let passes: Vec<_> = hosts
            .iter()
            .map(|db| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut scheduler = Scheduler::new(db.clone()).expect("schedules");
                    barrier.wait();
                    scheduler.pass()
                })
            })
            .collect();
        passes.into_iter().map(|p| p.join().expect("no panic")).collect()
    });
    let queued_by: Vec<usize> = outcomes.iter().map(Vec::len).collect();
    assert_eq!(queued_by.iter().sum::<usize>(), 4, "each schedule once, whoever did it: {outcomes:?}");
    let db = &hosts[0];
    assert_eq!(
        etas(db, NIGHTLY),
        [utc(2099, 3, 1, 2, 0, 0), utc(2099, 3, 2, 2, 0, 0), utc(2099, 3, 3, 2, 0, 0)]
    );
    assert_eq!(etas(db, HOURLY), [utc(2099, 3, 3, 12, 0, 0)]);
    assert_eq!(etas(db, QUARTER), [utc(2099, 3, 3, 12, 0, 0)]);
    assert_eq!(etas(db, AUDIT), [utc(2099, 3, 3, 11, 30, 0)]);
}

fn a_worker_ticks_unless_told_not_to(t: TestDb) {
    let (db, clock) = at(&t, utc(2099, 3, 1, 0, 0, 30));
    let list = t.partners(&["ada"]);
    let recorded = |db: &Database| {
        ScheduleView::all(db).expect("views").iter().filter(|v| v.last_tick.is_some()).count()
    };

    // Told not to: it runs jobs, and never touches the schedules.
    let quiet = Worker::new(db.clone(), WorkerConfig::default().schedules(false)).expect("worker");
    let id =
        db.transaction(Context::new(), |_| Partner::queue().export(&list, "crm".into())).expect("q").uuid();
    while_running(&quiet, || {
        assert!(wait_for(Duration::from_secs(20), || db.job(&id).is_ok_and(|j| j.state == JobState::Done)));
    });
    assert_eq!(recorded(&db), 0);

    let worker = Worker::new(db.clone(), WorkerConfig::default()).expect("worker");
    while_running(&worker, || {
        assert!(wait_for(Duration::from_secs(20), || recorded(&db) == 4), "every schedule started");
        clock.set(utc(2099, 3, 1, 1, 0, 5));
        assert!(
            wait_for(Duration::from_secs(20), || {
                let jobs = db.jobs(&ListParams::default().origin(HOURLY)).expect("list");
                jobs.len() == 1 && jobs[0].state == JobState::Done
            }),
            "the 01:00 export was queued and ran"
        );
    });
    assert_eq!(t.partner(list[0].id).expect("ada").exports, 2);
}

fn the_command_line_lists_schedules_and_their_jobs(t: TestDb) {
    let (db, clock) = at(&t, utc(2099, 3, 1, 0, 0, 30));
    let mut scheduler = started(&db);
    clock.set(utc(2099, 3, 1, 1, 0, 5));
    scheduler.pass();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chaos"))
            .args(["cli", "--database-url", &t.url])
            .args(args)
            .env("QUEUE_LOG", "error")
            .output()
            .expect("the binary runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let list: serde_json::Value = serde_json::from_str(&cli(&["schedules", "--json"])).expect("JSON");
    let names: Vec<&str> =
        list.as_array().expect("a list").iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["suite.audit", "suite.hourly_export", "suite.quarter_hourly", "suite.report.nightly"]);
    let nightly = &list[3];
    assert_eq!(nightly["cron"], "0 0 3 * * * 2099");
    assert_eq!(nightly["time_zone"], "Europe/Paris");
    assert_eq!(nightly["catch_up"], "all");
    assert_eq!(nightly["function"], "suite.report.nightly");
    assert_eq!(nightly["last_tick"], "2099-03-01T00:00:30+00:00");
    assert_eq!(nightly["next_tick"], "2099-03-01T02:00:00+00:00");
    let hourly = &list[1];
    assert_eq!((hourly["skip_if_unfinished"].as_bool(), hourly["function"].as_str()), (Some(true), None));
    assert_eq!(hourly["last_job"]["state"], "pending");
    assert_eq!(hourly["last_job"]["eta"], "2099-03-01T01:00:00+00:00");

    let text = cli(&["schedules"]);
    assert!(text.contains("suite.report.nightly") && text.contains("Europe/Paris"), "{text}");
    let jobs: serde_json::Value =
        serde_json::from_str(&cli(&["jobs", "list", "--origin", HOURLY, "--json"])).expect("JSON");
    let jobs = jobs.as_array().expect("a list");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["origin"], HOURLY);
    assert_eq!(jobs[0]["function"], "res.partner.export");
}

/// Start a `ticker` worker process on `url`.
fn ticker(url: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_ticker"))
        .args(["--database-url", url, "run", "--channels", "root:2"])
        .env("QUEUE_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the ticker starts")
}

/// Worker processes, killed when dropped (a failed assertion leaves none running).
struct Tickers(Vec<std::process::Child>);

impl Drop for Tickers {
    fn drop(&mut self) {
        for worker in &mut self.0 {
            let _ = worker.kill();
            let _ = worker.wait();
        }
    }
}

fn worker_processes_share_the_ticks(t: TestDb) {
    const EVERY_SECOND: &str = "schedule:ticker.every_second";
    const EVERY_OTHER: &str = "schedule:ticker.partner.every_other_second";
    let mut tickers = Tickers((0..3).map(|_| ticker(&t.url)).collect());
    let workers = &mut tickers.0;
    let ticks = |n: usize| wait_for(Duration::from_secs(60), || etas(&t.db, EVERY_SECOND).len() >= n);
    let stopped = ticks(3);
    if stopped {
        // Killed, maybe in the middle of a pass, then started again.
        workers[0].kill().expect("killed");
        workers[0].wait().expect("reaped");
        workers[0] = ticker(&t.url);
    }
    let enough = stopped && ticks(8);
    for worker in workers.iter() {
        let _ = std::process::Command::new("kill").args(["-TERM", &worker.id().to_string()]).status();
    }
    for worker in workers.iter_mut() {
        let status = worker.wait().expect("reaped");
        assert!(status.success(), "a ticker stopped with {status}");
    }
    assert!(enough, "the tickers queued {} tick(s)", etas(&t.db, EVERY_SECOND).len());

    let seconds = etas(&t.db, EVERY_SECOND);
    for pair in seconds.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            chrono::TimeDelta::seconds(1),
            "every tick once, none missed: {seconds:?}"
        );
    }
    let others = etas(&t.db, EVERY_OTHER);
    assert!(others.len() >= 3, "{others:?}");
    for pair in others.windows(2) {
        assert_eq!(pair[1] - pair[0], chrono::TimeDelta::seconds(2), "{others:?}");
    }
    // What the stopped workers left, one more runs.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ticker"))
        .args(["--database-url", &t.url, "run", "--until-idle", "--rescue-grace-ms", "0"])
        .env("QUEUE_LOG", "error")
        .output()
        .expect("the ticker runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for origin in [EVERY_SECOND, EVERY_OTHER] {
        let jobs = t.db.jobs(&ListParams::default().origin(origin).limit(1000)).expect("list");
        assert!(
            jobs.iter().all(|j| j.state == JobState::Done),
            "{:?}",
            jobs.iter().map(|j| j.state).collect::<Vec<_>>()
        );
    }
}
