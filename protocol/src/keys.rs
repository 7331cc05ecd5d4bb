//! Zone keys and zone ids.
//!
//! A zone *is* an ed25519 public key, so names are self-certifying: only the holder of the
//! private key can sign records under it, and no node or alias can speak for a zone.
//!
//! Text form of a zone id: the 32 public-key bytes in RFC 4648 base32, lowercase, no padding —
//! 52 characters from `a-z2-7`, which fits one DNS label (≤ 63) and survives DNS case folding.
//!
//! Key file format (text, UTF-8, written with mode 0600 by the CLI):
//!
//! ```text
//! # dpin zone key: anyone with this file can write every name in the zone
//! dpin-zone-key-v1 <64 lowercase hex characters: the 32-byte ed25519 secret seed>
//! ```
//!
//! Lines starting with `#` and blank lines are ignored; exactly one key line must be present.

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;

use crate::error::KeyError;

/// Length of a zone id in text form.
pub const ZONE_ID_TEXT_LEN: usize = 52;
const KEY_FILE_TAG: &str = "dpin-zone-key-v1";

/// A zone: the 32 bytes of an ed25519 public key. Ordered and hashable so stores can key on it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, bincode::Encode, bincode::Decode)]
pub struct ZoneId(pub [u8; 32]);

/// Why 32 bytes are not an acceptable zone key. Such a zone is refused everywhere (zone ids in
/// text, record fields, single and batch verification) with the same typed error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WeakKey {
    /// The bytes are not the encoding of a point on the curve.
    #[error("not a curve point")]
    NotAPoint,
    /// The point has a second, shorter encoding (y ≥ p): one key, two zone ids, and
    /// implementations disagree on whether to accept it.
    #[error("non-canonical point encoding")]
    NonCanonical,
    /// The point has small order (one of the eight torsion points): a signature with `S = 0`
    /// verifies for almost any message, so anyone could write names in the zone.
    #[error("small-order point: anyone could sign for it")]
    SmallOrder,
}

impl ZoneId {
    /// The public key, if these bytes are an acceptable zone key ([`ZoneId::check`]).
    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        self.check().ok()?;
        VerifyingKey::from_bytes(&self.0).ok()
    }

    /// Whether these bytes are an acceptable zone key: the canonical encoding of a curve point
    /// that does not have small order. Honest keys ([`ZoneKey::generate`]) always are.
    pub fn check(&self) -> Result<(), WeakKey> {
        crate::signature::check_zone_key(&self.0).map(|_| ())
    }
}

impl ZoneId {
    /// The text form (module docs) as ASCII bytes, encoded on the stack: record names are
    /// `label.zone`, and a catch-up formats one per record received (twice, before this
    /// spent about 5 % of a joiner's CPU in `format!`, base32 into a fresh `String` and a
    /// lowercased copy of it).
    pub fn text(&self) -> [u8; ZONE_ID_TEXT_LEN] {
        let mut out = [0u8; ZONE_ID_TEXT_LEN];
        BASE32_NOPAD.encode_mut(&self.0, &mut out);
        out.make_ascii_lowercase();
        out
    }

    /// Appends the text form to `s`.
    pub fn push_text(&self, s: &mut String) {
        s.extend(self.text().iter().map(|&b| char::from(b)));
    }
}

impl fmt::Display for ZoneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Base32 output is ASCII, so this never fails.
        f.write_str(std::str::from_utf8(&self.text()).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for ZoneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ZoneId({self})")
    }
}

impl FromStr for ZoneId {
    type Err = KeyError;

    /// Accepts either case (DNS may fold it) but nothing else: exactly 52 base32 characters of
    /// an acceptable public key (weak keys are refused with [`KeyError::WeakZoneKey`]).
    fn from_str(s: &str) -> Result<Self, KeyError> {
        if s.len() != ZONE_ID_TEXT_LEN {
            return Err(KeyError::BadZoneId(s.to_owned()));
        }
        let upper = s.to_ascii_uppercase();
        let bytes = BASE32_NOPAD
            .decode(upper.as_bytes())
            .map_err(|_| KeyError::BadZoneId(s.to_owned()))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::BadZoneId(s.to_owned()))?;
        let zone = ZoneId(arr);
        match zone.check() {
            Ok(()) => Ok(zone),
            Err(WeakKey::NotAPoint) => Err(KeyError::BadZoneId(s.to_owned())),
            Err(reason) => Err(KeyError::WeakZoneKey {
                zone: s.to_owned(),
                reason,
            }),
        }
    }
}

