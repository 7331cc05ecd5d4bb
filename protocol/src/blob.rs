//! Blobs: content addressing, deterministic placement and the wire messages nodes use to move
//! chunks. Sans-IO like the rest of the crate; the node does the disk and network work.
//!
//! A blob is cut into chunks of `chunk_size` bytes. Its *index* is the concatenation of the
//! blake3 hashes of the chunks and its *root* is `blake3(index)`. Anyone holding the root can
//! therefore verify the index, and through it every chunk, as the chunks stream in — a
//! two-level Merkle tree, chosen over blake3's internal tree (bao) to keep one codec and let
//! chunks be verified independently, in any order, from any holder.
//!
//! Placement is rendezvous (highest-random-weight) hashing of `(root, peer id)` over the live
//! storage offers: every node computes the same ordered holder list from the same offers, so
//! after a holder dies exactly the next node in that order repairs the blob — no coordination,
//! one copy of repair traffic per lost replica.
//!
//! Placement and repair planning live here as pure functions, generic over the peer id and
//! with every input passed in, so the node and the simulator plan alike and one candidate
//! filter serves put, holder admission, repair and collection:
//!
//! * [`placement`]: the storage candidates (from [`crate::offer::OfferView::storage`]) whose
//!   capacity could ever hold the blob, in rendezvous order;
//! * [`intended_holders`]: walking that order, the first `K` with room for what they lack;
//! * [`may_store`]: whether a node may accept a write for a blob (an intended holder, or one of
//!   the stand-ins a put moves on to when an intended holder fails);
//! * [`plan_repair`]: whether a node lacking a copy pulls one; [`is_surplus`]: whether a copy
//!   that is no longer intended may be collected.
//!
//! **Manifest authority.** A manifest's size, chunk size and chunk count must equal the
//! blob's own index, which the root authenticates ([`manifest_matches_index`]); placement is
//! computed only from those verified numbers, so a foreign manifest claiming 4 TiB cannot
//! move a blob. The copy count `K` is that of the manifest the blob's holders were first
//! written under: each holder binds the manifest that came with its first accepted write and
//! never rebinds, and a node deciding about a copy it lacks takes the zone most complete
//! holders vouch for ([`owner_by_vouches`]). A stranger publishing a manifest with
//! `replicas = 16` for someone else's root therefore changes neither where it lives nor how
//! many copies it gets, unless the stranger's own nodes hold most of its complete copies.

use std::collections::BTreeMap;

use crate::record::{BlobManifest, MAX_CHUNK_BYTES};

/// Default chunk size: 1 MiB.
pub const DEFAULT_CHUNK_BYTES: u32 = 1024 * 1024;
/// Largest encoded blob message: one maximal chunk plus framing, or a large index.
pub const MAX_BLOB_MESSAGE_BYTES: usize = MAX_CHUNK_BYTES as usize + 64 * 1024;

/// blake3 of one chunk.
pub fn chunk_hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// The root of an index (concatenated chunk hashes).
pub fn root_of(index: &[u8]) -> [u8; 32] {
    *blake3::hash(index).as_bytes()
}

/// The hash of chunk `i` in `index`, if present.
pub fn index_entry(index: &[u8], i: u32) -> Option<[u8; 32]> {
    let start = usize::try_from(i).ok()?.checked_mul(32)?;
    let slice = index.get(start..start.checked_add(32)?)?;
    slice.try_into().ok()
}

/// Orders `candidates` (peer ids as bytes) by rendezvous weight for `root`, best first.
pub fn rendezvous<'a, T: AsRef<[u8]>>(root: &[u8; 32], candidates: &'a [T]) -> Vec<&'a T> {
    let mut scored: Vec<([u8; 32], &T)> = candidates
        .iter()
        .map(|c| {
            let mut h = blake3::Hasher::new();
            h.update(root);
            h.update(c.as_ref());
            (*h.finalize().as_bytes(), c)
        })
        .collect();
    scored.sort_by_key(|s| std::cmp::Reverse(s.0));
    scored.into_iter().map(|(_, c)| c).collect()
}

