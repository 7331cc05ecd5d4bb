//! The limits that move with time — the seq ceiling and the expiry window — and the
//! compare-and-set rule, as a writer and a replica with a skewed clock meet them.
//!
//! Issue 10 found three ways a user's path undid the merge rule: a seq of `u64::MAX` froze a
//! name for good; a node ten minutes behind refused a 30-day record from replication and
//! never converged; a retried compare-and-set that had already won was reported as a lost
//! race. Each test here is one of those, named for the behaviour that must hold.

mod common;

use common::*;
use dpin_protocol::record::seq_ceiling;
use dpin_protocol::{
    Freshness, MemStore, Outcome, Store, ValidationError, MAX_CLOCK_SKEW_MS,
    MAX_NODE_CLOCK_SKEW_MS, MAX_TTL_MS,
};

const NOW: u64 = T0;
const MINUTE: u64 = 60_000;

#[test]
fn a_record_at_the_last_seq_is_refused_by_writers_and_replicas_alike() {
    let key = zone_key(1);
    let frozen = forge(
        &key,
        body(
            &key,
            "web",
            u64::MAX,
            NOW + HOUR_MS,
            dpin_protocol::Content::Endpoints(vec![v4(1, 1, 80)]),
        ),
    );
    let mut store = MemStore::new();
    for freshness in [Freshness::Publish, Freshness::Replicate] {
        assert!(matches!(
            ok(store.apply(&frozen, NOW, freshness, None)),
            Outcome::Invalid(ValidationError::SeqTooHigh { .. })
        ));
    }
    // Counters and millisecond timestamps are far below the ceiling.
    let ms_seq = signed(&key, "web", NOW, NOW + HOUR_MS, vec![v4(1, 1, 80)]);
    assert!(ok(store.apply(&ms_seq, NOW, Freshness::Publish, None)).changed_store());
    // The next writer is never blocked: ms timestamps are 1000x below the µs ceiling.
    assert!(NOW < seq_ceiling(NOW, Freshness::Publish));
}

#[test]
fn the_seq_ceiling_moves_with_time_so_a_refused_seq_is_taken_later() {
    let key = zone_key(2);
    let ceiling = seq_ceiling(NOW, Freshness::Replicate);
    let ahead = signed(&key, "web", ceiling + 1, NOW + HOUR_MS, vec![v4(1, 1, 80)]);
    let mut store = MemStore::new();
    assert!(matches!(
        ok(store.apply(&ahead, NOW, Freshness::Replicate, None)),
        Outcome::Invalid(ValidationError::SeqTooHigh { .. })
    ));
    assert!(ok(store.apply(&ahead, NOW + 1, Freshness::Replicate, None)).changed_store());
}

#[test]
fn a_node_ten_minutes_behind_takes_a_thirty_day_record_from_replication() {
    let key = zone_key(3);
    // Published through a node whose clock is right, with the longest TTL and the whole
    // writer-to-node skew allowance.
    let rec = signed(
        &key,
        "web",
        1,
        NOW + MAX_TTL_MS + MAX_CLOCK_SKEW_MS,
        vec![v4(1, 1, 80)],
    );
    assert!(ok(MemStore::new().apply(&rec, NOW, Freshness::Publish, None)).changed_store());
    for behind in [10 * MINUTE, MAX_NODE_CLOCK_SKEW_MS] {
        let mut slow = MemStore::new();
        assert!(
            ok(slow.apply(&rec, NOW - behind, Freshness::Replicate, None)).changed_store(),
            "a node {behind} ms behind refused what publishing accepted"
        );
    }
}

#[test]
fn a_record_refused_by_a_clock_beyond_the_allowance_is_taken_once_the_clock_catches_up() {
    let key = zone_key(4);
    let rec = signed(&key, "web", 1, NOW + MAX_TTL_MS, vec![v4(1, 1, 80)]);
    let far_behind = NOW - MAX_CLOCK_SKEW_MS - MAX_NODE_CLOCK_SKEW_MS - MINUTE;
    let mut slow = MemStore::new();
    let refused = ok(slow.apply(&rec, far_behind, Freshness::Replicate, None));
    match &refused {
        Outcome::Invalid(e) => assert!(e.is_clock_dependent(), "{e}"),
        other => panic!("expected a clock-dependent refusal, got {other:?}"),
    }
    assert!(ok(slow.apply(&rec, NOW, Freshness::Replicate, None)).changed_store());
}

#[test]
fn retrying_a_compare_and_set_that_already_won_is_a_duplicate_not_a_lost_race() {
    let key = zone_key(5);
    let v1 = signed(&key, "web", 1, NOW + HOUR_MS, vec![v4(1, 1, 80)]);
    let v2 = signed(&key, "web", 2, NOW + HOUR_MS, vec![v4(2, 2, 80)]);
    let mut store = MemStore::new();
    ok(store.apply(&v1, NOW, Freshness::Publish, Some(0)));
    assert!(ok(store.apply(&v2, NOW, Freshness::Publish, Some(1))).changed_store());
    // The acknowledgement was lost; the client retries the very same signed record.
    assert_eq!(
        ok(store.apply(&v2, NOW, Freshness::Publish, Some(1))),
        Outcome::Duplicate
    );
    // A different record planned over seq 1 did lose the race.
    let rival = signed(&key, "web", 2, NOW + HOUR_MS, vec![v4(9, 9, 80)]);
    assert_eq!(
        ok(store.apply(&rival, NOW, Freshness::Publish, Some(1))),
        Outcome::CasMismatch {
            expected: 1,
            actual: 2
        }
    );
    let v3 = signed(&key, "web", 3, NOW + HOUR_MS, vec![v4(3, 3, 80)]);
    assert_eq!(
        ok(store.apply(&v3, NOW, Freshness::Publish, Some(1))),
        Outcome::CasMismatch {
            expected: 1,
            actual: 2
        }
    );
}
