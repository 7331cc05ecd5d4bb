//! The offer view: which storage and compute offers count, in what order, as a pure function of
//! the held offer records, the time and the set of live members.
//!
//! An offer is self-asserted: any key can sign "1 PiB free, price 0, valid for 30 days". Two
//! rules make that harmless:
//!
//! * **Membership.** An offer counts only while its node is a live member: the driver passes
//!   `is_member(peer)`, which is true only for a peer that proved its id on a connection (the
//!   libp2p handshake proves the key, and an offer's zone *is* its node's key, so the peer id
//!   follows from the zone) and that the failure detector has not confirmed down. Offers
//!   signed by keys that never connected — a thousand fake offers from one attacker — are
//!   ignored, so they cannot push real nodes out of the rendezvous order. "An offer lapses
//!   when its node dies" then holds for every node, not only for honest ones.
//! * **Bounded lifetime.** An offer must expire within [`MAX_OFFER_LIFETIME_MS`] of now (a few
//!   refresh intervals), so one signature cannot keep an offer alive for 30 days. Offers that
//!   claim longer are ignored, not shortened: a node that means it refreshes anyway.
//!
//! Ignored offers are counted by reason ([`Ignored`]) so the driver can show them.
//!
//! The view is generic over the peer id (libp2p's `PeerId` in the node, an index in the
//! simulator); [`OfferView::list`] orders offers cheapest first, ties by peer then kind, the
//! same on every node that holds the same offers.

use serde::{Deserialize, Serialize};

use crate::record::{ComputeOffer, Content, SignedRecord, StorageOffer};
use crate::ZoneId;

/// Longest time ahead an offer may expire: 10 minutes, i.e. three refreshes at the longest
/// refresh interval a node uses ([`MAX_OFFER_REFRESH_MS`]). Offers claiming a later expiry are
/// ignored.
pub const MAX_OFFER_LIFETIME_MS: u64 = 10 * 60 * 1000;
/// Longest refresh interval a node uses for its own offers; with three refreshes of lifetime
/// this fits [`MAX_OFFER_LIFETIME_MS`].
pub const MAX_OFFER_REFRESH_MS: u64 = MAX_OFFER_LIFETIME_MS / 3;

/// What an offer offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Terms {
    /// Storage.
    Storage(StorageOffer),
    /// Compute.
    Compute(ComputeOffer),
}

impl Terms {
    /// `storage` or `compute`.
    pub fn kind(&self) -> &'static str {
        match self {
            Terms::Storage(_) => "storage",
            Terms::Compute(_) => "compute",
        }
    }

    /// Price in thousandths of a unit.
    pub fn price_milli(&self) -> u64 {
        match self {
            Terms::Storage(o) => o.price_milli,
            Terms::Compute(o) => o.price_milli,
        }
    }

    /// Region tag.
    pub fn region(&self) -> &str {
        match self {
            Terms::Storage(o) => &o.region,
            Terms::Compute(o) => &o.region,
        }
    }
}

/// One offer that counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer<P> {
    /// The offering node.
    pub peer: P,
    /// Its zone (the node's key).
    pub zone: ZoneId,
    /// Expiry (Unix ms).
    pub expires_at_ms: u64,
    /// What is offered.
    pub terms: Terms,
}

/// Why an offer record did not count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ignored {
    /// Expired at `now`.
    Expired,
    /// Expires further ahead than [`MAX_OFFER_LIFETIME_MS`].
    LifetimeTooLong,
    /// The zone is not a key any peer id can be derived from.
    NoPeer,
    /// The offering node is not a live member.
    NotMember,
}

impl Ignored {
    /// Every reason, for rendering counters.
    pub const ALL: [Ignored; 4] = [
        Ignored::Expired,
        Ignored::LifetimeTooLong,
        Ignored::NoPeer,
        Ignored::NotMember,
    ];

    /// Metric label of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::Expired => "expired",
            Ignored::LifetimeTooLong => "lifetime_too_long",
            Ignored::NoPeer => "no_peer",
            Ignored::NotMember => "not_member",
        }
    }
}

/// Counts of ignored offer records, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IgnoredCounts {
    /// Expired.
    pub expired: u64,
    /// Expiry too far ahead.
    pub lifetime_too_long: u64,
    /// No peer id for the zone.
    pub no_peer: u64,
    /// Node not a live member.
    pub not_member: u64,
}

impl IgnoredCounts {
    fn add(&mut self, why: Ignored) {
        let c = match why {
            Ignored::Expired => &mut self.expired,
            Ignored::LifetimeTooLong => &mut self.lifetime_too_long,
            Ignored::NoPeer => &mut self.no_peer,
            Ignored::NotMember => &mut self.not_member,
        };
        *c = c.saturating_add(1);
    }

