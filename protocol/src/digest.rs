//! Anti-entropy: find which names two stores disagree on while exchanging far less than the
//! stores themselves, then decide what to fetch and what to push.
//!
//! Every name falls into one of [`BUCKETS`] buckets by the first byte of `blake3(name)`. A
//! bucket's digest is the XOR of `blake3(name || seq || hash)` over its entries (those still
//! holding a body), so it is order-independent and updated in O(1) per write. The store digest
//! is `blake3` of the bucket digests.
//!
//! One sync round, driven by the node (or the simulator) over any transport:
//! 1. the initiator sends [`SyncRequest::Digest`] with its root and (truncated) bucket digests;
//! 2. the responder answers [`SyncResponse::InSync`], or lists its [`Summary`]s of the buckets
//!    that differ ([`answer_digest`]);
//! 3. the initiator runs [`plan_sync`] against its own store: names where the responder holds
//!    a winner it lacks are fetched ([`SyncRequest::Fetch`]), names where it holds the winner
//!    are pushed ([`SyncRequest::Push`]). Every record received still goes through the merge
//!    rule, so a lying or buggy peer can at worst waste bandwidth.
//!
//! All messages are bincode with a hard size limit ([`MAX_SYNC_MESSAGE_BYTES`]) and every list
//! is bounded, so a single round costs at most a few hundred KiB whatever the store size;
//! remaining differences are found in the next round.

use crate::merge::{decide, Decision, Floor};
use crate::store::Entry;
use crate::store::Store;

/// Number of digest buckets.
pub const BUCKETS: usize = 256;
/// Bytes of each bucket digest sent on the wire (64-bit truncation: a false match needs a
/// 2^-64 collision, and the next round would catch it after any further write).
pub const WIRE_BUCKET_BYTES: usize = 8;
/// Hard limit on an encoded sync message.
pub const MAX_SYNC_MESSAGE_BYTES: usize = 1024 * 1024;
/// Most summaries one digest answer lists.
pub const MAX_SUMMARIES: usize = 2048;
/// Most names one fetch asks for, and most records one push carries, *to a peer that may run
/// an older version* (64 × 4 KiB records = 256 KiB, well under the message limit). Releases
/// before budgeted chunks refuse a fetch or push over this count as malformed, so it is the
/// default of [`crate::sync::SessionConfig`]; a responder always answers at least this many of
/// the names asked (see [`answer_fetch`]).
pub const MAX_RECORDS_PER_MESSAGE: usize = 64;
/// Most names one budgeted fetch asks for, and most records one budgeted push carries: one
/// digest answer's worth. At most [`MAX_NAME_BYTES`] + 8 bytes a name, a fetch of this many
/// names stays under 300 KiB.
pub const MAX_RECORDS_PER_CHUNK: usize = MAX_SUMMARIES;
/// Byte budget of the records in one records answer or push beyond its first
/// [`MAX_RECORDS_PER_MESSAGE`] (encoded records, without framing). With typical records of
/// ~150 bytes one message carries ~1,700 records instead of 64, so a 10,000-record divergence
/// crosses in a handful of round trips; with 4 KiB records it is the same 64 as before. The
/// largest answer, 64 records of [`crate::MAX_RECORD_BYTES`] or this budget plus one record,
/// stays far under [`MAX_SYNC_MESSAGE_BYTES`], the limit every release decodes under.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Longest name a valid record can have: a label of at most [`crate::MAX_LABEL_LEN`] bytes
/// (reserved labels are shorter), a dot and a zone id. Summaries naming anything longer are
/// refused (no record could ever answer a fetch for them).
pub const MAX_NAME_BYTES: usize = crate::MAX_LABEL_LEN + 1 + crate::keys::ZONE_ID_TEXT_LEN;

/// The bucket a name belongs to.
///
/// Every lookup in a store asks for it; a name this thread asked for lately is answered from
/// a small memo ([`NameMemo`]) instead of hashing it again.
pub fn bucket_of(name: &str) -> u8 {
    NAME_MEMO.with_borrow_mut(|m| m.bucket_of(name))
}

/// The digest contribution of one entry.
///
/// The winner's kind (live or tombstone), which the merge rule ranks by at equal seq, is not
/// hashed in separately: the content hash covers the canonical bytes, kind included, so equal
/// `(name, seq, hash)` means the same record and the same kind on both sides. (Only entries
/// holding a body are in the digest, and a body's kind is read from the body itself.) Keeping
/// the formula also keeps digests comparable with nodes that predate the kind rule.
pub fn entry_digest(name: &str, floor: &Floor) -> [u8; 32] {
    NAME_MEMO.with_borrow_mut(|m| m.entry_digest(name, floor))
}

