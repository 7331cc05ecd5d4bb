//! Anti-entropy against a lying peer (issue 12, item 2): answers are validated before any
//! planning, every allocation an answer can cause is bounded, and the responder's work per
//! request is bounded.
//!
//! Before: `plan_sync` used the responder's bucket list as given (a `Summaries` answer listing
//! bucket 0 a million times made the initiator walk bucket 0 a million times under the store
//! lock), and out-of-range summaries, duplicate summaries or surplus records were silently
//! dropped, uncounted. Now each is refused with a typed [`AnswerError`] that ends the session
//! (the node counts it as a failed sync).

mod common;

use common::{proptest_config, signed, sync_once, v4, zone_key, HOUR_MS, T0};
use dpin_protocol::digest::{
    answer_digest, bucket_of, MAX_NAME_BYTES, MAX_RECORDS_PER_MESSAGE, MAX_SUMMARIES,
    MAX_SYNC_MESSAGE_BYTES,
};
use dpin_protocol::sync::{
    AnswerError, Initiator, InitiatorStep, SessionConfig, SessionError, MAX_PUSH_PER_ROUND,
};
use dpin_protocol::{Freshness, MemStore, SignedRecord, Store, Summary, SyncRequest, SyncResponse};
use proptest::prelude::*;

const NOW: u64 = T0;

fn store_with(n: usize) -> MemStore {
    let key = zone_key(1);
    let mut s = MemStore::new();
    let records: Vec<SignedRecord> = (0..n)
        .map(|i| signed(&key, &format!("n{i}"), 1, NOW + HOUR_MS, vec![v4(1, 1, 80)]))
        .collect();
    for r in &records {
        match s.apply(r, NOW, Freshness::Publish, None) {
            Ok(o) => assert!(o.changed_store()),
            Err(never) => match never {},
        }
    }
    s
}

/// Starts a session and returns it after its first (digest) request.
fn opened(store: &MemStore) -> Initiator {
    let mut s = Initiator::new(SessionConfig::default());
    assert!(matches!(
        s.poll(store, NOW),
        InitiatorStep::Send(SyncRequest::Digest { .. })
    ));
    s
}

fn refused(store: &MemStore, answer: SyncResponse) -> AnswerError {
    let mut s = opened(store);
    match s.handle_response(store, answer, NOW) {
        Err(SessionError::InvalidAnswer(e)) => {
            assert!(
                matches!(s.poll(store, NOW), InitiatorStep::Done(_)),
                "a refused answer ends the session"
            );
            e
        }
        other => panic!("answer accepted: {other:?}"),
    }
}

fn summary(name: &str) -> Summary {
    Summary {
        name: name.to_owned(),
        seq: 1,
        hash: [7; 32],
    }
}

#[test]
fn a_sync_bomb_listing_bucket_zero_a_million_times_is_refused() {
    let store = store_with(300);
    let bomb = SyncResponse::Summaries {
        buckets: vec![0; 1_000_000],
        summaries: vec![],
        truncated: false,
    };
    // The bomb fits one message: it reaches the initiator.
    let bytes = bomb.encode();
    assert!(!bytes.is_empty() && bytes.len() <= MAX_SYNC_MESSAGE_BYTES);
    let bomb = SyncResponse::decode(&bytes).expect("decodes");
    assert!(matches!(
        refused(&store, bomb),
        AnswerError::BucketsNotAscending { index: 1 }
    ));
}

#[test]
fn bucket_lists_must_be_distinct_and_ascending_from_the_cursor() {
    let store = store_with(10);
    let list = |buckets: Vec<u8>| SyncResponse::Summaries {
        buckets,
        summaries: vec![],
        truncated: false,
    };
    assert!(matches!(
        refused(&store, list(vec![3, 1])),
        AnswerError::BucketsNotAscending { index: 1 }
    ));
    assert!(matches!(
        refused(&store, list(vec![1, 2, 2])),
        AnswerError::BucketsNotAscending { index: 2 }
    ));
    // Ascending lists, including all 256 buckets, are fine.
    for ok in [vec![], vec![0, 1, 255], (0..=255).collect::<Vec<u8>>()] {
        let mut s = opened(&store);
        s.handle_response(&store, list(ok), NOW)
            .expect("an ascending list is accepted");
    }
}

#[test]
fn summaries_must_be_bounded_distinct_ordered_and_inside_the_listed_buckets() {
    let store = store_with(10);
    let names: Vec<String> = (0..4000).map(|i| format!("x{i}.z")).collect();
    let mut all: Vec<(u8, &str)> = names.iter().map(|n| (bucket_of(n), n.as_str())).collect();
    all.sort();
    let every_bucket: Vec<u8> = (0..=255).collect();
    let answer = |summaries: Vec<Summary>| SyncResponse::Summaries {
        buckets: every_bucket.clone(),
        summaries,
        truncated: false,
    };
    let too_many: Vec<Summary> = all
        .iter()
        .take(MAX_SUMMARIES + 1)
        .map(|(_, n)| summary(n))
        .collect();
    assert!(matches!(
        refused(&store, answer(too_many)),
        AnswerError::TooManySummaries { .. }
    ));
    let (b0, n0) = all[0];
    let (_, n1) = all[1];
    assert!(matches!(
        refused(&store, answer(vec![summary(n1), summary(n0)])),
        AnswerError::SummariesNotAscending { index: 1 }
    ));
    assert!(matches!(
        refused(&store, answer(vec![summary(n0), summary(n0)])),
        AnswerError::SummariesNotAscending { index: 1 }
    ));
    let outside = SyncResponse::Summaries {
        buckets: vec![b0.wrapping_add(1)],
        summaries: vec![summary(n0)],
        truncated: false,
    };
    assert!(matches!(
        refused(&store, outside),
        AnswerError::SummaryOutsideBuckets { index: 0 }
    ));
    let long = "a".repeat(MAX_NAME_BYTES + 1);
    let long_answer = SyncResponse::Summaries {
        buckets: vec![bucket_of(&long)],
        summaries: vec![summary(&long)],
        truncated: false,
    };
    assert!(matches!(
        refused(&store, long_answer),
        AnswerError::NameTooLong { index: 0, .. }
    ));
}

