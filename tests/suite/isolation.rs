//! Every job runs once per try, with its own verdict, whatever its neighbours in a batch do;
//! database conflicts blame nobody; one claim order for every path.

use std::time::Duration;

use chrono::TimeDelta;
use diesel::prelude::*;
use queue_diesel::prelude::*;
use queue_diesel::{Backend, JobId, JobState, MockClock, Shutdown, Worker, WorkerConfig};
use queue_tests::{
    Partner, StopOnDrop, TestDb, backend_tests, partners, raised, started_order, wait_for, while_running,
};

backend_tests!(
    no_job_runs_again_because_of_another,
    an_innocent_job_that_meets_a_deadlock_is_not_blamed,
    a_job_that_always_conflicts_still_ends,
    a_timeout_is_stored_while_the_job_is_held,
    an_idle_transaction_is_not_ended_under_a_job,
    a_job_that_ends_its_own_session_still_ends,
    a_hanging_job_frees_its_batch_and_runs_alone,
    one_claim_order_for_every_path,
    a_worker_that_stops_when_idle_runs_every_path,
);

/// A file for the "mails" of `send_reminder`, removed when dropped.
struct Mailbox(String);

impl Mailbox {
    fn new() -> Mailbox {
        let name = format!("queue-mails-{}.log", JobId::new());
        Mailbox(std::env::temp_dir().join(name).to_string_lossy().into_owned())
    }