fn entry_digest_hashed(name: &str, floor: &Floor) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update(&floor.seq.to_le_bytes());
    h.update(&floor.hash);
    *h.finalize().as_bytes()
}

/// Slots of each table of [`NameMemo`].
const NAME_MEMO_SLOTS: usize = 256;

thread_local! {
    /// This thread's memo of name hashes ([`NameMemo`]).
    static NAME_MEMO: std::cell::RefCell<NameMemo> = std::cell::RefCell::new(NameMemo::default());
}

/// The buckets and entry digests this thread computed last, by exact input.
///
/// Both are pure functions of their input (a name; a name, seq and content hash). A store
/// computes a name's bucket at every lookup and write, and the entry digest of every record
/// it takes or replaces; in one process holding many replicas (the simulator) every replica
/// computes the same ones for the same records. A hit compares the input byte for byte, so it
/// returns exactly what hashing would; a miss hashes and replaces the slot. Direct-mapped,
/// fixed size (about 70 KiB per thread, no allocation after the first use); names longer
/// than [`MAX_NAME_BYTES`] (no valid record has one) are always hashed.
#[derive(Default)]
struct NameMemo {
    buckets: Vec<MemoName<u8>>,
    digests: Vec<MemoName<MemoDigest>>,
}

/// A memoised entry digest: the floor's seq and hash it was computed for, and the digest.
type MemoDigest = (u64, [u8; 32], [u8; 32]);

/// One memo slot: a name (its length, `usize::MAX` when empty, and bytes) and a value.
#[derive(Clone, Copy)]
struct MemoName<V> {
    len: usize,
    name: [u8; MAX_NAME_BYTES],
    value: V,
}

impl<V: Copy> MemoName<V> {
    fn empty(value: V) -> Self {
        Self {
            len: usize::MAX,
            name: [0; MAX_NAME_BYTES],
            value,
        }
    }

    fn holds(&self, name: &[u8]) -> bool {
        self.len == name.len() && self.name.get(..name.len()) == Some(name)
    }

    fn set(&mut self, name: &[u8], value: V) {
        if let Some(dst) = self.name.get_mut(..name.len()) {
            dst.copy_from_slice(name);
            self.len = name.len();
            self.value = value;
        }
    }
}

/// A slot index for `bytes` mixed with `salt` (FxHash's multiply-rotate over 8-byte words).
fn name_slot(bytes: &[u8], salt: u64) -> usize {
    let mut h = salt;
    for c in bytes.chunks(8) {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    (h >> 32) as usize % NAME_MEMO_SLOTS
}

impl NameMemo {
    fn bucket_of(&mut self, name: &str) -> u8 {
        let name = name.as_bytes();
        if name.len() > MAX_NAME_BYTES {
            return blake3::hash(name).as_bytes()[0];
        }
        if self.buckets.is_empty() {
            self.buckets = vec![MemoName::empty(0); NAME_MEMO_SLOTS];
        }
        let slot = &mut self.buckets[name_slot(name, 0)];
        if slot.holds(name) {
            return slot.value;
        }
        let b = blake3::hash(name).as_bytes()[0];
        slot.set(name, b);
        b
    }

    fn entry_digest(&mut self, name: &str, floor: &Floor) -> [u8; 32] {
        if name.len() > MAX_NAME_BYTES {
            return entry_digest_hashed(name, floor);
        }
        if self.digests.is_empty() {
            self.digests = vec![MemoName::empty((0, [0; 32], [0; 32])); NAME_MEMO_SLOTS];
        }
        let mut key = [0u8; 8];
        key.copy_from_slice(&floor.hash[..8]);
        let salt = u64::from_le_bytes(key) ^ floor.seq;
        let slot = &mut self.digests[name_slot(name.as_bytes(), salt)];
        let (seq, hash, digest) = slot.value;
        if slot.holds(name.as_bytes()) && seq == floor.seq && hash == floor.hash {
            return digest;
        }
        let d = entry_digest_hashed(name, floor);
        slot.set(name.as_bytes(), (floor.seq, floor.hash, d));
        d
    }
}

/// A store's digest: root plus per-bucket digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreDigest {
    /// blake3 over all bucket digests; equal roots mean equal stores.
    pub root: [u8; 32],
    /// Per-bucket XOR digests. Shared, so a copy of the digest (every sync request and answer
    /// asks the store for one) does not copy 8 KiB.
    pub buckets: std::sync::Arc<[[u8; 32]; BUCKETS]>,
}

