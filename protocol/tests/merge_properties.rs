//! Properties of the merge rule as every replica runs it (`Store::apply` / `apply_batch` on a
//! `MemStore`): whatever set of valid records of one zone key is delivered — varied `seq`,
//! equal `seq` with different content (equivocation), tombstones — in whatever order and
//! however many times, every replica ends with the same winner and the same digest, and that
//! winner is the max of `(seq, live, content hash)` over what it was given: at equal seq a
//! live record beats a tombstone whatever the hashes, and two records of one kind order by
//! hash.
//!
//! Seed-deterministic: set `PROPTEST_RNG_SEED` / `PROPTEST_CASES` to explore further.

mod common;

use common::*;
use dpin_protocol::store::Cas;
use dpin_protocol::{Content, Freshness, MemStore, Outcome, SignedRecord, Store};
use proptest::collection::vec;
use proptest::prelude::*;

const LABELS: [&str; 2] = ["api", "db"];
/// Far enough in the future that nothing here expires.
const NOW: u64 = T0;

/// What a writer holding the zone key may sign for one name.
#[derive(Clone, Debug)]
struct Spec {
    label: usize,
    seq: u64,
    /// 0 = tombstone, otherwise one of a few endpoint sets (so equal seqs collide often).
    variant: u8,
    ttl_ms: u64,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0..LABELS.len(),
        1u64..=4,
        0u8..4,
        prop::sample::select(vec![60_000u64, HOUR_MS, 24 * HOUR_MS]),
    )
        .prop_map(|(label, seq, variant, ttl_ms)| Spec {
            label,
            seq,
            variant,
            ttl_ms,
        })
}

fn build(specs: &[Spec]) -> Vec<SignedRecord> {
    let key = zone_key(1);
    specs
        .iter()
        .map(|s| {
            let label = LABELS[s.label];
            let expires = NOW + s.ttl_ms;
            if s.variant == 0 {
                tombstone(&key, label, s.seq, expires)
            } else {
                let mut eps = vec![v4(s.variant, 1, 443)];
                if s.variant % 2 == 0 {
                    eps.push(v4(s.variant, 2, 8443));
                }
                signed(&key, label, s.seq, expires, eps)
            }
        })
        .collect()
}

/// Every record index at least once, plus some duplicates, shuffled.
fn delivery_order(n: usize) -> impl Strategy<Value = Vec<usize>> {
    vec(0..n, 0..5).prop_flat_map(move |extra| {
        let mut all: Vec<usize> = (0..n).collect();
        all.extend(extra);
        Just(all).prop_shuffle()
    })
}

fn scenario(orders: usize) -> impl Strategy<Value = (Vec<Spec>, Vec<Vec<usize>>)> {
    vec(spec(), 1..7).prop_flat_map(move |specs| {
        let n = specs.len();
        (Just(specs), vec(delivery_order(n), orders))
    })
}