/// A live storage offer as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageCandidate<P> {
    /// The offering node.
    pub peer: P,
    /// Bytes offered in total.
    pub capacity: u64,
    /// Bytes still free, as the offer says.
    pub free: u64,
}

/// The rendezvous weight of `key` (a peer id's bytes) for `root`; higher ranks first.
pub fn weight(root: &[u8; 32], key: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(root);
    h.update(key);
    *h.finalize().as_bytes()
}

/// The candidates whose capacity could ever hold a blob of `size` bytes, in rendezvous order
/// for `root` (by `key(peer)`, the bytes of its id), best first. Capacity does not change
/// while a node holds blobs, so this order is stable; free room is judged by
/// [`intended_holders`]. `size` must come from the blob's verified index, never from a claim.
pub fn placement<P: Clone>(
    root: &[u8; 32],
    size: u64,
    candidates: &[StorageCandidate<P>],
    key: impl Fn(&P) -> Vec<u8>,
) -> Vec<StorageCandidate<P>> {
    let mut scored: Vec<([u8; 32], &StorageCandidate<P>)> = candidates
        .iter()
        .filter(|c| c.capacity >= size)
        .map(|c| (weight(root, &key(&c.peer)), c))
        .collect();
    scored.sort_by_key(|s| std::cmp::Reverse(s.0));
    scored.into_iter().map(|(_, c)| c.clone()).collect()
}

/// The one placement rule shared by put, holder admission and repair: walking `order` (see
/// [`placement`]), take each node whose free room covers the part of the blob it does not
/// hold yet (`held(peer)` bytes; a node's free room already excludes what it holds), until
/// `replicas` are taken.
///
/// A put plans with nothing held, so it skips nodes without room; repair plans with what a
/// census found, so a node that filled up with this very blob stays intended, and a node put
/// skipped for lack of room is not intended later.
pub fn intended_holders<P: Clone>(
    order: &[StorageCandidate<P>],
    size: u64,
    replicas: usize,
    held: impl Fn(&P) -> u64,
) -> Vec<P> {
    order
        .iter()
        .filter(|c| c.free.saturating_add(held(&c.peer).min(size)) >= size)
        .take(replicas)
        .map(|c| c.peer.clone())
        .collect()
}

/// Nodes a put may try for a blob with `replicas` copies: the intended holders and then as
/// many stand-ins again (a put moves on to the next node in order when a holder fails).
pub fn put_standins(replicas: usize) -> usize {
    replicas.saturating_mul(2)
}

/// Whether `me` may accept a write (index, chunks) of a blob: it must be one of the first
/// [`put_standins`]`(replicas)` nodes with room in `order`, counting `mine` bytes it already
/// holds of the blob. This is the holder side of [`intended_holders`]; the stand-ins absorb a
/// put whose intended holder failed, and two nodes whose offer views differ slightly.
pub fn may_store<P: Clone + PartialEq>(
    order: &[StorageCandidate<P>],
    me: &P,
    size: u64,
    replicas: usize,
    mine: u64,
) -> bool {
    let held = |p: &P| if p == me { mine } else { 0 };
    intended_holders(order, size, put_standins(replicas), held).contains(me)
}

/// Bytes of a blob that `chunks` of its chunks make up (the last chunk may be short).
pub fn held_bytes(chunks: u32, chunk_size: u32, size: u64) -> u64 {
    u64::from(chunks)
        .saturating_mul(u64::from(chunk_size))
        .min(size)
}

/// Whether a manifest's claims equal the blob's verified index (`index` hashes to `root`,
/// which the caller checked, and describes `size` bytes in chunks of `chunk_size`).
pub fn manifest_matches_index(
    m: &BlobManifest,
    root: &[u8; 32],
    size: u64,
    chunk_size: u32,
    index_len: usize,
) -> bool {
    m.root == *root
        && m.size == size
        && m.chunk_size == chunk_size
        && usize::try_from(m.chunks)
            .ok()
            .and_then(|c| c.checked_mul(32))
            == Some(index_len)
}