impl StoreDigest {
    /// Builds the digest from bucket digests.
    ///
    /// The root is blake3 of the 256 bucket digests in order, hashed as one 8 KiB slice: the
    /// same bytes as one `update` per bucket (blake3 is a stream), but one call lets blake3
    /// compress its eight 1 KiB chunks in parallel (SIMD) instead of one 32-byte piece at a
    /// time. [`MemStore`](crate::MemStore) does not call it on every write: it keeps the root
    /// per chunk ([`RootTree`]), the same value.
    pub fn from_buckets(buckets: &[[u8; 32]; BUCKETS]) -> Self {
        StoreDigest {
            root: *blake3::hash(buckets.as_flattened()).as_bytes(),
            buckets: std::sync::Arc::new(*buckets),
        }
    }

    /// Root as lowercase hex (for status output).
    pub fn root_hex(&self) -> String {
        hex::encode(self.root)
    }

    /// Truncated bucket digests for the wire.
    pub fn wire_buckets(&self) -> Vec<u64> {
        self.buckets.iter().map(wire_bucket).collect()
    }

    /// Buckets whose truncated digest differs from `remote`'s (all of them if `remote` is
    /// malformed).
    pub fn differing_buckets(&self, remote: &[u64]) -> Vec<u8> {
        if remote.len() != BUCKETS {
            return (0..=255).collect();
        }
        (0..BUCKETS)
            .filter(|&i| wire_bucket(&self.buckets[i]) != remote[i])
            .map(|i| i as u8)
            .collect()
    }
}

/// Bucket digests per blake3 chunk (1 KiB): the root's 8 KiB input is 8 chunks.
const CHUNK_BUCKETS: usize = blake3::CHUNK_LEN / 32;
/// Chunks of the root's input.
const CHUNKS: usize = BUCKETS / CHUNK_BUCKETS;

/// The root of a store's digest, kept per blake3 chunk so that a write costs one chunk of
/// hashing at the next read instead of all eight.
///
/// blake3 hashes its input as a tree of 1 KiB chunks: the root of the 8 KiB of bucket
/// digests is the root node over eight chunk chaining values. This keeps those eight values,
/// marks the chunk of every bucket a write changes, and on the next read rehashes only the
/// marked chunks and the seven parent nodes above them ([`blake3::hazmat`]). The root is the
/// same value as [`StoreDigest::from_buckets`] (`blake3` of the 8 KiB, the value peers compare
/// on the wire, checked by `the_piecewise_root_is_blake3_of_the_buckets`). A write usually
/// changes one bucket, so a read after it hashes 1 KiB and 7 parents instead of 8 KiB: in a
/// race sweep the root was recomputed after almost every write and cost about a tenth of it.
/// All-zero chunks (a small store's empty buckets) take their value from a table computed
/// once per process, and a chunk or root this thread hashed lately is not hashed again
/// ([`Memo`]: replicas in one process share their hashing).
#[derive(Debug)]
pub struct RootTree {
    state: std::sync::Mutex<TreeState>,
}

#[derive(Clone, Copy, Debug)]
struct TreeState {
    /// Chaining value of each chunk, valid unless its bit is set in `stale`.
    cvs: [blake3::hazmat::ChainingValue; CHUNKS],
    stale: u8,
    /// The root, while no chunk is stale.
    root: Option<[u8; 32]>,
}

impl Default for RootTree {
    /// The tree of all-zero buckets (an empty store).
    fn default() -> Self {
        Self::from_state(TreeState {
            cvs: *zero_chunk_cvs(),
            stale: 0,
            root: None,
        })
    }
}

impl Clone for RootTree {
    fn clone(&self) -> Self {
        Self::from_state(*self.lock())
    }
}

impl RootTree {
    fn from_state(state: TreeState) -> Self {
        Self {
            state: std::sync::Mutex::new(state),
        }
    }

