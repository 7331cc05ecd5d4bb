//! Anti-entropy as the node runs it: `digest_request` → `answer_digest` → `plan_sync` →
//! `answer_fetch` / `records_for` → `apply_batch`, every message encoded and decoded
//! (`common::sync_once`). Replicas with random different contents reach identical digests in a
//! bounded number of rounds, holding the merge-rule winner of the union; a one-name difference
//! in a 10,000-name store costs a tiny fraction of the store's size on the wire.
//!
//! Seed-deterministic: set `PROPTEST_RNG_SEED` / `PROPTEST_CASES` to explore further.

mod common;

use common::*;
use dpin_protocol::digest::{bucket_of, MAX_SUMMARIES};
use dpin_protocol::store::COMPACTION_GRACE_MS;
use dpin_protocol::{Freshness, MemStore, SignedRecord, Store};
use proptest::collection::vec;
use proptest::prelude::*;

const NOW: u64 = T0;

fn record(label: usize, seq: u64, variant: u8) -> SignedRecord {
    let key = zone_key(3);
    let label = format!("svc-{label}");
    if variant == 0 {
        tombstone(&key, &label, seq, NOW + HOUR_MS)
    } else {
        signed(
            &key,
            &label,
            seq,
            NOW + HOUR_MS,
            vec![v4(variant, seq as u8, 443)],
        )
    }
}

proptest! {
    #![proptest_config(proptest_config(64))]

    /// Three replicas, each holding the winners of an arbitrary subset of records for 30
    /// names (missing names, older seqs, equivocations, tombstones). One pass of rounds
    /// 0→1, 1→2, 2→0 must leave identical digests (two allowed), and every replica must hold
    /// the merge-rule winner of the union; a further pass must find nothing to do.
    #[test]
    fn replicas_with_different_contents_reach_identical_digests(
        specs in vec((0usize..30, 1u64..4, 0u8..3, 0u8..8), 1..80)
    ) {
        let records: Vec<(SignedRecord, u8)> = specs
            .iter()
            .map(|&(label, seq, variant, members)| (record(label, seq, variant), members))
            .collect();
        let mut replicas = vec![MemStore::new(); 3];
        for (r, store) in replicas.iter_mut().enumerate() {
            let mine = records.iter().filter(|(_, m)| m & (1 << r) != 0).map(|(rec, _)| rec);
            for winner in model_winners(mine).values() {
                seed_entry(store, winner);
            }
        }
        let held: Vec<&SignedRecord> = records.iter().filter(|(_, m)| *m != 0).map(|(r, _)| r).collect();
        let want = model_winners(held);

        let mut passes = 0;
        while !(replicas[0].digest() == replicas[1].digest() && replicas[1].digest() == replicas[2].digest()) {
            passes += 1;
            prop_assert!(passes <= 2, "not converged after 2 passes");
            for (a, b) in [(0, 1), (1, 2), (2, 0)] {
                let (x, y) = pair(&mut replicas, a, b);
                sync_once(x, y, NOW);
            }
        }
        for store in &replicas {
            prop_assert_eq!(store.len(), want.len());
            for (name, w) in &want {
                let held = store.entry(name).and_then(|e| e.record());
                prop_assert_eq!(held.as_ref(), Some(w), "winner of {}", name);
            }
        }
        for (a, b) in [(0, 1), (1, 2), (2, 0)] {
            let (x, y) = pair(&mut replicas, a, b);
            let s = sync_once(x, y, NOW);
            prop_assert!(s.in_sync, "converged replicas must answer InSync");
            prop_assert_eq!(s.messages, 2);
        }
    }
}

fn big_store(names: usize) -> (MemStore, usize) {
    let key = zone_key(4);
    let mut store = MemStore::new();
    let mut encoded = 0;
    for i in 0..names {
        let rec = signed(
            &key,
            &format!("name-{i}"),
            1,
            NOW + HOUR_MS,
            vec![v4((i >> 8) as u8, i as u8, 443)],
        );
        encoded += rec.encode().len();
        seed_entry(&mut store, &rec);
    }
    (store, encoded)
}

