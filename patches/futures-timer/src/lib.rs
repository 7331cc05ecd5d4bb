//! dpin's stand-in for crates.io's `futures-timer` 3.0.4 (the workspace's `[patch.crates-io]`):
//! the same public API — [`Delay::new`], [`Delay::reset`] and `Future<Output = ()>` — with a
//! cheaper way of arming a timer.
//!
//! # Why
//!
//! libp2p's gossipsub gives every message it queues for a peer a send deadline, a `Delay`
//! (libp2p-gossipsub 0.49: `RpcOut::Publish`/`Forward { timeout }`), and most of those are
//! dropped unfired a moment later, when the message is sent. The upstream crate wakes its helper
//! thread on every `Delay::new`, `reset` and drop, whatever the deadline, so a node forwarding
//! a thousand updates a second to four peers woke that thread about 8,000 times a second: a
//! futex wake on the calling thread and a context switch each. Measured with `perf` on a node
//! taking 1,000 gossiped updates a second, the helper thread and those wakes were about a tenth
//! of the node's CPU.
//!
//! # How
//!
//! One helper thread keeps a min-heap of deadlines and sleeps on a condition variable until the
//! earliest. Arming a timer pushes its deadline and notifies the thread **only if the deadline
//! is earlier than the thread's next wake**; otherwise the thread finds the new entry when it
//! wakes anyway. A send deadline of seconds is almost never the earliest (a heartbeat or a
//! keep-alive is), so arming one costs a lock and a heap push. Dropping a `Delay` costs
//! nothing: the heap holds a weak reference, skipped when it comes due. A `reset` pushes a new
//! entry; the old one is skipped because its deadline no longer matches. So that entries of
//! dropped or reset timers with far deadlines cannot pile up, the heap is rebuilt without them
//! whenever it holds more than twice the live entries plus [`SLACK`].
//!
//! Firing is the upstream crate's: at or after its deadline the helper marks the timer fired and
//! wakes the task that last polled it. A poll also reports a timer ready by itself once its
//! deadline has passed. Timers run on the monotonic clock ([`Instant`]), independent of any
//! async runtime (tokio's paused test clock does not move them, as it did not move upstream's).
//!
//! If the helper thread cannot be started (the OS refuses a thread), a `Delay` still completes:
//! each poll before the deadline asks to be polled again, instead of the upstream crate's
//! panic.

#![warn(missing_docs)]

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Heap entries allowed beyond twice the live ones before the heap is rebuilt without the
/// dead and superseded ones.
pub const SLACK: usize = 1024;

/// A future that completes once its deadline has passed.
pub struct Delay {
    shared: Arc<Shared>,
}

/// One timer's state, shared with the helper's heap (weakly).
struct Shared {
    state: Mutex<State>,
    /// The helper the timer is armed with, which counts it among its live timers while it
    /// exists; `None` if the helper could not be started.
    timers: Option<&'static Timers>,
}

struct State {
    at: Instant,
    fired: bool,
    waker: Option<Waker>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(t) = self.timers {
            t.live.fetch_sub(1, AtomicOrdering::Relaxed);
        }
    }
}

/// The helper thread's queue.
struct Timers {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Timers that exist (`Shared` values), for the heap's bound.
    live: AtomicUsize,
}

struct Queue {
    heap: BinaryHeap<Entry>,
    /// When the helper looks at the heap next; `None` while it waits with nothing to wait for.
    next_wake: Option<Instant>,
    /// Tie-breaker, so entries with one deadline come due in the order they were armed.
    seq: u64,
}

struct Entry {
    at: Instant,
    seq: u64,
    timer: Weak<Shared>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Reversed: `BinaryHeap` is a max-heap, and the earliest deadline must be on top.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Locks, ignoring poisoning: no code here panics while holding a lock, and a timer must keep
/// working whatever a caller did.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The process's helper thread, started on first use; `None` if it could not be.
fn timers() -> Option<&'static Timers> {
    static TIMERS: OnceLock<Option<&'static Timers>> = OnceLock::new();
    *TIMERS.get_or_init(|| {
        let timers: &'static Timers = Box::leak(Box::new(Timers::new()));
        std::thread::Builder::new()
            .name("futures-timer".into())
            .spawn(move || timers.run())
            .ok()
            .map(|_| timers)
    })
}

/// A deadline `dur` from now; 30 years from now if that overflows (as upstream).
fn deadline(dur: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(dur)
        .or_else(|| now.checked_add(Duration::from_secs(30 * 365 * 86_400)))
        .unwrap_or(now)
}

impl Timers {
    fn new() -> Self {
        Timers {
            queue: Mutex::new(Queue {
                heap: BinaryHeap::new(),
                next_wake: None,
                seq: 0,
            }),
            wake: Condvar::new(),
            live: AtomicUsize::new(0),
        }
    }

    /// A new timer with deadline `at`, counted among this helper's live timers.
    fn timer(&'static self, at: Instant) -> Arc<Shared> {
        self.live.fetch_add(1, AtomicOrdering::Relaxed);
        Arc::new(Shared::new(at, Some(self)))
    }

