//! Work the workers do for each other: rescuing jobs whose worker is gone, and pruning old
//! finished jobs.

pub mod liveness;
pub mod pruner;
pub mod rescuer;

pub use pruner::{Pruner, Retention};
pub use rescuer::{RescueStats, Rescuer};
