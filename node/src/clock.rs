//! The node's wall clock, read in one place. A module of its own so the modules that need the
//! time (offers, blobs) do not import the node for it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Current wall-clock time in Unix milliseconds: the one place the node reads the clock for the
/// protocol.
pub fn now_ms() -> u64 {
    since_epoch().as_millis() as u64
}

/// Current wall-clock time since the Unix epoch, at the clock's own resolution (zero before
/// the epoch): [`now_ms`], and what kernel receive stamps (`SO_TIMESTAMPNS`, the same clock)
/// are compared with.
pub fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}
