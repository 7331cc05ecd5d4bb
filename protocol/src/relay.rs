//! Relaying records learned through anti-entropy on to the gossip mesh.
//!
//! Gossip carries a write to every node that is connected when it is published; a node
//! across a partition gets it later through anti-entropy. After a heal, though, only the
//! nodes that run a session across the old cut (those that saw a peer on the other side come
//! back, [`crate::liveness`]) learn the other side's writes at once. The rest of their side
//! would wait for the periodic rotation (seconds), because gossip's IHAVE window (3 s) has
//! passed for writes older than that. So a node relays what a session taught it: each
//! record that changed its store is published on the gossip topic as it was gossiped first
//! (the record's wire bytes, so the message id is the same and nodes that saw it already drop
//! it unseen), and its side of the heal has it within one gossip propagation.
//!
//! Relaying is for the few records a short split leaves behind, not for bulk catch-up: a
//! node joining a network of a million names must not gossip them all. Three bounds:
//!
//! * a node that has not yet caught up ([`Relay::caught_up`]: none of its sync sessions has
//!   yet run to its end) relays nothing: it is joining, or back from a restart, and what it
//!   learns is what the network holds already. Relaying it would cost every mesh peer a
//!   duplicate verdict, and spend the node's own ingest budget at the very peers it is
//!   fetching from (each gossip message costs a token there, the same bucket its sync
//!   requests draw on): a joiner that relayed its first 64-record answers found its next
//!   requests refused `over_budget` within 30 ms, and waited for the next sync tick;
//! * a batch that changed more than [`RelayConfig::max_batch`] records is a bulk catch-up and
//!   is not relayed at all (anti-entropy carries it to whoever else lacks it);
//! * a token bucket ([`RelayConfig::per_sec`], [`RelayConfig::burst`]) bounds what one node
//!   relays over time; a batch over what is left is relayed in part (its first records).
//!
//! Relayed records that every receiver holds already cost each receiver one duplicate verdict
//! (ignored, never an offence, [`crate::ingest::verdict`]).

/// The relay bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// Largest batch (records one anti-entropy answer or push changed) that is relayed; a
    /// larger one is bulk catch-up.
    pub max_batch: usize,
    /// Records relayed per second in the long run.
    pub per_sec: u32,
    /// Records that may be relayed at once after a quiet spell.
    pub burst: u32,
}

impl Default for RelayConfig {
    /// A 5 s split at a few hundred writes per second leaves well under the batch bound; a
    /// node relays at most 1,024 records at once and 256 per second after that.
    fn default() -> Self {
        RelayConfig {
            max_batch: 512,
            per_sec: 256,
            burst: 1024,
        }
    }
}

/// What [`Relay::plan`] decided for one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayPlan {
    /// Relay the batch's first `relay` changed records.
    pub relay: usize,
    /// Left out because the batch was bulk catch-up.
    pub bulk: usize,
    /// Left out because the budget was spent.
    pub over_budget: usize,
    /// Left out because this node has not caught up yet ([`Relay::caught_up`]).
    pub joining: usize,
}

/// The relay budget of one node (sans-IO: the caller passes monotonic milliseconds).
#[derive(Clone, Debug)]
pub struct Relay {
    cfg: RelayConfig,
    /// Tokens in thousandths of a record (integer arithmetic: the same inputs give the same
    /// plan on every machine).
    milli_tokens: u64,
    last_ms: Option<u64>,
    /// Whether the node has caught up once ([`Relay::caught_up`]).
    current: bool,
}

impl Relay {
    /// A full bucket, for a node that has not caught up yet: it relays nothing until the
    /// driver calls [`Relay::caught_up`].
    pub fn new(cfg: RelayConfig) -> Self {
        Relay {
            cfg,
            milli_tokens: u64::from(cfg.burst) * 1000,
            last_ms: None,
            current: false,
        }
    }

    /// The node has caught up with the network: one of its sync sessions ran to its end (in
    /// sync, nothing left to do, or a round cap that changed nothing), so what it learns from
    /// now on may be news to its side of a split. Relaying starts here and stays on.
    pub fn caught_up(&mut self) {
        self.current = true;
    }

