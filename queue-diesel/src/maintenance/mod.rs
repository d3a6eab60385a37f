//! Work the workers do for each other: rescuing jobs whose worker is gone.

pub mod liveness;
pub mod rescuer;

pub use rescuer::{RescueStats, Rescuer};
