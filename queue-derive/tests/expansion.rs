//! What the macros accept: every parameter form and option, and the builder they generate.

use diesel::prelude::*;
use queue_diesel::prelude::*;

diesel::table! { partners (id) { id -> BigInt, name -> Text } }

#[derive(Debug, Queryable, Selectable, Model)]
#[diesel(table_name = partners)]
#[queue(model = "res.partner")]
pub struct Partner {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Target {
    pub system: String,
}

#[queueable]
impl Partner {
    /// Export partners.
    #[job(channel = "root.export", priority = 20, max_retries = 3, description = "Export", timeout = "1h30m")]
    pub fn export(records: Vec<Partner>, env: &Env, target: Target, dry_run: bool) -> JobResult {
        let _ = (records, env.user_id(), target.system, dry_run);
        Ok(())
    }

    /// No env, no arguments, a message as result.
    pub fn touch(records: Vec<Self>) -> JobResult<String> {
        Ok(format!("{} records", records.len()))
    }

    /// The env may come after the arguments, and plain `()` is a fine return type.
    #[job]
    pub fn later(_records: Vec<Partner>, _n: u32, _env: &Env) {}
}

#[test]
fn the_builder_takes_every_option() {
    let builder = Partner::queue().priority(1).eta(std::time::Duration::from_secs(60)).max_retries(0);
    let options = builder.channel("root.x").description("d").identity_key("k").options().clone();
    assert_eq!(options.priority, Some(1));
    assert_eq!(options.max_retries, Some(0));
    assert_eq!(options.channel.as_deref(), Some("root.x"));
}
