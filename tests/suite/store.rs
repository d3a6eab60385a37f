//! The storage seam, method by method.

use chrono::{TimeDelta, Utc};
use queue_diesel::core::NewJob;
use queue_diesel::core::options::{FunctionDefaults, JobOptions};
use queue_diesel::store::{ChannelFilter, ClaimParams, Hold, ListParams, SettleParams, Store};
use queue_diesel::{Context, JobId, JobState};
use queue_tests::{TestDb, backend_tests, claim_any};

backend_tests!(
    claim_takes_due_jobs_by_priority_then_age,
    claim_respects_channel_filters,
    finish_is_fenced_by_the_lease,
    release_gives_jobs_back_without_counting_the_try,
    insert_many_and_count_by_state,
    every_field_survives_both_ways_of_inserting,
    an_insert_that_wakes_notifies_listeners_once_committed,
    a_head_claim_holds_a_channel_slot_for_its_transaction,
);

fn new_job(channel: &str, priority: i32, eta_secs: Option<i64>) -> NewJob {
    let now = Utc::now();
    let options = JobOptions {
        priority: Some(priority),
        channel: Some(channel.to_owned()),
        eta: eta_secs.map(|s| TimeDelta::seconds(s).into()),
        ..JobOptions::default()
    };
    NewJob {
        uuid: JobId::new(),
        func: "res.partner.export".into(),
        model: "res.partner".into(),
        record_ids: vec![1],
        args: serde_json::json!({"target": "x"}),
        context: Context::user(1),
        options: options.resolve(&FunctionDefaults::default(), "res.partner.export", now).expect("valid"),
        parents: vec![],
        created_at: now,
        origin: None,
    }
}

fn claim(conn: &mut queue_diesel::AnyConnection, limit: i64, channel: Option<&ChannelFilter>) -> Vec<String> {
    let rows = conn
        .job_claim(&ClaimParams {
            worker_id: "w1",
            lease_token: "lease-1",
            now: Utc::now(),
            limit,
            channel,
            uuids: None,
            funcs: Some(&["res.partner.export"]),
            ignore_eta: false,
            slots: &[],
        })
        .expect("claim");
    let mut jobs: Vec<_> = rows
        .iter()
        .map(|r| conn.job_get(&r.uuid.parse().expect("uuid")).expect("get").expect("exists"))
        .collect();
    jobs.sort_by_key(|j| (j.priority, j.id));
    jobs.into_iter().map(|j| j.channel).collect()
}

fn claim_takes_due_jobs_by_priority_then_age(t: TestDb) {
    let mut conn = t.db.conn().expect("conn");
    let jobs = vec![
        new_job("root.a", 10, None),
        new_job("root.b", 5, None),
        new_job("root.c", 10, None),
        new_job("root.later", 1, Some(3600)),
    ];
    conn.job_insert_many(&jobs, false).expect("insert");
    let first = claim_any(&mut conn, "lease-1", 1);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempts, 1);
    let job = conn.job_get(&first[0].uuid.parse().expect("uuid")).expect("get").expect("exists");
    assert_eq!(job.channel, "root.b", "lowest priority number first");
    assert_eq!(job.state, JobState::Started);
    assert_eq!(job.worker_id.as_deref(), Some("w1"));
    assert_eq!(claim(&mut conn, 10, None), vec!["root.a", "root.c"], "then by age; the future eta stays");
    assert!(claim(&mut conn, 10, None).is_empty());
}

fn claim_respects_channel_filters(t: TestDb) {
    let mut conn = t.db.conn().expect("conn");
    let channels = ["root", "root.export", "root.export.eu", "root.export_x", "root.mail", "root.exportable"];
    let jobs: Vec<NewJob> = channels.iter().map(|c| new_job(c, 10, None)).collect();
    conn.job_insert_many(&jobs, false).expect("insert");
    let export = ChannelFilter { node: "root.export".into(), excluded: vec![] };
    assert_eq!(
        claim(&mut conn, 10, Some(&export)),
        vec!["root.export", "root.export.eu"],
        "no prefix look-alikes"
    );
    let root = ChannelFilter { node: "root".into(), excluded: vec!["root.mail".into()] };
    assert_eq!(claim(&mut conn, 10, Some(&root)), vec!["root", "root.export_x", "root.exportable"]);
}

