//! Storage and compute offers: what this node offers, and the live offers of the whole network.
//!
//! An offer is an ordinary signed record under a reserved label (`_offer-storage`,
//! `_offer-compute`) in the node's own zone — the zone key is the node's libp2p ed25519
//! identity, so an offer's zone *is* its node's peer id and nobody else can offer on its
//! behalf. Riding on the record machinery means offers gossip, sync, persist and merge exactly
//! like names. Each refresh publishes a higher seq with an expiry of [`EXPIRY_REFRESHES`]
//! refresh intervals, so a dead node's offers lapse by themselves within about three intervals
//! and no one has to delete them.
//!
//! Offers are self-asserted, so which ones *count* is decided by the offer view in
//! [`dpin_protocol::offer`]: an offer counts only while its node is a live member (this node,
//! or a peer that proved its id on a connection and is not confirmed down, or is still
//! connected and was heard from within [`MEMBER_GRACE_MS`], or went down with its connection
//! closed less than [`DOWN_GRACE_MS`] ago, see [`members`]) and only if it expires within
//! [`dpin_protocol::offer::MAX_OFFER_LIFETIME_MS`]; a node's own refresh interval is capped
//! to a third of that. Fake offers from keys that never connected therefore never enter the
//! rendezvous order; records ignored are shown by [`OfferStats`].
//!
//! The seq of every record the node signs for itself (offers here, blob manifests in
//! [`crate::blobs`]) comes from [`own_seq`]: the wall clock in ms, but never below one above
//! the floor the store holds for the name. The floor persists across restarts, so after the
//! clock steps back (NTP correction, a VM restored, a restart under a skewed clock) the node's
//! own refreshes still win instead of being refused as stale until the clock catches up —
//! which left its offers stuck at old content (free room, capacity), and a node that died
//! then looked alive for as long as the step. Millisecond seqs sit far below the protocol's
//! time-tied seq ceiling (microseconds), so the floor + 1 step never nears it.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use dpin_protocol::blob::StorageCandidate;
use dpin_protocol::offer::{Ignored, IgnoredCounts, Offer, Terms, MAX_OFFER_REFRESH_MS};
use dpin_protocol::record::{COMPUTE_OFFER_LABEL, STORAGE_OFFER_LABEL};
use dpin_protocol::{
    ComputeOffer, Content, RecordBody, SignedRecord, StorageOffer, ZoneId, ZoneKey,
};
use libp2p::identity::Keypair;
use libp2p::PeerId;

use crate::clock::now_ms;

/// What the offer view and the offer refresher need from the node. The node implements it
/// (`node.rs`); this module does not import the node.
pub trait OfferHost {
    /// This node's peer id.
    fn local_peer_id(&self) -> PeerId;
    /// The failure detector's monotonic clock (ms).
    fn mono_ms(&self) -> u64;
    /// The failure detector's table.
    fn peers(&self) -> BTreeMap<PeerId, dpin_protocol::liveness::PeerInfo>;
    /// The signed records held under a reserved name prefix (`_offer-`, `_blob-`): every held
    /// body, or with `live_at` only those of entries live at that time (Unix ms).
    fn reserved_records(&self, prefix: &str, live_at: Option<u64>) -> Vec<SignedRecord>;
    /// The floor seq held for `name` (kept across restarts), if any.
    fn floor_seq(&self, name: &str) -> Option<u64>;
}

/// What the offer refresher ([`run`]) needs besides [`OfferHost`]: to publish this node's
/// offers and to bound the storage others may write to it.
pub trait OfferPublisher: OfferHost {
    /// Applies and gossips one of this node's own records; the merge outcome, or why not.
    fn publish_own(
        &self,
        record: SignedRecord,
    ) -> impl Future<Output = Result<dpin_protocol::Outcome, String>> + Send;
    /// Takes blob writes from others only within `bytes` (none when `None`).
    fn set_storage_capacity(&self, bytes: Option<u64>);
}

/// An offer expires after this many refresh intervals without a refresh.
pub const EXPIRY_REFRESHES: u32 = 3;

/// What this node offers (from the command line).
#[derive(Clone, Debug, Default)]
pub struct LocalOffers {
    /// Storage capacity in bytes, if offered.
    pub storage_bytes: Option<u64>,
    /// Compute cores, if offered.
    pub cores: Option<u32>,
    /// Memory offered with the cores.
    pub memory_bytes: u64,
    /// GPUs offered with the cores.
    pub gpus: u32,
    /// Region tag.
    pub region: String,
    /// Price in thousandths of a unit.
    pub price_milli: u64,
    /// Refresh interval.
    pub refresh: Duration,
}

