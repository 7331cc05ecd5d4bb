//! The HTTP API's one contract: a serde type for every request and answer body of
//! [`crate::api`], and the one mapping from a merge outcome to what a publish answers.
//!
//! The server ([`crate::api`]) serialises these types, the CLI ([`crate::cli`] through
//! [`crate::client`]) and the chaos harness (`dpin-sim`'s `nodeapi`) deserialise them, so
//! the three cannot drift apart. The JSON is a wire format that older CLIs and harnesses read
//! from newer nodes (and newer ones from older nodes):
//!
//! * A field is never renamed or retyped. Optional fields keep their form: some are `null`
//!   when empty (`SeqAnswer::hash`, `PeerJson::rtt_ms`, an applied publish's
//!   `previous_seq` for a new name), others are left out (`ErrorBody::held_seq`). The tests
//!   below pin each body's text; `api::wire_tests` pins what a real node sends.
//! * Answers never deny unknown fields, and fields an older node may not send have defaults,
//!   so a reader skips what it does not know. Enumerations read from the wire have an
//!   `Other` variant for words a newer node may add.
//! * A request's empty optional field is left out; the server takes `null` and absence alike
//!   (older clients send `"if_seq": null`).
//!
//! The CLI's `--json` output is the node's answer as received plus `answered_by` (not
//! re-serialised from these types), so fields a newer node adds reach scripts too.
//!
//! The module depends on the protocol crate and serde only (the conversions from the node's
//! own types are in [`crate::api`]), so every module may use it without importing the node.
//!
//! Not part of the contract: `GET /metrics` (OpenMetrics text, [`crate::metrics`]) and the
//! counter objects inside [`StatusAnswer`] (`counters`, `endpoints`, `dns`, `blobs`, `offers`:
//! each module's own view, carried as opaque JSON).

use dpin_protocol::error::ValidationError;
use dpin_protocol::{Outcome, SignedRecord};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Errors

/// Every error answer: `{"error": KIND, "message": TEXT}` (SPEC §5), and for a refused
/// publish the seq the node holds (`held_seq`), so a client can tell a lost race (held above
/// what it read) from a lagging node (held below).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A short stable kind: `not_found`, `bad_json`, `stale`, `clock`, ... (for a publish,
    /// [`PublishRefusal::as_str`]).
    #[serde(default)]
    pub error: String,
    /// What went wrong and what to do, for people.
    #[serde(default)]
    pub message: String,
    /// For refused publishes: the seq held for the name. Left out otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_seq: Option<u64>,
}

impl ErrorBody {
    /// The publish refusal this error names, if it is one of them.
    pub fn refusal(&self) -> Option<PublishRefusal> {
        PublishRefusal::parse(&self.error)
    }
}

// ---------------------------------------------------------------------------------------------
// Publish

/// `POST /v1/publish` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRequest {
    /// The signed record's wire bytes, hex.
    pub record: String,
    /// Compare-and-set: apply only if the held seq equals this (0 = name unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_seq: Option<u64>,
    /// Compare-and-set on the record itself: apply only if the held winner's content hash
    /// (hex, as `/v1/seq` and `/v1/resolve` show it) is this. A clean-up names what it deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_hash: Option<String>,
}

impl PublishRequest {
    /// A publish of `record` without preconditions.
    pub fn new(record: &SignedRecord) -> Self {
        Self {
            record: hex::encode(record.encode()),
            if_seq: None,
            if_hash: None,
        }
    }

    /// With a held-seq precondition.
    pub fn if_seq(mut self, seq: Option<u64>) -> Self {
        self.if_seq = seq;
        self
    }

    /// With a held-winner precondition (content hash, hex).
    pub fn if_hash(mut self, hash: Option<String>) -> Self {
        self.if_hash = hash;
        self
    }
}

/// How a publish that the node took ended (HTTP 200): its `outcome` word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishOutcome {
    /// Stored as the new winner.
    Applied,
    /// Already held; nothing changed.
    Duplicate,
    /// The node held only the record's floor and took its body back.
    Restored,
    /// Equal seq, different content, and this record won the tie-break.
    ConflictWon,
    /// A word this build does not know (from a newer node).
    #[serde(other)]
    Other,
}