/// The store's winner for every name is the model winner: same floor, same body, and
/// `resolve` serves it unless it is a tombstone.
fn assert_store_matches_model(
    store: &MemStore,
    records: &[&SignedRecord],
) -> Result<(), TestCaseError> {
    let model = model_winners(records.iter().copied());
    prop_assert_eq!(store.len(), model.len(), "one entry per name delivered");
    for (name, want) in &model {
        let entry = store
            .entry(name)
            .expect("every delivered name has an entry");
        prop_assert_eq!(entry.rank(), rank(want), "rank of {}", name);
        let held = entry.record();
        prop_assert_eq!(held.as_ref(), Some(want), "winner of {}", name);
        let served = store.resolve(name, NOW);
        if want.is_tombstone() {
            prop_assert_eq!(served, None, "a tombstoned name is not served");
        } else {
            prop_assert_eq!(served.as_ref(), Some(want), "the live winner is served");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config(256))]

    /// Three replicas get the same records in three different orders, with duplicates, two
    /// one by one (`apply`) and one in batches (`apply_batch`): same entries, same digest.
    #[test]
    fn every_delivery_order_converges_to_one_winner((specs, orders) in scenario(3)) {
        let records = build(&specs);
        let mut replicas = [MemStore::new(), MemStore::new(), MemStore::new()];
        for (replica, order) in replicas.iter_mut().zip(&orders).take(2) {
            for &i in order {
                let outcome = ok(replica.apply(&records[i], NOW, Freshness::Replicate, None));
                prop_assert!(!matches!(outcome, Outcome::Invalid(_)), "valid record refused: {:?}", outcome);
            }
        }
        let batched: Vec<SignedRecord> = orders[2].iter().map(|&i| records[i].clone()).collect();
        for chunk in batched.chunks(3) {
            ok(replicas[2].apply_batch(chunk, NOW, Freshness::Replicate));
        }
        let all: Vec<&SignedRecord> = records.iter().collect();
        for replica in &replicas {
            assert_store_matches_model(replica, &all)?;
        }
        prop_assert_eq!(snapshot(&replicas[0]), snapshot(&replicas[1]));
        prop_assert_eq!(snapshot(&replicas[0]), snapshot(&replicas[2]));
        prop_assert_eq!(replicas[0].digest(), replicas[1].digest());
        prop_assert_eq!(replicas[0].digest(), replicas[2].digest());
    }

    /// After every single delivery the outcome is exactly what the total order on
    /// `(seq, live, content hash)` says (applied / duplicate / stale / conflict won or lost), and
    /// the held winner is the max of everything delivered so far.
    #[test]
    fn the_winner_is_the_max_of_seq_then_kind_then_content_hash_after_every_delivery(
        (specs, orders) in scenario(1)
    ) {
        let records = build(&specs);
        let mut store = MemStore::new();
        let mut delivered: Vec<&SignedRecord> = Vec::new();
        for &i in &orders[0] {
            let r = &records[i];
            let model = model_winners(delivered.iter().copied());
            let want = expected_outcome(model.get(&r.name()), r);
            let got = ok(store.apply(r, NOW, Freshness::Replicate, None));
            prop_assert_eq!(&got, &want, "outcome for seq {} of {}", r.body.seq, r.name());
            delivered.push(r);
            assert_store_matches_model(&store, &delivered)?;
        }
    }

    /// Once everything is merged, offering any record again — singly or as a batch — changes
    /// neither the entries nor the digest, and never reports a change.
    #[test]
    fn reapplying_any_record_changes_nothing((specs, orders) in scenario(1)) {
        let records = build(&specs);
        let mut store = MemStore::new();
        ok(store.apply_batch(&records, NOW, Freshness::Replicate));
        let before = (snapshot(&store), store.digest());
        for &i in &orders[0] {
            let outcome = ok(store.apply(&records[i], NOW, Freshness::Replicate, None));
            prop_assert!(!outcome.changed_store(), "re-applying changed the store: {:?}", outcome);
            prop_assert_eq!(&(snapshot(&store), store.digest()), &before);
        }
        for outcome in ok(store.apply_batch(&records, NOW, Freshness::Replicate)) {
            prop_assert!(!outcome.changed_store(), "re-applying a batch changed the store: {:?}", outcome);
        }
        prop_assert_eq!(&(snapshot(&store), store.digest()), &before);
    }

    /// Three replicas each hold an arbitrary subset. Merging stores is commutative
    /// (A⊔B = B⊔A), associative ((A⊔B)⊔C = A⊔(B⊔C)) and idempotent (A⊔A = A), and the
    /// result is the model winner over the union.
    #[test]
    fn merging_two_replicas_in_either_order_gives_the_same_store(
        specs in vec(spec(), 1..7),
        membership in vec(0u8..8, 7),
    ) {
        let records = build(&specs);
        let mut stores = [MemStore::new(), MemStore::new(), MemStore::new()];
        for (s, store) in stores.iter_mut().enumerate() {
            let mine: Vec<SignedRecord> = records
                .iter()
                .zip(&membership)
                .filter(|(_, m)| *m & (1 << s) != 0)
                .map(|(r, _)| r.clone())
                .collect();
            ok(store.apply_batch(&mine, NOW, Freshness::Replicate));
        }
        let [a, b, c] = &stores;
        let merged = |x: &MemStore, y: &MemStore| {
            let mut out = x.clone();
            merge_into(&mut out, y, NOW);
            out
        };
        let ab = merged(a, b);
        let ba = merged(b, a);
        prop_assert_eq!(snapshot(&ab), snapshot(&ba), "A⊔B = B⊔A");
        prop_assert_eq!(ab.digest(), ba.digest());
        let ab_c = merged(&ab, c);
        let a_bc = merged(a, &merged(b, c));
        prop_assert_eq!(snapshot(&ab_c), snapshot(&a_bc), "(A⊔B)⊔C = A⊔(B⊔C)");
        prop_assert_eq!(ab_c.digest(), a_bc.digest());
        let aa = merged(a, a);
        prop_assert_eq!(snapshot(&aa), snapshot(a), "A⊔A = A");
        let held: Vec<SignedRecord> = stores.iter().flat_map(|s| s.iter().filter_map(|(_, e)| e.record())).collect();
        let held_refs: Vec<&SignedRecord> = held.iter().collect();
        assert_store_matches_model(&ab_c, &held_refs)?;
    }

    /// A write that names the record it replaces (`Cas::hash`) applies only while that record
    /// is the winner; otherwise nothing changes and the writer hears `cas_mismatch` — except
    /// when the very record offered is already held (a retry), which is a duplicate. The seq
    /// precondition, when given too, must hold as well.
    #[test]
    fn a_write_naming_the_record_it_replaces_applies_only_over_that_record(
        (specs, orders) in scenario(1),
        named in 0usize..7,
        offered in 0usize..7,
        with_seq in any::<bool>(),
    ) {
        let records = build(&specs);
        let mut store = MemStore::new();
        for &i in &orders[0] {
            ok(store.apply(&records[i], NOW, Freshness::Replicate, None));
        }
        let target = &records[named % records.len()];
        let r = &records[offered % records.len()];
        let held = store.entry(&r.name()).map(|e| e.rank());
        let cas = Cas {
            seq: with_seq.then(|| held.map_or(0, |h| h.seq)),
            hash: Some(target.content_hash()),
        };
        let before = (snapshot(&store), store.digest());
        let got = ok(store.apply_if(r, NOW, Freshness::Replicate, cas));
        let named_is_winner = held.is_some_and(|h| h.hash == target.content_hash());
        let retry = held.is_some_and(|h| h.hash == r.content_hash());
        if retry {
            prop_assert_eq!(got, Outcome::Duplicate);
        } else if !named_is_winner {
            prop_assert!(matches!(got, Outcome::CasMismatch { .. }), "{:?}", got);
            prop_assert_eq!(&(snapshot(&store), store.digest()), &before, "a failed CAS changes nothing");
        } else {
            prop_assert!(!matches!(got, Outcome::CasMismatch { .. }), "{:?}", got);
        }
    }
}

