//! Catching up a large difference (see `dpin_protocol::sync`'s module docs, "Catching up"):
//! sessions that hit the round cap and changed the store are continued at once from where
//! their listing stopped, concurrent sessions start at different buckets, queued fetches
//! may be sent before the previous answer is applied, a node catching up refuses pushes,
//! and exact copies of held winners are told apart without a signature check.

mod common;

use std::collections::BTreeSet;

use common::{signed, v4, zone_key, HOUR_MS, T0};
use dpin_protocol::digest::{bucket_of, MAX_SUMMARIES};
use dpin_protocol::sync::{
    is_held_copy, push_ack, refuse_push_while_catching_up, respond, Initiator, InitiatorStep,
    ResponderAction, SessionConfig, SessionEnd, SessionError, CATCH_UP_FETCHED,
};
use dpin_protocol::{Freshness, MemStore, SignedRecord, Store, SyncRequest, SyncResponse};

const NOW: u64 = T0;

fn records(n: usize) -> Vec<SignedRecord> {
    let key = zone_key(5);
    (0..n)
        .map(|i| signed(&key, &format!("n{i}"), 1, NOW + HOUR_MS, vec![v4(1, 2, 80)]))
        .collect()
}

fn store_of(records: &[SignedRecord]) -> MemStore {
    let mut s = MemStore::new();
    match s.apply_batch(records, NOW, Freshness::Publish) {
        Ok(o) => assert!(o.iter().all(|o| o.changed_store())),
        Err(never) => match never {},
    }
    s
}

fn apply(store: &mut MemStore, records: &[Vec<u8>]) -> usize {
    common::apply_replicated(store, records, NOW)
}

fn answer(resp: &mut MemStore, req: SyncRequest) -> SyncResponse {
    match respond(resp, req) {
        ResponderAction::Reply(a) => a,
        ResponderAction::ApplyThenAck(records) => push_ack(apply(resp, &records)),
    }
}

/// Runs `s` to its end against `resp`, applying every answer before the next poll; returns
/// how it ended and how many records changed `init`.
fn run(s: &mut Initiator, init: &mut MemStore, resp: &mut MemStore) -> (SessionEnd, usize) {
    let mut changed = 0;
    loop {
        let req = match s.poll(init, NOW) {
            InitiatorStep::Send(req) => req,
            InitiatorStep::Done(end) => return (end, changed),
        };
        let a = answer(resp, req);
        let records = s.handle_response(init, a, NOW).expect("honest answers");
        changed += apply(init, &records);
    }
}

#[test]
fn a_fresh_node_catches_up_by_continuing_capped_sessions_from_their_cursor() {
    let all = records(5 * MAX_SUMMARIES);
    let mut resp = store_of(&all);
    let mut init = MemStore::new();
    let config = SessionConfig {
        max_rounds: 2,
        ..SessionConfig::budgeted()
    };
    let mut s = Initiator::starting_at(config, 77);
    let mut sessions = 0;
    loop {
        sessions += 1;
        assert!(sessions <= 10, "a bounded number of sessions");
        let (end, changed) = run(&mut s, &mut init, &mut resp);
        if !end.continue_at_once(changed) {
            break;
        }
        assert_eq!(end, SessionEnd::RoundCap);
        s = Initiator::resume(config, s.cursor());
    }
    assert_eq!(init.len(), all.len(), "every record arrived");
    assert_eq!(init.digest().root, resp.digest().root);
    assert!(
        sessions >= 3,
        "two rounds of 2,048 names per session: {sessions}"
    );
}

#[test]
fn only_a_capped_session_that_changed_the_store_is_continued_at_once() {
    assert!(SessionEnd::RoundCap.continue_at_once(1));
    assert!(!SessionEnd::RoundCap.continue_at_once(0));
    assert!(!SessionEnd::InSync.continue_at_once(10));
    assert!(!SessionEnd::NothingToDo.continue_at_once(10));
}

