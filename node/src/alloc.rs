//! The C allocator's settings for a long-running node (glibc on Linux; elsewhere nothing).
//!
//! **Why (issue 16).** A node's memory should follow what it holds now, not the most it ever
//! held. With glibc's defaults it did not: in an idle 40-node cluster on loopback each node
//! held about 10 connections at the end, like in a 10-node cluster, yet its anonymous memory
//! was twice as large (about 20–26 MB against 10), left over from the start-up, when a
//! newcomer's Kademlia queries and the bootstrap node's inbound connections open and then
//! trim many more connections than the target degree. Two glibc defaults keep such memory:
//!
//! * **per-thread arenas** (up to 8 per core): a buffer freed on another worker thread's
//!   arena is kept there for that thread's reuse;
//! * **the dynamic mmap threshold**: after a large block (connection buffers are 64 KiB and
//!   more) is freed, glibc raises the size above which it maps blocks separately, so later
//!   large blocks come from the heap, where freed memory is returned to the system only from
//!   its top.
//!
//! [`tune`] caps glibc at two arenas, and [`run_trimmer`] hands free memory back to the
//! system every [`TRIM_EVERY`] (`malloc_trim`, which also releases free pages inside the
//! heap, not only at its top). A fixed 64 KiB mmap threshold (large blocks mapped on their
//! own) was tried first: it cut RSS as much but cost about a quarter more idle CPU (every
//! connection buffer became an `mmap`/`munmap` pair). Measured with `dpin-bench idle --nodes
//! 40` side by side (the numbers are in the README's benchmark section). The arena cap is
//! applied only where the operator did not choose their own (`MALLOC_ARENA_MAX`).

use std::time::Duration;

/// Arenas shared by all threads (glibc's default is up to 8 per core).
pub const ARENA_MAX: i32 = 2;
/// How often free memory is handed back to the system: rarely enough to cost nothing
/// measurable (one walk of the allocator's free lists), often enough that a start-up or
/// burst's leftovers are gone within a minute.
pub const TRIM_EVERY: Duration = Duration::from_secs(20);

/// Applies the settings above, once, at start-up (before the runtime's threads allocate).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        set_unless_env("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, ARENA_MAX);
    }
}

/// Hands free memory back to the system every [`TRIM_EVERY`], forever (spawn it on the
/// node's runtime).
pub async fn run_trimmer() {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        trim();
    }
}

/// Returns free memory to the system (glibc on Linux; elsewhere nothing).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        #[allow(unsafe_code)]
        // SAFETY: `malloc_trim` only releases memory glibc holds free; it takes a plain
        // integer (the padding to keep) and touches no memory of ours.
        let _ = unsafe { libc::malloc_trim(0) };
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_unless_env(env: &str, param: libc::c_int, value: libc::c_int) {
    if std::env::var_os(env).is_some() {
        return;
    }
    // SAFETY: `mallopt` only changes glibc's allocator parameters; it takes two plain
    // integers, touches no memory of ours, and is documented as callable at any time. A
    // refused value (return 0) leaves glibc's default in place, which is harmless.
    let _ = unsafe { libc::mallopt(param, value) };
}