impl PublishOutcome {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Restored => "restored",
            Self::ConflictWon => "conflict_won",
            Self::Other => "other",
        }
    }
}

/// Why a publish was refused for what the record is or what the node holds: the error
/// kinds a writer acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishRefusal {
    /// The node holds a higher seq (409).
    Stale,
    /// The node holds a different record at this seq that wins the tie-break (409).
    Conflict,
    /// A compare-and-set precondition did not hold (409).
    CasMismatch,
    /// Refused only by this node's clock (expiry or seq too far ahead, already expired): another
    /// node may take it (422).
    Clock,
    /// The record is not valid (bad signature, empty endpoints, bad label...) (422).
    Invalid,
}

impl PublishRefusal {
    /// Every refusal, for tests.
    pub const ALL: [Self; 5] = [
        Self::Stale,
        Self::Conflict,
        Self::CasMismatch,
        Self::Clock,
        Self::Invalid,
    ];

    /// The wire word (`ErrorBody::error`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stale => "stale",
            Self::Conflict => "conflict",
            Self::CasMismatch => "cas_mismatch",
            Self::Clock => "clock",
            Self::Invalid => "invalid",
        }
    }

    /// The refusal a wire word names.
    pub fn parse(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == word)
    }

    /// The HTTP status it is answered with.
    pub fn status(self) -> u16 {
        match self {
            Self::Stale | Self::Conflict | Self::CasMismatch => 409,
            Self::Clock | Self::Invalid => 422,
        }
    }
}

/// What a publish answers for a merge outcome: the one mapping from
/// [`dpin_protocol::Outcome`] to the wire ([`publish_verdict`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishVerdict {
    /// Taken (200) with this outcome word.
    Taken(PublishOutcome),
    /// Refused with this kind.
    Refused(PublishRefusal),
    /// The record is valid, but this node has no room for a new name (507, the admission
    /// reason as the error kind); another node may have room.
    NoRoom(&'static str),
}

/// The one mapping from a merge outcome to what a publish answers.
pub fn publish_verdict(outcome: &Outcome) -> PublishVerdict {
    use PublishVerdict::{NoRoom, Refused, Taken};
    match outcome {
        Outcome::Applied { .. } => Taken(PublishOutcome::Applied),
        Outcome::Duplicate => Taken(PublishOutcome::Duplicate),
        Outcome::Restored => Taken(PublishOutcome::Restored),
        Outcome::Conflict { applied: true, .. } => Taken(PublishOutcome::ConflictWon),
        Outcome::Conflict { applied: false, .. } => Refused(PublishRefusal::Conflict),
        Outcome::Stale { .. } => Refused(PublishRefusal::Stale),
        Outcome::CasMismatch { .. } => Refused(PublishRefusal::CasMismatch),
        Outcome::Invalid(e) if e.is_clock_dependent() => Refused(PublishRefusal::Clock),
        Outcome::Invalid(ValidationError::Admission(a)) => NoRoom(a.reason()),
        Outcome::Invalid(_) => Refused(PublishRefusal::Invalid),
    }
}

/// What the node did about spreading a taken publish (`gossip`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GossipStatus {
    /// Handed to at least one subscribed peer.
    Sent,
    /// No subscribed peer yet: anti-entropy carries it.
    NoPeers,
    /// The network already had it.
    Duplicate,
    /// Not gossiped (the store did not change).
    None,
    /// A word this build does not know (from a newer node).
    #[serde(other)]
    Other,
}

impl GossipStatus {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::NoPeers => "no_peers",
            Self::Duplicate => "duplicate",
            Self::None => "none",
            Self::Other => "other",
        }
    }
}

