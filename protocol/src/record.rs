//! Signed records: what a writer publishes and every node verifies.
//!
//! One record type carries every replicated fact — name-to-endpoint mappings, tombstones and
//! node offers — so that a single merge rule, a single store and a single anti-entropy protocol
//! cover them all. The kind of content is tied to the label: user labels (`a-z0-9-`) carry
//! endpoints or a tombstone; labels starting with `_` are reserved (`_offer-storage`,
//! `_offer-compute`) and can never collide with a user's name.
//!
//! Encoding: bincode 2 with fixed-width little-endian integers and a hard limit of
//! [`crate::MAX_RECORD_BYTES`]; the decoder refuses longer input before parsing and refuses
//! trailing bytes, so one record has exactly one encoding (the *canonical bytes*). The signature
//! covers `DOMAIN || canonical(body)`; the domain prefix keeps a dpin signature from ever being
//! valid for another protocol that signs with the same key, and vice versa.
//!
//! [`EndpointsView`] reads a stored record's expiry and endpoints from those bytes in place,
//! without decoding the record: what a DNS answer needs at every query. It agrees with the
//! decoder on every record that decodes (`tests/codec_properties.rs`, the `decode_record`
//! fuzz target).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ed25519_dalek::Signer;

use crate::error::{DecodeError, ValidationError};
use crate::keys::{WeakKey, ZoneId, ZoneKey};
use crate::{
    MAX_CLOCK_SKEW_MS, MAX_ENDPOINTS, MAX_HOSTNAME_LEN, MAX_LABEL_LEN, MAX_NODE_CLOCK_SKEW_MS,
    MAX_RECORD_BYTES, MAX_REGION_LEN, MAX_TTL_MS, SEQ_UNITS_PER_MS,
};

/// Domain separation prefix for record signatures.
pub const SIGNING_DOMAIN: &[u8] = b"dpin/record/v1\0";
/// Reserved label of a node's storage offer.
pub const STORAGE_OFFER_LABEL: &str = "_offer-storage";
/// Reserved label of a node's compute offer.
pub const COMPUTE_OFFER_LABEL: &str = "_offer-compute";

/// Where an endpoint lives: an IP literal or a DNS hostname.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, bincode::Encode, bincode::Decode)]
pub enum Host {
    /// IPv4 literal.
    V4([u8; 4]),
    /// IPv6 literal.
    V6([u8; 16]),
    /// A DNS hostname (lowercase, validated).
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::V4(a) => write!(f, "{}", Ipv4Addr::from(*a)),
            Host::V6(a) => write!(f, "{}", Ipv6Addr::from(*a)),
            Host::Name(n) => f.write_str(n),
        }
    }
}

impl Host {
    /// Parses an IP literal (IPv6 with or without brackets) or a hostname.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let bare = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(v4) = bare.parse::<Ipv4Addr>() {
            return Ok(Host::V4(v4.octets()));
        }
        if let Ok(v6) = bare.parse::<Ipv6Addr>() {
            return Ok(Host::V6(v6.octets()));
        }
        let name = s.trim_end_matches('.').to_ascii_lowercase();
        let host = Host::Name(name);
        host.validate()?;
        Ok(host)
    }

    fn validate(&self) -> Result<(), ValidationError> {
        let Host::Name(name) = self else {
            return Ok(());
        };
        let ok = !name.is_empty()
            && name.len() <= MAX_HOSTNAME_LEN
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= MAX_LABEL_LEN
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
            // An all-numeric final label would be confused with an IP address.
            && !name
                .rsplit('.')
                .next()
                .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
        if ok {
            Ok(())
        } else {
            Err(ValidationError::BadHost(name.clone()))
        }
    }
}

/// Transport protocol of an endpoint.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, bincode::Encode, bincode::Decode,
)]
pub enum Transport {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Transport {
    /// `"tcp"` or `"udp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// One place a name can be reached.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, bincode::Encode, bincode::Decode)]
pub struct Endpoint {
    /// Address or hostname.
    pub host: Host,
    /// Port, 1-65535.
    pub port: u16,
    /// TCP or UDP.
    pub transport: Transport,
    /// Relative weight for selection (SRV weight), at least 1.
    pub weight: u16,
}

impl fmt::Display for Endpoint {
    /// `HOST:PORT[/udp]`, IPv6 in brackets — the same syntax the CLI accepts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::V6(_) => write!(f, "[{}]:{}", self.host, self.port)?,
            _ => write!(f, "{}:{}", self.host, self.port)?,
        }
        if self.transport == Transport::Udp {
            f.write_str("/udp")?;
        }
        if self.weight != 1 {
            write!(f, "@{}", self.weight)?;
        }
        Ok(())
    }
}