    /// A tree whose every chunk is recomputed at the next read (buckets changed wholesale).
    pub fn all_stale() -> Self {
        Self::from_state(TreeState {
            cvs: [[0; 32]; CHUNKS],
            stale: u8::MAX,
            root: None,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TreeState> {
        // Plain data that no holder leaves half written (nothing in `root` panics between
        // setting a value and clearing its stale mark), so a poisoned lock is still valid.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bucket `bucket` changed: its chunk is rehashed at the next read.
    pub fn touch(&mut self, bucket: u8) {
        let s = self
            .state
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.stale |= 1 << (usize::from(bucket) / CHUNK_BUCKETS);
        s.root = None;
    }

    /// The root over `buckets` (which must be the buckets every change since the last read
    /// was [`RootTree::touch`]ed for).
    pub fn root(&self, buckets: &[[u8; 32]; BUCKETS]) -> [u8; 32] {
        let mut s = self.lock();
        if let Some(r) = s.root {
            return r;
        }
        for c in 0..CHUNKS {
            if s.stale & (1 << c) == 0 {
                continue;
            }
            let chunk = buckets[c * CHUNK_BUCKETS..(c + 1) * CHUNK_BUCKETS].as_flattened();
            s.cvs[c] = if chunk == ZERO_CHUNK {
                zero_chunk_cvs()[c]
            } else {
                MEMO.with_borrow_mut(|m| m.chunk_cv(c, chunk))
            };
        }
        s.stale = 0;
        let cvs = s.cvs;
        let r = MEMO.with_borrow_mut(|m| m.root(&cvs));
        s.root = Some(r);
        r
    }
}

const ZERO_CHUNK: [u8; blake3::CHUNK_LEN] = [0; blake3::CHUNK_LEN];

/// Slots of [`Memo`]'s chunk table (each holds a 1 KiB chunk: 64 KiB per thread).
const MEMO_CHUNKS: usize = 64;
/// Slots of [`Memo`]'s root table.
const MEMO_ROOTS: usize = 64;

thread_local! {
    /// The hashing memo of this thread's stores ([`Memo`]).
    static MEMO: std::cell::RefCell<Memo> = std::cell::RefCell::new(Memo::default());
}

/// The chunks and roots this thread hashed last, by exact content.
///
/// A chunk's chaining value is a pure function of its position and its 1 KiB, and a root of
/// its eight chunk values; replicas of one network converge to the same buckets, so a process
/// holding many replicas (the simulator: 50 nodes of a race, each rehashing the chunk one
/// update changed) hashes each content once instead of once per replica. A memo hit is
/// checked byte for byte against the stored content, so it returns exactly what hashing
/// would; a miss hashes and replaces the slot. Direct-mapped and bounded (about 80 KiB per
/// thread). In a node, with one store, it rarely hits and costs a lookup per hash.
#[derive(Default)]
struct Memo {
    chunks: Vec<Option<MemoChunk>>,
    roots: Vec<Option<MemoRoot>>,
}

/// A memoised chunk: its position, its 1 KiB and its chaining value.
type MemoChunk = (
    usize,
    Box<[u8; blake3::CHUNK_LEN]>,
    blake3::hazmat::ChainingValue,
);
/// A memoised root: the eight chunk chaining values and the root over them.
type MemoRoot = ([blake3::hazmat::ChainingValue; CHUNKS], [u8; 32]);

/// A slot index from the first 8 bytes of each 32-byte piece of `bytes` (bucket digests and
/// chaining values are uniformly random), mixed with `salt`.
fn memo_slot(bytes: &[u8], salt: usize, slots: usize) -> usize {
    let mut h = salt as u64;
    for piece in bytes.chunks_exact(32) {
        let mut w = [0u8; 8];
        w.copy_from_slice(&piece[..8]);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    (h >> 32) as usize % slots
}

impl Memo {
    /// The chaining value of chunk `c` holding `chunk` (1 KiB).
    fn chunk_cv(&mut self, c: usize, chunk: &[u8]) -> blake3::hazmat::ChainingValue {
        if self.chunks.is_empty() {
            self.chunks.resize(MEMO_CHUNKS, None);
        }
        let i = memo_slot(chunk, c, MEMO_CHUNKS);
        if let Some((pos, content, cv)) = &self.chunks[i] {
            if *pos == c && content[..] == *chunk {
                return *cv;
            }
        }
        let cv = chunk_cv(c, chunk);
        let mut content = Box::new(ZERO_CHUNK);
        if content.len() == chunk.len() {
            content.copy_from_slice(chunk);
            self.chunks[i] = Some((c, content, cv));
        }
        cv
    }

    /// The root over eight chunk chaining values.
    fn root(&mut self, cvs: &[blake3::hazmat::ChainingValue; CHUNKS]) -> [u8; 32] {
        if self.roots.is_empty() {
            self.roots.resize(MEMO_ROOTS, None);
        }
        let i = memo_slot(cvs.as_flattened(), 0, MEMO_ROOTS);
        if let Some((key, root)) = &self.roots[i] {
            if key == cvs {
                return *root;
            }
        }
        let root = root_of(cvs);
        self.roots[i] = Some((*cvs, root));
        root
    }
}

/// Chaining value of chunk `c` of the root's input.
fn chunk_cv(c: usize, chunk: &[u8]) -> blake3::hazmat::ChainingValue {
    use blake3::hazmat::HasherExt;
    let mut h = blake3::Hasher::new();
    h.set_input_offset((c * blake3::CHUNK_LEN) as u64);
    h.update(chunk);
    h.finalize_non_root()
}

/// The root node over eight chunk chaining values (blake3's tree of an 8-chunk input: a
/// complete binary tree, parents merged pairwise, the top one as the root).
fn root_of(cvs: &[blake3::hazmat::ChainingValue; CHUNKS]) -> [u8; 32] {
    use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, Mode};
    let pair = |a, b| merge_subtrees_non_root(&cvs[a], &cvs[b], Mode::Hash);
    let left = merge_subtrees_non_root(&pair(0, 1), &pair(2, 3), Mode::Hash);
    let right = merge_subtrees_non_root(&pair(4, 5), &pair(6, 7), Mode::Hash);
    *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
}

/// Chaining values of all-zero chunks at each position, computed once per process.
fn zero_chunk_cvs() -> &'static [blake3::hazmat::ChainingValue; CHUNKS] {
    static CVS: std::sync::OnceLock<[blake3::hazmat::ChainingValue; CHUNKS]> =
        std::sync::OnceLock::new();
    CVS.get_or_init(|| {
        let zero = [0u8; blake3::CHUNK_LEN];
        std::array::from_fn(|c| chunk_cv(c, &zero))
    })
}

/// One bucket digest truncated for the wire (its first [`WIRE_BUCKET_BYTES`], little-endian).
fn wire_bucket(b: &[u8; 32]) -> u64 {
    let mut t = [0u8; WIRE_BUCKET_BYTES];
    t.copy_from_slice(&b[..WIRE_BUCKET_BYTES]);
    u64::from_le_bytes(t)
}

/// What a peer holds for one name: enough to decide who has the winner, except between two
/// different records of one seq, whose order depends on their kinds (a live record beats a
/// tombstone); [`plan_sync`] then moves both records and lets the merge rule on each side
/// choose. The kind is not on the wire, so the sync messages stay those of earlier releases.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Summary {
    /// Full name.
    pub name: String,
    /// Floor seq.
    pub seq: u64,
    /// Floor content hash.
    pub hash: [u8; 32],
}

/// Initiator → responder.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum SyncRequest {
    /// "Here is my digest; what differs?"
    Digest {
        /// Initiator's root.
        root: [u8; 32],
        /// Initiator's truncated bucket digests ([`BUCKETS`] of them).
        buckets: Vec<u64>,
    },
    /// "Send me these records."
    Fetch {
        /// Names (at most [`MAX_RECORDS_PER_MESSAGE`] to a peer that may run an older release,
        /// at most [`MAX_RECORDS_PER_CHUNK`] to one known to take budgeted chunks).
        names: Vec<String>,
    },
    /// "Here are records you lack or hold older versions of."
    Push {
        /// Encoded signed records (at most [`MAX_RECORDS_PER_MESSAGE`], or a [`chunk_len`]
        /// chunk of at most [`MAX_RECORDS_PER_CHUNK`] to a peer known to take them).
        records: Vec<Vec<u8>>,
    },
    /// Like [`SyncRequest::Digest`], continuing a truncated listing after `after` in `bucket`.
    DigestFrom {
        /// Initiator's root.
        root: [u8; 32],
        /// Initiator's truncated bucket digests.
        buckets: Vec<u64>,
        /// Bucket of the cursor.
        bucket: u8,
        /// Last name listed in the previous answer.
        after: String,
    },
}

/// Responder → initiator.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum SyncResponse {
    /// Roots are equal.
    InSync,
    /// Summaries of every entry in the buckets that differ.
    Summaries {
        /// The buckets covered; entries of these buckets missing from `summaries` are absent
        /// on the responder (unless `truncated`).
        buckets: Vec<u8>,
        /// The responder's entries in those buckets.
        summaries: Vec<Summary>,
        /// The list hit [`MAX_SUMMARIES`]; only the listed buckets' listed names are
        /// authoritative, so the initiator must not push "missing" names this round.
        truncated: bool,
    },
    /// Records answering a fetch.
    Records {
        /// Encoded signed records.
        records: Vec<Vec<u8>>,
    },
    /// How many pushed records were applied.
    PushAck {
        /// Records that changed the responder's store.
        applied: u32,
    },
    /// The request was malformed or over a limit.
    Error {
        /// Human-readable reason.
        message: String,
    },
}