/// Reads a present field as `Some` (even when `null`), so `Option<Option<T>>` tells a missing
/// field (`None`) from a `null` one (`Some(None)`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A publish the node took (HTTP 200).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishAnswer {
    /// `label.zone`.
    pub name: String,
    /// The record's seq.
    pub seq: u64,
    /// How it ended.
    pub outcome: PublishOutcome,
    /// For `applied` only: the seq it replaced, `null` for a new name (`Some(None)` here);
    /// left out for the other outcomes (`None`).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub previous_seq: Option<Option<u64>>,
    /// What the node did about spreading it.
    pub gossip: GossipStatus,
}

// ---------------------------------------------------------------------------------------------
// Reads

/// One endpoint in a resolve answer.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct EndpointJson {
    /// IP literal or hostname.
    pub host: String,
    /// Port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub transport: String,
    /// Selection weight.
    pub weight: u16,
    /// Whether a probe from this node reached the endpoint recently (SPEC §5). `false` covers
    /// both unhealthy and unknown; `health` tells them apart.
    pub healthy: bool,
    /// `healthy`, `unknown` (not probed: new, or refused by the probe policy) or `unhealthy`.
    #[serde(default)]
    pub health: String,
}

/// `GET /v1/resolve/{name}`: the live winner, healthy endpoints first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveAnswer {
    /// `label.zone`, normalised.
    pub name: String,
    /// The record's seq.
    pub seq: u64,
    /// The record's content hash (hex): what a clean-up names (`--if-hash`). Always sent;
    /// older nodes did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Expiry (Unix ms).
    #[serde(default)]
    pub expires_at_ms: u64,
    /// The endpoints, healthy first, then unknown; unhealthy ones only if all are.
    #[serde(default)]
    pub endpoints: Vec<EndpointJson>,
    /// The answering node.
    #[serde(default)]
    pub peer_id: String,
    /// The node hears too few of its peers: the answer may be stale, ask another peer (never
    /// fail closed). Always sent; `None` from older nodes that did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_off: Option<bool>,
}

/// The flags any read answer may carry, read by the client before it knows the body's type
/// (today resolve's `cut_off`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ReadFlags {
    /// The answering node says it is cut off ([`ResolveAnswer::cut_off`]).
    #[serde(default)]
    pub cut_off: Option<bool>,
}

/// `GET /v1/seq/{name}`: the highest seq held (0 if none) and the content hash at it
/// (`null` if none), tombstoned and expired names included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqAnswer {
    /// `label.zone`, normalised.
    pub name: String,
    /// Highest seq held, 0 if the name is unknown.
    pub seq: u64,
    /// The content hash at that seq (hex), `null` if the name is unknown.
    #[serde(default)]
    pub hash: Option<String>,
    /// A blocking read (`?wait_seq=N`) during which the name changed: when it last did, on
    /// the answering host's monotonic clock in µs (`CLOCK_MONOTONIC`, shared by the processes
    /// of one host, meaningless on another; see `crate::watch`). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at_us: Option<u64>,
}

/// One peer in a status answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerJson {
    /// Its peer id.
    pub peer_id: String,
    /// Not down (alive or suspect).
    pub alive: bool,
    /// `alive`, `suspect` or `down`.
    #[serde(default)]
    pub state: String,
    /// Has a connection now.
    #[serde(default)]
    pub connected: bool,
    /// Our failure detector watches it (≤ 2 s to see it pause) rather than checking it in the
    /// slow round of the rest.
    #[serde(default)]
    pub watched: bool,
    /// Wall-clock time (Unix ms) of its last state change.
    #[serde(default)]
    pub since_ms: u64,
    /// Last probe round trip, `null` if none yet.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
}

/// How much of the network a node hears ([`dpin_protocol::reach`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReachJson {
    /// Peers known.
    pub known: u32,
    /// Of those, heard from recently.
    pub alive: u32,
    /// Answers may be stale.
    pub cut_off: bool,
}

impl From<dpin_protocol::reach::Reach> for ReachJson {
    fn from(r: dpin_protocol::reach::Reach) -> Self {
        Self {
            known: r.known,
            alive: r.alive,
            cut_off: r.cut_off,
        }
    }
}

