//! Fuzzes the initiator of an anti-entropy session against a lying responder: a populated
//! local store, then a sequence of arbitrary `SyncResponse` messages (length-prefixed in the
//! input), each decoded and handed to `Initiator::handle_response`. Checks that nothing
//! panics and that the bounds the session promises hold whatever the answers: every fetch
//! asks for at most `MAX_RECORDS_PER_MESSAGE` names and never the same name twice in one
//! answer's plan, at most `MAX_SUMMARIES` names are fetched per answer and at most
//! `MAX_PUSH_PER_ROUND` records pushed per answer, records handed back never outnumber the
//! names asked, and the session ends within its round cap.
#![no_main]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use dpin_protocol::digest::{MAX_RECORDS_PER_MESSAGE, MAX_SUMMARIES};
use dpin_protocol::sync::{
    Initiator, InitiatorStep, SessionConfig, MAX_PUSH_PER_ROUND, MAX_SYNC_ROUNDS,
};
use dpin_protocol::{
    Content, Endpoint, Freshness, Host, MemStore, RecordBody, Store, SyncRequest, SyncResponse,
    Transport, ZoneKey,
};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_760_832_000_000;

fn store() -> &'static MemStore {
    static STORE: OnceLock<MemStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let key = ZoneKey::from_seed([3; 32]);
        let mut s = MemStore::new();
        for i in 0..3000u32 {
            let body = RecordBody {
                zone: key.zone(),
                label: format!("n{i}"),
                seq: 1,
                expires_at_ms: NOW + 3_600_000,
                content: Content::Endpoints(vec![Endpoint {
                    host: Host::V4([10, 0, 0, 1]),
                    port: 80,
                    transport: Transport::Tcp,
                    weight: 1,
                }]),
            };
            let r = body.sign(&key).expect("valid record");
            let _ = s.apply(&r, NOW, Freshness::Publish, None);
        }
        s
    })
}

fuzz_target!(|data: &[u8]| {
    let store = store();
    let mut session = Initiator::new(SessionConfig::default());
    let mut rest = data;
    let mut digests = 0usize;
    let mut fetched_this_answer = 0usize;
    let mut pushed_this_answer = 0usize;
    let mut asked_this_answer: BTreeSet<String> = BTreeSet::new();
    for _ in 0..200 {
        let asked = match session.poll(store, NOW) {
            InitiatorStep::Done(_) => return,
            InitiatorStep::Send(SyncRequest::Digest { .. } | SyncRequest::DigestFrom { .. }) => {
                digests += 1;
                assert!(digests <= MAX_SYNC_ROUNDS, "past the round cap");
                fetched_this_answer = 0;
                pushed_this_answer = 0;
                asked_this_answer.clear();
                0
            }
            InitiatorStep::Send(SyncRequest::Fetch { names }) => {
                assert!(!names.is_empty() && names.len() <= MAX_RECORDS_PER_MESSAGE);
                fetched_this_answer += names.len();
                assert!(fetched_this_answer <= MAX_SUMMARIES, "fetch past the bound");
                for n in &names {
                    assert!(asked_this_answer.insert(n.clone()), "name fetched twice");
                }
                names.len()
            }
            InitiatorStep::Send(SyncRequest::Push { records }) => {
                assert!(records.len() <= MAX_RECORDS_PER_MESSAGE);
                pushed_this_answer += records.len();
                assert!(
                    pushed_this_answer <= MAX_PUSH_PER_ROUND,
                    "push past the bound"
                );
                0
            }
        };
        // Next answer: u32 length prefix, then that many bytes.
        if rest.len() < 4 {
            return;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let len = len.min(rest.len() - 4);
        let (msg, tail) = rest[4..].split_at(len);
        rest = tail;
        let Ok(answer) = SyncResponse::decode(msg) else {
            return;
        };
        match session.handle_response(store, answer, NOW) {
            Ok(records) => assert!(records.len() <= asked, "more records than asked"),
            Err(_) => {
                assert!(matches!(session.poll(store, NOW), InitiatorStep::Done(_)));
                return;
            }
        }
    }
});
