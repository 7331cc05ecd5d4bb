//! One acceptance rule for record signatures (issue 12, item 6).
//!
//! Sync verifies signatures in batches; gossip and the API verify one at a time. If the two
//! ever disagree on some crafted record, replicas that received it by different paths hold
//! different winners for good. These tests craft the inputs where ed25519 implementations are
//! known to disagree — small-order ("weak") zone keys, non-canonical point encodings, a
//! torsion component in `R`, an unreduced `S` — and check that
//!
//! * batch verification ([`verify_batch`]) accepts exactly what single verification
//!   ([`SignedRecord::verify_signature`]) accepts, alone and mixed into batches;
//! * `Store::apply` and `Store::apply_batch` give the same outcome for every such record;
//! * weak zone keys are refused everywhere with [`ValidationError::WeakZoneKey`]: as a zone id
//!   in text, in a record's fields, through single and batch apply.

mod common;

use common::{proptest_config, v4, zone_key, HOUR_MS, T0};
use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use dpin_protocol::keys::WeakKey;
use dpin_protocol::record::{verify_batch, SIGNING_DOMAIN};
use dpin_protocol::{
    Content, Freshness, MemStore, Outcome, RecordBody, SignedRecord, Store, ValidationError,
    ZoneId, ZoneKey,
};
use proptest::prelude::*;
use sha2::{Digest, Sha512};

const NOW: u64 = T0;

/// The group order l, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// The identity point (0, 1), canonical encoding.
fn identity_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0] = 1;
    b
}

/// The identity point encoded with y = p + 1: decompresses fine, but is not canonical.
fn identity_non_canonical() -> [u8; 32] {
    let mut b = [0xffu8; 32];
    b[0] = 0xee;
    b[31] = 0x7f;
    b
}

/// `a + b` as 256-bit little-endian integers (no reduction: builds unreduced scalars).
fn add_le(a: [u8; 32], b: [u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let v = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = v as u8;
        carry = v >> 8;
    }
    out
}

/// The secret scalar of a zone key (RFC 8032: clamped low half of SHA-512 of the seed).
fn secret_scalar(key: &ZoneKey) -> Scalar {
    let h = Sha512::digest(key.seed());
    let mut lo = [0u8; 32];
    lo.copy_from_slice(&h[..32]);
    lo[0] &= 248;
    lo[31] &= 127;
    lo[31] |= 64;
    Scalar::from_bytes_mod_order(lo)
}

fn challenge(r: &[u8; 32], a: &[u8; 32], msg: &[u8]) -> Scalar {
    let mut h = Sha512::new();
    h.update(r);
    h.update(a);
    h.update(msg);
    let wide: [u8; 64] = h.finalize().into();
    Scalar::from_bytes_mod_order_wide(&wide)
}

fn message(body: &RecordBody) -> Vec<u8> {
    let mut m = SIGNING_DOMAIN.to_vec();
    m.extend_from_slice(&body.canonical_bytes());
    m
}

fn body(zone: ZoneId, seq: u64) -> RecordBody {
    RecordBody {
        zone,
        label: "api".into(),
        seq,
        expires_at_ms: NOW + HOUR_MS,
        content: Content::Endpoints(vec![v4(1, 1, 80)]),
    }
}

/// How a crafted signature's `R` is chosen.
#[derive(Clone, Copy, Debug)]
enum RChoice {
    /// `r·B`, as an honest signer does.
    Honest,
    /// `r·B + T` for the `i`-th 8-torsion point: only the key owner can make these.
    Torsion(usize),
    /// The identity, canonical.
    Identity,
    /// The identity, encoded with y = p + 1.
    IdentityNonCanonical,
    /// Arbitrary bytes.
    Bytes([u8; 32]),
}

/// How a crafted signature's `S` is chosen.
#[derive(Clone, Copy, Debug)]
enum SChoice {
    /// `r + k·a`, reduced.
    Honest,
    /// `r + k·a + l`: the same scalar, unreduced.
    PlusL,
    /// Zero (what a small-order key needs to sign anything).
    Zero,
    /// Arbitrary bytes.
    Bytes([u8; 32]),
}