#[test]
fn a_records_answer_may_not_carry_more_than_was_asked() {
    let mine = store_with(0);
    let theirs = store_with(5);
    let mut s = opened(&mine);
    let root = mine.digest();
    let answer = answer_digest(&theirs, &root.root, &root.wire_buckets(), None);
    s.handle_response(&mine, answer, NOW)
        .expect("honest answer");
    let InitiatorStep::Send(SyncRequest::Fetch { names }) = s.poll(&mine, NOW) else {
        panic!("expected a fetch");
    };
    assert_eq!(names.len(), 5);
    let junk = SyncResponse::Records {
        records: vec![vec![0u8; 8]; names.len() + 1],
    };
    assert!(matches!(
        s.handle_response(&mine, junk, NOW),
        Err(SessionError::InvalidAnswer(AnswerError::TooManyRecords {
            got: 6,
            limit: 5
        }))
    ));
}

#[test]
fn a_peer_claiming_to_be_empty_gets_a_bounded_push_per_answer() {
    let store = store_with(MAX_PUSH_PER_ROUND + 500);
    let mut s = opened(&store);
    let empty = SyncResponse::Summaries {
        buckets: (0..=255).collect(),
        summaries: vec![],
        truncated: false,
    };
    s.handle_response(&store, empty, NOW).expect("valid answer");
    let mut pushed = 0;
    loop {
        match s.poll(&store, NOW) {
            InitiatorStep::Send(SyncRequest::Push { records }) => {
                assert!(records.len() <= MAX_RECORDS_PER_MESSAGE);
                pushed += records.len();
                s.handle_response(&store, SyncResponse::PushAck { applied: 0 }, NOW)
                    .expect("ack");
            }
            InitiatorStep::Send(SyncRequest::Digest { .. }) => break,
            other => panic!("unexpected step {other:?}"),
        }
    }
    assert_eq!(
        pushed, MAX_PUSH_PER_ROUND,
        "one answer causes at most this many pushes"
    );
}

#[test]
fn a_large_gap_still_syncs_in_full_over_sessions() {
    // The push bound costs rounds, not correctness: an empty peer still gets everything.
    let mut full = store_with(MAX_PUSH_PER_ROUND * 2 + 100);
    let mut empty = MemStore::new();
    let mut sessions = 0;
    while full.digest() != empty.digest() {
        sessions += 1;
        assert!(sessions < 10, "no progress");
        sync_once(&mut full, &mut empty, NOW);
    }
    assert_eq!(empty.len(), full.len());
}

#[test]
fn the_responder_lists_at_most_max_summaries_whatever_the_request() {
    let store = store_with(MAX_SUMMARIES + 300);
    // A request with a malformed bucket vector (every bucket differs) in a loop.
    for _ in 0..3 {
        match answer_digest(&store, &[0; 32], &[], None) {
            SyncResponse::Summaries {
                summaries,
                truncated,
                ..
            } => {
                assert_eq!(summaries.len(), MAX_SUMMARIES);
                assert!(truncated);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // bucket_entries_after hands over at most `limit` entries with bodies.
    let b = bucket_of("n0");
    assert!(store.bucket_entries_after(b, None, 3).len() <= 3);
}

proptest! {
    #![proptest_config(proptest_config(48))]

    /// Every answer an honest responder gives, from any cursor, passes validation.
    #[test]
    fn honest_answers_always_pass_validation(n in 0usize..300, m in 0usize..300, skip in 0usize..50) {
        let mine = store_with(n);
        let theirs = store_with(m);
        let mut s = Initiator::new(SessionConfig::default());
        let mut rounds = 0;
        while let InitiatorStep::Send(req) = s.poll(&mine, NOW) {
            rounds += 1;
            prop_assert!(rounds < 400);
            let answer = match req {
                SyncRequest::Digest { root, buckets } => answer_digest(&theirs, &root, &buckets, None),
                SyncRequest::DigestFrom { root, buckets, bucket, after } => {
                    answer_digest(&theirs, &root, &buckets, Some((bucket, after.as_str())))
                }
                SyncRequest::Fetch { names } => {
                    dpin_protocol::digest::answer_fetch(&theirs, &names[..names.len().saturating_sub(skip % 2)])
                }
                SyncRequest::Push { .. } => SyncResponse::PushAck { applied: 0 },
            };
            prop_assert!(s.handle_response(&mine, answer, NOW).is_ok());
        }
    }
}
