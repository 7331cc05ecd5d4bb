//! Helpers shared by the integration tests of `dpin-protocol` (included with `mod common;`).
//!
//! Nothing here decides an outcome: the helpers build signed records, drive one anti-entropy
//! session through the protocol's own state machine, exactly as a node does, and compute the *model* answer (the max of `(seq, content
//! hash)`) that the tests compare the real stores against.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;

use dpin_protocol::digest::MAX_SYNC_MESSAGE_BYTES;
use dpin_protocol::record::SIGNING_DOMAIN;
use dpin_protocol::sync::{
    push_ack, respond, Initiator, InitiatorStep, ResponderAction, SessionConfig, SessionEnd,
};
use dpin_protocol::{
    Content, Endpoint, Entry, Freshness, Host, MemStore, Outcome, RecordBody, SignedRecord, Store,
    SyncRequest, SyncResponse, Transport, ZoneKey,
};
use ed25519_dalek::Signer;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};

/// 2025-10-19T00:00:00Z, the day of the outage, in Unix milliseconds.
pub const T0: u64 = 1_760_832_000_000;
/// One hour in milliseconds.
pub const HOUR_MS: u64 = 3_600_000;

/// Default proptest seed: runs are reproducible. Explore other seeds with
/// `PROPTEST_RNG_SEED=<u64>`, more cases with `PROPTEST_CASES=<n>`.
const DEFAULT_SEED: u64 = 0xd914_2025_1019;

/// A seed-deterministic proptest configuration with `cases` cases (overridable by the
/// `PROPTEST_CASES` / `PROPTEST_RNG_SEED` environment variables). No regression files are
/// written: the fixed seed reproduces every failure, and proptest prints the minimal input.
pub fn proptest_config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        base.cases
    } else {
        cases
    };
    let rng_seed = match base.rng_seed {
        RngSeed::Random => RngSeed::Fixed(DEFAULT_SEED),
        fixed => fixed,
    };
    ProptestConfig {
        cases,
        rng_seed,
        failure_persistence: None,
        ..base
    }
}

/// The zone key of test zone `n` (deterministic).
pub fn zone_key(n: u8) -> ZoneKey {
    ZoneKey::from_seed([n; 32])
}

/// An IPv4 TCP endpoint `10.0.a.b:port`, weight 1.
pub fn v4(a: u8, b: u8, port: u16) -> Endpoint {
    Endpoint {
        host: Host::V4([10, 0, a, b]),
        port,
        transport: Transport::Tcp,
        weight: 1,
    }
}

/// An unsigned body for `label` in `key`'s zone.
pub fn body(
    key: &ZoneKey,
    label: &str,
    seq: u64,
    expires_at_ms: u64,
    content: Content,
) -> RecordBody {
    RecordBody {
        zone: key.zone(),
        label: label.to_owned(),
        seq,
        expires_at_ms,
        content,
    }
}

/// A signed endpoints record; panics if the protocol refuses to sign it.
pub fn signed(
    key: &ZoneKey,
    label: &str,
    seq: u64,
    expires_at_ms: u64,
    eps: Vec<Endpoint>,
) -> SignedRecord {
    body(key, label, seq, expires_at_ms, Content::Endpoints(eps))
        .sign(key)
        .expect("a well-formed endpoints record signs")
}

/// A signed tombstone; panics if the protocol refuses to sign it.
pub fn tombstone(key: &ZoneKey, label: &str, seq: u64, expires_at_ms: u64) -> SignedRecord {
    body(key, label, seq, expires_at_ms, Content::Tombstone)
        .sign(key)
        .expect("a tombstone signs")
}

/// Signs `body` with the raw ed25519 key, bypassing [`RecordBody::sign`]'s validation: what a
/// buggy or hostile writer holding the zone key could put on the wire.
pub fn forge(key: &ZoneKey, body: RecordBody) -> SignedRecord {
    let signing = ed25519_dalek::SigningKey::from_bytes(&key.seed());
    let mut msg = SIGNING_DOMAIN.to_vec();
    msg.extend_from_slice(&body.canonical_bytes());
    SignedRecord {
        body,
        signature: signing.sign(&msg).to_bytes(),
    }
}

