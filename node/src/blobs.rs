//! Replicated blobs: the storage half of the network's offers, backed by real bytes.
//!
//! * [`BlobStore`] keeps chunks on disk under `DATA_DIR/blobs/<root hex>/`, each written to a
//!   temporary file, fsynced and renamed, so a holder that acknowledged a chunk has it even
//!   after SIGKILL. Every chunk is verified against the index when stored, when served and by
//!   the periodic scrub; a corrupt chunk is deleted (never served) and then re-fetched by
//!   repair.
//! * [`put`] cuts an uploaded file into chunks, picks `K` holders by rendezvous hashing over the
//!   live storage offers with room for it, stores the chunks there (the node itself included, if
//!   chosen), and only then publishes the signed manifest, which gossips like any record.
//! * [`fetch_chunk`] gets a chunk from this node or any holder, verifying it, and fails over to
//!   the next holder on error or corruption.
//! * [`run_maintenance`] scrubs and repairs: for every live manifest, the first `K` nodes of the
//!   rendezvous order over live storage offers are the intended holders; an intended holder
//!   that lacks chunks pulls them. When a holder dies its offer lapses, the order shifts by one,
//!   and only the newly intended node copies — one copy of repair traffic per lost replica.
//!
//! Bounds: chunk size (1 MiB), blob size ([`MAX_BLOB_BYTES`]), one upload distributes to its
//! holders with at most [`PUT_PARALLEL_CHUNKS`] chunks in flight per holder, repair handles one
//! blob at a time with chunks fetched one by one.

use std::collections::BTreeSet;
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

/// Live storage nodes in rendezvous order for `root`, each with its offer's free bytes.
pub fn placement(node: &Node, root: &[u8; 32], size: u64) -> Vec<(PeerId, u64)> {
    let filter = OfferFilter {
        kind: Some("storage".into()),
        ..OfferFilter::default()
    };
    let offers = offers::list(node, &filter, now_ms());
    let candidates: Vec<(Vec<u8>, PeerId, u64)> = offers
        .iter()
        .filter(|o| o.capacity_bytes.unwrap_or(0) >= size)
        .filter_map(|o| {
            let p: PeerId = o.peer_id.parse().ok()?;
            Some((p.to_bytes(), p, o.free_bytes.unwrap_or(0)))
        })
        .collect();
    let keys: Vec<&[u8]> = candidates.iter().map(|(k, _, _)| k.as_slice()).collect();
    rendezvous(root, &keys)
        .into_iter()
        .filter_map(|k| candidates.iter().find(|(b, _, _)| b.as_slice() == *k))
        .map(|(_, p, f)| (*p, *f))
        .collect()
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

async fn store_on(
    node: &Node,
    peer: PeerId,
    path: &Path,
    root: [u8; 32],
    index: &Index,
) -> Result<(), String> {
    let put_index = BlobRequest::PutIndex {
        root,
        size: index.size,
        chunk_size: index.chunk_size,
        index: index.hashes.clone(),
    };
    match ask(node, peer, put_index).await? {
        BlobResponse::Stored => {}
        other => return Err(format!("{other:?}")),
    }
    let chunks: Vec<u32> = (0..index.chunks()).collect();
    for group in chunks.chunks(PUT_PARALLEL_CHUNKS) {
        let mut tasks = Vec::new();
        for &i in group {
            let path = path.to_owned();
            let ix = index.clone();
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                let data = tokio::task::spawn_blocking(move || read_file_chunk(&path, &ix, i))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                match ask(&node, peer, BlobRequest::PutChunk { root, i, data }).await? {
                    BlobResponse::Stored => Ok(()),
                    other => Err(format!("chunk {i}: {other:?}")),
                }
            }));
        }
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
    }
    match ask(node, peer, BlobRequest::Seal { root }).await? {
        BlobResponse::Stored => Ok(()),
        other => Err(format!("seal: {other:?}")),
    }
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
    let order: Vec<PeerId> = placement(node, &root, index.size)
        .into_iter()
        .filter(|(_, free)| *free >= index.size)
        .map(|(p, _)| p)
        .collect();
    if order.len() < replicas {
        return Err(BlobError::InsufficientStorage {
            wanted: replicas,
            available: order.len(),
        });
    }
    // Try holders in rendezvous order until `replicas` of them acknowledged every chunk.
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
                Err(e) => tracing::warn!(peer = %p, %e, "holder refused a blob; trying the next"),
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
    let record = RecordBody {
        zone: key.zone(),
        label: blob_label(&root),
        seq: now.max(1),
        expires_at_ms: now + MANIFEST_TTL_MS,
        content: Content::BlobManifest(m),
    }
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
        if let Ok(BlobResponse::Holding { chunks, total }) =
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
        let order = placement(node, &m.root, m.size);
        let intended = order
            .iter()
            .take(usize::from(m.replicas))
            .any(|(p, _)| *p == me);
        if !intended {
            continue;
        }
        let candidates: Vec<PeerId> = order.iter().map(|(p, _)| *p).collect();
        let store = node.blobs().clone();
        let root = m.root;
        let have_index = tokio::task::spawn_blocking(move || store.index(&root).is_ok())
            .await
            .unwrap_or(false);
        if !have_index {
            match fetch_index(node, &m.root, m.size).await {
                Ok(ix) => {
                    let store = node.blobs().clone();
                    let r = m.root;
                    let stored =
                        tokio::task::spawn_blocking(move || store.put_index(&r, &ix)).await;
                    if !matches!(stored, Ok(Ok(()))) {
                        continue;
                    }
                }
                Err(e) => {
                    tracing::debug!(%e, "repair: index unavailable");
                    continue;
                }
            }
        }
        let store = node.blobs().clone();
        let r = m.root;
        let Ok((index, present)) =
            tokio::task::spawn_blocking(move || store.index(&r).map(|ix| (ix, store.present(&r))))
                .await
                .unwrap_or(Err(BlobError::NotHeld))
        else {
            continue;
        };
        let missing: Vec<u32> = (0..index.chunks())
            .filter(|i| !present.contains(i))
            .collect();
        if missing.is_empty() {
            continue;
        }
        tracing::info!(root = %hex::encode(m.root), missing = missing.len(), "repairing blob");
        for i in missing {
            match fetch_chunk(node, &m.root, &index, i, &candidates).await {
                Ok(data) => {
                    let store = node.blobs().clone();
                    let r = m.root;
                    let _ =
                        tokio::task::spawn_blocking(move || store.put_chunk(&r, i, &data)).await;
                }
                Err(e) => {
                    tracing::warn!(%e, "repair: chunk unavailable now; will retry");
                    break;
                }
            }
        }
        let store = node.blobs().clone();
        let r = m.root;
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.seal(&r)).await {
            tracing::debug!(%e, "repair: blob not complete yet");
        }
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
