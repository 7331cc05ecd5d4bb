//! Typed errors. Every way a record can be rejected has its own variant so that nodes can
//! count them separately and writers get an answer that says what to fix.

use thiserror::Error;

/// Why bytes could not be turned into a record.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input is larger than [`crate::MAX_RECORD_BYTES`]; it was not parsed at all.
    #[error("record is {got} bytes, the limit is {limit}")]
    TooLarge {
        /// Size of the input.
        got: usize,
        /// The enforced limit.
        limit: usize,
    },
    /// The bytes are not a well-formed record encoding (truncated, bad tag, bad UTF-8, ...).
    #[error("malformed record encoding: {0}")]
    Malformed(String),
    /// The encoding is well formed but followed by extra bytes, so it is not canonical.
    #[error("{0} trailing bytes after the record")]
    TrailingBytes(usize),
}

/// Why a decoded record is not acceptable. Checked before any merge decision.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    /// The signature does not verify against the zone key over the canonical bytes.
    #[error("signature does not verify for this zone")]
    BadSignature,
    /// The zone id is not a valid ed25519 public key.
    #[error("zone id is not a valid ed25519 public key")]
    BadZoneKey,
    /// The zone id is a curve point, but a weak one (small order, or a non-canonical
    /// encoding): refused on every path, whatever the signature says.
    #[error("zone key refused: {0}")]
    WeakZoneKey(crate::keys::WeakKey),
    /// The label is empty, too long, or has characters outside `a-z 0-9 -`.
    #[error(
        "invalid label {0:?}: use 1-63 characters a-z, 0-9, '-', not starting or ending with '-'"
    )]
    BadLabel(String),
    /// A name record with no endpoints: an empty answer is the outage dpin prevents.
    #[error("a name record needs at least one endpoint (delete with a tombstone instead)")]
    EmptyEndpoints,
    /// More endpoints than [`crate::MAX_ENDPOINTS`].
    #[error("{got} endpoints, at most {limit} allowed")]
    TooManyEndpoints {
        /// Endpoints in the record.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// An endpoint host that is neither an IP literal nor a valid DNS hostname.
    #[error("invalid endpoint host {0:?}")]
    BadHost(String),
    /// Port 0 cannot be connected to.
    #[error("endpoint port must be 1-65535")]
    BadPort,
    /// Weight 0 would make an endpoint unreachable by weighted selection.
    #[error("endpoint weight must be at least 1")]
    BadWeight,
    /// The same host/port/transport listed twice.
    #[error("duplicate endpoint {0}")]
    DuplicateEndpoint(String),
    /// `seq` 0 is reserved for "nothing seen yet".
    #[error("seq must be at least 1")]
    ZeroSeq,
    /// The expiry is further in the future than [`crate::MAX_TTL_MS`] plus clock skew.
    #[error("expiry is {ahead_ms} ms ahead, more than the {limit_ms} ms allowed")]
    ExpiryTooFar {
        /// How far ahead of `now` the expiry is.
        ahead_ms: u64,
        /// The allowed maximum.
        limit_ms: u64,
    },
    /// The seq is above [`crate::record::seq_ceiling`]: seqs may not jump into the future.
    #[error("seq {seq} is above the ceiling {ceiling} (the current time in microseconds plus the clock-skew allowance); seqs may not jump ahead of time, so that no record can take a name's last seq")]
    SeqTooHigh {
        /// The seq offered.
        seq: u64,
        /// The ceiling at the validating node's `now`.
        ceiling: u64,
    },
    /// The record already expired when it was offered for publishing.
    #[error("record already expired")]
    Expired,
    /// The content kind does not match the label (offers live under reserved labels).
    #[error("content does not match label {0:?}")]
    ContentLabelMismatch(String),
    /// A blob manifest is inconsistent (chunk count vs size, chunk size, replicas).
    #[error("invalid blob manifest: {0}")]
    BadManifest(&'static str),
    /// An offer field is out of range (free space above capacity, zero cores, long region...).
    #[error("invalid offer: {0}")]
    BadOffer(&'static str),
    /// The record is valid, but this store's admission quota has no room for it (see
    /// [`crate::store::Quota`]). Not evidence against the sender: another node may have room.
    #[error("store quota: {0}")]
    Admission(AdmissionError),
}

/// Why a store's admission quota refused a new name (see [`crate::store::Quota`]). Only new
/// names are ever refused: updates of names already held always merge, and nothing held is
/// ever evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AdmissionError {
    /// The store is at its new-zone threshold: a zone it holds nothing of is refused (the rest
    /// of the quota is kept for zones already held). An API maps this to 507.
    #[error("store is full for new zones ({names} names, {bytes} bytes held)")]
    NewZone {
        /// Names held.
        names: usize,
        /// Bytes held.
        bytes: u64,
    },
    /// The store is at its hard limit: no new name is admitted in any zone.
    #[error("store is full ({names} names, {bytes} bytes held)")]
    StoreFull {
        /// Names held.
        names: usize,
        /// Bytes held.
        bytes: u64,
    },
    /// The record's zone is at its per-zone quota.
    #[error("zone is full ({names} names, {bytes} bytes held)")]
    ZoneFull {
        /// Names held in the zone.
        names: usize,
        /// Bytes held in the zone.
        bytes: u64,
    },
}

impl AdmissionError {
    /// A short stable name for counters (`reason` label).
    pub fn reason(&self) -> &'static str {
        match self {
            AdmissionError::NewZone { .. } => "store_full_new_zone",
            AdmissionError::StoreFull { .. } => "store_full",
            AdmissionError::ZoneFull { .. } => "zone_full",
        }
    }
}

impl ValidationError {
    /// Whether this is a store quota refusal ([`ValidationError::Admission`]): the record is
    /// valid, this node has no room. Not evidence against the sender (gossip ignores it, no
    /// penalty), and an API answers 507 Insufficient Storage.
    pub fn is_admission_refusal(&self) -> bool {
        matches!(self, ValidationError::Admission(_))
    }

    /// Whether the refusal depends on the validating node's clock (expiry too far ahead, seq
    /// above the ceiling, already expired). Such a record may be fine at a node whose clock
    /// is right: it is not evidence that the sender misbehaves, and the same record becomes
    /// acceptable as the local clock moves on.
    pub fn is_clock_dependent(&self) -> bool {
        matches!(
            self,
            ValidationError::ExpiryTooFar { .. }
                | ValidationError::SeqTooHigh { .. }
                | ValidationError::Expired
        )
    }
}

/// Problems with key material or zone ids.
#[derive(Debug, Error)]
pub enum KeyError {
    /// A zone id string that is not 52 lowercase base32 characters of a valid public key.
    #[error("invalid zone id {0:?}")]
    BadZoneId(String),
    /// The key file does not follow the documented format.
    #[error("invalid key file: {0}")]
    BadKeyFile(&'static str),
    /// A zone id that decodes to a weak key (small order or non-canonical): anyone could sign
    /// for it, or it aliases another zone.
    #[error("zone id {zone:?} is a weak key: {reason}")]
    WeakZoneKey {
        /// The zone id as given.
        zone: String,
        /// What is wrong with it.
        reason: crate::keys::WeakKey,
    },
}