/// `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusAnswer {
    /// The node's peer id.
    pub peer_id: String,
    /// Its listen addresses (multiaddrs).
    #[serde(default)]
    pub listen_addrs: Vec<String>,
    /// Peers with liveness.
    #[serde(default)]
    pub peers: Vec<PeerJson>,
    /// How much of the network it hears.
    #[serde(default)]
    pub reach: ReachJson,
    /// Names held (winners, tombstones and floors included).
    #[serde(default)]
    pub records: u64,
    /// Live winners.
    #[serde(default)]
    pub live_records: u64,
    /// Anti-entropy digest root (hex).
    #[serde(default)]
    pub digest: String,
    /// Seconds since start.
    #[serde(default)]
    pub uptime_s: f64,
    /// Entries found damaged when the store was opened.
    #[serde(default)]
    pub corrupt_entries: u64,
    /// The node's counters (opaque: `crate::node::Metrics::to_json`).
    #[serde(default)]
    pub counters: Value,
    /// Endpoint probing (opaque: `crate::health::Health::to_json`).
    #[serde(default)]
    pub endpoints: Value,
    /// The DNS front-end (opaque).
    #[serde(default)]
    pub dns: Value,
    /// Blob storage (opaque).
    #[serde(default)]
    pub blobs: Value,
    /// The offer view (opaque).
    #[serde(default)]
    pub offers: Value,
    /// Discovery and NAT: AutoNAT's verdict, relay slots, relayed connections (opaque:
    /// `crate::net::NatStats::to_json`; absent from nodes older than the NAT work).
    #[serde(default)]
    pub nat: Value,
}

/// One live offer as the API and CLI show it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OfferView {
    /// `storage` or `compute`.
    pub kind: String,
    /// Offering node's peer id.
    pub peer_id: String,
    /// Offering node's zone id.
    pub zone: String,
    /// Storage capacity (storage offers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    /// Free storage (storage offers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    /// Cores (compute offers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    /// Memory (compute offers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// GPUs (compute offers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// Price in thousandths of a unit.
    pub price_milli: u64,
    /// Region tag.
    #[serde(default)]
    pub region: String,
    /// Expiry (Unix ms).
    pub expires_at_ms: u64,
}

/// `GET /v1/offers`: live offers, cheapest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffersAnswer {
    /// The offers.
    pub offers: Vec<OfferView>,
}

// ---------------------------------------------------------------------------------------------
// Blobs

/// `POST /v1/blobs`: a stored blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobPutAnswer {
    /// Root hash, hex.
    pub hash: String,
    /// Size in bytes.
    pub size: u64,
    /// Chunks.
    pub chunks: u32,
    /// Peers that acknowledged every chunk.
    #[serde(default)]
    pub holders: Vec<String>,
}

/// One holder in a blob info answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderJson {
    /// Its peer id.
    pub peer_id: String,
    /// Chunks it holds.
    pub chunks: u32,
    /// Chunks it was asked to hold.
    pub total: u32,
}

