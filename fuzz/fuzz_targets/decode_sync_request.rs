//! Fuzzes `SyncRequest::decode`: never panics; whatever decodes re-encodes to exactly the
//! input, and every record a Push carries goes through the record decoder and validation.
#![no_main]

use dpin_protocol::{Freshness, SignedRecord, SyncRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = SyncRequest::decode(data) {
        assert_eq!(request.encode(), data, "decode/encode is not a round trip");
        match &request {
            SyncRequest::Push { records } => {
                for bytes in records {
                    if let Ok(r) = SignedRecord::decode(bytes) {
                        let _ = r.validate(1_760_832_000_000, Freshness::Replicate);
                    }
                }
            }
            SyncRequest::Digest { root, buckets } => {
                let store = dpin_protocol::MemStore::new();
                let _ = dpin_protocol::digest::answer_digest(&store, root, buckets, None);
            }
            SyncRequest::DigestFrom {
                root,
                buckets,
                bucket,
                after,
            } => {
                let store = dpin_protocol::MemStore::new();
                let _ = dpin_protocol::digest::answer_digest(
                    &store,
                    root,
                    buckets,
                    Some((*bucket, after.as_str())),
                );
            }
            SyncRequest::Fetch { names } => {
                let store = dpin_protocol::MemStore::new();
                let _ = dpin_protocol::digest::answer_fetch(&store, names);
            }
        }
    }
});
