//! The discrete-event scheduler: events ordered by `(time, seq)`.
//!
//! Virtual time only moves when an event is popped, so a run takes as long as its work, not
//! as long as the simulated time. Ties at the same millisecond are broken by insertion order
//! (`seq`), which makes the order of events a pure function of the seed: no wall clock, no
//! hash-map iteration, no threads.
//!
//! ## Shape: a calendar of milliseconds, and a heap for the far future
//! Almost every event of a run is due within a few seconds (message delays of tens of ms,
//! heartbeats, request timeouts), so those wait in a ring of [`WINDOW_MS`] per-millisecond
//! FIFO lists (a calendar queue): pushing appends to the list of its millisecond, popping
//! takes the front of the first non-empty list from now on, found through a bitmap. Both are
//! O(1); a binary heap of every pending event cost about a tenth of a race sweep in sifting.
//! The lists run through one slab of events that is reused as events are popped, so a run
//! allocates nothing per event once its slab has grown.
//! Events due `WINDOW_MS` or more ahead (scenario actions scheduled up front, periodic ticks)
//! wait in a min-heap and move into the ring, in `(time, seq)` order, as soon as time comes
//! within the window. Why this pops exactly in `(time, seq)` order:
//! * within one millisecond's queue, events are in push order: a far event moves in before
//!   any event is pushed straight into its millisecond (those are pushed only once the
//!   millisecond is within the window, and the move happens the moment it is), and the moves
//!   themselves come out of the heap in `seq` order;
//! * every event in the heap is due later than every event in the ring (the heap keeps only
//!   events due at `now + WINDOW_MS` or later), so the ring, when not empty, holds the
//!   earliest event.
//!
//! `tests::pops_in_the_order_of_a_reference_heap` checks it against a plain `(time, seq)`
//! heap on random schedules that cross the window many times.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::SimError;

/// Most events pending at once. A run that needs more is runaway (a message storm), and is
/// stopped with an error rather than eating the machine's memory.
pub const MAX_PENDING_EVENTS: usize = 20_000_000;

/// Milliseconds the ring covers: longer than every delay a run schedules again and again
/// (message delays, the 2 s request timeout, heartbeats, compaction ticks), a power of two
/// (slot = time mod window) and small enough that a run's ring is 32 KiB (two lists of 4096 slot numbers).
pub const WINDOW_MS: u64 = 4096;
const SLOTS: usize = WINDOW_MS as usize;
const WORDS: usize = SLOTS / 64;

/// A far-future heap entry: the ordering key and the slot of its event. Kept small (24
/// bytes) so that sifting moves keys, not events; the events wait in a slab.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    at: u64,
    seq: u64,
    slot: u32,
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    /// Reversed, so the max-heap pops the earliest `(at, seq)` first. `seq` is unique, so the
    /// order never depends on `slot`.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// "No event": the end of a millisecond's list.
const NIL: u32 = u32::MAX;

/// One pending event in the slab, and the next event of its millisecond's list.
struct Slot<E> {
    ev: Option<E>,
    next: u32,
}

/// Pending events in virtual time (milliseconds since the start of the run).
pub struct Scheduler<E> {
    /// Every pending event, ring and heap alike; a slot is reused once its event is popped,
    /// so a run allocates only while its number of pending events grows.
    slab: Vec<Slot<E>>,
    free: Vec<u32>,
    /// Events due in `[now, now + WINDOW_MS)`: per `time % WINDOW_MS`, a list through the slab
    /// in push order (first and last slot, [`NIL`] when empty).
    head: Box<[u32]>,
    tail: Box<[u32]>,
    /// Bit `i` set: the list of `i` is not empty.
    occupied: [u64; WORDS],
    /// Events in the ring.
    near: usize,
    /// Events due at `now + WINDOW_MS` or later.
    far: BinaryHeap<Key>,
    seq: u64,
    now: u64,
}

impl<E> Default for Scheduler<E> {
    fn default() -> Self {
        Self {
            slab: Vec::new(),
            free: Vec::new(),
            head: vec![NIL; SLOTS].into_boxed_slice(),
            tail: vec![NIL; SLOTS].into_boxed_slice(),
            occupied: [0; WORDS],
            near: 0,
            far: BinaryHeap::new(),
            seq: 0,
            now: 0,
        }
    }
}

