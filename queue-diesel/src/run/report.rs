//! What a run tells the outside: a `tracing` span per run, events when it starts and ends, and
//! where a job panicked (file and line, and a backtrace when `RUST_BACKTRACE` asks for one).
//!
//! Events go to whatever subscriber the application installed (the `queue-worker` binary
//! installs one that prints them); with none, they cost next to nothing.

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, PanicHookInfo, catch_unwind};
use std::sync::Once;
use std::time::Duration;

use queue_core::{Ending, JobError};

use super::Ready;
use crate::store::RunRow;

/// The span a run's events (and the body's own) are recorded in.
pub(crate) fn span(row: &RunRow, ready: &Ready, attempt: i32) -> tracing::Span {
    tracing::info_span!(
        "job",
        uuid = %ready.uuid,
        function = ready.function.name(),
        channel = %row.channel,
        attempt,
        user = ready.context.user_id(),
        records = ready.record_ids.len(),
    )
}

/// The run of `row` starts, `latency` after it became due.
pub(crate) fn started(row: &RunRow, latency: Duration) {
    crate::metrics::job_started(&row.func, &row.channel, latency);
    tracing::info!(latency_ms = millis(latency), "job started");
}

/// The run of `row` ended so, after `took`.
pub(crate) fn ended(row: &RunRow, ending: &Ending, took: Duration) {
    crate::metrics::job_ran(&row.func, &row.channel, took);
    crate::metrics::job_progress_end(&row.uuid, &row.func);
    let ms = millis(took);
    match ending {
        Ending::Returned(Ok(_)) => tracing::info!(duration_ms = ms, verdict = "done", "job ran"),
        Ending::Returned(Err(JobError::NothingToDo(why))) => {
            tracing::info!(duration_ms = ms, verdict = "done", reason = %why, "job had nothing to do")
        }
        Ending::Returned(Err(JobError::Retry { reason, after, ignore_attempt })) => {
            let verdict = if *ignore_attempt { "postponed" } else { "retry" };
            tracing::info!(duration_ms = ms, verdict, reason = %reason, after = ?after, "job asked to run again")
        }
        Ending::Returned(Err(JobError::Cancel(why))) => {
            tracing::info!(duration_ms = ms, verdict = "cancelled", reason = %why, "job cancelled itself")
        }
        Ending::Returned(Err(JobError::Failed { name, message, info, .. })) => {
            let first_line = info.lines().next().unwrap_or_default();
            tracing::warn!(duration_ms = ms, verdict = "failed", error = %name, error_message = %message, info = first_line, "job failed")
        }
        Ending::Returned(Err(other)) => {
            tracing::warn!(duration_ms = ms, verdict = "failed", error = %other, "job failed")
        }
        Ending::Interrupted { reason } => {
            tracing::warn!(duration_ms = ms, verdict = "interrupted", reason = %reason, "job interrupted; it runs again")
        }
        Ending::Died { message } | Ending::Hung { message } => {
            tracing::warn!(duration_ms = ms, verdict = "lost", reason = %message, "job lost")
        }
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

thread_local! {
    /// A job body runs on this thread: its panics are reported by the run, not printed.
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
    /// Where the last job panic on this thread happened, and its backtrace.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Call `f`, a panic caught and turned into a failure whose info says where it happened.
pub(crate) fn catch<R>(f: impl FnOnce() -> Result<R, JobError>) -> Result<R, JobError> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
            if IN_JOB.with(Cell::get) {
                LAST_PANIC.with(|last| *last.borrow_mut() = Some(describe(info)));
            } else {
                previous(info);
            }
        }));
    });
    let outer = IN_JOB.with(|flag| flag.replace(true));
    let caught = catch_unwind(AssertUnwindSafe(f));
    IN_JOB.with(|flag| flag.set(outer));
    caught.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic with a non-text payload".to_owned());
        let info = LAST_PANIC
            .with(|last| last.borrow_mut().take())
            .unwrap_or_else(|| "the job function panicked".to_owned());
        Err(JobError::Failed { name: "panic".into(), message, info, source: None })
    })
}

/// "panicked at file:line:column", then the backtrace if the environment asks for one.
fn describe(info: &PanicHookInfo<'_>) -> String {
    let place = info.location().map_or_else(|| "an unknown place".to_owned(), |l| l.to_string());
    let mut text = format!("the job function panicked at {place}");
    let trace = std::backtrace::Backtrace::capture();
    if trace.status() == std::backtrace::BacktraceStatus::Captured {
        text.push_str(&format!("\n{trace}"));
    }
    text
}
