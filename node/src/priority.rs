//! Thread priorities: a node's DNS answers come before its background work.
//!
//! A node answers DNS on dedicated UDP threads ([`crate::dns`]) and does everything else —
//! gossip ingest (decode, signature check, merge, the durable flush), anti-entropy, the HTTP
//! API, libp2p — on the async runtime's threads. On a core both want, the kernel shared it
//! equally, so a query arriving while a runtime thread held the core waited for that thread's
//! slice: with 1,000 gossiped updates a second arriving, a node on one core answering 120k
//! queries a second had a p99 of 2.2–3.1 ms (p50 0.30–0.39 ms), against 0.9–1.75 ms (p50
//! 0.13) with the runtime's threads at nice 10.
//!
//! `dpin node --background-nice N` (default [`DEFAULT_BACKGROUND_NICE`]) therefore lowers the
//! priority of the main thread and of every runtime thread (workers and the blocking pool, as
//! each starts) by `N` nice steps, and so of every thread they start (Linux threads inherit
//! their creator's nice value). The UDP answer threads stay at the process's own priority:
//! they are started by
//! [`spawn_at_base`], through a thread started before any priority was lowered — an
//! unprivileged process can lower a thread's priority but never raise it back. `N = 0` keeps
//! every thread at the process's priority.
//!
//! What it costs: under a DNS load that takes a whole core, the background work gets a
//! smaller share of that core (about a tenth at nice 10 against two busy answer threads,
//! instead of a third), so gossip is applied later and anti-entropy repairs what was dropped
//! (counted in `/metrics`). Answers keep their latency, which is what a name service is for.
//!
//! Nice values set shares, not how soon a waking thread gets the core: under Linux's EEVDF a
//! background thread keeps the core until its slice runs out. The answer threads therefore
//! also ask for a short slice ([`request_slice`], `--dns-slice-us`), with which a woken answer
//! thread preempts the background at once (`crate::dns`' `serve::answer_thread_slice` has the
//! figures).
//!
//! Linux only (per-thread nice values); elsewhere the calls do nothing and say so.

use std::io;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, PoisonError};

/// `--background-nice`'s default: how many nice steps below the process's priority the
/// node's background threads run.
pub const DEFAULT_BACKGROUND_NICE: u8 = 10;

/// The lowest priority a nice value expresses.
pub const MAX_NICE: i32 = 19;

type Job = (
    String,
    Box<dyn FnOnce() + Send + 'static>,
    mpsc::SyncSender<io::Result<()>>,
);

/// The thread [`spawn_at_base`] asks to start threads, once [`start_base_spawner`] ran.
static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();

/// Starts the thread that starts [`spawn_at_base`]'s threads. Call it on a thread at the
/// process's base priority before any priority is lowered (the node's `main`, before its
/// runtime starts); later calls do nothing.
pub fn start_base_spawner() -> io::Result<()> {
    if SPAWNER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("dpin-spawner".into())
        .spawn(move || {
            for (name, f, done) in rx {
                spawn_telling(name, f, done);
            }
        })?;
    // A concurrent first call may have won: its spawner serves, this one ends with its
    // channel.
    let _ = SPAWNER.set(Mutex::new(tx));
    Ok(())
}

/// Starts a thread named `name` running `f` at the process's base priority, whatever the
/// calling thread's: through the base spawner if it runs, directly otherwise (nothing lowered
/// any priority then, unless the caller did so without starting the spawner first).
///
/// Returns once the thread runs under its name (it says so itself before `f`), so a listing
/// of the process's threads right after shows it by name, not by its creator's.
pub fn spawn_at_base(name: String, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    let Some(spawner) = SPAWNER.get() else {
        spawn_telling(name, Box::new(f), done_tx);
        return done_rx
            .recv()
            .map_err(|_| io::Error::other("a started thread ended before it ran"))?;
    };
    spawner
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send((name, Box::new(f), done_tx))
        .map_err(|_| io::Error::other("the base-priority spawner thread is gone"))?;
    done_rx
        .recv()
        .map_err(|_| io::Error::other("the base-priority spawner thread is gone"))?
}