/// The zone whose manifest decides a blob's copy count, from the zones its complete holders
/// vouch for (each holder the zone it was first written under), listed in the holders'
/// rendezvous order: the zone most holders vouch for; a tie goes to the zone of the
/// best-ranked holder among the tied. `None` without vouches.
pub fn owner_by_vouches<Z: Ord + Clone>(vouches: &[Z]) -> Option<Z> {
    let mut count: BTreeMap<&Z, (usize, usize)> = BTreeMap::new();
    for (rank, z) in vouches.iter().enumerate() {
        let e = count.entry(z).or_insert((0, rank));
        e.0 += 1;
    }
    count
        .into_iter()
        .max_by(|a, b| {
            (a.1 .0, std::cmp::Reverse(a.1 .1)).cmp(&(b.1 .0, std::cmp::Reverse(b.1 .1)))
        })
        .map(|(z, _)| z.clone())
}

/// What a node that may lack a copy of a blob should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepairPlan<P> {
    /// It holds a complete copy.
    Complete,
    /// It is not an intended holder; nothing to do.
    NotIntended,
    /// It could be intended: ask the storage nodes what they hold, then plan again.
    NeedCensus,
    /// `replicas` complete copies are live; nothing to do.
    Enough,
    /// Pull the missing chunks from `sources` (complete holders first, then the order).
    Pull {
        /// Nodes to fetch from, in order.
        sources: Vec<P>,
    },
}

/// One blob as repair sees it, with numbers from the verified manifest.
#[derive(Clone, Copy, Debug)]
pub struct BlobShape {
    /// Total size.
    pub size: u64,
    /// Chunk size.
    pub chunk_size: u32,
    /// Chunks.
    pub chunks: u32,
    /// Copies wanted (`K`).
    pub replicas: usize,
}

/// The repair decision for `me`, which holds `mine` chunks of the blob, given the placement
/// `order` and, once asked, the `census` (chunks each other storage node holds). What other
/// nodes hold only makes them more eligible, which can push `me` out of the first `K` but
/// never in, so without a census a node that is not intended while others hold nothing skips
/// the census altogether.
pub fn plan_repair<P: Clone + Ord>(
    me: &P,
    order: &[StorageCandidate<P>],
    blob: BlobShape,
    mine: u32,
    census: Option<&BTreeMap<P, u32>>,
) -> RepairPlan<P> {
    if blob.chunks == 0 || mine >= blob.chunks {
        return RepairPlan::Complete;
    }
    let my_bytes = held_bytes(mine, blob.chunk_size, blob.size);
    let Some(census) = census else {
        let only_mine = |p: &P| if p == me { my_bytes } else { 0 };
        return if intended_holders(order, blob.size, blob.replicas, only_mine).contains(me) {
            RepairPlan::NeedCensus
        } else {
            RepairPlan::NotIntended
        };
    };
    let complete = census.values().filter(|c| **c >= blob.chunks).count();
    let held = |p: &P| {
        if p == me {
            my_bytes
        } else {
            census
                .get(p)
                .map_or(0, |c| held_bytes(*c, blob.chunk_size, blob.size))
        }
    };
    if complete >= blob.replicas {
        return RepairPlan::Enough;
    }
    if !intended_holders(order, blob.size, blob.replicas, held).contains(me) {
        return RepairPlan::NotIntended;
    }
    let mut sources: Vec<P> = census
        .iter()
        .filter(|(p, c)| **c >= blob.chunks && *p != me)
        .map(|(p, _)| p.clone())
        .collect();
    sources.extend(
        order
            .iter()
            .map(|c| c.peer.clone())
            .filter(|p| p != me && census.get(p).is_none_or(|c| *c < blob.chunks)),
    );
    RepairPlan::Pull { sources }
}

/// Whether `me`'s copy is surplus and may be collected: `me` is not among the intended
/// holders given the census, and at least `K` intended holders other than `me` hold complete
/// copies. Deleting on a divergent view could lose data, so the census (what nodes answer
/// they hold now) must show the `K` copies elsewhere; the caller also waits a grace period.
pub fn is_surplus<P: Clone + Ord>(
    me: &P,
    order: &[StorageCandidate<P>],
    blob: BlobShape,
    census: &BTreeMap<P, u32>,
) -> bool {
    let held = |p: &P| {
        if p == me {
            blob.size
        } else {
            census
                .get(p)
                .map_or(0, |c| held_bytes(*c, blob.chunk_size, blob.size))
        }
    };
    let intended = intended_holders(order, blob.size, blob.replicas, held);
    if intended.contains(me) {
        return false;
    }
    let complete_intended = intended
        .iter()
        .filter(|p| census.get(*p).is_some_and(|c| *c >= blob.chunks))
        .count();
    blob.chunks > 0 && complete_intended >= blob.replicas
}

