//! Byte-budgeted sync chunks and the rule that keeps older releases working (see
//! `dpin_protocol::sync`'s module docs).
//!
//! Before: every fetch asked for at most 64 names and every push carried at most 64 records,
//! whatever their size, so a 10,000-record divergence of ~150-byte records took ~160 round
//! trips. Now a session configured for a peer that takes budgeted chunks
//! ([`SessionConfig::budgeted`]) sends up to [`MAX_RECORDS_PER_CHUNK`] names or records a
//! message, cut at [`CHUNK_BYTES`] of records; the default configuration still sends only
//! what an older release accepts, and a responder still answers a fetch of up to 64 names
//! whole.

mod common;

use common::{signed, v4, zone_key, HOUR_MS, T0};
use dpin_protocol::digest::{
    answer_fetch, CHUNK_BYTES, MAX_RECORDS_PER_CHUNK, MAX_RECORDS_PER_MESSAGE,
};
use dpin_protocol::sync::{
    push_ack, respond, Initiator, InitiatorStep, ResponderAction, SessionConfig, SessionEnd,
};
use dpin_protocol::{
    Freshness, MemStore, SignedRecord, Store, SyncRequest, SyncResponse, MAX_RECORD_BYTES,
};

const NOW: u64 = T0;

/// `n` records named `{prefix}{i}`, each with `endpoints` endpoints (1 gives ~150 bytes, 60
/// gives ~1 KiB).
fn records(prefix: &str, n: usize, endpoints: u16) -> Vec<SignedRecord> {
    let key = zone_key(3);
    (0..n)
        .map(|i| {
            let eps = (0..endpoints).map(|p| v4(1, 2, 1000 + p)).collect();
            signed(&key, &format!("{prefix}{i}"), 1, NOW + HOUR_MS, eps)
        })
        .collect()
}

fn store_of(records: &[SignedRecord]) -> MemStore {
    let mut s = MemStore::new();
    for r in records {
        match s.apply(r, NOW, Freshness::Publish, None) {
            Ok(o) => assert!(o.changed_store()),
            Err(never) => match never {},
        }
    }
    s
}

fn apply(store: &mut MemStore, records: &[Vec<u8>]) -> usize {
    common::apply_replicated(store, records, NOW)
}

/// Every request one session sent, in order, with the answers' records.
#[derive(Default)]
struct Trace {
    requests: Vec<SyncRequest>,
    answers: Vec<SyncResponse>,
}

/// One session `init` → `resp` with `config`, through the wire codec.
fn session(init: &mut MemStore, resp: &mut MemStore, config: SessionConfig) -> Trace {
    let mut trace = Trace::default();
    let mut s = Initiator::new(config);
    loop {
        let req = match s.poll(init, NOW) {
            InitiatorStep::Send(req) => req,
            InitiatorStep::Done(end) => {
                assert_ne!(end, SessionEnd::RoundCap, "the session finished its work");
                return trace;
            }
        };
        let req = SyncRequest::decode(&req.encode()).expect("every request fits one message");
        trace.requests.push(req.clone());
        let answer = match respond(resp, req) {
            ResponderAction::Reply(a) => a,
            ResponderAction::ApplyThenAck(records) => push_ack(apply(resp, &records)),
        };
        let answer = SyncResponse::decode(&answer.encode()).expect("every answer fits one message");
        trace.answers.push(answer.clone());
        let records = s
            .handle_response(init, answer, NOW)
            .expect("honest answers fit the session");
        apply(init, &records);
    }
}

fn record_bytes(records: &[Vec<u8>]) -> usize {
    records.iter().map(Vec::len).sum()
}

/// Records beyond the first 64 of a message stay within the byte budget.
fn within_budget(records: &[Vec<u8>]) -> bool {
    records.len() <= MAX_RECORDS_PER_MESSAGE || record_bytes(records) <= CHUNK_BYTES
}

#[test]
fn a_budgeted_session_settles_a_large_divergence_in_a_few_messages() {
    let (ours, theirs) = (records("a", 3_000, 1), records("b", 3_000, 1));
    let (mut a, mut b) = (store_of(&ours), store_of(&theirs));
    let budgeted = session(&mut a, &mut b, SessionConfig::budgeted());
    assert_eq!(
        a.digest(),
        b.digest(),
        "one session settles both directions"
    );

    let (mut a, mut b) = (store_of(&ours), store_of(&theirs));
    let legacy = session(&mut a, &mut b, SessionConfig::default());
    assert_eq!(a.digest(), b.digest());

    for (req, answer) in budgeted.requests.iter().zip(&budgeted.answers) {
        match (req, answer) {
            (SyncRequest::Fetch { names }, SyncResponse::Records { records }) => {
                assert!(names.len() <= MAX_RECORDS_PER_CHUNK);
                assert!(within_budget(records));
            }
            (SyncRequest::Push { records }, _) => {
                assert!(records.len() <= MAX_RECORDS_PER_CHUNK);
                assert!(within_budget(records));
            }
            _ => {}
        }
    }
    assert!(
        budgeted.requests.len() * 5 < legacy.requests.len(),
        "{} requests budgeted, {} at 64 a message",
        budgeted.requests.len(),
        legacy.requests.len()
    );
}