#[test]
fn an_equivocation_is_settled_by_the_greater_hash_on_every_replica_and_reported() {
    let key = zone_key(1);
    let x = signed(&key, "api", 3, NOW + HOUR_MS, vec![v4(1, 1, 80)]);
    let y = signed(&key, "api", 3, NOW + HOUR_MS, vec![v4(2, 2, 80)]);
    let (lo, hi) = if x.content_hash() < y.content_hash() {
        (x, y)
    } else {
        (y, x)
    };
    let mut first = MemStore::new();
    let mut second = MemStore::new();
    assert!(ok(first.apply(&lo, NOW, Freshness::Publish, None)).changed_store());
    assert_eq!(
        ok(first.apply(&hi, NOW, Freshness::Publish, None)),
        Outcome::Conflict {
            seq: 3,
            applied: true
        }
    );
    assert!(ok(second.apply(&hi, NOW, Freshness::Publish, None)).changed_store());
    assert_eq!(
        ok(second.apply(&lo, NOW, Freshness::Publish, None)),
        Outcome::Conflict {
            seq: 3,
            applied: false
        }
    );
    assert_eq!(
        first.resolve("api", NOW),
        None,
        "names are looked up in full"
    );
    let name = hi.name();
    assert_eq!(first.resolve(&name, NOW).as_ref(), Some(&hi));
    assert_eq!(second.resolve(&name, NOW).as_ref(), Some(&hi));
    assert_eq!(first.digest(), second.digest());
}

