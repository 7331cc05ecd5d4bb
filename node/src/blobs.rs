//! Replicated blobs: the storage half of the network's offers, backed by real bytes.
//!
//! * [`BlobStore`] keeps chunks on disk under `DATA_DIR/blobs/<root hex>/`, each written to a
//!   temporary file, fsynced and renamed, so a holder that acknowledged a chunk has it even
//!   after SIGKILL. Every chunk is verified against the index when stored, when served and by
//!   the periodic scrub; a corrupt chunk is deleted (never served) and then re-fetched by
//!   repair.
//! * Placement and repair planning are the pure functions of [`dpin_protocol::blob`]
//!   (`placement`, `intended_holders`, `may_store`, `plan_repair`, `is_surplus`), driven here
//!   with the offers that count ([`offers::storage_candidates`]): one candidate filter for
//!   put, holder admission, repair and collection.
//! * **Writes are closed.** A holder stores a blob only under a valid signed manifest that
//!   arrives with the index and matches it, only if it is one of the blob's intended holders
//!   or their stand-ins in its own view of the live offers, and only within the capacity it
//!   offers (a node without `--offer-storage` stores nothing). Chunks and seals are refused
//!   for a blob it accepted no write for; a seal syncs once (a marker answers repeats). Every
//!   refusal is counted by reason in [`BlobStats`].
//! * **Manifest authority.** Manifests for a root can come from any zone. Placement never
//!   uses a manifest's claims unchecked: a holder binds a blob only to a manifest whose size,
//!   chunk size and chunk count equal the root-authenticated index, and reads take those
//!   numbers from the verified index. The copy count `K` is that of the manifest the blob's
//!   holders were first written under: each holder binds the zone of its first accepted write
//!   and never rebinds; a node without a copy that sees manifests from several zones asks the
//!   holders (the census) and follows the zone most complete holders vouch for, ties to the
//!   best-ranked holder ([`dpin_protocol::blob::owner_by_vouches`]). A stranger's manifest
//!   for someone else's blob, whatever size or `replicas` it claims, so changes neither
//!   where the blob lives nor how many copies it gets, unless the stranger's nodes hold most
//!   of its complete copies. Identical content put later under another zone keeps the first
//!   owner's `K`.
//! * **Collection.** Temporary files a crash left (`*.tmp`, `DATA_DIR/tmp` uploads) are
//!   removed at open. A copy without a live manifest from its bound zone is collected
//!   [`ORPHAN_GRACE_MS`] after it was written (a put that never published, an expired blob).
//!   A complete copy this node has not been an intended holder of for [`SURPLUS_GRACE_MS`] is
//!   collected once a census shows `K` complete copies on intended holders.
//! * [`put`] cuts an uploaded file into chunks, stores them on the first `K` intended holders
//!   (the node itself included, if chosen), and only then publishes the signed manifest, which
//!   gossips like any record. Its seq is the clock, kept above the held floor
//!   ([`offers::own_seq`]), so a re-put after the clock stepped back is not refused as stale.
//!   Holder requests are idempotent, so a request that failed (a timeout on a loaded node) is
//!   retried on the same holder; put moves on to the next node only after a holder made no
//!   progress for [`PUT_STALL`]. Moving on after the first timeout is what made a K=3 put
//!   leave 4 copies: the slow holder got its chunks anyway and repair, seeing it among the
//!   first `K`, completed it.
//! * **Chunks in place.** A chunk crosses the network once per copy without being copied in
//!   memory on the way: the uploader reads it from the upload straight into its `PutChunk`
//!   (after the host's framing, [`BlobHost::REQUEST_FRAMING`], and
//!   [`plan::put_chunk_header`]); a holder stores it from the message itself and answers a
//!   `GetChunk` with the chunk read straight into the answer ([`answer_message`]); the reader
//!   takes it out of the answer in place.
//! * [`fetch_chunk`] gets a chunk from this node or any holder, verifying it, and fails over to
//!   the next holder on error or corruption. A read ([`fetch_chunks`]) asks again for a chunk
//!   that no holder answered for (timeouts, closed connections), with fewer chunks in flight
//!   (halved once per burst of misses, `Window`), until [`GET_STALL`] passes without
//!   progress, so holders that stall for a while (a paused host, a loaded machine, a
//!   congested link) slow a download down instead of cutting it short.
//! * [`run_maintenance`] scrubs and repairs. A node that lacks a complete copy of a live blob
//!   and could be one of its intended holders asks the storage nodes how much of it each holds
//!   (a census, which also asks nodes whose offers lapsed within [`CENSUS_GRACE_MS`], so one
//!   late offer refresh cannot hide a copy) and pulls only if it is intended and fewer than `K`
//!   complete copies are live. When a holder dies, the census finds `K - 1` copies and only
//!   the newly intended node copies — one copy of repair traffic per lost replica. Two nodes
//!   whose views of the offers differ can still both pull after a loss (one extra copy); such
//!   a surplus copy is deleted only after a grace period and a census showing `K` complete
//!   copies on intended holders, since deleting on a divergent view could lose data.
//! * **Replication watch.** Each blob has one watcher: its first intended holder, once it
//!   holds a complete copy. Every [`REPLICATION_CHECK_MS`] (every repair round while short)
//!   the watcher asks the other intended holders what they hold and records how many of the
//!   `K` intended copies are complete; `dpin_blob_replication{state="full"|"under"}` and
//!   `dpin_blob_replication_missing_copies` on `/metrics` (and `blobs.replication` in status)
//!   count the blobs this node watches, so the sums over all nodes count each blob about once.
//!
//! Bounds: chunk size (1 MiB), blob size ([`MAX_BLOB_BYTES`]), one upload distributes to its
//! holders with at most [`PUT_PARALLEL_CHUNKS`] chunks in flight per holder (halved once per
//! burst of failed chunks, `Window`), repair handles one blob at a time with chunks fetched
//! one by one; a census asks each storage node once per blob that this node lacks and could
//! be intended for; the replication watch starts at most [`REPLICATION_CHECKS_PER_ROUND`]
//! checks per repair round, each asking the other `K - 1` intended holders once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use dpin_protocol::blob::{
    self as plan, chunk_hash, index_entry, manifest_matches_index, root_of, BlobRequest,
    BlobResponse, BlobShape, RepairPlan, StorageCandidate, DEFAULT_CHUNK_BYTES,
};
use dpin_protocol::record::blob_label;
use dpin_protocol::{BlobManifest, Content, Freshness, RecordBody, SignedRecord, ZoneId, ZoneKey};
use libp2p::PeerId;

use crate::clock::now_ms;
use crate::offers;
use crate::offers::OfferPublisher;

/// What blob storage needs from the node: its chunk store, blob requests to peers, and what
/// the offers need ([`OfferPublisher`]: the membership, the reserved records, publishing this
/// node's own manifests). The node implements it (`node.rs`); this module does not import
/// the node.
pub trait BlobHost: OfferPublisher + Clone + Send + Sync + 'static {
    /// This node's chunk store.
    fn blobs(&self) -> &std::sync::Arc<BlobStore>;
    /// What the host puts before every blob request on the wire (the node's request kind).
    /// Requests are built after it in one buffer, so a chunk read from disk goes out without
    /// another copy to frame it.
    const REQUEST_FRAMING: &'static [u8];
    /// Sends a blob request to `peer` as it is (encoded after [`BlobHost::REQUEST_FRAMING`])
    /// and returns the raw answer.
    fn request_blob(
        &self,
        peer: PeerId,
        framed: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, String>> + Send;
}

/// `req` encoded after the host's framing.
fn framed<N: BlobHost>(req: &BlobRequest) -> Vec<u8> {
    [N::REQUEST_FRAMING, &req.encode()].concat()
}

/// Largest blob accepted for `put`.
pub const MAX_BLOB_BYTES: u64 = 1 << 30;
/// Chunks in flight to one holder during a put.
pub const PUT_PARALLEL_CHUNKS: usize = 8;
/// A put gives up on a holder after this long without any of its requests succeeding. Holder
/// requests are idempotent, so a loaded holder or link (requests timing out) keeps its place
/// as long as it makes progress; a dead one is given up after this long and the next node in
/// the order takes its place.
pub const PUT_STALL: Duration = Duration::from_secs(20);
/// Pause after the `n`th failure in a row to one holder is `n` times this, at most
/// [`PUT_RETRY_PAUSE_MAX`] (lets a congested link drain instead of refilling it at once).
const PUT_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// Longest pause between tries to one holder.
const PUT_RETRY_PAUSE_MAX: Duration = Duration::from_secs(2);
/// A repair census also asks storage nodes whose offers lapsed less than this long ago: a copy
/// on a live node whose offer refresh was merely late still counts, so it is not duplicated.
/// A dead node does not answer and is not counted.
pub const CENSUS_GRACE_MS: u64 = 60_000;
/// A blob directory without a live manifest from the zone it was written under (a put that
/// never published, an expired blob, a write from before binding) is collected this long
/// after it was written. Long enough for a put of the largest blob to finish and its
/// manifest to replicate.
pub const ORPHAN_GRACE_MS: u64 = 10 * 60 * 1000;
/// A complete copy this node is no longer an intended holder of is collected only after it
/// has been surplus this long and a census then finds `K` complete copies on intended
/// holders (so a brief view change never deletes a copy).
pub const SURPLUS_GRACE_MS: u64 = 60 * 1000;
/// How often maintenance checks whether a member left (the failure detector's table only;
/// no store access), to start repair at once instead of at the next repair tick.
const MEMBERSHIP_WATCH: Duration = Duration::from_millis(250);
/// How often the holder admission view (own id, live storage offers) is refreshed.
const GATE_REFRESH: Duration = Duration::from_secs(1);
/// A `PutIndex` arriving when the admission view is older than this refreshes it first (see
/// [`answer_message`]).
pub const GATE_FRESH_MS: u64 = 100;
/// Manifests live this long (a put is a long-lived fact; re-put to extend).
pub const MANIFEST_TTL_MS: u64 = 30 * 24 * 3600 * 1000 - 60_000;

/// Blob failures.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Disk I/O failed.
    #[error("blob storage I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The data does not match its hash; it was not stored or was deleted.
    #[error("chunk {i} of the blob does not match its hash")]
    Corrupt {
        /// Chunk number.
        i: u32,
    },
    /// The blob (or its index) is not held here.
    #[error("blob not held here")]
    NotHeld,
    /// The index is malformed or does not match the root.
    #[error("blob index does not match the root hash")]
    BadIndex,
    /// Fewer holders with room than replicas asked for.
    #[error("the network can place this blob on {available} storage nodes with room, {wanted} replicas were asked for")]
    InsufficientStorage {
        /// Replicas asked for.
        wanted: usize,
        /// Nodes with room.
        available: usize,
    },
    /// No holder could provide a chunk.
    #[error("no live holder could provide chunk {i}: {why}")]
    Unavailable {
        /// Chunk number.
        i: u32,
        /// What the holders said.
        why: String,
    },
    /// No live manifest for this hash.
    #[error("no live blob with this hash")]
    UnknownBlob,
    /// Signing or publishing the manifest failed.
    #[error("manifest: {0}")]
    Manifest(String),
    /// A write from a peer was refused.
    #[error("refused: {0}")]
    Refused(Refusal),
}

/// Why a holder refused a write (each counted in [`BlobStats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// This node offers no storage (started without `--offer-storage`), or its admission
    /// view is not ready yet.
    #[error("this node offers no storage")]
    NoOffer,
    /// The manifest sent with the index does not decode, verify or validate.
    #[error("the manifest does not verify")]
    BadManifest,
    /// The manifest's root, size, chunk size or chunk count differ from the index.
    #[error("the manifest does not match the index")]
    ManifestMismatch,
    /// This node is not among the blob's intended holders or their stand-ins.
    #[error("this node is not an intended holder of the blob")]
    NotIntended,
    /// Storing it would exceed the capacity this node offers.
    #[error("no room within the offered capacity")]
    NoRoom,
    /// A chunk or seal for a blob this node accepted no write for.
    #[error("no accepted write for this blob")]
    NotAccepted,
}

impl Refusal {
    /// Every reason, for rendering.
    pub const ALL: [Refusal; 6] = [
        Refusal::NoOffer,
        Refusal::BadManifest,
        Refusal::ManifestMismatch,
        Refusal::NotIntended,
        Refusal::NoRoom,
        Refusal::NotAccepted,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoOffer => "no_offer",
            Refusal::BadManifest => "bad_manifest",
            Refusal::ManifestMismatch => "manifest_mismatch",
            Refusal::NotIntended => "not_intended",
            Refusal::NoRoom => "no_room",
            Refusal::NotAccepted => "not_accepted",
        }
    }
}

/// Blob write refusals and collections, per node instance: [`BlobStats::encode`] for
/// `/metrics`, [`BlobStats::to_json`] for status.
#[derive(Debug, Default)]
pub struct BlobStats {
    refused: [AtomicU64; 6],
    /// Bad index (does not hash to the root, malformed).
    pub bad_index: AtomicU64,
    /// Chunks that did not match the index when stored.
    pub corrupt_put: AtomicU64,
    /// Seals answered from the marker without syncing again.
    pub seals_repeated: AtomicU64,
    /// Blob directories collected as orphans (no live manifest from their bound zone).
    pub orphans_collected: AtomicU64,
    /// Complete copies collected as surplus (no longer intended, `K` copies elsewhere).
    pub surplus_collected: AtomicU64,
    /// Temporary files removed (left by a crash mid-write).
    pub tmp_collected: AtomicU64,
    /// Manifests of a root ignored because their claims differ from the verified index.
    pub manifests_mismatched: AtomicU64,
    /// Repair rounds started at once because a member left (confirmed down).
    pub repairs_on_leave: AtomicU64,
    /// The blobs this node watches (see the module docs' replication watch), by root.
    watched: Mutex<BTreeMap<[u8; 32], Watched>>,
}