fn finish_is_fenced_by_the_lease(t: TestDb) {
    let mut conn = t.db.conn().expect("conn");
    conn.job_insert_many(&[new_job("root", 10, None)], false).expect("insert");
    let rows = claim_any(&mut conn, "lease-1", 1);
    let settlement = queue_diesel::core::Settlement {
        state: JobState::Done,
        attempts: 1,
        interruptions: 0,
        retry_in: None,
        result: Some("ok".into()),
        exc: None,
        isolation: queue_diesel::core::Isolation::Shared,
    };
    let now = Utc::now();
    let finish = |lease: &'static str| SettleParams {
        id: rows[0].id,
        hold: Hold::Lease(lease),
        settlement: &settlement,
        worker_id: "w1",
        started: now,
        now,
    };
    assert!(!conn.job_settle(&finish("someone-else")).expect("finish"), "a stale lease cannot finish");
    assert!(conn.job_settle(&finish("lease-1")).expect("finish"));
    assert!(!conn.job_settle(&finish("lease-1")).expect("finish"), "and never twice");
    let job = conn.job_get(&rows[0].uuid.parse().expect("uuid")).expect("get").expect("exists");
    assert_eq!(job.state, JobState::Done);
    assert_eq!(job.result.as_deref(), Some("ok"));
}

fn release_gives_jobs_back_without_counting_the_try(t: TestDb) {
    let mut conn = t.db.conn().expect("conn");
    conn.job_insert_many(&[new_job("root", 10, None)], false).expect("insert");
    let rows = claim_any(&mut conn, "lease-1", 1);
    assert_eq!(conn.job_release(&[rows[0].id], "other").expect("release"), 0);
    assert_eq!(conn.job_release(&[rows[0].id], "lease-1").expect("release"), 1);
    let job = conn.job_get(&rows[0].uuid.parse().expect("uuid")).expect("get").expect("exists");
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.attempts, 0);
    assert_eq!(job.lease_token, None);
}

fn insert_many_and_count_by_state(t: TestDb) {
    let mut conn = t.db.conn().expect("conn");
    let jobs: Vec<NewJob> = (0..2500).map(|_| new_job("root", 10, None)).collect();
    conn.job_insert_many(&jobs, false).expect("insert in chunks");
    assert_eq!(claim(&mut conn, 500, None).len(), 500);
    assert_eq!(
        conn.job_count_by_state().expect("count"),
        vec![(JobState::Pending, 2000), (JobState::Started, 500)]
    );
    let listed = conn.job_list(&ListParams::default().state(JobState::Started).limit(10));
    assert_eq!(listed.expect("list").len(), 10);
}

/// A few jobs go in with one statement, many with PostgreSQL's `COPY` (its text format escapes
/// tabs, newlines and backslashes): either way each field reads back as it was given.
fn every_field_survives_both_ways_of_inserting(t: TestDb) {
    let mut conn = t.db.conn().expect("conn");
    let awkward = "tab\there, line\nbreak, back\\slash \\N, quote \" and é 🚀";
    let job = |i: usize| {
        let mut job = new_job("root.x", 7, Some(60));
        job.args = serde_json::json!({"text": awkward, "i": i});
        job.context = Context::user(42).with("lang", awkward);
        job.record_ids = vec![1, 2, 3];
        job.options.description = awkward.to_owned();
        job.options.identity_key = None;
        job.origin = Some(format!("schedule:{awkward}"));
        job
    };
    for count in [3, 600] {
        let mut jobs: Vec<NewJob> = (0..count).map(job).collect();
        if t.db.backend() == queue_diesel::Backend::Postgres {
            // A year COPY's text input and chrono spell differently.
            jobs[1].options.eta = chrono::DateTime::from_timestamp(253_402_300_800 + 86_400 * 400, 0);
        }
        conn.job_insert_many(&jobs, true).expect("insert");
        for new in [&jobs[0], &jobs[1], &jobs[count - 1]] {
            let stored = conn.job_get(&new.uuid).expect("get").expect("stored");
            assert_eq!(stored.args, new.args);
            assert_eq!(stored.context, new.context);
            assert_eq!(stored.description, awkward);
            assert_eq!(stored.origin, new.origin);
            assert_eq!(stored.record_ids, vec![1, 2, 3]);
            assert_eq!((stored.priority, stored.channel.as_str()), (7, "root.x"));
            assert_eq!(
                stored.eta.map(|e| e.timestamp_micros()),
                new.options.eta.map(|e| e.timestamp_micros())
            );
            assert_eq!(stored.state, JobState::Pending);
        }
    }
}