#[test]
fn a_higher_seq_tombstone_hides_the_name_and_only_a_higher_seq_revives_it() {
    let key = zone_key(1);
    let live = signed(&key, "api", 1, NOW + HOUR_MS, vec![v4(1, 1, 80)]);
    let dead = tombstone(&key, "api", 2, NOW + HOUR_MS);
    let replay = live.clone();
    let revived = signed(&key, "api", 3, NOW + HOUR_MS, vec![v4(3, 3, 80)]);
    let name = live.name();
    let mut store = MemStore::new();
    ok(store.apply(&live, NOW, Freshness::Publish, None));
    assert_eq!(store.resolve(&name, NOW).as_ref(), Some(&live));
    assert_eq!(
        ok(store.apply(&dead, NOW, Freshness::Publish, None)),
        Outcome::Applied {
            previous_seq: Some(1)
        }
    );
    assert_eq!(store.resolve(&name, NOW), None, "tombstone hides the name");
    assert_eq!(
        ok(store.apply(&replay, NOW, Freshness::Replicate, None)),
        Outcome::Stale { have: 2, got: 1 },
        "the deleted record cannot be replayed back in"
    );
    assert_eq!(store.resolve(&name, NOW), None);
    ok(store.apply(&revived, NOW, Freshness::Publish, None));
    assert_eq!(store.resolve(&name, NOW).as_ref(), Some(&revived));
}

#[test]
fn compare_and_set_applies_only_over_the_expected_seq() {
    let key = zone_key(1);
    let one = signed(&key, "api", 1, NOW + HOUR_MS, vec![v4(1, 1, 80)]);
    let two = signed(&key, "api", 2, NOW + HOUR_MS, vec![v4(2, 2, 80)]);
    let mut store = MemStore::new();
    assert_eq!(
        ok(store.apply(&one, NOW, Freshness::Publish, Some(5))),
        Outcome::CasMismatch {
            expected: 5,
            actual: 0
        }
    );
    assert!(store.is_empty(), "a failed CAS stores nothing");
    assert!(ok(store.apply(&one, NOW, Freshness::Publish, Some(0))).changed_store());
    assert_eq!(
        ok(store.apply(&two, NOW, Freshness::Publish, Some(0))),
        Outcome::CasMismatch {
            expected: 0,
            actual: 1
        }
    );
    assert!(ok(store.apply(&two, NOW, Freshness::Publish, Some(1))).changed_store());
    assert_eq!(store.resolve(&two.name(), NOW).as_ref(), Some(&two));
}

#[test]
fn a_record_with_a_bad_signature_is_refused_even_when_it_would_win() {
    let key = zone_key(1);
    let held = signed(&key, "api", 1, NOW + HOUR_MS, vec![v4(1, 1, 80)]);
    let mut forged = signed(&key, "api", 9, NOW + HOUR_MS, vec![v4(6, 6, 80)]);
    forged.signature[0] ^= 1;
    let mut single = MemStore::new();
    let mut batched = MemStore::new();
    ok(single.apply(&held, NOW, Freshness::Publish, None));
    ok(batched.apply(&held, NOW, Freshness::Publish, None));
    assert!(matches!(
        ok(single.apply(&forged, NOW, Freshness::Replicate, None)),
        Outcome::Invalid(_)
    ));
    let outcomes = ok(batched.apply_batch(&[forged, held.clone()], NOW, Freshness::Replicate));
    assert!(matches!(outcomes[0], Outcome::Invalid(_)), "{outcomes:?}");
    assert_eq!(outcomes[1], Outcome::Duplicate);
    for store in [&single, &batched] {
        assert_eq!(store.resolve(&held.name(), NOW).as_ref(), Some(&held));
    }
    // Content variant checks: an offer under a user label never merges.
    let offer = forge(
        &key,
        body(
            &key,
            "api",
            10,
            NOW + HOUR_MS,
            Content::ComputeOffer(dpin_protocol::ComputeOffer {
                cores: 1,
                memory_bytes: 1,
                gpus: 0,
                price_milli: 1,
                region: "eu".into(),
            }),
        ),
    );
    assert!(matches!(
        ok(single.apply(&offer, NOW, Freshness::Replicate, None)),
        Outcome::Invalid(_)
    ));
    assert_eq!(single.resolve(&held.name(), NOW).as_ref(), Some(&held));
}

