//! The prepared apply path (issue 14): one encode and one content hash per apply, signatures
//! checked before the store is touched, and the compaction bound. What these tests hold is
//! that nothing about an outcome changed: a [`Prepared`] record carries exactly the bytes, hash
//! and rank the record's own methods give, and [`Store::apply_prepared`] decides exactly as
//! [`Store::apply`] does, for every order of checks (fields, time, signature, CAS, merge).

mod common;

use common::*;
use dpin_protocol::merge::Rank;
use dpin_protocol::store::{Cas, Prepared};
use dpin_protocol::{
    Entry, Floor, Freshness, MemStore, Outcome, SignedRecord, Store, ValidationError,
};
use proptest::prelude::*;

fn old_entry(r: &SignedRecord) -> Entry {
    Entry {
        floor: Floor {
            seq: r.body.seq,
            hash: r.content_hash(),
        },
        expires_at_ms: r.body.expires_at_ms,
        tombstone: r.is_tombstone(),
        bytes: Some(r.encode().into_boxed_slice()),
    }
}

proptest! {
    #![proptest_config(proptest_config(64))]

    /// One encode gives what the record's own encodes and hash gave: the wire bytes, the
    /// content hash of the canonical body (the wire bytes minus the signature), the rank and
    /// the entry.
    #[test]
    fn a_prepared_record_carries_the_records_own_bytes_hash_and_rank(
        zone in 0u8..4,
        label in "[a-z][a-z0-9]{0,20}",
        seq in 1u64..1_000_000,
        ports in proptest::collection::vec(1u16..65535, 0..6),
        host in "[a-z]{1,30}",
    ) {
        let key = zone_key(zone);
        let r = if ports.is_empty() {
            tombstone(&key, &label, seq, T0 + HOUR_MS)
        } else {
            let mut eps: Vec<_> = ports.iter().map(|p| v4(1, 2, *p)).collect();
            eps.push(dpin_protocol::Endpoint {
                host: dpin_protocol::Host::Name(format!("{host}.example")),
                ..v4(0, 0, 53)
            });
            signed(&key, &label, seq, T0 + HOUR_MS, eps)
        };
        let p = Prepared::new(&r);
        let wire = r.encode();
        prop_assert_eq!(p.wire(), wire.as_slice());
        prop_assert_eq!(p.content_hash(), r.content_hash());
        prop_assert_eq!(p.rank(), Rank::of(&r));
        prop_assert_eq!(p.entry(), old_entry(&r));
        prop_assert_eq!(Entry::from_record(&r), old_entry(&r));
    }
}

/// Outcome of applying `r` to a copy of `store` both ways: the prepared path (verified
/// before, as the node does off its lock) and the plain one.
fn both_ways(
    store: &MemStore,
    r: &SignedRecord,
    now: u64,
    f: Freshness,
    cas: Cas,
) -> (Outcome, Outcome) {
    let mut a = store.clone();
    let mut b = store.clone();
    let prepared = ok(a.apply_prepared(&Prepared::verified(r), now, f, cas));
    let plain = ok(b.apply_if(r, now, f, cas));
    assert_eq!(a.iter().collect::<Vec<_>>(), b.iter().collect::<Vec<_>>());
    (prepared, plain)
}

#[test]
fn verifying_before_the_store_decides_exactly_as_verifying_inside_it() {
    let key = zone_key(1);
    let other = zone_key(2);
    let now = T0;
    let held = signed(&key, "web", 5, T0 + HOUR_MS, vec![v4(0, 1, 80)]);
    let mut store = MemStore::new();
    seed_entry(&mut store, &held);
    let newer = signed(&key, "web", 6, T0 + HOUR_MS, vec![v4(0, 2, 80)]);
    // A forged duplicate of the held record: the same body signed by another key.
    let forged_dup = forge(&other, held.body.clone());
    // A forged record whose expiry is too far as well: the time error is reported first.
    let mut far = newer.body.clone();
    far.expires_at_ms = T0 + 400 * 24 * HOUR_MS;
    let forged_far = forge(&other, far);
    let bad_fields = forge(&key, {
        let mut b = newer.body.clone();
        b.seq = 0;
        b
    });
    let cases: Vec<(&str, SignedRecord, Cas, Freshness)> = vec![
        ("newer", newer.clone(), Cas::default(), Freshness::Publish),
        (
            "stale",
            signed(&key, "web", 4, T0 + HOUR_MS, vec![v4(0, 3, 80)]),
            Cas::default(),
            Freshness::Replicate,
        ),
        (
            "duplicate",
            held.clone(),
            Cas::default(),
            Freshness::Replicate,
        ),
        (
            "forged duplicate",
            forged_dup,
            Cas::default(),
            Freshness::Replicate,
        ),
        (
            "forged and too far",
            forged_far,
            Cas::default(),
            Freshness::Replicate,
        ),
        ("zero seq", bad_fields, Cas::default(), Freshness::Publish),
        (
            "cas mismatch",
            newer.clone(),
            Cas::from(Some(4)),
            Freshness::Publish,
        ),
        (
            "cas by hash",
            newer.clone(),
            Cas {
                seq: None,
                hash: Some(held.content_hash()),
            },
            Freshness::Publish,
        ),
        (
            "new name",
            signed(&key, "api", 1, T0 + HOUR_MS, vec![v4(0, 4, 80)]),
            Cas::from(Some(0)),
            Freshness::Publish,
        ),
        (
            "new tombstone",
            tombstone(&key, "gone", 1, T0 + HOUR_MS),
            Cas::default(),
            Freshness::Publish,
        ),
    ];
    for (what, r, cas, f) in cases {
        let (prepared, plain) = both_ways(&store, &r, now, f, cas);
        assert_eq!(prepared, plain, "{what}");
    }
    // The forged ones are refused for the right reason.
    let (o, _) = both_ways(
        &store,
        &forge(&other, held.body.clone()),
        now,
        Freshness::Replicate,
        Cas::default(),
    );
    assert_eq!(o, Outcome::Invalid(ValidationError::BadSignature));
}