crate::codec::limited_codec!(SyncRequest, MAX_SYNC_MESSAGE_BYTES);
crate::codec::limited_codec!(SyncResponse, MAX_SYNC_MESSAGE_BYTES);

/// The initiator's digest message, continuing after `cursor` if a previous answer was truncated.
pub fn digest_request_from<S: Store + ?Sized>(
    store: &S,
    cursor: Option<&(u8, String)>,
) -> SyncRequest {
    match cursor {
        None => digest_request(store),
        Some((bucket, after)) => {
            let d = store.digest();
            SyncRequest::DigestFrom {
                root: d.root,
                buckets: d.wire_buckets(),
                bucket: *bucket,
                after: after.clone(),
            }
        }
    }
}

/// The initiator's opening message.
pub fn digest_request<S: Store + ?Sized>(store: &S) -> SyncRequest {
    let d = store.digest();
    SyncRequest::Digest {
        root: d.root,
        buckets: d.wire_buckets(),
    }
}

/// The responder's answer to a digest: in sync, or its summaries of the differing buckets, in
/// (bucket, name) order, at most [`MAX_SUMMARIES`]. `after` is the initiator's cursor from a
/// previous truncated answer: listing resumes after that name in that bucket, so a bucket with
/// more entries than one answer can carry is walked to its end over several rounds. Buckets
/// are listed in ascending order starting at the cursor's bucket (wrapping past 255), which is
/// the order the initiator checks.
///
/// Work per request, whatever the request says (a peer may send whole-store digests in a
/// loop): one cached digest, one comparison of 256 bucket digests, and per listed bucket one
/// ordered walk from the cursor that stops after [`MAX_SUMMARIES`] + 1 entries with bodies
/// ([`Store::bucket_entries_after`]); the answer holds at most [`MAX_SUMMARIES`] summaries
/// (about 200 KiB). Body-less floors met on the walk are skipped without allocation. How
/// often a peer may ask is the driver's per-peer budget.
pub fn answer_digest<S: Store + ?Sized>(
    store: &S,
    root: &[u8; 32],
    buckets: &[u64],
    after: Option<(u8, &str)>,
) -> SyncResponse {
    let digest = store.digest();
    if &digest.root == root {
        return SyncResponse::InSync;
    }
    let differing = digest.differing_buckets(buckets);
    // Start at the cursor's bucket so every round makes progress past it.
    let start = after.map_or(0, |(b, _)| b);
    let order = differing
        .iter()
        .filter(|&&b| b >= start)
        .chain(differing.iter().filter(|&&b| b < start));
    let mut covered = Vec::new();
    let mut summaries = Vec::new();
    let mut truncated = false;
    for &b in order {
        let room = MAX_SUMMARIES - summaries.len();
        let from = match after {
            Some((ab, an)) if ab == b => Some(an),
            _ => None,
        };
        // One more than fits, to know whether the bucket was listed to its end.
        let entries: Vec<Summary> = store
            .bucket_entries_after(b, from, room.saturating_add(1))
            .into_iter()
            .map(|(n, e)| summary(n.into_owned(), e))
            .collect();
        if entries.len() > room {
            truncated = true;
            if room > 0 {
                summaries.extend(entries.into_iter().take(room));
                covered.push(b);
            }
            break;
        }
        summaries.extend(entries);
        covered.push(b);
    }
    SyncResponse::Summaries {
        buckets: covered,
        summaries,
        truncated,
    }
}

