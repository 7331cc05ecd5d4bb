//! Blocking reads: a reader waits until this node holds a name at a seq, instead of polling.
//!
//! `GET /v1/resolve/{name}?wait_seq=N` and `GET /v1/seq/{name}?wait_seq=N` (and
//! `dpin resolve --wait-seq N`) answer as soon as the node's floor for the name reaches seq `N`
//! (a live record or a tombstone at `N` or later), or when `wait_ms` runs out, with whatever
//! the node holds then — the same answer an ordinary read would give at that moment. A writer
//! uses it to learn that its write has reached a given node (the automation that raced in the
//! mission's outage could not tell), and the propagation bench uses it to time arrival on
//! every node without a poller loading the cores it measures.
//!
//! The store's one place of index change ([`crate::store::DurableStore`]) calls
//! [`Watches::changed`] for every changed name. While nobody waits (the usual case, and every
//! record of a catch-up) that is one atomic load, no lock; otherwise one hash lookup, as only
//! names someone waits on have an entry. A waiter registers *before* it checks the store
//! again, so no change between the two is missed ([`Node::wait_for_seq`]): its registration
//! and that check are ordered before any later change by the store's lock, so the change's
//! load sees the waiter.
//!
//! A wait that a change of its name ended reports when that change happened, on the host's
//! monotonic clock ([`crate::clock::host_mono_us`], `changed_at_us` in the answer): the store
//! stamps it under its lock as it applies the change. On one host that is the record's arrival
//! on this node, to the microsecond, without the time the answer takes to reach the reader or
//! the reader's wake-up; the propagation bench times dpin's spread on it.
//!
//! Bounds: at most [`MAX_WAITERS`] waiters at once on a node (beyond that a wait is refused
//! with 503 `too_many_waits`, and the HTTP layer's per-client in-flight bound stops one
//! client from taking them all), and no wait longer than [`MAX_WAIT_MS`], which is below the
//! HTTP handler timeout.
//!
//! [`Node::wait_for_seq`]: crate::node::Node::wait_for_seq

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use thiserror::Error;
use tokio::sync::Notify;

/// Most waiters on one node at once.
pub const MAX_WAITERS: usize = 1024;

/// Longest wait one request may ask for, in ms (under [`crate::api::HANDLER_TIMEOUT`], so a
/// wait always ends with an answer, not a handler timeout).
pub const MAX_WAIT_MS: u64 = 25_000;

/// The wait when a request names a seq but no `wait_ms`.
pub const DEFAULT_WAIT_MS: u64 = 10_000;

/// Why a wait could not start.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WatchError {
    /// [`MAX_WAITERS`] waiters are waiting already.
    #[error("{0} readers are waiting on this node already; try again or read without waiting")]
    TooMany(usize),
}

/// How a wait ended ([`Node::wait_for_seq`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waited {
    /// The node holds the name at the seq waited for (else the wait ran out).
    pub reached: bool,
    /// When the name last changed during the wait, on the host's monotonic clock in µs
    /// ([`crate::clock::host_mono_us`]); `None` if it did not change while this reader waited
    /// (it held the seq already, or the wait ran out).
    pub changed_at_us: Option<u64>,
}

/// Names someone waits on, with one [`Notify`] each.
#[derive(Debug, Default)]
pub struct Watches {
    by_name: Mutex<HashMap<Box<str>, Watch>>,
    /// Waiters registered, changed only under `by_name`'s lock; read without it by
    /// [`Watches::changed`] to skip the lock while nobody waits.
    waiters: AtomicUsize,
}

#[derive(Debug)]
struct Watch {
    signal: Arc<Signal>,
    waiters: usize,
}

/// What a name's change gives its waiters, shared by them.
#[derive(Debug, Default)]
struct Signal {
    notify: Notify,
    /// When the name last changed while someone waited ([`crate::clock::host_mono_us`]; 0:
    /// not since the first waiter registered).
    changed_at: AtomicU64,
}

/// One waiter's registration: it is woken by every change of its name until dropped.
#[derive(Debug)]
pub struct Waiter {
    watches: Arc<Watches>,
    name: Box<str>,
    signal: Arc<Signal>,
}

impl Waiter {
    /// The notification to await. Create it before checking the store again: a change after
    /// its creation wakes it even if it is not yet polled.
    pub fn notify(&self) -> &Notify {
        &self.signal.notify
    }