/// Starts a thread named `name` running `f`; `done` hears `Ok` from the new thread itself
/// before `f` runs (Rust names a thread before it runs its closure), or the error if it
/// could not be started.
fn spawn_telling(
    name: String,
    f: Box<dyn FnOnce() + Send + 'static>,
    done: mpsc::SyncSender<io::Result<()>>,
) {
    let running = done.clone();
    let started = std::thread::Builder::new().name(name).spawn(move || {
        let _ = running.send(Ok(()));
        f();
    });
    if let Err(e) = started {
        let _ = done.send(Err(e));
    }
}

/// The first failure of [`background_target`] or [`lower_background_thread`], kept for the
/// log: the runtime's threads start before logging does.
static LOWER_FAILURE: OnceLock<String> = OnceLock::new();

/// The nice value of the node's background threads: the calling thread's (the process's
/// base, on the main thread before anything was lowered) plus `by`, at most [`MAX_NICE`].
/// `None` for `by == 0` or if the base cannot be read (recorded for [`lowering_failure`]).
pub fn background_target(by: u8) -> Option<i32> {
    if by == 0 {
        return None;
    }
    match current_nice() {
        Ok(base) => Some(base.saturating_add(i32::from(by)).min(MAX_NICE)),
        Err(e) => {
            let _ = LOWER_FAILURE.set(e.to_string());
            None
        }
    }
}

/// Puts the calling thread at nice `target` unless it already runs at or below that
/// priority (`None`: nothing), remembering the first failure for [`lowering_failure`]: for
/// the node's main thread once the base spawner runs, and as the runtime's
/// `on_thread_start` (its threads start from ones already lowered, so the target is
/// absolute, not a step).
pub fn lower_background_thread(target: Option<i32>) {
    let Some(target) = target else {
        return;
    };
    let result = current_nice().and_then(|now| {
        if now < target {
            set_current_nice(target)
        } else {
            Ok(())
        }
    });
    if let Err(e) = result {
        let _ = LOWER_FAILURE.set(e.to_string());
    }
}

/// Why a background thread's priority could not be lowered, if one could not.
pub fn lowering_failure() -> Option<&'static str> {
    LOWER_FAILURE.get().map(String::as_str)
}

/// The shortest and longest scheduling slices Linux takes for a normal thread
/// (`sched_attr.sched_runtime`, µs); it clamps a request to them.
pub const SLICE_US_RANGE: std::ops::RangeInclusive<u32> = 100..=100_000;

/// `struct sched_attr` of `sched_setattr(2)` (its first published size, 48 bytes, which every
/// kernel since 3.14 takes; the utilisation clamps after it are left out).
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// Asks the kernel to run the calling thread in slices of `us` µs (EEVDF's per-thread slice,
/// Linux 6.12 and later: `sched_runtime` of a `SCHED_OTHER` thread), keeping its policy and
/// nice value. A thread with a shorter slice than the one running gets an earlier virtual
/// deadline, so on waking it takes the core at once instead of after the other's slice: what
/// an answer thread woken by a query wants from a background thread holding the core. Returns
/// the slice the kernel reports afterwards (µs; 0 from a kernel without per-thread slices,
/// which ignores the request). A thread not under `SCHED_OTHER` (an operator's `chrt`) is
/// left alone and reports 0.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn request_slice(us: u32) -> io::Result<u32> {
    let us = us.clamp(*SLICE_US_RANGE.start(), *SLICE_US_RANGE.end());
    let mut attr = own_sched_attr()?;
    if attr.policy != libc::SCHED_OTHER as u32 {
        return Ok(0);
    }
    attr.flags = 0;
    attr.runtime = u64::from(us) * 1_000;
    // SAFETY: `sched_setattr(0, attr, 0)` reads `attr.size` bytes from `attr`, a live
    // `SchedAttr` of that size, and changes only the calling thread's scheduling.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, std::ptr::from_ref(&attr), 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u32::try_from(own_sched_attr()?.runtime / 1_000).unwrap_or(u32::MAX))
}

