//! Clock skew for the nemesis, through libfaketime (Debian package `faketime`).
//!
//! dpin orders records by seq, never by wall clock, but wall clocks still decide expiry,
//! compaction and the seq ceiling — so a node whose clock is minutes off must keep serving and
//! converging (issue 10, item 3). To test that on real processes without touching the host's
//! clock, every node of a run with the `skew` fault is started with libfaketime preloaded:
//!
//! * `LD_PRELOAD=<libfaketime.so.1>` — intercepts the libc time calls of the node only.
//! * `FAKETIME_DONT_FAKE_MONOTONIC=1` — only the wall clock moves; tokio's timers run on the
//!   real monotonic clock, so timeouts, heartbeats and the nemesis schedule are untouched.
//! * `FAKETIME_TIMESTAMP_FILE=<base>/node-K.faketime` holding an offset such as `+0` or
//!   `-600` (seconds) — the harness rewrites it to skew a *live* process (no restart, so the
//!   node sees a real clock step, forwards or backwards, and later a correction).
//! * `FAKETIME_CACHE_DURATION=1` — libfaketime re-reads the file at most once a second. That
//!   bounds the cost of the file (re-reading it on every call, `FAKETIME_NO_CACHE=1`, costs a
//!   file read per clock call) and means a new offset applies within a second; the checker
//!   widens skew spans by that much.
//!
//! If the library is missing, the harness says so, schedules no skew, and the report's
//! `clock_skew.mechanism` is `none`.

use std::path::{Path, PathBuf};

/// Where Debian and a few other layouts install the library.
pub const LIBFAKETIME_PATHS: [&str; 5] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib64/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
];

/// The libfaketime library: `explicit` if given, else the first of [`LIBFAKETIME_PATHS`] that
/// exists.
pub fn find_libfaketime(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(p) => p.is_file().then(|| p.to_path_buf()),
        None => LIBFAKETIME_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file()),
    }
}

/// The environment a node runs with under libfaketime, reading its offset from `clock_file`.
pub fn node_env(lib: &Path, clock_file: &Path) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".to_owned(), lib.display().to_string()),
        (
            "FAKETIME_TIMESTAMP_FILE".to_owned(),
            clock_file.display().to_string(),
        ),
        ("FAKETIME_CACHE_DURATION".to_owned(), "1".to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
    ]
}

/// The offset file's text for `offset_ms` (libfaketime's relative format, whole seconds).
pub fn offset_text(offset_ms: i64) -> String {
    format!("{:+}\n", offset_ms / 1000)
}

/// Writes `offset_ms` to `clock_file` atomically (a temporary file renamed over it), so
/// libfaketime never reads half a line.
pub fn write_offset(clock_file: &Path, offset_ms: i64) -> std::io::Result<()> {
    let tmp = clock_file.with_extension("faketime.tmp");
    std::fs::write(&tmp, offset_text(offset_ms))?;
    std::fs::rename(&tmp, clock_file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_signed_whole_seconds() {
        assert_eq!(offset_text(600_000), "+600\n");
        assert_eq!(offset_text(-600_000), "-600\n");
        assert_eq!(offset_text(0), "+0\n");
    }

    #[test]
    fn a_missing_library_is_none() {
        assert_eq!(
            find_libfaketime(Some(Path::new("/nonexistent/libfaketime.so.1"))),
            None
        );
    }
}