impl FromStr for Endpoint {
    type Err = ValidationError;

    /// `HOST:PORT`, `HOST:PORT/udp`, `HOST:PORT/tcp`, optionally followed by `@WEIGHT`;
    /// IPv6 literals as `[::1]:PORT`.
    fn from_str(s: &str) -> Result<Self, ValidationError> {
        let bad = || ValidationError::BadHost(s.to_owned());
        let (rest, weight) = match s.rsplit_once('@') {
            Some((r, w)) => (r, w.parse::<u16>().map_err(|_| ValidationError::BadWeight)?),
            None => (s, 1),
        };
        let (rest, transport) = match rest.rsplit_once('/') {
            Some((r, "udp")) => (r, Transport::Udp),
            Some((r, "tcp")) => (r, Transport::Tcp),
            Some(_) => return Err(bad()),
            None => (rest, Transport::Tcp),
        };
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        if host.contains(':') && !host.starts_with('[') {
            return Err(bad());
        }
        let port: u16 = port.parse().map_err(|_| ValidationError::BadPort)?;
        let ep = Endpoint {
            host: Host::parse(host)?,
            port,
            transport,
            weight,
        };
        ep.validate()?;
        Ok(ep)
    }
}

impl Endpoint {
    fn validate(&self) -> Result<(), ValidationError> {
        self.host.validate()?;
        if self.port == 0 {
            return Err(ValidationError::BadPort);
        }
        if self.weight == 0 {
            return Err(ValidationError::BadWeight);
        }
        Ok(())
    }
}

/// A node's offer of storage space.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct StorageOffer {
    /// Total bytes offered.
    pub capacity_bytes: u64,
    /// Bytes still free (≤ capacity).
    pub free_bytes: u64,
    /// Price in thousandths of a currency unit per GiB-month.
    pub price_milli: u64,
    /// Free-form region tag (e.g. `eu-west`), at most 64 bytes.
    pub region: String,
}

/// A node's offer of compute.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct ComputeOffer {
    /// CPU cores offered, at least 1.
    pub cores: u32,
    /// Memory offered in bytes.
    pub memory_bytes: u64,
    /// GPUs offered.
    pub gpus: u32,
    /// Price in thousandths of a currency unit per core-hour.
    pub price_milli: u64,
    /// Free-form region tag, at most 64 bytes.
    pub region: String,
}

/// What a record says.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Content {
    /// The name resolves to these endpoints (never empty).
    Endpoints(Vec<Endpoint>),
    /// The name was deleted at this seq. Only a higher seq can bring it back.
    Tombstone,
    /// A storage offer (label [`STORAGE_OFFER_LABEL`]).
    StorageOffer(StorageOffer),
    /// A compute offer (label [`COMPUTE_OFFER_LABEL`]).
    ComputeOffer(ComputeOffer),
    /// A stored blob's manifest (label [`blob_label`] of its root hash).
    BlobManifest(BlobManifest),
}

/// Reserved label prefix of blob manifests.
pub const BLOB_LABEL_PREFIX: &str = "_blob-";
/// Largest blob chunk.
pub const MAX_CHUNK_BYTES: u32 = 4 * 1024 * 1024;
/// Most replicas a blob may ask for.
pub const MAX_REPLICAS: u8 = 16;

/// What a blob is: content addressed by `root = blake3(chunk hash 0 || chunk hash 1 || ...)`,
/// so every chunk can be checked against the root through the index of chunk hashes.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct BlobManifest {
    /// Root hash (blake3 of the index).
    pub root: [u8; 32],
    /// Total size in bytes.
    pub size: u64,
    /// Size of every chunk but the last.
    pub chunk_size: u32,
    /// Number of chunks.
    pub chunks: u32,
    /// Copies the network keeps.
    pub replicas: u8,
}

