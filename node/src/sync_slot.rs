//! A session's hold on a sync slot: held while the session works, let go while it waits long
//! on one answer.
//!
//! The node runs at most [`crate::node::MAX_CONCURRENT_SYNCS`] anti-entropy sessions it
//! started at once; the slots bound the CPU and memory sessions take. But a session spends
//! most of its time waiting for its peer's answers, and a peer behind a fresh cut does not
//! answer at all: its session holds a slot for the request timeout (2 s) or until the failure
//! detector closes the connection (2.4–3.5 s seen in a debug run). After a heal followed at
//! once by another cut (issue 15's slow heals), such sessions can take every slot, and the
//! catch-up with the one peer on this node's side that has the missing write waits behind
//! them, seconds after the heal (the likely cause of a 4.4 s heal at N = 25, inferred from
//! its timings, not seen in its logs).
//!
//! So a session whose answer has not come within [`SLOT_PATIENCE`] gives its slot to the next
//! session and keeps waiting without one, holding a place among at most
//! [`MAX_SESSIONS_WAITING`] such sessions instead (when those are all taken, it keeps its
//! slot, as before). When its answer comes it takes a slot again before it goes on, so at
//! most `MAX_CONCURRENT_SYNCS` sessions ever work at once, and at most
//! `MAX_CONCURRENT_SYNCS + MAX_SESSIONS_WAITING` exist.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

/// How long a session waits for one answer before it lets another session use its slot. An
/// answer on a working path comes in a round trip plus the peer's work on it (a budgeted
/// chunk of records); this is well past that on the WAN links the harness models (20 ms
/// one way) and shorter than the request timeout, so a silent peer's session stops blocking
/// others long before it fails.
pub const SLOT_PATIENCE: Duration = Duration::from_millis(500);

/// Sessions that may wait for a slow answer without a slot, besides the slot holders.
pub const MAX_SESSIONS_WAITING: usize = 8;

/// The two pools a node's sessions draw from: working slots and waiting places.
#[derive(Debug)]
pub struct SyncSlots {
    working: Semaphore,
    waiting: Semaphore,
}

impl SyncSlots {
    /// `working` slots and `waiting` places.
    pub fn new(working: usize, waiting: usize) -> Self {
        Self {
            working: Semaphore::new(working),
            waiting: Semaphore::new(waiting),
        }
    }

    /// A working slot, waiting up to `timeout` for one; `None` if none came free.
    pub async fn acquire(&self, timeout: Duration) -> Option<SyncSlot<'_>> {
        let permit = tokio::time::timeout(timeout, self.working.acquire())
            .await
            .ok()?
            .ok()?;
        Some(SyncSlot {
            slots: self,
            held: Held::Working { _permit: permit },
        })
    }

    /// A working slot if one is free now.
    pub fn try_acquire(&self) -> Option<SyncSlot<'_>> {
        let permit = self.working.try_acquire().ok()?;
        Some(SyncSlot {
            slots: self,
            held: Held::Working { _permit: permit },
        })
    }

    /// Working slots free now.
    pub fn working_free(&self) -> usize {
        self.working.available_permits()
    }

    /// Waiting places free now.
    pub fn waiting_free(&self) -> usize {
        self.waiting.available_permits()
    }
}

#[derive(Debug)]
enum Held<'a> {
    /// A working slot (given back when dropped).
    Working { _permit: SemaphorePermit<'a> },
    /// A waiting place (given back when dropped).
    Waiting { _place: SemaphorePermit<'a> },
}

/// One session's hold: a working slot, or (while it waits on a slow answer) a waiting place.
#[derive(Debug)]
pub struct SyncSlot<'a> {
    slots: &'a SyncSlots,
    held: Held<'a>,
}

