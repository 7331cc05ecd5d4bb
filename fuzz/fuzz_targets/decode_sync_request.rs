//! Fuzzes `SyncRequest::decode` and the responder: never panics; whatever decodes re-encodes
//! to exactly the input; every record a Push carries goes through the record decoder and
//! validation; the responder (`sync::respond`, against an empty and a 3000-name store) stays
//! within its bounds and its answer fits one message.
#![no_main]

use std::sync::OnceLock;

use dpin_protocol::digest::{
    CHUNK_BYTES, MAX_RECORDS_PER_CHUNK, MAX_RECORDS_PER_MESSAGE, MAX_SUMMARIES,
};
use dpin_protocol::sync::{respond, ResponderAction};
use dpin_protocol::{
    Content, Endpoint, Freshness, Host, MemStore, RecordBody, SignedRecord, Store, SyncRequest,
    SyncResponse, Transport, ZoneKey,
};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_760_832_000_000;

/// A responder store with 3000 names (about 12 per bucket).
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
    let Ok(request) = SyncRequest::decode(data) else {
        return;
    };
    assert_eq!(request.encode(), data, "decode/encode is not a round trip");
    if let SyncRequest::Push { records } = &request {
        for bytes in records {
            if let Ok(r) = SignedRecord::decode(bytes) {
                let _ = r.validate(NOW, Freshness::Replicate);
            }
        }
    }
    // The responder's work is bounded whatever the request: at most MAX_SUMMARIES summaries,
    // at most MAX_RECORDS_PER_CHUNK records (beyond the first MAX_RECORDS_PER_MESSAGE within
    // CHUNK_BYTES), and the answer fits one message.
    for store in [&MemStore::new(), store()] {
        match respond(store, request.clone()) {
            ResponderAction::Reply(answer) => {
                match &answer {
                    SyncResponse::Summaries { summaries, .. } => {
                        assert!(summaries.len() <= MAX_SUMMARIES)
                    }
                    SyncResponse::Records { records } => {
                        assert!(records.len() <= MAX_RECORDS_PER_CHUNK);
                        assert!(
                            records.len() <= MAX_RECORDS_PER_MESSAGE
                                || records.iter().map(Vec::len).sum::<usize>() <= CHUNK_BYTES
                        );
                    }
                    _ => {}
                }
                assert!(
                    !answer.encode().is_empty(),
                    "an answer does not fit one message"
                );
            }
            ResponderAction::ApplyThenAck(records) => {
                assert!(records.len() <= MAX_RECORDS_PER_CHUNK)
            }
        }
    }
});
