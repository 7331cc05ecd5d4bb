//! Replicated blobs: the storage half of the network's offers, backed by real bytes.
//!
//! * [`BlobStore`] keeps chunks on disk under `DATA_DIR/blobs/<root hex>/`, each written to a
//!   temporary file, fsynced and renamed, so a holder that acknowledged a chunk has it even
//!   after SIGKILL. Every chunk is verified against the index when stored, when served and by
//!   the periodic scrub; a corrupt chunk is deleted (never served) and then re-fetched by
//!   repair.
//! * [`intended_holders`] is the one placement rule, used by both [`put`] and repair: walk the
//!   rendezvous order of the live storage offers that could ever hold the blob ([`placement`])
//!   and take each node that has room for the part of the blob it lacks, until `K` are taken.
//!   Put and repair used to filter candidates differently (put skipped nodes without free
//!   room, repair did not), so a node put skipped for lack of room pulled a copy anyway.
//! * [`put`] cuts an uploaded file into chunks, stores them on the first `K` intended holders
//!   (the node itself included, if chosen), and only then publishes the signed manifest, which
//!   gossips like any record. Its seq is the clock, kept above the held floor
//!   ([`offers::own_seq`]), so a re-put after the clock stepped back is not refused as stale.
//!   Holder requests are idempotent, so a request that failed (a timeout on a loaded node) is
//!   retried on the same holder; put moves on to the next node only after a holder made no
//!   progress for [`PUT_STALL`]. Moving on after the first timeout is what made a K=3 put
//!   leave 4 copies: the slow holder got its chunks anyway and repair, seeing it among the
//!   first `K`, completed it.
//! * [`fetch_chunk`] gets a chunk from this node or any holder, verifying it, and fails over to
//!   the next holder on error or corruption.
//! * [`run_maintenance`] scrubs and repairs. A node that lacks a complete copy of a live blob
//!   and could be one of its intended holders asks the storage nodes how much of it each holds
//!   (a census, which also asks nodes whose offers lapsed within [`CENSUS_GRACE_MS`], so one
//!   late offer refresh cannot hide a copy) and pulls only if it is intended and fewer than `K`
//!   complete copies are live. When a holder dies, the census finds `K - 1` copies and only
//!   the newly intended node copies — one copy of repair traffic per lost replica. Two nodes
//!   whose views of the offers differ can still both pull after a loss (one extra copy); no
//!   surplus copy is ever deleted, since deleting on a divergent view could lose data.
//!
//! Bounds: chunk size (1 MiB), blob size ([`MAX_BLOB_BYTES`]), one upload distributes to its
//! holders with at most [`PUT_PARALLEL_CHUNKS`] chunks in flight per holder (fewer after a
//! chunk fails in transit), repair handles one blob at a time with chunks fetched one by one; a
//! census asks each storage node once per blob that this node lacks and could be intended for.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dpin_protocol::blob::{
    chunk_hash, index_entry, rendezvous, root_of, BlobRequest, BlobResponse, DEFAULT_CHUNK_BYTES,
};
use dpin_protocol::record::blob_label;
use dpin_protocol::{BlobManifest, Content, RecordBody, SignedRecord, ZoneKey};
use libp2p::PeerId;

use crate::node::{now_ms, Node};
use crate::offers::{self, OfferFilter};

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

