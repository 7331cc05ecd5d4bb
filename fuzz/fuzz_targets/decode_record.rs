//! Fuzzes `SignedRecord::decode` and the in-place `EndpointsView`: neither panics; whatever
//! decodes re-encodes to exactly the input (one canonical encoding), validating it never
//! panics, and the view of its bytes gives exactly its expiry and endpoints (none for other
//! content).
#![no_main]

use dpin_protocol::{Endpoint, EndpointsView, Freshness, SignedRecord, MAX_RECORD_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let view = EndpointsView::of(data);
    if let Some(v) = view {
        // Reading it through never panics, whatever the bytes.
        let _ = v.iter().map(|e| e.to_endpoint()).count();
    }
    if let Ok(record) = SignedRecord::decode(data) {
        assert!(data.len() <= MAX_RECORD_BYTES);
        assert_eq!(record.encode(), data, "decode/encode is not a round trip");
        let _ = record.content_hash();
        let _ = record.validate(1_760_832_000_000, Freshness::Replicate);
        let _ = record.validate(0, Freshness::Publish);
        match (record.endpoints(), view) {
            (Some(eps), Some(v)) => {
                assert_eq!(v.expires_at_ms(), record.body.expires_at_ms);
                let seen: Vec<Endpoint> = v.iter().map(|e| e.to_endpoint()).collect();
                assert_eq!(seen, eps, "the view's endpoints are the record's");
            }
            (None, None) => {}
            _ => panic!("the view and the decoded record disagree"),
        }
    }
});