    /// The count for one reason.
    pub fn get(&self, why: Ignored) -> u64 {
        match why {
            Ignored::Expired => self.expired,
            Ignored::LifetimeTooLong => self.lifetime_too_long,
            Ignored::NoPeer => self.no_peer,
            Ignored::NotMember => self.not_member,
        }
    }
}

/// Whether an offer that expires at `expires_at_ms` counts at `now_ms` by time alone.
pub fn check_expiry(expires_at_ms: u64, now_ms: u64) -> Result<(), Ignored> {
    if expires_at_ms <= now_ms {
        Err(Ignored::Expired)
    } else if expires_at_ms - now_ms > MAX_OFFER_LIFETIME_MS {
        Err(Ignored::LifetimeTooLong)
    } else {
        Ok(())
    }
}

/// The offers that count at one moment.
#[derive(Clone, Debug)]
pub struct OfferView<P> {
    offers: Vec<Offer<P>>,
    ignored: IgnoredCounts,
}

impl<P: Ord + Clone> OfferView<P> {
    /// Builds the view from held records (non-offer records are skipped): an offer counts if
    /// it is unexpired at `now_ms`, expires within [`MAX_OFFER_LIFETIME_MS`], its zone maps to
    /// a peer (`peer_of`) and that peer is a live member (`is_member`).
    pub fn build<'a>(
        records: impl IntoIterator<Item = &'a SignedRecord>,
        now_ms: u64,
        peer_of: impl Fn(&ZoneId) -> Option<P>,
        is_member: impl Fn(&P) -> bool,
    ) -> Self {
        let mut offers = Vec::new();
        let mut ignored = IgnoredCounts::default();
        for r in records {
            let terms = match &r.body.content {
                Content::StorageOffer(o) => Terms::Storage(o.clone()),
                Content::ComputeOffer(o) => Terms::Compute(o.clone()),
                _ => continue,
            };
            let offer = check_expiry(r.body.expires_at_ms, now_ms)
                .and_then(|()| peer_of(&r.body.zone).ok_or(Ignored::NoPeer))
                .and_then(|p| {
                    if is_member(&p) {
                        Ok(p)
                    } else {
                        Err(Ignored::NotMember)
                    }
                });
            match offer {
                Ok(peer) => offers.push(Offer {
                    peer,
                    zone: r.body.zone,
                    expires_at_ms: r.body.expires_at_ms,
                    terms,
                }),
                Err(why) => ignored.add(why),
            }
        }
        offers.sort_by(|a, b| {
            (a.terms.price_milli(), &a.peer, a.terms.kind()).cmp(&(
                b.terms.price_milli(),
                &b.peer,
                b.terms.kind(),
            ))
        });
        Self { offers, ignored }
    }

    /// Offers matching `filter`, cheapest first (ties by peer, then kind).
    pub fn list(&self, filter: &OfferFilter) -> Vec<&Offer<P>> {
        self.offers.iter().filter(|o| filter.matches(o)).collect()
    }

    /// Storage candidates (every counting storage offer), for placement.
    pub fn storage(&self) -> Vec<crate::blob::StorageCandidate<P>> {
        self.offers
            .iter()
            .filter_map(|o| match &o.terms {
                Terms::Storage(s) => Some(crate::blob::StorageCandidate {
                    peer: o.peer.clone(),
                    capacity: s.capacity_bytes,
                    free: s.free_bytes.min(s.capacity_bytes),
                }),
                Terms::Compute(_) => None,
            })
            .collect()
    }

    /// Records that did not count, by reason.
    pub fn ignored(&self) -> IgnoredCounts {
        self.ignored
    }
}

/// Filters for listing offers; all optional.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct OfferFilter {
    /// `storage` or `compute`.
    pub kind: Option<String>,
    /// Exact region.
    pub region: Option<String>,
    /// Minimum free bytes (storage).
    pub min_free: Option<u64>,
    /// Minimum cores (compute).
    pub min_cores: Option<u32>,
    /// Minimum memory bytes (compute).
    pub min_memory: Option<u64>,
    /// Minimum GPUs (compute).
    pub min_gpus: Option<u32>,
    /// Maximum price (thousandths).
    pub max_price: Option<u64>,
}

