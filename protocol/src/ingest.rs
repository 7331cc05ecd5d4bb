//! Ingest policy: what a node does with work a peer sends it — gossip, sync pushes, sync
//! requests and blob requests — and when it stops listening to that peer.
//!
//! Every decision is pure and clock-free (time comes in as milliseconds of any monotonic
//! clock), so the node and the simulator make them identically:
//!
//! * **one budget per peer across every ingest path** ([`PeerBudget`]): a token bucket per
//!   peer, charged *before* the work is decoded, verified or answered, at a cost per path
//!   ([`Cost`]: a gossip message 1, a sync request 4, a sync push 1 + records/4, a blob
//!   request 1 + one per 256 KiB). One noisy or hostile peer therefore cannot monopolise
//!   validation, the store lock or the disk through any door, and pushing through sync
//!   instead of gossip buys it nothing. Over budget, the work is dropped — gossip is ignored
//!   (not forwarded, no gossipsub penalty), a request is answered with an error — and
//!   anti-entropy still carries anything real it had;
//! * **offences and bans**: invalid work (an undecodable or invalid record, an undecodable
//!   request) adds one to the peer's offence score, an over-budget drop a small fraction
//!   ([`BudgetConfig::over_budget_weight`]: an honest relay that forwards a burst is not
//!   banned for it); the score decays over time, and past [`BudgetConfig::ban_score`] the
//!   peer is banned for [`BudgetConfig::ban_ms`] — the node disconnects it and refuses all its
//!   work until then;
//! * **rotating peer ids buy nothing**: the peer table is bounded ([`BudgetConfig::max_peers`]),
//!   and a peer new to it — a fresh id, or one evicted earlier — does not get a full bucket:
//!   its first tokens come out of one shared newcomer pool (refilled at a fixed rate for all
//!   newcomers together), and for its first [`BudgetConfig::probation_ms`] (from when it
//!   connected, [`PeerBudget::connected`], or else its first work) it refills at a
//!   probation rate below the full one. An attacker that changes its key every few messages
//!   gets at most the newcomer pool's rate more than one that keeps it — and each id costs it
//!   a fresh connection and noise handshake — while its offences still ban each id; only
//!   ids held concurrently (bounded by the network layer's connection limits) multiply a
//!   budget. Eviction takes the stalest unbanned entry still on probation first, so an
//!   attacker's ids only evict each other and established honest peers keep their standing;
//! * **queue**: gossip validation runs behind a bounded queue of [`GOSSIP_QUEUE`] (the
//!   driver's channel capacity); when it is full the message is ignored the same way, never
//!   buffered without bound;
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

/// An ingest path: the door through which a peer's work reaches the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IngestPath {
    /// A gossip message (one record).
    Gossip,
    /// An anti-entropy request that reads our store (digest, listing, fetch).
    SyncRequest,
    /// Records pushed to us through anti-entropy.
    SyncPush,
    /// A blob request (index, chunk, seal, read).
    Blob,
}

impl IngestPath {
    /// Every path, in a fixed order (for counters).
    pub const ALL: [IngestPath; 4] = [
        IngestPath::Gossip,
        IngestPath::SyncRequest,
        IngestPath::SyncPush,
        IngestPath::Blob,
    ];

    /// Short name (a metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            IngestPath::Gossip => "gossip",
            IngestPath::SyncRequest => "sync_request",
            IngestPath::SyncPush => "sync_push",
            IngestPath::Blob => "blob",
        }
    }

    /// Index into [`IngestPath::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a unit of inbound work costs in budget tokens, by path and size. A token is about one
/// signature check or one small store read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cost {
    /// One gossip message: 1 token.
    Gossip,
    /// One sync request that reads the store: 4 tokens (a listing reads up to a bucket).
    SyncRequest,
    /// A sync push of `records` records: 1 + records/4 tokens (batch verification).
    SyncPush {
        /// Records in the push.
        records: usize,
    },
    /// A blob request of `bytes` bytes: 1 token plus one per started 256 KiB (chunk writes).
    Blob {
        /// Request size in bytes.
        bytes: usize,
    },
}

