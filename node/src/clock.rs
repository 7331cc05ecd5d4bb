//! The node's wall clock, read in one place, and the host's monotonic clock for timing a
//! record between processes ([`host_mono_us`]). A module of its own so the modules that need
//! the time (offers, blobs) do not import the node for it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Current wall-clock time in Unix milliseconds: the one place the node reads the clock for the
/// protocol.
pub fn now_ms() -> u64 {
    since_epoch().as_millis() as u64
}

/// This host's monotonic clock (`CLOCK_MONOTONIC`) in µs: one clock shared by every process
/// on the host, which the wall clock only is while nobody steps it. A blocking read reports
/// when the name it waited on changed on this clock ([`crate::watch`]), so a bench on the same
/// host can time a record's way from one process to another without the time the answers
/// take to reach it. 0 if the clock cannot be read (it always can on Linux).
pub fn host_mono_us() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |ts| {
        let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
        let micros = u64::try_from(ts.tv_nsec()).unwrap_or(0) / 1_000;
        secs.saturating_mul(1_000_000).saturating_add(micros)
    })
}

/// Current wall-clock time since the Unix epoch, at the clock's own resolution (zero before
/// the epoch): [`now_ms`], and what kernel receive stamps (`SO_TIMESTAMPNS`, the same clock)
/// are compared with.
pub fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}
