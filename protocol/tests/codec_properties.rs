//! Properties of the wire codec and of signature binding: the decoders (records, sync and
//! blob messages, and the in-place `EndpointsView` of a record) never panic on any input
//! (including input over the size limits and hostile length prefixes), the view agrees with
//! every record that decodes, every valid record (endpoints, tombstones, offers, blob manifests) round-trips to exactly the same canonical bytes, and no single-byte change of a
//! signed record yields a record that still validates.
//!
//! Seed-deterministic: set `PROPTEST_RNG_SEED` / `PROPTEST_CASES` to explore further.

mod common;

use common::*;
use dpin_protocol::blob::{
    chunk_header, chunk_ref, put_chunk_header, put_chunk_ref, BlobRequest, BlobResponse,
    PutChunkRef, CHUNK_HEADER_BYTES, MAX_BLOB_MESSAGE_BYTES, PUT_CHUNK_HEADER_BYTES,
};
use dpin_protocol::digest::{Summary, MAX_SYNC_MESSAGE_BYTES};
use dpin_protocol::record::{
    blob_label, seq_ceiling, COMPUTE_OFFER_LABEL, MAX_CHUNK_BYTES, MAX_REPLICAS,
    STORAGE_OFFER_LABEL,
};
use dpin_protocol::{
    BlobManifest, ComputeOffer, Content, DecodeError, Endpoint, EndpointsView, Freshness, Host,
    SignedRecord, StorageOffer, SyncRequest, SyncResponse, Transport, ValidationError,
    MAX_RECORD_BYTES, MAX_TTL_MS,
};
use proptest::collection::vec;
use proptest::prelude::*;

const NOW: u64 = T0;

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
}

fn hostname() -> impl Strategy<Value = String> {
    // Labels start with a letter, so the last label is never all digits (that would read as
    // an IP address and is refused).
    vec("[a-z]([a-z0-9-]{0,61}[a-z0-9])?", 1..5)
        .prop_map(|labels| labels.join("."))
        .prop_filter("hostnames are at most 253 bytes", |h| h.len() <= 253)
}

fn host() -> impl Strategy<Value = Host> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(Host::V4),
        any::<[u8; 16]>().prop_map(Host::V6),
        hostname().prop_map(Host::Name),
    ]
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    (
        host(),
        1u16..,
        prop_oneof![Just(Transport::Tcp), Just(Transport::Udp)],
        1u16..,
    )
        .prop_map(|(host, port, transport, weight)| Endpoint {
            host,
            port,
            transport,
            weight,
        })
}

/// A non-empty endpoint set without duplicate (host, port, transport).
fn endpoints(max: usize) -> impl Strategy<Value = Vec<Endpoint>> {
    vec(endpoint(), 1..=max).prop_map(|eps| {
        let mut seen = std::collections::BTreeSet::new();
        eps.into_iter()
            .filter(|e| seen.insert((e.host.clone(), e.port, e.transport)))
            .collect()
    })
}

fn region() -> impl Strategy<Value = String> {
    // At most 16 non-control characters of at most 4 bytes: never over the 64-byte limit.
    prop_oneof!["[a-z0-9-]{0,64}", "\\PC{0,16}"].prop_filter("no control characters", |r| {
        !r.chars().any(char::is_control)
    })
}

/// A (label, content) pair that belongs together.
fn labelled_content() -> impl Strategy<Value = (String, Content)> {
    prop_oneof![
        4 => (label(), endpoints(6)).prop_map(|(l, eps)| (l, Content::Endpoints(eps))),
        1 => label().prop_map(|l| (l, Content::Tombstone)),
        1 => (any::<u64>(), any::<u64>(), any::<u64>(), region()).prop_map(|(a, b, price, region)| {
            (
                STORAGE_OFFER_LABEL.to_owned(),
                Content::StorageOffer(StorageOffer {
                    capacity_bytes: a.max(b),
                    free_bytes: a.min(b),
                    price_milli: price,
                    region,
                }),
            )
        }),
        1 => (1u32.., any::<u64>(), any::<u32>(), any::<u64>(), region()).prop_map(
            |(cores, memory_bytes, gpus, price_milli, region)| {
                (
                    COMPUTE_OFFER_LABEL.to_owned(),
                    Content::ComputeOffer(ComputeOffer { cores, memory_bytes, gpus, price_milli, region }),
                )
            }
        ),
        1 => prop_oneof![Just(STORAGE_OFFER_LABEL), Just(COMPUTE_OFFER_LABEL)]
            .prop_map(|l| (l.to_owned(), Content::Tombstone)),
        1 => blob_manifest().prop_map(|m| (blob_label(&m.root), Content::BlobManifest(m))),
        1 => any::<[u8; 32]>().prop_map(|root| (blob_label(&root), Content::Tombstone)),
    ]
}