/// `GET /v1/blobs/{hash}/info`: the manifest, the chunk index and who holds how much.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfoAnswer {
    /// Root hash, hex (lowercase).
    pub hash: String,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Chunks.
    pub chunks: u32,
    /// Copies wanted.
    pub replicas: u8,
    /// Holders with every chunk they were asked for.
    #[serde(default)]
    pub complete_copies: u64,
    /// Holders that answered.
    #[serde(default)]
    pub holders: Vec<HolderJson>,
    /// Storage nodes that did not answer (they may hold copies).
    #[serde(default)]
    pub unanswered: Vec<String>,
    /// The verified chunk index (hex).
    pub index: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;

    /// `value` serialises to exactly `golden` (the text the `json!` bodies of the server gave
    /// before this module existed, keys sorted as serde_json's map sorts them, compared as
    /// JSON so key order does not matter), and `golden` reads back to `value`.
    fn pinned<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
        value: &T,
        golden: &str,
    ) {
        let text = serde_json::to_string(value).unwrap();
        let got: Value = serde_json::from_str(&text).unwrap();
        let want: Value = serde_json::from_str(golden).unwrap();
        assert_eq!(got, want, "serialised: {text}");
        assert_eq!(&serde_json::from_str::<T>(golden).unwrap(), value);
        assert_eq!(&serde_json::from_str::<T>(&text).unwrap(), value);
    }

    #[test]
    fn error_bodies_leave_held_seq_out_unless_a_publish_was_refused() {
        pinned(
            &ErrorBody {
                error: "not_found".into(),
                message: "no live record for a.b".into(),
                held_seq: None,
            },
            r#"{"error":"not_found","message":"no live record for a.b"}"#,
        );
        let stale = ErrorBody {
            error: "stale".into(),
            message: "m".into(),
            held_seq: Some(7),
        };
        pinned(&stale, r#"{"error":"stale","message":"m","held_seq":7}"#);
        assert_eq!(stale.refusal(), Some(PublishRefusal::Stale));
        assert_eq!(ErrorBody::default().refusal(), None);
    }

    #[test]
    fn publish_requests_leave_empty_preconditions_out_and_take_null_or_absence() {
        let bare = PublishRequest {
            record: "00ff".into(),
            if_seq: None,
            if_hash: None,
        };
        pinned(&bare, r#"{"record":"00ff"}"#);
        // What older clients send: explicit nulls.
        let old: PublishRequest =
            serde_json::from_str(r#"{"record":"00ff","if_seq":null,"if_hash":null}"#).unwrap();
        assert_eq!(old, bare);
        pinned(
            &PublishRequest {
                record: "00ff".into(),
                if_seq: Some(0),
                if_hash: Some("ab".into()),
            },
            r#"{"record":"00ff","if_seq":0,"if_hash":"ab"}"#,
        );
        assert!(serde_json::from_str::<PublishRequest>(r#"{"if_seq":1}"#).is_err());
    }

    #[test]
    fn publish_answers_keep_previous_seq_null_for_a_new_name_and_absent_otherwise() {
        let answer = |outcome, previous_seq, gossip| PublishAnswer {
            name: "web.z".into(),
            seq: 3,
            outcome,
            previous_seq,
            gossip,
        };
        pinned(
            &answer(PublishOutcome::Applied, Some(None), GossipStatus::NoPeers),
            r#"{"name":"web.z","seq":3,"outcome":"applied","previous_seq":null,"gossip":"no_peers"}"#,
        );
        pinned(
            &answer(PublishOutcome::Applied, Some(Some(2)), GossipStatus::Sent),
            r#"{"name":"web.z","seq":3,"outcome":"applied","previous_seq":2,"gossip":"sent"}"#,
        );
        pinned(
            &answer(PublishOutcome::Duplicate, None, GossipStatus::None),
            r#"{"name":"web.z","seq":3,"outcome":"duplicate","gossip":"none"}"#,
        );
        pinned(
            &answer(PublishOutcome::Restored, None, GossipStatus::Duplicate),
            r#"{"name":"web.z","seq":3,"outcome":"restored","gossip":"duplicate"}"#,
        );
        pinned(
            &answer(PublishOutcome::ConflictWon, None, GossipStatus::Sent),
            r#"{"name":"web.z","seq":3,"outcome":"conflict_won","gossip":"sent"}"#,
        );
    }

    #[test]
    fn answers_from_a_newer_node_with_unknown_fields_and_words_still_read() {
        let a: PublishAnswer = serde_json::from_str(
            r#"{"name":"n","seq":1,"outcome":"merged_later","gossip":"relayed","extra":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(a.outcome, PublishOutcome::Other);
        assert_eq!(a.gossip, GossipStatus::Other);
        let r: ResolveAnswer =
            serde_json::from_str(r#"{"name":"n","seq":1,"endpoints":[],"region":"eu"}"#).unwrap();
        assert_eq!((r.hash, r.cut_off), (None, None), "an older node's answer");
        let s: StatusAnswer = serde_json::from_str(r#"{"peer_id":"p","new":1}"#).unwrap();
        assert_eq!(s.records, 0);
    }

    #[test]
    fn words_are_the_serde_words() {
        for o in [
            PublishOutcome::Applied,
            PublishOutcome::Duplicate,
            PublishOutcome::Restored,
            PublishOutcome::ConflictWon,
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
        for g in [
            GossipStatus::Sent,
            GossipStatus::NoPeers,
            GossipStatus::Duplicate,
            GossipStatus::None,
        ] {
            assert_eq!(serde_json::to_value(g).unwrap(), g.as_str());
        }
        for r in PublishRefusal::ALL {
            assert_eq!(PublishRefusal::parse(r.as_str()), Some(r));
        }
        assert_eq!(PublishRefusal::parse("not_found"), None);
    }

    #[test]
    fn every_merge_outcome_has_its_one_answer() {
        use PublishVerdict::{Refused, Taken};
        let cases = [
            (
                Outcome::Applied { previous_seq: None },
                Taken(PublishOutcome::Applied),
            ),
            (Outcome::Duplicate, Taken(PublishOutcome::Duplicate)),
            (Outcome::Restored, Taken(PublishOutcome::Restored)),
            (
                Outcome::Conflict {
                    seq: 1,
                    applied: true,
                },
                Taken(PublishOutcome::ConflictWon),
            ),
            (
                Outcome::Conflict {
                    seq: 1,
                    applied: false,
                },
                Refused(PublishRefusal::Conflict),
            ),
            (
                Outcome::Stale { have: 2, got: 1 },
                Refused(PublishRefusal::Stale),
            ),
            (
                Outcome::CasMismatch {
                    expected: 1,
                    actual: 2,
                },
                Refused(PublishRefusal::CasMismatch),
            ),
            (
                Outcome::Invalid(ValidationError::EmptyEndpoints),
                Refused(PublishRefusal::Invalid),
            ),
        ];
        for (outcome, verdict) in cases {
            assert_eq!(publish_verdict(&outcome), verdict, "{outcome:?}");
        }
    }

    #[test]
    fn resolve_answers_keep_their_fields() {
        pinned(
            &ResolveAnswer {
                name: "web.z".into(),
                seq: 3,
                hash: Some("ab".into()),
                expires_at_ms: 1_700_000_000_000,
                endpoints: vec![EndpointJson {
                    host: "::1".into(),
                    port: 8443,
                    transport: "udp".into(),
                    weight: 1,
                    healthy: true,
                    health: "healthy".into(),
                }],
                peer_id: "12D3".into(),
                cut_off: Some(false),
            },
            r#"{"name":"web.z","seq":3,"hash":"ab","expires_at_ms":1700000000000,
                "endpoints":[{"host":"::1","port":8443,"transport":"udp","weight":1,
                              "healthy":true,"health":"healthy"}],
                "peer_id":"12D3","cut_off":false}"#,
        );
    }

    #[test]
    fn seq_answers_say_null_for_an_unknown_name() {
        pinned(
            &SeqAnswer {
                name: "web.z".into(),
                seq: 0,
                hash: None,
                changed_at_us: None,
            },
            r#"{"name":"web.z","seq":0,"hash":null}"#,
        );
        pinned(
            &SeqAnswer {
                name: "web.z".into(),
                seq: 4,
                hash: Some("cd".into()),
                changed_at_us: None,
            },
            r#"{"name":"web.z","seq":4,"hash":"cd"}"#,
        );
        pinned(
            &SeqAnswer {
                name: "web.z".into(),
                seq: 5,
                hash: Some("ef".into()),
                changed_at_us: Some(12_345_678),
            },
            r#"{"name":"web.z","seq":5,"hash":"ef","changed_at_us":12345678}"#,
        );
    }

    #[test]
    fn status_answers_keep_their_fields_and_null_rtts() {
        let peer = |rtt_ms| PeerJson {
            peer_id: "12D3p".into(),
            alive: true,
            state: "alive".into(),
            connected: true,
            watched: false,
            since_ms: 1_700_000_000_000,
            rtt_ms,
        };
        pinned(
            &StatusAnswer {
                peer_id: "12D3".into(),
                listen_addrs: vec!["/ip4/127.0.0.1/tcp/7001".into()],
                peers: vec![peer(Some(1.5)), peer(None)],
                reach: ReachJson {
                    known: 2,
                    alive: 2,
                    cut_off: false,
                },
                records: 12,
                live_records: 11,
                digest: "ff".into(),
                uptime_s: 2.5,
                corrupt_entries: 0,
                counters: serde_json::json!({"publish_applied": 1}),
                endpoints: serde_json::json!({"tracked": 0}),
                dns: serde_json::json!({"udp_queries": 0}),
                blobs: serde_json::json!({"refused": {"no_room": 0}}),
                offers: serde_json::json!({"counted": 0}),
                nat: serde_json::json!({"status": "public"}),
            },
            r#"{"peer_id":"12D3","listen_addrs":["/ip4/127.0.0.1/tcp/7001"],
                "peers":[{"peer_id":"12D3p","alive":true,"state":"alive","connected":true,
                          "watched":false,"since_ms":1700000000000,"rtt_ms":1.5},
                         {"peer_id":"12D3p","alive":true,"state":"alive","connected":true,
                          "watched":false,"since_ms":1700000000000,"rtt_ms":null}],
                "reach":{"known":2,"alive":2,"cut_off":false},
                "records":12,"live_records":11,"digest":"ff","uptime_s":2.5,
                "corrupt_entries":0,"counters":{"publish_applied":1},
                "endpoints":{"tracked":0},"dns":{"udp_queries":0},
                "blobs":{"refused":{"no_room":0}},"offers":{"counted":0},
                "nat":{"status":"public"}}"#,
        );
    }

    #[test]
    fn offers_leave_the_other_kinds_fields_out() {
        pinned(
            &OffersAnswer {
                offers: vec![
                    OfferView {
                        kind: "storage".into(),
                        peer_id: "p".into(),
                        zone: "z".into(),
                        capacity_bytes: Some(100),
                        free_bytes: Some(50),
                        cores: None,
                        memory_bytes: None,
                        gpus: None,
                        price_milli: 1500,
                        region: "eu".into(),
                        expires_at_ms: 9,
                    },
                    OfferView {
                        kind: "compute".into(),
                        peer_id: "q".into(),
                        zone: "y".into(),
                        capacity_bytes: None,
                        free_bytes: None,
                        cores: Some(4),
                        memory_bytes: Some(1024),
                        gpus: Some(0),
                        price_milli: 2000,
                        region: String::new(),
                        expires_at_ms: 9,
                    },
                ],
            },
            r#"{"offers":[
                {"kind":"storage","peer_id":"p","zone":"z","capacity_bytes":100,
                 "free_bytes":50,"price_milli":1500,"region":"eu","expires_at_ms":9},
                {"kind":"compute","peer_id":"q","zone":"y","cores":4,"memory_bytes":1024,
                 "gpus":0,"price_milli":2000,"region":"","expires_at_ms":9}]}"#,
        );
    }

    #[test]
    fn blob_answers_keep_their_fields() {
        pinned(
            &BlobPutAnswer {
                hash: "ab".into(),
                size: 10,
                chunks: 1,
                holders: vec!["p".into()],
            },
            r#"{"hash":"ab","size":10,"chunks":1,"holders":["p"]}"#,
        );
        pinned(
            &BlobInfoAnswer {
                hash: "ab".into(),
                size: 10,
                chunk_size: 1 << 20,
                chunks: 1,
                replicas: 3,
                complete_copies: 1,
                holders: vec![HolderJson {
                    peer_id: "p".into(),
                    chunks: 1,
                    total: 1,
                }],
                unanswered: vec!["q".into()],
                index: "cd".into(),
            },
            r#"{"hash":"ab","size":10,"chunk_size":1048576,"chunks":1,"replicas":3,
                "complete_copies":1,"holders":[{"peer_id":"p","chunks":1,"total":1}],
                "unanswered":["q"],"index":"cd"}"#,
        );
    }
}