#[test]
fn a_batch_with_one_forged_record_refuses_only_that_one() {
    let key = zone_key(3);
    let records: Vec<SignedRecord> = (0..8)
        .map(|i| {
            let r = signed(&key, &format!("n{i}"), 1, T0 + HOUR_MS, vec![v4(0, i, 80)]);
            if i == 5 {
                forge(&zone_key(4), r.body)
            } else {
                r
            }
        })
        .collect();
    let mut store = MemStore::new();
    let outcomes = ok(store.apply_batch(&records, T0, Freshness::Replicate));
    for (i, o) in outcomes.iter().enumerate() {
        if i == 5 {
            assert_eq!(*o, Outcome::Invalid(ValidationError::BadSignature));
        } else {
            assert!(o.is_winner(), "{i}: {o:?}");
        }
    }
    assert_eq!(store.len(), 7);
}

#[test]
fn compaction_finds_a_body_due_earlier_than_everything_a_previous_pass_saw() {
    let key = zone_key(5);
    let retention = 10 * HOUR_MS;
    let mut store = MemStore::new().with_retention(retention);
    seed_entry(
        &mut store,
        &signed(&key, "late", 1, T0 + 5 * HOUR_MS, vec![v4(0, 1, 80)]),
    );
    // Nothing is due: a pass finds nothing, and learns that nothing is due before late's time.
    assert!(store.compactable(T0 + HOUR_MS).is_empty());
    // A body that expires earlier arrives after that pass: it is still found when due.
    seed_entry(
        &mut store,
        &signed(&key, "early", 1, T0 + HOUR_MS, vec![v4(0, 2, 80)]),
    );
    assert!(store.compactable(T0 + HOUR_MS + retention - 1).is_empty());
    let early = signed(&key, "early", 1, T0 + HOUR_MS, vec![v4(0, 2, 80)]).name();
    assert_eq!(store.compactable(T0 + HOUR_MS + retention), vec![early]);
    assert_eq!(ok(store.compact(T0 + HOUR_MS + retention)), 1);
    assert!(store.compactable(T0 + HOUR_MS + retention).is_empty());
    assert_eq!(
        ok(store.compact(T0 + 5 * HOUR_MS + retention)),
        1,
        "late, when its time comes"
    );
}

/// A compaction walk taken one bucket at a time (the node lets go of its store lock between
/// buckets, so DNS answers never wait for a whole walk) drops exactly what one `compact` drops.
/// It leaves the exact bound for the next walk, and a body written between two steps, into a
/// bucket already walked, still lowers that bound.
#[test]
fn a_walk_in_bucket_steps_drops_what_compact_drops_and_keeps_the_bound() {
    let key = zone_key(6);
    let retention = 10 * HOUR_MS;
    let fresh = || MemStore::new().with_retention(retention);
    let (mut whole, mut stepped) = (fresh(), fresh());
    // Names expiring an hour apart, spread over the buckets by their hash.
    let records: Vec<SignedRecord> = (0..200u64)
        .map(|i| {
            signed(
                &key,
                &format!("n{i}"),
                1,
                T0 + i * HOUR_MS,
                vec![v4(0, 1, 80)],
            )
        })
        .collect();
    for r in &records {
        seed_entry(&mut whole, r);
        seed_entry(&mut stepped, r);
    }
    // n0..=n49 are past retention.
    let now = T0 + 49 * HOUR_MS + retention;
    let dropped = ok(whole.compact(now));
    assert_eq!(dropped, 50);

    assert!(stepped.compaction_due(now));
    stepped.compaction_walk_start();
    let (mut next, mut stepped_dropped) = (u64::MAX, 0);
    for bucket in 0..=u8::MAX {
        let (names, due) = stepped.compactable_in(bucket, now);
        next = next.min(due);
        stepped_dropped += ok(stepped.compact_names(names, now));
    }
    assert_eq!(stepped_dropped, dropped);
    assert_eq!(next, T0 + 50 * HOUR_MS + retention, "n50's time");
    // Written after every bucket was walked: due one millisecond after the walk's time.
    let written = signed(&key, "written", 1, now + 1 - retention, vec![v4(0, 2, 80)]);
    seed_entry(&mut stepped, &written);
    stepped.compaction_walk_end(next);

    for r in &records {
        let name = r.name();
        let held = |s: &MemStore| s.entry(&name).map(|e| e.bytes.is_some());
        assert_eq!(held(&stepped), held(&whole), "{name}");
    }
    assert!(
        !stepped.compaction_due(now),
        "the walk left nothing due at its time"
    );
    assert!(
        stepped.compaction_due(now + 1),
        "the body written mid-walk is due then"
    );
    assert_eq!(stepped.compactable(now + 1), vec![written.name()]);
    stepped.compaction_walk_abandon();
    assert!(
        stepped.compaction_due(T0),
        "an abandoned walk is walked again"
    );
}
