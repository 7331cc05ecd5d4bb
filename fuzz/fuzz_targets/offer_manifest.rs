//! Structure-aware fuzzing of the record contents that random bytes almost never reach:
//! storage and compute offers, blob manifests, endpoints and tombstones under every kind of
//! label. Builds a body from the input, signs it with a fixed key, and checks that
//! validation, the codec, the offer view and the manifest helpers never panic, that a record
//! `sign` accepts validates and round-trips byte for byte, and that a forged copy (signature
//! bypassing `sign`) of an invalid body is refused by validation, single and batch alike.
#![no_main]

use dpin_protocol::blob::{held_bytes, manifest_matches_index, owner_by_vouches};
use dpin_protocol::offer::{OfferFilter, OfferView};
use dpin_protocol::record::{
    blob_label, verify_batch, COMPUTE_OFFER_LABEL, SIGNING_DOMAIN, STORAGE_OFFER_LABEL,
};
use dpin_protocol::{
    BlobManifest, ComputeOffer, Content, Endpoint, Freshness, Host, RecordBody, SignedRecord,
    StorageOffer, Transport, ZoneKey,
};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_760_832_000_000;

fn host(u: &mut Unstructured) -> Result<Host> {
    Ok(match u.int_in_range(0u8..=2)? {
        0 => Host::V4(u.arbitrary()?),
        1 => Host::V6(u.arbitrary()?),
        _ => Host::Name(u.arbitrary()?),
    })
}

fn content(u: &mut Unstructured, root: [u8; 32]) -> Result<Content> {
    Ok(match u.int_in_range(0u8..=4)? {
        0 => {
            let n = u.int_in_range(0usize..=70)?;
            let mut eps = Vec::with_capacity(n);
            for _ in 0..n {
                eps.push(Endpoint {
                    host: host(u)?,
                    port: u.arbitrary()?,
                    transport: if u.arbitrary()? {
                        Transport::Tcp
                    } else {
                        Transport::Udp
                    },
                    weight: u.arbitrary()?,
                });
            }
            Content::Endpoints(eps)
        }
        1 => Content::Tombstone,
        2 => Content::StorageOffer(StorageOffer {
            capacity_bytes: u.arbitrary()?,
            free_bytes: u.arbitrary()?,
            price_milli: u.arbitrary()?,
            region: u.arbitrary()?,
        }),
        3 => Content::ComputeOffer(ComputeOffer {
            cores: u.arbitrary()?,
            memory_bytes: u.arbitrary()?,
            gpus: u.arbitrary()?,
            price_milli: u.arbitrary()?,
            region: u.arbitrary()?,
        }),
        _ => Content::BlobManifest(BlobManifest {
            root: if u.arbitrary()? { root } else { u.arbitrary()? },
            size: u.arbitrary()?,
            chunk_size: u.arbitrary()?,
            chunks: u.arbitrary()?,
            replicas: u.arbitrary()?,
        }),
    })
}

fn body(u: &mut Unstructured, key: &ZoneKey) -> Result<RecordBody> {
    let root: [u8; 32] = u.arbitrary()?;
    let label = match u.int_in_range(0u8..=4)? {
        0 => STORAGE_OFFER_LABEL.to_owned(),
        1 => COMPUTE_OFFER_LABEL.to_owned(),
        2 => blob_label(&root),
        3 => "api".to_owned(),
        _ => u.arbitrary()?,
    };
    let content = content(u, root)?;
    Ok(RecordBody {
        zone: key.zone(),
        label,
        seq: u.arbitrary()?,
        expires_at_ms: NOW.wrapping_add(u.arbitrary::<u32>()? as u64 * 1000),
        content,
    })
}

/// Signs `body` with the raw ed25519 key, bypassing `RecordBody::sign`'s validation.
fn forge(key: &ZoneKey, body: RecordBody) -> SignedRecord {
    use ed25519_dalek::Signer;
    let signing = ed25519_dalek::SigningKey::from_bytes(&key.seed());
    let mut msg = SIGNING_DOMAIN.to_vec();
    msg.extend_from_slice(&body.canonical_bytes());
    SignedRecord {
        body,
        signature: signing.sign(&msg).to_bytes(),
    }
}

fn check(record: &SignedRecord, valid: bool) {
    let bytes = record.encode();
    if let Ok(back) = SignedRecord::decode(&bytes) {
        assert_eq!(&back, record, "decode(encode(r)) != r");
        assert_eq!(back.encode(), bytes, "encoding is not canonical");
    }
    let fields = record.validate_fields();
    let replicate = record.validate(NOW, Freshness::Replicate);
    let _ = record.validate(NOW, Freshness::Publish);
    if valid {
        assert_eq!(
            fields,
            Ok(()),
            "a record sign() accepted fails validate_fields"
        );
        assert_eq!(record.verify_signature(), Ok(()));
    }
    let batch_ok = verify_batch(std::slice::from_ref(record));
    assert_eq!(
        batch_ok,
        record.verify_signature().is_ok(),
        "batch != single"
    );
    let view = OfferView::build(
        std::iter::once(record),
        NOW,
        |z| Some(*z),
        |_| replicate.is_ok(),
    );
    let _ = view.list(&OfferFilter::default());
    let _ = view.storage();
    let _ = view.ignored();
    if let Content::BlobManifest(m) = &record.body.content {
        let _ = held_bytes(m.chunks, m.chunk_size, m.size);
        let index_len = (m.chunks as usize).saturating_mul(32);
        let _ = manifest_matches_index(m, &m.root, m.size, m.chunk_size, index_len);
        let _ = owner_by_vouches(&[record.body.zone, record.body.zone]);
    }
}

fuzz_target!(|data: &[u8]| {
    let key = ZoneKey::from_seed([7; 32]);
    let mut u = Unstructured::new(data);
    let Ok(body) = body(&mut u, &key) else {
        return;
    };
    match body.clone().sign(&key) {
        Ok(record) => check(&record, true),
        Err(_) => {
            // What a hostile writer holding the key could still put on the wire: refused by
            // field validation, though its signature is genuine.
            let forged = forge(&key, body);
            assert!(
                forged.validate_fields().is_err(),
                "sign() refused what validation accepts"
            );
            assert_eq!(forged.verify_signature(), Ok(()));
            check(&forged, false);
        }
    }
});