    /// When the name last changed since a waiter on it registered, on the host's monotonic
    /// clock in µs ([`crate::clock::host_mono_us`]); `None` if it has not.
    pub fn changed_at_us(&self) -> Option<u64> {
        Some(self.signal.changed_at.load(Ordering::Acquire)).filter(|&t| t != 0)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut by_name = self.watches.lock();
        self.watches.waiters.fetch_sub(1, Ordering::Relaxed);
        if let Some(w) = by_name.get_mut(&self.name) {
            w.waiters = w.waiters.saturating_sub(1);
            if w.waiters == 0 {
                by_name.remove(&self.name);
            }
        }
    }
}

impl Watches {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Watch>> {
        self.by_name
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a waiter on `name` (refused beyond [`MAX_WAITERS`]).
    pub fn watch(self: &Arc<Self>, name: &str) -> Result<Waiter, WatchError> {
        let mut by_name = self.lock();
        let waiters = self.waiters.load(Ordering::Relaxed);
        if waiters >= MAX_WAITERS {
            return Err(WatchError::TooMany(waiters));
        }
        self.waiters.fetch_add(1, Ordering::Relaxed);
        let w = by_name.entry(name.into()).or_insert_with(|| Watch {
            signal: Arc::default(),
            waiters: 0,
        });
        w.waiters += 1;
        Ok(Waiter {
            watches: self.clone(),
            name: name.into(),
            signal: w.signal.clone(),
        })
    }

    /// `name`'s entry changed: stamps the change's time and wakes its waiters, if any.
    pub fn changed(&self, name: &str) {
        if self.waiters.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(w) = self.lock().get(name) {
            w.signal
                .changed_at
                .store(crate::clock::host_mono_us(), Ordering::Release);
            w.signal.notify.notify_waiters();
        }
    }

    /// Waiters registered now.
    pub fn waiters(&self) -> usize {
        self.waiters.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_change_after_registration_wakes_a_waiter_not_yet_polled() {
        let w = Arc::new(Watches::default());
        let waiter = w.watch("web.z").expect("room");
        let notified = waiter.notify().notified();
        // The change lands between registration and the first poll.
        w.changed("web.z");
        tokio::time::timeout(Duration::from_secs(5), notified)
            .await
            .expect("woken by the change");
    }

    #[tokio::test]
    async fn a_waiter_learns_when_its_name_changed_and_not_when_another_did() {
        let w = Arc::new(Watches::default());
        let waiter = w.watch("web.z").expect("room");
        assert_eq!(waiter.changed_at_us(), None, "nothing changed yet");
        w.changed("api.z");
        assert_eq!(
            waiter.changed_at_us(),
            None,
            "another name's change is not ours"
        );
        let before = crate::clock::host_mono_us();
        w.changed("web.z");
        let after = crate::clock::host_mono_us();
        let at = waiter.changed_at_us().expect("stamped");
        assert!(
            (before..=after).contains(&at),
            "{before} <= {at} <= {after}"
        );
        // A waiter registered later reads the last change while anyone waited (the node
        // compares it with what it read at registration, `Node::wait_for_seq`).
        let late = w.watch("web.z").expect("room");
        assert_eq!(late.changed_at_us(), Some(at));
    }

    #[tokio::test]
    async fn a_change_of_another_name_wakes_nobody() {
        let w = Arc::new(Watches::default());
        let waiter = w.watch("web.z").expect("room");
        let notified = waiter.notify().notified();
        w.changed("api.z");
        assert!(tokio::time::timeout(Duration::from_millis(50), notified)
            .await
            .is_err());
    }

    #[test]
    fn waiters_are_bounded_and_their_slots_come_back_when_dropped() {
        let w = Arc::new(Watches::default());
        let held: Vec<Waiter> = (0..MAX_WAITERS)
            .map(|i| w.watch(&format!("n{}.z", i % 7)).expect("room"))
            .collect();
        assert_eq!(w.watch("x.z").err(), Some(WatchError::TooMany(MAX_WAITERS)));
        drop(held);
        assert_eq!(w.waiters(), 0);
        assert!(w.lock().is_empty(), "no entry outlives its waiters");
        assert!(w.watch("x.z").is_ok());
    }
}