    /// Queues `timer`'s deadline `at`, waking the helper only if it would otherwise look too
    /// late.
    fn arm(&self, timer: &Arc<Shared>, at: Instant) {
        let mut q = lock(&self.queue);
        q.seq = q.seq.wrapping_add(1);
        let seq = q.seq;
        q.heap.push(Entry {
            at,
            seq,
            timer: Arc::downgrade(timer),
        });
        let live = self.live.load(AtomicOrdering::Relaxed);
        if q.heap.len() > live.saturating_mul(2).saturating_add(SLACK) {
            compact(&mut q.heap);
        }
        if q.next_wake.is_none_or(|w| at < w) {
            // The helper recomputes its wake when it runs; until then nobody needs to notify
            // it again for a deadline at or after this one.
            q.next_wake = Some(at);
            self.wake.notify_one();
        }
    }

    /// The helper thread: fires what is due, then sleeps until the earliest deadline or a
    /// notification.
    fn run(&self) {
        let mut due = Vec::new();
        let mut q = lock(&self.queue);
        loop {
            let now = Instant::now();
            while q.heap.peek().is_some_and(|e| e.at <= now) {
                if let Some(e) = q.heap.pop() {
                    due.push(e);
                }
            }
            if !due.is_empty() {
                // Wakers run without the queue lock: a woken task may arm a timer at once.
                drop(q);
                for e in due.drain(..) {
                    if let Some(waker) = e.timer.upgrade().and_then(|t| t.fire(e.at)) {
                        waker.wake();
                    }
                }
                q = lock(&self.queue);
                continue;
            }
            match q.heap.peek().map(|e| e.at) {
                None => {
                    q.next_wake = None;
                    q = self.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
                }
                Some(at) => {
                    q.next_wake = Some(at);
                    let wait = at.saturating_duration_since(now);
                    q = self
                        .wake
                        .wait_timeout(q, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }
}

/// Drops the entries of timers that are gone or were reset since (the entry's deadline is no
/// longer theirs), and of timers that already fired.
fn compact(heap: &mut BinaryHeap<Entry>) {
    heap.retain(|e| {
        e.timer.upgrade().is_some_and(|t| {
            let s = lock(&t.state);
            s.at == e.at && !s.fired
        })
    });
}

impl Shared {
    fn new(at: Instant, timers: Option<&'static Timers>) -> Self {
        Shared {
            state: Mutex::new(State {
                at,
                fired: false,
                waker: None,
            }),
            timers,
        }
    }

    /// Marks the timer fired if `at` is still its deadline; the waker to wake, if any.
    fn fire(&self, at: Instant) -> Option<Waker> {
        let mut s = lock(&self.state);
        if s.at != at || s.fired {
            return None;
        }
        s.fired = true;
        s.waker.take()
    }
}

impl Delay {
    /// A delay that completes `dur` from now.
    pub fn new(dur: Duration) -> Delay {
        let at = deadline(dur);
        let shared = match timers() {
            Some(t) => {
                let shared = t.timer(at);
                t.arm(&shared, at);
                shared
            }
            None => Arc::new(Shared::new(at, None)),
        };
        Delay { shared }
    }

    /// Restarts the delay: it completes `dur` from now, whether or not it had completed.
    pub fn reset(&mut self, dur: Duration) {
        let at = deadline(dur);
        {
            let mut s = lock(&self.shared.state);
            s.at = at;
            s.fired = false;
        }
        if let Some(t) = self.shared.timers {
            t.arm(&self.shared, at);
        }
    }
}

impl Future for Delay {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = lock(&self.shared.state);
        if s.fired || s.at <= Instant::now() {
            s.fired = true;
            s.waker = None;
            return Poll::Ready(());
        }
        if self.shared.timers.is_none() {
            // No helper thread: ask to be polled again until the deadline passes.
            drop(s);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl fmt::Debug for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delay").finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::task::Wake;

    /// A waker that records that it was woken and unparks the test thread.
    struct Flag {
        woken: AtomicBool,
        thread: std::thread::Thread,
    }

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.woken.store(true, AtomicOrdering::SeqCst);
            self.thread.unpark();
        }
    }

    /// A flag that wakes this thread, and its waker.
    fn flag() -> (Arc<Flag>, Waker) {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(false),
            thread: std::thread::current(),
        });
        (flag.clone(), Waker::from(flag))
    }

    /// Polls `fut` on this thread until it completes (parking between polls); when it did.
    ///
    /// A test measures from an instant taken *before* it arms the delay: the deadline is
    /// computed when the delay is armed, so time spent between arming and the first poll (the
    /// helper thread's start on first use, a busy machine) would otherwise come off the wait
    /// the test sees, and a delay that completes exactly on time would look early.
    fn block_on<F: Future + Unpin>(mut fut: F) -> Instant {
        let started = Instant::now();
        let (_, waker) = flag();
        let mut cx = Context::from_waker(&waker);
        loop {
            if Pin::new(&mut fut).poll(&mut cx).is_ready() {
                return Instant::now();
            }
            // Bounded, so a lost wake fails the assertion below instead of hanging the test.
            std::thread::park_timeout(Duration::from_secs(5));
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the delay was never woken"
            );
        }
    }