/// The reserved label of the manifest of the blob with `root`: `_blob-` + base32 of the root.
pub fn blob_label(root: &[u8; 32]) -> String {
    format!(
        "{BLOB_LABEL_PREFIX}{}",
        data_encoding::BASE32_NOPAD
            .encode(root)
            .to_ascii_lowercase()
    )
}

fn validate_manifest(label: &str, m: &BlobManifest) -> Result<(), ValidationError> {
    if label != blob_label(&m.root) {
        return Err(ValidationError::ContentLabelMismatch(label.to_owned()));
    }
    if m.chunk_size == 0 || m.chunk_size > MAX_CHUNK_BYTES {
        return Err(ValidationError::BadManifest("chunk size out of range"));
    }
    if m.replicas == 0 || m.replicas > MAX_REPLICAS {
        return Err(ValidationError::BadManifest("replicas out of range"));
    }
    let expected = m.size.div_ceil(u64::from(m.chunk_size));
    if u64::from(m.chunks) != expected {
        return Err(ValidationError::BadManifest(
            "chunk count does not match size",
        ));
    }
    Ok(())
}

/// The signed part of a record.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct RecordBody {
    /// The zone (writer's public key).
    pub zone: ZoneId,
    /// The label inside the zone.
    pub label: String,
    /// Version; higher wins. Starts at 1.
    pub seq: u64,
    /// Unix milliseconds after which the record is no longer served.
    pub expires_at_ms: u64,
    /// The payload.
    pub content: Content,
}

impl RecordBody {
    /// The full name, `label.zone`.
    pub fn name(&self) -> String {
        let mut name = String::with_capacity(self.label.len() + 1 + crate::keys::ZONE_ID_TEXT_LEN);
        name.push_str(&self.label);
        name.push('.');
        self.zone.push_text(&mut name);
        name
    }

    /// The canonical bytes that are hashed and signed.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Encoding into a Vec cannot fail for well-formed values except by exceeding the limit,
        // which validation reports separately (the signed size is checked on decode and sign).
        crate::codec::encode::<_, MAX_RECORD_BYTES>(self)
    }

    /// Signs this body with the zone key. Fails if the key is not this body's zone or the
    /// result would not be a valid record.
    pub fn sign(self, key: &ZoneKey) -> Result<SignedRecord, ValidationError> {
        if key.zone() != self.zone {
            return Err(ValidationError::BadSignature);
        }
        let msg = signing_message(&self.canonical_bytes());
        let signature = key.signing_key().sign(&msg).to_bytes();
        let record = SignedRecord {
            body: self,
            signature,
        };
        record.validate_fields()?;
        Ok(record)
    }
}

fn signing_message(canonical: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_DOMAIN.len() + canonical.len());
    msg.extend_from_slice(SIGNING_DOMAIN);
    msg.extend_from_slice(canonical);
    msg
}

/// A record plus its writer's signature. Construct with [`RecordBody::sign`] or
/// [`SignedRecord::decode`]; check with [`SignedRecord::validate`] before trusting it.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct SignedRecord {
    /// The signed content.
    pub body: RecordBody,
    /// ed25519 signature over `SIGNING_DOMAIN || canonical(body)`.
    pub signature: [u8; 64],
}

/// A stored record's expiry and endpoints read in place from its wire bytes, without decoding
/// (and allocating) the whole record: what a DNS address answer needs of it, at every query.
///
/// For the bytes of a record that decodes, it gives exactly the decoded record's expiry and
/// endpoints, in order (`codec_properties` checks this on arbitrary records), and `None` for
/// content other than endpoints. It checks the layout (every length in bounds, known tags,
/// UTF-8 hostnames, the signature's 64 bytes and nothing after them) but no signature and no
/// field rule: it reads bytes a store already took, it does not admit untrusted ones.
#[derive(Clone, Copy, Debug)]
pub struct EndpointsView<'a> {
    expires_at_ms: u64,
    count: usize,
    /// The encoded endpoint list (after its count), up to the signature.
    list: &'a [u8],
}

/// An endpoint's host as [`EndpointsView`] reads it: hostnames borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostRef<'a> {
    /// IPv4 literal.
    V4([u8; 4]),
    /// IPv6 literal.
    V6([u8; 16]),
    /// A DNS hostname.
    Name(&'a str),
}

/// An endpoint as [`EndpointsView`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointRef<'a> {
    /// Address or hostname.
    pub host: HostRef<'a>,
    /// Port.
    pub port: u16,
    /// TCP or UDP.
    pub transport: Transport,
    /// Relative weight.
    pub weight: u16,
}