    /// Whether [`Relay::caught_up`] was called.
    pub fn is_current(&self) -> bool {
        self.current
    }

    /// How many of a batch's `changed` records to relay at `now_ms` (monotonic), spending
    /// budget for them.
    pub fn plan(&mut self, now_ms: u64, changed: usize) -> RelayPlan {
        self.refill(now_ms);
        let none = RelayPlan {
            relay: 0,
            bulk: 0,
            over_budget: 0,
            joining: 0,
        };
        if !self.current {
            return RelayPlan {
                joining: changed,
                ..none
            };
        }
        if changed > self.cfg.max_batch {
            return RelayPlan {
                bulk: changed,
                ..none
            };
        }
        let have = usize::try_from(self.milli_tokens / 1000).unwrap_or(usize::MAX);
        let relay = changed.min(have);
        self.milli_tokens -= relay as u64 * 1000;
        RelayPlan {
            relay,
            over_budget: changed - relay,
            ..none
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let cap = u64::from(self.cfg.burst) * 1000;
        if let Some(last) = self.last_ms {
            // A clock that steps back refills nothing (monotonic time should not, but the
            // caller's time is input).
            let elapsed = now_ms.saturating_sub(last);
            let add = elapsed.saturating_mul(u64::from(self.cfg.per_sec));
            self.milli_tokens = self.milli_tokens.saturating_add(add).min(cap);
        }
        self.last_ms = Some(self.last_ms.map_or(now_ms, |l| l.max(now_ms)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RelayConfig {
        RelayConfig {
            max_batch: 100,
            per_sec: 10,
            burst: 50,
        }
    }

    /// A relay of a node that has caught up.
    fn current() -> Relay {
        let mut r = Relay::new(cfg());
        r.caught_up();
        r
    }

    #[test]
    fn a_small_batch_is_relayed_whole() {
        let mut r = current();
        assert_eq!(
            r.plan(0, 30),
            RelayPlan {
                relay: 30,
                bulk: 0,
                over_budget: 0,
                joining: 0,
            }
        );
    }

    #[test]
    fn a_node_that_has_not_caught_up_relays_nothing_and_keeps_its_budget() {
        let mut r = Relay::new(cfg());
        assert!(!r.is_current());
        for t in [0, 10, 20] {
            assert_eq!(
                r.plan(t, 30),
                RelayPlan {
                    relay: 0,
                    bulk: 0,
                    over_budget: 0,
                    joining: 30,
                },
                "a joiner's small batches are old news to the network"
            );
        }
        r.caught_up();
        assert_eq!(
            r.plan(30, 50).relay,
            50,
            "the bucket was not spent while joining"
        );
    }

    #[test]
    fn a_bulk_batch_is_not_relayed_and_spends_nothing() {
        let mut r = current();
        assert_eq!(r.plan(0, 101).bulk, 101);
        assert_eq!(
            r.plan(0, 50).relay,
            50,
            "the bulk batch left the bucket full"
        );
    }

    #[test]
    fn the_budget_bounds_relays_over_time_and_refills_at_its_rate() {
        let mut r = current();
        assert_eq!(r.plan(0, 40).relay, 40);
        let p = r.plan(0, 40);
        assert_eq!((p.relay, p.over_budget), (10, 30), "10 tokens were left");
        assert_eq!(r.plan(0, 1).relay, 0);
        // 10 per second: 1 s later, 10 more.
        assert_eq!(r.plan(1_000, 40).relay, 10);
        // 150 ms is 1.5 tokens: one record now, the half token kept.
        assert_eq!(r.plan(1_150, 5).relay, 1);
        assert_eq!(r.plan(1_200, 5).relay, 1);
        // Never more than the burst, however long the quiet spell.
        assert_eq!(r.plan(1_000_000, 100).relay, 50);
    }

    #[test]
    fn time_going_back_refills_nothing() {
        let mut r = current();
        assert_eq!(r.plan(10_000, 50).relay, 50);
        assert_eq!(r.plan(5_000, 5).relay, 0);
        assert_eq!(r.plan(10_000, 5).relay, 0, "no credit for the step back");
        assert_eq!(r.plan(10_100, 5).relay, 1);
    }
}