impl BlobStats {
    fn refuse(&self, why: Refusal) -> BlobError {
        if let Some(c) = Refusal::ALL
            .iter()
            .position(|r| *r == why)
            .and_then(|i| self.refused.get(i))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        BlobError::Refused(why)
    }

    /// Refusals for one reason.
    pub fn refused(&self, why: Refusal) -> u64 {
        Refusal::ALL
            .iter()
            .position(|r| *r == why)
            .and_then(|i| self.refused.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn counters(&self) -> [(&'static str, &'static str, u64); 8] {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            (
                "dpin_blob_bad_index_total",
                "Blob indexes refused: not matching the root.",
                l(&self.bad_index),
            ),
            (
                "dpin_blob_corrupt_put_total",
                "Chunks refused: not matching the index.",
                l(&self.corrupt_put),
            ),
            (
                "dpin_blob_seals_repeated_total",
                "Seals answered without syncing again.",
                l(&self.seals_repeated),
            ),
            (
                "dpin_blob_orphans_collected_total",
                "Blob copies collected: no live manifest from their zone.",
                l(&self.orphans_collected),
            ),
            (
                "dpin_blob_surplus_collected_total",
                "Blob copies collected: no longer intended, K copies elsewhere.",
                l(&self.surplus_collected),
            ),
            (
                "dpin_blob_tmp_collected_total",
                "Temporary files left by a crash removed.",
                l(&self.tmp_collected),
            ),
            (
                "dpin_blob_manifests_mismatched_total",
                "Manifests ignored: claims differ from the verified index.",
                l(&self.manifests_mismatched),
            ),
            (
                "dpin_blob_repairs_on_leave_total",
                "Repair rounds started at once because a member was confirmed down.",
                l(&self.repairs_on_leave),
            ),
        ]
    }

    /// Makes every watched blob's check due at the next repair round (a member left: one of
    /// its copies may be gone).
    fn recheck_all(&self) {
        for w in lock(&self.watched).values_mut() {
            w.checked_at = 0;
        }
    }

    /// Watched blobs by state and the copies they lack: `(full, under, missing)`.
    pub fn replication(&self) -> (u64, u64, u64) {
        replication_summary(lock(&self.watched).values())
    }

    /// For `/metrics`.
    pub fn encode(
        &self,
        e: &mut prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        crate::metrics::counter_family(
            e,
            "dpin_blob_refused_total",
            "Blob writes (index, chunk, seal) refused, by reason.",
            Refusal::ALL.map(|why| ([("reason", why.as_str())], self.refused(why))),
        )?;
        for (name, help, v) in self.counters() {
            crate::metrics::counter(e, name, help, v)?;
        }
        let (full, under, missing) = self.replication();
        crate::metrics::gauge_family(
            e,
            "dpin_blob_replication",
            "Blobs this node watches (it is their first intended holder), by replication state at the last check: full (K intended holders hold complete copies) or under.",
            [
                ([("state", "full")], crate::metrics::to_i64(full)),
                ([("state", "under")], crate::metrics::to_i64(under)),
            ],
        )?;
        crate::metrics::gauge(
            e,
            "dpin_blob_replication_missing_copies",
            "Complete copies the blobs this node watches lack, summed.",
            crate::metrics::to_i64(missing),
        )?;
        Ok(())
    }

    /// JSON for status.
    pub fn to_json(&self) -> serde_json::Value {
        let refused: serde_json::Map<String, serde_json::Value> = Refusal::ALL
            .iter()
            .map(|w| (w.as_str().to_owned(), self.refused(*w).into()))
            .collect();
        let (full, under, missing) = self.replication();
        let mut v = serde_json::json!({
            "refused": refused,
            "replication": { "full": full, "under": under, "missing_copies": missing },
        });
        for (name, _, n) in self.counters() {
            let key = name
                .trim_start_matches("dpin_blob_")
                .trim_end_matches("_total");
            v[key] = n.into();
        }
        v
    }
}

/// What a holder needs to judge a write without the node: the capacity it offers, its own
/// peer id and the live storage offers (refreshed by [`run_maintenance`]).
#[derive(Debug, Default)]
struct Gate {
    capacity: Option<u64>,
    me: Option<PeerId>,
    candidates: Vec<StorageCandidate<PeerId>>,
    /// When `candidates` was taken (Unix ms; 0 never).
    viewed_ms: u64,
    /// Roots first seen surplus at (Unix ms), for [`SURPLUS_GRACE_MS`].
    surplus_since: BTreeMap<[u8; 32], u64>,
}

/// How often a blob's watcher (its first intended holder, holding a complete copy) checks the
/// other intended holders while the blob is fully replicated.
pub const REPLICATION_CHECK_MS: u64 = 30_000;

/// Most replication checks one repair round starts, so the watch's traffic is bounded by
/// rounds, not by the number of blobs: at most this many × (`K` - 1) `Has` requests a round.
pub const REPLICATION_CHECKS_PER_ROUND: usize = 8;

/// A watched blob's replication as last checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Watched {
    /// Intended holders (this node included) holding a complete copy.
    complete: u32,
    /// Copies the blob's manifest asks for (`K`).
    wanted: u32,
    /// When it was checked (Unix ms).
    checked_at: u64,
}

impl Watched {
    fn full(&self) -> bool {
        self.complete >= self.wanted
    }

    /// Whether the watcher should check again at `now`: every round while short (so the
    /// gauge clears as soon as repair has finished), every [`REPLICATION_CHECK_MS`] when full.
    fn due(&self, now: u64) -> bool {
        !self.full() || now.saturating_sub(self.checked_at) >= REPLICATION_CHECK_MS
    }
}

/// Blobs this node watches, by state, with the copies they lack: `(full, under, missing)`.
fn replication_summary<'a>(watched: impl Iterator<Item = &'a Watched>) -> (u64, u64, u64) {
    watched.fold((0, 0, 0), |(full, under, missing), w| {
        if w.full() {
            (full + 1, under, missing)
        } else {
            (
                full,
                under + 1,
                missing + u64::from(w.wanted.saturating_sub(w.complete)),
            )
        }
    })
}

/// Index metadata as stored: size, chunk size, concatenated chunk hashes.
#[derive(Clone, Debug)]
pub struct Index {
    /// Total size.
    pub size: u64,
    /// Chunk size.
    pub chunk_size: u32,
    /// Concatenated chunk hashes.
    pub hashes: Vec<u8>,
}

impl Index {
    /// Number of chunks.
    pub fn chunks(&self) -> u32 {
        (self.hashes.len() / 32) as u32
    }
}

/// On-disk chunk store, with the admission state that closes it to writes it did not agree to.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    used: AtomicU64,
    /// Corrupt chunks found (on read or scrub) and deleted.
    pub corrupt_found: AtomicU64,
    gate: Mutex<Gate>,
    /// Refusals and collections.
    pub stats: BlobStats,
    /// Chunks just written, for the background syncer ([`EARLY_SYNC_QUEUE`]).
    early_sync: std::sync::mpsc::SyncSender<PathBuf>,
}

/// Chunks written but not yet handed to the background syncer, at most. The syncer fsyncs
/// each chunk soon after it is written, while the rest of the blob is still arriving, so the
/// seal (which fsyncs every chunk and the directory, and only then acknowledges) finds them
/// clean: the disk work of a put overlaps its transfer instead of following it (64 fsyncs of
/// 1 MiB took 0.3 s here after the transfer). A full queue skips the early sync; the seal
/// still syncs that chunk, so durability never depends on it.
pub const EARLY_SYNC_QUEUE: usize = 64;

/// Starts the background syncer; it ends when the store (the sender) is dropped.
fn start_early_sync() -> std::io::Result<std::sync::mpsc::SyncSender<PathBuf>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<PathBuf>(EARLY_SYNC_QUEUE);
    std::thread::Builder::new()
        .name("blob-sync".into())
        .spawn(move || {
            for path in rx {
                // A chunk deleted or replaced meanwhile is simply skipped.
                if let Ok(f) = std::fs::File::open(&path) {
                    let _ = f.sync_data();
                }
            }
        })?;
    Ok(tx)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Milliseconds since the Unix epoch of a file's modification, 0 if unknown.