impl EndpointRef<'_> {
    /// The owned endpoint (allocates for a hostname only).
    pub fn to_endpoint(&self) -> Endpoint {
        Endpoint {
            host: match self.host {
                HostRef::V4(a) => Host::V4(a),
                HostRef::V6(a) => Host::V6(a),
                HostRef::Name(n) => Host::Name(n.to_owned()),
            },
            port: self.port,
            transport: self.transport,
            weight: self.weight,
        }
    }
}

/// Reads the codec's fixed-width little-endian integers and lengths off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }
    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.u64()?).ok()
    }
    fn endpoint(&mut self) -> Option<EndpointRef<'a>> {
        let host = match self.u32()? {
            0 => HostRef::V4(self.array()?),
            1 => HostRef::V6(self.array()?),
            2 => {
                let n = self.len()?;
                HostRef::Name(std::str::from_utf8(self.take(n)?).ok()?)
            }
            _ => return None,
        };
        let port = self.u16()?;
        let transport = match self.u32()? {
            0 => Transport::Tcp,
            1 => Transport::Udp,
            _ => return None,
        };
        let weight = self.u16()?;
        Some(EndpointRef {
            host,
            port,
            transport,
            weight,
        })
    }
}

impl<'a> EndpointsView<'a> {
    /// The view of a record's wire bytes ([`SignedRecord::encode`]), or `None` if the record
    /// holds no endpoints or the bytes do not have a record's layout.
    pub fn of(bytes: &'a [u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        r.take(32)?; // zone
        let label = r.len()?;
        r.take(label)?;
        r.u64()?; // seq
        let expires_at_ms = r.u64()?;
        if r.u32()? != 0 {
            // Not `Content::Endpoints`.
            return None;
        }
        let count = r.len()?;
        if count > MAX_ENDPOINTS {
            return None;
        }
        let list = r.0;
        for _ in 0..count {
            r.endpoint()?;
        }
        // The signature, and nothing after it.
        if r.0.len() != 64 {
            return None;
        }
        let list = list.get(..list.len() - 64)?;
        Some(EndpointsView {
            expires_at_ms,
            count,
            list,
        })
    }

    /// The record's expiry (Unix ms).
    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }

    /// How many endpoints the record holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the record holds no endpoints (a valid record never does).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The endpoints, in the record's order.
    pub fn iter(&self) -> impl Iterator<Item = EndpointRef<'a>> {
        let mut r = Reader(self.list);
        // `of` read every endpoint of the list already, so none of these reads fails.
        (0..self.count).map_while(move |_| r.endpoint())
    }
}

/// How strict expiry checking is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// A writer publishing now: an already expired record is refused.
    Publish,
    /// Replication between nodes: an expired record is still accepted, because its seq must
    /// still raise the floor on replicas that missed it.
    Replicate,
}

impl SignedRecord {
    /// Wire bytes (canonical body followed by the signature).
    pub fn encode(&self) -> Vec<u8> {
        crate::codec::encode::<_, MAX_RECORD_BYTES>(self)
    }

