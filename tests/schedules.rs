//! The suite's periodic schedules. Their patterns are in the year 2099, so only a test's mock
//! clock ever reaches a tick: every other test's worker just records them as started.

use diesel::prelude::*;
use queue_diesel::prelude::*;
use queue_diesel::schedule::{CatchUp, Schedule, ScheduleResult, Tick};

use crate::models::{Partner, partners};

/// The same `partners` rows, seen as the reports model.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Model)]
#[diesel(table_name = partners)]
#[queue(model = "suite.report")]
pub struct Report {
    /// Row id.
    pub id: i64,
    /// Name.
    pub name: String,
}

#[queueable]
impl Report {
    /// Every day at 03:00 in Paris (02:00 UTC in winter), every missed day caught up.
    #[job(cron = "0 0 3 * * * 2099", time_zone = "Europe/Paris", catch_up = "all")]
    pub fn nightly(_records: Vec<Report>, env: &Env) -> JobResult<String> {
        let n: i64 = partners::table.count().get_result(&mut *env.conn())?;
        Ok(format!("{n} partners"))
    }
}

/// Every hour, the partners' export, never two at once; the tick is the export's target.
fn hourly_export(env: &Env, tick: &Tick) -> ScheduleResult {
    let list: Vec<Partner> =
        partners::table.select(Partner::as_select()).order(partners::id).load(&mut *env.conn())?;
    Partner::queue().export(&list, tick.at().to_rfc3339())?;
    Ok(())
}

queue_diesel::schedule!(
    Schedule::new("suite.hourly_export", "0 0 * * * * 2099", hourly_export).skip_if_unfinished()
);

queue_diesel::schedule!(
    Schedule::new("suite.quarter_hourly", "0 */15 * * * * 2099", |_env, tick| {
        Partner::queue().ordered(NoRecords, "quarter_hourly".into(), tick.at().to_rfc3339())?;
        Ok(())
    })
    .catch_up(CatchUp::None)
);

/// At half past each hour; refuses while a partner is named `refuse` (as a schedule whose code
/// meets an error would), and panics while one is named `panic`.
fn audit(env: &Env, _tick: &Tick) -> ScheduleResult {
    let names: Vec<String> = partners::table.select(partners::name).load(&mut *env.conn())?;
    if names.iter().any(|n| n == "refuse") {
        return Err("a partner refuses to be audited".into());
    }
    if names.iter().any(|n| n == "panic") {
        panic!("a partner made the audit panic");
    }
    Partner::queue().count_all(NoRecords)?;
    Ok(())
}

queue_diesel::schedule!(Schedule::new("suite.audit", "0 30 * * * * 2099", audit));