/// Node → node blob requests.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum BlobRequest {
    /// Store the index of blob `root` under `manifest`. The receiver checks
    /// `root_of(index) == root`, that `manifest` (an encoded [`crate::SignedRecord`]) is a
    /// valid signed manifest of this root whose claims match the index, that it is an
    /// intended holder ([`may_store`]) and that it has room within the capacity it offers.
    /// It binds the blob to the manifest's zone on its first accepted write.
    PutIndex {
        /// Root hash.
        root: [u8; 32],
        /// Total size.
        size: u64,
        /// Chunk size.
        chunk_size: u32,
        /// Concatenated chunk hashes.
        index: Vec<u8>,
        /// The signed manifest the blob is written under (encoded record).
        manifest: Vec<u8>,
    },
    /// Store chunk `i` (checked against the stored index, within the offered capacity).
    PutChunk {
        /// Root hash.
        root: [u8; 32],
        /// Chunk number.
        i: u32,
        /// Chunk bytes.
        data: Vec<u8>,
    },
    /// Send the index of `root`.
    GetIndex {
        /// Root hash.
        root: [u8; 32],
    },
    /// Send chunk `i` of `root`.
    GetChunk {
        /// Root hash.
        root: [u8; 32],
        /// Chunk number.
        i: u32,
    },
    /// How many chunks of `root` do you hold (verified)?
    Has {
        /// Root hash.
        root: [u8; 32],
    },
    /// Make every stored chunk of `root` durable (fsync) and confirm all are present. Chunks
    /// are written without a sync each; one seal per holder makes the whole blob durable
    /// before its manifest is published. Only a blob the receiver accepted a write for can be
    /// sealed, and only once: a repeated seal answers from a marker without syncing again.
    Seal {
        /// Root hash.
        root: [u8; 32],
    },
}

/// Answers to [`BlobRequest`].
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum BlobResponse {
    /// Stored durably.
    Stored,
    /// The index.
    Index {
        /// Total size.
        size: u64,
        /// Chunk size.
        chunk_size: u32,
        /// Concatenated chunk hashes.
        index: Vec<u8>,
    },
    /// A chunk.
    Chunk {
        /// Chunk bytes.
        data: Vec<u8>,
    },
    /// Chunks held out of the total.
    Holding {
        /// Verified chunks present.
        chunks: u32,
        /// Chunks in the blob (0 if the index is unknown).
        total: u32,
        /// The zone of the manifest this holder was first written under, if any (its vouch
        /// for the blob's owner, see [`owner_by_vouches`]).
        owner: Option<[u8; 32]>,
    },
    /// Refused or failed, with a reason.
    Error {
        /// What went wrong.
        message: String,
    },
}

crate::codec::limited_codec!(BlobRequest, MAX_BLOB_MESSAGE_BYTES);
crate::codec::limited_codec!(BlobResponse, MAX_BLOB_MESSAGE_BYTES);

/// Bytes of a [`BlobRequest::PutChunk`]'s encoding before its data: the variant (u32), the
/// root, the chunk number (u32) and the data's length (u64).
pub const PUT_CHUNK_HEADER_BYTES: usize = 4 + 32 + 4 + 8;
/// Bytes of a [`BlobResponse::Chunk`]'s encoding before its data: the variant (u32) and the
/// data's length (u64).
pub const CHUNK_HEADER_BYTES: usize = 4 + 8;

/// Variant numbers in the encoding (bincode numbers variants in declaration order).
const PUT_CHUNK_VARIANT: u32 = 1;
const CHUNK_VARIANT: u32 = 2;

