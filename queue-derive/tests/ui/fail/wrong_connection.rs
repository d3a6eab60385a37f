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

pub struct MyConnection;

#[queueable]
impl Partner {
    pub fn export(records: Vec<Partner>, env: &Env<MyConnection>) -> JobResult {
        let _ = (records, env);
        Ok(())
    }
}

fn main() {}