/// The node's zone key for offers, derived from its libp2p identity (same ed25519 key).
pub fn zone_key(identity: &Keypair) -> Option<ZoneKey> {
    let ed = identity.clone().try_into_ed25519().ok()?;
    let secret = ed.secret();
    let seed: [u8; 32] = secret.as_ref().try_into().ok()?;
    Some(ZoneKey::from_seed(seed))
}

/// The peer id that owns an offer zone.
pub fn peer_of(zone: &ZoneId) -> Option<libp2p::PeerId> {
    let pk = libp2p::identity::ed25519::PublicKey::try_from_bytes(&zone.0).ok()?;
    Some(libp2p::PeerId::from_public_key(&pk.into()))
}

/// The seq for a record this node signs for itself: `now_ms`, raised to one above `floor` (the
/// highest seq the store holds for the name) when the clock is behind it, and at least 1.
/// Saturating: a floor at `u64::MAX` (refused by the protocol's seq ceiling anyway) yields
/// `u64::MAX`, which the merge rule then reports as a duplicate or conflict, never a wrap to 0.
pub fn own_seq(now_ms: u64, floor: Option<u64>) -> u64 {
    let above_floor = floor.map_or(1, |f| f.saturating_add(1));
    now_ms.max(above_floor)
}

/// The floor seq the node's store holds for `name` (kept across restarts), if any.
pub fn held_floor(node: &impl OfferHost, name: &str) -> Option<u64> {
    node.floor_seq(name)
}

/// Signs this node's current offers (the lifetime is [`EXPIRY_REFRESHES`] refreshes, at most
/// [`dpin_protocol::offer::MAX_OFFER_LIFETIME_MS`], beyond which other nodes ignore an offer). `free_bytes` is what storage still has room for; `floor`
/// gives the store's floor seq for a record name (see [`own_seq`]).
pub fn sign_offers(
    key: &ZoneKey,
    offers: &LocalOffers,
    free_bytes: u64,
    now: u64,
    floor: impl Fn(&str) -> Option<u64>,
) -> Vec<SignedRecord> {
    let lifetime = offers.refresh.saturating_mul(EXPIRY_REFRESHES).as_millis();
    let lifetime = u64::try_from(lifetime)
        .unwrap_or(u64::MAX)
        .min(dpin_protocol::offer::MAX_OFFER_LIFETIME_MS);
    let expires = now.saturating_add(lifetime);
    let mut out = Vec::new();
    let mut push = |label: &str, content: Content| {
        let mut body = RecordBody {
            zone: key.zone(),
            label: label.to_owned(),
            seq: 1,
            expires_at_ms: expires,
            content,
        };
        // The clock as seq, kept above the held floor: every refresh (and every restart, even
        // after the clock stepped back) supersedes the last one.
        body.seq = own_seq(now, floor(&body.name()));
        match body.sign(key) {
            Ok(r) => out.push(r),
            Err(e) => tracing::error!(%e, "cannot sign offer; check --offer-* flags"),
        }
    };
    if let Some(capacity) = offers.storage_bytes {
        push(
            STORAGE_OFFER_LABEL,
            Content::StorageOffer(StorageOffer {
                capacity_bytes: capacity,
                free_bytes: free_bytes.min(capacity),
                price_milli: offers.price_milli,
                region: offers.region.clone(),
            }),
        );
    }
    if let Some(cores) = offers.cores {
        push(
            COMPUTE_OFFER_LABEL,
            Content::ComputeOffer(ComputeOffer {
                cores,
                memory_bytes: offers.memory_bytes,
                gpus: offers.gpus,
                price_milli: offers.price_milli,
                region: offers.region.clone(),
            }),
        );
    }
    out
}

