use diesel::prelude::*;
use queue_diesel::prelude::*;

diesel::table! { partners (id) { id -> BigInt, name -> Text } }

#[derive(Queryable, Selectable, Model)]
#[diesel(table_name = partners)]
#[queue(model = "res.partner")]
pub struct Partner {
    pub id: i64,
    pub name: String,
}

#[queueable]
impl Partner {
    #[job(cron = "every day at 3", catch_up = "some")]
    pub fn nightly(records: Vec<Partner>) -> JobResult {
        let _ = records;
        Ok(())
    }

    #[job(time_zone = "Europe/Paris", catch_up = "all", skip_if_unfinished)]
    pub fn no_pattern(records: Vec<Partner>) -> JobResult {
        let _ = records;
        Ok(())
    }

    #[job(cron = "0 3 * * *")]
    pub fn with_arguments(records: Vec<Partner>, target: String) -> JobResult {
        let _ = (records, target);
        Ok(())
    }
}

fn main() {}
