//! dpin node library (module map is filled in as modules land).
pub mod net;