/// A consistent manifest: `chunks = ceil(size / chunk_size)`, sizes and replicas in range.
fn blob_manifest() -> impl Strategy<Value = BlobManifest> {
    (
        any::<[u8; 32]>(),
        1..=MAX_CHUNK_BYTES,
        0u32..=100_000,
        any::<prop::sample::Index>(),
        1..=MAX_REPLICAS,
    )
        .prop_map(|(root, chunk_size, chunks, last, replicas)| {
            let size = match chunks {
                0 => 0,
                n => {
                    u64::from(n - 1) * u64::from(chunk_size)
                        + 1
                        + last.index(chunk_size as usize) as u64
                }
            };
            BlobManifest {
                root,
                size,
                chunk_size,
                chunks,
                replicas,
            }
        })
}

fn valid_record() -> impl Strategy<Value = SignedRecord> {
    (
        1u8..4,
        labelled_content(),
        1u64..=seq_ceiling(NOW, Freshness::Publish),
        1..=MAX_TTL_MS,
    )
        .prop_map(|(zone, (label, content), seq, ttl)| {
            let key = zone_key(zone);
            body(&key, &label, seq, NOW + ttl, content)
                .sign(&key)
                .expect("the strategy only builds valid records")
        })
}

/// A small record (one zone, short label, one or two endpoints): ~150-250 bytes, so that
/// checking every byte position stays cheap in debug builds.
fn small_record() -> impl Strategy<Value = SignedRecord> {
    (
        "[a-z]{1,8}",
        endpoints(2),
        1u64..=seq_ceiling(NOW, Freshness::Publish),
        1..=MAX_TTL_MS,
    )
        .prop_map(|(label, eps, seq, ttl)| signed(&zone_key(1), &label, seq, NOW + ttl, eps))
}

fn summary() -> impl Strategy<Value = Summary> {
    (".{0,80}", any::<u64>(), any::<[u8; 32]>()).prop_map(|(name, seq, hash)| Summary {
        name,
        seq,
        hash,
    })
}

fn sync_request() -> impl Strategy<Value = SyncRequest> {
    prop_oneof![
        (any::<[u8; 32]>(), vec(any::<u64>(), 0..300))
            .prop_map(|(root, buckets)| SyncRequest::Digest { root, buckets }),
        vec(".{0,80}", 0..70).prop_map(|names| SyncRequest::Fetch { names }),
        vec(vec(any::<u8>(), 0..300), 0..70).prop_map(|records| SyncRequest::Push { records }),
    ]
}

fn sync_response() -> impl Strategy<Value = SyncResponse> {
    prop_oneof![
        Just(SyncResponse::InSync),
        (
            vec(any::<u8>(), 0..256),
            vec(summary(), 0..50),
            any::<bool>()
        )
            .prop_map(|(buckets, summaries, truncated)| SyncResponse::Summaries {
                buckets,
                summaries,
                truncated
            }),
        vec(vec(any::<u8>(), 0..300), 0..70).prop_map(|records| SyncResponse::Records { records }),
        any::<u32>().prop_map(|applied| SyncResponse::PushAck { applied }),
        ".{0,200}".prop_map(|message| SyncResponse::Error { message }),
    ]
}

/// Applies random edits to `bytes`: for each `(at, byte, kind)`, an overwrite (0), an
/// insertion (1), a deletion (2) or a truncation (3) at position `at`.
fn mangle(bytes: &mut Vec<u8>, edits: &[(prop::sample::Index, u8, u8)]) {
    for &(at, byte, kind) in edits {
        let i = at.index(bytes.len() + 1);
        match kind {
            0 if i < bytes.len() => bytes[i] = byte,
            1 => bytes.insert(i, byte),
            2 if i < bytes.len() => {
                bytes.remove(i);
            }
            _ => bytes.truncate(i),
        }
    }
}

