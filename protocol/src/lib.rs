//! # dpin-protocol — the sans-IO core of dpin
//!
//! Everything that decides *what is true* in a dpin network lives here, with no sockets, no
//! clock reads and no global randomness: the caller passes the current time (`now_ms`, Unix
//! milliseconds) and any random number generator. The node, the chaos harness and the
//! deterministic simulator therefore drive exactly the same code.
//!
//! The crate exists to make the October-2025 failure (a stale automation plan applied over a
//! newer one, then deleted by clean-up, leaving an empty record) impossible by construction:
//!
//! * [`keys`] — ed25519 zone keys, the DNS-safe zone id ([`ZoneId`], one DNS label), key files.
//! * [`record`] — the signed record ([`SignedRecord`]): names with endpoints, tombstones and the
//!   node offers (storage / compute); canonical bincode encoding with a hard size limit,
//!   domain-separated signatures and field validation; blob manifests (content-addressed
//!   stored files) are records too. An empty endpoint set cannot be signed
//!   into a valid record.
//! * [`signature`] — the one acceptance rule for record signatures (cofactored, canonical
//!   encodings, no weak keys), implemented alike by single and batch verification.
//! * [`merge`] — THE one function that decides which record wins ([`merge::decide`]) by the
//!   rank `(seq, live, hash)`: higher `seq` wins; at equal `seq` a live record beats a
//!   tombstone, and two records of one kind are an equivocation settled by the blake3 hash of
//!   the canonical bytes; lower `seq` is stale. Every replica applies it at apply time.
//! * [`store`] — the [`Store`] abstraction and the in-memory [`MemStore`]: per name the winner
//!   and the highest `seq` ever accepted (the floor), so expiry or compaction never lets an older
//!   record back in and never removes the winner of a live name.
//! * [`digest`] — anti-entropy: an order-independent store digest, 256 bucket digests, per-bucket
//!   summaries and the planner that tells two peers which records to fetch and push.
//! * [`sync`] — the anti-entropy session as a sans-IO state machine ([`sync::Initiator`],
//!   [`sync::respond`]): cursor, round cap, stop rule, fetch-before-push, chunking; driven by
//!   the node over libp2p and by the simulator in virtual time.
//! * [`ingest`] — one budget per peer across every ingest path (gossip, sync push, sync
//!   request, blob), offences and timed bans; bounded validation queue; the verdict (accept /
//!   ignore / reject) from the merge outcome.
//! * [`liveness`] — the peer failure detector (suspicion, confirmation, local health) as a
//!   state machine over monotonic milliseconds, generic over the peer id.
//! * [`relay`] — which records an anti-entropy session taught this node are relayed on the
//!   gossip mesh (so the rest of its side of a heal gets them at once), bounded against bulk
//!   catch-up and by a token bucket.
//! * [`reach`] — isolation awareness: whether a node hears from enough of the peers it knows,
//!   or should tell readers it is cut off.
//! * [`blob`] — content addressing of stored files, rendezvous placement, chunk messages.
//! * [`offer`] — the offer view: which storage/compute offers count (live members, bounded
//!   expiry), filters and order.
//! * [`error`] — typed errors, one variant per rejection reason.

pub mod blob;
mod codec;
pub mod digest;
pub mod error;
pub mod ingest;
pub mod keys;
pub mod liveness;
pub mod merge;
pub mod offer;
pub mod reach;
pub mod record;
pub mod relay;
pub mod signature;
pub mod store;
pub mod sync;

pub use digest::{plan_sync, StoreDigest, Summary, SyncPlan, SyncRequest, SyncResponse, BUCKETS};
pub use error::{DecodeError, KeyError, ValidationError};
pub use keys::{ZoneId, ZoneKey};
pub use merge::{decide, Decision, Floor, Outcome};
pub use record::{
    seq_ceiling, BlobManifest, ComputeOffer, Content, Endpoint, EndpointsView, Freshness, Host,
    RecordBody, SignedRecord, StorageOffer, Transport,
};
pub use store::{Entry, MemStore, Store};

/// Hard upper bound on the encoded size of one signed record (SPEC §3: "say 4 KiB").
/// Enforced by the decoder before any allocation larger than this can happen.
pub const MAX_RECORD_BYTES: usize = 4096;
/// Most endpoints one name may carry; keeps DNS answers and records bounded.
pub const MAX_ENDPOINTS: usize = 64;
/// Longest DNS hostname (RFC 1035, without the trailing dot).
pub const MAX_HOSTNAME_LEN: usize = 253;
/// Longest DNS label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;
/// Longest lifetime a record may claim: 30 days. Longer would let one signature pin a name
/// long after its writer lost the key or moved on.
pub const MAX_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
/// Clock skew tolerated between a writer and the node it publishes through (the
/// [`record::Freshness::Publish`] checks).
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;
/// Clock skew tolerated between two nodes (the [`record::Freshness::Replicate`] checks add it
/// on top of [`MAX_CLOCK_SKEW_MS`]). Replication must accept whatever publishing accepted: a
/// node whose clock is behind the publishing node's by up to this much still takes a record
/// with the longest TTL and the highest seq the publishing node allowed, so two nodes whose
/// clocks differ by at most 30 min never split over a record. Beyond that a record is refused
/// only until the slow clock catches up (time moves every limit forward), and anti-entropy
/// brings it then.
pub const MAX_NODE_CLOCK_SKEW_MS: u64 = 30 * 60 * 1000;
/// Seq units per millisecond of the seq ceiling (see [`record::seq_ceiling`]): a seq may not
/// exceed the current time in microseconds (plus the skew allowance). Small counters (1, 2,
/// 3...) and millisecond timestamps are always far below it; `u64::MAX` is refused, so no
/// single record can take the last seq of a name.
pub const SEQ_UNITS_PER_MS: u64 = 1000;
/// Longest region string in an offer.
pub const MAX_REGION_LEN: usize = 64;