/// Publishes this node's offers now and then every refresh interval, forever.
pub async fn run(
    node: impl OfferPublisher,
    key: ZoneKey,
    offers: LocalOffers,
    free: impl Fn() -> u64 + Send + 'static,
) {
    // The blob store takes writes from others only within the storage this node offers
    // (nothing without `--offer-storage`).
    node.set_storage_capacity(offers.storage_bytes);
    if offers.storage_bytes.is_none() && offers.cores.is_none() {
        return;
    }
    let mut offers = offers;
    let longest = Duration::from_millis(MAX_OFFER_REFRESH_MS);
    if offers.refresh > longest {
        tracing::warn!(
            refresh_ms = offers.refresh.as_millis() as u64,
            max_ms = MAX_OFFER_REFRESH_MS,
            "offer refresh interval shortened: other nodes ignore offers that expire further ahead than three of these"
        );
        offers.refresh = longest;
    }
    let mut tick = tokio::time::interval(offers.refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let floor = |name: &str| held_floor(&node, name);
        for record in sign_offers(&key, &offers, free(), now_ms(), floor) {
            match node.publish_own(record).await {
                Ok(outcome) if outcome.is_winner() => {}
                Ok(outcome) => {
                    tracing::warn!(outcome = outcome.kind(), "offer refresh not applied")
                }
                Err(e) => tracing::warn!(%e, "offer refresh failed"),
            }
        }
    }
}

/// One live offer as the API and CLI show it (the API contract's type).
pub use crate::contract::OfferView;

pub use dpin_protocol::offer::OfferFilter;

/// A peer stays a member this long after its last evidence of life (a message or probe
/// answer on a connection that proved its id) while its connection stays open, even if the
/// failure detector marked it down: on a loaded machine the detector flaps, and a holder that
/// missed a few probes must not be replaced. A hung node (connected, silent) therefore stops
/// counting after this grace or when its offers expire (three refreshes), whichever comes
/// first. A key that never connected is never a member.
pub const MEMBER_GRACE_MS: u64 = 30_000;

/// A peer the failure detector has confirmed down *and* whose connections are all closed
/// stops being a member this long after it went down. A closed connection is not a guess
/// (SIGKILL or a crash closes TCP at once): waiting for the 30 s [`MEMBER_GRACE_MS`] or for
/// the offer to lapse is what made blob repair restore `K` copies 28 s after a holder died.
/// The grace covers the node's own re-dial of a stuck connection (it closes the connection
/// of a connected peer it confirms down and dials again) and a brief disconnect: a live peer
/// that reconnects within it never leaves. A false leave costs one extra blob copy, collected
/// later as surplus, never a lost one.
pub const DOWN_GRACE_MS: u64 = 2_000;

/// Whether a peer with detector state `info` is a live member at `now` (monotonic ms): not
/// confirmed down; or down but still connected and heard from within [`MEMBER_GRACE_MS`]; or
/// down and disconnected for less than [`DOWN_GRACE_MS`].
pub fn is_live_member(info: &dpin_protocol::liveness::PeerInfo, now: u64) -> bool {
    use dpin_protocol::liveness::PeerStatus;
    let heard_recently = now.saturating_sub(info.last_heard_ms) < MEMBER_GRACE_MS;
    match info.status {
        PeerStatus::Alive | PeerStatus::Suspect => true,
        PeerStatus::Down if info.connected => heard_recently,
        PeerStatus::Down => heard_recently && now.saturating_sub(info.since_ms) < DOWN_GRACE_MS,
    }
}

/// Whether `peer` is a live member as this node sees it: this node itself, or a peer that
/// proved its id on a connection and that [`is_live_member`] admits. Only members' offers
/// count ([`dpin_protocol::offer`]).
///
/// Membership is judged from this node's own connections, so in a network larger than the
/// connection limit a real storage node this node is not connected to does not count here.
pub fn members<N: OfferHost>(node: &N) -> impl Fn(&PeerId) -> bool + use<N> {
    let me = node.local_peer_id();
    let live = live_peers(node);
    move |p: &PeerId| *p == me || live.contains(p)
}

/// The peers [`is_live_member`] admits now (this node excluded). Cheap: the failure
/// detector's table, bounded by the connection limit; no store access.
pub fn live_peers(node: &impl OfferHost) -> BTreeSet<PeerId> {
    let now = node.mono_ms();
    node.peers()
        .into_iter()
        .filter(|(_, i)| is_live_member(i, now))
        .map(|(p, _)| p)
        .collect()
}

/// The offers that count at `now` (Unix ms): unexpired, expiring within
/// [`dpin_protocol::offer::MAX_OFFER_LIFETIME_MS`], from live members.
pub fn offer_view(node: &impl OfferHost, now: u64) -> dpin_protocol::offer::OfferView<PeerId> {
    let is_member = members(node);
    // The store's reserved-name index: reads the offers only, not every name.
    let records = node.reserved_records("_offer-", None);
    dpin_protocol::offer::OfferView::build(&records, now, peer_of, is_member)
}