#[test]
fn a_peer_that_advertises_records_it_never_delivers_gets_no_continuation() {
    // The responder lists summaries of records it then does not answer for.
    let all = records(3 * MAX_SUMMARIES);
    let mut liar = store_of(&all);
    let mut init = MemStore::new();
    let config = SessionConfig {
        max_rounds: 2,
        ..SessionConfig::budgeted()
    };
    let mut s = Initiator::new(config);
    let mut changed = 0;
    let end = loop {
        let req = match s.poll(&init, NOW) {
            InitiatorStep::Send(req) => req,
            InitiatorStep::Done(end) => break end,
        };
        let a = match req {
            SyncRequest::Fetch { .. } => SyncResponse::Records { records: vec![] },
            other => answer(&mut liar, other),
        };
        let records = s.handle_response(&init, a, NOW).expect("fits the rules");
        changed += apply(&mut init, &records);
    };
    assert_eq!(end, SessionEnd::RoundCap);
    assert_eq!(changed, 0);
    assert!(!end.continue_at_once(changed));
}

/// The names of the first fetch of a fresh session starting at `bucket`.
fn first_fetch(resp: &mut MemStore, bucket: u8) -> Vec<String> {
    let init = MemStore::new();
    let mut s = Initiator::starting_at(SessionConfig::budgeted(), bucket);
    loop {
        match s.poll(&init, NOW) {
            InitiatorStep::Send(SyncRequest::Fetch { names }) => return names,
            InitiatorStep::Send(req) => {
                let a = answer(resp, req);
                s.handle_response(&init, a, NOW).expect("honest answers");
            }
            InitiatorStep::Done(end) => panic!("ended before fetching: {end:?}"),
        }
    }
}

#[test]
fn sessions_started_at_different_buckets_fetch_different_records_first() {
    let all = records(4 * MAX_SUMMARIES);
    let mut resp = store_of(&all);
    let a = first_fetch(&mut resp, 0);
    let b = first_fetch(&mut resp, 128);
    assert!(!a.is_empty() && !b.is_empty());
    let a: BTreeSet<_> = a.into_iter().collect();
    assert!(
        b.iter().all(|n| !a.contains(n)),
        "the two sessions fetch disjoint records first"
    );
    assert!(
        b.iter().all(|n| bucket_of(n) >= 128),
        "listing starts at 128"
    );
}

#[test]
fn queued_fetches_are_sent_before_the_previous_answer_is_applied() {
    let all = records(MAX_SUMMARIES);
    let mut resp = store_of(&all);
    let mut init = MemStore::new();
    // 64 names a fetch: one digest answer plans 32 fetches.
    let mut s = Initiator::new(SessionConfig::default());
    // What a pipelining driver holds: the records of the last answer, not applied yet.
    let mut unapplied: Vec<Vec<u8>> = Vec::new();
    let mut fetches_while_unapplied = 0;
    loop {
        if !s.fetch_queued() {
            // Anything but a queued fetch reads the store: apply first.
            apply(&mut init, &unapplied);
            unapplied.clear();
        }
        let req = match s.poll(&init, NOW) {
            InitiatorStep::Send(req) => req,
            InitiatorStep::Done(end) => {
                assert_eq!(end, SessionEnd::InSync);
                break;
            }
        };
        if !unapplied.is_empty() {
            assert!(
                matches!(req, SyncRequest::Fetch { .. }),
                "only fetches go out while records wait to be applied: {req:?}"
            );
            fetches_while_unapplied += 1;
        }
        let a = answer(&mut resp, req);
        let records = s.handle_response(&init, a, NOW).expect("honest answers");
        if !records.is_empty() {
            // At most one answer waits: the previous one is applied before it.
            apply(&mut init, &unapplied);
            unapplied = records;
        }
    }
    assert!(fetches_while_unapplied >= 30, "{fetches_while_unapplied}");
    assert_eq!(init.len(), all.len());
    assert_eq!(init.digest().root, resp.digest().root);
}

