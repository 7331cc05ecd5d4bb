//! Gossip ingest policy: what a node does with a record a peer propagated to it.
//!
//! Three decisions, all pure and clock-free (time comes in as milliseconds of any monotonic
//! clock), so the node and the simulator make them identically:
//!
//! * **budget** ([`RateLimiter`]): a token bucket per propagating peer, checked *before* the
//!   record is decoded or its signature verified, so one noisy or hostile peer cannot
//!   monopolise validation (each message costs a signature check and a store lock). Over
//!   budget, the message is ignored — not forwarded, no penalty — and anti-entropy still
//!   carries anything real it had;
//! * **queue**: validation runs behind a bounded queue of [`GOSSIP_QUEUE`] (the driver's
//!   channel capacity); when it is full the message is ignored the same way, never buffered
//!   without bound;
//! * **verdict** ([`verdict`]): the merge outcome decides what gossipsub does with the
//!   message. A record that changed the store is accepted (forwarded); a duplicate, a stale
//!   record or a lost tie-break is ignored (not forwarded, no penalty: an honest peer can be
//!   late); an invalid record is rejected (dropped, and the sender's score drops) — except
//!   when it is refused only because of *our* clock ([`crate::ValidationError::is_clock_dependent`])
//!   or *our* store quota ([`crate::ValidationError::is_admission_refusal`]), which is not
//!   evidence against the sender.

use std::collections::BTreeMap;

use crate::merge::Outcome;

/// Most gossip messages waiting for validation; beyond this they are ignored (not forwarded)
/// and anti-entropy carries the records instead.
pub const GOSSIP_QUEUE: usize = 1024;
/// Gossip messages per second accepted for validation from one propagating peer.
pub const GOSSIP_RATE_PER_PEER: f64 = 500.0;
/// Burst allowance per peer (a sync-sized batch of forwards).
pub const GOSSIP_BURST_PER_PEER: f64 = 1000.0;
/// Most peers with a rate bucket; the stalest bucket is dropped beyond this.
pub const MAX_RATE_BUCKETS: usize = 1024;

/// What to tell gossipsub about a validated message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and new: deliver and forward.
    Accept,
    /// Invalid: drop and penalise the propagating peer.
    Reject,
    /// Not forwarded, no penalty (duplicate, stale, over budget, queue full, or refused only
    /// by our own clock).
    Ignore,
}

/// Why a message was not validated at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Its propagating peer was over its budget.
    RateLimited,
}

/// The verdict for a record whose merge `outcome` is known.
pub fn verdict(outcome: &Outcome) -> Verdict {
    match outcome {
        Outcome::Invalid(e) if e.is_clock_dependent() || e.is_admission_refusal() => {
            Verdict::Ignore
        }
        Outcome::Invalid(_) => Verdict::Reject,
        o if o.changed_store() => Verdict::Accept,
        _ => Verdict::Ignore,
    }
}

/// The verdict for a message that could not even be decoded: rejected.
pub const UNDECODABLE: Verdict = Verdict::Reject;

/// Token bucket per propagating peer, generic over the peer id.
#[derive(Clone, Debug)]
pub struct RateLimiter<P> {
    rate_per_s: f64,
    burst: f64,
    max_buckets: usize,
    buckets: BTreeMap<P, (f64, u64)>,
}

impl<P: Ord + Copy> RateLimiter<P> {
    /// `rate_per_s` tokens per second, at most `burst` saved up, at most [`MAX_RATE_BUCKETS`]
    /// peers tracked.
    pub fn new(rate_per_s: f64, burst: f64) -> Self {
        Self {
            rate_per_s,
            burst,
            max_buckets: MAX_RATE_BUCKETS,
            buckets: BTreeMap::new(),
        }
    }

    /// The node's limits ([`GOSSIP_RATE_PER_PEER`], [`GOSSIP_BURST_PER_PEER`]).
    pub fn gossip() -> Self {
        Self::new(GOSSIP_RATE_PER_PEER, GOSSIP_BURST_PER_PEER)
    }

    /// Takes one token for `peer` at `now_ms`; `Err` if it has none left.
    pub fn allow(&mut self, peer: P, now_ms: u64) -> Result<(), Dropped> {
        if !self.buckets.contains_key(&peer) && self.buckets.len() >= self.max_buckets {
            if let Some(stalest) = self
                .buckets
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(p, _)| *p)
            {
                self.buckets.remove(&stalest);
            }
        }
        let (tokens, last) = self.buckets.entry(peer).or_insert((self.burst, now_ms));
        // Milliseconds to seconds; a clock that steps back refills nothing.
        let refill = now_ms.saturating_sub(*last) as f64 / 1000.0 * self.rate_per_s;
        *tokens = (*tokens + refill).min(self.burst);
        *last = (*last).max(now_ms);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Dropped::RateLimited)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ValidationError;

    #[test]
    fn a_peer_over_its_gossip_rate_is_limited_and_recovers() {
        let mut l = RateLimiter::new(10.0, 5.0);
        let (p, q) = (1u32, 2u32);
        assert_eq!((0..8).filter(|_| l.allow(p, 0).is_ok()).count(), 5);
        // Another peer is not affected.
        assert!(l.allow(q, 0).is_ok());
        // 10 tokens/s: 300 ms later three more.
        assert_eq!((0..8).filter(|_| l.allow(p, 300).is_ok()).count(), 3);
    }

    #[test]
    fn a_record_refused_only_by_our_clock_is_ignored_not_held_against_the_sender() {
        let ahead = Outcome::Invalid(ValidationError::ExpiryTooFar {
            ahead_ms: 1,
            limit_ms: 0,
        });
        assert_eq!(verdict(&ahead), Verdict::Ignore);
        assert_eq!(
            verdict(&Outcome::Invalid(ValidationError::BadSignature)),
            Verdict::Reject
        );
        assert_eq!(
            verdict(&Outcome::Applied { previous_seq: None }),
            Verdict::Accept
        );
        assert_eq!(
            verdict(&Outcome::Stale { have: 2, got: 1 }),
            Verdict::Ignore
        );
        assert_eq!(verdict(&Outcome::Restored), Verdict::Accept);
    }
}