impl OfferFilter {
    /// Whether `o` passes every filter set. A filter on a storage field excludes compute
    /// offers and the other way round.
    pub fn matches<P>(&self, o: &Offer<P>) -> bool {
        let (free, cores, memory, gpus) = match &o.terms {
            Terms::Storage(s) => (Some(s.free_bytes), None, None, None),
            Terms::Compute(c) => (None, Some(c.cores), Some(c.memory_bytes), Some(c.gpus)),
        };
        self.kind.as_deref().is_none_or(|k| k == o.terms.kind())
            && self.region.as_deref().is_none_or(|r| r == o.terms.region())
            && self.max_price.is_none_or(|p| o.terms.price_milli() <= p)
            && self.min_free.is_none_or(|m| free.is_some_and(|f| f >= m))
            && self.min_cores.is_none_or(|m| cores.is_some_and(|c| c >= m))
            && self
                .min_memory
                .is_none_or(|m| memory.is_some_and(|c| c >= m))
            && self.min_gpus.is_none_or(|m| gpus.is_some_and(|c| c >= m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{RecordBody, STORAGE_OFFER_LABEL};
    use crate::ZoneKey;
    use proptest::prelude::*;

    fn storage(key: &ZoneKey, capacity: u64, price: u64, expires: u64) -> SignedRecord {
        RecordBody {
            zone: key.zone(),
            label: STORAGE_OFFER_LABEL.into(),
            seq: 1,
            expires_at_ms: expires,
            content: Content::StorageOffer(StorageOffer {
                capacity_bytes: capacity,
                free_bytes: capacity,
                price_milli: price,
                region: "eu".into(),
            }),
        }
        .sign(key)
        .expect("valid offer")
    }

    fn key(i: u8) -> ZoneKey {
        ZoneKey::from_seed([i; 32])
    }

    const NOW: u64 = 1_000_000_000;

    #[test]
    fn offers_of_keys_that_are_not_live_members_are_ignored_and_counted() {
        let member = key(1);
        let fake = key(2);
        let recs = [
            storage(&member, 1 << 30, 100, NOW + 30_000),
            storage(&fake, 1 << 50, 0, NOW + 30_000),
        ];
        let members = [member.zone()];
        let view = OfferView::build(&recs, NOW, |z| Some(*z), |p| members.contains(p));
        let listed = view.list(&OfferFilter::default());
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].zone, member.zone());
        assert_eq!(view.ignored().not_member, 1);
    }

    #[test]
    fn offers_expiring_beyond_a_few_refreshes_are_ignored() {
        let k = key(3);
        let recs = [
            storage(&k, 1 << 30, 0, NOW + MAX_OFFER_LIFETIME_MS + 1),
            storage(&key(4), 1 << 30, 0, NOW + MAX_OFFER_LIFETIME_MS),
            storage(&key(5), 1 << 30, 0, NOW),
        ];
        let view = OfferView::build(&recs, NOW, |z| Some(*z), |_| true);
        assert_eq!(view.list(&OfferFilter::default()).len(), 1);
        assert_eq!(view.ignored().lifetime_too_long, 1);
        assert_eq!(view.ignored().expired, 1);
        assert_eq!(check_expiry(NOW + 1, NOW), Ok(()));
    }

    #[test]
    fn listing_is_cheapest_first_and_filters_apply() {
        let recs = [
            storage(&key(6), 8 << 30, 300, NOW + 1000),
            storage(&key(7), 1 << 30, 100, NOW + 1000),
        ];
        let view = OfferView::build(&recs, NOW, |z| Some(*z), |_| true);
        let all = view.list(&OfferFilter::default());
        assert_eq!(all[0].zone, key(7).zone());
        let big = OfferFilter {
            min_free: Some(2 << 30),
            ..OfferFilter::default()
        };
        assert_eq!(view.list(&big).len(), 1);
        let compute = OfferFilter {
            kind: Some("compute".into()),
            ..OfferFilter::default()
        };
        assert!(view.list(&compute).is_empty());
        assert_eq!(view.storage().len(), 2);
    }

    proptest! {
        /// Whatever offers non-members publish, the storage candidates are exactly the members'
        /// counting offers, in the same order.
        #[test]
        fn non_member_offers_never_change_the_candidates(
            fakes in proptest::collection::vec((any::<u64>(), any::<u64>(), 0u64..2 * MAX_OFFER_LIFETIME_MS), 0..40),
        ) {
            let members: Vec<ZoneKey> = (10u8..14).map(key).collect();
            let member_zones: Vec<ZoneId> = members.iter().map(ZoneKey::zone).collect();
            let honest: Vec<SignedRecord> =
                members.iter().map(|k| storage(k, 1 << 30, 50, NOW + 30_000)).collect();
            let base = OfferView::build(&honest, NOW, |z| Some(*z), |p| member_zones.contains(p));
            let mut all = honest.clone();
            for (i, (cap, price, life)) in fakes.iter().enumerate() {
                let mut seed = [0xA0; 32];
                seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
                all.push(storage(&ZoneKey::from_seed(seed), *cap, *price % 1000, NOW + life));
            }
            let attacked = OfferView::build(&all, NOW, |z| Some(*z), |p| member_zones.contains(p));
            prop_assert_eq!(base.storage(), attacked.storage());
        }
    }
}