/// The total order of the merge rule, written out independently of `dpin_protocol::merge`
/// (so the tests compare the store with a second statement of the rule, not with itself):
/// seq, then a live record over a tombstone, then the blake3 hash of the canonical body.
pub fn rank(r: &SignedRecord) -> dpin_protocol::merge::Rank {
    dpin_protocol::merge::Rank {
        seq: r.body.seq,
        live: !r.is_tombstone(),
        hash: r.content_hash(),
    }
}

/// The model winner per name: the max by [`rank`] over `records`.
pub fn model_winners<'a>(
    records: impl IntoIterator<Item = &'a SignedRecord>,
) -> BTreeMap<String, SignedRecord> {
    let mut best: BTreeMap<String, SignedRecord> = BTreeMap::new();
    for r in records {
        let name = r.name();
        match best.get(&name) {
            Some(have) if rank(have) >= rank(r) => {}
            _ => {
                best.insert(name, r.clone());
            }
        }
    }
    best
}

/// The outcome the merge rule must report for `r` given the model winner `have`.
pub fn expected_outcome(have: Option<&SignedRecord>, r: &SignedRecord) -> Outcome {
    let Some(have) = have else {
        return Outcome::Applied { previous_seq: None };
    };
    let seq = r.body.seq;
    match (seq.cmp(&have.body.seq), rank(r).cmp(&rank(have))) {
        (std::cmp::Ordering::Greater, _) => Outcome::Applied {
            previous_seq: Some(have.body.seq),
        },
        (std::cmp::Ordering::Less, _) => Outcome::Stale {
            have: have.body.seq,
            got: seq,
        },
        (std::cmp::Ordering::Equal, std::cmp::Ordering::Equal) => Outcome::Duplicate,
        (std::cmp::Ordering::Equal, ord) => Outcome::Conflict {
            seq,
            applied: ord == std::cmp::Ordering::Greater,
        },
    }
}

/// Inserts `r` as if it had been applied to an empty name (test setup without paying for
/// signature checks; only used for records this test signed itself).
pub fn seed_entry(store: &mut MemStore, r: &SignedRecord) {
    store.insert(&r.name(), Entry::from_record(r));
}

/// Unwraps a `MemStore` result (its error type is `Infallible`).
pub fn ok<T>(r: Result<T, std::convert::Infallible>) -> T {
    match r {
        Ok(v) => v,
        Err(never) => match never {},
    }
}

/// Every (name, entry) of a store, for whole-store equality.
pub fn snapshot(store: &MemStore) -> Vec<(String, Entry)> {
    store
        .iter()
        .map(|(n, e)| (n.to_owned(), e.clone()))
        .collect()
}

/// Applies every record `src` holds a body for to `dst` (what a full sync from `src` does).
pub fn merge_into(dst: &mut MemStore, src: &MemStore, now_ms: u64) {
    let records: Vec<SignedRecord> = src.iter().filter_map(|(_, e)| e.record()).collect();
    for outcome in ok(dst.apply_batch(&records, now_ms, Freshness::Replicate)) {
        assert!(
            !matches!(outcome, Outcome::Invalid(_)),
            "a record held by a replica was refused by another: {outcome:?}"
        );
    }
}

/// What one anti-entropy round cost and did.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoundStats {
    /// Encoded bytes of every message exchanged, both directions.
    pub bytes: usize,
    /// Messages exchanged.
    pub messages: usize,
    /// The responder said the roots are equal.
    pub in_sync: bool,
    /// Records the initiator fetched that changed its store.
    pub fetched_applied: usize,
    /// Records pushed that changed the responder's store.
    pub pushed_applied: usize,
}

fn wire_request(msg: SyncRequest, stats: &mut RoundStats) -> SyncRequest {
    let bytes = msg.encode();
    assert!(
        !bytes.is_empty() && bytes.len() <= MAX_SYNC_MESSAGE_BYTES,
        "request encodes within the limit"
    );
    stats.bytes += bytes.len();
    stats.messages += 1;
    let back = SyncRequest::decode(&bytes).expect("a request we encoded decodes");
    assert_eq!(back, msg, "sync request round trip");
    back
}

