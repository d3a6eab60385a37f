//! Pure logic of the `queue` job system: no database, no I/O.
//!
//! `queue` stores jobs in the application's own database and runs them later, in their own
//! transaction. This crate holds the parts that need no database: the persisted shape of a job
//! ([`job`]), its states ([`state`]), the options a caller may set ([`options`]), the captured user
//! and context ([`context`]), channel capacities ([`channel`]), the registry of job functions
//! ([`registry`]), retry patterns ([`retry`]), cron schedules ([`schedule`]), the clock ([`clock`]), what a run's ending does to its job ([`ending`]) and the two error types ([`error`]): [`Error`] for library
//! failures and [`JobError`] for a job's own verdict.
//!
//! Applications use it through `queue-diesel`, which re-exports everything here.
//!
//! ```
//! use queue_core::{ChannelConfig, Context, JobState};
//!
//! let channels: ChannelConfig = "root:4,root.export:1".parse()?;
//! assert_eq!(channels.capacity("root.export"), Some(1));
//! assert_eq!(channels.node_for("root.export.partners"), "root.export");
//!
//! let ctx = Context::user(7).with("lang", "fr");
//! assert_eq!(ctx.user_id(), Some(7));
//! assert_eq!("done".parse::<JobState>()?, JobState::Done);
//! # Ok::<(), queue_core::Error>(())
//! ```
#![deny(missing_docs)]

pub mod channel;
pub mod clock;
pub mod context;
pub mod ending;
pub mod error;
pub mod job;
pub mod options;
pub mod registry;
pub mod retry;
pub mod schedule;
pub mod state;

pub use channel::ChannelConfig;
pub use clock::{Clock, MockClock, SystemClock};
pub use context::Context;
pub use ending::{Ending, Isolation, Settlement, Tries};
pub use error::{Error, JobError, JobResult, Result};
pub use job::{Job, JobId, NewJob};
pub use options::{Eta, FunctionDefaults, JobOptions, Unique};
pub use registry::Registry;
pub use retry::RetryPattern;
pub use state::{JobState, OperatorAction};