fn summary(name: String, e: &crate::store::Entry) -> Summary {
    Summary {
        name,
        seq: e.floor.seq,
        hash: e.floor.hash,
    }
}

/// What the initiator should do after reading the responder's summaries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncPlan {
    /// Names to fetch from the responder (it holds the winner).
    pub fetch: Vec<String>,
    /// Names to push to the responder (we hold the winner, or it lacks the name).
    pub push: Vec<String>,
    /// Cursor for the next round when the answer was truncated: (bucket, last name listed).
    pub next: Option<(u8, String)>,
}

/// Compares the responder's summaries of `buckets` with the local store. `after` is the cursor
/// the request carried and `truncated` comes from the answer: together they say which part of
/// the first and last bucket was listed, so only names in the listed range are pushed as
/// "missing there". `now_ms` keeps records past the store's body retention out of the plan (both
/// sides are dropping them).
pub fn plan_sync<S: Store + ?Sized>(
    local: &S,
    buckets: &[u8],
    remote: &[Summary],
    truncated: bool,
    after: Option<(u8, &str)>,
    now_ms: u64,
) -> SyncPlan {
    plan_sync_bounded(local, buckets, remote, truncated, after, now_ms, usize::MAX)
}

/// [`plan_sync`] with at most `max_push` names planned for pushing (the rest are found by a
/// later round). The session ([`crate::sync::Initiator`]) calls it with
/// [`crate::sync::MAX_PUSH_PER_ROUND`] on answers it has validated, so one answer can make
/// the initiator hold at most `MAX_SUMMARIES` fetch names plus `max_push` push names, and
/// walk each listed bucket of its own store once.
pub fn plan_sync_bounded<S: Store + ?Sized>(
    local: &S,
    buckets: &[u8],
    remote: &[Summary],
    truncated: bool,
    after: Option<(u8, &str)>,
    now_ms: u64,
    max_push: usize,
) -> SyncPlan {
    let mut plan = SyncPlan::default();
    let retention_ms = local.retention_ms();
    let mut seen = std::collections::BTreeSet::new();
    for s in remote {
        seen.insert(s.name.as_str());
        let theirs = Floor {
            seq: s.seq,
            hash: s.hash,
        };
        let mine = local.entry(&s.name);
        let pushable = |e: &Entry| e.bytes.is_some() && !e.is_compactable(now_ms, retention_ms);
        // The summary does not say whether their record is a tombstone, so rank it as live:
        // exact for every seq comparison and for duplicates, and for the one undecided case,
        // two different records at one seq, both are moved below.
        match decide(mine.map(Entry::rank), theirs.rank(true)) {
            Decision::Apply => plan.fetch.push(s.name.clone()),
            // Equal seq, different records: which one wins depends on their kinds. Fetch
            // theirs and push ours (once: afterwards both sides hold the same winner).
            Decision::ApplyConflict | Decision::RejectConflict => {
                plan.fetch.push(s.name.clone());
                if plan.push.len() < max_push && mine.is_some_and(pushable) {
                    plan.push.push(s.name.clone());
                }
            }
            Decision::Stale => {
                if plan.push.len() < max_push && mine.is_some_and(pushable) {
                    plan.push.push(s.name.clone());
                }
            }
            // Same winner, but only our floor is left (a damaged body, or compacted by a clock
            // that ran ahead): fetch the body back while it is still within retention.
            Decision::Duplicate => {
                if mine.is_some_and(|e| {
                    e.bytes.is_none() && !e.is_past_retention(now_ms, retention_ms)
                }) {
                    plan.fetch.push(s.name.clone());
                }
            }
        }
    }
    // With a truncated answer, the last covered bucket was listed only up to its last summary.
    let upper: Option<(u8, &str)> = if truncated {
        remote.last().map(|s| (bucket_of(&s.name), s.name.as_str()))
    } else {
        None
    };
    if truncated {
        plan.next = upper.map(|(b, n)| (b, n.to_owned()));
    }
    let last_bucket = buckets.last().copied();
    for &b in buckets {
        if plan.push.len() >= max_push {
            break;
        }
        for (name, e) in local.bucket_entries(b) {
            if plan.push.len() >= max_push {
                break;
            }
            let name: &str = &name;
            let below_cursor = matches!(after, Some((ab, an)) if ab == b && name <= an);
            let past_listing = truncated
                && Some(b) == last_bucket
                && match upper {
                    Some((ub, un)) => ub != b || name > un,
                    None => true,
                };
            if below_cursor || past_listing {
                continue;
            }
            if e.bytes.is_some() && !e.is_compactable(now_ms, retention_ms) && !seen.contains(name)
            {
                plan.push.push(name.to_owned());
            }
        }
    }
    plan
}