/// 10,000 names, one of which is newer on one side (fetch path) and, separately, one of
/// which only one side has (push path): one round repairs each, and the bytes exchanged are
/// under 5 % of the store's encoded size (in practice well under 1 %).
#[test]
fn one_differing_name_in_ten_thousand_costs_a_tiny_fraction_of_the_store() {
    let key = zone_key(4);
    let (base, encoded) = big_store(10_000);

    // Fetch path: the responder holds a newer record for one name.
    let mut initiator = base.clone();
    let mut responder = base.clone();
    let newer = signed(&key, "name-4242", 2, NOW + HOUR_MS, vec![v4(9, 9, 8443)]);
    assert!(ok(responder.apply(&newer, NOW, Freshness::Publish, None)).changed_store());
    assert_ne!(initiator.digest(), responder.digest());
    let fetch = sync_once(&mut initiator, &mut responder, NOW);
    assert_eq!(fetch.fetched_applied, 1, "{fetch:?}");
    assert_eq!(
        initiator.digest(),
        responder.digest(),
        "one round repairs one name"
    );
    assert_eq!(initiator.resolve(&newer.name(), NOW).as_ref(), Some(&newer));

    // Push path: the initiator holds a name the responder lacks.
    let mut initiator = base.clone();
    let mut responder = base;
    let extra = signed(&key, "name-extra", 1, NOW + HOUR_MS, vec![v4(9, 8, 443)]);
    assert!(ok(initiator.apply(&extra, NOW, Freshness::Publish, None)).changed_store());
    let push = sync_once(&mut initiator, &mut responder, NOW);
    assert_eq!(push.pushed_applied, 1, "{push:?}");
    assert_eq!(
        initiator.digest(),
        responder.digest(),
        "one round repairs one name"
    );

    for (what, stats) in [("fetch", fetch), ("push", push)] {
        let share = stats.bytes as f64 / encoded as f64;
        println!(
            "{what}: {} bytes in {} messages for a {encoded}-byte store ({:.3} %)",
            stats.bytes,
            stats.messages,
            share * 100.0
        );
        assert!(
            share < 0.05,
            "{what} round cost {} bytes of a {encoded}-byte store",
            stats.bytes
        );
    }
}

/// A bucket with more entries than one answer can list is walked over several rounds with a
/// cursor, so names past the first `MAX_SUMMARIES` still sync (in both directions).
#[test]
fn names_past_the_summary_limit_of_one_bucket_still_sync() {
    let key = zone_key(5);
    let zone = key.zone();
    let labels: Vec<String> = (0u64..)
        .map(|i| format!("n{i}"))
        .filter(|l| bucket_of(&format!("{l}.{zone}")) == 0)
        .take(MAX_SUMMARIES + 50)
        .collect();
    let records: Vec<SignedRecord> = labels
        .iter()
        .map(|l| signed(&key, l, 1, NOW + HOUR_MS, vec![v4(1, 1, 443)]))
        .collect();
    let last = records
        .iter()
        .max_by_key(|r| r.name())
        .expect("there are records")
        .clone();
    let mut full = MemStore::new();
    let mut lacking = MemStore::new();
    for r in &records {
        seed_entry(&mut full, r);
        if r != &last {
            seed_entry(&mut lacking, r);
        }
    }
    let mut replicas = vec![full, lacking];
    sync_until_quiet(&mut replicas, NOW, 4);
    assert_eq!(
        replicas[1].resolve(&last.name(), NOW).as_ref(),
        Some(&last),
        "the name past the summary limit never reached the replica that lacked it"
    );
    assert_eq!(replicas[0].digest(), replicas[1].digest());
}

/// A replica that missed a newer record for longer than the compaction grace (a long
/// partition) keeps serving the older record: the peers that compacted the newer one drop it
/// from digests and summaries, so its floor never travels and the pair never converges.
#[test]
#[ignore = "design gap: floors of compacted entries are left out of digests and summaries \
            (protocol/src/digest.rs answer_digest/plan_sync, store.rs toggle_digest), so they \
            never reach a replica that was partitioned for longer than COMPACTION_GRACE_MS"]
fn a_compacted_floor_still_reaches_a_replica_that_missed_it() {
    let key = zone_key(6);
    let older = signed(&key, "api", 3, NOW + 30 * 24 * HOUR_MS, vec![v4(3, 3, 443)]);
    let newer = signed(&key, "api", 5, NOW + HOUR_MS, vec![v4(5, 5, 443)]);
    let mut up_to_date = MemStore::new();
    let mut partitioned = MemStore::new();
    ok(up_to_date.apply(&older, NOW, Freshness::Publish, None));
    ok(up_to_date.apply(&newer, NOW, Freshness::Publish, None));
    ok(partitioned.apply(&older, NOW, Freshness::Publish, None));
    let later = NOW + HOUR_MS + COMPACTION_GRACE_MS;
    assert_eq!(ok(up_to_date.compact(later)), 1);
    assert_eq!(
        up_to_date.resolve(&newer.name(), later),
        None,
        "seq 5 lapsed"
    );
    let mut replicas = vec![up_to_date, partitioned];
    sync_until_quiet(&mut replicas, later, 4);
    assert_eq!(
        replicas[1].resolve(&older.name(), later),
        None,
        "the partitioned replica still serves seq 3, which every other replica refuses"
    );
}
