use diesel::prelude::*;
use queue_diesel::prelude::*;

diesel::table! { partners (code) { code -> Text } }

#[derive(Queryable, Selectable, Model)]
#[diesel(table_name = partners)]
#[queue(model = "res.partner", mode = "fast")]
pub struct Partner {
    pub code: String,
}

fn main() {}