/// Bytes of a blob request per extra token.
const BLOB_BYTES_PER_TOKEN: usize = 256 * 1024;

impl Cost {
    /// The path this work came through.
    pub fn path(self) -> IngestPath {
        match self {
            Cost::Gossip => IngestPath::Gossip,
            Cost::SyncRequest => IngestPath::SyncRequest,
            Cost::SyncPush { .. } => IngestPath::SyncPush,
            Cost::Blob { .. } => IngestPath::Blob,
        }
    }

    /// Tokens this work costs.
    pub fn tokens(self) -> f64 {
        match self {
            Cost::Gossip => 1.0,
            Cost::SyncRequest => 4.0,
            Cost::SyncPush { records } => 1.0 + records as f64 / 4.0,
            Cost::Blob { bytes } => 1.0 + bytes.div_ceil(BLOB_BYTES_PER_TOKEN) as f64,
        }
    }
}

/// Limits of a [`PeerBudget`]. Every bound is explicit; [`BudgetConfig::default`] is the
/// node's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetConfig {
    /// Tokens per second a peer past probation earns.
    pub rate_per_s: f64,
    /// Most tokens a peer can save up (a sync-sized batch of forwards).
    pub burst: f64,
    /// Tokens a peer new to the table starts with, at most; taken from the newcomer pool.
    pub new_peer_tokens: f64,
    /// Tokens per second the newcomer pool earns (shared by every new peer).
    pub newcomer_pool_rate_per_s: f64,
    /// Most tokens the newcomer pool holds.
    pub newcomer_pool_burst: f64,
    /// How long a peer new to the table earns only [`BudgetConfig::probation_rate_per_s`].
    pub probation_ms: u64,
    /// Tokens per second during probation.
    pub probation_rate_per_s: f64,
    /// Most peers tracked; beyond this the least valuable entry is evicted (see
    /// [`PeerBudget`]).
    pub max_peers: usize,
    /// Offence score at which a peer is banned.
    pub ban_score: f64,
    /// Offence score one over-budget drop adds (an invalid item adds 1).
    pub over_budget_weight: f64,
    /// Offence score forgiven per second.
    pub forgive_per_s: f64,
    /// How long a ban lasts.
    pub ban_ms: u64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            rate_per_s: 500.0,
            burst: 1000.0,
            new_peer_tokens: 20.0,
            newcomer_pool_rate_per_s: 100.0,
            newcomer_pool_burst: 200.0,
            probation_ms: 10_000,
            probation_rate_per_s: 250.0,
            max_peers: 4096,
            // 50 invalid items within a few seconds: honest nodes validate before they
            // forward, so they send none (refusals by our clock or quota are not offences).
            ban_score: 50.0,
            // An honest relay forwarding a burst twice its budget adds 0.5/s, well under the
            // 5/s forgiven; a flood ten times over the budget is banned within seconds.
            over_budget_weight: 1.0 / 500.0,
            forgive_per_s: 5.0,
            ban_ms: 5 * 60 * 1000,
        }
    }
}

/// Most times an initiator sends again a sync request its peer refused for budget
/// ([`Refusal::OverBudget`]) before it takes the refusal as the answer (and its session ends
/// until the next one). See [`over_budget_pause_ms`].
pub const OVER_BUDGET_RETRIES: u32 = 5;

