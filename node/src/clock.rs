//! The node's wall clock, read in one place. A module of its own so the modules that need the
//! time (offers, blobs) do not import the node for it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Current wall-clock time in Unix milliseconds: the one place the node reads the clock for the
/// protocol.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