/// How many of `lens` (encoded record sizes, in order) one message carries: all of the first
/// [`MAX_RECORDS_PER_MESSAGE`] (what every release answers and accepts), then more while the
/// total stays within [`CHUNK_BYTES`], at most `cap` in all. The one chunking rule, used by
/// the responder for records answers and by the initiator for pushes.
pub fn chunk_len(lens: impl IntoIterator<Item = usize>, cap: usize) -> usize {
    let mut total = 0usize;
    let mut n = 0usize;
    for len in lens {
        if n >= cap {
            break;
        }
        total = total.saturating_add(len);
        if n >= MAX_RECORDS_PER_MESSAGE && total > CHUNK_BYTES {
            break;
        }
        n += 1;
    }
    n
}

/// Records the responder sends for a fetch, in the order asked, held bodies only: of the first
/// [`MAX_RECORDS_PER_CHUNK`] names, the records [`chunk_len`] lets into one message. A fetch of
/// at most [`MAX_RECORDS_PER_MESSAGE`] names (all an older initiator sends) is answered whole,
/// exactly as before; a larger fetch may be cut at the byte budget, and the initiator asks
/// again for the names after the last record it got ([`crate::sync::Initiator`]).
pub fn answer_fetch<S: Store + ?Sized>(store: &S, names: &[String]) -> SyncResponse {
    let mut records: Vec<Vec<u8>> = Vec::new();
    let mut total = 0usize;
    for n in names.iter().take(MAX_RECORDS_PER_CHUNK) {
        let Some(bytes) = store.entry(n).and_then(|e| e.bytes.as_deref()) else {
            continue;
        };
        total = total.saturating_add(bytes.len());
        if records.len() >= MAX_RECORDS_PER_MESSAGE && total > CHUNK_BYTES {
            break;
        }
        records.push(bytes.to_vec());
    }
    SyncResponse::Records { records }
}