/// Live offers held by `node` that match `filter`, cheapest first (ties by peer id, so the
/// order is the same on every node).
pub fn list(node: &impl OfferHost, filter: &OfferFilter, now: u64) -> Vec<OfferView> {
    offer_view(node, now)
        .list(filter)
        .into_iter()
        .map(view)
        .collect()
}

/// The storage offers that count at `now`, for placement.
pub fn storage_candidates(node: &impl OfferHost, now: u64) -> Vec<StorageCandidate<PeerId>> {
    offer_view(node, now).storage()
}

/// Offer records held but not counted, by reason (a gauge: what the store holds now).
#[derive(Clone, Copy, Debug, Default)]
pub struct OfferStats {
    /// Offers that count.
    pub counted: u64,
    /// Records ignored, by reason.
    pub ignored: IgnoredCounts,
}

impl OfferStats {
    /// The current counts at `now`.
    pub fn of(node: &impl OfferHost, now: u64) -> Self {
        let v = offer_view(node, now);
        Self {
            counted: v.list(&OfferFilter::default()).len() as u64,
            ignored: v.ignored(),
        }
    }

    /// For `/metrics`.
    pub fn encode(
        &self,
        e: &mut prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        use crate::metrics::{gauge, gauge_family, to_i64};
        gauge(
            e,
            "dpin_offers_counted",
            "Offers that count: unexpired, bounded expiry, live member.",
            to_i64(self.counted),
        )?;
        gauge_family(
            e,
            "dpin_offers_ignored",
            "Offer records held but not counted, by reason.",
            Ignored::ALL.map(|why| ([("reason", why.as_str())], to_i64(self.ignored.get(why)))),
        )
    }

    /// JSON for status.
    pub fn to_json(&self) -> serde_json::Value {
        let ignored: serde_json::Map<String, serde_json::Value> = Ignored::ALL
            .iter()
            .map(|w| (w.as_str().to_owned(), self.ignored.get(*w).into()))
            .collect();
        serde_json::json!({"counted": self.counted, "ignored": ignored})
    }
}

fn view(o: &Offer<PeerId>) -> OfferView {
    let base = OfferView {
        kind: o.terms.kind().into(),
        peer_id: o.peer.to_string(),
        zone: o.zone.to_string(),
        capacity_bytes: None,
        free_bytes: None,
        cores: None,
        memory_bytes: None,
        gpus: None,
        price_milli: o.terms.price_milli(),
        region: o.terms.region().to_owned(),
        expires_at_ms: o.expires_at_ms,
    };
    match &o.terms {
        Terms::Storage(s) => OfferView {
            capacity_bytes: Some(s.capacity_bytes),
            free_bytes: Some(s.free_bytes),
            ..base
        },
        Terms::Compute(c) => OfferView {
            cores: Some(c.cores),
            memory_bytes: Some(c.memory_bytes),
            gpus: Some(c.gpus),
            ..base
        },
    }
}

