//! The user and context captured when a job is queued, and restored when it runs.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Context key that makes queued calls run synchronously at the call (tests, debugging).
pub const QUEUE_NO_DELAY: &str = "queue_no_delay";
/// Odoo's spelling of [`QUEUE_NO_DELAY`], accepted too.
pub const QUEUE_NO_DELAY_ODOO: &str = "test_queue_job_no_delay";
/// Context key naming the channel of the jobs queued under it (Tryton's `queue_name`).
pub const QUEUE_NAME: &str = "queue_name";
/// Context key delaying the jobs queued under it (Tryton's `queue_scheduled_at`).
pub const QUEUE_SCHEDULED_AT: &str = "queue_scheduled_at";
/// Context key giving a deadline used in ordering (Tryton's `queue_expected_at`).
pub const QUEUE_EXPECTED_AT: &str = "queue_expected_at";
/// Context key splitting the records of a call into batches (Tryton's `queue_batch`).
pub const QUEUE_BATCH: &str = "queue_batch";
/// The keys that steer a queued call and are not stored with its job.
pub const QUEUE_KEYS: [&str; 4] = [QUEUE_NAME, QUEUE_SCHEDULED_AT, QUEUE_EXPECTED_AT, QUEUE_BATCH];

/// Who queued a job and with which context values (language, company, flags, …).
///
/// A job runs with the same context it was queued with, like Tryton's `Transaction().context`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Context {
    user_id: Option<i64>,
    values: Map<String, Value>,
}

impl Context {
    /// An empty context with no user (a system job).
    pub fn new() -> Self {
        Context::default()
    }

    /// A context for the user `user_id`.
    pub fn user(user_id: i64) -> Self {
        Context { user_id: Some(user_id), values: Map::new() }
    }

    /// The same context with `key` set to `value`.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.values.insert(key.into(), value.into());
        self
    }

    /// Rebuild a context from its stored parts.
    pub fn from_parts(user_id: Option<i64>, values: Map<String, Value>) -> Self {
        Context { user_id, values }
    }

    /// Decode the stored JSON object of a context.
    pub fn from_json(user_id: Option<i64>, json: &str) -> Result<Self, serde_json::Error> {
        let values = if json.trim().is_empty() { Map::new() } else { serde_json::from_str(json)? };
        Ok(Context { user_id, values })
    }

    /// Encode the values (not the user, which has its own column) as a JSON object.
    pub fn values_json(&self) -> Result<String> {
        serde_json::to_string(&self.values)
            .map_err(|source| Error::Encode { what: "job context".into(), source })
    }

    /// The user the job runs for, if any.
    pub fn user_id(&self) -> Option<i64> {
        self.user_id
    }

    /// One value of the context.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// All values of the context.
    pub fn values(&self) -> &Map<String, Value> {
        &self.values
    }

    /// True when a flag key is set to a true value (`true`, a non-zero number, `"1"`, `"true"`).
    pub fn flag(&self, key: &str) -> bool {
        match self.values.get(key) {
            Some(Value::Bool(b)) => *b,
            Some(Value::Number(n)) => n.as_f64().is_some_and(|n| n != 0.0),
            Some(Value::String(s)) => is_truthy(s),
            _ => false,
        }
    }

    /// The context a job is stored with: this one without Tryton's queue keys ([`QUEUE_NAME`],
    /// [`QUEUE_SCHEDULED_AT`], [`QUEUE_EXPECTED_AT`], [`QUEUE_BATCH`]). They steer the call they
    /// are given to; kept, they would steer every job the job queues in turn (a job queued with
    /// `queue_scheduled_at: 3600` would delay its own children by another hour).
    pub fn for_job(&self) -> Context {
        let mut values = self.values.clone();
        for key in QUEUE_KEYS {
            values.remove(key);
        }
        Context { user_id: self.user_id, values }
    }

    /// True when this context asks queued calls to run at once ([`QUEUE_NO_DELAY`]).
    pub fn no_delay(&self) -> bool {
        self.flag(QUEUE_NO_DELAY) || self.flag(QUEUE_NO_DELAY_ODOO)
    }
}

/// How environment variables and context strings spell "yes".
pub fn is_truthy(text: &str) -> bool {
    matches!(text.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_json() {
        let ctx = Context::user(7).with("lang", "fr").with("company", 3);
        let json = ctx.values_json().expect("encodes");
        let back = Context::from_json(Some(7), &json).expect("decodes");
        assert_eq!(back, ctx);
        assert_eq!(back.get("lang"), Some(&Value::from("fr")));
    }

    #[test]
    fn no_delay_flag_accepts_common_spellings() {
        assert!(Context::new().with(QUEUE_NO_DELAY, true).no_delay());
        assert!(Context::new().with(QUEUE_NO_DELAY, 1).no_delay());
        assert!(Context::new().with(QUEUE_NO_DELAY, "yes").no_delay());
        assert!(Context::new().with(QUEUE_NO_DELAY_ODOO, true).no_delay());
        assert!(!Context::new().with(QUEUE_NO_DELAY, false).no_delay());
        assert!(!Context::new().with(QUEUE_NO_DELAY, "0").no_delay());
        assert!(!Context::new().no_delay());
    }

    #[test]
    fn queue_keys_are_not_stored_with_the_job() {
        let ctx = Context::user(3)
            .with("lang", "fr")
            .with(QUEUE_NAME, "mail")
            .with(QUEUE_SCHEDULED_AT, 3600)
            .with(QUEUE_EXPECTED_AT, 60)
            .with(QUEUE_BATCH, true);
        assert_eq!(ctx.for_job(), Context::user(3).with("lang", "fr"));
    }

    #[test]
    fn empty_stored_context_is_empty() {
        let ctx = Context::from_json(None, "").expect("empty is fine");
        assert!(ctx.values().is_empty());
        assert!(Context::from_json(None, "[1]").is_err());
    }
}