/// On-disk chunk store.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    used: AtomicU64,
    /// Corrupt chunks found (on read or scrub) and deleted.
    pub corrupt_found: AtomicU64,
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
    /// Opens (creating) `dir` and counts the bytes stored.
    pub fn open(dir: PathBuf) -> Result<Self, BlobError> {
        std::fs::create_dir_all(&dir)?;
        let mut used = 0;
        for blob in std::fs::read_dir(&dir)? {
            let blob = blob?;
            if !blob.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(blob.path())? {
                let f = f?;
                let name = f.file_name();
                if name.to_string_lossy().parse::<u32>().is_ok() {
                    used += f.metadata()?.len();
                }
            }
        }
        Ok(Self {
            dir,
            used: AtomicU64::new(used),
            corrupt_found: AtomicU64::new(0),
        })
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
    pub fn put_index(&self, root: &[u8; 32], index: &Index) -> Result<(), BlobError> {
        let chunks = index.size.div_ceil(u64::from(index.chunk_size.max(1)));
        if root_of(&index.hashes) != *root
            || index.hashes.len() % 32 != 0
            || chunks != u64::from(index.chunks())
            || index.chunk_size == 0
        {
            return Err(BlobError::BadIndex);
        }
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
    pub fn put_chunk(&self, root: &[u8; 32], i: u32, data: &[u8]) -> Result<(), BlobError> {
        let index = self.index(root)?;
        if index_entry(&index.hashes, i) != Some(chunk_hash(data)) {
            return Err(BlobError::Corrupt { i });
        }
        let path = self.chunk_path(root, i);
        let old = std::fs::metadata(&path).map(|m| m.len()).ok();
        write_file(&path, data, false)?;
        self.used.fetch_add(data.len() as u64, Ordering::Relaxed);
        if let Some(old) = old {
            self.used.fetch_sub(old, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Reads chunk `i`, verifying it; a corrupt chunk is deleted and reported, never returned.
    pub fn get_chunk(&self, root: &[u8; 32], i: u32) -> Result<Vec<u8>, BlobError> {
        let index = self.index(root)?;
        let path = self.chunk_path(root, i);
        let mut data = Vec::new();
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut data)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::NotHeld),
            Err(e) => return Err(e.into()),
        }
        if index_entry(&index.hashes, i) != Some(chunk_hash(&data)) {
            self.drop_chunk(&path, data.len() as u64);
            return Err(BlobError::Corrupt { i });
        }
        Ok(data)
    }

    fn drop_chunk(&self, path: &Path, len: u64) {
        tracing::warn!(path = %path.display(), "corrupt chunk deleted; repair will fetch it again");
        self.corrupt_found.fetch_add(1, Ordering::Relaxed);
        if std::fs::remove_file(path).is_ok() {
            self.used.fetch_sub(len.min(self.used()), Ordering::Relaxed);
        }
    }

    /// Makes every chunk of `root` durable; fails unless all chunks are present.
    pub fn seal(&self, root: &[u8; 32]) -> Result<(), BlobError> {
        let index = self.index(root)?;
        let present = self.present(root);
        if present.len() != index.chunks() as usize {
            return Err(BlobError::NotHeld);
        }
        for i in present {
            std::fs::File::open(self.chunk_path(root, i))?.sync_all()?;
        }
        std::fs::File::open(self.blob_dir(root))?.sync_all()?;
        Ok(())
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

/// Answers a blob request from a peer.
pub fn handle_request(store: &BlobStore, req: BlobRequest) -> BlobResponse {
    let err = |e: BlobError| BlobResponse::Error {
        message: e.to_string(),
    };
    match req {
        BlobRequest::PutIndex {
            root,
            size,
            chunk_size,
            index,
            manifest: _,
        } => match store.put_index(
            &root,
            &Index {
                size,
                chunk_size,
                hashes: index,
            },
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
                owner: None,
            }
        }
    }
}

async fn ask(node: &Node, peer: PeerId, req: BlobRequest) -> Result<BlobResponse, String> {
    if peer == node.0.net.local_peer_id() {
        let store = node.blobs().clone();
        return tokio::task::spawn_blocking(move || handle_request(&store, req))
            .await
            .map_err(|e| e.to_string());
    }
    node.request_blob(peer, req.encode())
        .await
        .and_then(|b| BlobResponse::decode(&b).map_err(|e| e.to_string()))
}

/// Live storage nodes whose capacity could ever hold a blob of `size` bytes, in rendezvous
/// order for `root`, each with its offer's free bytes. Capacity does not change while a node
/// holds blobs, so this order is stable; free room is judged by [`intended_holders`].
pub fn placement(node: &Node, root: &[u8; 32], size: u64) -> Vec<(PeerId, u64)> {
    let candidates: Vec<(PeerId, u64)> = storage_offers(node, now_ms())
        .into_iter()
        .filter(|(_, capacity, _)| *capacity >= size)
        .map(|(p, _, free)| (p, free))
        .collect();
    let peers: Vec<PeerId> = candidates.iter().map(|(p, _)| *p).collect();
    rank(root, &peers)
        .into_iter()
        .filter_map(|p| candidates.iter().find(|(c, _)| *c == p).copied())
        .collect()
}

/// `peers` in rendezvous order for `root` (by the bytes of their peer ids), best first.
pub fn rank(root: &[u8; 32], peers: &[PeerId]) -> Vec<PeerId> {
    let keys: Vec<Vec<u8>> = peers.iter().map(|p| p.to_bytes()).collect();
    rendezvous(root, &keys)
        .into_iter()
        .filter_map(|k| PeerId::from_bytes(k).ok())
        .collect()
}

/// [`rank`] for peers known by their text ids (the CLI's and the tests' view); ids that do
/// not parse are left out.
pub fn rank_ids(root: &[u8; 32], peer_ids: &[&str]) -> Vec<String> {
    let peers: Vec<PeerId> = peer_ids.iter().filter_map(|s| s.parse().ok()).collect();
    rank(root, &peers).iter().map(ToString::to_string).collect()
}

/// Storage offers live at `at` (Unix ms): peer, capacity, free bytes.
fn storage_offers(node: &Node, at: u64) -> Vec<(PeerId, u64, u64)> {
    let filter = OfferFilter {
        kind: Some("storage".into()),
        ..OfferFilter::default()
    };
    offers::list(node, &filter, at)
        .iter()
        .filter_map(|o| {
            let p: PeerId = o.peer_id.parse().ok()?;
            Some((p, o.capacity_bytes.unwrap_or(0), o.free_bytes.unwrap_or(0)))
        })
        .collect()
}

/// The placement rule shared by [`put`] and repair: walking `order` (see [`placement`]), take
/// each node whose free room covers the part of the blob it does not hold yet (`held(peer)`
/// bytes; a node's free room already excludes what it holds), until `replicas` are taken.
///
/// `put` calls it with nothing held, so it skips nodes without room; repair calls it with what
/// a census found, so a node that filled up with this very blob stays intended, and a node put
/// skipped for lack of room is not intended later.
pub fn intended_holders(
    order: &[(PeerId, u64)],
    size: u64,
    replicas: usize,
    held: impl Fn(&PeerId) -> u64,
) -> Vec<PeerId> {
    order
        .iter()
        .filter(|(p, free)| free.saturating_add(held(p).min(size)) >= size)
        .take(replicas)
        .map(|(p, _)| *p)
        .collect()
}

/// Bytes of a blob that `chunks` of its chunks make up (the last chunk may be short).
fn held_bytes(chunks: u32, chunk_size: u32, size: u64) -> u64 {
    u64::from(chunks)
        .saturating_mul(u64::from(chunk_size))
        .min(size)
}

/// The live manifest of `root`, if any node published one we hold.
pub fn manifest(node: &Node, root: &[u8; 32]) -> Option<BlobManifest> {
    let prefix = format!("{}.", blob_label(root));
    let now = now_ms();
    node.read_store(|s| {
        s.mem()
            .iter()
            .filter(|(n, e)| n.starts_with(&prefix) && e.is_live(now))
            .filter_map(|(_, e)| e.record())
            .find_map(|r| match r.body.content {
                Content::BlobManifest(m) => Some(m),
                _ => None,
            })
    })
}

/// Every live manifest held (for repair).
pub fn manifests(node: &Node) -> Vec<BlobManifest> {
    let now = now_ms();
    let mut seen = BTreeSet::new();
    node.read_store(|s| {
        s.mem()
            .iter()
            .filter(|(n, e)| n.starts_with("_blob-") && e.is_live(now))
            .filter_map(|(_, e)| e.record())
            .filter_map(|r| match r.body.content {
                Content::BlobManifest(m) => Some(m),
                _ => None,
            })
            .filter(|m| seen.insert(m.root))
            .collect()
    })
}

/// Result of a put.
#[derive(Debug, serde::Serialize)]
pub struct PutResult {
    /// Root hash, hex.
    pub hash: String,
    /// Size in bytes.
    pub size: u64,
    /// Chunks.
    pub chunks: u32,
    /// Peers that acknowledged every chunk.
    pub holders: Vec<String>,
}

/// Reads chunk `i` of a local file.
fn read_file_chunk(path: &Path, index: &Index, i: u32) -> std::io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let offset = u64::from(i) * u64::from(index.chunk_size);
    f.seek(SeekFrom::Start(offset))?;
    let len = (index.size - offset).min(u64::from(index.chunk_size)) as usize;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)?;
    Ok(buf)
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
async fn ask_stored(node: &Node, peer: PeerId, req: BlobRequest) -> Result<(), String> {
    match ask(node, peer, req).await? {
        BlobResponse::Stored => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

/// Progress of a put on one holder: when a request last succeeded, failures since.
struct Progress {
    since: tokio::time::Instant,
    failures: u32,
}

impl Progress {
    fn new() -> Self {
        Self {
            since: tokio::time::Instant::now(),
            failures: 0,
        }
    }

    fn succeeded(&mut self) {
        self.since = tokio::time::Instant::now();
        self.failures = 0;
    }

    /// After a failure: how long to pause before trying again, or `None` once the holder has
    /// made no progress for [`PUT_STALL`].
    fn failed(&mut self) -> Option<Duration> {
        if self.since.elapsed() >= PUT_STALL {
            return None;
        }
        self.failures = self.failures.saturating_add(1);
        Some((PUT_RETRY_PAUSE * self.failures).min(PUT_RETRY_PAUSE_MAX))
    }
}

/// [`ask_stored`], tried again until it succeeds or the holder stalls.
async fn ask_stored_retrying(
    node: &Node,
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
                let Some(pause) = progress.failed() else {
                    return Err(format!("no progress for {PUT_STALL:?}; last error: {e}"));
                };
                tracing::debug!(%peer, %e, ?pause, "blob request failed; retrying");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

async fn read_chunk(path: &Path, index: &Index, i: u32) -> Result<Vec<u8>, String> {
    let (path, ix) = (path.to_owned(), index.clone());
    tokio::task::spawn_blocking(move || read_file_chunk(&path, &ix, i))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot read the upload: {e}"))
}

/// Reads chunk `i` of the upload and stores it on `peer` (one attempt).
async fn send_chunk(
    node: &Node,
    peer: PeerId,
    path: &Path,
    root: [u8; 32],
    index: &Index,
    i: u32,
) -> (u32, Result<(), String>) {
    let sent = match read_chunk(path, index, i).await {
        Ok(data) => ask_stored(node, peer, BlobRequest::PutChunk { root, i, data }).await,
        Err(e) => Err(e),
    };
    (i, sent)
}

/// Stores the whole blob on `peer` and seals it there: the index, then every chunk, then the
/// seal. Chunks go with up to [`PUT_PARALLEL_CHUNKS`] in flight; a chunk that fails is queued
/// again and halves the window, a success widens it by one, and the holder is given up once
/// it made no progress for [`PUT_STALL`]. Chunks in flight share one connection, so on a slow
/// or loaded link they all finish late together: fewer in flight is what lets each finish
/// within the request timeout.
async fn store_on(
    node: &Node,
    peer: PeerId,
    path: &Path,
    root: [u8; 32],
    index: &Index,
) -> Result<(), String> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut progress = Progress::new();
    ask_stored_retrying(node, peer, &mut progress, || BlobRequest::PutIndex {
        root,
        size: index.size,
        chunk_size: index.chunk_size,
        index: index.hashes.clone(),
        manifest: Vec::new(),
    })
    .await?;
    let mut queue: std::collections::VecDeque<u32> = (0..index.chunks()).collect();
    let mut window = PUT_PARALLEL_CHUNKS;
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < window {
            let Some(i) = queue.pop_front() else { break };
            in_flight.push(send_chunk(node, peer, path, root, index, i));
        }
        let Some((i, sent)) = in_flight.next().await else {
            break;
        };
        match sent {
            Ok(()) => {
                progress.succeeded();
                window = (window + 1).min(PUT_PARALLEL_CHUNKS);
            }
            Err(e) => {
                let Some(pause) = progress.failed() else {
                    return Err(format!("no progress for {PUT_STALL:?}; chunk {i}: {e}"));
                };
                tracing::debug!(%peer, i, %e, window, "chunk not stored; will resend");
                window = (window / 2).max(1);
                queue.push_back(i);
                tokio::time::sleep(pause).await;
            }
        }
    }
    ask_stored_retrying(node, peer, &mut progress, || BlobRequest::Seal { root })
        .await
        .map_err(|e| format!("seal: {e}"))
}

/// Distributes the file at `path` to `replicas` holders and publishes its manifest.
pub async fn put(
    node: &Node,
    key: &ZoneKey,
    path: &Path,
    replicas: usize,
) -> Result<PutResult, BlobError> {
    let p = path.to_owned();
    let index = tokio::task::spawn_blocking(move || index_file(&p, DEFAULT_CHUNK_BYTES))
        .await
        .map_err(|e| BlobError::Manifest(e.to_string()))??;
    let root = root_of(&index.hashes);
    // Every node with room, in order: the first `replicas` are the intended holders (the
    // same rule repair applies), the rest stand in for an intended holder that fails.
    let placed = placement(node, &root, index.size);
    let order = intended_holders(&placed, index.size, placed.len(), |_| 0);
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
        let results =
            futures::future::join_all(batch.iter().map(|&p| store_on(node, p, path, root, &index)))
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
    let m = BlobManifest {
        root,
        size: index.size,
        chunk_size: index.chunk_size,
        chunks: index.chunks(),
        replicas: replicas as u8,
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
    publish_manifest(node, record).await?;
    Ok(PutResult {
        hash: hex::encode(root),
        size: index.size,
        chunks: index.chunks(),
        holders: holders.iter().map(ToString::to_string).collect(),
    })
}

async fn publish_manifest(node: &Node, record: SignedRecord) -> Result<(), BlobError> {
    let r = node
        .publish(record, None)
        .await
        .map_err(|e| BlobError::Manifest(e.to_string()))?;
    if r.outcome.is_winner() {
        Ok(())
    } else {
        Err(BlobError::Manifest(format!(
            "manifest not applied: {}",
            r.outcome.kind()
        )))
    }
}

/// The index of `root`, from this node or any live storage node.
pub async fn fetch_index(node: &Node, root: &[u8; 32], size: u64) -> Result<Index, BlobError> {
    let store = node.blobs().clone();
    let r = *root;
    if let Ok(Ok(ix)) = tokio::task::spawn_blocking(move || store.index(&r)).await {
        return Ok(ix);
    }
    for (peer, _) in placement(node, root, size) {
        if let Ok(BlobResponse::Index {
            size,
            chunk_size,
            index,
        }) = ask(node, peer, BlobRequest::GetIndex { root: *root }).await
        {
            if root_of(&index) == *root {
                return Ok(Index {
                    size,
                    chunk_size,
                    hashes: index,
                });
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
/// it scans the offers) that has a good copy.
pub async fn fetch_chunk(
    node: &Node,
    root: &[u8; 32],
    index: &Index,
    i: u32,
    candidates: &[PeerId],
) -> Result<Vec<u8>, BlobError> {
    let want = index_entry(&index.hashes, i).ok_or(BlobError::BadIndex)?;
    let store = node.blobs().clone();
    let r = *root;
    if let Ok(Ok(data)) = tokio::task::spawn_blocking(move || store.get_chunk(&r, i)).await {
        return Ok(data);
    }
    let me = node.0.net.local_peer_id();
    let mut why = Vec::new();
    for &peer in candidates {
        if peer == me {
            continue;
        }
        match ask(node, peer, BlobRequest::GetChunk { root: *root, i }).await {
            Ok(BlobResponse::Chunk { data }) if chunk_hash(&data) == want => return Ok(data),
            Ok(BlobResponse::Chunk { .. }) => why.push(format!("{peer}: corrupt")),
            Ok(other) => why.push(format!("{peer}: {other:?}")),
            Err(e) => why.push(format!("{peer}: {e}")),
        }
    }
    Err(BlobError::Unavailable {
        i,
        why: why.join("; "),
    })
}

/// Which live storage nodes hold how many chunks of `root`.
pub async fn holders(node: &Node, root: &[u8; 32], size: u64) -> Vec<(PeerId, u32, u32)> {
    let mut out = Vec::new();
    for (peer, _) in placement(node, root, size) {
        if let Ok(BlobResponse::Holding { chunks, total, .. }) =
            ask(node, peer, BlobRequest::Has { root: *root }).await
        {
            if chunks > 0 {
                out.push((peer, chunks, total));
            }
        }
    }
    out
}

/// Makes sure this node holds every blob it is an intended holder of.
async fn repair_once(node: &Node) {
    let me = node.0.net.local_peer_id();
    for m in manifests(node) {
        repair_blob(node, me, &m).await;
    }
}

/// How many chunks of `root` this node holds, out of how many (0 of 0 without the index).
async fn local_holding(node: &Node, root: [u8; 32]) -> (u32, u32) {
    let store = node.blobs().clone();
    match tokio::task::spawn_blocking(move || handle_request(&store, BlobRequest::Has { root }))
        .await
    {
        Ok(BlobResponse::Holding { chunks, total, .. }) => (chunks, total),
        _ => (0, 0),
    }
}

/// Chunks of `m` that each other storage node holds, asked of every node whose storage offer
/// is live or lapsed less than [`CENSUS_GRACE_MS`] ago. A node that does not answer (dead,
/// unreachable) is left out: as far as repair knows, it holds nothing.
async fn census(node: &Node, me: PeerId, m: &BlobManifest) -> BTreeMap<PeerId, u32> {
    let since = now_ms().saturating_sub(CENSUS_GRACE_MS);
    let peers: Vec<PeerId> = storage_offers(node, since)
        .into_iter()
        .map(|(p, _, _)| p)
        .filter(|p| *p != me)
        .collect();
    let root = m.root;
    let answers = futures::future::join_all(
        peers
            .iter()
            .map(|&p| ask(node, p, BlobRequest::Has { root })),
    )
    .await;
    peers
        .into_iter()
        .zip(answers)
        .filter_map(|(p, a)| match a {
            Ok(BlobResponse::Holding { chunks, total, .. }) if total == m.chunks => {
                Some((p, chunks.min(total)))
            }
            _ => None,
        })
        .collect()
}

/// Pulls the chunks of `m` this node lacks if it is one of the blob's intended holders (the
/// rule [`put`] placed it by) and fewer than `K` complete copies are live.
async fn repair_blob(node: &Node, me: PeerId, m: &BlobManifest) {
    if m.chunks == 0 {
        // An empty blob has nothing to copy (and `Has` cannot tell "holds it" from "does not").
        return;
    }
    let (mine, total) = local_holding(node, m.root).await;
    if total == m.chunks && mine >= total {
        return;
    }
    let k = usize::from(m.replicas);
    let order = placement(node, &m.root, m.size);
    let my_bytes = held_bytes(mine, m.chunk_size, m.size);
    // What other nodes hold only makes them more eligible, which can push this node out of
    // the first K but never in: if it is not intended while they hold nothing, it is not
    // intended at all, and the census (one request per storage node) is skipped.
    let only_mine = |p: &PeerId| if *p == me { my_bytes } else { 0 };
    if !intended_holders(&order, m.size, k, only_mine).contains(&me) {
        return;
    }
    let held_by = census(node, me, m).await;
    let complete = held_by.values().filter(|c| **c >= m.chunks).count();
    let held = |p: &PeerId| {
        if *p == me {
            my_bytes
        } else {
            held_by
                .get(p)
                .map_or(0, |c| held_bytes(*c, m.chunk_size, m.size))
        }
    };
    if complete >= k || !intended_holders(&order, m.size, k, held).contains(&me) {
        return;
    }
    // Sources: complete holders first (the census just saw them), then the rest in order.
    let mut candidates: Vec<PeerId> = held_by
        .iter()
        .filter(|(_, c)| **c >= m.chunks)
        .map(|(p, _)| *p)
        .collect();
    candidates.extend(
        order
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| held_by.get(p).is_none_or(|c| *c < m.chunks)),
    );
    pull(node, m, &candidates, complete).await;
}

/// Fetches the index (if missing) and every missing chunk of `m` from `candidates`, then
/// seals the copy. A chunk no candidate can provide now ends this attempt; the next repair
/// round tries again.
async fn pull(node: &Node, m: &BlobManifest, candidates: &[PeerId], complete: usize) {
    let store = node.blobs().clone();
    let root = m.root;
    let have_index = tokio::task::spawn_blocking(move || store.index(&root).is_ok())
        .await
        .unwrap_or(false);
    if !have_index {
        match fetch_index(node, &m.root, m.size).await {
            Ok(ix) => {
                let store = node.blobs().clone();
                let stored = tokio::task::spawn_blocking(move || store.put_index(&root, &ix)).await;
                if !matches!(stored, Ok(Ok(()))) {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(%e, "repair: index unavailable");
                return;
            }
        }
    }
    let store = node.blobs().clone();
    let Ok((index, present)) = tokio::task::spawn_blocking(move || {
        store.index(&root).map(|ix| (ix, store.present(&root)))
    })
    .await
    .unwrap_or(Err(BlobError::NotHeld)) else {
        return;
    };
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

/// Scrub every `scrub` interval, repair every `repair` interval, forever.
pub async fn run_maintenance(node: Node, repair: Duration, scrub: Duration) {
    let mut repair_tick = tokio::time::interval(repair);
    repair_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scrub_tick = tokio::time::interval(scrub);
    scrub_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = repair_tick.tick() => repair_once(&node).await,
            _ = scrub_tick.tick() => {
                let store = node.blobs().clone();
                if let Ok(bad) = tokio::task::spawn_blocking(move || store.scrub()).await {
                    if bad > 0 {
                        tracing::warn!(bad, "scrub found corrupt chunks");
                        repair_once(&node).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    #[test]
    fn put_skips_a_node_without_room_and_repair_agrees_once_others_hold_copies() {
        let p = peers(4);
        // p[1] could hold the blob (capacity) but has only 3 MiB free.
        let at_put = vec![
            (p[0], 64 * MIB),
            (p[1], 3 * MIB),
            (p[2], 64 * MIB),
            (p[3], 64 * MIB),
        ];
        let put = intended_holders(&at_put, 4 * MIB, 3, |_| 0);
        assert_eq!(put, vec![p[0], p[2], p[3]]);
        // After the put the holders' free room shrank by the blob; a census finds their copies.
        let after = vec![
            (p[0], 60 * MIB),
            (p[1], 3 * MIB),
            (p[2], 60 * MIB),
            (p[3], 60 * MIB),
        ];
        let held = |q: &PeerId| if *q == p[1] { 0 } else { 4 * MIB };
        assert_eq!(intended_holders(&after, 4 * MIB, 3, held), put);
    }

    #[test]
    fn a_holder_that_its_copy_filled_up_stays_intended() {
        let p = peers(4);
        // Capacity 8 MiB each, a 6 MiB blob on p[0..3]: they have 2 MiB left after storing it,
        // less than the blob, yet they stay the holders and p[3] is not needed.
        let after = vec![
            (p[0], 2 * MIB),
            (p[1], 2 * MIB),
            (p[2], 2 * MIB),
            (p[3], 8 * MIB),
        ];
        let held = |q: &PeerId| if *q == p[3] { 0 } else { 6 * MIB };
        assert_eq!(intended_holders(&after, 6 * MIB, 3, held), p[..3].to_vec());
        // A holder that lost one chunk (scrub) needs room for that chunk only.
        let after = vec![
            (p[0], 2 * MIB),
            (p[1], 3 * MIB),
            (p[2], 2 * MIB),
            (p[3], 8 * MIB),
        ];
        let partial = |q: &PeerId| match q {
            q if *q == p[3] => 0,
            q if *q == p[1] => 5 * MIB,
            _ => 6 * MIB,
        };
        assert_eq!(
            intended_holders(&after, 6 * MIB, 3, partial),
            p[..3].to_vec()
        );
    }

    #[test]
    fn when_a_holder_is_gone_only_the_next_node_with_room_is_intended() {
        let p = peers(5);
        let order = vec![
            (p[0], 60 * MIB),
            (p[2], 60 * MIB),
            (p[3], 60 * MIB),
            (p[4], MIB),
        ];
        let held = |q: &PeerId| if *q == p[0] || *q == p[2] { 4 * MIB } else { 0 };
        // p[4] has no room, so p[3] (not p[4]) takes the lost copy.
        assert_eq!(
            intended_holders(&order, 4 * MIB, 3, held),
            vec![p[0], p[2], p[3]]
        );
    }

    #[test]
    fn held_bytes_counts_a_short_last_chunk_once() {
        assert_eq!(held_bytes(3, 1 << 20, 2_500_000), 2_500_000);
        assert_eq!(held_bytes(2, 1 << 20, 2_500_000), 2 << 20);
        assert_eq!(held_bytes(u32::MAX, u32::MAX, 10), 10);
    }
}
