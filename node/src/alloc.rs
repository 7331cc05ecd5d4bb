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
//! **Where a trim runs (issue 14).** `malloc_trim` walks every arena's free chunks with the
//! arena locked and hands their pages back one `madvise` at a time, so it takes as long as
//! the heap is fragmented: on a node of 10⁶ names receiving 1,000 gossiped updates a second
//! (a `perf probe` on its entry and return) 9.7, 18.4 and 23.7 ms, three trims in a row.
//! It ran on a runtime worker, which stalled that long every [`TRIM_EVERY`]; it now runs on
//! a blocking thread, and every trim's length is on `/metrics`
//! (`dpin_malloc_trim_seconds`).
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
/// node's runtime; each trim runs on a blocking thread, [`trim_off_runtime`]).
pub async fn run_trimmer() {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        trim_off_runtime().await;
    }
}

/// [`trim`] on a blocking thread: a trim takes milliseconds to tens of them (module docs),
/// longer than a runtime worker may be kept from its tasks.
pub async fn trim_off_runtime() {
    // A trim that panicked or was cancelled at shutdown only left memory unreturned.
    let _ = tokio::task::spawn_blocking(trim).await;
}

/// Returns free memory to the system (glibc on Linux; elsewhere nothing), and records how
/// long it took in `dpin_malloc_trim_seconds`.
pub fn trim() {
    let started = std::time::Instant::now();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        #[allow(unsafe_code)]
        // SAFETY: `malloc_trim` only releases memory glibc holds free; it takes a plain
        // integer (the padding to keep) and touches no memory of ours.
        let _ = unsafe { libc::malloc_trim(0) };
    }
    trim_seconds().observe(started.elapsed().as_secs_f64());
}

/// Buckets of `dpin_malloc_trim_seconds`: from a small heap's fraction of a millisecond to
/// a fragmented one's tens of milliseconds.
const TRIM_SECONDS_BUCKETS: [f64; 8] = [0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0];

/// How long each trim took (one process, one allocator: process-wide).
fn trim_seconds() -> &'static prometheus_client::metrics::histogram::Histogram {
    static TRIMS: std::sync::OnceLock<prometheus_client::metrics::histogram::Histogram> =
        std::sync::OnceLock::new();
    TRIMS
        .get_or_init(|| prometheus_client::metrics::histogram::Histogram::new(TRIM_SECONDS_BUCKETS))
}

/// `dpin_malloc_trim_seconds`: every trim's length.
pub fn encode(e: &mut prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
    use prometheus_client::encoding::EncodeMetric;
    let h = trim_seconds();
    let m = e.encode_descriptor(
        "dpin_malloc_trim_seconds",
        "How long each return of free memory to the system (malloc_trim) took, on a blocking thread.",
        None,
        h.metric_type(),
    )?;
    h.encode(m)
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
mod tests {
    use super::*;

    /// Every trim, wherever it runs, is counted with its length in `dpin_malloc_trim_seconds`
    /// (other tests may trim at the same time, so at least one more).
    #[test]
    fn every_trim_is_timed_on_metrics() {
        let (before, _) = crate::metrics::tests::histogram_count_sum(trim_seconds());
        trim();
        let (after, sum) = crate::metrics::tests::histogram_count_sum(trim_seconds());
        assert!(after > before, "{before} -> {after}");
        assert!(sum >= 0.0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode_registry(&mut text, &{
            let mut r = prometheus_client::registry::Registry::default();
            r.register_collector(Box::new(Trims));
            r
        })
        .expect("encodes");
        assert!(
            text.contains("dpin_malloc_trim_seconds_count"),
            "the family is exposed: {text}"
        );
    }

    /// Encodes the trim histogram as the node's collector does.
    #[derive(Debug)]
    struct Trims;

    impl prometheus_client::collector::Collector for Trims {
        fn encode(
            &self,
            mut e: prometheus_client::encoding::DescriptorEncoder,
        ) -> std::fmt::Result {
            encode(&mut e)
        }
    }

    /// The runtime's trim (the trimmer's, the prober's first refresh) trims, and is counted,
    /// from a one-thread runtime too.
    #[tokio::test(flavor = "current_thread")]
    async fn a_trim_from_the_runtime_is_done_and_counted() {
        let (before, _) = crate::metrics::tests::histogram_count_sum(trim_seconds());
        trim_off_runtime().await;
        let (after, _) = crate::metrics::tests::histogram_count_sum(trim_seconds());
        assert!(after > before, "{before} -> {after}");
    }
}

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