/// The calling thread's `sched_attr` (`sched_getattr(2)`), with `size` set to ours.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn own_sched_attr() -> io::Result<SchedAttr> {
    let size = std::mem::size_of::<SchedAttr>() as u32;
    let mut attr = SchedAttr::default();
    // SAFETY: `sched_getattr(0, attr, size, 0)` writes at most `size` bytes into `attr`, a
    // live, writable `SchedAttr` of exactly that size, for the calling thread (pid 0).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            std::ptr::from_mut(&mut attr),
            size,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    attr.size = size;
    Ok(attr)
}

/// Off Linux the kernel's slices are left alone.
#[cfg(not(target_os = "linux"))]
pub fn request_slice(_us: u32) -> io::Result<u32> {
    Ok(0)
}

/// The calling thread's nice value.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn current_nice() -> io::Result<i32> {
    // SAFETY: `gettid` takes nothing and cannot fail; `__errno_location` returns this
    // thread's errno, written through before the call so that a legitimate -1 result can be
    // told from an error; `getpriority` takes two integers and touches no memory of ours.
    unsafe {
        let tid = libc::gettid();
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        if nice == -1 && *libc::__errno_location() != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(nice)
    }
}

/// The calling thread's nice value (not tracked off Linux: always 0).
#[cfg(not(target_os = "linux"))]
pub fn current_nice() -> io::Result<i32> {
    Ok(0)
}

/// Lowers the calling thread's priority by `by` nice steps (to at most [`MAX_NICE`]); returns
/// the new nice value. Never needs a privilege: it only lowers.
pub fn lower_current_thread(by: u8) -> io::Result<i32> {
    let nice = current_nice()?.saturating_add(i32::from(by)).min(MAX_NICE);
    set_current_nice(nice)?;
    Ok(nice)
}

/// Sets the calling thread's nice value (callers only ever raise it, which needs no
/// privilege).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_current_nice(nice: i32) -> io::Result<()> {
    // SAFETY: `gettid` takes nothing and cannot fail; `setpriority` takes three integers and
    // touches no memory of ours. On Linux it applies to the one thread `tid` names.
    let rc = unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::gettid() as libc::id_t,
            nice as libc::c_int,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Off Linux a thread's priority is left alone.
