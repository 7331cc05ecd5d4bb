//! The one acceptance rule for record signatures, shared by single and batch verification.
//!
//! Sync verifies records in batches; gossip and the API verify them one at a time. Ed25519
//! libraries disagree with themselves here: ed25519-dalek's single `verify` checks the
//! cofactorless equation and compares encodings, while its `verify_batch` checks a random
//! linear combination after decompressing `R`. A record whose `R` carries a small torsion
//! component, or is encoded non-canonically, or whose zone key has small order, is refused by
//! one and (for some messages) accepted by the other. A replica that took such a record from
//! sync keeps it; one that saw it over gossip refuses it; they never converge.
//!
//! So dpin defines its own rule, in one place, and both paths implement it exactly:
//!
//! 1. the zone key `A` is the canonical encoding of a curve point that does not have small
//!    order ([`check_zone_key`]; weak keys are refused with a typed error on every path);
//! 2. `R` is the canonical encoding of a curve point that does not have small order;
//! 3. `S` is a canonical scalar (`S < l`);
//! 4. `[8]([S]B − R − [k]A)` is the identity, with `k = SHA-512(R ‖ A ‖ M) mod l`
//!    (the *cofactored* equation).
//!
//! Why cofactored: the batch check `[8]·Σ zᵢ([Sᵢ]B − Rᵢ − [kᵢ]Aᵢ) = 0` then holds exactly when
//! every single check holds (up to a 2⁻¹²⁸ chance over the coefficients `zᵢ`), because the
//! cofactor removes every torsion component before the random combination is formed, so no
//! choice of torsion can make terms cancel. The cofactorless equation has no batch form with
//! that property short of a torsion check per point (a full scalar multiplication each, which
//! would cost what batching saves). Honest signatures satisfy both equations; a torsion
//! component in `R` can only be put there by the key owner (`R`'s bytes are hashed into `k`,
//! so a third party changing `R` invalidates the signature), who could sign the message anyway.
//!
//! The batch coefficients `zᵢ` are 128-bit values derived from blake3 over every input of
//! the batch (as ed25519-dalek derives them from a transcript), so verification stays
//! deterministic and sans-IO; to make a bad batch pass, an attacker would have to find inputs
//! whose derived coefficients satisfy one linear equation mod l, a 2⁻¹²⁸ event per attempt.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use sha2::{Digest, Sha512};

use crate::keys::WeakKey;

/// Why a signature is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The zone key itself is refused.
    #[error("zone key refused: {0}")]
    Key(WeakKey),
    /// `R` is not the canonical encoding of a curve point, or has small order.
    #[error("signature R refused: {0}")]
    BadR(WeakKey),
    /// `S` is not reduced modulo the group order.
    #[error("signature S is not a canonical scalar")]
    NonCanonicalS,
    /// The verification equation does not hold.
    #[error("signature does not verify")]
    Mismatch,
}

/// Whether the y coordinate of an encoding (its low 255 bits) is below p = 2^255 − 19. The
/// only other non-canonical encodings have x = 0 with the sign bit set; those points have
/// small order and are refused as such, so "y < p and not small order" is exactly
/// "canonical and not small order".
fn y_is_reduced(bytes: &[u8; 32]) -> bool {
    // p, little-endian: ed ff ff ... ff 7f.
    if bytes[31] & 0x7f != 0x7f || bytes[1..31].iter().any(|&b| b != 0xff) {
        return true;
    }
    bytes[0] < 0xed
}

fn decode_point(bytes: &[u8; 32]) -> Result<EdwardsPoint, WeakKey> {
    if !y_is_reduced(bytes) {
        return Err(WeakKey::NonCanonical);
    }
    let point = CompressedEdwardsY(*bytes)
        .decompress()
        .ok_or(WeakKey::NotAPoint)?;
    if point.is_small_order() {
        return Err(WeakKey::SmallOrder);
    }
    Ok(point)
}

thread_local! {
    /// The last zone key this thread decoded, with its point. Decoding is a field square root
    /// and a small-order check; records come in runs of one zone (a sync batch, a zone's
    /// updates, the simulator's replicas of one scenario key), and a record's zone key is
    /// decoded when it is signed, when its fields are checked and when its signature is, so
    /// most decodes repeat the last one. Only keys that were accepted are kept; the result is
    /// the same as decoding again.
    static LAST_ZONE_KEY: std::cell::Cell<Option<([u8; 32], EdwardsPoint)>> =
        const { std::cell::Cell::new(None) };
}