#[test]
fn the_default_configuration_sends_only_what_an_older_release_accepts() {
    let (mut a, mut b) = (
        store_of(&records("a", 1_500, 1)),
        store_of(&records("b", 1_500, 1)),
    );
    let trace = session(&mut a, &mut b, SessionConfig::default());
    assert_eq!(a.digest(), b.digest());
    for req in &trace.requests {
        match req {
            SyncRequest::Fetch { names } => assert!(names.len() <= MAX_RECORDS_PER_MESSAGE),
            SyncRequest::Push { records } => assert!(records.len() <= MAX_RECORDS_PER_MESSAGE),
            _ => {}
        }
    }
}

#[test]
fn a_fetch_of_at_most_64_names_is_answered_whole_whatever_the_records_size() {
    let big = records("big", MAX_RECORDS_PER_MESSAGE, 60);
    assert!(
        record_bytes(&big.iter().map(SignedRecord::encode).collect::<Vec<_>>()) > CHUNK_BYTES / 4
    );
    let store = store_of(&big);
    let names: Vec<String> = big.iter().map(SignedRecord::name).collect();
    match answer_fetch(&store, &names) {
        SyncResponse::Records { records } => assert_eq!(records.len(), MAX_RECORDS_PER_MESSAGE),
        other => panic!("unexpected answer {other:?}"),
    }
}

#[test]
fn an_answer_cut_by_the_byte_budget_is_asked_again_from_the_first_name_left_out() {
    // ~1 KiB records: 700 of them are more than twice the budget.
    let theirs = records("c", 700, 60);
    assert!(theirs[0].encode().len() > 900 && theirs[0].encode().len() <= MAX_RECORD_BYTES);
    let (mut a, mut b) = (MemStore::new(), store_of(&theirs));
    let trace = session(&mut a, &mut b, SessionConfig::budgeted());
    assert_eq!(a.digest(), b.digest(), "every record arrived");
    let fetches: Vec<(&Vec<String>, &Vec<Vec<u8>>)> = trace
        .requests
        .iter()
        .zip(&trace.answers)
        .filter_map(|(q, a)| match (q, a) {
            (SyncRequest::Fetch { names }, SyncResponse::Records { records }) => {
                Some((names, records))
            }
            _ => None,
        })
        .collect();
    assert!(fetches.len() >= 3, "{} fetches", fetches.len());
    for pair in fetches.windows(2) {
        let ((names, records), (next, _)) = (pair[0], pair[1]);
        assert!(within_budget(records));
        assert!(records.len() < names.len(), "the answer was cut");
        // The next fetch starts at the first name the cut answer left out.
        assert_eq!(next[0], names[records.len()]);
    }
    let asked: usize = fetches.iter().map(|(_, r)| r.len()).sum();
    assert_eq!(asked, 700, "no record crossed twice");
}

/// A session that started before the peer said it takes budgeted chunks (the node dials and
/// syncs at once; identify arrives a few milliseconds later) moves to budgeted chunks from
/// its next request when the driver learns it, instead of fetching 64 names a request for
/// all its rounds.
#[test]
fn a_session_told_mid_way_that_the_peer_takes_budgeted_chunks_fetches_them_from_then_on() {
    let theirs = records("d", 3_000, 1);
    let (mut a, mut b) = (MemStore::new(), store_of(&theirs));
    let mut s = Initiator::new(SessionConfig::default());
    let mut fetches: Vec<usize> = Vec::new();
    while let InitiatorStep::Send(req) = s.poll(&a, NOW) {
        if let SyncRequest::Fetch { names } = &req {
            fetches.push(names.len());
            if fetches.len() == 2 {
                // Identify arrived while the second fetch was on its way.
                s.set_config(SessionConfig::budgeted());
            }
        }
        let answer = match respond(&b, req) {
            ResponderAction::Reply(a) => a,
            ResponderAction::ApplyThenAck(records) => push_ack(apply(&mut b, &records)),
        };
        let records = s
            .handle_response(&a, answer, NOW)
            .expect("honest answers fit the session");
        apply(&mut a, &records);
    }
    assert_eq!(a.digest(), b.digest(), "every record arrived");
    assert_eq!(
        &fetches[..2],
        &[MAX_RECORDS_PER_MESSAGE, MAX_RECORDS_PER_MESSAGE],
        "before the peer's limits were known"
    );
    assert!(
        fetches[2] > MAX_RECORDS_PER_MESSAGE,
        "the fetch after it asks for a budgeted chunk: {fetches:?}"
    );
    assert!(
        fetches.len() < 3_000 / MAX_RECORDS_PER_MESSAGE / 4,
        "{} fetches for 3,000 records",
        fetches.len()
    );
}