/// Encoded records for the given names, in order, held bodies only, at most
/// [`MAX_RECORDS_PER_CHUNK`] (callers cut pushes with [`chunk_len`]).
pub fn records_for<S: Store + ?Sized>(store: &S, names: &[String]) -> Vec<Vec<u8>> {
    names
        .iter()
        .take(MAX_RECORDS_PER_CHUNK)
        .filter_map(|n| {
            store
                .entry(n)
                .and_then(|e| e.bytes.as_deref().map(<[u8]>::to_vec))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_blake3_of_the_bucket_digests_in_order() {
        let mut buckets = [[0u8; 32]; BUCKETS];
        for (i, b) in buckets.iter_mut().enumerate() {
            *b = *blake3::hash(&[i as u8]).as_bytes();
        }
        // The root as it was computed before (one update per bucket): digests of this and
        // older releases stay comparable.
        let mut h = blake3::Hasher::new();
        for b in &buckets {
            h.update(b);
        }
        let d = StoreDigest::from_buckets(&buckets);
        assert_eq!(d.root, *h.finalize().as_bytes());
        let mut remote = d.wire_buckets();
        assert!(d.differing_buckets(&remote).is_empty());
        remote[7] ^= 1;
        assert_eq!(d.differing_buckets(&remote), vec![7]);
        assert_eq!(d.differing_buckets(&remote[1..]).len(), BUCKETS);
    }

    /// Buckets and entry digests answered from the memo are the hashed ones, for names that
    /// share slots, names past the memo's length limit, and floors that differ in seq or hash
    /// only.
    #[test]
    fn memoised_buckets_and_entry_digests_are_the_hashed_ones() {
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let mut names: Vec<String> = (0..2000).map(|i| format!("n{i}.zone")).collect();
        names.push(long);
        names.push(String::new());
        for round in 0..2u8 {
            for (i, n) in names.iter().enumerate() {
                assert_eq!(
                    bucket_of(n),
                    blake3::hash(n.as_bytes()).as_bytes()[0],
                    "{n}"
                );
                for seq in [1, 2] {
                    let floor = Floor {
                        seq,
                        hash: *blake3::hash(&[(i % 3) as u8, round]).as_bytes(),
                    };
                    assert_eq!(entry_digest(n, &floor), entry_digest_hashed(n, &floor));
                }
            }
        }
    }

    /// The piecewise root equals blake3 of the 8 KiB (the value on the wire) after writes to
    /// one bucket, to several chunks, back to all zero, and for a tree built all stale.
    #[test]
    fn the_piecewise_root_is_blake3_of_the_buckets() {
        assert_eq!(CHUNKS, 8, "root_of merges exactly eight chunks");
        let mut buckets = [[0u8; 32]; BUCKETS];
        let mut tree = RootTree::default();
        let want = |b: &[[u8; 32]; BUCKETS]| *blake3::hash(b.as_flattened()).as_bytes();
        assert_eq!(tree.root(&buckets), want(&buckets));
        let writes: &[&[usize]] = &[
            &[0],
            &[31],
            &[32, 200],
            &[255],
            &[1, 40, 70, 100, 130, 160, 190, 220],
            &[],
        ];
        for (i, touched) in writes.iter().enumerate() {
            for &b in *touched {
                buckets[b] = *blake3::hash(&[i as u8, b as u8]).as_bytes();
                tree.touch(b as u8);
            }
            assert_eq!(tree.root(&buckets), want(&buckets), "write {i}");
            assert_eq!(tree.clone().root(&buckets), want(&buckets), "clone {i}");
        }
        // A chunk back to an earlier content (the memo's hit), then back to all zero (the zero
        // table).
        buckets[31] = [0; 32];
        tree.touch(31);
        assert_eq!(tree.root(&buckets), want(&buckets));
        let mut other = RootTree::all_stale();
        assert_eq!(
            other.root(&buckets),
            want(&buckets),
            "same content, other tree"
        );
        other.touch(3);
        assert_eq!(other.root(&buckets), want(&buckets));
        for (b, bucket) in buckets.iter_mut().enumerate() {
            if *bucket != [0; 32] {
                *bucket = [0; 32];
                tree.touch(b as u8);
            }
        }
        assert_eq!(tree.root(&buckets), want(&buckets));
        buckets[77] = [9; 32];
        assert_eq!(RootTree::all_stale().root(&buckets), want(&buckets));
        assert_eq!(
            StoreDigest::from_buckets(&buckets).root,
            RootTree::all_stale().root(&buckets)
        );
    }
}