/// Feeds `bytes` to every decoder; a record that decodes is validated too. Returns whether
/// the record decoder accepted it. Panics are the failure this guards against.
fn decode_everything(bytes: &[u8]) -> bool {
    let _ = SyncRequest::decode(bytes);
    let _ = SyncResponse::decode(bytes);
    let _ = BlobRequest::decode(bytes);
    let _ = BlobResponse::decode(bytes);
    let view = EndpointsView::of(bytes);
    match SignedRecord::decode(bytes) {
        Ok(r) => {
            let _ = r.validate(NOW, Freshness::Replicate);
            assert_eq!(
                r.encode(),
                bytes,
                "a decoded record re-encodes to its input"
            );
            assert_view_agrees(&r, view);
            true
        }
        Err(_) => false,
    }
}

/// The in-place view of a record's bytes says what the decoded record says: its expiry and
/// every endpoint in order, or nothing for content other than endpoints.
fn assert_view_agrees(r: &SignedRecord, view: Option<EndpointsView<'_>>) {
    match (r.endpoints(), view) {
        (Some(eps), Some(v)) => {
            assert_eq!(v.expires_at_ms(), r.body.expires_at_ms);
            assert_eq!(v.len(), eps.len());
            let seen: Vec<Endpoint> = v.iter().map(|e| e.to_endpoint()).collect();
            assert_eq!(seen, eps, "the view's endpoints are the record's");
        }
        (None, None) => {}
        (eps, v) => panic!("the view ({v:?}) and the record ({eps:?}) disagree"),
    }
}

proptest! {
    #![proptest_config(proptest_config(256))]

    /// Random bytes of any length, including far over the 4 KiB record limit, never panic.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..10_000)) {
        let accepted = decode_everything(&bytes);
        if bytes.len() > MAX_RECORD_BYTES {
            prop_assert!(!accepted);
            prop_assert!(
                matches!(SignedRecord::decode(&bytes), Err(DecodeError::TooLarge { .. })),
                "over-size input must be refused before parsing"
            );
        }
    }

    /// Syntactically valid sync messages of arbitrary content round-trip exactly.
    #[test]
    fn sync_messages_round_trip(req in sync_request(), resp in sync_response()) {
        let bytes = req.encode();
        prop_assert_eq!(SyncRequest::decode(&bytes).expect("own request decodes"), req);
        let bytes = resp.encode();
        prop_assert_eq!(SyncResponse::decode(&bytes).expect("own response decodes"), resp);
    }

    /// Endpoint text (`HOST:PORT[/udp][@WEIGHT]`, IPv6 in brackets) parses back to itself.
    #[test]
    fn endpoint_text_round_trips(ep in endpoint()) {
        let text = ep.to_string();
        prop_assert_eq!(text.parse::<Endpoint>().expect("printed endpoints parse"), ep);
    }
}

proptest! {
    #![proptest_config(proptest_config(256))]

    /// Arbitrary valid records (labels, IPv4/IPv6/hostname endpoints, udp/tcp, weights,
    /// offers, tombstones) encode within the limit and decode to the same record, whose
    /// re-encoding is byte-identical (one canonical encoding) and which still validates.
    #[test]
    fn encode_decode_round_trips(record in valid_record()) {
        let bytes = record.encode();
        prop_assert!(bytes.len() <= MAX_RECORD_BYTES);
        let back = SignedRecord::decode(&bytes).expect("a signed record decodes");
        assert_view_agrees(&record, EndpointsView::of(&bytes));
        prop_assert_eq!(&back, &record);
        prop_assert_eq!(back.encode(), bytes);
        prop_assert_eq!(back.content_hash(), record.content_hash());
        prop_assert_eq!(back.validate(NOW, Freshness::Publish), Ok(()));
    }

    /// Valid record encodings with random edits (overwrites, insertions, deletions,
    /// truncation) never panic a decoder; whatever decodes re-encodes to its input.
    #[test]
    fn decoding_mangled_records_never_panics(
        record in small_record(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6),
    ) {
        let mut bytes = record.encode();
        mangle(&mut bytes, &edits);
        decode_everything(&bytes);
    }
}

proptest! {
    #![proptest_config(proptest_config(16))]

    /// XOR every byte position of an encoded signed record with a non-zero mask, one at a
    /// time: either the bytes no longer decode, or the decoded record fails validation.
    /// Never a different record that validates.
    #[test]
    fn flipping_any_byte_of_a_signed_record_fails_verification(
        record in small_record(),
        mask in 1u8..,
    ) {
        let bytes = record.encode();
        prop_assert_eq!(record.validate(NOW, Freshness::Replicate), Ok(()));
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= mask;
            if let Ok(other) = SignedRecord::decode(&flipped) {
                prop_assert_ne!(&other, &record, "byte {} changed but decoded the same", i);
                prop_assert!(
                    other.validate(NOW, Freshness::Replicate).is_err(),
                    "flipping byte {} of {} with {:#04x} gave a record that validates: {:?}",
                    i, bytes.len(), mask, other
                );
            }
        }
    }
}