/// How long an initiator waits before sending again a request of `cost` that its peer
/// refused for budget, the `attempt`-th time (0 first): the time a peer still on probation
/// under `config` takes to earn the request's cost, doubled each attempt; `None` once
/// [`OVER_BUDGET_RETRIES`] are spent. With the node's budget a sync request waits 16, 32,
/// 64, 128 and 256 ms (half a second in all).
///
/// Why: a node new to a peer starts with a few tokens there ([`BudgetConfig::new_peer_tokens`],
/// five requests' worth) and earns more within milliseconds. A catching-up session that
/// opens with a burst of requests is refused once its first tokens are spent; ending the
/// session there left a joiner idle until the next sync interval (seconds). Waiting a
/// refill's time and asking again costs the peer one more refused request (a share of an
/// offence point, [`BudgetConfig::over_budget_weight`]), and the doubling and the cap keep a
/// peer that stays refusing from holding the session.
pub fn over_budget_pause_ms(config: &BudgetConfig, cost: Cost, attempt: u32) -> Option<u64> {
    if attempt >= OVER_BUDGET_RETRIES || config.probation_rate_per_s <= 0.0 {
        return None;
    }
    let first = (cost.tokens() / config.probation_rate_per_s * 1000.0).ceil();
    // Finite and small: the cost is at most a few thousand tokens, the rate positive.
    let first = if first.is_finite() {
        first.clamp(1.0, 60_000.0) as u64
    } else {
        1
    };
    Some(first.saturating_mul(1 << attempt))
}

/// Why work was refused before it was looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// The peer has no tokens left for it.
    OverBudget,
    /// The peer is banned.
    Banned,
}

impl Refusal {
    /// Short name (a metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::OverBudget => "over_budget",
            Refusal::Banned => "banned",
        }
    }

    /// The error answer to a request refused this way: `refused: over_budget` (try later) or
    /// `refused: banned`. Requesters recognise a refusal by this text, so every path (sync,
    /// blobs) answers and matches with it.
    pub fn message(self) -> String {
        format!("refused: {}", self.as_str())
    }
}

/// A ban just decided: the caller disconnects the peer and tells the network layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ban {
    /// When it ends (same clock as `now_ms`).
    pub until_ms: u64,
    /// For how long, from now.
    pub duration_ms: u64,
    /// The offence score that crossed the threshold.
    pub score: f64,
}

/// The outcome of [`PeerBudget::charge`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Charge {
    /// Within budget: do the work.
    Allowed,
    /// Refused: drop the work (count it by `reason`); enact `ban` if one was just decided.
    Refused {
        /// Why.
        reason: Refusal,
        /// A ban this refusal triggered.
        ban: Option<Ban>,
    },
}

impl Charge {
    /// Whether the work may go ahead.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Charge::Allowed)
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    tokens: f64,
    /// Last refill.
    last_ms: u64,
    /// Last activity (a charge or an offence): eviction forgets the stalest.
    seen_ms: u64,
    first_ms: u64,
    score: f64,
    score_ms: u64,
    /// 0 when not banned.
    banned_until: u64,
}

impl Entry {
    fn new(tokens: f64, now_ms: u64) -> Self {
        Self {
            tokens,
            last_ms: now_ms,
            seen_ms: now_ms,
            first_ms: now_ms,
            score: 0.0,
            score_ms: now_ms,
            banned_until: 0,
        }
    }
}

/// One budget per peer across every ingest path, with offence scores and timed bans; generic
/// over the peer id, sans-IO (`now_ms` from any monotonic clock).
///
/// Bounded: at most [`BudgetConfig::max_peers`] entries. A new peer, when the table is full,
/// evicts an entry in this order: not banned before banned (a ban outlives eviction while
/// any other entry can go), still on probation before established, then idle longest. A
/// rotating attacker's ids therefore only ever evict each other, never an established
/// honest peer (pushing honest peers back into probation would itself be the attack), and
/// a peer that keeps misbehaving keeps its score because it stays active. The successor of an
/// evicted entry — a fresh id, or the evicted peer coming back — starts as every newcomer
/// does, with tokens from the shared newcomer pool (possibly none) and on probation, never
/// with a full bucket.
#[derive(Clone, Debug)]
pub struct PeerBudget<P> {
    config: BudgetConfig,
    peers: BTreeMap<P, Entry>,
    pool: f64,
    pool_ms: u64,
}

