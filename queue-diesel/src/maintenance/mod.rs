//! Work the workers do for each other: rescuing jobs whose worker is gone (or died in the middle
//! of a batch), and pruning old finished jobs.

pub mod pruner;
pub mod rescuer;

pub use pruner::{Pruner, Retention};
pub use rescuer::Rescuer;