fn wire_response(msg: SyncResponse, stats: &mut RoundStats) -> SyncResponse {
    let bytes = msg.encode();
    assert!(
        !bytes.is_empty() && bytes.len() <= MAX_SYNC_MESSAGE_BYTES,
        "response encodes within the limit"
    );
    stats.bytes += bytes.len();
    stats.messages += 1;
    let back = SyncResponse::decode(&bytes).expect("a response we encoded decodes");
    assert_eq!(back, msg, "sync response round trip");
    back
}

fn decode_all(records: &[Vec<u8>]) -> Vec<SignedRecord> {
    records
        .iter()
        .map(|b| SignedRecord::decode(b).expect("a peer only sends records it accepted"))
        .collect()
}

/// Applies encoded records as replicated ones (what a session hands back to apply); returns
/// how many changed the store.
pub fn apply_replicated(store: &mut MemStore, records: &[Vec<u8>], now_ms: u64) -> usize {
    ok(store.apply_batch(&decode_all(records), now_ms, Freshness::Replicate))
        .iter()
        .filter(|o| o.changed_store())
        .count()
}

/// One anti-entropy session, initiator → responder, driven exactly as the node drives it:
/// the protocol's [`Initiator`] decides every request, [`respond`] every answer, and this only
/// carries messages (encoded and decoded, so the wire format is exercised) and applies what
/// the session hands over with `apply_batch` (signature + merge rule).
pub fn sync_once(init: &mut MemStore, resp: &mut MemStore, now_ms: u64) -> RoundStats {
    let mut stats = RoundStats::default();
    let mut session = Initiator::new(SessionConfig::default());
    loop {
        let req = match session.poll(init, now_ms) {
            InitiatorStep::Send(req) => wire_request(req, &mut stats),
            InitiatorStep::Done(end) => {
                stats.in_sync = end == SessionEnd::InSync;
                return stats;
            }
        };
        let answer = match respond(resp, req) {
            ResponderAction::Reply(answer) => answer,
            ResponderAction::ApplyThenAck(records) => {
                let outcomes =
                    ok(resp.apply_batch(&decode_all(&records), now_ms, Freshness::Replicate));
                let mut applied = 0;
                for o in outcomes {
                    assert!(
                        !matches!(o, Outcome::Invalid(_)),
                        "pushed record refused: {o:?}"
                    );
                    applied += usize::from(o.changed_store());
                }
                stats.pushed_applied += applied;
                push_ack(applied)
            }
        };
        let answer = wire_response(answer, &mut stats);
        let records = session
            .handle_response(init, answer, now_ms)
            .expect("an honest responder's answers fit the session");
        if !records.is_empty() {
            let outcomes =
                ok(init.apply_batch(&decode_all(&records), now_ms, Freshness::Replicate));
            for o in outcomes {
                assert!(
                    !matches!(o, Outcome::Invalid(_)),
                    "fetched record refused: {o:?}"
                );
                stats.fetched_applied += usize::from(o.changed_store());
            }
        }
    }
}

/// Two distinct mutable references into a slice.
pub fn pair<T>(items: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b, "a replica does not sync with itself");
    if a < b {
        let (lo, hi) = items.split_at_mut(b);
        (&mut lo[a], &mut hi[0])
    } else {
        let (lo, hi) = items.split_at_mut(a);
        (&mut hi[0], &mut lo[b])
    }
}

/// Runs rounds over every ordered pair of replicas until one full pass changes nothing (or
/// `max_passes` is reached). Returns the number of passes that changed something.
pub fn sync_until_quiet(replicas: &mut [MemStore], now_ms: u64, max_passes: usize) -> usize {
    let n = replicas.len();
    for pass in 0..max_passes {
        let mut changed = 0;
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    let (x, y) = pair(replicas, a, b);
                    let s = sync_once(x, y, now_ms);
                    changed += s.fetched_applied + s.pushed_applied;
                }
            }
        }
        if changed == 0 {
            return pass;
        }
    }
    max_passes
}
