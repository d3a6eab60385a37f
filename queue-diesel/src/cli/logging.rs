//! The worker's log: which events (`QUEUE_LOG`, else `RUST_LOG`, else `info`), and how they
//! look (text, coloured only on a terminal, or one JSON object per line for log collectors).

use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::error::{Error, Result};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Text for people; coloured when standard error is a terminal.
    #[default]
    Text,
    /// One JSON object per line, with the job's span fields, for log collectors.
    Json,
}

/// The filter in `QUEUE_LOG`, else `RUST_LOG`, else `info`: a level (`debug`), or targets with
/// levels (`info,queue_diesel=debug,my_app::jobs=trace`).
pub fn filter_from_env() -> Result<Targets> {
    for name in ["QUEUE_LOG", "RUST_LOG"] {
        if let Ok(text) = std::env::var(name)
            && !text.trim().is_empty()
        {
            return parse_filter(&text).map_err(|why| Error::Config(format!("{name}={text:?}: {why}")));
        }
    }
    Ok(Targets::new().with_default(tracing::Level::INFO))
}

/// Parse a log filter: a level, or `target=level` directives separated by commas (a bare
/// level among them applies to every other target).
pub fn parse_filter(text: &str) -> std::result::Result<Targets, String> {
    use tracing::level_filters::LevelFilter;
    const EXPECTED: &str = "expected a level (error, warn, info, debug, trace, off) or directives such as \"info,queue_diesel=debug\"";
    let level = |text: &str| {
        LevelFilter::from_str(text.trim())
            .map_err(|_| format!("{:?} is not a level; {EXPECTED}", text.trim()))
    };
    let mut targets = Targets::new();
    let mut any = false;
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        targets = match part.split_once('=') {
            None => targets.with_default(level(part)?),
            Some((target, value)) if !target.trim().is_empty() => {
                targets.with_target(target.trim(), level(value)?)
            }
            Some(_) => return Err(format!("{part:?} names no target; {EXPECTED}")),
        };
        any = true;
    }
    if !any {
        return Err(format!("it is empty; {EXPECTED}"));
    }
    Ok(targets)
}

/// Log to standard error with the filter from the environment, in `format`. A second call
/// leaves the first subscriber in place.
pub fn init(format: LogFormat) -> Result<()> {
    let filter = filter_from_env()?;
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_current_span(true),
            )
            .try_init(),
    };
    // Already installed (by the application, or an earlier call): keep it.
    let _ = installed;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_take_levels_and_directives() {
        assert!(parse_filter("debug").is_ok());
        assert!(parse_filter("info,queue_diesel=trace").is_ok());
        assert!(parse_filter("queue_diesel=debug").is_ok());
        for bad in ["loud", "queue_diesel=loud", "=debug", " , "] {
            let why = parse_filter(bad).map(|_| ()).expect_err(bad);
            assert!(why.contains("expected a level"), "{why}");
        }
    }
}