/// The zone key as a curve point, if it is acceptable (rule 1 of the module docs).
pub fn check_zone_key(zone: &[u8; 32]) -> Result<EdwardsPoint, WeakKey> {
    if let Some((key, point)) = LAST_ZONE_KEY.get() {
        if key == *zone {
            return Ok(point);
        }
    }
    let point = match decode_zone_keys(&[zone]) {
        Some(points) => points[0],
        // Refused: decode again for the reason (refusals are not cached).
        None => decode_point(zone)?,
    };
    LAST_ZONE_KEY.set(Some((*zone, point)));
    Ok(point)
}

/// One signature with its points decoded and its challenge computed.
struct Prepared {
    a: EdwardsPoint,
    r: EdwardsPoint,
    s: Scalar,
    k: Scalar,
}

fn prepare(
    zone: &[u8; 32],
    message: &[u8],
    signature: &[u8; 64],
) -> Result<Prepared, SignatureError> {
    let a = check_zone_key(zone).map_err(SignatureError::Key)?;
    prepare_with_key(a, zone, message, signature)
}

/// [`prepare`] for a zone key already checked and decoded to `a`.
fn prepare_with_key(
    a: EdwardsPoint,
    zone: &[u8; 32],
    message: &[u8],
    signature: &[u8; 64],
) -> Result<Prepared, SignatureError> {
    let mut r_bytes = [0u8; 32];
    r_bytes.copy_from_slice(&signature[..32]);
    let mut s_bytes = [0u8; 32];
    s_bytes.copy_from_slice(&signature[32..]);
    let r = decode_point(&r_bytes).map_err(SignatureError::BadR)?;
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))
        .ok_or(SignatureError::NonCanonicalS)?;
    let mut h = Sha512::new();
    h.update(r_bytes);
    h.update(zone);
    h.update(message);
    let wide: [u8; 64] = h.finalize().into();
    let k = Scalar::from_bytes_mod_order_wide(&wide);
    Ok(Prepared { a, r, s, k })
}