    /// The lines sent: the job's uuid and its try number.
    fn lines(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(&self.0)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
            .collect()
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn worker(t: &TestDb, configure: impl FnOnce(&mut WorkerConfig)) -> Worker {
    let mut config = WorkerConfig::default().poll_interval(Duration::from_millis(50));
    configure(&mut config);
    Worker::new(t.db.clone(), config).expect("worker")
}

fn mock_db(t: &TestDb) -> (Database, MockClock) {
    let clock =
        MockClock::new(chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0).expect("now"));
    (t.reopen(|b| b.clock(std::sync::Arc::new(clock.clone()))), clock)
}

fn no_job_runs_again_because_of_another(t: TestDb) {
    let list = t.partners(&["r1", "r2", "r3", "r4", "r5", "r6", "r7", "other", "gone"]);
    let mail = Mailbox::new();
    let (reminders, others) =
        t.db.transaction(Context::new(), |_| {
            let remind =
                |i: usize| Partner::queue().send_reminder(&list[i], mail.0.clone()).map(|h| h.uuid());
            let other = &list[7];
            let reminders = vec![remind(0)?];
            let mut others = vec![Partner::queue().write_then_fail(other, "refused".into())?.uuid()];
            let mut reminders = reminders;
            reminders.push(remind(1)?);
            others.push(Partner::queue().explode(other)?.uuid());
            reminders.push(remind(2)?);
            others.push(Partner::queue().flaky(other, 3600)?.uuid());
            reminders.push(remind(3)?);
            others.push(Partner::queue().waits_for_data(other)?.uuid());
            reminders.push(remind(4)?);
            others.push(Partner::queue().give_up(other)?.uuid());
            reminders.push(remind(5)?);
            others.push(Partner::queue().export(&list[8], "x".into())?.uuid());
            reminders.push(remind(6)?);
            Ok::<_, queue_diesel::Error>((reminders, others))
        })
        .expect("queued");
    diesel::delete(partners::table.find(list[8].id))
        .execute(&mut *t.db.conn().expect("conn"))
        .expect("delete");
    worker(&t, |_| {}).run_until_idle().expect("runs");
    let sent = mail.lines();
    assert_eq!(sent.len(), reminders.len(), "each reminder sent exactly once: {sent:?}");
    for (i, uuid) in reminders.iter().enumerate() {
        assert!(
            sent.contains(&(uuid.to_string(), "1".to_owned())),
            "reminder {i} sent once, on its first try"
        );
        let job = t.db.job(uuid).expect("job");
        assert_eq!((job.state, job.attempts), (JobState::Done, 1), "reminder {i}");
        assert_eq!(t.partner(list[i].id).expect("partner").exports, 1, "reminder {i} wrote once");
    }
    let job = |i: usize| t.db.job(&others[i]).expect("job");
    assert_eq!((job(0).state, job(0).exc_name.as_deref()), (JobState::Failed, Some("ExportError")));
    assert_eq!(t.partner(list[7].id).expect("partner").note, "", "the failed job's write was rolled back");
    assert_eq!((job(1).state, job(1).exc_name.as_deref()), (JobState::Failed, Some("panic")));
    assert_eq!((job(2).state, job(2).attempts), (JobState::Pending, 1), "retried later");
    assert_eq!((job(3).state, job(3).attempts), (JobState::Pending, 0), "postponed");
    assert_eq!(job(4).state, JobState::Cancelled);
    assert_eq!(job(5).state, JobState::Done, "its records were deleted: nothing to do");
}

fn an_innocent_job_that_meets_a_deadlock_is_not_blamed(t: TestDb) {
    if t.db.backend() != Backend::Postgres {
        return; // SQLite has one writer: no deadlock; its conflicts are in the next test.
    }
    let list = t.partners(&["a", "b", "before", "after"]);
    let mail = Mailbox::new();
    let flag = format!("deadlock-{}", JobId::new());
    let ids: Vec<JobId> =
        t.db.transaction(Context::new(), |_| {
            Ok::<_, queue_diesel::Error>(vec![
                Partner::queue().send_reminder(&list[2], mail.0.clone())?.uuid(),
                Partner::queue().lock_both(&list[0], list[1].id, flag.clone())?.uuid(),
                Partner::queue().send_reminder(&list[3], mail.0.clone())?.uuid(),
            ])
        })
        .expect("queued");
    let mut other = PgConnection::establish(&t.url).expect("connect");
    let worker = worker(&t, |_| {});
    while_running(&worker, || {
        other
            .transaction::<_, diesel::result::Error, _>(|c| {
                diesel::update(partners::table.find(list[1].id))
                    .set(partners::note.eq("other"))
                    .execute(c)?;
                assert!(wait_for(Duration::from_secs(10), || raised(&flag)), "the job holds its first row");
                // The job waits for `b` first: the deadlock check runs in its session, which is
                // the one PostgreSQL ends.
                std::thread::sleep(Duration::from_millis(300));
                diesel::update(partners::table.find(list[0].id))
                    .set(partners::note.eq("other"))
                    .execute(c)?;
                Ok(())
            })
            .expect("the other transaction commits");
        let done = || ids.iter().all(|id| t.db.job(id).is_ok_and(|j| j.state == JobState::Done));
        assert!(wait_for(Duration::from_secs(20), done), "every job done");
    });
    let job = t.db.job(&ids[1]).expect("job");
    assert_eq!(
        (job.state, job.attempts, job.interruptions),
        (JobState::Done, 1, 1),
        "the deadlock cost no try"
    );
    assert_eq!(job.isolation, queue_diesel::core::Isolation::Transaction, "it ran again alone");
    assert_eq!(t.partner(list[1].id).expect("partner").note, "second", "its second run wrote");
    assert_eq!(mail.lines().len(), 2, "its neighbours ran once each: {:?}", mail.lines());
}

fn a_job_that_always_conflicts_still_ends(t: TestDb) {
    let (db, clock) = mock_db(&t);
    let list = t.partners(&["held"]);
    let id = db
        .transaction(Context::new(), |_| Partner::queue().always_conflicts(NoRecords, list[0].id))
        .expect("queued")
        .uuid();
    // PostgreSQL: the row stays locked by another session for the whole test.
    let mut holder =
        (db.backend() == Backend::Postgres).then(|| PgConnection::establish(&t.url).expect("connect"));
    if let Some(c) = holder.as_mut() {
        diesel::sql_query("BEGIN").execute(c).expect("begin");
        diesel::sql_query(format!("SELECT id FROM partners WHERE id = {} FOR UPDATE", list[0].id))
            .execute(c)
            .expect("lock");
    }
    let worker = Worker::new(db.clone(), WorkerConfig::default()).expect("worker");
    let mut rounds = 0;
    while db.job(&id).expect("job").state == JobState::Pending && rounds < 20 {
        worker.run_until_idle().expect("runs");
        clock.advance(TimeDelta::minutes(2));
        rounds += 1;
    }
    let job = db.job(&id).expect("job");
    assert_eq!(job.state, JobState::Failed, "after {rounds} rounds");
    assert_eq!(job.exc_name.as_deref(), Some("MaxRetriesReached"));
    assert_eq!(job.attempts, 2, "tries counted only after the free interruptions");
    assert_eq!(job.interruptions, 5, "three free, then one per try");
    assert!(job.exc_message.unwrap_or_default().contains("interruption"));
}

fn a_timeout_is_stored_while_the_job_is_held(t: TestDb) {
    let list = t.partners(&["ada"]);
    let id =
        t.db.transaction(Context::new(), |_| Partner::queue().oversleeps(&list, 1500))
            .expect("queued")
            .uuid();
    let worker = worker(&t, |_| {});
    // Its grace only covers the moment between the claim and the run's first statement.
    let rescuer = queue_diesel::maintenance::Rescuer::new(t.db.clone(), Duration::from_millis(100));
    let settled = || t.db.job(&id).is_ok_and(|j| j.state.is_finished());
    while_running(&worker, || {
        // A rescuer that looks all the time: it must never take the job over from the worker
        // that is storing its timeout.
        while !settled() {
            rescuer.run_once().expect("rescue pass");
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let job = t.db.job(&id).expect("job");
    assert_eq!(
        (job.state, job.exc_name.as_deref(), job.attempts),
        (JobState::Failed, Some("TimeoutError"), 1)
    );
    assert_eq!(t.partner(list[0].id).expect("partner").note, "", "its write was rolled back");
}

fn an_idle_transaction_is_not_ended_under_a_job(t: TestDb) {
    if t.db.backend() == Backend::Postgres {
        let name = t.url.rsplit('/').next().expect("database name");
        diesel::sql_query(format!("ALTER DATABASE {name} SET idle_in_transaction_session_timeout = '200ms'"))
            .execute(&mut *t.db.conn().expect("conn"))
            .expect("set the server's timeout");
    }
    let db = t.reopen(|b| b);
    let list = t.partners(&["ada"]);
    let id = db.transaction(Context::new(), |_| Partner::queue().idles(&list, 600)).expect("queued").uuid();
    let worker = Worker::new(db.clone(), WorkerConfig::default()).expect("worker");
    worker.run_until_idle().expect("runs");
    let job = db.job(&id).expect("job");
    assert_eq!((job.state, job.attempts, job.interruptions), (JobState::Done, 1, 0));
    assert_eq!(t.partner(list[0].id).expect("partner").note, "idled");
}

fn a_job_that_ends_its_own_session_still_ends(t: TestDb) {
    if t.db.backend() != Backend::Postgres {
        return; // A SQLite connection has no session to end.
    }
    let (db, clock) = mock_db(&t);
    let id = db
        .transaction(Context::new(), |_| Partner::queue().ends_own_session(NoRecords))
        .expect("queued")
        .uuid();
    let worker = Worker::new(db.clone(), WorkerConfig::default()).expect("worker");
    let mut rounds = 0;
    while !db.job(&id).expect("job").state.is_finished() && rounds < 20 {
        worker.run_until_idle().expect("runs");
        clock.advance(TimeDelta::minutes(2));
        rounds += 1;
    }
    let job = db.job(&id).expect("job");
    assert_eq!(job.state, JobState::Failed, "after {rounds} rounds: a job cannot loop forever");
    assert_eq!(job.attempts, 2);
    assert!(job.interruptions > 3, "{} interruptions", job.interruptions);
}

fn a_hanging_job_frees_its_batch_and_runs_alone(t: TestDb) {
    let list = t.partners(&["r1", "hang", "r2", "r3", "app"]);
    let mail = Mailbox::new();
    let flag = format!("hang-{}", JobId::new());
    let (reminders, hung) =
        t.db.transaction(Context::new(), |_| {
            let r1 = Partner::queue().send_reminder(&list[0], mail.0.clone())?.uuid();
            let hung = Partner::queue().hangs_once(&list[1], 4000, flag.clone())?.uuid();
            let r2 = Partner::queue().send_reminder(&list[2], mail.0.clone())?.uuid();
            let r3 = Partner::queue().send_reminder(&list[3], mail.0.clone())?.uuid();
            Ok::<_, queue_diesel::Error>((vec![r1, r2, r3], hung))
        })
        .expect("queued");
    let worker = worker(&t, |c| {
        c.hang_limit = Duration::from_millis(500);
        c.channels = "root:2".parse().expect("channels");
    });
    let shutdown = Shutdown::new();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&shutdown);
        let run = s.spawn(|| worker.run(&shutdown));
        assert!(wait_for(Duration::from_secs(10), || raised(&flag)), "the job hangs");
        if t.db.backend() == Backend::Sqlite {
            // An application writer waits at most the hang limit, not the whole hang.
            t.db.transaction(Context::new(), |env| {
                diesel::update(partners::table.find(list[4].id))
                    .set(partners::note.eq("app"))
                    .execute(&mut *env.conn())
                    .map_err(queue_diesel::Error::from)
            })
            .expect("the application writes");
            assert!(raised(&flag), "the application wrote while the job still hung");
        }
        let neighbours_done =
            || reminders.iter().all(|id| t.db.job(id).is_ok_and(|j| j.state == JobState::Done));
        assert!(wait_for(Duration::from_secs(10), neighbours_done), "its neighbours ran elsewhere");
        assert!(raised(&flag), "while it still hung");
        let hung_done = || t.db.job(&hung).is_ok_and(|j| j.state == JobState::Done);
        assert!(wait_for(Duration::from_secs(10), hung_done), "then it ran alone");
        shutdown.trigger();
        run.join().expect("no panic").expect("clean stop");
    });
    let job = t.db.job(&hung).expect("job");
    assert_eq!(
        (job.attempts, job.isolation, job.exc_name.as_deref()),
        (2, queue_diesel::core::Isolation::Transaction, None),
        "the hang counted a try; it runs alone from then on"
    );
    let sent = mail.lines();
    for id in &reminders {
        let runs = sent.iter().filter(|(uuid, _)| *uuid == id.to_string()).count();
        assert!((1..=2).contains(&runs), "a neighbour runs at most once more: {runs}");
        assert_eq!(t.db.job(id).expect("job").attempts, 1);
    }
}

fn one_claim_order_for_every_path(t: TestDb) {
    let key = format!("order-{}", JobId::new());
    let worker = worker(&t, |c| c.channels = "root:1".parse().expect("channels"));
    let all_done = |ids: &[JobId]| ids.iter().all(|id| t.db.job(id).is_ok_and(|j| j.state == JobState::Done));
    while_running(&worker, || {
        // A first job of `ordered_slow` runs over a second: from then on its function runs alone.
        let warm =
            t.db.transaction(Context::new(), |_| {
                Partner::queue().ordered_slow(NoRecords, key.clone(), "warm".into(), 1100)
            })
            .expect("queued")
            .uuid();
        assert!(wait_for(Duration::from_secs(10), || all_done(&[warm])));
        let ids: Vec<JobId> =
            t.db.transaction(Context::new(), |_| {
                let q = |p: i32| Partner::queue().priority(p);
                let k = || key.clone();
                Ok::<_, queue_diesel::Error>(vec![
                    q(6).ordered(NoRecords, k(), "p6".into())?.uuid(),
                    q(1).ordered_alone(NoRecords, k(), "a1".into())?.uuid(),
                    q(4).ordered_timed(NoRecords, k(), "t4".into())?.uuid(),
                    q(2).ordered(NoRecords, k(), "p2".into())?.uuid(),
                    q(5).ordered_slow(NoRecords, k(), "l5".into(), 0)?.uuid(),
                    q(3).ordered_alone(NoRecords, k(), "a3".into())?.uuid(),
                    q(7).ordered_timed(NoRecords, k(), "t7".into())?.uuid(),
                    q(8).ordered(NoRecords, k(), "p8".into())?.uuid(),
                ])
            })
            .expect("queued");
        assert!(wait_for(Duration::from_secs(20), || all_done(&ids)), "all done");
    });
    assert_eq!(started_order(&key), ["warm", "a1", "p2", "a3", "t4", "l5", "p6", "t7", "p8"]);
}

/// Jobs run alone and batches take turns on a channel of capacity 1: the slot a job run alone
/// leaves goes to the batch after it, and a worker that stops when idle stops only once all ran.
fn a_worker_that_stops_when_idle_runs_every_path(t: TestDb) {
    let key = format!("idle-{}", JobId::new());
    let ids: Vec<JobId> =
        t.db.transaction(Context::new(), |_| {
            let q = |p: i32| Partner::queue().priority(p);
            let k = || key.clone();
            Ok::<_, queue_diesel::Error>(vec![
                q(1).ordered_alone(NoRecords, k(), "a1".into())?.uuid(),
                q(2).ordered(NoRecords, k(), "p2".into())?.uuid(),
                q(3).ordered_alone(NoRecords, k(), "a3".into())?.uuid(),
                q(4).ordered(NoRecords, k(), "p4".into())?.uuid(),
            ])
        })
        .expect("queued");
    let worker = worker(&t, |c| c.channels = "root:1".parse().expect("channels"));
    assert_eq!(worker.run_until_idle().expect("ran"), 4);
    assert!(ids.iter().all(|id| t.db.job(id).is_ok_and(|j| j.state == JobState::Done)), "all done");
    assert_eq!(started_order(&key), ["a1", "p2", "a3", "p4"]);
}