fn slot_of(at: u64) -> usize {
    (at % WINDOW_MS) as usize
}

impl<E> Scheduler<E> {
    /// The time of the last event popped.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Number of pending events.
    pub fn len(&self) -> usize {
        self.near + self.far.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Schedules `ev` at `at` (never before now: the past is clamped to now).
    pub fn push(&mut self, at: u64, ev: E) -> Result<(), SimError> {
        if self.len() >= MAX_PENDING_EVENTS {
            return Err(SimError::Runaway(format!(
                "more than {MAX_PENDING_EVENTS} events pending"
            )));
        }
        self.seq += 1;
        let at = at.max(self.now);
        // MAX_PENDING_EVENTS < u32::MAX bounds the slab, so a slot always fits in a u32 (and
        // is never NIL).
        let slot = match self.free.pop() {
            Some(s) => {
                self.slab[s as usize] = Slot {
                    ev: Some(ev),
                    next: NIL,
                };
                s
            }
            None => {
                self.slab.push(Slot {
                    ev: Some(ev),
                    next: NIL,
                });
                (self.slab.len() - 1) as u32
            }
        };
        if at - self.now < WINDOW_MS {
            self.link(at, slot);
        } else {
            self.far.push(Key {
                at,
                seq: self.seq,
                slot,
            });
        }
        Ok(())
    }

    /// Appends slab slot `slot` (due at `at`, within the window) to its millisecond's list.
    fn link(&mut self, at: u64, slot: u32) {
        let s = slot_of(at);
        match self.tail[s] {
            NIL => self.head[s] = slot,
            last => self.slab[last as usize].next = slot,
        }
        self.tail[s] = slot;
        self.occupied[s / 64] |= 1 << (s % 64);
        self.near += 1;
    }

    /// Offset from `now` of the first non-empty millisecond of the ring.
    fn next_offset(&self) -> Option<u64> {
        if self.near == 0 {
            return None;
        }
        let start = slot_of(self.now);
        let (w0, b0) = (start / 64, start % 64);
        // The first word from bit `b0` on, then the other words in turn, then the first
        // word's bits below `b0` (times that wrapped past the end of the ring).
        let first = self.occupied[w0] & (u64::MAX << b0);
        let found = if first != 0 {
            Some(w0 * 64 + first.trailing_zeros() as usize)
        } else {
            (1..WORDS)
                .map(|k| (w0 + k) % WORDS)
                .find(|&w| self.occupied[w] != 0)
                .map(|w| w * 64 + self.occupied[w].trailing_zeros() as usize)
                .or_else(|| {
                    let low = self.occupied[w0] & !(u64::MAX << b0);
                    (low != 0).then(|| w0 * 64 + low.trailing_zeros() as usize)
                })
        };
        found.map(|s| ((s + SLOTS - start) % SLOTS) as u64)
    }

    /// Moves every far event now within the window into the ring, in `(time, seq)` order.
    fn pull_in(&mut self) {
        while let Some(key) = self.far.peek().copied() {
            if key.at - self.now >= WINDOW_MS {
                break;
            }
            self.far.pop();
            self.link(key.at, key.slot);
        }
    }

    /// Takes the event out of slab slot `slot` and frees the slot.
    fn take(&mut self, slot: u32) -> Option<E> {
        let ev = self.slab.get_mut(slot as usize).and_then(|x| x.ev.take());
        self.free.push(slot);
        ev
    }

    /// Time of the earliest pending event.
    pub fn peek_time(&self) -> Option<u64> {
        match self.next_offset() {
            Some(off) => Some(self.now + off),
            None => self.far.peek().map(|k| k.at),
        }
    }

    /// The earliest pending event; advances virtual time to it.
    pub fn pop(&mut self) -> Option<(u64, E)> {
        self.pop_due(u64::MAX)
    }

    /// The earliest pending event if it is due at or before `until` (advancing virtual time
    /// to it), else `None` with nothing changed: [`Scheduler::peek_time`] and
    /// [`Scheduler::pop`] in one search of the ring.
    pub fn pop_due(&mut self, until: u64) -> Option<(u64, E)> {
        while let Some(off) = self.next_offset() {
            let at = self.now + off;
            if at > until {
                return None;
            }
            let s = slot_of(at);
            let slot = self.head[s];
            let next = self.slab.get(slot as usize).map_or(NIL, |x| x.next);
            self.head[s] = next;
            if next == NIL {
                self.tail[s] = NIL;
                self.occupied[s / 64] &= !(1 << (s % 64));
            }
            self.near -= 1;
            if off > 0 {
                self.now = at;
                self.pull_in();
            }
            // Every listed slot has its event (a slot is freed only when popped); a guard.
            if let Some(ev) = self.take(slot) {
                return Some((at, ev));
            }
        }
        loop {
            // The ring is empty: the heap holds the earliest event.
            if self.far.peek()?.at > until {
                return None;
            }
            let key = self.far.pop()?;
            // Every key has its event; the loop is only a guard.
            if let Some(ev) = self.take(key.slot) {
                self.now = key.at;
                self.pull_in();
                return Some((key.at, ev));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn events_pop_in_time_then_insertion_order() {
        let mut s = Scheduler::default();
        for (at, tag) in [(5, 'a'), (1, 'b'), (5, 'c'), (0, 'd'), (1, 'e')] {
            s.push(at, tag).expect("room");
        }
        let order: Vec<char> = std::iter::from_fn(|| s.pop().map(|(_, t)| t)).collect();
        assert_eq!(order, vec!['d', 'b', 'e', 'a', 'c']);
    }

    #[test]
    fn pop_due_leaves_events_after_the_limit_in_place() {
        let mut s = Scheduler::default();
        for (at, tag) in [(3, 'a'), (3, 'b'), (10, 'c'), (WINDOW_MS * 3, 'd')] {
            s.push(at, tag).expect("room");
        }
        assert_eq!(s.pop_due(2), None);
        assert_eq!(s.now(), 0);
        assert_eq!(s.pop_due(3), Some((3, 'a')));
        assert_eq!(s.pop_due(3), Some((3, 'b')));
        assert_eq!(s.pop_due(9), None);
        assert_eq!(s.now(), 3);
        assert_eq!(s.pop_due(10), Some((10, 'c')));
        assert_eq!(s.pop_due(WINDOW_MS * 3 - 1), None);
        assert_eq!(s.len(), 1);
        assert_eq!(s.pop_due(u64::MAX), Some((WINDOW_MS * 3, 'd')));
        assert!(s.is_empty());
    }

    /// The calendar against a plain heap of `(time, seq)`: delays around and across the
    /// window's length, pushes into the past and the present, from the start and between pops.
    #[test]
    fn pops_in_the_order_of_a_reference_heap() {
        for seed in 0..20u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut s = Scheduler::default();
            let mut reference = std::collections::BTreeSet::new();
            let mut seq = 0u64;
            let mut now = 0u64;
            let mut push = |s: &mut Scheduler<u64>,
                            reference: &mut std::collections::BTreeSet<(u64, u64)>,
                            now: u64,
                            rng: &mut rand_chacha::ChaCha8Rng| {
                let delay = match rng.gen_range(0..6) {
                    0 => 0,
                    1 => rng.gen_range(0..30),
                    2 => rng.gen_range(WINDOW_MS - 3..WINDOW_MS + 3),
                    3 => rng.gen_range(0..3 * WINDOW_MS),
                    4 => rng.gen_range(0..20 * WINDOW_MS),
                    _ => rng.gen_range(0..2000),
                };
                // Sometimes in the past: clamped to now.
                let at = if rng.gen_bool(0.05) {
                    now.saturating_sub(5)
                } else {
                    now + delay
                };
                seq += 1;
                s.push(at, seq).expect("room");
                reference.insert((at.max(now), seq));
            };
            for _ in 0..200 {
                push(&mut s, &mut reference, now, &mut rng);
            }
            let mut popped = 0;
            while let Some((at, tag)) = s.pop() {
                let want = reference.pop_first();
                assert_eq!(Some((at, tag)), want, "seed {seed} pop {popped}");
                assert!(at >= now);
                now = at;
                assert_eq!(s.now(), now);
                assert_eq!(s.len(), reference.len());
                assert_eq!(s.peek_time(), reference.first().map(|&(t, _)| t));
                popped += 1;
                if popped < 5_000 {
                    for _ in 0..rng.gen_range(0..3) {
                        push(&mut s, &mut reference, now, &mut rng);
                    }
                }
            }
            assert!(reference.is_empty());
            assert!(popped > 5_000, "seed {seed}: {popped}");
        }
    }
}
