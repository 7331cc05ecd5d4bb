//! Fuzzes `SignedRecord::decode`: never panics; whatever decodes re-encodes to exactly the
//! input (one canonical encoding), and validating it never panics.
#![no_main]

use dpin_protocol::{Freshness, SignedRecord, MAX_RECORD_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = SignedRecord::decode(data) {
        assert!(data.len() <= MAX_RECORD_BYTES);
        assert_eq!(record.encode(), data, "decode/encode is not a round trip");
        let _ = record.content_hash();
        let _ = record.validate(1_760_832_000_000, Freshness::Replicate);
        let _ = record.validate(0, Freshness::Publish);
    }
});