#[test]
fn an_empty_endpoint_set_is_refused_at_sign_and_at_validate() {
    let key = zone_key(1);
    let empty = body(&key, "api", 7, NOW + 1_000, Content::Endpoints(vec![]));
    assert_eq!(
        empty.clone().sign(&key).err(),
        Some(ValidationError::EmptyEndpoints)
    );
    // A writer that skips the check still cannot get it accepted anywhere.
    let forged = forge(&key, empty);
    assert_eq!(
        forged.verify_signature(),
        Ok(()),
        "the forgery is properly signed"
    );
    let decoded = SignedRecord::decode(&forged.encode()).expect("it is well-formed on the wire");
    assert_eq!(
        decoded.validate(NOW, Freshness::Replicate),
        Err(ValidationError::EmptyEndpoints)
    );
}

#[test]
fn a_record_over_the_size_limit_cannot_be_signed() {
    let key = zone_key(1);
    let long_host = format!(
        "{}.{}.{}.example",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63)
    );
    let eps: Vec<Endpoint> = (1..=20u16)
        .map(|port| Endpoint {
            host: Host::Name(long_host.clone()),
            port,
            transport: Transport::Tcp,
            weight: 1,
        })
        .collect();
    let big = body(&key, "api", 1, NOW + 1_000, Content::Endpoints(eps));
    assert!(
        big.canonical_bytes().len() > MAX_RECORD_BYTES,
        "the body really is over the limit"
    );
    assert!(
        big.clone().sign(&key).is_err(),
        "an over-size record must not sign"
    );
    let forged = forge(&key, big);
    let bytes = forged.encode();
    assert!(
        bytes.is_empty() || SignedRecord::decode(&bytes).is_err(),
        "over-size bytes must not decode"
    );
    assert!(forged.validate(NOW, Freshness::Replicate).is_err());
}

#[test]
fn a_signature_from_another_zone_or_another_body_does_not_verify() {
    let a = zone_key(1);
    let b = zone_key(2);
    let rec = signed(&a, "api", 1, NOW + 1_000, vec![v4(1, 1, 80)]);
    let mut moved = rec.clone();
    moved.body.zone = b.zone();
    assert_eq!(
        moved.validate(NOW, Freshness::Replicate),
        Err(ValidationError::BadSignature)
    );
    let mut relabelled = rec.clone();
    relabelled.body.label = "web".into();
    assert_eq!(
        relabelled.validate(NOW, Freshness::Replicate),
        Err(ValidationError::BadSignature)
    );
    let mut bumped = rec;
    bumped.body.seq += 1;
    assert_eq!(
        bumped.validate(NOW, Freshness::Replicate),
        Err(ValidationError::BadSignature)
    );
}