fn mtime_ms(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Checks an index against its root and itself.
fn check_index(root: &[u8; 32], index: &Index) -> Result<(), BlobError> {
    let chunks = index.size.div_ceil(u64::from(index.chunk_size.max(1)));
    if root_of(&index.hashes) != *root
        || index.hashes.len() % 32 != 0
        || chunks != u64::from(index.chunks())
        || index.chunk_size == 0
        || index.chunk_size > dpin_protocol::record::MAX_CHUNK_BYTES
    {
        return Err(BlobError::BadIndex);
    }
    Ok(())
}

/// Writes via a temporary file and rename, so a reader never sees half a file. With `sync`,
/// the data and the rename are on disk when this returns.
fn write_file(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if sync {
        if let Some(parent) = path.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

impl BlobStore {
    /// Opens (creating) `dir` and counts the bytes stored. Temporary files a crash left behind
    /// are removed: `*.tmp` in the blob directories, and the upload scratch files in the
    /// sibling `tmp` directory (`DATA_DIR/tmp`, where the API buffers uploads), since no
    /// upload is in flight before the node starts serving.
    pub fn open(dir: PathBuf) -> Result<Self, BlobError> {
        std::fs::create_dir_all(&dir)?;
        let stats = BlobStats::default();
        let mut used = 0;
        for blob in std::fs::read_dir(&dir)? {
            let blob = blob?;
            if !blob.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(blob.path())? {
                let f = f?;
                let name = f.file_name();
                let name = name.to_string_lossy();
                if name.parse::<u32>().is_ok() {
                    used += f.metadata()?.len();
                } else if name.ends_with(".tmp") && std::fs::remove_file(f.path()).is_ok() {
                    stats.tmp_collected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(scratch) = dir.parent().map(|d| d.join("tmp")) {
            for f in std::fs::read_dir(&scratch).into_iter().flatten().flatten() {
                if f.file_type().is_ok_and(|t| t.is_file())
                    && std::fs::remove_file(f.path()).is_ok()
                {
                    stats.tmp_collected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(Self {
            dir,
            used: AtomicU64::new(used),
            corrupt_found: AtomicU64::new(0),
            gate: Mutex::new(Gate::default()),
            stats,
            early_sync: start_early_sync()?,
        })
    }

    /// Sets the storage this node offers (`None`: it stores nothing for anyone).
    pub fn set_capacity(&self, capacity: Option<u64>) {
        lock(&self.gate).capacity = capacity;
    }

    /// The storage this node offers.
    pub fn capacity(&self) -> Option<u64> {
        lock(&self.gate).capacity
    }

    /// Sets the admission view: this node's id and the live storage offers.
    pub fn set_view(&self, me: PeerId, candidates: Vec<StorageCandidate<PeerId>>) {
        self.set_view_at(me, candidates, now_ms());
    }

    /// [`BlobStore::set_view`], taken at `now` (Unix ms).
    pub fn set_view_at(&self, me: PeerId, candidates: Vec<StorageCandidate<PeerId>>, now: u64) {
        let mut g = lock(&self.gate);
        g.me = Some(me);
        g.candidates = candidates;
        g.viewed_ms = now;
    }

    /// Whether the admission view is [`GATE_FRESH_MS`] old or older at `now` (or was never
    /// set).
    fn view_stale(&self, now: u64) -> bool {
        let g = lock(&self.gate);
        g.viewed_ms == 0 || now.saturating_sub(g.viewed_ms) >= GATE_FRESH_MS
    }

    /// Whether `extra` more bytes fit within the offered capacity.
    fn has_room(&self, extra: u64) -> Result<(), BlobError> {
        let capacity = self.capacity().ok_or(self.stats.refuse(Refusal::NoOffer))?;
        if self.used().saturating_add(extra) > capacity {
            return Err(self.stats.refuse(Refusal::NoRoom));
        }
        Ok(())
    }

    /// The manifest `root` was first written under here (its binding), if any.
    pub fn bound_manifest(&self, root: &[u8; 32]) -> Option<SignedRecord> {
        let bytes = std::fs::read(self.blob_dir(root).join("manifest")).ok()?;
        SignedRecord::decode(&bytes).ok()
    }

    /// The zone `root` is bound to here.
    pub fn owner(&self, root: &[u8; 32]) -> Option<ZoneId> {
        self.bound_manifest(root).map(|r| r.body.zone)
    }

    /// Checks a manifest that comes with a write: it decodes, its signature and fields are
    /// valid at `now`, it is a manifest of `root` and its claims equal `index`.
    fn check_manifest(
        &self,
        root: &[u8; 32],
        index: &Index,
        bytes: &[u8],
        now: u64,
    ) -> Result<(SignedRecord, BlobManifest), BlobError> {
        let record =
            SignedRecord::decode(bytes).map_err(|_| self.stats.refuse(Refusal::BadManifest))?;
        if record.validate(now, Freshness::Replicate).is_err() || record.is_expired(now) {
            return Err(self.stats.refuse(Refusal::BadManifest));
        }
        let Content::BlobManifest(m) = &record.body.content else {
            return Err(self.stats.refuse(Refusal::BadManifest));
        };
        if !manifest_matches_index(m, root, index.size, index.chunk_size, index.hashes.len()) {
            return Err(self.stats.refuse(Refusal::ManifestMismatch));
        }
        let m = m.clone();
        Ok((record, m))
    }

    /// A peer's `PutIndex`: admitted only under a valid manifest of this root that matches the
    /// index, when this node is one of the blob's intended holders (or their stand-ins, see
    /// [`plan::may_store`]) in its view of the live offers, and the blob fits within the
    /// capacity it offers. The first accepted write binds the blob to its manifest's zone;
    /// later writes under other zones are accepted for an already bound blob (identical
    /// content) but never rebind it, and the copy count stays the bound manifest's.
    pub fn admit_index(
        &self,
        root: &[u8; 32],
        index: &Index,
        manifest: &[u8],
        now: u64,
    ) -> Result<(), BlobError> {
        let (me, view, capacity) = {
            let g = lock(&self.gate);
            (g.me, g.candidates.clone(), g.capacity)
        };
        let (Some(me), Some(capacity)) = (me, capacity) else {
            return Err(self.stats.refuse(Refusal::NoOffer));
        };
        check_index(root, index).inspect_err(|_| {
            self.stats.bad_index.fetch_add(1, Ordering::Relaxed);
        })?;
        let (record, m) = self.check_manifest(root, index, manifest, now)?;
        let replicas = self
            .bound_manifest(root)
            .and_then(|r| match r.body.content {
                Content::BlobManifest(b) => Some(b.replicas),
                _ => None,
            })
            .unwrap_or(m.replicas);
        let mine = plan::held_bytes(
            self.present(root).len() as u32,
            index.chunk_size,
            index.size,
        );
        // This node judges its own room by what it really holds, not its last offer.
        let mut order = plan::placement(root, index.size, &view, |p: &PeerId| p.to_bytes());
        for c in &mut order {
            if c.peer == me {
                c.free = capacity.saturating_sub(self.used());
            }
        }
        if !plan::may_store(&order, &me, index.size, usize::from(replicas), mine) {
            return Err(self.stats.refuse(Refusal::NotIntended));
        }
        self.has_room(index.size.saturating_sub(mine))?;
        self.bind(root, index, &record)
    }

    /// Stores the index and, unless the blob is bound already, binds it to `manifest` (the
    /// repair path, which decided on its own that this node is intended).
    pub fn bind(
        &self,
        root: &[u8; 32],
        index: &Index,
        manifest: &SignedRecord,
    ) -> Result<(), BlobError> {
        self.put_index(root, index)?;
        let path = self.blob_dir(root).join("manifest");
        if self.bound_manifest(root).is_none() {
            write_file(&path, &manifest.encode(), true)?;
        }
        Ok(())
    }

    /// Bytes of chunks stored.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn blob_dir(&self, root: &[u8; 32]) -> PathBuf {
        self.dir.join(hex::encode(root))
    }

    /// The path of chunk `i` (tests corrupt it on purpose).
    pub fn chunk_path(&self, root: &[u8; 32], i: u32) -> PathBuf {
        self.blob_dir(root).join(i.to_string())
    }

    /// Stores the index after checking it against `root`.
    fn put_index(&self, root: &[u8; 32], index: &Index) -> Result<(), BlobError> {
        check_index(root, index)?;
        let dir = self.blob_dir(root);
        std::fs::create_dir_all(&dir)?;
        let mut bytes = Vec::with_capacity(12 + index.hashes.len());
        bytes.extend_from_slice(&index.size.to_le_bytes());
        bytes.extend_from_slice(&index.chunk_size.to_le_bytes());
        bytes.extend_from_slice(&index.hashes);
        write_file(&dir.join("index"), &bytes, true)?;
        Ok(())
    }

    /// The stored index of `root`, checked against the root.
    pub fn index(&self, root: &[u8; 32]) -> Result<Index, BlobError> {
        let bytes = match std::fs::read(self.blob_dir(root).join("index")) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::NotHeld),
            Err(e) => return Err(e.into()),
        };
        if bytes.len() < 12 {
            return Err(BlobError::BadIndex);
        }
        let mut size = [0u8; 8];
        size.copy_from_slice(&bytes[..8]);
        let mut cs = [0u8; 4];
        cs.copy_from_slice(&bytes[8..12]);
        let index = Index {
            size: u64::from_le_bytes(size),
            chunk_size: u32::from_le_bytes(cs),
            hashes: bytes[12..].to_vec(),
        };
        if root_of(&index.hashes) != *root {
            return Err(BlobError::BadIndex);
        }
        Ok(index)
    }

    /// Stores chunk `i` after checking it against the stored index. Not yet durable: call
    /// [`BlobStore::seal`] once the blob's chunks are in.
    /// Refused unless the blob was admitted here (index and binding stored) and the chunk fits
    /// within the offered capacity.
    pub fn put_chunk(&self, root: &[u8; 32], i: u32, data: &[u8]) -> Result<(), BlobError> {
        let index = match self.index(root) {
            Ok(ix) if self.blob_dir(root).join("manifest").exists() => ix,
            Ok(_) | Err(BlobError::NotHeld) => return Err(self.stats.refuse(Refusal::NotAccepted)),
            Err(e) => return Err(e),
        };
        if index_entry(&index.hashes, i) != Some(chunk_hash(data)) {
            self.stats.corrupt_put.fetch_add(1, Ordering::Relaxed);
            return Err(BlobError::Corrupt { i });
        }
        let path = self.chunk_path(root, i);
        let old = std::fs::metadata(&path).map(|m| m.len()).ok();
        if old.is_some() {
            // Already here (a retried request): nothing to write.
            return Ok(());
        }
        self.has_room(data.len() as u64)?;
        // A new chunk (a repair after corruption) is not durable yet: the next seal syncs.
        match std::fs::remove_file(self.blob_dir(root).join("sealed")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        write_file(&path, data, false)?;
        // Durable only at the seal; start the writeback now (see EARLY_SYNC_QUEUE).
        let _ = self.early_sync.try_send(path);
        self.used.fetch_add(data.len() as u64, Ordering::Relaxed);
        if let Some(old) = old {
            self.used.fetch_sub(old, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Reads chunk `i`, verifying it; a corrupt chunk is deleted and reported, never returned.
    pub fn get_chunk(&self, root: &[u8; 32], i: u32) -> Result<Vec<u8>, BlobError> {
        let mut data = Vec::new();
        self.read_chunk_into(root, i, &mut data)?;
        Ok(data)
    }

    /// The encoded answer to a `GetChunk` for chunk `i` (`BlobResponse::Chunk`), the chunk
    /// read from disk straight into it (see [`plan::chunk_header`]), verified like
    /// [`BlobStore::get_chunk`].
    pub fn chunk_message(&self, root: &[u8; 32], i: u32) -> Result<Vec<u8>, BlobError> {
        let mut message = vec![0; plan::CHUNK_HEADER_BYTES];
        self.read_chunk_into(root, i, &mut message)?;
        let len = message.len() - plan::CHUNK_HEADER_BYTES;
        message[..plan::CHUNK_HEADER_BYTES].copy_from_slice(&plan::chunk_header(len));
        Ok(message)
    }

    /// Appends chunk `i` to `out` after checking it against the index; a corrupt chunk is
    /// deleted and reported (and `out` left as it was).
    fn read_chunk_into(&self, root: &[u8; 32], i: u32, out: &mut Vec<u8>) -> Result<(), BlobError> {
        let index = self.index(root)?;
        let path = self.chunk_path(root, i);
        let start = out.len();
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(out)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::NotHeld),
            Err(e) => return Err(e.into()),
        }
        if index_entry(&index.hashes, i) != Some(chunk_hash(&out[start..])) {
            self.drop_chunk(&path, (out.len() - start) as u64);
            out.truncate(start);
            return Err(BlobError::Corrupt { i });
        }
        Ok(())
    }

    fn drop_chunk(&self, path: &Path, len: u64) {
        tracing::warn!(path = %path.display(), "corrupt chunk deleted; repair will fetch it again");
        self.corrupt_found.fetch_add(1, Ordering::Relaxed);
        if std::fs::remove_file(path).is_ok() {
            self.used.fetch_sub(len.min(self.used()), Ordering::Relaxed);
        }
    }

    /// Makes every chunk of `root` durable; fails unless the blob was admitted here and all
    /// chunks are present. Once sealed, a marker answers later seals without syncing again,
    /// so nobody can make this node fsync a blob over and over.
    pub fn seal(&self, root: &[u8; 32]) -> Result<(), BlobError> {
        let dir = self.blob_dir(root);
        if !dir.join("manifest").exists() {
            return Err(self.stats.refuse(Refusal::NotAccepted));
        }
        let index = self.index(root)?;
        let present = self.present(root);
        if present.len() != index.chunks() as usize {
            return Err(BlobError::NotHeld);
        }
        if dir.join("sealed").exists() {
            self.stats.seals_repeated.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        for i in present {
            std::fs::File::open(self.chunk_path(root, i))?.sync_all()?;
        }
        std::fs::File::open(&dir)?.sync_all()?;
        write_file(&dir.join("sealed"), b"", true)?;
        Ok(())
    }

    /// Deletes the copy of `root` (every chunk, index, binding), adjusting the bytes used.
    pub fn remove(&self, root: &[u8; 32]) -> Result<(), BlobError> {
        let dir = self.blob_dir(root);
        let mut freed = 0;
        for i in self.present(root) {
            freed += std::fs::metadata(self.chunk_path(root, i)).map_or(0, |m| m.len());
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        self.used
            .fetch_sub(freed.min(self.used()), Ordering::Relaxed);
        lock(&self.gate).surplus_since.remove(root);
        Ok(())
    }

    /// Collects orphans at `now`: a blob directory that is not `wanted` (`wanted(root, binding)`
    /// says whether a live manifest from the binding's zone is held) and was last bound or
    /// written more than `grace_ms` ago, and stray temporary files as old. Returns how many
    /// blob directories were removed.
    pub fn collect_orphans(
        &self,
        now: u64,
        grace_ms: u64,
        wanted: impl Fn(&[u8; 32], Option<&SignedRecord>) -> bool,
    ) -> usize {
        let mut removed = 0;
        for root in self.roots() {
            let dir = self.blob_dir(&root);
            let tmp_files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "tmp"))
                .collect();
            for t in tmp_files {
                if now.saturating_sub(mtime_ms(&t)) > grace_ms && std::fs::remove_file(&t).is_ok() {
                    self.stats.tmp_collected.fetch_add(1, Ordering::Relaxed);
                }
            }
            let binding = self.bound_manifest(&root);
            if wanted(&root, binding.as_ref()) {
                continue;
            }
            let age_from = if binding.is_some() {
                mtime_ms(&dir.join("manifest"))
            } else {
                mtime_ms(&dir)
            };
            if now.saturating_sub(age_from) <= grace_ms {
                continue;
            }
            tracing::info!(root = %hex::encode(root), bound = binding.is_some(), "collecting an orphan blob copy");
            if self.remove(&root).is_ok() {
                self.stats.orphans_collected.fetch_add(1, Ordering::Relaxed);
                removed += 1;
            }
        }
        removed
    }

    /// Notes that `root` is surplus here at `now` (or no longer, with `surplus == false`);
    /// returns since when it has been surplus.
    fn note_surplus(&self, root: &[u8; 32], surplus: bool, now: u64) -> Option<u64> {
        let mut g = lock(&self.gate);
        if surplus {
            Some(*g.surplus_since.entry(*root).or_insert(now))
        } else {
            g.surplus_since.remove(root);
            None
        }
    }

    /// Chunk numbers present on disk (not re-verified; the scrub does that).
    pub fn present(&self, root: &[u8; 32]) -> BTreeSet<u32> {
        std::fs::read_dir(self.blob_dir(root))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Roots with a directory here.
    pub fn roots(&self) -> Vec<[u8; 32]> {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| hex::decode(e.file_name().to_string_lossy().as_bytes()).ok())
                    .filter_map(|b| <[u8; 32]>::try_from(b).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Verifies every stored chunk; deletes corrupt ones. Returns how many were corrupt.
    pub fn scrub(&self) -> usize {
        let mut bad = 0;
        for root in self.roots() {
            for i in self.present(&root) {
                if let Err(BlobError::Corrupt { .. }) = self.get_chunk(&root, i) {
                    bad += 1;
                }
            }
        }
        bad
    }
}

/// Answers a blob request from a peer. Writes go through [`BlobStore::admit_index`] (index),
/// [`BlobStore::put_chunk`] and [`BlobStore::seal`], each refusing what this node did not
/// agree to hold.
pub fn handle_request(store: &BlobStore, req: BlobRequest) -> BlobResponse {
    handle_request_at(store, req, now_ms())
}

/// [`answer_message`] on this node's store, now, with its live storage offers as the fresh
/// admission view.
pub fn answer<N: BlobHost>(
    node: &N,
    message: &[u8],
) -> Result<Vec<u8>, dpin_protocol::DecodeError> {
    let now = now_ms();
    answer_message(node.blobs(), message, now, || {
        (node.local_peer_id(), offers::storage_candidates(node, now))
    })
}

/// Answers one encoded blob request from a peer (the wire path) at `now`: a `PutChunk` is
/// stored from where it lies in `message` ([`plan::put_chunk_ref`]), a `GetChunk` is answered
/// with the chunk read straight into the answer ([`BlobStore::chunk_message`]), and every
/// other request is decoded and answered by [`handle_request_at`]. The same answers as
/// decoding first, without copying a chunk out of its message or into its answer. An error
/// is a message that does not decode (the caller counts it against the peer).
///
/// A `PutIndex` is judged on a view of the offers at most [`GATE_FRESH_MS`] old: an older
/// view is first replaced by `fresh_view()` (this node's id and the live storage offers).
/// Maintenance refreshes the view every second; a put that came within that second of the
/// offers changing (a cluster just formed, a node just joined) was refused as "not an
/// intended holder" on the old view, and the uploader's retry pauses (250 then 500 ms) made
/// a 64 MiB put take 0.75 s longer (`deploy/blob-bench.sh`). Refreshing only when stale bounds
/// the work a flood of `PutIndex` can cause to one view per [`GATE_FRESH_MS`].
pub fn answer_message(
    store: &BlobStore,
    message: &[u8],
    now: u64,
    fresh_view: impl FnOnce() -> (PeerId, Vec<StorageCandidate<PeerId>>),
) -> Result<Vec<u8>, dpin_protocol::DecodeError> {
    let err = |e: BlobError| {
        BlobResponse::Error {
            message: e.to_string(),
        }
        .encode()
    };
    if let Some(chunk) = plan::put_chunk_ref(message) {
        return Ok(match store.put_chunk(&chunk.root, chunk.i, chunk.data) {
            Ok(()) => BlobResponse::Stored.encode(),
            Err(e) => err(e),
        });
    }
    Ok(match BlobRequest::decode(message)? {
        BlobRequest::GetChunk { root, i } => store.chunk_message(&root, i).unwrap_or_else(err),
        req @ BlobRequest::PutIndex { .. } => {
            if store.view_stale(now) {
                let (me, candidates) = fresh_view();
                store.set_view_at(me, candidates, now);
            }
            handle_request_at(store, req, now).encode()
        }
        req => handle_request_at(store, req, now).encode(),
    })
}

/// [`handle_request`] at `now` (Unix ms).
pub fn handle_request_at(store: &BlobStore, req: BlobRequest, now: u64) -> BlobResponse {
    let err = |e: BlobError| BlobResponse::Error {
        message: e.to_string(),
    };
    match req {
        BlobRequest::PutIndex {
            root,
            size,
            chunk_size,
            index,
            manifest,
        } => match store.admit_index(
            &root,
            &Index {
                size,
                chunk_size,
                hashes: index,
            },
            &manifest,
            now,
        ) {
            Ok(()) => BlobResponse::Stored,
            Err(e) => err(e),
        },
        BlobRequest::PutChunk { root, i, data } => match store.put_chunk(&root, i, &data) {
            Ok(()) => BlobResponse::Stored,
            Err(e) => err(e),
        },
        BlobRequest::GetIndex { root } => match store.index(&root) {
            Ok(ix) => BlobResponse::Index {
                size: ix.size,
                chunk_size: ix.chunk_size,
                index: ix.hashes,
            },
            Err(e) => err(e),
        },
        BlobRequest::GetChunk { root, i } => match store.get_chunk(&root, i) {
            Ok(data) => BlobResponse::Chunk { data },
            Err(e) => err(e),
        },
        BlobRequest::Seal { root } => match store.seal(&root) {
            Ok(()) => BlobResponse::Stored,
            Err(e) => err(e),
        },
        BlobRequest::Has { root } => {
            let total = store.index(&root).map(|ix| ix.chunks()).unwrap_or(0);
            BlobResponse::Holding {
                chunks: if total == 0 {
                    0
                } else {
                    store.present(&root).len() as u32
                },
                total,
                owner: store.owner(&root).map(|z| z.0),
            }
        }
    }
}

/// Sends an encoded request (after the host's framing) to `peer` and returns the raw answer;
/// to this node itself, answers it here, the same way a peer would.
async fn ask_framed<N: BlobHost>(
    node: &N,
    peer: PeerId,
    framed: Vec<u8>,
) -> Result<Vec<u8>, String> {
    if peer == node.local_peer_id() {
        let node = node.clone();
        return tokio::task::spawn_blocking(move || {
            let message = framed.get(N::REQUEST_FRAMING.len()..).unwrap_or_default();
            answer(&node, message).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?;
    }
    node.request_blob(peer, framed).await
}

/// [`ask_framed`], asked again while `peer` refuses it for budget: after the refill time
/// ([`dpin_protocol::ingest::over_budget_pause_ms`], a few ms doubling, about a quarter of a
/// second in all for a small question, 0.6 s for a chunk). A peer that still refuses has not
/// answered (`Err`).
///
/// Why: a refusal for budget says nothing about the blob. A census right after a put asks
/// the holders the uploader has just spent its budget at; counting their refusal as "holds
/// nothing" reported a complete copy missing (and a repair census would have added a copy
/// the blob did not need), and a read taking it as the holder's answer gave up on the chunk
/// as if no holder had it.
async fn ask_admitted<N: BlobHost>(
    node: &N,
    peer: PeerId,
    framed: Vec<u8>,
) -> Result<Vec<u8>, String> {
    use dpin_protocol::ingest::{over_budget_pause_ms, BudgetConfig, Cost};
    let cost = Cost::Blob {
        bytes: framed.len().saturating_sub(N::REQUEST_FRAMING.len()),
    };
    let mut attempt = 0;
    loop {
        let answer = ask_framed(node, peer, framed.clone()).await?;
        if !refused_for_budget(&answer) {
            return Ok(answer);
        }
        let Some(ms) = over_budget_pause_ms(&BudgetConfig::default(), cost, attempt) else {
            return Err(format!("refused for budget {} times", attempt + 1));
        };
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Whether a raw answer is a refusal for the asker's budget (a small `Error`; a chunk is
/// recognised without decoding it).
fn refused_for_budget(answer: &[u8]) -> bool {
    const MAX_REFUSAL_BYTES: usize = 256;
    answer.len() <= MAX_REFUSAL_BYTES
        && matches!(BlobResponse::decode(answer), Ok(ref r) if is_budget_refusal(r))
}

/// Whether `r` is a peer's refusal for the asker's budget.
fn is_budget_refusal(r: &BlobResponse) -> bool {
    matches!(r, BlobResponse::Error { message }
        if *message == dpin_protocol::ingest::Refusal::OverBudget.message())
}

/// `req` to `peer` ([`ask_admitted`]), its answer decoded.
async fn ask<N: BlobHost>(
    node: &N,
    peer: PeerId,
    req: BlobRequest,
) -> Result<BlobResponse, String> {
    let answer = ask_admitted(node, peer, framed::<N>(&req)).await?;
    BlobResponse::decode(&answer).map_err(|e| e.to_string())
}

/// Chunk `i` of `root` from `peer`: `Ok(Ok(data))` if it answered with a chunk (not yet
/// verified), `Ok(Err(answer))` for any other answer. The chunk is the answer's own buffer
/// past its header ([`plan::chunk_ref`]): neither decoded into a copy nor moved down over
/// the header.
async fn ask_chunk<N: BlobHost>(
    node: &N,
    peer: PeerId,
    root: [u8; 32],
    i: u32,
) -> Result<Result<Bytes, BlobResponse>, String> {
    let answer = ask_admitted(node, peer, framed::<N>(&BlobRequest::GetChunk { root, i })).await?;
    if plan::chunk_ref(&answer).is_some() {
        return Ok(Ok(Bytes::from(answer).slice(plan::CHUNK_HEADER_BYTES..)));
    }
    BlobResponse::decode(&answer)
        .map(Err)
        .map_err(|e| e.to_string())
}

/// Live storage nodes whose capacity could ever hold a blob of `size` bytes (from its
/// verified index), in rendezvous order for `root`, each with its offer's free bytes.
/// See [`plan::placement`].
pub fn placement<N: BlobHost>(node: &N, root: &[u8; 32], size: u64) -> Vec<(PeerId, u64)> {
    order(node, root, size, now_ms())
        .into_iter()
        .map(|c| (c.peer, c.free))
        .collect()
}

/// [`plan::placement`] over the storage offers that count at `at` (Unix ms).
fn order<N: BlobHost>(
    node: &N,
    root: &[u8; 32],
    size: u64,
    at: u64,
) -> Vec<StorageCandidate<PeerId>> {
    plan::placement(
        root,
        size,
        &offers::storage_candidates(node, at),
        |p: &PeerId| p.to_bytes(),
    )
}

/// `peers` in rendezvous order for `root` (by the bytes of their peer ids), best first.
pub fn rank(root: &[u8; 32], peers: &[PeerId]) -> Vec<PeerId> {
    let cands: Vec<StorageCandidate<PeerId>> = peers
        .iter()
        .map(|p| StorageCandidate {
            peer: *p,
            capacity: 0,
            free: 0,
        })
        .collect();
    plan::placement(root, 0, &cands, |p: &PeerId| p.to_bytes())
        .into_iter()
        .map(|c| c.peer)
        .collect()
}

/// [`rank`] for peers known by their text ids (the CLI's and the tests' view); ids that do
/// not parse are left out.
pub fn rank_ids(root: &[u8; 32], peer_ids: &[&str]) -> Vec<String> {
    let peers: Vec<PeerId> = peer_ids.iter().filter_map(|s| s.parse().ok()).collect();
    rank(root, &peers).iter().map(ToString::to_string).collect()
}

/// Every live manifest record of `root` held, by zone.
fn manifest_records<N: BlobHost>(
    node: &N,
    root: &[u8; 32],
    now: u64,
) -> BTreeMap<ZoneId, SignedRecord> {
    let prefix = format!("{}.", blob_label(root));
    // The store's reserved-name index: reads this root's manifests only (on every GET).
    node.reserved_records(&prefix, Some(now))
        .into_iter()
        .filter(|r| matches!(&r.body.content, Content::BlobManifest(m) if m.root == *root))
        .map(|r| (r.body.zone, r))
        .collect()
}

fn manifest_of(r: &SignedRecord) -> Option<BlobManifest> {
    match &r.body.content {
        Content::BlobManifest(m) => Some(m.clone()),
        _ => None,
    }
}

/// The manifest that speaks for `root` as far as this node can tell without asking: the live
/// manifest from the zone this node's copy is bound to; else the only zone's; else, of several
/// zones, one whose claims match an index held here, else the first by zone (which only
/// names the blob: reads take size and chunks from the verified index, and repair asks the
/// holders which zone they were written under, see [`plan::owner_by_vouches`]).
pub fn manifest<N: BlobHost>(node: &N, root: &[u8; 32]) -> Option<BlobManifest> {
    let all = manifest_records(node, root, now_ms());
    let store = node.blobs();
    if let Some(m) = store
        .owner(root)
        .and_then(|z| all.get(&z))
        .and_then(manifest_of)
    {
        return Some(m);
    }
    if let Ok(ix) = store.index(root) {
        if let Some(m) = all
            .values()
            .filter_map(manifest_of)
            .find(|m| manifest_matches_index(m, root, ix.size, ix.chunk_size, ix.hashes.len()))
        {
            return Some(m);
        }
    }
    all.values().next().and_then(manifest_of)
}

/// The manifest to describe `root` with once its index has been fetched and verified against
/// the root: the bound owner's if it fits the index, else the first (by zone) that fits it.
/// A non-holder has no binding and no local index, so [`manifest`] can only guess, and any
/// zone can publish a manifest for any root; the verified index is what decides, so a foreign
/// manifest claiming another size or chunk count never describes someone else's blob.
/// `None` if no live manifest fits.
pub fn manifest_for_index<N: BlobHost>(
    node: &N,
    root: &[u8; 32],
    ix: &Index,
) -> Option<BlobManifest> {
    let all = manifest_records(node, root, now_ms());
    let fits =
        |m: &BlobManifest| manifest_matches_index(m, root, ix.size, ix.chunk_size, ix.hashes.len());
    let owned = node
        .blobs()
        .owner(root)
        .and_then(|z| all.get(&z))
        .and_then(manifest_of)
        .filter(|m| fits(m));
    owned.or_else(|| all.values().filter_map(manifest_of).find(|m| fits(m)))
}

/// Every root with a live manifest held, with its manifest records by zone (for repair).
fn manifests_by_root<N: BlobHost>(
    node: &N,
    now: u64,
) -> BTreeMap<[u8; 32], BTreeMap<ZoneId, SignedRecord>> {
    let mut out: BTreeMap<[u8; 32], BTreeMap<ZoneId, SignedRecord>> = BTreeMap::new();
    let records = node.reserved_records("_blob-", Some(now));
    for r in records {
        if let Content::BlobManifest(m) = &r.body.content {
            out.entry(m.root).or_default().insert(r.body.zone, r);
        }
    }
    out
}

/// Every live manifest held (one per root, see [`manifest`]).
pub fn manifests<N: BlobHost>(node: &N) -> Vec<BlobManifest> {
    manifests_by_root(node, now_ms())
        .keys()
        .filter_map(|root| manifest(node, root))
        .collect()
}

/// Result of a put: the `POST /v1/blobs` answer of the API contract.
pub use crate::contract::BlobPutAnswer as PutResult;

/// Where chunk `i` lies in the blob: its offset and length in bytes.
fn chunk_span(index: &Index, i: u32) -> (u64, u64) {
    let offset = u64::from(i) * u64::from(index.chunk_size);
    let len = index
        .size
        .saturating_sub(offset)
        .min(u64::from(index.chunk_size));
    (offset, len)
}

/// The `len` bytes at `offset` of the file at `path`, appended to `out`.
fn read_file_span(path: &Path, offset: u64, len: u64, out: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    out.reserve_exact(len as usize);
    // Into the spare capacity: no zeroing, no copy.
    if f.take(len).read_to_end(out)? as u64 != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Chunk hashes of a file, computed in one streaming pass.
pub fn index_file(path: &Path, chunk_size: u32) -> std::io::Result<Index> {
    let mut f = std::fs::File::open(path)?;
    let mut hashes = Vec::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; chunk_size as usize];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = f.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        hashes.extend_from_slice(&chunk_hash(&buf[..filled]));
        size += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    Ok(Index {
        size,
        chunk_size,
        hashes,
    })
}

/// Sends one request that a holder answers with `Stored`. Every failure counts as worth a
/// retry: a timeout or a closed connection says nothing about whether the holder acted, and
/// even an error answer can come from a request garbled in transit (a cut stream decodes as
/// a truncated request). The requests are idempotent, and [`PUT_STALL`] bounds the retries.
async fn ask_stored<N: BlobHost>(
    node: &N,
    peer: PeerId,
    req: BlobRequest,
) -> Result<(), NotStored> {
    ask_stored_framed(node, peer, framed::<N>(&req)).await
}

/// [`ask_stored`] for a request already encoded after the host's framing.
async fn ask_stored_framed<N: BlobHost>(
    node: &N,
    peer: PeerId,
    framed: Vec<u8>,
) -> Result<(), NotStored> {
    let bytes = framed.len();
    match ask_framed(node, peer, framed).await {
        Ok(answer) => stored(&answer, bytes),
        Err(why) => Err(NotStored::other(why)),
    }
}

/// Why a holder request did not store. A refusal for the holder's budget is told apart: the
/// holder answered at once and will take the request once it earned its cost back, so it is
/// sent again after that time ([`Progress::failed_over_budget`]), not after the pause meant
/// for a holder or link that does not answer.
#[derive(Debug)]
struct NotStored {
    why: String,
    /// Bytes of the refused request, if the holder refused it for its budget.
    over_budget: Option<usize>,
}

impl NotStored {
    fn other(why: String) -> Self {
        Self {
            why,
            over_budget: None,
        }
    }
}

impl std::fmt::Display for NotStored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// Whether a raw answer to a request of `bytes` bytes says `Stored`.
fn stored(answer: &[u8], bytes: usize) -> Result<(), NotStored> {
    match BlobResponse::decode(answer) {
        Ok(BlobResponse::Stored) => Ok(()),
        Ok(r) if is_budget_refusal(&r) => Err(NotStored {
            why: dpin_protocol::ingest::Refusal::OverBudget.message(),
            over_budget: Some(bytes),
        }),
        Ok(other) => Err(NotStored::other(format!("{other:?}"))),
        Err(e) => Err(NotStored::other(e.to_string())),
    }
}

/// The chunks a put keeps in flight to one holder: one more after each success up to the
/// bound, half after a failure — but at most once per burst. Requests sent before the last
/// back-off (the same `epoch`) that fail too are resent without another halving or pause.
///
/// Why: a holder refuses a whole window at once (its per-peer budget, `over_budget`, while
/// the uploader is new to it; a stall that times out every request in flight). Counting each
/// refusal of that one burst as a new failure halved the window to 1 and paused 250, 500,
/// 750 … ms in turn: a 64 MiB put right after the cluster formed took 3–6 s at 20–35 % CPU
/// instead of about 1 s (`deploy/blob-bench.sh`). TCP reduces its window once per window
/// of losses for the same reason.
#[derive(Debug)]
struct Window {
    size: usize,
    max: usize,
    epoch: u32,
}

impl Window {
    fn new(max: usize) -> Self {
        Self {
            size: max.max(1),
            max: max.max(1),
            epoch: 0,
        }
    }

    fn size(&self) -> usize {
        self.size
    }

    /// The back-off epoch a request sent now belongs to.
    fn epoch(&self) -> u32 {
        self.epoch
    }

    fn succeeded(&mut self) {
        self.size = (self.size + 1).min(self.max);
    }

    /// A request sent in `sent_epoch` failed: whether to back off (halve and pause). Only
    /// the first failure of requests sent since the last back-off does.
    fn failed(&mut self, sent_epoch: u32) -> bool {
        if sent_epoch < self.epoch {
            return false;
        }
        self.size = (self.size / 2).max(1);
        self.epoch = self.epoch.wrapping_add(1);
        true
    }
}

/// Progress of a transfer (a put on one holder, or a read): when a request last succeeded,
/// failures since, and how long it may go without a success.
struct Progress {
    since: tokio::time::Instant,
    failures: u32,
    stall: Duration,
}

impl Progress {
    fn new() -> Self {
        Self::with_stall(PUT_STALL)
    }

    fn with_stall(stall: Duration) -> Self {
        Self {
            since: tokio::time::Instant::now(),
            failures: 0,
            stall,
        }
    }

    fn succeeded(&mut self) {
        self.since = tokio::time::Instant::now();
        self.failures = 0;
    }

    /// After a failure: how long to pause before trying again, or `None` once the transfer
    /// has made no progress for its stall bound ([`PUT_STALL`], [`GET_STALL`]).
    fn failed(&mut self) -> Option<Duration> {
        if self.since.elapsed() >= self.stall {
            return None;
        }
        self.failures = self.failures.saturating_add(1);
        Some((PUT_RETRY_PAUSE * self.failures).min(PUT_RETRY_PAUSE_MAX))
    }

    /// After a holder refused a request of `bytes` bytes for its budget: the time a peer
    /// still on probation there takes to earn the request's cost, doubled with each refusal
    /// in a row up to [`dpin_protocol::ingest::OVER_BUDGET_RETRIES`] doublings (the rule sync
    /// requests follow, [`dpin_protocol::ingest::over_budget_pause_ms`]); `None` once stalled.
    ///
    /// Why: a holder new to the uploader (a cluster just formed) earns it tokens at the
    /// probation rate, a 1 MiB chunk's worth every 20 ms. Waiting the 250 ms meant for a
    /// holder that does not answer left the put idle most of that time.
    fn failed_over_budget(&mut self, bytes: usize) -> Option<Duration> {
        use dpin_protocol::ingest::{
            over_budget_pause_ms, BudgetConfig, Cost, OVER_BUDGET_RETRIES,
        };
        self.failed()?;
        let attempt = (self.failures - 1).min(OVER_BUDGET_RETRIES - 1);
        let ms = over_budget_pause_ms(&BudgetConfig::default(), Cost::Blob { bytes }, attempt)
            .unwrap_or(PUT_RETRY_PAUSE.as_millis() as u64);
        Some(Duration::from_millis(ms))
    }

    /// After `e`: the pause its kind calls for, or `None` once stalled.
    fn failed_with(&mut self, e: &NotStored) -> Option<Duration> {
        match e.over_budget {
            Some(bytes) => self.failed_over_budget(bytes),
            None => self.failed(),
        }
    }
}

/// [`ask_stored`], tried again until it succeeds or the holder stalls.
async fn ask_stored_retrying<N: BlobHost>(
    node: &N,
    peer: PeerId,
    progress: &mut Progress,
    req: impl Fn() -> BlobRequest,
) -> Result<(), String> {
    loop {
        match ask_stored(node, peer, req()).await {
            Ok(()) => {
                progress.succeeded();
                return Ok(());
            }
            Err(e) => {
                let Some(pause) = progress.failed_with(&e) else {
                    return Err(format!("no progress for {PUT_STALL:?}; last error: {e}"));
                };
                tracing::debug!(%peer, %e, ?pause, "blob request failed; retrying");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// The `PutChunk` request for chunk `i` of the upload, framed for the host, with the chunk
/// read from the file straight into it.
async fn read_put_chunk<N: BlobHost>(
    path: &Path,
    index: &Index,
    root: [u8; 32],
    i: u32,
) -> Result<Vec<u8>, String> {
    let path = path.to_owned();
    let (offset, len) = chunk_span(index, i);
    tokio::task::spawn_blocking(move || {
        let mut message = Vec::with_capacity(
            N::REQUEST_FRAMING.len() + plan::PUT_CHUNK_HEADER_BYTES + len as usize,
        );
        message.extend_from_slice(N::REQUEST_FRAMING);
        message.extend_from_slice(&plan::put_chunk_header(&root, i, len as usize));
        read_file_span(&path, offset, len, &mut message).map(|()| message)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cannot read the upload: {e}"))
}

/// Reads chunk `i` of the upload and stores it on `peer` (one attempt).
async fn send_chunk<N: BlobHost>(
    node: &N,
    peer: PeerId,
    path: &Path,
    root: [u8; 32],
    index: &Index,
    i: u32,
) -> (u32, Result<(), NotStored>) {
    let sent = match read_put_chunk::<N>(path, index, root, i).await {
        Ok(message) => ask_stored_framed(node, peer, message).await,
        Err(e) => Err(NotStored::other(e)),
    };
    (i, sent)
}

/// Stores the whole blob on `peer` and seals it there: the index, then every chunk, then the
/// seal. Chunks go with up to [`PUT_PARALLEL_CHUNKS`] in flight; a chunk that fails is queued
/// again and halves the window, a success widens it by one, and the holder is given up once
/// it made no progress for [`PUT_STALL`]. Chunks in flight share one connection, so on a slow
/// or loaded link they all finish late together: fewer in flight is what lets each finish
/// within the request timeout.
async fn store_on<N: BlobHost>(
    node: &N,
    peer: PeerId,
    path: &Path,
    root: [u8; 32],
    index: &Index,
    manifest: &[u8],
) -> Result<(), String> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut progress = Progress::new();
    ask_stored_retrying(node, peer, &mut progress, || BlobRequest::PutIndex {
        root,
        size: index.size,
        chunk_size: index.chunk_size,
        index: index.hashes.clone(),
        manifest: manifest.to_vec(),
    })
    .await?;
    let mut queue: std::collections::VecDeque<u32> = (0..index.chunks()).collect();
    let mut window = Window::new(PUT_PARALLEL_CHUNKS);
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < window.size() {
            let Some(i) = queue.pop_front() else { break };
            let epoch = window.epoch();
            let send = send_chunk(node, peer, path, root, index, i);
            in_flight.push(async move { (epoch, send.await) });
        }
        let Some((epoch, (i, sent))) = in_flight.next().await else {
            break;
        };
        match sent {
            Ok(()) => {
                progress.succeeded();
                window.succeeded();
            }
            Err(e) => {
                queue.push_back(i);
                if !window.failed(epoch) {
                    // Sent before the last back-off: that pause already answered it.
                    continue;
                }
                let Some(pause) = progress.failed_with(&e) else {
                    return Err(format!("no progress for {PUT_STALL:?}; chunk {i}: {e}"));
                };
                tracing::debug!(%peer, i, %e, window = window.size(), "chunk not stored; will resend");
                tokio::time::sleep(pause).await;
            }
        }
    }
    ask_stored_retrying(node, peer, &mut progress, || BlobRequest::Seal { root })
        .await
        .map_err(|e| format!("seal: {e}"))
}

/// Distributes the file at `path` to `replicas` holders and publishes its manifest.
pub async fn put<N: BlobHost>(
    node: &N,
    key: &ZoneKey,
    path: &Path,
    replicas: usize,
) -> Result<PutResult, BlobError> {
    let p = path.to_owned();
    let index = tokio::task::spawn_blocking(move || index_file(&p, DEFAULT_CHUNK_BYTES))
        .await
        .map_err(|e| BlobError::Manifest(e.to_string()))??;
    let root = root_of(&index.hashes);
    // The manifest is signed first and travels with the index: a holder stores a blob only
    // under a valid manifest that matches it. It is published only once `replicas` holders
    // sealed their copies.
    let m = BlobManifest {
        root,
        size: index.size,
        chunk_size: index.chunk_size,
        chunks: index.chunks(),
        replicas: u8::try_from(replicas).unwrap_or(u8::MAX),
    };
    let now = now_ms();
    let mut body = RecordBody {
        zone: key.zone(),
        label: blob_label(&root),
        seq: 1,
        expires_at_ms: now.saturating_add(MANIFEST_TTL_MS),
        content: Content::BlobManifest(m),
    };
    // Above the held floor even if the clock stepped back since the last put of this blob:
    // a re-put (to extend its life) is never refused as stale.
    body.seq = offers::own_seq(now, offers::held_floor(node, &body.name()));
    let record = body
        .sign(key)
        .map_err(|e| BlobError::Manifest(e.to_string()))?;
    let manifest = record.encode();
    // Every node with room, in order: the first `replicas` are the intended holders (the
    // same rule repair applies), the next ones stand in for an intended holder that fails;
    // holders admit writes only that far down the order (`plan::may_store`).
    let placed = order(node, &root, index.size, now);
    let order = plan::intended_holders(&placed, index.size, plan::put_standins(replicas), |_| 0);
    if order.len() < replicas {
        return Err(BlobError::InsufficientStorage {
            wanted: replicas,
            available: order.len(),
        });
    }
    // Try holders in order until `replicas` of them acknowledged every chunk.
    let mut holders = Vec::new();
    let mut next = 0;
    while holders.len() < replicas && next < order.len() {
        let want = replicas - holders.len();
        let batch: Vec<PeerId> = order[next..].iter().take(want).copied().collect();
        next += batch.len();
        let results = futures::future::join_all(
            batch
                .iter()
                .map(|&p| store_on(node, p, path, root, &index, &manifest)),
        )
        .await;
        for (p, r) in batch.into_iter().zip(results) {
            match r {
                Ok(()) => holders.push(p),
                Err(e) => {
                    tracing::warn!(peer = %p, %e, "holder failed to store a blob; trying the next")
                }
            }
        }
    }
    if holders.len() < replicas {
        return Err(BlobError::InsufficientStorage {
            wanted: replicas,
            available: holders.len(),
        });
    }
    publish_manifest(node, record).await?;
    Ok(PutResult {
        hash: hex::encode(root),
        size: index.size,
        chunks: index.chunks(),
        holders: holders.iter().map(ToString::to_string).collect(),
    })
}

async fn publish_manifest<N: BlobHost>(node: &N, record: SignedRecord) -> Result<(), BlobError> {
    let outcome = node
        .publish_own(record)
        .await
        .map_err(BlobError::Manifest)?;
    if outcome.is_winner() {
        Ok(())
    } else {
        Err(BlobError::Manifest(format!(
            "manifest not applied: {}",
            outcome.kind()
        )))
    }
}

/// The index of `root`, from this node or any live storage node, verified against the root.
/// `_claimed_size` is a manifest's claim and is not trusted: every live storage node is
/// asked in rendezvous order, so a foreign manifest claiming a huge size cannot hide the
/// holders.
pub async fn fetch_index<N: BlobHost>(
    node: &N,
    root: &[u8; 32],
    _claimed_size: u64,
) -> Result<Index, BlobError> {
    let store = node.blobs().clone();
    let r = *root;
    if let Ok(Ok(ix)) = tokio::task::spawn_blocking(move || store.index(&r)).await {
        return Ok(ix);
    }
    for (peer, _) in placement(node, root, 0) {
        if let Ok(BlobResponse::Index {
            size,
            chunk_size,
            index,
        }) = ask(node, peer, BlobRequest::GetIndex { root: *root }).await
        {
            let ix = Index {
                size,
                chunk_size,
                hashes: index,
            };
            if check_index(root, &ix).is_ok() {
                return Ok(ix);
            }
        }
    }
    Err(BlobError::Unavailable {
        i: 0,
        why: "no holder has the index".into(),
    })
}

/// Chunk `i` of `root`, verified, from this node or the first of `candidates` (live storage
/// nodes in rendezvous order, see [`placement`]; computed once per blob by the caller, since
/// it scans the offers) that has a good copy. One pass over the candidates.
pub async fn fetch_chunk<N: BlobHost>(
    node: &N,
    root: &[u8; 32],
    index: &Index,
    i: u32,
    candidates: &[PeerId],
) -> Result<Bytes, BlobError> {
    fetch_chunk_once(node, root, index, i, candidates)
        .await
        .map_err(|miss| BlobError::Unavailable { i, why: miss.why })
}

/// Why one pass over the candidates got no good copy of a chunk.
struct ChunkMiss {
    /// At least one candidate gave no answer (a timeout, a closed or missing connection, a
    /// refused or overloaded request): asking again later may succeed. When every candidate
    /// answered (not held, corrupt), it will not.
    transient: bool,
    why: String,
}

/// [`fetch_chunk`], telling a miss worth retrying from one that is not.
async fn fetch_chunk_once<N: BlobHost>(
    node: &N,
    root: &[u8; 32],
    index: &Index,
    i: u32,
    candidates: &[PeerId],
) -> Result<Bytes, ChunkMiss> {
    let want = index_entry(&index.hashes, i).ok_or_else(|| ChunkMiss {
        transient: false,
        why: BlobError::BadIndex.to_string(),
    })?;
    let store = node.blobs().clone();
    let r = *root;
    if let Ok(Ok(data)) = tokio::task::spawn_blocking(move || store.get_chunk(&r, i)).await {
        return Ok(data.into());
    }
    let me = node.local_peer_id();
    let mut why = Vec::new();
    let mut transient = false;
    for &peer in candidates {
        if peer == me {
            continue;
        }
        match ask_chunk(node, peer, *root, i).await {
            Ok(Ok(data)) if chunk_hash(&data) == want => return Ok(data),
            Ok(Ok(_)) => why.push(format!("{peer}: corrupt")),
            Ok(Err(other)) => why.push(format!("{peer}: {other:?}")),
            Err(e) => {
                transient = true;
                why.push(format!("{peer}: {e}"));
            }
        }
    }
    Err(ChunkMiss {
        transient,
        why: why.join("; "),
    })
}

/// Chunks fetched at once by a read ([`fetch_chunks`]), and how far ahead of the reader.
pub const GET_PARALLEL_CHUNKS: usize = 8;
/// A read gives up after this long without any chunk arriving. Chunk requests are
/// idempotent, so a read whose holders are slow, paused or on a congested link keeps asking
/// (with fewer chunks in flight, after a pause) as long as some chunk still arrives; a read
/// whose every holder is gone ends after this long. The same bound as [`PUT_STALL`].
pub const GET_STALL: Duration = PUT_STALL;

/// Sends every chunk of `root` to `out`, in order and verified, then returns; or sends the
/// first error and returns. Stops as soon as `out` is closed (the reader went away).
///
/// * Up to [`GET_PARALLEL_CHUNKS`] chunks are in flight, and none more than that many ahead
///   of the next one the reader needs, so at most that many are held in memory.
/// * Chunk `i` is asked first of candidate `i % spread` (then the others in order, as
///   [`fetch_chunk`] fails over), so a read draws on `spread` holders (the blob's `K`)
///   instead of waiting on one holder a round trip per chunk.
/// * A chunk no candidate answered for (every request failed: timeouts, closed connections,
///   refusals) is asked again, starting one candidate further on, after a pause that grows
///   with the failures in a row; each such failure halves the chunks in flight and each
///   success widens them by one, as a put does ([`store_on`]): requests in flight share one
///   connection per holder, so on a slow or stalled link they all time out together and
///   fewer is what lets each finish. The candidates are then refreshed from the live
///   placement (a holder that repair added since counts). The read fails after
///   [`GET_STALL`] without any chunk arriving.
/// * A chunk every candidate answered for without a good copy (not held, corrupt) fails the
///   read at once: asking again would get the same answers.
///
/// Before, each chunk got one pass over the holders (one 2 s request timeout each) and the
/// read ended early on the first miss, so holders that stalled for longer than that (a
/// paused host, a loaded machine) cut a download short.
pub async fn fetch_chunks<N: BlobHost>(
    node: N,
    root: [u8; 32],
    index: Index,
    mut candidates: Vec<PeerId>,
    spread: usize,
    out: tokio::sync::mpsc::Sender<Result<Bytes, BlobError>>,
) {
    use futures::stream::{FuturesUnordered, StreamExt};
    let chunks = index.chunks();
    let ahead = u32::try_from(GET_PARALLEL_CHUNKS).unwrap_or(u32::MAX);
    let mut next_out = 0u32; // the next chunk the reader gets
    let mut next_new = 0u32; // the next chunk never asked for
    let mut again: BTreeSet<u32> = BTreeSet::new(); // chunks to ask for again, lowest first
    let mut tries: BTreeMap<u32, usize> = BTreeMap::new(); // misses per chunk not yet sent
    let mut ready: BTreeMap<u32, Bytes> = BTreeMap::new(); // arrived, not yet sent
    let mut window = Window::new(GET_PARALLEL_CHUNKS);
    let mut progress = Progress::with_stall(GET_STALL);
    let mut in_flight = FuturesUnordered::new();
    while next_out < chunks {
        while in_flight.len() < window.size() {
            let i = match again.pop_first() {
                Some(i) => i,
                None if next_new < chunks && next_new < next_out.saturating_add(ahead) => {
                    next_new += 1;
                    next_new - 1
                }
                None => break,
            };
            let spread = spread.clamp(1, candidates.len().max(1));
            let first = (i as usize + tries.get(&i).copied().unwrap_or(0)) % spread;
            // `first < spread <= candidates.len()`: the candidates, starting at `first`.
            let order: Vec<PeerId> = candidates
                .iter()
                .cycle()
                .skip(first)
                .take(candidates.len())
                .copied()
                .collect();
            let (node, index, epoch) = (node.clone(), &index, window.epoch());
            in_flight.push(async move {
                (
                    epoch,
                    i,
                    fetch_chunk_once(&node, &root, index, i, &order).await,
                )
            });
        }
        let Some((epoch, i, got)) = in_flight.next().await else {
            // Nothing in flight and nothing to ask for, yet chunks missing: cannot happen
            // (every chunk below `next_new` is sent, ready, in flight or queued again).
            let _ = out
                .send(Err(BlobError::Unavailable {
                    i: next_out,
                    why: "internal: chunk lost track of".into(),
                }))
                .await;
            return;
        };
        match got {
            Ok(data) => {
                progress.succeeded();
                window.succeeded();
                tries.remove(&i);
                ready.insert(i, data);
                while let Some(data) = ready.remove(&next_out) {
                    if out.send(Ok(data)).await.is_err() {
                        return;
                    }
                    next_out += 1;
                }
            }
            Err(miss) => {
                // Asked again (a permanent miss ends the read below). A transient miss halves
                // the window and pauses, once per burst (`Window::failed`); one asked before
                // the last back-off is only asked again.
                *tries.entry(i).or_default() += 1;
                again.insert(i);
                if miss.transient && !window.failed(epoch) {
                    continue;
                }
                let pause = if miss.transient {
                    progress.failed()
                } else {
                    None
                };
                let Some(pause) = pause else {
                    let why = if miss.transient {
                        format!("no chunk arrived for {GET_STALL:?}; last: {}", miss.why)
                    } else {
                        miss.why
                    };
                    let _ = out.send(Err(BlobError::Unavailable { i, why })).await;
                    return;
                };
                tracing::debug!(i, why = %miss.why, window = window.size(), ?pause, "chunk not fetched; will ask again");
                tokio::time::sleep(pause).await;
                for (peer, _) in placement(&node, &root, index.size) {
                    if !candidates.contains(&peer) {
                        candidates.push(peer);
                    }
                }
            }
        }
    }
}

/// What the storage nodes said about one blob ([`holders`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holders {
    /// Nodes holding at least one chunk: peer, chunks held, chunks in all.
    pub holding: Vec<(PeerId, u32, u32)>,
    /// Nodes asked that gave no answer in time (dead, unreachable or overloaded): they may
    /// hold a copy, so they are reported apart instead of being counted as holding nothing.
    pub unanswered: Vec<PeerId>,
}

/// Every storage node that may hold a copy of a blob: members whose storage offer is live,
/// or lapsed less than [`CENSUS_GRACE_MS`] ago (a late refresh does not hide a copy), this
/// node included if it offers storage. In peer order.
fn census_peers<N: BlobHost>(node: &N) -> Vec<PeerId> {
    let now = now_ms();
    offers::storage_candidates(node, now.saturating_sub(CENSUS_GRACE_MS))
        .into_iter()
        .chain(offers::storage_candidates(node, now))
        .map(|c| c.peer)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Which storage nodes hold how many chunks of `root`, and which did not answer. Every
/// storage node that may hold a copy ([`census_peers`]) is asked, all at once, so one slow
/// node neither delays the others' answers nor drops out of the list unnoticed
/// (`_claimed_size` is not trusted, see [`fetch_index`]).
///
/// Asking the live placement one node at a time and dropping non-answers made a loaded
/// node report fewer copies than exist: a holder whose offer refresh was late (offers lapse
/// after three refreshes) was not asked at all, and one whose answer timed out vanished.
pub async fn holders<N: BlobHost>(node: &N, root: &[u8; 32], _claimed_size: u64) -> Holders {
    holders_among(node, census_peers(node), root).await
}

/// [`holders`] among `peers`.
pub(crate) async fn holders_among<N: BlobHost>(
    node: &N,
    peers: Vec<PeerId>,
    root: &[u8; 32],
) -> Holders {
    let answers = futures::future::join_all(
        peers
            .iter()
            .map(|&p| ask(node, p, BlobRequest::Has { root: *root })),
    )
    .await;
    let mut out = Holders::default();
    for (peer, a) in peers.into_iter().zip(answers) {
        match a {
            Ok(BlobResponse::Holding { chunks, total, .. }) => {
                if chunks > 0 {
                    out.holding.push((peer, chunks.min(total), total));
                }
            }
            // An answer, but not about holdings (a refusal other than for budget, which
            // `ask` reports as no answer): it holds nothing we can count.
            Ok(_) => {}
            Err(_) => out.unanswered.push(peer),
        }
    }
    out
}

/// What a storage node answered about one blob: chunks held, and the zone it was written
/// under.
#[derive(Clone, Copy, Debug)]
struct Holding {
    chunks: u32,
    owner: Option<ZoneId>,
}

/// Chunks of `root` (of `chunks` in all) that each other storage node holds, asked of every
/// member whose storage offer is live or lapsed less than [`CENSUS_GRACE_MS`] ago. A node
/// that does not answer (dead, unreachable) is left out: as far as repair knows, it holds
/// nothing.
async fn census<N: BlobHost>(
    node: &N,
    me: PeerId,
    root: [u8; 32],
    chunks: u32,
) -> BTreeMap<PeerId, Holding> {
    let peers: Vec<PeerId> = census_peers(node)
        .into_iter()
        .filter(|p| *p != me)
        .collect();
    census_among(node, &peers, root, chunks).await
}

/// What each of `peers` holds of `root` (of `chunks` in all), asked all at once; a peer that
/// does not answer, or answers about another shape, is left out.
async fn census_among<N: BlobHost>(
    node: &N,
    peers: &[PeerId],
    root: [u8; 32],
    chunks: u32,
) -> BTreeMap<PeerId, Holding> {
    let answers = futures::future::join_all(
        peers
            .iter()
            .map(|&p| ask(node, p, BlobRequest::Has { root })),
    )
    .await;
    peers
        .iter()
        .copied()
        .zip(answers)
        .filter_map(|(p, a)| match a {
            Ok(BlobResponse::Holding {
                chunks: held,
                total,
                owner,
            }) if total == chunks => Some((
                p,
                Holding {
                    chunks: held.min(total),
                    owner: owner.map(ZoneId),
                },
            )),
            _ => None,
        })
        .collect()
}

/// How many chunks of `root` this node holds, out of how many (0 of 0 without the index).
fn local_holding(store: &BlobStore, root: &[u8; 32]) -> (u32, u32) {
    let total = store.index(root).map(|ix| ix.chunks()).unwrap_or(0);
    let held = if total == 0 {
        0
    } else {
        store.present(root).len() as u32
    };
    (held, total)
}

fn shape(m: &BlobManifest) -> BlobShape {
    BlobShape {
        size: m.size,
        chunk_size: m.chunk_size,
        chunks: m.chunks,
        replicas: usize::from(m.replicas),
    }
}

/// Makes sure this node holds every blob it is an intended holder of, and collects copies it
/// no longer should hold.
async fn repair_once<N: BlobHost>(node: &N) {
    let me = node.local_peer_id();
    let now = now_ms();
    let mut watch = Watch {
        budget: REPLICATION_CHECKS_PER_ROUND,
        mine: BTreeSet::new(),
    };
    for (root, by_zone) in manifests_by_root(node, now) {
        repair_blob(node, me, root, &by_zone, now, &mut watch).await;
    }
    // Blobs this node no longer watches (collected, another holder ranks first, manifest
    // gone) leave the gauge.
    lock(&node.blobs().stats.watched).retain(|root, _| watch.mine.contains(root));
}

/// One repair round's replication watch: checks it may still start, and the roots this node
/// watches.
struct Watch {
    budget: usize,
    mine: BTreeSet<[u8; 32]>,
}

/// If this node watches `root` (its first intended holder; it holds a complete copy of `m`),
/// asks the other intended holders what they hold when a check is due, and records it.
async fn watch_replication<N: BlobHost>(
    node: &N,
    me: PeerId,
    root: [u8; 32],
    m: &BlobManifest,
    intended: &[PeerId],
    now: u64,
    watch: &mut Watch,
) {
    if intended.first() != Some(&me) {
        return;
    }
    watch.mine.insert(root);
    let stats = &node.blobs().stats;
    let due = lock(&stats.watched).get(&root).is_none_or(|w| w.due(now));
    if !due || watch.budget == 0 {
        return;
    }
    watch.budget -= 1;
    let others: Vec<PeerId> = intended.iter().copied().filter(|p| *p != me).collect();
    let held_by = census_among(node, &others, root, m.chunks).await;
    let complete = 1 + held_by.values().filter(|h| h.chunks >= m.chunks).count() as u32;
    let w = Watched {
        complete,
        wanted: u32::from(m.replicas),
        checked_at: now,
    };
    if !w.full() {
        tracing::debug!(root = %hex::encode(root), complete, wanted = m.replicas, "blob under-replicated");
    }
    lock(&stats.watched).insert(root, w);
}

/// Repairs one blob. The manifest that decides is the one this node's copy is bound to; a
/// node without a copy of a root with manifests from several zones asks the holders which
/// zone they were written under ([`plan::owner_by_vouches`]), so a foreign manifest cannot
/// change the copy count. Placement uses the chosen manifest's numbers, which its holders
/// checked against the index when they bound it (and [`pull`] checks again).
async fn repair_blob<N: BlobHost>(
    node: &N,
    me: PeerId,
    root: [u8; 32],
    by_zone: &BTreeMap<ZoneId, SignedRecord>,
    now: u64,
    watch: &mut Watch,
) {
    let store = node.blobs().clone();
    let (mine, owner) = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || (local_holding(&store, &root), store.owner(&root)))
            .await
            .unwrap_or(((0, 0), None))
    };
    let chosen: Vec<&SignedRecord> = match owner {
        // Bound here: only the bound zone's manifest counts (re-puts under it extend it).
        Some(z) => by_zone.get(&z).into_iter().collect(),
        None => by_zone.values().collect(),
    };
    let complete_here = |m: &BlobManifest| mine.1 == m.chunks && mine.0 >= m.chunks;
    // Without a census: is this node possibly intended under any candidate manifest?
    let mut need_census = false;
    for r in &chosen {
        let Some(m) = manifest_of(r) else { continue };
        if complete_here(&m) {
            if owner.is_some() {
                // One placement for both: this node's copy counts as room it already has.
                let order = order(node, &root, m.size, now);
                let mine_full = |p: &PeerId| if *p == me { m.size } else { 0 };
                let intended =
                    plan::intended_holders(&order, m.size, usize::from(m.replicas), mine_full);
                surplus_check(node, me, root, &m, &order, &intended, now).await;
                watch_replication(node, me, root, &m, &intended, now, watch).await;
            }
            return;
        }
        let held = if mine.1 == m.chunks { mine.0 } else { 0 };
        let order = order(node, &root, m.size, now);
        if plan::plan_repair(&me, &order, shape(&m), held, None) == RepairPlan::NeedCensus {
            need_census = true;
        }
    }
    if !need_census {
        return;
    }
    // Decide the owner: bound here, the only zone, or the one most complete holders vouch for.
    let record = match (owner, chosen.as_slice()) {
        (Some(_), [r]) | (None, [r]) => (*r).clone(),
        (None, _) => {
            let Some(m0) = chosen.first().and_then(|r| manifest_of(r)) else {
                return;
            };
            let held_by = census(node, me, root, m0.chunks).await;
            let ranked = rank(&root, &held_by.keys().copied().collect::<Vec<_>>());
            let vouches: Vec<ZoneId> = ranked
                .iter()
                .filter_map(|p| held_by.get(p))
                .filter(|h| h.chunks >= m0.chunks)
                .filter_map(|h| h.owner)
                .collect();
            match plan::owner_by_vouches(&vouches).and_then(|z| by_zone.get(&z)) {
                Some(r) => r.clone(),
                // Nobody holds a complete copy under any of these manifests: nothing to pull.
                None => return,
            }
        }
        _ => return,
    };
    let Some(m) = manifest_of(&record) else {
        return;
    };
    let held_by = census(node, me, root, m.chunks).await;
    let counts: BTreeMap<PeerId, u32> = held_by.iter().map(|(p, h)| (*p, h.chunks)).collect();
    let held = if mine.1 == m.chunks { mine.0 } else { 0 };
    let order = order(node, &root, m.size, now);
    if let RepairPlan::Pull { sources } =
        plan::plan_repair(&me, &order, shape(&m), held, Some(&counts))
    {
        let complete = counts.values().filter(|c| **c >= m.chunks).count();
        pull(node, &record, &m, &sources, complete).await;
    }
}

/// Collects this node's complete copy of `m` if it has not been an intended holder for
/// [`SURPLUS_GRACE_MS`] and a census finds `K` complete copies on intended holders.
/// `order` is the blob's placement and `intended` its intended holders with this node's
/// copy counted as room it has.
async fn surplus_check<N: BlobHost>(
    node: &N,
    me: PeerId,
    root: [u8; 32],
    m: &BlobManifest,
    order: &[StorageCandidate<PeerId>],
    intended: &[PeerId],
    now: u64,
) {
    let maybe = !intended.contains(&me);
    let store = node.blobs();
    let Some(since) = store.note_surplus(&root, maybe, now) else {
        return;
    };
    if now.saturating_sub(since) < SURPLUS_GRACE_MS {
        return;
    }
    let held_by = census(node, me, root, m.chunks).await;
    let counts: BTreeMap<PeerId, u32> = held_by.iter().map(|(p, h)| (*p, h.chunks)).collect();
    if plan::is_surplus(&me, order, shape(m), &counts) {
        tracing::info!(root = %hex::encode(root), "collecting a surplus copy: K intended holders hold it");
        let store = store.clone();
        if let Ok(Ok(())) = tokio::task::spawn_blocking(move || store.remove(&root)).await {
            node.blobs()
                .stats
                .surplus_collected
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Fetches the index (if missing) and every missing chunk of `m` from `candidates`, then
/// seals the copy. The index must match the manifest (else the manifest lies about the blob
/// and is ignored, counted). A chunk no candidate can provide now ends this attempt; the
/// next repair round tries again.
async fn pull<N: BlobHost>(
    node: &N,
    record: &SignedRecord,
    m: &BlobManifest,
    candidates: &[PeerId],
    complete: usize,
) {
    let root = m.root;
    let index = match fetch_index(node, &m.root, m.size).await {
        Ok(ix) => ix,
        Err(e) => {
            tracing::debug!(%e, "repair: index unavailable");
            return;
        }
    };
    if !manifest_matches_index(m, &root, index.size, index.chunk_size, index.hashes.len()) {
        node.blobs()
            .stats
            .manifests_mismatched
            .fetch_add(1, Ordering::Relaxed);
        return;
    }
    let store = node.blobs().clone();
    let rec = record.clone();
    let ix = index.clone();
    let bound = tokio::task::spawn_blocking(move || {
        store.has_room(ix.size)?;
        store.bind(&root, &ix, &rec)
    })
    .await;
    if !matches!(bound, Ok(Ok(()))) {
        return;
    }
    let store = node.blobs().clone();
    let present = tokio::task::spawn_blocking(move || store.present(&root))
        .await
        .unwrap_or_default();
    let missing: Vec<u32> = (0..index.chunks())
        .filter(|i| !present.contains(i))
        .collect();
    if !missing.is_empty() {
        tracing::info!(
            root = %hex::encode(m.root),
            missing = missing.len(),
            complete_copies = complete,
            replicas = m.replicas,
            "repairing blob: this node is an intended holder and copies are missing"
        );
    }
    for i in missing {
        match fetch_chunk(node, &m.root, &index, i, candidates).await {
            Ok(data) => {
                let store = node.blobs().clone();
                let _ = tokio::task::spawn_blocking(move || store.put_chunk(&root, i, &data)).await;
            }
            Err(e) => {
                tracing::warn!(%e, "repair: chunk unavailable now; will retry");
                break;
            }
        }
    }
    let store = node.blobs().clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.seal(&root)).await {
        tracing::debug!(%e, "repair: blob not complete yet");
    }
}

/// Refreshes the holder admission view ([`BlobStore::set_view`]).
fn refresh_gate<N: BlobHost>(node: &N) {
    let me = node.local_peer_id();
    node.blobs()
        .set_view(me, offers::storage_candidates(node, now_ms()));
}

/// Collects blob copies without a live manifest from the zone they were written under.
async fn collect<N: BlobHost>(node: &N) {
    let now = now_ms();
    let live: BTreeMap<[u8; 32], BTreeSet<ZoneId>> = manifests_by_root(node, now)
        .into_iter()
        .map(|(root, by_zone)| (root, by_zone.into_keys().collect()))
        .collect();
    let store = node.blobs().clone();
    let removed = tokio::task::spawn_blocking(move || {
        store.collect_orphans(now, ORPHAN_GRACE_MS, |root, binding| {
            binding.is_some_and(|b| live.get(root).is_some_and(|z| z.contains(&b.body.zone)))
        })
    })
    .await
    .unwrap_or(0);
    if removed > 0 {
        tracing::info!(removed, "collected orphan blob copies");
    }
}

/// Scrub (and collect orphans) every `scrub` interval, repair every `repair` interval,
/// refresh the admission view every second, forever.
pub async fn run_maintenance<N: BlobHost>(node: N, repair: Duration, scrub: Duration) {
    refresh_gate(&node);
    let mut repair_tick = tokio::time::interval(repair);
    repair_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scrub_tick = tokio::time::interval(scrub);
    scrub_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gate_tick = tokio::time::interval(GATE_REFRESH.min(repair));
    gate_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut live_tick = tokio::time::interval(MEMBERSHIP_WATCH);
    live_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut live = offers::live_peers(&node);
    loop {
        tokio::select! {
            _ = gate_tick.tick() => refresh_gate(&node),
            _ = live_tick.tick() => {
                // A member left (confirmed down, see offers::DOWN_GRACE_MS): repair now, not
                // at the next repair tick, so K is back within seconds of a holder's death.
                let now_live = offers::live_peers(&node);
                let left = live.difference(&now_live).count();
                live = now_live;
                if left > 0 {
                    node.blobs().stats.repairs_on_leave.fetch_add(1, Ordering::Relaxed);
                    node.blobs().stats.recheck_all();
                    refresh_gate(&node);
                    repair_once(&node).await;
                }
            }
            _ = repair_tick.tick() => repair_once(&node).await,
            _ = scrub_tick.tick() => {
                let store = node.blobs().clone();
                if let Ok(bad) = tokio::task::spawn_blocking(move || store.scrub()).await {
                    if bad > 0 {
                        tracing::warn!(bad, "scrub found corrupt chunks");
                        repair_once(&node).await;
                    }
                }
                collect(&node).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const NOW: u64 = 1_800_000_000_000;

    /// A blob of `chunks` one-KiB chunks (small chunks keep the tests fast).
    fn blob(chunks: u32, seed: u8) -> (Vec<Vec<u8>>, Index, [u8; 32]) {
        let data: Vec<Vec<u8>> = (0..chunks).map(|i| vec![seed ^ i as u8; 1024]).collect();
        let hashes: Vec<u8> = data.iter().flat_map(|c| chunk_hash(c)).collect();
        let root = root_of(&hashes);
        let index = Index {
            size: u64::from(chunks) * 1024,
            chunk_size: 1024,
            hashes,
        };
        (data, index, root)
    }

    fn manifest_for(key: &ZoneKey, root: [u8; 32], index: &Index, replicas: u8) -> SignedRecord {
        let m = BlobManifest {
            root,
            size: index.size,
            chunk_size: index.chunk_size,
            chunks: index.chunks(),
            replicas,
        };
        sign_manifest(key, m)
    }

    fn sign_manifest(key: &ZoneKey, m: BlobManifest) -> SignedRecord {
        RecordBody {
            zone: key.zone(),
            label: blob_label(&m.root),
            seq: NOW,
            expires_at_ms: NOW + MANIFEST_TTL_MS,
            content: Content::BlobManifest(m),
        }
        .sign(key)
        .expect("valid manifest")
    }

    fn put_index(index: &Index, root: [u8; 32], manifest: &SignedRecord) -> BlobRequest {
        BlobRequest::PutIndex {
            root,
            size: index.size,
            chunk_size: index.chunk_size,
            index: index.hashes.clone(),
            manifest: manifest.encode(),
        }
    }

    fn refused(r: &BlobResponse, why: Refusal) -> bool {
        matches!(r, BlobResponse::Error { message } if *message == BlobError::Refused(why).to_string())
    }

    /// A storage member offering 64 MiB, all free.
    fn roomy(peer: PeerId) -> StorageCandidate<PeerId> {
        StorageCandidate {
            peer,
            capacity: 64 * MIB,
            free: 64 * MIB,
        }
    }

    /// A store whose node offers `capacity` and sees `n` storage members (itself among them)
    /// with plenty of room; returns it with its own id and the members in rendezvous order for
    /// `root`.
    fn store_in(
        dir: &Path,
        capacity: Option<u64>,
        n: usize,
        root: &[u8; 32],
    ) -> (BlobStore, PeerId, Vec<PeerId>) {
        let store = BlobStore::open(dir.join("blobs")).expect("open");
        store.set_capacity(capacity);
        let peers: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
        let cands = peers.iter().map(|p| roomy(*p)).collect();
        let ranked = rank(root, &peers);
        store.set_view(ranked[0], cands);
        (store, ranked[0], ranked)
    }

    fn write_all(
        store: &BlobStore,
        data: &[Vec<u8>],
        index: &Index,
        root: [u8; 32],
        m: &SignedRecord,
    ) -> Vec<BlobResponse> {
        let mut out = vec![handle_request_at(store, put_index(index, root, m), NOW)];
        for (i, c) in data.iter().enumerate() {
            out.push(handle_request_at(
                store,
                BlobRequest::PutChunk {
                    root,
                    i: i as u32,
                    data: c.clone(),
                },
                NOW,
            ));
        }
        out.push(handle_request_at(store, BlobRequest::Seal { root }, NOW));
        out
    }

    #[test]
    fn a_burst_of_refusals_halves_the_put_window_once() {
        let mut w = Window::new(8);
        // Eight chunks sent together, all refused (the holder's budget ran out).
        let sent = w.epoch();
        assert!(w.failed(sent), "the first refusal backs off");
        for _ in 1..8 {
            assert!(!w.failed(sent), "the rest of that burst does not");
        }
        assert_eq!(w.size(), 4);
        // A request sent after the back-off that fails again backs off again.
        assert!(w.failed(w.epoch()));
        assert_eq!(w.size(), 2);
        assert!(w.failed(w.epoch()));
        assert!(w.failed(w.epoch()));
        assert_eq!(w.size(), 1, "never below one");
        for _ in 0..20 {
            w.succeeded();
        }
        assert_eq!(w.size(), 8, "grows back to the bound");
    }

    #[test]
    fn a_node_that_offers_no_storage_stores_nothing_for_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, index, root) = blob(3, 1);
        let (store, _, _) = store_in(dir.path(), None, 3, &root);
        let m = manifest_for(&ZoneKey::from_seed([1; 32]), root, &index, 2);
        let answers = write_all(&store, &data, &index, root, &m);
        assert!(refused(&answers[0], Refusal::NoOffer), "{:?}", answers[0]);
        assert!(answers[1..4]
            .iter()
            .all(|a| refused(a, Refusal::NotAccepted)));
        assert!(
            refused(&answers[4], Refusal::NotAccepted),
            "a stranger cannot seal"
        );
        assert_eq!(store.used(), 0);
        assert_eq!(store.stats.refused(Refusal::NoOffer), 1);
        assert_eq!(store.stats.refused(Refusal::NotAccepted), 4);
    }

    #[test]
    fn writes_need_a_valid_manifest_that_matches_the_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, index, root) = blob(3, 2);
        let (store, _, _) = store_in(dir.path(), Some(64 * MIB), 3, &root);
        let mut none = put_index(
            &index,
            root,
            &manifest_for(&ZoneKey::from_seed([2; 32]), root, &index, 2),
        );
        if let BlobRequest::PutIndex { manifest, .. } = &mut none {
            manifest.clear();
        }
        assert!(refused(
            &handle_request_at(&store, none, NOW),
            Refusal::BadManifest
        ));
        // A manifest claiming 4 TiB for this root (a consistent chunk count) is not this blob.
        let huge = sign_manifest(
            &ZoneKey::from_seed([3; 32]),
            BlobManifest {
                root,
                size: 4 << 40,
                chunk_size: 1 << 20,
                chunks: 4 << 20,
                replicas: 2,
            },
        );
        assert!(refused(
            &handle_request_at(&store, put_index(&index, root, &huge), NOW),
            Refusal::ManifestMismatch
        ));
        let ok = manifest_for(&ZoneKey::from_seed([2; 32]), root, &index, 2);
        assert_eq!(
            handle_request_at(&store, put_index(&index, root, &ok), NOW),
            BlobResponse::Stored
        );
    }

    #[test]
    fn only_intended_holders_and_their_stand_ins_accept_a_blob() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, index, root) = blob(2, 3);
        let (store, _, ranked) = store_in(dir.path(), Some(64 * MIB), 8, &root);
        let m = manifest_for(&ZoneKey::from_seed([4; 32]), root, &index, 2);
        // K = 2: the first 4 in order may take it (2 intended, 2 stand-ins); the 5th may not.
        let cands: Vec<StorageCandidate<PeerId>> = ranked.iter().map(|p| roomy(*p)).collect();
        store.set_view(ranked[4], cands.clone());
        assert!(refused(
            &handle_request_at(&store, put_index(&index, root, &m), NOW),
            Refusal::NotIntended
        ));
        store.set_view(ranked[3], cands);
        assert_eq!(
            handle_request_at(&store, put_index(&index, root, &m), NOW),
            BlobResponse::Stored
        );
        assert_eq!(store.stats.refused(Refusal::NotIntended), 1);
    }

    #[test]
    fn a_put_index_on_a_stale_view_is_judged_on_the_live_offers() {
        let (_, index, root) = blob(2, 3);
        let m = manifest_for(&ZoneKey::from_seed([4; 32]), root, &index, 2);
        let request = put_index(&index, root, &m).encode();
        let not_intended = BlobResponse::Error {
            message: BlobError::Refused(Refusal::NotIntended).to_string(),
        }
        .encode();
        // The view maintenance last took predates the offers: this node saw only the others.
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, me, ranked) = store_in(dir.path(), Some(64 * MIB), 3, &root);
        let others: Vec<_> = ranked[1..].iter().map(|p| roomy(*p)).collect();
        let live: Vec<_> = ranked.iter().map(|p| roomy(*p)).collect();
        store.set_view_at(me, others.clone(), NOW - GATE_FRESH_MS);
        let fresh = || (me, live.clone());
        assert_eq!(
            answer_message(&store, &request, NOW, fresh),
            Ok(BlobResponse::Stored.encode())
        );
        assert_eq!(store.stats.refused(Refusal::NotIntended), 0);
        // A view younger than the bound is used as it is: no refresh, the refusal stands.
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, me, _) = store_in(dir.path(), Some(64 * MIB), 3, &root);
        store.set_view_at(me, others, NOW - GATE_FRESH_MS + 1);
        let no_refresh = || -> (PeerId, Vec<StorageCandidate<PeerId>>) {
            panic!("a fresh view is not refreshed")
        };
        assert_eq!(
            answer_message(&store, &request, NOW, no_refresh),
            Ok(not_intended)
        );
        assert_eq!(store.stats.refused(Refusal::NotIntended), 1);
    }

    #[test]
    fn chunks_answered_in_place_match_the_decoded_answers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, index, root) = blob(3, 5);
        let (store, me, _) = store_in(dir.path(), Some(64 * MIB), 1, &root);
        let m = manifest_for(&ZoneKey::from_seed([4; 32]), root, &index, 1);
        let never = || -> (PeerId, Vec<StorageCandidate<PeerId>>) { panic!("view is fresh") };
        store.set_view_at(me, vec![roomy(me)], NOW);
        let answer = |req: &BlobRequest| answer_message(&store, &req.encode(), NOW, never);
        assert_eq!(
            answer(&put_index(&index, root, &m)),
            Ok(BlobResponse::Stored.encode())
        );
        let put = |i: u32, chunk: &[u8]| {
            let message = [&plan::put_chunk_header(&root, i, chunk.len())[..], chunk].concat();
            answer_message(&store, &message, NOW, never)
        };
        // A corrupt chunk gets the answer decoding gives, and is not stored.
        let mut bad = data[0].clone();
        bad[0] ^= 1;
        let expected = BlobResponse::Error {
            message: BlobError::Corrupt { i: 0 }.to_string(),
        };
        assert_eq!(put(0, &bad), Ok(expected.encode()));
        assert!(store.present(&root).is_empty());
        for (i, chunk) in data.iter().enumerate() {
            assert_eq!(put(i as u32, chunk), Ok(BlobResponse::Stored.encode()));
        }
        for (i, chunk) in data.iter().enumerate() {
            let get = BlobRequest::GetChunk { root, i: i as u32 };
            let expected = BlobResponse::Chunk {
                data: chunk.clone(),
            };
            assert_eq!(answer(&get), Ok(expected.encode()));
            assert_eq!(handle_request_at(&store, get, NOW), expected);
        }
        // Missing chunks, other requests and garbage answer as decoding does.
        let missing = BlobRequest::GetChunk { root, i: 9 };
        assert_eq!(
            answer(&missing),
            Ok(handle_request_at(&store, missing, NOW).encode())
        );
        let has = BlobRequest::Has { root };
        assert_eq!(
            answer(&has),
            Ok(handle_request_at(&store, has, NOW).encode())
        );
        assert!(answer_message(&store, &[0xff; 7], NOW, never).is_err());
    }

    #[test]
    fn writes_stay_within_the_offered_capacity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, index, root) = blob(4, 4);
        let (store, _, _) = store_in(dir.path(), Some(3 * 1024), 3, &root);
        let m = manifest_for(&ZoneKey::from_seed([5; 32]), root, &index, 2);
        // 4 KiB blob, 3 KiB offered: a node without room for it is not an intended holder.
        assert!(refused(
            &handle_request_at(&store, put_index(&index, root, &m), NOW),
            Refusal::NotIntended
        ));
        // Admitted while room was larger, chunks still stop at the capacity.
        store.set_capacity(Some(64 * MIB));
        assert_eq!(
            handle_request_at(&store, put_index(&index, root, &m), NOW),
            BlobResponse::Stored
        );
        store.set_capacity(Some(3 * 1024));
        let answers: Vec<BlobResponse> = data
            .iter()
            .enumerate()
            .map(|(i, c)| {
                handle_request_at(
                    &store,
                    BlobRequest::PutChunk {
                        root,
                        i: i as u32,
                        data: c.clone(),
                    },
                    NOW,
                )
            })
            .collect();
        assert_eq!(
            answers
                .iter()
                .filter(|a| **a == BlobResponse::Stored)
                .count(),
            3
        );
        assert!(refused(&answers[3], Refusal::NoRoom));
        assert_eq!(store.used(), 3 * 1024);
    }

    #[test]
    fn a_seal_syncs_once_and_a_foreign_manifest_never_rebinds_the_blob() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, index, root) = blob(2, 5);
        let (store, _, _) = store_in(dir.path(), Some(64 * MIB), 3, &root);
        let owner = ZoneKey::from_seed([6; 32]);
        let answers = write_all(
            &store,
            &data,
            &index,
            root,
            &manifest_for(&owner, root, &index, 2),
        );
        assert!(
            answers.iter().all(|a| *a == BlobResponse::Stored),
            "{answers:?}"
        );
        assert_eq!(
            handle_request_at(&store, BlobRequest::Seal { root }, NOW),
            BlobResponse::Stored
        );
        assert_eq!(store.stats.seals_repeated.load(Ordering::Relaxed), 1);
        // A stranger's manifest with replicas = 16 for the same blob: accepted as identical
        // content, but the blob stays bound to its first owner.
        let stranger = manifest_for(&ZoneKey::from_seed([7; 32]), root, &index, 16);
        assert_eq!(
            handle_request_at(&store, put_index(&index, root, &stranger), NOW),
            BlobResponse::Stored
        );
        assert_eq!(
            handle_request_at(&store, BlobRequest::Has { root }, NOW),
            BlobResponse::Holding {
                chunks: 2,
                total: 2,
                owner: Some(owner.zone().0)
            }
        );
    }

    #[test]
    fn a_watched_blob_is_checked_every_round_while_short_and_rarely_when_full() {
        let full = Watched {
            complete: 3,
            wanted: 3,
            checked_at: NOW,
        };
        let short = Watched {
            complete: 1,
            wanted: 3,
            ..full
        };
        assert!(full.full() && !short.full());
        assert!(!full.due(NOW + REPLICATION_CHECK_MS - 1));
        assert!(full.due(NOW + REPLICATION_CHECK_MS));
        assert!(
            short.due(NOW + 1),
            "a short blob is checked again every round"
        );
        // Counted by state, with the copies missing summed over the short ones only.
        let more = Watched {
            complete: 2,
            wanted: 5,
            ..full
        };
        assert_eq!(replication_summary([full, short, more].iter()), (1, 2, 5));
        assert_eq!(replication_summary([].iter()), (0, 0, 0));
        // A member leaving makes every check due at once.
        let stats = BlobStats::default();
        lock(&stats.watched).insert([1; 32], full);
        stats.recheck_all();
        assert!(lock(&stats.watched)[&[1; 32]].due(NOW + 1));
        assert_eq!(stats.replication(), (1, 0, 0));
        assert_eq!(stats.to_json()["replication"]["full"], 1);
    }

    #[test]
    fn orphans_and_crash_leftovers_are_collected_after_the_grace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, index, root) = blob(2, 6);
        let (store, _, _) = store_in(dir.path(), Some(64 * MIB), 3, &root);
        let m = manifest_for(&ZoneKey::from_seed([8; 32]), root, &index, 2);
        write_all(&store, &data, &index, root, &m);
        let (data2, index2, root2) = blob(2, 7);
        let store_b = store;
        // Same store, a second blob admitted through a view where this node is intended.
        let cands = vec![StorageCandidate {
            peer: PeerId::random(),
            capacity: 64 * MIB,
            free: 64 * MIB,
        }];
        let me = cands[0].peer;
        store_b.set_view(me, cands);
        let m2 = manifest_for(&ZoneKey::from_seed([9; 32]), root2, &index2, 1);
        write_all(&store_b, &data2, &index2, root2, &m2);
        let wall = now_ms();
        // Within the grace nothing goes; after it only the unwanted blob does.
        let wanted = |r: &[u8; 32], b: Option<&SignedRecord>| *r == root && b.is_some();
        assert_eq!(store_b.collect_orphans(wall, ORPHAN_GRACE_MS, wanted), 0);
        assert_eq!(
            store_b.collect_orphans(wall + ORPHAN_GRACE_MS + 1_000, ORPHAN_GRACE_MS, wanted),
            1
        );
        assert_eq!(store_b.roots(), vec![root]);
        assert_eq!(store_b.used(), 2048);
        // A crash left a temp file in a blob dir and an upload in DATA_DIR/tmp.
        std::fs::write(store_b.chunk_path(&root, 0).with_extension("tmp"), b"half").expect("write");
        std::fs::create_dir_all(dir.path().join("tmp")).expect("mkdir");
        std::fs::write(dir.path().join("tmp").join("upload-1"), b"half").expect("write");
        drop(store_b);
        let reopened = BlobStore::open(dir.path().join("blobs")).expect("open");
        assert_eq!(reopened.stats.tmp_collected.load(Ordering::Relaxed), 2);
        assert!(std::fs::read_dir(dir.path().join("tmp"))
            .expect("dir")
            .next()
            .is_none());
        assert_eq!(reopened.used(), 2048);
    }
}