    #[test]
    fn a_delay_completes_after_its_duration_and_not_before() {
        let armed = Instant::now();
        let d = Delay::new(Duration::from_millis(30));
        let took = block_on(d) - armed;
        assert!(took >= Duration::from_millis(30), "{took:?}");
    }

    #[test]
    fn a_later_deadline_armed_after_an_earlier_one_still_fires() {
        // The second arm does not notify the helper (its deadline is later than the helper's
        // next wake); the helper must find it when it wakes for the first.
        let armed = Instant::now();
        let first = Delay::new(Duration::from_millis(20));
        let second = Delay::new(Duration::from_millis(60));
        block_on(first);
        let took = block_on(second) - armed;
        assert!(took >= Duration::from_millis(60), "{took:?}");
    }

    #[test]
    fn an_earlier_deadline_wakes_a_helper_sleeping_towards_a_later_one() {
        // Armed first, so the helper sleeps towards an hour from now; unless the earlier
        // deadline notifies it, `block_on` gives up after 5 s.
        let _far = Delay::new(Duration::from_secs(3600));
        block_on(Delay::new(Duration::from_millis(20)));
    }

    #[test]
    fn a_reset_delay_waits_for_its_new_deadline() {
        let mut d = Delay::new(Duration::from_millis(10));
        let reset = Instant::now();
        d.reset(Duration::from_millis(80));
        let took = block_on(d) - reset;
        assert!(took >= Duration::from_millis(80), "{took:?}");
    }

    #[test]
    fn a_completed_delay_runs_again_after_a_reset() {
        let mut d = Delay::new(Duration::from_millis(5));
        block_on(&mut d);
        let reset = Instant::now();
        d.reset(Duration::from_millis(40));
        let (_, waker) = flag();
        assert!(Pin::new(&mut d)
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        let took = block_on(d) - reset;
        assert!(took >= Duration::from_millis(40), "{took:?}");
    }

    #[test]
    fn the_task_that_polled_last_is_woken() {
        let mut d = Delay::new(Duration::from_millis(20));
        let (first, w1) = flag();
        assert!(Pin::new(&mut d)
            .poll(&mut Context::from_waker(&w1))
            .is_pending());
        block_on(&mut d);
        assert!(
            !first.woken.load(AtomicOrdering::SeqCst),
            "the earlier waker was replaced"
        );
    }

    #[test]
    fn many_delays_fire_each_once() {
        let delays: Vec<Delay> = (0..200)
            .map(|i| Delay::new(Duration::from_millis(1 + i % 17)))
            .collect();
        for d in delays {
            block_on(d);
        }
    }

    #[test]
    fn dropped_and_reset_timers_do_not_pile_up_in_the_heap() {
        // A queue of its own, without a helper thread: nothing comes due or is fired, so only
        // the bound can remove entries.
        let t: &'static Timers = Box::leak(Box::new(Timers::new()));
        let far = Instant::now() + Duration::from_secs(3600);
        for i in 0..(20 * SLACK as u64) {
            let timer = t.timer(far + Duration::from_millis(i));
            t.arm(&timer, far + Duration::from_millis(i));
        }
        assert_eq!(t.live.load(AtomicOrdering::Relaxed), 0, "all dropped");
        let kept = t.timer(far);
        t.arm(&kept, far);
        for i in 1..(4 * SLACK as u64) {
            let at = far + Duration::from_millis(i);
            lock(&kept.state).at = at;
            t.arm(&kept, at);
        }
        let queued = lock(&t.queue).heap.len();
        assert!(
            queued <= 2 + SLACK + 1,
            "{queued} entries queued for 1 live timer"
        );
        // The live timer's current entry survives every rebuild.
        let current = lock(&kept.state).at;
        assert!(lock(&t.queue).heap.iter().any(|e| e.at == current));
    }

    #[test]
    fn live_timers_are_counted_until_dropped() {
        let t: &'static Timers = Box::leak(Box::new(Timers::new()));
        let a = t.timer(Instant::now());
        let b = t.timer(Instant::now());
        assert_eq!(t.live.load(AtomicOrdering::Relaxed), 2);
        drop(a);
        assert_eq!(t.live.load(AtomicOrdering::Relaxed), 1);
        drop(b);
        assert_eq!(t.live.load(AtomicOrdering::Relaxed), 0);
    }

    #[test]
    fn an_overflowing_duration_is_a_far_deadline_not_a_panic() {
        let mut d = Delay::new(Duration::MAX);
        let waker = Waker::noop();
        assert!(Pin::new(&mut d)
            .poll(&mut Context::from_waker(waker))
            .is_pending());
    }

    #[test]
    fn entries_come_due_earliest_first() {
        let mut heap = BinaryHeap::new();
        let now = Instant::now();
        for (ms, seq) in [(30u64, 1u64), (10, 2), (20, 3), (10, 4)] {
            heap.push(Entry {
                at: now + Duration::from_millis(ms),
                seq,
                timer: Weak::new(),
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|e| e.seq)).collect();
        assert_eq!(order, vec![2, 4, 3, 1]);
    }
}