#[test]
fn huge_length_prefixes_are_refused_without_allocating() {
    // A record whose label claims u64::MAX bytes (after a valid 32-byte zone).
    let mut rec = vec![0u8; 32];
    rec.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        SignedRecord::decode(&rec),
        Err(DecodeError::Malformed(_))
    ));
    // Fetch (variant 1) / Push (variant 2) / Summaries (variant 1) claiming 2^64-1 elements.
    for variant in [0u32, 1, 2] {
        let mut msg = variant.to_le_bytes().to_vec();
        if variant == 0 {
            msg.extend_from_slice(&[0u8; 32]);
        }
        msg.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(
            SyncRequest::decode(&msg).is_err(),
            "request variant {variant}"
        );
        assert!(
            SyncResponse::decode(&msg).is_err(),
            "response variant {variant}"
        );
    }
    let over = vec![0u8; MAX_SYNC_MESSAGE_BYTES + 1];
    assert!(matches!(
        SyncRequest::decode(&over),
        Err(DecodeError::TooLarge { .. })
    ));
    assert!(matches!(
        SyncResponse::decode(&over),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn encoding_is_canonical_and_trailing_bytes_are_refused() {
    let rec = signed(&zone_key(1), "api", 1, NOW + 1_000, vec![v4(1, 1, 80)]);
    let bytes = rec.encode();
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(
        SignedRecord::decode(&longer),
        Err(DecodeError::TrailingBytes(1))
    );
    for cut in 0..bytes.len() {
        assert!(
            SignedRecord::decode(&bytes[..cut]).is_err(),
            "a {cut}-byte prefix decoded"
        );
    }
}

/// The in-place chunk readers must agree with the decoders: `Some` exactly when the decoder
/// gives that variant, with the same fields.
fn chunk_readers_agree_with_decode(bytes: &[u8]) -> Result<(), TestCaseError> {
    let by_ref = put_chunk_ref(bytes).map(|r| (r.root, r.i, r.data.to_vec()));
    let decoded = match BlobRequest::decode(bytes) {
        Ok(BlobRequest::PutChunk { root, i, data }) => Some((root, i, data)),
        _ => None,
    };
    prop_assert_eq!(by_ref, decoded);
    let by_ref = chunk_ref(bytes).map(<[u8]>::to_vec);
    let decoded = match BlobResponse::decode(bytes) {
        Ok(BlobResponse::Chunk { data }) => Some(data),
        _ => None,
    };
    prop_assert_eq!(by_ref, decoded);
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config(256))]

    /// A chunk message built from its header and the data is byte for byte the encoding of
    /// the message, and the in-place readers give back the fields.
    #[test]
    fn chunk_headers_then_data_are_the_encoding(
        root in any::<[u8; 32]>(),
        i in any::<u32>(),
        data in vec(any::<u8>(), 0..4096),
    ) {
        let built = [&put_chunk_header(&root, i, data.len())[..], &data].concat();
        let req = BlobRequest::PutChunk { root, i, data: data.clone() };
        prop_assert_eq!(&built, &req.encode());
        prop_assert_eq!(built.len() - data.len(), PUT_CHUNK_HEADER_BYTES);
        prop_assert_eq!(put_chunk_ref(&built), Some(PutChunkRef { root, i, data: &data }));
        let built = [&chunk_header(data.len())[..], &data].concat();
        prop_assert_eq!(&built, &BlobResponse::Chunk { data: data.clone() }.encode());
        prop_assert_eq!(built.len() - data.len(), CHUNK_HEADER_BYTES);
        prop_assert_eq!(chunk_ref(&built), Some(&data[..]));
    }

    /// On any input (random bytes, chunk messages with random edits, other blob messages)
    /// the in-place readers accept exactly what the decoders decode as that variant.
    #[test]
    fn chunk_readers_accept_exactly_what_decode_accepts(
        random in vec(any::<u8>(), 0..200),
        root in any::<[u8; 32]>(),
        data in vec(any::<u8>(), 0..300),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 0..3),
    ) {
        chunk_readers_agree_with_decode(&random)?;
        let messages = [
            BlobRequest::PutChunk { root, i: 7, data: data.clone() }.encode(),
            BlobResponse::Chunk { data: data.clone() }.encode(),
            BlobRequest::GetChunk { root, i: 7 }.encode(),
            BlobResponse::Stored.encode(),
        ];
        for mut bytes in messages {
            chunk_readers_agree_with_decode(&bytes)?;
            mangle(&mut bytes, &edits);
            chunk_readers_agree_with_decode(&bytes)?;
        }
    }
}

/// Past the blob message limit neither reader accepts a well-formed chunk message, as the
/// decoders refuse it before parsing.
#[test]
fn chunk_readers_refuse_messages_over_the_limit() {
    let data = vec![5u8; MAX_BLOB_MESSAGE_BYTES - PUT_CHUNK_HEADER_BYTES + 1];
    let req = [&put_chunk_header(&[1; 32], 0, data.len())[..], &data].concat();
    assert!(put_chunk_ref(&req).is_none());
    assert!(BlobRequest::decode(&req).is_err());
    let ok = &req[..MAX_BLOB_MESSAGE_BYTES];
    let ok = [
        &put_chunk_header(&[1; 32], 0, ok.len() - PUT_CHUNK_HEADER_BYTES)[..],
        &ok[PUT_CHUNK_HEADER_BYTES..],
    ]
    .concat();
    assert!(put_chunk_ref(&ok).is_some());
    let data = vec![5u8; MAX_BLOB_MESSAGE_BYTES - CHUNK_HEADER_BYTES + 1];
    let resp = [&chunk_header(data.len())[..], &data].concat();
    assert!(chunk_ref(&resp).is_none());
    assert!(BlobResponse::decode(&resp).is_err());
}
