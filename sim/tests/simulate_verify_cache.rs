//! The simulator's cached-verification apply path gives the same outcomes and the same
//! store as the protocol's `Store::apply`, on random sequences of writes, tombstones,
//! equivocations, compare-and-set, expiry and compaction.

use dpin_protocol::{Content, Freshness, MemStore, RecordBody, SignedRecord, Store, ZoneKey};
use dpin_sim::simulate::verify::{Verifier, VerifyMode};
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;

const NOW: u64 = 1_800_000_000_000;

fn rec(key: &ZoneKey, label: &str, seq: u64, ttl: u64, tomb: bool, port: u16) -> SignedRecord {
    RecordBody {
        zone: key.zone(),
        label: label.into(),
        seq,
        expires_at_ms: NOW + ttl,
        content: if tomb {
            Content::Tombstone
        } else {
            Content::Endpoints(vec![format!("10.0.0.1:{port}").parse().expect("ep")])
        },
    }
    .sign(key)
    .expect("valid")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn cached_apply_matches_store_apply(
        ops in proptest::collection::vec(
            (0usize..3, 1u64..6, 1u64..5_000, any::<bool>(), 1u16..4, 0u64..20_000,
             proptest::option::of(0u64..6), any::<bool>()),
            1..40)
    ) {
        let key = ZoneKey::generate(&mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
        let labels = ["a", "b", "c"];
        let mut reference = MemStore::new().with_retention(6_000);
        let mut cached = MemStore::new().with_retention(6_000);
        let mut v = Verifier::new(VerifyMode::Cached);
        for (l, seq, ttl, tomb, port, dt, expected, compact) in ops {
            let r = rec(&key, labels[l], seq, ttl, tomb, port);
            let now = NOW + dt;
            let want = reference.apply(&r, now, Freshness::Replicate, expected);
            let got = v.apply_cached(&mut cached, &r, r.content_hash(), now,
                Freshness::Replicate, expected);
            prop_assert_eq!(want.ok(), Some(got));
            if compact {
                prop_assert_eq!(reference.compact(now).ok(), cached.compact(now).ok());
            }
            prop_assert_eq!(reference.digest(), cached.digest());
        }
    }
}