#[test]
fn a_session_counts_as_catching_up_once_it_fetched_a_full_listing() {
    let all = records(3 * MAX_SUMMARIES);
    let mut resp = store_of(&all);
    let mut init = MemStore::new();
    let mut s = Initiator::new(SessionConfig::budgeted());
    let mut fetched = 0;
    let mut seen_catching_up_at = None;
    loop {
        assert_eq!(
            s.catching_up(),
            s.stats().fetched >= CATCH_UP_FETCHED,
            "the mark follows the names fetched"
        );
        if s.catching_up() && seen_catching_up_at.is_none() {
            seen_catching_up_at = Some(fetched);
        }
        let req = match s.poll(&init, NOW) {
            InitiatorStep::Send(req) => req,
            InitiatorStep::Done(_) => break,
        };
        if let SyncRequest::Fetch { names } = &req {
            fetched += names.len();
        }
        let a = answer(&mut resp, req);
        let records = s.handle_response(&init, a, NOW).expect("honest answers");
        apply(&mut init, &records);
    }
    assert!(
        seen_catching_up_at.is_some_and(|f| f >= CATCH_UP_FETCHED),
        "{seen_catching_up_at:?}"
    );
    assert_eq!(init.len(), all.len());
}

#[test]
fn a_session_that_mends_a_few_differences_is_not_catching_up() {
    let all = records(MAX_SUMMARIES);
    let mut resp = store_of(&all);
    // The initiator lacks 10 of the responder's records.
    let mut init = store_of(&all[10..]);
    let mut s = Initiator::new(SessionConfig::budgeted());
    let (end, changed) = run(&mut s, &mut init, &mut resp);
    assert_eq!(end, SessionEnd::InSync);
    assert_eq!(changed, 10);
    assert!(!s.catching_up());
}

#[test]
fn a_push_refused_while_catching_up_ends_the_pushers_session_as_a_refusal() {
    // The pusher holds records the other side lacks: its session plans pushes.
    let all = records(100);
    let mut init = store_of(&all);
    let resp = MemStore::new();
    let mut s = Initiator::new(SessionConfig::default());
    let err = loop {
        let req = match s.poll(&init, NOW) {
            InitiatorStep::Send(req) => req,
            InitiatorStep::Done(end) => panic!("ended without pushing: {end:?}"),
        };
        let a = match req {
            SyncRequest::Push { .. } => refuse_push_while_catching_up(),
            other => match respond(&resp, other) {
                ResponderAction::Reply(a) => a,
                ResponderAction::ApplyThenAck(_) => unreachable!("only pushes apply"),
            },
        };
        match s.handle_response(&init, a, NOW) {
            Ok(records) => {
                apply(&mut init, &records);
            }
            Err(e) => break e,
        }
    };
    // A refusal (counted as a failed sync), not an invalid answer (held against the peer).
    assert!(matches!(err, SessionError::Refused(_)), "{err:?}");
    assert!(matches!(s.poll(&init, NOW), InitiatorStep::Done(_)));
}

#[test]
fn only_a_byte_identical_copy_of_the_held_winner_is_a_held_copy() {
    let key = zone_key(5);
    let r = signed(&key, "web", 2, NOW + HOUR_MS, vec![v4(1, 2, 80)]);
    let store = store_of(std::slice::from_ref(&r));
    let name = r.name();
    let wire = r.encode();
    assert!(is_held_copy(&store, &name, &wire));
    // The same body under another signature: not a copy (it must be checked).
    let mut forged = wire.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(!is_held_copy(&store, &name, &forged));
    // A newer record of the name, and a name not held.
    let newer = signed(&key, "web", 3, NOW + HOUR_MS, vec![v4(1, 2, 80)]);
    assert!(!is_held_copy(&store, &name, &newer.encode()));
    let other = signed(&key, "api", 2, NOW + HOUR_MS, vec![v4(1, 2, 80)]);
    assert!(!is_held_copy(&store, &other.name(), &other.encode()));
    // The held bytes under another name.
    assert!(!is_held_copy(&store, &other.name(), &wire));
}
