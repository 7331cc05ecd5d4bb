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

/// Checking a run's records up front as one batch changes no outcome: a good batch is not
/// checked again when applied, and a batch with one forged signature keeps nothing, so each
/// record is checked alone when applied (the forged one refused, the rest applied), exactly
/// as `Store::apply` decides.
#[test]
fn a_prefetched_batch_changes_no_outcome() {
    let key = ZoneKey::generate(&mut rand_chacha::ChaCha8Rng::seed_from_u64(2));
    let good: Vec<SignedRecord> = (1..=4)
        .map(|seq| rec(&key, "a", seq, 10_000, false, 1))
        .collect();
    let mut forged = rec(&key, "b", 7, 10_000, false, 2);
    // In S: R stays a valid point, so the batch equation itself fails.
    forged.signature[40] ^= 1;
    for with_forged in [false, true] {
        let mut batch = good.clone();
        if with_forged {
            batch.insert(2, forged.clone());
        }
        let pairs: Vec<(&SignedRecord, [u8; 32])> =
            batch.iter().map(|r| (r, r.content_hash())).collect();
        let mut v = Verifier::new(VerifyMode::Cached);
        v.prefetch(&pairs);
        let after_prefetch = v.verifications;
        assert_eq!(after_prefetch, batch.len() as u64);
        let mut reference = MemStore::new();
        let mut store = MemStore::new();
        for r in &batch {
            let want = reference.apply(r, NOW, Freshness::Replicate, None).ok();
            let got = v.apply_cached(
                &mut store,
                r,
                r.content_hash(),
                NOW,
                Freshness::Replicate,
                None,
            );
            assert_eq!(want, Some(got));
        }
        assert_eq!(reference.digest(), store.digest());
        let again = if with_forged { batch.len() as u64 } else { 0 };
        assert_eq!(
            v.verifications,
            after_prefetch + again,
            "forged: {with_forged}"
        );
    }
}