/// Verifies one signature under the rule of the module docs.
pub fn verify(zone: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> Result<(), SignatureError> {
    let p = prepare(zone, message, signature)?;
    // [S]B − [k]A, then compare with R up to torsion.
    let expected_r = EdwardsPoint::vartime_double_scalar_mul_basepoint(&(-p.k), &p.a, &p.s);
    if (expected_r - p.r).mul_by_cofactor().is_identity() {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Verifies many `(zone, message, signature)` triples at once: `true` exactly when
/// [`verify`] accepts every one of them (see the module docs for why the two cannot
/// disagree). `false` says only that at least one is bad; verify them one by one to find it.
/// An empty batch is `true`.
pub fn verify_batch(items: &[(&[u8; 32], &[u8], &[u8; 64])]) -> bool {
    // Each distinct zone key once: decoded (or taken from the shared cache) and, in the
    // equation below, one point whose scalar sums its records' terms.
    let mut key_of: std::collections::HashMap<&[u8; 32], usize> = std::collections::HashMap::new();
    let mut zones: Vec<&[u8; 32]> = Vec::new();
    let mut record_key: Vec<usize> = Vec::with_capacity(items.len());
    for (zone, _, _) in items {
        let next = zones.len();
        let i = *key_of.entry(zone).or_insert(next);
        if i == next {
            zones.push(zone);
        }
        record_key.push(i);
    }
    let Some(points) = decode_zone_keys(&zones) else {
        return false;
    };
    let mut prepared = Vec::with_capacity(items.len());
    for ((zone, message, signature), &k) in items.iter().zip(&record_key) {
        match prepare_with_key(points[k], zone, message, signature) {
            Ok(p) => prepared.push(p),
            Err(_) => return false,
        }
    }
    if prepared.is_empty() {
        return true;
    }
    // Coefficients from every input of the batch, so none can be chosen independently.
    let mut h = blake3::Hasher::new_derive_key("dpin 2026 batch signature coefficients v1");
    for ((zone, _, signature), p) in items.iter().zip(&prepared) {
        h.update(&zone[..]);
        h.update(&signature[..]);
        h.update(p.k.as_bytes());
    }
    let mut xof = h.finalize_xof();
    let zs: Vec<Scalar> = prepared
        .iter()
        .map(|_| {
            let mut z = [0u8; 16];
            xof.fill(&mut z);
            Scalar::from(u128::from_le_bytes(z))
        })
        .collect();
    // Σ zᵢ(Rᵢ + kᵢAᵢ − SᵢB) = 0, up to torsion; the terms of one key are summed first
    // (Σᵢ zᵢkᵢA = (Σᵢ zᵢkᵢ)A), so the multiscalar multiplication has one point per record
    // and one per distinct key instead of two per record.
    let b_coefficient: Scalar = -prepared
        .iter()
        .zip(&zs)
        .map(|(p, z)| z * p.s)
        .sum::<Scalar>();
    let mut key_scalars = vec![Scalar::ZERO; points.len()];
    for ((p, z), &k) in prepared.iter().zip(&zs).zip(&record_key) {
        key_scalars[k] += z * p.k;
    }
    let scalars = std::iter::once(b_coefficient)
        .chain(zs.iter().copied())
        .chain(key_scalars);
    let points = std::iter::once(ED25519_BASEPOINT_POINT)
        .chain(prepared.iter().map(|p| p.r))
        .chain(points);
    EdwardsPoint::vartime_multiscalar_mul(scalars, points)
        .mul_by_cofactor()
        .is_identity()
}

/// Most zone keys kept decoded across batches and records ([`decode_zone_keys`]): about 200
/// bytes each, so under 1 MiB. A catch-up checks every record of the store (its fields when
/// it is prepared, its signature in batches of ~1,400), and a zone usually holds many names,
/// so most keys were decoded for an earlier record (a decode is a field square root, about
/// as costly as decoding the signature's `R`; before this cache a catch-up decoded each
/// record's zone key twice, once per check, as records of one zone rarely come in a row).
pub const ZONE_KEY_CACHE: usize = 4096;

/// Accepted zone keys with their points (rule 1 of the module docs), shared by every thread.
/// Emptied whole when full: the bound holds, and the keys of the batches that follow are
/// decoded again once.
static ZONE_KEYS: std::sync::Mutex<Option<std::collections::HashMap<[u8; 32], EdwardsPoint>>> =
    std::sync::Mutex::new(None);

/// The points of `zones` (distinct), in order, or `None` if any is refused. Keys not in the
/// cache are decoded outside its lock; only accepted keys enter it, so the result is the
/// same as decoding every key again.
fn decode_zone_keys(zones: &[&[u8; 32]]) -> Option<Vec<EdwardsPoint>> {
    let lock = || {
        ZONE_KEYS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let mut points: Vec<Option<EdwardsPoint>> = {
        let cache = lock();
        zones
            .iter()
            .map(|z| cache.as_ref().and_then(|c| c.get(*z).copied()))
            .collect()
    };
    let mut fresh = Vec::new();
    for (zone, point) in zones.iter().zip(points.iter_mut()) {
        if point.is_none() {
            let p = decode_point(zone).ok()?;
            *point = Some(p);
            fresh.push((**zone, p));
        }
    }
    if !fresh.is_empty() {
        let mut cache = lock();
        let cache = cache.get_or_insert_with(std::collections::HashMap::new);
        for (zone, p) in fresh {
            if cache.len() >= ZONE_KEY_CACHE {
                cache.clear();
            }
            cache.insert(zone, p);
        }
    }
    points.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_zone_key_cache_stays_bounded_and_gives_what_decoding_gives() {
        let keys: Vec<[u8; 32]> = (0..ZONE_KEY_CACHE as u32 + 100)
            .map(|i| {
                let mut seed = [9u8; 32];
                seed[..4].copy_from_slice(&i.to_le_bytes());
                crate::ZoneKey::from_seed(seed).zone().0
            })
            .collect();
        for k in &keys {
            let cached = check_zone_key(k).expect("honest key");
            assert_eq!(Ok(cached), decode_point(k));
            let len = ZONE_KEYS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
                .map_or(0, |c| c.len());
            assert!(len <= ZONE_KEY_CACHE, "{len}");
        }
        // A refused key is refused through the cache as well, and not kept.
        // The identity point (y = 1): small order.
        let mut small = [0u8; 32];
        small[0] = 1;
        assert_eq!(check_zone_key(&small), Err(WeakKey::SmallOrder));
        assert!(decode_zone_keys(&[&small]).is_none());
    }
}