/// A record under `zone` signed with secret `a` (for honest zones), with the chosen `R` and `S`.
fn craft(zone: ZoneId, a: Scalar, seq: u64, nonce: u64, r: RChoice, s: SChoice) -> SignedRecord {
    let body = body(zone, seq);
    let msg = message(&body);
    let rs = Scalar::from(nonce.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let r_point: Option<EdwardsPoint> = match r {
        RChoice::Honest => Some(ED25519_BASEPOINT_POINT * rs),
        RChoice::Torsion(i) => Some(ED25519_BASEPOINT_POINT * rs + EIGHT_TORSION[i % 8]),
        _ => None,
    };
    let r_bytes = match (r, r_point) {
        (_, Some(p)) => p.compress().to_bytes(),
        (RChoice::Identity, _) => identity_bytes(),
        (RChoice::IdentityNonCanonical, _) => identity_non_canonical(),
        (RChoice::Bytes(b), _) => b,
        _ => unreachable!("every point choice has a point"),
    };
    let k = challenge(&r_bytes, &zone.0, &msg);
    let honest_s = rs + k * a;
    let s_bytes = match s {
        SChoice::Honest => honest_s.to_bytes(),
        SChoice::PlusL => add_le(honest_s.to_bytes(), L),
        SChoice::Zero => [0u8; 32],
        SChoice::Bytes(b) => b,
    };
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(&r_bytes);
    signature[32..].copy_from_slice(&s_bytes);
    SignedRecord { body, signature }
}

/// Single and batch verdicts for one record, plus apply / apply_batch outcomes.
fn assert_one_rule(records: &[SignedRecord]) {
    let singles: Vec<bool> = records
        .iter()
        .map(|r| r.verify_signature().is_ok())
        .collect();
    for (r, &ok) in records.iter().zip(&singles) {
        assert_eq!(
            verify_batch(std::slice::from_ref(r)),
            ok,
            "a batch of one disagrees with single verification on {r:?}"
        );
    }
    assert_eq!(
        verify_batch(records),
        singles.iter().all(|&ok| ok),
        "batch verdict differs from the single verdicts {singles:?}"
    );
    let mut one_by_one = MemStore::new();
    let mut batched = MemStore::new();
    let single_outcomes: Vec<Outcome> = records
        .iter()
        .map(|r| {
            let mut s = MemStore::new();
            let o = s.apply(r, NOW, Freshness::Replicate, None);
            let _ = one_by_one.apply(r, NOW, Freshness::Replicate, None);
            match o {
                Ok(o) => o,
                Err(never) => match never {},
            }
        })
        .collect();
    let batch_outcomes: Vec<Outcome> = records
        .iter()
        .map(|r| {
            let mut s = MemStore::new();
            match s.apply_batch(std::slice::from_ref(r), NOW, Freshness::Replicate) {
                Ok(mut o) => o.remove(0),
                Err(never) => match never {},
            }
        })
        .collect();
    assert_eq!(single_outcomes, batch_outcomes);
    match batched.apply_batch(records, NOW, Freshness::Replicate) {
        Ok(_) => {}
        Err(never) => match never {},
    }
    assert_eq!(
        one_by_one.digest(),
        batched.digest(),
        "single and batch apply left different stores"
    );
}

#[test]
fn a_torsion_component_in_r_gets_the_same_verdict_single_and_batched() {
    // The key owner signs with R = r·B + T (T of order 2). Single verification of the
    // cofactorless equation refuses it; ed25519-dalek's batch equation accepts it whenever the
    // batch's random coefficient for it is even — about every second message. Before the one
    // rule, such a record reached sync-fed replicas and not gossip-fed ones.
    let key = zone_key(1);
    let a = secret_scalar(&key);
    let records: Vec<SignedRecord> = (1..=16)
        .map(|seq| {
            craft(
                key.zone(),
                a,
                seq,
                seq,
                RChoice::Torsion(4),
                SChoice::Honest,
            )
        })
        .collect();
    for r in &records {
        assert_one_rule(std::slice::from_ref(r));
    }
    assert_one_rule(&records);
}

#[test]
fn a_small_order_zone_key_is_refused_everywhere() {
    // Zone = the identity point: R = identity, S = 0 verifies for *every* message under the
    // cofactorless equation, so anyone could write names in this zone.
    let weak = ZoneId(identity_bytes());
    let forged = craft(weak, Scalar::ZERO, 1, 1, RChoice::Identity, SChoice::Zero);
    assert_eq!(
        forged.validate_fields(),
        Err(ValidationError::WeakZoneKey(WeakKey::SmallOrder))
    );
    assert!(forged.verify_signature().is_err());
    assert!(!verify_batch(std::slice::from_ref(&forged)));
    let mut store = MemStore::new();
    let expect = Outcome::Invalid(ValidationError::WeakZoneKey(WeakKey::SmallOrder));
    match store.apply(&forged, NOW, Freshness::Replicate, None) {
        Ok(o) => assert_eq!(o, expect),
        Err(never) => match never {},
    }
    match store.apply_batch(std::slice::from_ref(&forged), NOW, Freshness::Replicate) {
        Ok(o) => assert_eq!(o, vec![expect]),
        Err(never) => match never {},
    }
    assert!(store.is_empty());
    // As text (API, DNS, CLI), every small-order point is refused with a typed error.
    for t in EIGHT_TORSION {
        let zone = ZoneId(t.compress().to_bytes());
        assert!(matches!(
            zone.to_string().parse::<ZoneId>(),
            Err(dpin_protocol::KeyError::WeakZoneKey { .. })
        ));
        assert_eq!(zone.check(), Err(WeakKey::SmallOrder));
    }
    // An honest key is not weak.
    assert_eq!(key_zone_check(1), Ok(()));
}

fn key_zone_check(n: u8) -> Result<(), WeakKey> {
    zone_key(n).zone().check()
}

#[test]
fn non_canonical_point_encodings_are_refused_single_and_batched() {
    // A weak zone with R = identity encoded as y = p + 1: cofactorless single verification
    // compares encodings and refuses; ed25519-dalek's batch decompresses R and accepts.
    let weak = ZoneId(identity_bytes());
    let r = craft(
        weak,
        Scalar::ZERO,
        1,
        1,
        RChoice::IdentityNonCanonical,
        SChoice::Zero,
    );
    assert_one_rule(std::slice::from_ref(&r));
    assert!(r.verify_signature().is_err());
    // The zone id itself, non-canonically encoded (the identity as y = p + 1).
    assert!(matches!(
        ZoneId(identity_non_canonical()).check(),
        Err(WeakKey::NonCanonical)
    ));
    // A strong key's honest signature with R re-encoded non-canonically is impossible (only
    // points with y < 19 have a second encoding), but an unreduced S is easy: refused both ways.
    let key = zone_key(2);
    let plus_l = craft(
        key.zone(),
        secret_scalar(&key),
        1,
        7,
        RChoice::Honest,
        SChoice::PlusL,
    );
    assert!(plus_l.verify_signature().is_err());
    assert_one_rule(std::slice::from_ref(&plus_l));
}

#[test]
fn honest_signatures_verify_single_and_batched() {
    let key = zone_key(3);
    let a = secret_scalar(&key);
    let crafted = craft(key.zone(), a, 1, 5, RChoice::Honest, SChoice::Honest);
    assert_eq!(crafted.verify_signature(), Ok(()));
    let signed: Vec<SignedRecord> = (1..20)
        .map(|seq| body(key.zone(), seq).sign(&key).expect("signs"))
        .collect();
    assert!(verify_batch(&signed));
    assert_one_rule(&signed);
}

fn r_choice() -> impl Strategy<Value = RChoice> {
    prop_oneof![
        3 => Just(RChoice::Honest),
        3 => (0usize..8).prop_map(RChoice::Torsion),
        1 => Just(RChoice::Identity),
        1 => Just(RChoice::IdentityNonCanonical),
        1 => any::<[u8; 32]>().prop_map(RChoice::Bytes),
    ]
}

fn s_choice() -> impl Strategy<Value = SChoice> {
    prop_oneof![
        4 => Just(SChoice::Honest),
        1 => Just(SChoice::PlusL),
        1 => Just(SChoice::Zero),
        1 => any::<[u8; 32]>().prop_map(SChoice::Bytes),
    ]
}

/// Zone choice: an honest key (by index), a small-order point, a non-canonical encoding, or
/// arbitrary bytes.
fn zone_choice() -> impl Strategy<Value = (ZoneId, Scalar)> {
    prop_oneof![
        4 => (1u8..4).prop_map(|n| {
            let k = zone_key(n);
            (k.zone(), secret_scalar(&k))
        }),
        1 => (0usize..8).prop_map(|i| (ZoneId(EIGHT_TORSION[i].compress().to_bytes()), Scalar::ZERO)),
        1 => Just((ZoneId(identity_non_canonical()), Scalar::ZERO)),
        1 => any::<[u8; 32]>().prop_map(|b| (ZoneId(b), Scalar::ZERO)),
    ]
}

proptest! {
    #![proptest_config(proptest_config(96))]

    /// For random and crafted inputs, alone and in batches of up to six: the batch verdict is
    /// the conjunction of the single verdicts, and apply / apply_batch agree.
    #[test]
    fn batch_verdict_equals_single_verdict(
        items in proptest::collection::vec(
            (zone_choice(), 1u64..1000, any::<u64>(), r_choice(), s_choice(), any::<u8>()),
            1..6,
        )
    ) {
        let records: Vec<SignedRecord> = items
            .into_iter()
            .map(|((zone, a), seq, nonce, r, s, flip)| {
                let mut rec = craft(zone, a, seq, nonce, r, s);
                // Sometimes flip one bit of the signature.
                if flip < 16 {
                    rec.signature[usize::from(flip) * 4] ^= 1 << (flip % 8);
                }
                rec
            })
            .collect();
        assert_one_rule(&records);
    }
}

#[test]
fn the_canonical_encoding_check_matches_recompression() {
    // Every encoding that decompresses is canonical exactly when it re-compresses to itself,
    // except the small-order ones, which are refused as weak either way.
    let mut candidates = vec![identity_bytes(), identity_non_canonical()];
    for y in 0u8..40 {
        let mut b = [0u8; 32];
        b[0] = y;
        candidates.push(b);
        let mut hi = b;
        hi[31] |= 0x80;
        candidates.push(hi);
        // y + p for small y, with and without the sign bit.
        let mut wrap = [0xffu8; 32];
        wrap[0] = 0xed_u8.wrapping_add(y);
        wrap[31] = 0x7f;
        if y < 19 {
            candidates.push(wrap);
            let mut wrap_hi = wrap;
            wrap_hi[31] |= 0x80;
            candidates.push(wrap_hi);
        }
    }
    for t in EIGHT_TORSION {
        candidates.push(t.compress().to_bytes());
    }
    for b in candidates {
        let zone = ZoneId(b);
        let Some(point) = CompressedEdwardsY(b).decompress() else {
            assert!(
                matches!(
                    zone.check(),
                    Err(WeakKey::NotAPoint | WeakKey::NonCanonical)
                ),
                "{b:?}"
            );
            continue;
        };
        let canonical = point.compress().to_bytes() == b;
        match zone.check() {
            Ok(()) => assert!(canonical && !point.is_small_order(), "{b:?}"),
            Err(WeakKey::NonCanonical) => assert!(!canonical, "{b:?}"),
            Err(WeakKey::SmallOrder) => assert!(point.is_small_order(), "{b:?}"),
            Err(WeakKey::NotAPoint) => panic!("{b:?} decompresses"),
        }
        if !canonical {
            assert!(zone.check().is_err(), "non-canonical {b:?} accepted");
        }
    }
}