impl<P: Ord + Copy> PeerBudget<P> {
    /// An empty table (the newcomer pool starts full).
    pub fn new(config: BudgetConfig) -> Self {
        Self {
            pool: config.newcomer_pool_burst,
            config,
            peers: BTreeMap::new(),
            pool_ms: 0,
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    /// Peers tracked.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is tracked.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Peers banned at `now_ms`.
    pub fn banned(&self, now_ms: u64) -> usize {
        self.peers
            .values()
            .filter(|e| e.banned_until > now_ms)
            .count()
    }

    /// Whether `peer` is banned at `now_ms`.
    pub fn is_banned(&self, peer: &P, now_ms: u64) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|e| e.banned_until > now_ms)
    }

    /// Charges `cost` to `peer` at `now_ms`. Refused work is dropped by the caller; an
    /// over-budget refusal adds [`BudgetConfig::over_budget_weight`] to the peer's offence
    /// score and may decide a ban.
    pub fn charge(&mut self, peer: P, cost: Cost, now_ms: u64) -> Charge {
        let config = self.config;
        let entry = self.entry(peer, now_ms);
        if entry.banned_until > now_ms {
            return Charge::Refused {
                reason: Refusal::Banned,
                ban: None,
            };
        }
        Self::refill(&config, entry, now_ms);
        let tokens = cost.tokens().min(config.burst);
        if entry.tokens >= tokens {
            entry.tokens -= tokens;
            return Charge::Allowed;
        }
        let ban = Self::add_offence(&config, entry, config.over_budget_weight, now_ms);
        Charge::Refused {
            reason: Refusal::OverBudget,
            ban,
        }
    }

    /// Notes that `peer` connected at `now_ms`: a peer new to the table gets its entry now
    /// (its start from the newcomer pool, as on a first charge), so its probation runs from
    /// its connection, not from its first piece of work. A known peer is left as it is
    /// (reconnecting refills nothing and lifts no ban).
    ///
    /// Why: an uploader that never sent a storage node anything before its first put was on
    /// probation there for that whole put, though connected for minutes: the holder started
    /// it with the newcomer's 20 tokens and the probation rate, about 50 MiB/s of chunks
    /// (`deploy/blob-bench.sh`, a put 12 s after the cluster formed: 104 chunks refused, 0.86
    /// s instead of 0.63). A new id still has to connect and then wait out the probation
    /// before it earns the full rate, so rotating ids buys no more than before.
    pub fn connected(&mut self, peer: P, now_ms: u64) {
        let _ = self.entry(peer, now_ms);
    }

    /// Records `count` invalid items from `peer` (undecodable or invalid records, undecodable
    /// requests); returns the ban this decides, if any. A peer already banned gets no new ban.
    pub fn offence(&mut self, peer: P, count: u32, now_ms: u64) -> Option<Ban> {
        let config = self.config;
        let entry = self.entry(peer, now_ms);
        if entry.banned_until > now_ms || count == 0 {
            return None;
        }
        Self::add_offence(&config, entry, f64::from(count), now_ms)
    }

    fn add_offence(config: &BudgetConfig, e: &mut Entry, weight: f64, now_ms: u64) -> Option<Ban> {
        let forgiven = now_ms.saturating_sub(e.score_ms) as f64 / 1000.0 * config.forgive_per_s;
        e.score = (e.score - forgiven).max(0.0) + weight;
        e.score_ms = e.score_ms.max(now_ms);
        if e.score < config.ban_score {
            return None;
        }
        let ban = Ban {
            until_ms: now_ms.saturating_add(config.ban_ms),
            duration_ms: config.ban_ms,
            score: e.score,
        };
        e.banned_until = ban.until_ms.max(1);
        // After the ban the peer starts over: no saved tokens, no score.
        e.score = 0.0;
        e.tokens = 0.0;
        Some(ban)
    }

    fn refill(config: &BudgetConfig, e: &mut Entry, now_ms: u64) {
        // A clock that steps back refills nothing.
        let (from, to) = (e.last_ms, now_ms.max(e.last_ms));
        let probation_end = e.first_ms.saturating_add(config.probation_ms);
        let in_probation = to.min(probation_end).saturating_sub(from);
        let after = (to - from) - in_probation;
        e.tokens = (e.tokens
            + in_probation as f64 / 1000.0 * config.probation_rate_per_s
            + after as f64 / 1000.0 * config.rate_per_s)
            .min(config.burst);
        e.last_ms = to;
    }