    /// Decodes wire bytes, refusing input over [`MAX_RECORD_BYTES`] before parsing, and any
    /// trailing bytes. Does NOT verify the signature: call [`SignedRecord::validate`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        crate::codec::decode::<Self, MAX_RECORD_BYTES>(bytes)
    }

    /// blake3 of the canonical body bytes: the record's identity and the equivocation
    /// tie-breaker.
    pub fn content_hash(&self) -> [u8; 32] {
        *blake3::hash(&self.body.canonical_bytes()).as_bytes()
    }

    /// The full name, `label.zone`.
    pub fn name(&self) -> String {
        self.body.name()
    }

    /// Whether the record is past its expiry at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.body.expires_at_ms <= now_ms
    }

    /// Whether this record deletes its name.
    pub fn is_tombstone(&self) -> bool {
        matches!(self.body.content, Content::Tombstone)
    }

    /// Endpoints, if this is a live-name record.
    pub fn endpoints(&self) -> Option<&[Endpoint]> {
        match &self.body.content {
            Content::Endpoints(e) => Some(e),
            _ => None,
        }
    }

    /// Full validation: every field, the time limits relative to `now_ms` (expiry window and
    /// seq ceiling), and the signature. Nodes call this on every record from every source.
    pub fn validate(&self, now_ms: u64, freshness: Freshness) -> Result<(), ValidationError> {
        self.validate_fields()?;
        self.validate_time(now_ms, freshness)?;
        self.verify_signature()
    }

    /// Checks only the signature, under the one acceptance rule of [`crate::signature`]
    /// (the same rule [`verify_batch`] applies).
    pub fn verify_signature(&self) -> Result<(), ValidationError> {
        self.verify_signature_canonical(&self.body.canonical_bytes())
    }

    /// [`SignedRecord::verify_signature`] given the body's canonical bytes already encoded
    /// (the store's one encode per apply, see [`crate::store::Prepared`]).
    pub(crate) fn verify_signature_canonical(
        &self,
        canonical: &[u8],
    ) -> Result<(), ValidationError> {
        let msg = signing_message(canonical);
        crate::signature::verify(&self.body.zone.0, &msg, &self.signature).map_err(|e| match e {
            crate::signature::SignatureError::Key(WeakKey::NotAPoint) => {
                ValidationError::BadZoneKey
            }
            crate::signature::SignatureError::Key(weak) => ValidationError::WeakZoneKey(weak),
            _ => ValidationError::BadSignature,
        })
    }

    /// Checks the limits that move with time: the expiry may lie at most [`MAX_TTL_MS`] ahead
    /// (plus the skew allowance of `freshness`), the seq may not exceed [`seq_ceiling`], and a
    /// record offered for publishing must not have expired yet.
    ///
    /// Every limit only ever widens as time passes, so a record refused here because the
    /// local clock runs behind is accepted later (anti-entropy offers it again), never the
    /// other way round: nodes whose clocks disagree converge once they agree again.
    pub fn validate_time(&self, now_ms: u64, freshness: Freshness) -> Result<(), ValidationError> {
        let limit_ms = MAX_TTL_MS.saturating_add(skew_allowance_ms(freshness));
        let ahead_ms = self.body.expires_at_ms.saturating_sub(now_ms);
        if ahead_ms > limit_ms {
            return Err(ValidationError::ExpiryTooFar { ahead_ms, limit_ms });
        }
        let ceiling = seq_ceiling(now_ms, freshness);
        if self.body.seq > ceiling {
            return Err(ValidationError::SeqTooHigh {
                seq: self.body.seq,
                ceiling,
            });
        }
        if freshness == Freshness::Publish && self.is_expired(now_ms) {
            return Err(ValidationError::Expired);
        }
        Ok(())
    }

    /// Checks everything that does not depend on time or the signature.
    pub fn validate_fields(&self) -> Result<(), ValidationError> {
        self.validate_fields_encoded(self.encode().len())
    }

    /// [`SignedRecord::validate_fields`] given the length of the record's wire encoding (0
    /// when it does not fit in [`MAX_RECORD_BYTES`]: the codec's encode gives nothing then).
    pub(crate) fn validate_fields_encoded(
        &self,
        encoded_len: usize,
    ) -> Result<(), ValidationError> {
        let b = &self.body;
        if b.seq == 0 {
            return Err(ValidationError::ZeroSeq);
        }
        match b.zone.check() {
            Ok(()) => {}
            Err(crate::keys::WeakKey::NotAPoint) => return Err(ValidationError::BadZoneKey),
            Err(weak) => return Err(ValidationError::WeakZoneKey(weak)),
        }
        if encoded_len == 0 || encoded_len > MAX_RECORD_BYTES {
            // Only reachable for records built in memory; decode refuses such input earlier.
            return Err(ValidationError::TooManyEndpoints {
                got: self.endpoints().map_or(0, <[Endpoint]>::len),
                limit: MAX_ENDPOINTS,
            });
        }
        match b.label.as_str() {
            STORAGE_OFFER_LABEL => match &b.content {
                Content::StorageOffer(o) => validate_storage_offer(o),
                Content::Tombstone => Ok(()),
                _ => Err(ValidationError::ContentLabelMismatch(b.label.clone())),
            },
            COMPUTE_OFFER_LABEL => match &b.content {
                Content::ComputeOffer(o) => validate_compute_offer(o),
                Content::Tombstone => Ok(()),
                _ => Err(ValidationError::ContentLabelMismatch(b.label.clone())),
            },
            label if label.starts_with(BLOB_LABEL_PREFIX) => match &b.content {
                Content::BlobManifest(m) => validate_manifest(label, m),
                Content::Tombstone => Ok(()),
                _ => Err(ValidationError::ContentLabelMismatch(b.label.clone())),
            },
            label => {
                validate_label(label)?;
                match &b.content {
                    Content::Endpoints(eps) => validate_endpoints(eps),
                    Content::Tombstone => Ok(()),
                    _ => Err(ValidationError::ContentLabelMismatch(b.label.clone())),
                }
            }
        }
    }
}

