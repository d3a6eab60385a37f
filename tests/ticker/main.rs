//! A worker binary whose schedules tick every second and every other second, each tick caught
//! up if missed: the suite runs several of them on one database, kills one and starts it again,
//! and checks that every tick was queued exactly once.
//!
//! ```text
//! ticker --database-url URL run --channels root:2
//! ```

use std::process::ExitCode;

use diesel::prelude::*;
use queue_diesel::prelude::*;
use queue_diesel::schedule::{CatchUp, Schedule};
use queue_tests::{Partner, partners};

/// The `partners` rows, as the ticker's model.
#[derive(Debug, Clone, Queryable, Selectable, Model)]
#[diesel(table_name = partners)]
#[queue(model = "ticker.partner")]
pub struct Ticked {
    /// Row id.
    pub id: i64,
}

#[queueable]
impl Ticked {
    /// Every other second.
    #[job(cron = "*/2 * * * * *", catch_up = "all")]
    pub fn every_other_second(_records: Vec<Ticked>) -> JobResult {
        Ok(())
    }
}

queue_diesel::schedule!(
    Schedule::new("ticker.every_second", "* * * * * *", |_env, tick| {
        Partner::queue().ordered(NoRecords, "ticker".into(), tick.at().to_rfc3339())?;
        Ok(())
    })
    .catch_up(CatchUp::All)
);

fn main() -> ExitCode {
    queue_diesel::cli::main()
}
