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
    #[job(retries = 3, channel = "export")]
    pub fn export(records: Vec<Partner>) -> JobResult {
        let _ = records;
        Ok(())
    }

    #[job(max_retries = -1, retry_pattern = "1:10,0:5", timeout = "5 minutes")]
    pub fn import(records: Vec<Partner>) -> JobResult {
        let _ = records;
        Ok(())
    }
}

fn main() {}
