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
//!
//! libfaketime makes a semaphore and a shared-memory segment in `/dev/shm` for every process
//! that loads it, named by its pid, and removes them when the process exits normally, never
//! when it is SIGKILLed, as the nemesis does. The harness removes them for each node it reaps
//! ([`remove_leftovers`]); before, every chaos run with clock skew left 36-54 pairs behind
//! (2,036 files on the development machine by 2026-12-05).

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

/// Where libfaketime keeps its per-process semaphore and segment.
pub const SHM_DIR: &str = "/dev/shm";

/// libfaketime's semaphore and segment for process `pid`, in `shm_dir`.
pub fn leftovers(shm_dir: &Path, pid: u32) -> [PathBuf; 2] {
    [
        shm_dir.join(format!("faketime_shm_{pid}")),
        shm_dir.join(format!("sem.faketime_sem_{pid}")),
    ]
}

/// Removes libfaketime's semaphore and segment of process `pid`, which the caller has just
/// reaped (so no other process holds its pid yet). Nothing to remove after a normal exit.
pub fn remove_leftovers(shm_dir: &Path, pid: u32) {
    for path in leftovers(shm_dir, pid) {
        let _ = std::fs::remove_file(path);
    }
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

    /// Only the reaped process's two objects go, whatever else is there.
    #[test]
    fn leftovers_of_one_pid_are_removed_and_no_others() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("dpin-shm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        for p in leftovers(&dir, 41).into_iter().chain(leftovers(&dir, 4100)) {
            std::fs::write(p, b"x")?;
        }
        remove_leftovers(&dir, 41);
        assert!(leftovers(&dir, 41).iter().all(|p| !p.exists()));
        assert!(leftovers(&dir, 4100).iter().all(|p| p.exists()));
        remove_leftovers(&dir, 41); // nothing left: no error
        std::fs::remove_dir_all(&dir)
    }

    /// The real library, where installed (the test-deps script installs it): a SIGKILLed
    /// process under libfaketime leaves its two objects in /dev/shm, and they are exactly
    /// what `leftovers` names.
    #[test]
    fn a_sigkilled_process_under_libfaketime_leaves_what_leftovers_names() -> std::io::Result<()> {
        let Some(lib) = find_libfaketime(None) else {
            eprintln!("libfaketime not installed: nothing to check");
            return Ok(());
        };
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("LD_PRELOAD", &lib)
            .env("FAKETIME", "+0")
            .spawn()?;
        let pid = child.id();
        let shm = Path::new(SHM_DIR);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !leftovers(shm, pid).iter().all(|p| p.exists()) {
            assert!(
                std::time::Instant::now() < deadline,
                "libfaketime made no objects for {pid}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.kill()?;
        child.wait()?;
        assert!(
            leftovers(shm, pid).iter().all(|p| p.exists()),
            "SIGKILL leaves them"
        );
        remove_leftovers(shm, pid);
        assert!(leftovers(shm, pid).iter().all(|p| !p.exists()));
        Ok(())
    }

    #[test]
    fn a_missing_library_is_none() {
        assert_eq!(
            find_libfaketime(Some(Path::new("/nonexistent/libfaketime.so.1"))),
            None
        );
    }
}