/// The encoding of `BlobRequest::PutChunk { root, i, data }` up to its data, for `len` bytes
/// of data: followed by the data, it is exactly that request's [`BlobRequest::encode`].
///
/// Why: every chunk of a put crosses the uploader once per holder, and a holder serves every
/// chunk it is asked for. Built through `encode`, a 1 MiB chunk was copied into a fresh
/// buffer (and its pages faulted in) once more per message, about a tenth of the uploader's
/// CPU (`perf`, `deploy/blob-bench.sh`). With the header, the sender reads the chunk from
/// disk straight into the message; [`put_chunk_ref`] lets the receiver use the data where it
/// lies.
pub fn put_chunk_header(root: &[u8; 32], i: u32, len: usize) -> [u8; PUT_CHUNK_HEADER_BYTES] {
    let mut h = [0u8; PUT_CHUNK_HEADER_BYTES];
    h[..4].copy_from_slice(&PUT_CHUNK_VARIANT.to_le_bytes());
    h[4..36].copy_from_slice(root);
    h[36..40].copy_from_slice(&i.to_le_bytes());
    h[40..].copy_from_slice(&(len as u64).to_le_bytes());
    h
}

/// The encoding of `BlobResponse::Chunk { data }` up to its data, for `len` bytes of data
/// (see [`put_chunk_header`]).
pub fn chunk_header(len: usize) -> [u8; CHUNK_HEADER_BYTES] {
    let mut h = [0u8; CHUNK_HEADER_BYTES];
    h[..4].copy_from_slice(&CHUNK_VARIANT.to_le_bytes());
    h[4..].copy_from_slice(&(len as u64).to_le_bytes());
    h
}

/// A [`BlobRequest::PutChunk`] read where it lies (see [`put_chunk_ref`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutChunkRef<'a> {
    /// Root hash.
    pub root: [u8; 32],
    /// Chunk number.
    pub i: u32,
    /// Chunk bytes, borrowed from the message.
    pub data: &'a [u8],
}

/// Reads `bytes` as a `PutChunk` without copying its data: `Some` exactly when
/// [`BlobRequest::decode`] gives a `PutChunk`, with the same fields (the same size limit, no
/// trailing bytes); `None` for every other input, which the caller decodes as usual.
pub fn put_chunk_ref(bytes: &[u8]) -> Option<PutChunkRef<'_>> {
    if bytes.len() > MAX_BLOB_MESSAGE_BYTES {
        return None;
    }
    let (head, data) = bytes.split_at_checked(PUT_CHUNK_HEADER_BYTES)?;
    let root: [u8; 32] = head[4..36].try_into().ok()?;
    let i = u32::from_le_bytes(head[36..40].try_into().ok()?);
    (head == put_chunk_header(&root, i, data.len())).then_some(PutChunkRef { root, i, data })
}