/// A writer's private zone key. Never leaves the writer's machine: nodes only see signatures.
#[derive(Clone)]
pub struct ZoneKey {
    signing: SigningKey,
}

impl fmt::Debug for ZoneKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secret material, even in debug logs.
        write!(f, "ZoneKey({})", self.zone())
    }
}

impl ZoneKey {
    /// A fresh key from the caller's RNG (the protocol never picks its own randomness).
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self {
            signing: SigningKey::generate(rng),
        }
    }

    /// A key from its 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The 32-byte secret seed.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The zone this key writes.
    pub fn zone(&self) -> ZoneId {
        ZoneId(self.signing.verifying_key().to_bytes())
    }

    /// The dalek signing key, for the record module.
    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The key file text (see the module docs for the format).
    pub fn to_key_file(&self) -> String {
        format!(
            "# dpin zone key: anyone with this file can write every name in zone {}\n{} {}\n",
            self.zone(),
            KEY_FILE_TAG,
            hex::encode(self.seed())
        )
    }

    /// Parses a key file (see the module docs for the format).
    pub fn from_key_file(text: &str) -> Result<Self, KeyError> {
        let mut found: Option<[u8; 32]> = None;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let rest = line.strip_prefix(KEY_FILE_TAG).ok_or(KeyError::BadKeyFile(
                "unknown line; expected 'dpin-zone-key-v1 <hex>'",
            ))?;
            let hex_part = rest.trim();
            let bytes = hex::decode(hex_part)
                .map_err(|_| KeyError::BadKeyFile("key is not hexadecimal"))?;
            let seed: [u8; 32] = bytes
                .try_into()
                .map_err(|_| KeyError::BadKeyFile("key must be 32 bytes (64 hex characters)"))?;
            if found.replace(seed).is_some() {
                return Err(KeyError::BadKeyFile("more than one key line"));
            }
        }
        found
            .map(Self::from_seed)
            .ok_or(KeyError::BadKeyFile("no key line"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn zone_id_text_fits_one_dns_label_and_round_trips() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        for _ in 0..50 {
            let key = ZoneKey::generate(&mut rng);
            let text = key.zone().to_string();
            assert_eq!(text.len(), ZONE_ID_TEXT_LEN);
            // The stack encoding is the RFC 4648 text, lowercased.
            assert_eq!(
                text,
                BASE32_NOPAD.encode(&key.zone().0).to_ascii_lowercase()
            );
            let mut pushed = String::from("x.");
            key.zone().push_text(&mut pushed);
            assert_eq!(pushed, format!("x.{text}"));
            assert!(text.len() <= crate::MAX_LABEL_LEN);
            assert!(text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
            assert_eq!(text.parse::<ZoneId>().ok(), Some(key.zone()));
            assert_eq!(
                text.to_ascii_uppercase().parse::<ZoneId>().ok(),
                Some(key.zone())
            );
        }
    }

    #[test]
    fn bad_zone_ids_are_refused() {
        for bad in ["", "abc", &"a".repeat(53), &"1".repeat(52)] {
            assert!(bad.parse::<ZoneId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn key_file_round_trips_and_rejects_garbage() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        let key = ZoneKey::generate(&mut rng);
        let parsed = ZoneKey::from_key_file(&key.to_key_file()).expect("own key file parses");
        assert_eq!(parsed.zone(), key.zone());
        assert!(ZoneKey::from_key_file("").is_err());
        assert!(ZoneKey::from_key_file("dpin-zone-key-v1 zz").is_err());
        assert!(ZoneKey::from_key_file("hello").is_err());
        let twice = format!("{}{}", key.to_key_file(), key.to_key_file());
        assert!(ZoneKey::from_key_file(&twice).is_err());
    }
}
