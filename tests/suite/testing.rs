//! The test helpers applications use: trap, assert, perform.

use queue_diesel::prelude::*;
use queue_diesel::store::ListParams;
use queue_diesel::testing::JobsTrap;
use queue_tests::{Partner, TestDb, backend_tests};
use serde_json::json;

backend_tests!(
    trapped_jobs_are_not_stored_and_can_be_asserted_and_performed,
    trap_failures_say_what_was_found
);

fn trapped_jobs_are_not_stored_and_can_be_asserted_and_performed(t: TestDb) {
    let list = t.partners(&["ada", "bob"]);
    let trap = JobsTrap::start();
    t.db.transaction(Context::user(8).with("lang", "it"), |_| {
        Partner::queue().priority(3).export(&list, "crm".into())?;
        Partner::queue().fan_out(&list[..1], "fan".into())
    })
    .expect("queued");
    assert!(t.db.jobs(&ListParams::default()).expect("list").is_empty(), "nothing stored");
    trap.assert_count(2);
    let job = trap.assert_enqueued("res.partner.export", json!({"target": "crm"}));
    assert_eq!(job.record_ids, vec![list[0].id, list[1].id]);
    assert_eq!(job.options.priority, 3);
    assert_eq!(job.options.channel, "root.export");
    assert_eq!(job.context.user_id(), Some(8));

    let performed = trap.perform(&t.db).expect("performed");
    assert_eq!(performed.len(), 2);
    assert!(performed.iter().all(|p| p.outcome.is_ok()), "{performed:?}");
    assert_eq!(t.partner(list[0].id).expect("row").note, "crm:8:it", "context restored");
    // The fan-out queued one more export: caught by the trap, performed on demand.
    trap.assert_count(1);
    trap.assert_enqueued("res.partner.export", json!({"target": "fan"}));
    trap.perform(&t.db).expect("performed");
    assert_eq!(t.partner(list[0].id).expect("row").exports, 2);
    drop(trap);
    t.db.transaction(Context::new(), |_| Partner::queue().export(&list, "x".into())).expect("queued");
    assert_eq!(
        t.db.jobs(&ListParams::default()).expect("list").len(),
        1,
        "stored again once the trap is gone"
    );
}

fn trap_failures_say_what_was_found(t: TestDb) {
    let list = t.partners(&["ada"]);
    let trap = JobsTrap::start();
    t.db.transaction(Context::new(), |_| Partner::queue().export(&list, "crm".into())).expect("queued");
    let failure = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        trap.assert_enqueued("res.partner.export", json!({"target": "erp"}));
    }))
    .expect_err("no such job");
    let message = failure.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message
            .starts_with(r#"expected a job of res.partner.export with arguments {"target":"erp"}, found:"#),
        "{message}"
    );
    assert!(
        message.contains(r#"res.partner.export records ["#) && message.contains(r#"args {"target":"crm"}"#),
        "{message}"
    );
    let performed = {
        let trap2 = JobsTrap::start();
        t.db.transaction(Context::new(), |_| Partner::queue().write_then_fail(&list, "no".into()))
            .expect("queued");
        trap2.perform(&t.db).expect("performed")
    };
    assert_eq!(performed[0].outcome.as_ref().expect_err("failed").to_string(), "ExportError: no");
    assert_eq!(t.partner(list[0].id).expect("row").note, "", "a failed performance rolls back");
    trap.assert_count(1);
}
