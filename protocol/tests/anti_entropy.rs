//! Anti-entropy as the node runs it: the protocol's `sync::Initiator` session (digest →
//! summaries → plan → fetch / push) against `sync::respond`, records applied with
//! `apply_batch`, every message encoded and decoded (`common::sync_once`). Replicas with random different contents reach identical digests in a
//! bounded number of rounds, holding the merge-rule winner of the union; a one-name difference
//! in a 10,000-name store costs a tiny fraction of the store's size on the wire.
//!
//! Seed-deterministic: set `PROPTEST_RNG_SEED` / `PROPTEST_CASES` to explore further.

mod common;

use common::*;
use dpin_protocol::digest::{bucket_of, MAX_SUMMARIES};
use dpin_protocol::store::{Entry, COMPACTION_GRACE_MS, DEFAULT_BODY_RETENTION_MS};
use dpin_protocol::{Freshness, MemStore, Outcome, SignedRecord, Store, MAX_TTL_MS};
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

/// A replica that missed a newer record for longer than a day (a long partition) must not
/// keep serving the older record: the newer winner's body is kept, and replicated, until
/// every record it beat has expired, so its floor travels to the replica that missed it.
#[test]
fn a_newer_floor_still_reaches_a_replica_that_missed_it_after_a_long_partition() {
    let key = zone_key(6);
    let older = signed(&key, "api", 3, NOW + 30 * 24 * HOUR_MS, vec![v4(3, 3, 443)]);
    let newer = signed(&key, "api", 5, NOW + HOUR_MS, vec![v4(5, 5, 443)]);
    let mut up_to_date = MemStore::new();
    let mut partitioned = MemStore::new();
    ok(up_to_date.apply(&older, NOW, Freshness::Publish, None));
    ok(up_to_date.apply(&newer, NOW, Freshness::Publish, None));
    ok(partitioned.apply(&older, NOW, Freshness::Publish, None));
    let later = NOW + HOUR_MS + COMPACTION_GRACE_MS;
    assert_eq!(ok(up_to_date.compact(later)), 0, "seq 5's body is kept");
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
    assert_eq!(
        replicas[1].entry(&older.name()).map(|e| e.floor.seq),
        Some(5)
    );
}

/// Once a winner is compacted, every record it beat has expired: a node that never saw either
/// (a new node, a replaced data dir) may take a replayed older record, but can never serve it.
#[test]
fn a_replay_after_compaction_is_never_served() {
    let key = zone_key(7);
    // The older record lives as long as any record can; the newer one barely at all.
    let older = signed(&key, "api", 3, NOW + MAX_TTL_MS, vec![v4(3, 3, 443)]);
    let newer = signed(&key, "api", 5, NOW + 1_000, vec![v4(5, 5, 443)]);
    let mut old_node = MemStore::new();
    ok(old_node.apply(&older, NOW, Freshness::Publish, None));
    ok(old_node.apply(&newer, NOW, Freshness::Publish, None));
    let horizon = newer.body.expires_at_ms + DEFAULT_BODY_RETENTION_MS;
    assert_eq!(ok(old_node.compact(horizon - 1)), 0);
    assert_eq!(ok(old_node.compact(horizon)), 1);
    let mut new_node = MemStore::new();
    ok(new_node.apply(&older, horizon, Freshness::Replicate, None));
    assert_eq!(new_node.resolve(&older.name(), horizon), None);
    assert!(matches!(
        ok(old_node.apply(&older, horizon, Freshness::Replicate, None)),
        Outcome::Stale { have: 5, got: 3 }
    ));
}

/// A node whose clock ran far ahead compacted a body its peers still serve. The floor keeps
/// refusing older records meanwhile, and once its clock is right again anti-entropy brings the
/// body back (a duplicate of a body-less floor restores it) instead of leaving the node with
/// a permanent NXDOMAIN while its peers push the record forever.
#[test]
fn a_body_compacted_by_a_clock_far_ahead_comes_back_once_the_clock_is_right() {
    let key = zone_key(8);
    let rec = signed(&key, "api", 4, NOW + 10 * 24 * HOUR_MS, vec![v4(4, 4, 443)]);
    let mut peer = MemStore::new();
    let mut skewed = MemStore::new();
    ok(peer.apply(&rec, NOW, Freshness::Publish, None));
    ok(skewed.apply(&rec, NOW, Freshness::Publish, None));
    let far_ahead = rec.body.expires_at_ms + DEFAULT_BODY_RETENTION_MS;
    assert_eq!(ok(skewed.compact(far_ahead)), 1);
    assert_eq!(skewed.resolve(&rec.name(), NOW), None, "the body is gone");
    // Clock corrected: the record is live; a sync round restores the body.
    let mut replicas = vec![skewed, peer];
    sync_until_quiet(&mut replicas, NOW, 4);
    assert_eq!(replicas[0].resolve(&rec.name(), NOW).as_ref(), Some(&rec));
    assert_eq!(replicas[0].digest(), replicas[1].digest());
    // Directly too: the record offered again restores the body once, then is a duplicate.
    let mut bare = MemStore::new();
    bare.insert(
        &rec.name(),
        Entry {
            bytes: None,
            ..Entry::from_record(&rec)
        },
    );
    assert_eq!(
        ok(bare.apply(&rec, NOW, Freshness::Replicate, None)),
        Outcome::Restored
    );
    assert_eq!(
        ok(bare.apply(&rec, NOW, Freshness::Replicate, None)),
        Outcome::Duplicate
    );
}
