//! Fuzzes the decoding an HTTP publish request goes through before it reaches the store:
//! the JSON body (`dpin_node::api::PublishBody`, as axum's `Json` extractor parses it with
//! serde_json), the hex record inside it, the record decoder and validation; and the name
//! normaliser every `/v1/resolve/NAME` path goes through (`dpin_node::api::normalize_name`).
//! Never panics; a normalised name normalises to itself.
#![no_main]

use dpin_node::api::{normalize_name, PublishBody};
use dpin_protocol::{Freshness, SignedRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = serde_json::from_slice::<PublishBody>(data) {
        if let Ok(bytes) = hex::decode(body.record.as_bytes()) {
            if let Ok(r) = SignedRecord::decode(&bytes) {
                let _ = r.validate(1_760_832_000_000, Freshness::Publish);
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(n) = normalize_name(text) {
            assert_eq!(normalize_name(&n).ok().as_deref(), Some(n.as_str()));
        }
    }
});
