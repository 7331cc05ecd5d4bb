//! Admission quotas (issue 12, item 5): zones cost nothing, so without a bound anyone grows
//! every node without limit ("200 records under 200 fresh zones were accepted over HTTP in
//! 5.7 s, and every node grew by 200"). A store has a quota of names and bytes, overall and
//! per zone; when it is full a new zone is refused with a typed error, the store's existing
//! zones keep a reserve, updates of held names always merge, and nothing held is evicted.

mod common;

use common::{signed, tombstone, v4, zone_key, HOUR_MS, T0};
use dpin_protocol::error::AdmissionError;
use dpin_protocol::ingest::{verdict, Verdict};
use dpin_protocol::store::{zone_of, Quota, DEFAULT_QUOTA};
use dpin_protocol::{Freshness, MemStore, Outcome, SignedRecord, Store, ValidationError};

const NOW: u64 = T0;

fn apply(s: &mut MemStore, r: &SignedRecord) -> Outcome {
    match s.apply(r, NOW, Freshness::Replicate, None) {
        Ok(o) => o,
        Err(never) => match never {},
    }
}

fn apply_batch(s: &mut MemStore, rs: &[SignedRecord]) -> Vec<Outcome> {
    match s.apply_batch(rs, NOW, Freshness::Replicate) {
        Ok(o) => o,
        Err(never) => match never {},
    }
}

fn record(zone: u8, label: &str, seq: u64) -> SignedRecord {
    signed(
        &zone_key(zone),
        label,
        seq,
        NOW + HOUR_MS,
        vec![v4(1, zone, 80)],
    )
}

fn small_quota() -> Quota {
    Quota {
        max_names: 32,
        max_bytes: u64::MAX,
        max_names_per_zone: 8,
        max_bytes_per_zone: u64::MAX,
        new_zone_reserve: 4,
    }
}

#[test]
fn junk_under_fresh_zones_stops_at_the_quota_with_a_typed_error() {
    let mut store = MemStore::new().with_quota(small_quota());
    // One record under each of 200 fresh zones, as the flood did.
    let mut refused = 0;
    for z in 1..=200u8 {
        match apply(&mut store, &record(z, "junk", 1)) {
            o if o.changed_store() => {}
            Outcome::Invalid(ValidationError::Admission(AdmissionError::NewZone { .. })) => {
                refused += 1
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    // New zones stop at 32 − 32/4 = 24 names; the last quarter is kept for held zones.
    assert_eq!(store.len(), 24);
    assert_eq!(refused, 200 - 24);
    let refusal = Outcome::Invalid(ValidationError::Admission(AdmissionError::NewZone {
        names: 24,
        bytes: store.usage().bytes,
    }));
    assert_eq!(apply(&mut store, &record(201, "junk", 1)), refusal);
    // Not evidence against the sender: gossip ignores it rather than penalising.
    assert_eq!(verdict(&refusal), Verdict::Ignore);
    // Batch apply (sync) refuses the same way.
    let outcomes = apply_batch(&mut store, &[record(202, "junk", 1), record(1, "junk", 2)]);
    assert!(matches!(
        outcomes[0],
        Outcome::Invalid(ValidationError::Admission(AdmissionError::NewZone { .. }))
    ));
    assert!(
        outcomes[1].changed_store(),
        "an update of a held name merges"
    );
}

#[test]
fn held_zones_keep_writing_into_the_reserve_and_nothing_held_is_evicted() {
    let mut store = MemStore::new().with_quota(small_quota());
    let first: Vec<SignedRecord> = (1..=24u8).map(|z| record(z, "api", 1)).collect();
    for r in &first {
        assert!(apply(&mut store, r).changed_store());
    }
    // Fresh zones are refused now ...
    assert!(!apply(&mut store, &record(100, "api", 1)).changed_store());
    // ... but a held zone adds names into the reserve, up to the hard limit.
    for i in 0..8 {
        let r = record(1 + i % 4, &format!("more{i}"), 1);
        assert!(
            apply(&mut store, &r).changed_store(),
            "name {i} in a held zone"
        );
    }
    assert_eq!(store.len(), 32);
    assert_eq!(
        apply(&mut store, &record(5, "one-too-many", 1)),
        Outcome::Invalid(ValidationError::Admission(AdmissionError::StoreFull {
            names: 32,
            bytes: store.usage().bytes,
        }))
    );
    // Updates and deletions of held names always merge, even at the limit.
    assert!(apply(&mut store, &record(7, "api", 2)).changed_store());
    assert!(apply(
        &mut store,
        &tombstone(&zone_key(8), "api", 2, NOW + HOUR_MS)
    )
    .changed_store());
    // Every first-round winner is still held, live or superseded by its own update.
    for r in &first {
        let e = store.entry(&r.name()).expect("never evicted");
        assert!(e.floor.seq >= 1 && e.bytes.is_some());
    }
    for z in [1u8, 2, 3, 4, 5, 6, 9, 24] {
        assert!(store.resolve(&record(z, "api", 1).name(), NOW).is_some());
    }
}

#[test]
fn a_zone_stops_at_its_own_quota() {
    let mut store = MemStore::new().with_quota(small_quota());
    for i in 0..8 {
        assert!(apply(&mut store, &record(1, &format!("n{i}"), 1)).changed_store());
    }
    assert!(matches!(
        apply(&mut store, &record(1, "n8", 1)),
        Outcome::Invalid(ValidationError::Admission(AdmissionError::ZoneFull {
            names: 8,
            ..
        }))
    ));
    // Other zones are not affected.
    assert!(apply(&mut store, &record(2, "n0", 1)).changed_store());
    let zone = zone_key(1).zone().to_string();
    assert_eq!(store.zone_usage(&zone).names, 8);
    assert_eq!(zone_of(&record(1, "n0", 1).name()), zone);
}

#[test]
fn byte_quotas_count_names_and_bodies() {
    let r = record(1, "a00", 1);
    let one = (r.name().len() + r.encode().len()) as u64;
    let quota = Quota {
        max_names: usize::MAX,
        max_bytes: one * 10,
        max_names_per_zone: usize::MAX,
        max_bytes_per_zone: one * 3,
        new_zone_reserve: 0,
    };
    let mut store = MemStore::new().with_quota(quota);
    for i in 0..3 {
        assert!(apply(&mut store, &record(1, &format!("a{i:02}"), 1)).changed_store());
    }
    assert!(matches!(
        apply(&mut store, &record(1, "a03", 1)),
        Outcome::Invalid(ValidationError::Admission(AdmissionError::ZoneFull { .. }))
    ));
    assert_eq!(store.usage().bytes, 3 * one);
    // Compaction frees body bytes; the floor keeps its name counted.
    let far = NOW + HOUR_MS + store.retention_ms() + 1;
    match store.compact(far) {
        Ok(n) => assert_eq!(n, 3),
        Err(never) => match never {},
    }
    assert_eq!(store.usage().names, 3);
    assert!(store.usage().bytes < one);
}

#[test]
fn the_default_quota_is_generous_and_unlimited_admits_everything() {
    let mut store = MemStore::new();
    assert_eq!(store.quota(), DEFAULT_QUOTA);
    for z in 1..=200u8 {
        assert!(apply(&mut store, &record(z, "api", 1)).changed_store());
    }
    let mut open = MemStore::new().with_quota(Quota::UNLIMITED);
    for z in 1..=50u8 {
        assert!(apply(&mut open, &record(z, "api", 1)).changed_store());
    }
    assert_eq!(store.zone_count(), 200);
}