/// How far ahead of the local clock a record's time fields may be: writer-to-node skew when
/// publishing, plus node-to-node skew when replicating (so replicas accept whatever the
/// publishing node accepted).
pub fn skew_allowance_ms(freshness: Freshness) -> u64 {
    match freshness {
        Freshness::Publish => MAX_CLOCK_SKEW_MS,
        Freshness::Replicate => MAX_CLOCK_SKEW_MS.saturating_add(MAX_NODE_CLOCK_SKEW_MS),
    }
}

/// The highest seq a record may carry at `now_ms`: the time in microseconds, plus the skew
/// allowance of `freshness`.
///
/// Why a ceiling: a seq is a u64, and the record holding the highest seq wins forever. Without
/// a ceiling one record at `u64::MAX` (a typo, a bug, a hostile writer with the zone key)
/// freezes its name for good, since no later record can exceed it. Tied to time, the ceiling
/// keeps moving: counters (1, 2, 3, ...) and millisecond timestamps (the node's offers) are
/// far below it, and the worst a record at the very ceiling can do is make the next writer
/// wait until the ceiling passes it — at most the skew allowance (35 min for a record taken
/// through a node whose clock ran ahead by the whole node-to-node allowance; under 5 min with
/// correct clocks). A pure function of the record and `now`, so every replica decides alike.
pub fn seq_ceiling(now_ms: u64, freshness: Freshness) -> u64 {
    now_ms
        .saturating_add(skew_allowance_ms(freshness))
        .saturating_mul(SEQ_UNITS_PER_MS)
}

/// Batch-verifies signatures, about twice as fast per signature as one-by-one. `true` exactly
/// when [`SignedRecord::verify_signature`] accepts every record (one acceptance rule, see
/// [`crate::signature`]); `false` means at least one is bad: verify individually to find it.
pub fn verify_batch(records: &[SignedRecord]) -> bool {
    let canonical: Vec<Vec<u8>> = records.iter().map(|r| r.body.canonical_bytes()).collect();
    verify_batch_canonical(
        &records
            .iter()
            .zip(&canonical)
            .map(|(r, c)| (r, c.as_slice()))
            .collect::<Vec<_>>(),
    )
}

/// [`verify_batch`] over records whose canonical body bytes are already encoded.
pub(crate) fn verify_batch_canonical(records: &[(&SignedRecord, &[u8])]) -> bool {
    let messages: Vec<Vec<u8>> = records.iter().map(|(_, c)| signing_message(c)).collect();
    let items: Vec<(&[u8; 32], &[u8], &[u8; 64])> = records
        .iter()
        .zip(&messages)
        .map(|((r, _), m)| (&r.body.zone.0, m.as_slice(), &r.signature))
        .collect();
    crate::signature::verify_batch(&items)
}

/// A user label: 1-63 of `a-z 0-9 -`, not starting or ending with `-` (one DNS label).
pub fn validate_label(label: &str) -> Result<(), ValidationError> {
    let ok = !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::BadLabel(label.to_owned()))
    }
}