impl SyncSlot<'_> {
    /// Awaits `answer` (a request to the peer). If it takes longer than [`SLOT_PATIENCE`] and
    /// a waiting place is free, the working slot goes to the next session meanwhile, and
    /// `released` is called; once the answer is in, a working slot is taken again before
    /// this returns. Holds a working slot whenever it returns.
    pub async fn wait_for<T>(
        &mut self,
        answer: impl Future<Output = T>,
        released: impl FnOnce(),
    ) -> T {
        tokio::pin!(answer);
        let out = match tokio::time::timeout(SLOT_PATIENCE, &mut answer).await {
            Ok(out) => return out,
            Err(_) => match self.slots.waiting.try_acquire() {
                Ok(place) => {
                    // The working permit is dropped here, handing the slot on.
                    self.held = Held::Waiting { _place: place };
                    released();
                    answer.await
                }
                Err(_) => answer.await,
            },
        };
        if let Held::Waiting { .. } = self.held {
            // The semaphore is never closed; an error here cannot happen, and keeping the
            // waiting place would still bound the sessions.
            if let Ok(permit) = self.slots.working.acquire().await {
                self.held = Held::Working { _permit: permit };
            }
        }
        out
    }

    /// Whether this hold is a working slot now.
    pub fn working(&self) -> bool {
        matches!(self.held, Held::Working { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_prompt_answer_keeps_the_slot() {
        let slots = SyncSlots::new(1, 1);
        let mut slot = slots.try_acquire().expect("free");
        let released = AtomicUsize::new(0);
        let out = slot
            .wait_for(
                async {
                    tokio::time::sleep(SLOT_PATIENCE / 2).await;
                    7
                },
                || {
                    released.fetch_add(1, Ordering::Relaxed);
                },
            )
            .await;
        assert_eq!(out, 7);
        assert_eq!(released.load(Ordering::Relaxed), 0);
        assert!(slot.working());
        assert_eq!(slots.working_free(), 0);
        assert_eq!(slots.waiting_free(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_waiting_on_a_silent_peer_hands_its_slot_to_the_next_and_takes_one_back() {
        let slots = SyncSlots::new(1, 1);
        let mut silent = slots.try_acquire().expect("free");
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let released = AtomicUsize::new(0);
        let out = {
            let waiting = silent.wait_for(async { rx.await.unwrap_or(0) }, || {
                released.fetch_add(1, Ordering::Relaxed);
            });
            tokio::pin!(waiting);
            // Before the patience runs out, nobody else gets a slot.
            tokio::select! {
                _ = &mut waiting => panic!("no answer yet"),
                _ = tokio::time::sleep(SLOT_PATIENCE - Duration::from_millis(10)) => {}
            }
            assert!(slots.try_acquire().is_none());
            // Past it, the slot is free for the next session (the catch-up with a live peer).
            tokio::select! {
                _ = &mut waiting => panic!("no answer yet"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            assert_eq!(released.load(Ordering::Relaxed), 1);
            let next = slots.try_acquire().expect("the silent session's slot");
            assert_eq!(slots.waiting_free(), 0);
            // The silent peer answers at last: the first session waits for a working slot
            // before it goes on, so no more than one works at once.
            tx.send(5).expect("receiver alive");
            tokio::select! {
                _ = &mut waiting => panic!("must wait for a working slot"),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            drop(next);
            waiting.await
        };
        assert_eq!(out, 5);
        assert!(silent.working());
        assert_eq!(slots.working_free(), 0);
        assert_eq!(slots.waiting_free(), 1, "the waiting place is given back");
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_waiting_place_taken_a_slow_session_keeps_its_slot() {
        let slots = SyncSlots::new(2, 1);
        let mut a = slots.try_acquire().expect("free");
        let mut b = slots.try_acquire().expect("free");
        let (_keep_a, rx_a) = tokio::sync::oneshot::channel::<u32>();
        let (_keep_b, rx_b) = tokio::sync::oneshot::channel::<u32>();
        let wait_a = a.wait_for(async { rx_a.await.unwrap_or(0) }, || {});
        let wait_b = b.wait_for(async { rx_b.await.unwrap_or(0) }, || {});
        tokio::pin!(wait_a, wait_b);
        tokio::select! {
            _ = &mut wait_a => panic!("no answer"),
            _ = &mut wait_b => panic!("no answer"),
            _ = tokio::time::sleep(SLOT_PATIENCE * 3) => {}
        }
        // One of the two took the only waiting place; the other kept its slot.
        assert_eq!(slots.waiting_free(), 0);
        assert_eq!(slots.working_free(), 1);
    }
}
