//! Work the workers do for each other: rescuing jobs whose worker is gone (or died in the middle
//! of a batch), pruning old finished jobs, and queueing the jobs of periodic schedules.

pub mod pruner;
pub mod rescuer;
pub mod schedules;

pub use pruner::{Pruner, Retention};
pub use rescuer::Rescuer;