fn validate_endpoints(eps: &[Endpoint]) -> Result<(), ValidationError> {
    if eps.is_empty() {
        return Err(ValidationError::EmptyEndpoints);
    }
    if eps.len() > MAX_ENDPOINTS {
        return Err(ValidationError::TooManyEndpoints {
            got: eps.len(),
            limit: MAX_ENDPOINTS,
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for ep in eps {
        ep.validate()?;
        if !seen.insert((&ep.host, ep.port, ep.transport)) {
            return Err(ValidationError::DuplicateEndpoint(ep.to_string()));
        }
    }
    Ok(())
}

fn validate_region(region: &str) -> Result<(), ValidationError> {
    if region.len() > MAX_REGION_LEN || region.chars().any(char::is_control) {
        return Err(ValidationError::BadOffer(
            "region too long or has control characters",
        ));
    }
    Ok(())
}

fn validate_storage_offer(o: &StorageOffer) -> Result<(), ValidationError> {
    if o.free_bytes > o.capacity_bytes {
        return Err(ValidationError::BadOffer("free space exceeds capacity"));
    }
    validate_region(&o.region)
}

fn validate_compute_offer(o: &ComputeOffer) -> Result<(), ValidationError> {
    if o.cores == 0 {
        return Err(ValidationError::BadOffer(
            "a compute offer needs at least one core",
        ));
    }
    validate_region(&o.region)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn key() -> ZoneKey {
        ZoneKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1))
    }

    fn body(key: &ZoneKey, eps: Vec<Endpoint>) -> RecordBody {
        RecordBody {
            zone: key.zone(),
            label: "api".into(),
            seq: 1,
            expires_at_ms: 2_000_000,
            content: Content::Endpoints(eps),
        }
    }

    #[test]
    fn empty_endpoint_set_cannot_be_signed() {
        let k = key();
        assert_eq!(
            body(&k, vec![]).sign(&k).err(),
            Some(ValidationError::EmptyEndpoints)
        );
    }

    #[test]
    fn endpoint_syntax_round_trips() {
        for s in [
            "127.0.0.1:80",
            "[::1]:53/udp",
            "db.example.com:5432@3",
            "10.0.0.1:1/udp@2",
        ] {
            let ep: Endpoint = s.parse().expect("valid endpoint");
            assert_eq!(ep.to_string(), s);
        }
        for bad in [
            "127.0.0.1",
            "::1:53",
            "host:0",
            "host:70000",
            "-bad-:1",
            "h:1/sctp",
            "h:1@0",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn records_from_another_zone_key_do_not_verify() {
        let k = key();
        let other = ZoneKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(2));
        let eps = vec!["127.0.0.1:80".parse().expect("valid")];
        let mut rec = body(&k, eps.clone()).sign(&k).expect("signs");
        let forged = body(&other, eps).sign(&other).expect("signs");
        rec.signature = forged.signature;
        assert_eq!(rec.verify_signature(), Err(ValidationError::BadSignature));
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let big = vec![0u8; MAX_RECORD_BYTES + 1];
        assert!(matches!(
            SignedRecord::decode(&big),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let k = key();
        let rec = body(&k, vec!["127.0.0.1:80".parse().expect("valid")])
            .sign(&k)
            .expect("signs");
        let mut bytes = rec.encode();
        bytes.push(0);
        assert_eq!(
            SignedRecord::decode(&bytes),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn expiry_windows_are_enforced() {
        let k = key();
        let rec = body(&k, vec!["127.0.0.1:80".parse().expect("valid")])
            .sign(&k)
            .expect("signs");
        assert_eq!(
            rec.validate(3_000_000, Freshness::Publish),
            Err(ValidationError::Expired)
        );
        assert_eq!(rec.validate(3_000_000, Freshness::Replicate), Ok(()));
        assert!(matches!(
            rec.validate(0, Freshness::Replicate),
            Ok(()) | Err(ValidationError::ExpiryTooFar { .. })
        ));
        let mut far = body(&k, vec!["127.0.0.1:80".parse().expect("valid")]);
        far.expires_at_ms = MAX_TTL_MS * 3;
        let far = far.sign(&k).expect("signs");
        assert!(matches!(
            far.validate(0, Freshness::Replicate),
            Err(ValidationError::ExpiryTooFar { .. })
        ));
    }

    #[test]
    fn offers_must_sit_under_their_reserved_label() {
        let k = key();
        let offer = Content::StorageOffer(StorageOffer {
            capacity_bytes: 10,
            free_bytes: 5,
            price_milli: 1,
            region: "eu".into(),
        });
        let mut b = body(&k, vec![]);
        b.content = offer.clone();
        assert!(matches!(
            b.clone().sign(&k),
            Err(ValidationError::ContentLabelMismatch(_))
        ));
        b.label = STORAGE_OFFER_LABEL.into();
        assert!(b.clone().sign(&k).is_ok());
        b.label = "_anything".into();
        assert!(matches!(b.sign(&k), Err(ValidationError::BadLabel(_))));
    }
}
