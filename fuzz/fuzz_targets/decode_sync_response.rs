//! Fuzzes `SyncResponse::decode`: never panics; whatever decodes re-encodes to exactly the
//! input; summaries are planned against an empty store and records validated, without panic.
#![no_main]

use dpin_protocol::{plan_sync, Freshness, MemStore, SignedRecord, SyncResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = SyncResponse::decode(data) {
        assert_eq!(response.encode(), data, "decode/encode is not a round trip");
        match &response {
            SyncResponse::Summaries {
                buckets,
                summaries,
                truncated,
            } => {
                let store = MemStore::new();
                let plan = plan_sync(
                    &store,
                    buckets,
                    summaries,
                    *truncated,
                    None,
                    1_760_832_000_000,
                );
                assert!(plan.push.is_empty(), "an empty store has nothing to push");
            }
            SyncResponse::Records { records } => {
                for bytes in records {
                    if let Ok(r) = SignedRecord::decode(bytes) {
                        let _ = r.validate(1_760_832_000_000, Freshness::Replicate);
                    }
                }
            }
            _ => {}
        }
    }
});