#[cfg(not(target_os = "linux"))]
fn set_current_nice(_nice: i32) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "per-thread priorities are only set on Linux",
    ))
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// Runs `f` on a fresh thread (priorities are per thread: the test's own stays as it was).
    fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().expect("test thread panicked")
    }

    #[test]
    fn lowering_a_thread_changes_only_that_thread() {
        let before = current_nice().unwrap();
        let lowered = on_thread(|| {
            let base = current_nice().unwrap();
            (
                base,
                lower_current_thread(3).unwrap(),
                current_nice().unwrap(),
            )
        });
        assert_eq!(lowered.1, (lowered.0 + 3).min(MAX_NICE));
        assert_eq!(lowered.2, lowered.1);
        assert_eq!(
            current_nice().unwrap(),
            before,
            "the caller's own thread kept its priority"
        );
    }

    /// The slice the kernel runs the calling thread in (`se.slice` of
    /// `/proc/thread-self/sched`, ns), if it says.
    pub(crate) fn own_slice_ns() -> Option<u64> {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        sched
            .lines()
            .find(|l| l.starts_with("se.slice"))?
            .split(':')
            .nth(1)?
            .trim()
            .parse()
            .ok()
    }

    /// Whether this kernel runs normal threads in slices they ask for (EEVDF's per-task
    /// slice, Linux 6.12 and later).
    pub(crate) fn kernel_takes_slices() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (major, minor) >= (6, 12)
    }

    #[test]
    fn a_thread_gets_the_slice_it_asks_for_clamped_and_keeps_its_nice_value() {
        let (nice, got, nice_after, slice_ns, low, high) = on_thread(|| {
            let nice = lower_current_thread(2).unwrap();
            let got = request_slice(250).unwrap();
            let after = (current_nice().unwrap(), own_slice_ns());
            let low = request_slice(1).unwrap();
            let high = request_slice(u32::MAX).unwrap();
            (nice, got, after.0, after.1, low, high)
        });
        assert_eq!(nice_after, nice, "the nice value is kept");
        if kernel_takes_slices() {
            assert_eq!(got, 250);
            assert_eq!(
                slice_ns,
                Some(250_000),
                "what /proc says the thread runs in"
            );
            assert_eq!(low, *SLICE_US_RANGE.start());
            assert_eq!(high, *SLICE_US_RANGE.end());
        } else {
            assert_eq!(got, 0, "an older kernel reports no slice of its own");
        }
    }

    #[test]
    fn lowering_stops_at_the_lowest_priority() {
        let nice = on_thread(|| {
            lower_current_thread(15).unwrap();
            lower_current_thread(15).unwrap()
        });
        assert_eq!(nice, MAX_NICE);
    }

    #[test]
    fn a_thread_started_by_a_lowered_thread_inherits_its_priority() {
        // Why the answer threads go through the base spawner.
        let (lowered, child) = on_thread(|| {
            let lowered = lower_current_thread(4).unwrap();
            (lowered, on_thread(|| current_nice().unwrap()))
        });
        assert_eq!(child, lowered);
    }

    #[test]
    fn a_background_thread_lands_at_the_target_whatever_it_inherited() {
        let (target, fresh, inherited) = on_thread(|| {
            let target = background_target(6).unwrap();
            // A thread at the base priority, and one started by a thread already at the
            // target (as the runtime's threads are, started from the lowered main thread).
            let fresh = on_thread(move || {
                lower_background_thread(Some(target));
                current_nice().unwrap()
            });
            lower_background_thread(Some(target));
            let inherited = on_thread(move || {
                lower_background_thread(Some(target));
                current_nice().unwrap()
            });
            (target, fresh, inherited)
        });
        assert_eq!(fresh, target);
        assert_eq!(inherited, target, "not lowered a second time");
        assert_eq!(background_target(0), None);
    }

    #[test]
    fn spawn_at_base_starts_threads_at_the_base_priority_from_a_lowered_thread() {
        let base = current_nice().unwrap();
        start_base_spawner().unwrap();
        let (lowered, spawned) = on_thread(move || {
            let lowered = lower_current_thread(5).unwrap();
            let (tx, rx) = mpsc::channel();
            spawn_at_base("test-base".into(), move || {
                let _ = tx.send(current_nice().unwrap());
            })
            .unwrap();
            (lowered, rx.recv().unwrap())
        });
        assert!(lowered > base || base == MAX_NICE);
        assert_eq!(spawned, base);
    }

    /// `spawn_at_base` returns once the thread runs under its name: a listing of the
    /// process's threads straight after shows it by name (an e2e test reads the answer
    /// threads' priorities that way; it once found them still under their creator's name).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_spawned_at_base_shows_its_name_at_once() {
        start_base_spawner().unwrap();
        // Every thread started here stays until the end: one ending while a listing is read
        // would cut the listing short (see `whole_thread_listing`).
        let mut parked = Vec::new();
        for i in 0..50 {
            let name = format!("dpin-named-{i}");
            let (release, wait) = mpsc::channel::<()>();
            spawn_at_base(name.clone(), move || {
                let _ = wait.recv();
            })
            .unwrap();
            let names = whole_thread_listing();
            assert!(names.contains(&name), "{name} not in {names:?}");
            parked.push(release);
        }
    }

    /// The names of this process's threads, from a listing of `/proc/self/task` known to be
    /// whole. Linux walks that directory thread by thread and stops at a thread that ended
    /// meanwhile (`next_tid` in `fs/proc/base.c`), leaving out every thread after it, and a
    /// thread just started is always last. Other tests' threads in this process end when
    /// they like, so a listing counts only when it has as many entries as the process had
    /// threads just before and just after it (`Threads:` in `/proc/self/status`). This
    /// test's own threads ending this way failed it 2 times in 200 runs of it alone.
    #[cfg(target_os = "linux")]
    fn whole_thread_listing() -> Vec<String> {
        let threads = || {
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("Threads:")?.trim().parse::<usize>().ok())
                .unwrap()
        };
        for _ in 0..1_000 {
            let before = threads();
            let names: Vec<String> = std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|c| c.trim().to_owned())
                .collect();
            if names.len() == before && threads() == before {
                return names;
            }
        }
        panic!("no whole listing of this process's threads in 1,000 tries");
    }
}
