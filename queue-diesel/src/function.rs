//! Job functions: the registry entry `#[queueable]` emits for each method, and what running one
//! needs (records re-loaded by id, arguments decoded by name, the return value turned into an
//! outcome).

use std::collections::HashMap;
use std::sync::OnceLock;

use queue_core::options::FunctionDefaults;
use queue_core::registry::Named;
use queue_core::{JobError, JobResult, Registry, RetryPattern};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::connection::JobConnection;
use crate::error::{Error, Result};
use crate::model::LoadRecords;
use crate::transaction::Env;

/// A queueable method, registered with `inventory` by the code `#[queueable]` generates.
#[derive(Debug)]
pub struct JobFunction {
    model: &'static str,
    method: &'static str,
    name: OnceLock<String>,
    /// Defaults from `#[job(...)]` and the doc line.
    pub defaults: FunctionDefaults,
    /// Re-load the records, decode the arguments and call the method.
    pub run: fn(&Env, &Invocation<'_>) -> JobResult<Option<String>>,
}

impl JobFunction {
    /// An entry for `model.method`.
    pub const fn new(
        model: &'static str,
        method: &'static str,
        defaults: FunctionDefaults,
        run: fn(&Env, &Invocation<'_>) -> JobResult<Option<String>>,
    ) -> Self {
        JobFunction { model, method, name: OnceLock::new(), defaults, run }
    }

    /// `"<model>.<method>"`: the stored function name.
    pub fn name(&self) -> &str {
        self.name.get_or_init(|| queue_core::job::function_name(self.model, self.method))
    }

    /// Model name.
    pub fn model(&self) -> &'static str {
        self.model
    }

    /// Method name.
    pub fn method(&self) -> &'static str {
        self.method
    }

    /// The function's retry pattern. A pattern that does not parse is refused when the registry
    /// is built, so this is `None` only when the function has none.
    pub fn retry_pattern(&self) -> Option<RetryPattern> {
        self.defaults.retry_pattern.and_then(|p| p.parse().ok())
    }

    /// The function's timeout (checked when the registry is built, like the pattern).
    pub fn timeout(&self) -> Option<std::time::Duration> {
        self.defaults.timeout.and_then(|t| queue_core::options::parse_duration(t).ok())
    }

    /// True when the function's jobs run alone, each in its own transaction under a lease:
    /// declared `#[job(isolated)]`, or given a timeout (only a job alone in its transaction can
    /// be cut off without taking other jobs down with it).
    pub fn isolated(&self) -> bool {
        self.defaults.isolated || self.defaults.timeout.is_some()
    }

    /// Why the function's declared settings are unusable, if they are.
    fn check(&self) -> Option<String> {
        if let Some(pattern) = self.defaults.retry_pattern
            && let Err(e) = pattern.parse::<RetryPattern>()
        {
            return Some(format!("job function {}: {e}", self.name()));
        }
        if let Some(timeout) = self.defaults.timeout
            && let Err(e) = queue_core::options::parse_duration(timeout)
        {
            return Some(format!("job function {}: timeout: {e}", self.name()));
        }
        None
    }
}

impl Named for JobFunction {
    fn name(&self) -> &str {
        JobFunction::name(self)
    }
}

/// The `inventory` entry of a job function: a reference to its static.
#[derive(Debug)]
pub struct Registration(pub &'static JobFunction);

inventory::collect!(Registration);

/// What a job function is called with.
#[derive(Debug, Clone, Copy)]
pub struct Invocation<'a> {
    /// Function name (for messages).
    pub func: &'a str,
    /// Ids of the records, in call order.
    pub record_ids: &'a [i64],
    /// Arguments, a JSON object keyed by parameter name.
    pub args: &'a Value,
}

/// The job functions linked into this binary.
///
/// Only the functions of crates the final binary links are here: a worker binary must name the
/// application's model crate (`use my_models as _;` is enough).
pub fn registry() -> Result<&'static Registry<JobFunction>> {
    static REGISTRY: OnceLock<Result<Registry<JobFunction>, String>> = OnceLock::new();
    REGISTRY
        .get_or_init(|| {
            let registry = Registry::build(inventory::iter::<Registration>.into_iter().map(|r| r.0))
                .map_err(|e| e.to_string())?;
            // The macro checks these at compile time; entries built by hand are checked here.
            match registry.names().into_iter().filter_map(|name| registry.get(name)?.check()).next() {
                Some(problem) => Err(problem),
                None => Ok(registry),
            }
        })
        .as_ref()
        .map_err(|message| Error::Registry(message.clone()))
}