/// PostgreSQL: an insert asked to wake the workers notifies them at its commit (one statement
/// carries it, or a `NOTIFY` after a `COPY`), and only then; SQLite has nothing to check.
fn an_insert_that_wakes_notifies_listeners_once_committed(t: TestDb) {
    use diesel::Connection;
    if t.db.backend() != queue_diesel::Backend::Postgres {
        return;
    }
    let mut listener = diesel::PgConnection::establish(&t.url).expect("listener");
    diesel::RunQueryDsl::execute(diesel::sql_query("LISTEN queue_job"), &mut listener).expect("listen");
    let mut heard = || {
        let mut count = 0;
        // Notifications come in with the answer to a statement, a moment after the commit.
        queue_tests::wait_for(std::time::Duration::from_millis(500), || {
            diesel::RunQueryDsl::execute(diesel::sql_query("SELECT 1"), &mut listener).expect("select");
            count += listener.notifications_iter().filter(|n| n.is_ok()).count();
            count > 0
        });
        count
    };
    let mut conn = t.db.conn().expect("conn");
    for (count, wake) in [(1, true), (600, true), (1, false), (600, false)] {
        let jobs: Vec<NewJob> = (0..count).map(|_| new_job("root", 10, None)).collect();
        conn.batch("BEGIN").expect("begin");
        conn.job_insert_many(&jobs, wake).expect("insert");
        conn.batch("COMMIT").expect("commit");
        assert_eq!(heard(), usize::from(wake), "{count} job(s), wake: {wake}");
    }
}

/// The slots of channels shared by every worker: a batch's claim takes one of each channel's
/// capacity in its own statement and holds it until its transaction ends (PostgreSQL; SQLite's
/// single writer needs none and the claim ignores them).
fn a_head_claim_holds_a_channel_slot_for_its_transaction(t: TestDb) {
    let mut conn = t.db.conn().expect("conn");
    conn.job_insert_many(&[new_job("root.x", 10, None), new_job("root.x", 10, None)], false).expect("insert");
    let filter = ChannelFilter { node: "root".into(), excluded: vec![] };
    let one = [("root".to_owned(), 1), ("root.x".to_owned(), 5)];
    let two = [("root".to_owned(), 2), ("root.x".to_owned(), 5)];
    let params = |slots| ClaimParams {
        worker_id: "w1",
        lease_token: "",
        now: Utc::now(),
        limit: 1,
        channel: Some(&filter),
        uuids: None,
        funcs: None,
        ignore_eta: false,
        slots,
    };
    let postgres = t.db.backend() == queue_diesel::Backend::Postgres;
    let mut other = t.db.conn().expect("a second connection");
    let begin = if postgres { "BEGIN" } else { "BEGIN IMMEDIATE" };
    conn.batch(begin).expect("begin");
    conn.job_claim_head_prepare(&params(&one)).expect("prepare");
    if postgres {
        other.batch("BEGIN").expect("begin");
        assert_eq!(other.job_claim_head(&params(&one)).expect("claim").len(), 1, "preparing took no slot");
        other.batch("ROLLBACK").expect("rollback");
    }
    assert_eq!(conn.job_claim_head(&params(&one)).expect("claim").len(), 1);
    assert!(conn.channel_slots_hold(&one).expect("check"), "its own slots count as free");
    if postgres {
        other.batch("BEGIN").expect("begin");
        assert!(other.job_claim_head(&params(&one)).expect("claim").is_empty(), "root's one slot is taken");
        assert!(!other.channel_slots_hold(&one).expect("check"), "refused: not an empty channel");
        assert_eq!(
            other.job_claim_head(&params(&two)).expect("claim").len(),
            1,
            "root's second slot is free"
        );
        assert!(other.channel_slots_hold(&two).expect("check"), "the slots it holds count as free");
        other.batch("ROLLBACK").expect("rollback");
    }
    conn.batch("COMMIT").expect("commit");
    if postgres {
        other.batch("BEGIN").expect("begin");
        assert_eq!(
            other.job_claim_head(&params(&one)).expect("claim").len(),
            1,
            "freed with the transaction"
        );
        other.batch("ROLLBACK").expect("rollback");
    }
}