/// Parses a byte size: plain bytes or with K/M/G/T (powers of 1024; `KiB`, `MB` etc. accepted).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?}; use e.g. 500M, 10G, 1T"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("bad size unit in {s:?}; use K, M, G or T")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Parses a price like `0.25` into thousandths.
pub fn parse_price(s: &str) -> Result<u64, String> {
    let bad = || format!("bad price {s:?}; use a decimal like 0.25");
    let (int, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let frac_milli: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<3}").parse().map_err(|_| bad())?
    };
    int.checked_mul(1000)
        .and_then(|v| v.checked_add(frac_milli))
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(
        status: dpin_protocol::liveness::PeerStatus,
        connected: bool,
    ) -> dpin_protocol::liveness::PeerInfo {
        dpin_protocol::liveness::PeerInfo {
            status,
            since_ms: 10_000,
            connected,
            last_heard_ms: 9_000,
            rtt: None,
            probe: dpin_protocol::liveness::Probe::Idle,
            watched_by_ms: None,
        }
    }

    #[test]
    fn a_peer_down_with_its_connection_closed_leaves_after_the_short_grace() {
        use dpin_protocol::liveness::PeerStatus::{Alive, Down, Suspect};
        // Down at 10 s, disconnected: a member within the grace, gone after it.
        let dead = peer(Down, false);
        assert!(is_live_member(&dead, 10_000 + DOWN_GRACE_MS - 1));
        assert!(!is_live_member(&dead, 10_000 + DOWN_GRACE_MS));
        // Down by silence but still connected (a loaded or hung node): the long grace from
        // its last sign of life.
        let hung = peer(Down, true);
        assert!(is_live_member(&hung, 9_000 + MEMBER_GRACE_MS - 1));
        assert!(!is_live_member(&hung, 9_000 + MEMBER_GRACE_MS));
        // Alive or suspect: always a member.
        assert!(is_live_member(&peer(Alive, true), u64::MAX));
        assert!(is_live_member(&peer(Suspect, true), u64::MAX));
    }

    #[test]
    fn sizes_and_prices_parse() {
        assert_eq!(parse_bytes("512"), Ok(512));
        assert_eq!(parse_bytes("8M"), Ok(8 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert!(parse_bytes("1X").is_err());
        assert!(parse_bytes("99999999999T").is_err());
        assert_eq!(parse_price("0.25"), Ok(250));
        assert_eq!(parse_price("3"), Ok(3000));
        assert_eq!(parse_price(".5"), Ok(500));
        assert!(parse_price("0.0001").is_err());
        assert!(parse_price("abc").is_err());
    }

    #[test]
    fn offer_zone_is_the_node_identity() {
        let kp = Keypair::generate_ed25519();
        let key = zone_key(&kp).expect("ed25519 identity");
        assert_eq!(peer_of(&key.zone()), Some(kp.public().to_peer_id()));
    }

    #[test]
    fn signed_offers_are_valid_and_expire_after_three_refreshes() {
        let kp = Keypair::generate_ed25519();
        let key = zone_key(&kp).expect("ed25519 identity");
        let offers = LocalOffers {
            storage_bytes: Some(1 << 30),
            cores: Some(8),
            memory_bytes: 16 << 30,
            gpus: 1,
            region: "eu-west".into(),
            price_milli: 250,
            refresh: Duration::from_secs(10),
        };
        let recs = sign_offers(&key, &offers, 1 << 29, 1_000_000, |_| None);
        assert_eq!(recs.len(), 2);
        for r in &recs {
            assert_eq!(
                r.validate(1_000_000, dpin_protocol::Freshness::Publish),
                Ok(())
            );
            assert_eq!(r.body.expires_at_ms, 1_030_000);
            assert_eq!(r.body.seq, 1_000_000);
        }
    }

    #[test]
    fn offers_signed_after_the_clock_stepped_back_stay_above_the_held_floor() {
        let kp = Keypair::generate_ed25519();
        let key = zone_key(&kp).expect("ed25519 identity");
        let offers = LocalOffers {
            storage_bytes: Some(1 << 30),
            refresh: Duration::from_secs(10),
            ..LocalOffers::default()
        };
        // Last refresh at 10:00 by the clock; the clock then steps back 10 minutes.
        let before = 36_000_000u64;
        let after_step = before - 600_000;
        let held = |name: &str| name.starts_with(STORAGE_OFFER_LABEL).then_some(before);
        let recs = sign_offers(&key, &offers, 1 << 29, after_step, held);
        assert_eq!(recs.len(), 1);
        assert_eq!(
            recs[0].body.seq,
            before + 1,
            "a refresh must beat the held floor"
        );
        assert_eq!(recs[0].body.expires_at_ms, after_step + 30_000);
        // Each later refresh (the store's floor following it) keeps climbing by one until the
        // clock passes the floor, then follows the clock again.
        let next = sign_offers(&key, &offers, 1 << 29, after_step + 10_000, |_| {
            Some(before + 1)
        });
        assert_eq!(next[0].body.seq, before + 2);
        let caught_up = sign_offers(&key, &offers, 1 << 29, before + 5_000, |_| Some(before + 2));
        assert_eq!(caught_up[0].body.seq, before + 5_000);
    }

    #[test]
    fn own_seq_is_the_clock_or_one_above_the_floor_and_never_wraps() {
        assert_eq!(own_seq(1_000, None), 1_000);
        assert_eq!(own_seq(0, None), 1);
        assert_eq!(own_seq(1_000, Some(5_000)), 5_001);
        assert_eq!(own_seq(9_000, Some(5_000)), 9_000);
        assert_eq!(own_seq(0, Some(u64::MAX)), u64::MAX);
    }
}
