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
//! [`tune`] caps glibc's arenas at [`ARENA_MAX`], and [`run_trimmer`] hands free memory back
//! to the system every [`TRIM_EVERY`] (`malloc_trim`, which also releases free pages inside
//! the heap of every arena, not only at its top). A fixed 64 KiB mmap threshold (large blocks
//! mapped on their own) was tried first: it cut RSS as much but cost about a quarter more idle
//! CPU (every connection buffer became an `mmap`/`munmap` pair). Measured with `dpin-bench
//! idle --nodes 40` side by side (the numbers are in the README's benchmark section). The
//! arena cap is applied only where the operator did not choose their own
//! (`MALLOC_ARENA_MAX`).
//!
//! **How many arenas (issue 14).** The cap was 2 at first. With the trimmer, it no longer
//! buys memory, and it costs CPU where threads allocate at once: a node catching up applies,
//! verifies and flushes on blocking threads while its tokio workers decode, and with 2 arenas
//! they queued for the arena locks (a `perf` of a joiner at 10⁶ records: about 13 % of its CPU
//! in glibc's allocator). Side by side on 2026-12-04 (scalebench, `MALLOC_ARENA_MAX` set for
//! every node of the run): catch-up of 10⁶ records from 5 peers 45.0 / 46.3k → 50.6 / 54.6k
//! records/s with 8 (joiner 31.7 / 30.5 → 29.0 / 26.7 µs of CPU per record); a 10⁶-record node
//! 30 s after a restart 353.3 MB resident with 2, 350.5 MB with 8; 40 idle nodes 23.7 MB
//! per node (anon 7.9 / 7.8 MB) either way.

use std::time::Duration;

/// Arenas shared by all threads (glibc's default is up to 8 per core; see the module docs
/// for why 8 in all).
pub const ARENA_MAX: i32 = 8;
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

/// The test binary's allocator: the system's, counting the bytes each thread holds, so a test
/// can measure what a structure keeps (the bytes freed when it is dropped) without timing
/// anything. Tests run on their own threads, so one test's allocations do not show in
/// another's count.
#[cfg(test)]
pub(crate) mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        // A const-initialised `Cell` needs no destructor, so the allocator never allocates
        // to count.
        static LIVE: Cell<isize> = const { Cell::new(0) };
    }

    fn add(delta: isize) {
        // After the thread's locals are gone (its exit) there is nothing left to count.
        let _ = LIVE.try_with(|c| c.set(c.get().wrapping_add(delta)));
    }

    fn size(n: usize) -> isize {
        isize::try_from(n).unwrap_or(isize::MAX)
    }

    /// Bytes allocated and not yet freed on this thread (freed blocks allocated elsewhere
    /// count negative).
    pub(crate) fn live_bytes() -> isize {
        LIVE.with(Cell::get)
    }

    /// [`System`], counting per thread.
    pub(crate) struct Counting;

    // SAFETY: every call is forwarded to `System` with the caller's arguments unchanged; the
    // counting only reads sizes and touches a thread-local integer.
    #[allow(unsafe_code)]
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract for `alloc`, passed on.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                add(size(layout.size()));
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                add(size(layout.size()));
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller's contract for `dealloc`, passed on.
            unsafe { System.dealloc(ptr, layout) };
            add(-size(layout.size()));
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: the caller's contract for `realloc`, passed on.
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                add(size(new_size) - size(layout.size()));
            }
            p
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;
}
