//! The discrete-event scheduler: a min-heap of `(time, seq)` keyed events.
//!
//! Virtual time only moves when an event is popped, so a run takes as long as its work, not
//! as long as the simulated time. Ties at the same millisecond are broken by insertion order
//! (`seq`), which makes the order of events a pure function of the seed: no wall clock, no
//! hash-map iteration, no threads.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::SimError;

/// Most events pending at once. A run that needs more is runaway (a message storm), and is
/// stopped with an error rather than eating the machine's memory.
pub const MAX_PENDING_EVENTS: usize = 20_000_000;

/// A heap entry: the ordering key and the slot of its event. Kept small (24 bytes) so that
/// sifting moves keys, not events; the events wait in a slab.
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

/// Pending events in virtual time (milliseconds since the start of the run).
pub struct Scheduler<E> {
    heap: BinaryHeap<Key>,
    slab: Vec<Option<E>>,
    free: Vec<u32>,
    seq: u64,
    now: u64,
}

impl<E> Default for Scheduler<E> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            seq: 0,
            now: 0,
        }
    }
}

impl<E> Scheduler<E> {
    /// The time of the last event popped.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Number of pending events.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Schedules `ev` at `at` (never before now: the past is clamped to now).
    pub fn push(&mut self, at: u64, ev: E) -> Result<(), SimError> {
        if self.heap.len() >= MAX_PENDING_EVENTS {
            return Err(SimError::Runaway(format!(
                "more than {MAX_PENDING_EVENTS} events pending"
            )));
        }
        self.seq += 1;
        // MAX_PENDING_EVENTS < u32::MAX bounds the slab, so a slot always fits in a u32.
        let slot = match self.free.pop() {
            Some(s) => {
                self.slab[s as usize] = Some(ev);
                s
            }
            None => {
                self.slab.push(Some(ev));
                (self.slab.len() - 1) as u32
            }
        };
        self.heap.push(Key {
            at: at.max(self.now),
            seq: self.seq,
            slot,
        });
        Ok(())
    }

    /// Time of the earliest pending event.
    pub fn peek_time(&self) -> Option<u64> {
        self.heap.peek().map(|k| k.at)
    }

    /// The earliest pending event; advances virtual time to it.
    pub fn pop(&mut self) -> Option<(u64, E)> {
        loop {
            let key = self.heap.pop()?;
            let ev = self.slab.get_mut(key.slot as usize).and_then(Option::take);
            self.free.push(key.slot);
            // Every key has its event (slots are freed only here); the loop is only a guard.
            if let Some(ev) = ev {
                self.now = key.at;
                return Some((key.at, ev));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_pop_in_time_then_insertion_order() {
        let mut s = Scheduler::default();
        for (at, tag) in [(5, 'a'), (1, 'b'), (5, 'c'), (0, 'd'), (1, 'e')] {
            s.push(at, tag).expect("room");
        }
        let order: Vec<char> = std::iter::from_fn(|| s.pop().map(|(_, t)| t)).collect();
        assert_eq!(order, vec!['d', 'b', 'e', 'a', 'c']);
    }
}
