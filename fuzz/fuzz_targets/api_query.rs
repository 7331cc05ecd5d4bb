//! Fuzzes what an HTTP request's path and query string go through before a handler runs,
//! parsed the way axum's `Query` and `Path` extractors do (serde_urlencoded, percent-decoded
//! path segments): the offers filter (`dpin_protocol::offer::OfferFilter`, then listing a
//! fixed set of storage and compute offers through it), the upload query
//! (`dpin_node::api::PutQuery`), a blocking read's wait (`dpin_node::api::WaitQuery`), blob hashes (`dpin_node::api::parse_hash`) and names
//! (`dpin_node::api::normalize_name`). Never panics; a listing holds only offers the filter
//! matches; a parsed hash prints back to the (lower-cased) input.
#![no_main]

use std::sync::OnceLock;

use dpin_node::api::{normalize_name, parse_hash, PutQuery, WaitQuery};
use dpin_protocol::offer::{OfferFilter, OfferView};
use dpin_protocol::record::{COMPUTE_OFFER_LABEL, STORAGE_OFFER_LABEL};
use dpin_protocol::{ComputeOffer, Content, RecordBody, SignedRecord, StorageOffer, ZoneKey};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_760_832_000_000;

/// Six offers from six zones: storage and compute, two regions, three prices.
fn offers() -> &'static Vec<SignedRecord> {
    static OFFERS: OnceLock<Vec<SignedRecord>> = OnceLock::new();
    OFFERS.get_or_init(|| {
        (0..6u8)
            .map(|i| {
                let key = ZoneKey::from_seed([i + 1; 32]);
                let region = if i % 2 == 0 { "eu" } else { "us" }.to_owned();
                let (label, content) = if i < 3 {
                    (
                        STORAGE_OFFER_LABEL,
                        Content::StorageOffer(StorageOffer {
                            capacity_bytes: 1 << 40,
                            free_bytes: u64::from(i) << 30,
                            price_milli: u64::from(i) * 10,
                            region,
                        }),
                    )
                } else {
                    (
                        COMPUTE_OFFER_LABEL,
                        Content::ComputeOffer(ComputeOffer {
                            cores: u32::from(i) * 4,
                            memory_bytes: u64::from(i) << 32,
                            gpus: u32::from(i % 2),
                            price_milli: u64::from(i) * 10,
                            region,
                        }),
                    )
                };
                RecordBody {
                    zone: key.zone(),
                    label: label.to_owned(),
                    seq: 1,
                    expires_at_ms: NOW + 600_000,
                    content,
                }
                .sign(&key)
                .expect("valid offer")
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Query strings.
    if let Ok(filter) = serde_urlencoded::from_str::<OfferFilter>(text) {
        let view = OfferView::build(offers().iter(), NOW, |z| Some(*z), |_| true);
        for o in view.list(&filter) {
            assert!(
                filter.matches(o),
                "listed an offer the filter does not match"
            );
        }
    }
    let _ = serde_urlencoded::from_str::<PutQuery>(text);
    // A blocking read's wait: never longer than the bound, and none without a seq.
    if let Ok(q) = serde_urlencoded::from_str::<WaitQuery>(text) {
        if let Ok(Some((_, wait))) = q.wait() {
            assert!(q.wait_seq.is_some());
            assert!(wait.as_millis() <= u128::from(dpin_node::watch::MAX_WAIT_MS));
        }
    }
    // Path segments (axum percent-decodes them before the handler sees them).
    let segment = percent_decode(text);
    if let Ok(hash) = parse_hash(&segment) {
        assert_eq!(hex::encode(hash), segment.to_ascii_lowercase());
    }
    if let Ok(n) = normalize_name(&segment) {
        assert_eq!(normalize_name(&n).ok().as_deref(), Some(n.as_str()));
    }
});

/// Percent-decodes `s` (invalid escapes kept as they are; invalid UTF-8 replaced), as a path
/// extractor would before handing the segment over.
fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