/// The retry pattern of the function registered as `name`, if it is known and has one.
pub(crate) fn retry_pattern_of(name: &str) -> Option<RetryPattern> {
    registry().ok().and_then(|r| r.get(name)).and_then(JobFunction::retry_pattern)
}

/// Re-load the records of a job, in the order they were given. Deleted records are skipped;
/// when all of them were deleted the job has nothing to do.
pub fn load_records<M: LoadRecords<C>, C: JobConnection>(
    env: &Env<C>,
    inv: &Invocation<'_>,
) -> JobResult<Vec<M>> {
    if inv.record_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut records = M::load_by_ids(&mut *env.try_conn().map_err(JobError::from)?, inv.record_ids)?;
    let position: HashMap<i64, usize> = inv.record_ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    records.sort_by_key(|r| position.get(&r.record_id()).copied().unwrap_or(usize::MAX));
    if records.is_empty() {
        return Err(JobError::NothingToDo(format!(
            "all {} record(s) of {} were deleted",
            inv.record_ids.len(),
            M::MODEL_NAME
        )));
    }
    Ok(records)
}

/// The job's environment seen with the connection type its function's code works with; a
/// worker on another backend fails the job with a message naming both.
pub fn typed_env<'e, C: JobConnection>(env: &'e Env, inv: &Invocation<'_>) -> JobResult<&'e Env<C>> {
    env.with_type::<C>().ok_or_else(|| {
        JobError::failed(
            "ConnectionTypeError",
            format!(
                "{} works on a {}, but this worker's connection is {}",
                inv.func,
                C::NAME,
                env.backend().connection_type()
            ),
        )
    })
}

/// Decode the argument `name`; a missing or mistyped argument fails the job with a readable reason.
pub fn arg<T: DeserializeOwned>(inv: &Invocation<'_>, name: &str) -> JobResult<T> {
    let value = inv.args.get(name).cloned().unwrap_or(Value::Null);
    serde_json::from_value(value).map_err(|e| JobError::Failed {
        name: "ArgumentError".into(),
        message: format!("cannot decode argument `{name}` of {}: {e}", inv.func),
        info: format!("stored arguments: {}", inv.args),
        source: Some(Box::new(e)),
    })
}

/// Encode one argument at the call.
pub fn encode_arg<T: Serialize + ?Sized>(value: &T, func: &str, name: &str) -> Result<Value> {
    serde_json::to_value(value).map_err(|source| {
        Error::Core(queue_core::Error::Encode { what: format!("argument `{name}` of {func}"), source })
    })
}

/// What a job method may return: nothing, a message, or a `Result` of those.
pub trait JobReturn {
    /// The outcome: `Ok(result text)` or a verdict.
    fn into_outcome(self) -> JobResult<Option<String>>;
}

/// The success values a job method may return; the text is stored as the job's result.
pub trait JobOutput {
    /// Text for the `result` column, if any.
    fn into_result(self) -> Option<String>;
}

impl JobOutput for () {
    fn into_result(self) -> Option<String> {
        None
    }
}

impl JobOutput for String {
    fn into_result(self) -> Option<String> {
        Some(self)
    }
}

impl JobOutput for &str {
    fn into_result(self) -> Option<String> {
        Some(self.to_owned())
    }
}

impl JobOutput for Option<String> {
    fn into_result(self) -> Option<String> {
        self
    }
}

impl JobReturn for () {
    fn into_outcome(self) -> JobResult<Option<String>> {
        Ok(None)
    }
}

impl<T: JobOutput, E: Into<JobError>> JobReturn for Result<T, E> {
    fn into_outcome(self) -> JobResult<Option<String>> {
        self.map(JobOutput::into_result).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never(_: &Env, _: &Invocation<'_>) -> JobResult<Option<String>> {
        Ok(None)
    }

    #[test]
    fn unusable_declared_settings_are_named() {
        let bad_pattern = FunctionDefaults { retry_pattern: Some("1:x"), ..FunctionDefaults::default() };
        let f = JobFunction::new("res.partner", "export", bad_pattern, never);
        let problem = f.check().expect("refused");
        assert!(problem.starts_with("job function res.partner.export: invalid retry pattern"), "{problem}");
        let bad_timeout = FunctionDefaults { timeout: Some("soon"), ..FunctionDefaults::default() };
        let f = JobFunction::new("res.partner", "export", bad_timeout, never);
        assert!(f.check().expect("refused").contains("timeout"), "refused");
        let fine = FunctionDefaults {
            retry_pattern: Some("1:10"),
            timeout: Some("5m"),
            ..FunctionDefaults::default()
        };
        let f = JobFunction::new("res.partner", "export", fine, never);
        assert_eq!(f.check(), None);
        assert_eq!(f.timeout(), Some(std::time::Duration::from_secs(300)));
    }
}