    /// The entry of `peer`, created (from the newcomer pool, evicting if full) if missing.
    fn entry(&mut self, peer: P, now_ms: u64) -> &mut Entry {
        if !self.peers.contains_key(&peer) {
            if self.peers.len() >= self.config.max_peers.max(1) {
                let victim = self
                    .peers
                    .iter()
                    .min_by(|(_, a), (_, b)| {
                        let established = |e: &Entry| {
                            now_ms.saturating_sub(e.first_ms) >= self.config.probation_ms
                        };
                        let key = |e: &Entry| (e.banned_until > now_ms, established(e), e.seen_ms);
                        key(a).cmp(&key(b))
                    })
                    .map(|(p, _)| *p);
                if let Some(v) = victim {
                    self.peers.remove(&v);
                }
            }
            // The newcomer pool: every new entry's first tokens come from here.
            let refill = now_ms.saturating_sub(self.pool_ms) as f64 / 1000.0
                * self.config.newcomer_pool_rate_per_s;
            self.pool = (self.pool + refill).min(self.config.newcomer_pool_burst);
            self.pool_ms = self.pool_ms.max(now_ms);
            let tokens = self.pool.min(self.config.new_peer_tokens).max(0.0);
            self.pool -= tokens;
            self.peers.insert(peer, Entry::new(tokens, now_ms));
        }
        let e = self
            .peers
            .entry(peer)
            .or_insert_with(|| Entry::new(0.0, now_ms));
        e.seen_ms = e.seen_ms.max(now_ms);
        if e.banned_until != 0 && e.banned_until <= now_ms {
            // The ban is over: the peer earns tokens again from now (nothing for the ban).
            e.banned_until = 0;
            e.last_ms = now_ms;
        }
        e
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::ValidationError;

    /// A config with round numbers for the tests: no probation, a pool big enough to give
    /// every newcomer its full start, unless a test says otherwise.
    fn simple() -> BudgetConfig {
        BudgetConfig {
            rate_per_s: 10.0,
            burst: 5.0,
            new_peer_tokens: 5.0,
            newcomer_pool_rate_per_s: 1000.0,
            newcomer_pool_burst: 1000.0,
            probation_ms: 0,
            probation_rate_per_s: 10.0,
            max_peers: 16,
            ban_score: 10.0,
            over_budget_weight: 0.5,
            forgive_per_s: 1.0,
            ban_ms: 1000,
        }
    }

    fn allowed(b: &mut PeerBudget<u32>, peer: u32, cost: Cost, n: usize, now: u64) -> usize {
        (0..n)
            .filter(|_| b.charge(peer, cost, now).is_allowed())
            .count()
    }

    #[test]
    fn a_peer_over_its_budget_is_refused_and_recovers() {
        let mut b = PeerBudget::new(BudgetConfig {
            over_budget_weight: 0.0,
            ..simple()
        });
        assert_eq!(allowed(&mut b, 1, Cost::Gossip, 8, 0), 5);
        // Another peer is not affected.
        assert!(b.charge(2, Cost::Gossip, 0).is_allowed());
        // 10 tokens/s: 300 ms later three more.
        assert_eq!(allowed(&mut b, 1, Cost::Gossip, 8, 300), 3);
    }

    #[test]
    fn every_ingest_path_draws_on_the_same_budget() {
        let mut b = PeerBudget::new(BudgetConfig {
            over_budget_weight: 0.0,
            ..simple()
        });
        // A push of 8 records costs 3 tokens, a sync request 4: the 5 tokens are gone.
        assert!(b.charge(1, Cost::SyncPush { records: 8 }, 0).is_allowed());
        assert_eq!(
            b.charge(1, Cost::SyncRequest, 0),
            Charge::Refused {
                reason: Refusal::OverBudget,
                ban: None
            }
        );
        assert_eq!(allowed(&mut b, 1, Cost::Gossip, 5, 0), 2);
        // A 4 MiB blob request costs 17 tokens, more than the burst: charged as a full burst.
        assert_eq!(Cost::Blob { bytes: 4 << 20 }.tokens(), 17.0);
        assert!(b
            .charge(1, Cost::Blob { bytes: 4 << 20 }, 1000)
            .is_allowed());
        assert!(!b.charge(1, Cost::Gossip, 1000).is_allowed());
    }

    #[test]
    fn a_peer_sending_invalid_items_is_banned_then_refused_until_the_ban_ends() {
        let mut b = PeerBudget::new(simple());
        assert_eq!(b.offence(1, 9, 0), None);
        let ban = b.offence(1, 1, 0).expect("ban at the threshold");
        assert_eq!((ban.until_ms, ban.duration_ms), (1000, 1000));
        assert!(b.is_banned(&1, 999));
        assert_eq!(b.banned(999), 1);
        assert_eq!(
            b.charge(1, Cost::Gossip, 999),
            Charge::Refused {
                reason: Refusal::Banned,
                ban: None
            }
        );
        // No second ban while banned.
        assert_eq!(b.offence(1, 100, 999), None);
        // After the ban: no tokens saved up during it, earning again from now.
        assert!(!b.charge(1, Cost::Gossip, 1000).is_allowed());
        assert!(b.charge(1, Cost::Gossip, 1100).is_allowed());
    }

    #[test]
    fn offences_are_forgiven_over_time() {
        let mut b = PeerBudget::new(simple());
        // 9 offences, then 9 more 9 s later: 1/s forgiven, so never 10 at once.
        assert_eq!(b.offence(1, 9, 0), None);
        assert_eq!(b.offence(1, 9, 9000), None);
        assert!(b.offence(1, 2, 9000).is_some());
    }

    #[test]
    fn a_refused_sync_request_is_sent_again_after_a_refill_doubling_five_times() {
        let c = BudgetConfig::default();
        let pauses: Vec<Option<u64>> = (0..=OVER_BUDGET_RETRIES)
            .map(|a| over_budget_pause_ms(&c, Cost::SyncRequest, a))
            .collect();
        assert_eq!(
            pauses,
            vec![Some(16), Some(32), Some(64), Some(128), Some(256), None],
            "4 tokens at the probation rate of 250 a second take 16 ms"
        );
        let stalled = BudgetConfig {
            probation_rate_per_s: 0.0,
            ..c
        };
        assert_eq!(over_budget_pause_ms(&stalled, Cost::SyncRequest, 0), None);
    }

    #[test]
    fn a_flood_far_over_budget_is_banned_an_honest_relay_twice_over_is_not() {
        let mut b = PeerBudget::new(BudgetConfig::default());
        let (flood, relay) = (1u32, 2u32);
        let mut banned_at = None;
        let mut relay_refused = 0;
        // 60 s in 10 ms steps: the flood sends 100 valid messages per step (10k/s), the
        // relay 10 (1k/s, twice the 500/s budget).
        for ms in (0..60_000u64).step_by(10) {
            for _ in 0..100 {
                if let Charge::Refused { ban: Some(_), .. } = b.charge(flood, Cost::Gossip, ms) {
                    banned_at.get_or_insert(ms);
                }
            }
            for _ in 0..10 {
                match b.charge(relay, Cost::Gossip, ms) {
                    Charge::Allowed => {}
                    Charge::Refused { ban, .. } => {
                        assert_eq!(ban, None, "honest relay banned at {ms} ms");
                        relay_refused += 1;
                    }
                }
            }
        }
        let at = banned_at.expect("the flood is banned");
        assert!(at < 10_000, "banned only after {at} ms");
        assert!(relay_refused > 0);
        assert!(!b.is_banned(&relay, 60_000));
    }

    #[test]
    fn probation_runs_from_the_connection_not_from_the_first_request() {
        let config = BudgetConfig::default();
        let mut b = PeerBudget::new(config);
        let chunk = Cost::Blob { bytes: 1 << 20 };
        let burst = |b: &mut PeerBudget<u32>, id: u32, ms: u64| {
            (0..400)
                .filter(|_| b.charge(id, chunk, ms).is_allowed())
                .count()
        };
        // Peer 1 connected 12 s ago and sent nothing since: its bucket is full.
        b.connected(1, 0);
        let full = (config.burst / chunk.tokens()) as usize;
        assert_eq!(burst(&mut b, 1, 12_000), full);
        // Peer 2 is first heard of now: the newcomer's start only, and probation.
        let start = (config.new_peer_tokens / chunk.tokens()) as usize;
        assert_eq!(burst(&mut b, 2, 12_000), start);
        // Connecting again refills nothing.
        b.connected(1, 12_000);
        assert_eq!(burst(&mut b, 1, 12_000), 0);
        // Nor does it lift a ban.
        let strict = BudgetConfig {
            ban_score: 2.0,
            ..config
        };
        let mut b = PeerBudget::new(strict);
        assert!(b.offence(3, 2, 0).is_some());
        b.connected(3, 1);
        assert!(!b.charge(3, Cost::Gossip, 2).is_allowed());
    }

    #[test]
    fn rotating_peer_ids_gets_at_most_the_newcomer_pool_more_than_keeping_one() {
        // Default limits but a smaller table (the scan is per new id); one attacker at 10k
        // messages/s for 10 s, in 10 ms steps.
        let config = BudgetConfig {
            // No bans here: this measures what the budget alone lets through.
            ban_score: f64::INFINITY,
            max_peers: 256,
            ..BudgetConfig::default()
        };
        let run = |rotate_every: Option<u64>| {
            let mut b = PeerBudget::new(config);
            let mut ok = 0u64;
            let mut sent = 0u64;
            for ms in (0..10_000u64).step_by(10) {
                for _ in 0..100 {
                    let id = rotate_every.map_or(0, |k| sent / k);
                    sent += 1;
                    ok += u64::from(b.charge(id, Cost::Gossip, ms).is_allowed());
                }
            }
            (ok, b.len())
        };
        let (steady, _) = run(None);
        // Probation: the start plus 250/s for 10 s.
        assert!((2_500..=2_600).contains(&steady), "steady id got {steady}");
        let pool = config.newcomer_pool_burst + config.newcomer_pool_rate_per_s * 10.0;
        for k in [1, 5, 50, 1000, 10_000] {
            let (rotating, tracked) = run(Some(k));
            assert!(
                rotating as f64 <= steady as f64 + pool,
                "rotating every {k} got {rotating}, steady {steady}"
            );
            assert!(tracked <= config.max_peers);
        }
    }

    #[test]
    fn eviction_forgets_abandoned_ids_not_active_peers_and_never_refills_a_successor() {
        let mut b = PeerBudget::new(BudgetConfig {
            max_peers: 8,
            newcomer_pool_rate_per_s: 0.0,
            newcomer_pool_burst: 10.0,
            probation_ms: 1000,
            ..simple()
        });
        // Two honest peers active every 200 ms, established before the attack starts at 1 s;
        // the attacker uses a new id every 10 ms and misbehaves once per id.
        for ms in (0..10_000u64).step_by(10) {
            if ms % 200 == 0 {
                assert!(b.charge(1, Cost::Gossip, ms).is_allowed(), "peer 1 at {ms}");
                assert!(b.charge(2, Cost::Gossip, ms).is_allowed(), "peer 2 at {ms}");
            }
            if ms < 1000 {
                continue;
            }
            let id = 1000 + ms as u32;
            assert!(!b.charge(id, Cost::Gossip, ms).is_allowed());
            b.offence(id, 1, ms);
        }
        assert_eq!(b.len(), 8);
        // The pool (10 tokens, never refilled) went to the two honest peers: every attacker
        // id — and every successor of an evicted one — started with nothing.
        assert!(!b.charge(5_000_000, Cost::Gossip, 10_000).is_allowed());
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