#[test]
fn at_equal_seq_a_live_record_beats_a_tombstone_through_anti_entropy_too() {
    let key = zone_key(1);
    let deletion = tombstone(&key, "api", 5, NOW + HOUR_MS);
    // Both hash orders: the live record must win either way.
    let low = (1u16..2000)
        .map(|p| signed(&key, "api", 5, NOW + HOUR_MS, vec![v4(1, 1, p)]))
        .find(|w| w.content_hash() < deletion.content_hash())
        .expect("some port gives a smaller hash");
    let high = (1u16..2000)
        .map(|p| signed(&key, "api", 5, NOW + HOUR_MS, vec![v4(1, 1, p)]))
        .find(|w| w.content_hash() > deletion.content_hash())
        .expect("some port gives a greater hash");
    for write in [low, high] {
        for write_initiates in [true, false] {
            let mut with_write = MemStore::new();
            let mut with_deletion = MemStore::new();
            ok(with_write.apply(&write, NOW, Freshness::Publish, None));
            ok(with_deletion.apply(&deletion, NOW, Freshness::Publish, None));
            if write_initiates {
                sync_once(&mut with_write, &mut with_deletion, NOW);
            } else {
                sync_once(&mut with_deletion, &mut with_write, NOW);
            }
            for store in [&with_write, &with_deletion] {
                assert_eq!(
                    store.resolve(&write.name(), NOW).as_ref(),
                    Some(&write),
                    "one round leaves the write on both sides"
                );
            }
            assert_eq!(with_write.digest(), with_deletion.digest());
        }
    }
}

#[test]
fn a_clean_up_naming_a_stale_plan_deletes_nothing_when_another_record_holds_that_seq() {
    // Plans A and B both took seq 7 (two writers read seq 6); B won the tie-break. A clean-up
    // meant for A that names only the seq would delete B; naming A's hash, it is refused.
    let key = zone_key(1);
    let a = signed(&key, "api", 7, NOW + HOUR_MS, vec![v4(1, 1, 80)]);
    let b = signed(&key, "api", 7, NOW + HOUR_MS, vec![v4(2, 2, 80)]);
    let (a, b) = if a.content_hash() < b.content_hash() {
        (a, b)
    } else {
        (b, a)
    };
    let clean_up = tombstone(&key, "api", 8, NOW + HOUR_MS);
    let mut store = MemStore::new();
    ok(store.apply(&a, NOW, Freshness::Publish, None));
    ok(store.apply(&b, NOW, Freshness::Replicate, None));
    let by_seq = store.clone();
    let by_hash = Cas {
        seq: None,
        hash: Some(a.content_hash()),
    };
    assert_eq!(
        ok(store.apply_if(&clean_up, NOW, Freshness::Publish, by_hash)),
        Outcome::CasMismatch {
            expected: 7,
            actual: 7
        }
    );
    assert_eq!(store.resolve(&b.name(), NOW).as_ref(), Some(&b));
    // The seq-only clean-up of the same intent deletes B: why the hash is needed.
    let mut by_seq = by_seq;
    assert!(ok(by_seq.apply(&clean_up, NOW, Freshness::Publish, Some(7))).changed_store());
    assert_eq!(by_seq.resolve(&b.name(), NOW), None);
    // Naming the winner works, and a retry of the same deletion is a duplicate.
    let named_b = Cas {
        seq: Some(7),
        hash: Some(b.content_hash()),
    };
    assert!(ok(store.apply_if(&clean_up, NOW, Freshness::Publish, named_b)).changed_store());
    assert_eq!(
        ok(store.apply_if(&clean_up, NOW, Freshness::Publish, named_b)),
        Outcome::Duplicate
    );
    assert_eq!(store.resolve(&b.name(), NOW), None);
}