/// Reads `bytes` as a `BlobResponse::Chunk` without copying its data: `Some(data)` exactly
/// when [`BlobResponse::decode`] gives a `Chunk` with that data (see [`put_chunk_ref`]).
pub fn chunk_ref(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.len() > MAX_BLOB_MESSAGE_BYTES {
        return None;
    }
    let (head, data) = bytes.split_at_checked(CHUNK_HEADER_BYTES)?;
    (head == chunk_header(data.len())).then_some(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_order_is_stable_when_a_candidate_leaves() {
        let root = [7u8; 32];
        let peers: Vec<Vec<u8>> = (0u8..8).map(|i| vec![i; 38]).collect();
        let full: Vec<Vec<u8>> = rendezvous(&root, &peers).into_iter().cloned().collect();
        // Remove the top holder: everyone else keeps their relative order, so the 4th in line
        // becomes the 3rd — exactly one node has to act.
        let rest: Vec<Vec<u8>> = full[1..].to_vec();
        let again: Vec<Vec<u8>> = rendezvous(&root, &rest).into_iter().cloned().collect();
        assert_eq!(again, rest);
    }

    #[test]
    fn index_entries_and_root_check_out() {
        let chunks = [b"abc".to_vec(), b"def".to_vec()];
        let index: Vec<u8> = chunks.iter().flat_map(|c| chunk_hash(c)).collect();
        assert_eq!(index_entry(&index, 1), Some(chunk_hash(b"def")));
        assert_eq!(index_entry(&index, 2), None);
        assert_ne!(root_of(&index), root_of(&index[..32]));
    }

    const MIB: u64 = 1 << 20;

    fn cand(peer: u32, capacity: u64, free: u64) -> StorageCandidate<u32> {
        StorageCandidate {
            peer,
            capacity,
            free,
        }
    }

    fn key(p: &u32) -> Vec<u8> {
        p.to_le_bytes().to_vec()
    }

    fn shape(size: u64, replicas: usize) -> BlobShape {
        BlobShape {
            size,
            chunk_size: MIB as u32,
            chunks: size.div_ceil(MIB) as u32,
            replicas,
        }
    }

    #[test]
    fn placement_leaves_out_nodes_whose_capacity_is_too_small_and_keeps_rendezvous_order() {
        let root = [3u8; 32];
        let cands: Vec<_> = (0..6)
            .map(|p| cand(p, if p == 2 { MIB } else { 64 * MIB }, 64 * MIB))
            .collect();
        let order = placement(&root, 4 * MIB, &cands, key);
        assert_eq!(order.len(), 5);
        assert!(order.iter().all(|c| c.peer != 2));
        let keys: Vec<Vec<u8>> = order.iter().map(|c| key(&c.peer)).collect();
        let ranked: Vec<Vec<u8>> = rendezvous(&root, &keys).into_iter().cloned().collect();
        assert_eq!(keys, ranked);
    }

    #[test]
    fn put_skips_a_node_without_room_and_repair_agrees_once_others_hold_copies() {
        let at_put = vec![
            cand(0, 64 * MIB, 64 * MIB),
            cand(1, 64 * MIB, 3 * MIB),
            cand(2, 64 * MIB, 64 * MIB),
            cand(3, 64 * MIB, 64 * MIB),
        ];
        let put = intended_holders(&at_put, 4 * MIB, 3, |_| 0);
        assert_eq!(put, vec![0, 2, 3]);
        let after = vec![
            cand(0, 64 * MIB, 60 * MIB),
            cand(1, 64 * MIB, 3 * MIB),
            cand(2, 64 * MIB, 60 * MIB),
            cand(3, 64 * MIB, 60 * MIB),
        ];
        let census: BTreeMap<u32, u32> = [(0, 4), (2, 4), (3, 4)].into_iter().collect();
        // Node 1 lacks the blob but is not intended: no census needed, nothing to pull.
        assert_eq!(
            plan_repair(&1, &after, shape(4 * MIB, 3), 0, None),
            RepairPlan::NotIntended
        );
        assert_eq!(
            plan_repair(&1, &after, shape(4 * MIB, 3), 0, Some(&census)),
            RepairPlan::Enough
        );
    }

    #[test]
    fn when_a_holder_is_gone_only_the_next_node_with_room_pulls() {
        let order = vec![
            cand(0, 64 * MIB, 60 * MIB),
            cand(2, 64 * MIB, 60 * MIB),
            cand(3, 64 * MIB, 60 * MIB),
            cand(4, 64 * MIB, MIB),
        ];
        let census: BTreeMap<u32, u32> = [(0, 4), (2, 4)].into_iter().collect();
        let b = shape(4 * MIB, 3);
        assert_eq!(plan_repair(&3, &order, b, 0, None), RepairPlan::NeedCensus);
        assert_eq!(
            plan_repair(&3, &order, b, 0, Some(&census)),
            RepairPlan::Pull {
                sources: vec![0, 2, 4]
            }
        );
        assert_eq!(plan_repair(&4, &order, b, 0, None), RepairPlan::NotIntended);
        assert_eq!(plan_repair(&0, &order, b, 4, None), RepairPlan::Complete);
    }

    #[test]
    fn a_copy_is_surplus_only_when_k_intended_holders_hold_it_completely() {
        let order = vec![
            cand(0, 64 * MIB, 60 * MIB),
            cand(1, 64 * MIB, 60 * MIB),
            cand(2, 64 * MIB, 60 * MIB),
            cand(3, 64 * MIB, 60 * MIB),
        ];
        let b = shape(4 * MIB, 3);
        let all: BTreeMap<u32, u32> = [(0, 4), (1, 4), (2, 4)].into_iter().collect();
        assert!(is_surplus(&3, &order, b, &all));
        assert!(
            !is_surplus(&0, &order, b, &all),
            "an intended holder is never surplus"
        );
        let partial: BTreeMap<u32, u32> = [(0, 4), (1, 2), (2, 4)].into_iter().collect();
        assert!(
            !is_surplus(&3, &order, b, &partial),
            "a partial intended copy does not count"
        );
    }

    #[test]
    fn holders_admit_writes_only_within_the_stand_ins() {
        let root = [9u8; 32];
        let cands: Vec<_> = (0..10).map(|p| cand(p, 64 * MIB, 64 * MIB)).collect();
        let order = placement(&root, 4 * MIB, &cands, key);
        let admitted: Vec<u32> = (0..10)
            .filter(|p| may_store(&order, p, 4 * MIB, 2, 0))
            .collect();
        assert_eq!(admitted.len(), put_standins(2));
        let first: Vec<u32> = order.iter().take(4).map(|c| c.peer).collect();
        assert_eq!(
            admitted
                .iter()
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            first.into_iter().collect()
        );
    }

    #[test]
    fn the_owner_is_the_zone_most_holders_vouch_for_ties_to_the_best_ranked() {
        assert_eq!(owner_by_vouches::<u8>(&[]), None);
        assert_eq!(owner_by_vouches(&[7u8, 9, 9]), Some(9));
        assert_eq!(owner_by_vouches(&[9u8, 7, 7, 9]), Some(9));
        assert_eq!(owner_by_vouches(&[1u8, 7]), Some(1));
    }

    #[test]
    fn manifest_claims_must_match_the_index() {
        let m = BlobManifest {
            root: [1; 32],
            size: 3 * MIB,
            chunk_size: MIB as u32,
            chunks: 3,
            replicas: 3,
        };
        assert!(manifest_matches_index(
            &m,
            &[1; 32],
            3 * MIB,
            MIB as u32,
            96
        ));
        let huge = BlobManifest {
            size: 4 << 40,
            chunks: 4 << 20,
            ..m.clone()
        };
        assert!(!manifest_matches_index(
            &huge,
            &[1; 32],
            3 * MIB,
            MIB as u32,
            96
        ));
        assert!(!manifest_matches_index(
            &m,
            &[2; 32],
            3 * MIB,
            MIB as u32,
            96
        ));
    }

    proptest::proptest! {
        /// Extra candidates that rank anywhere never reorder the others, and a node's
        /// admission agrees with put's plan: every node put would try first is admitted.
        #[test]
        fn put_plan_and_holder_admission_agree(
            frees in proptest::collection::vec(0u64..16, 1..24),
            size_mib in 1u64..8,
            k in 1usize..5,
            root in proptest::array::uniform32(0u8..),
        ) {
            let cands: Vec<_> = frees.iter().enumerate().map(|(i, f)| cand(i as u32, 16 * MIB, f * MIB)).collect();
            let size = size_mib * MIB;
            let order = placement(&root, size, &cands, key);
            let plan = intended_holders(&order, size, k, |_| 0);
            for p in &plan {
                proptest::prop_assert!(may_store(&order, p, size, k, 0));
            }
            // Repair with nothing held anywhere wants the same nodes put chose.
            let census = BTreeMap::new();
            for c in &order {
                let pulls = matches!(plan_repair(&c.peer, &order, shape(size, k), 0, Some(&census)), RepairPlan::Pull { .. });
                proptest::prop_assert_eq!(pulls, plan.contains(&c.peer));
            }
        }
    }

    #[test]
    fn blob_messages_round_trip_and_refuse_garbage() {
        let m = BlobRequest::PutChunk {
            root: [1; 32],
            i: 3,
            data: vec![9; 1000],
        };
        assert_eq!(BlobRequest::decode(&m.encode()), Ok(m));
        assert!(BlobRequest::decode(&[0xff; 10]).is_err());
        assert!(BlobResponse::decode(&vec![0; MAX_BLOB_MESSAGE_BYTES + 1]).is_err());
    }
}
