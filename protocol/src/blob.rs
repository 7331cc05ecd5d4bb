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

use crate::record::MAX_CHUNK_BYTES;

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

/// Node → node blob requests.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum BlobRequest {
    /// Store the index of blob `root` (the receiver checks `root_of(index) == root`).
    PutIndex {
        /// Root hash.
        root: [u8; 32],
        /// Total size.
        size: u64,
        /// Chunk size.
        chunk_size: u32,
        /// Concatenated chunk hashes.
        index: Vec<u8>,
    },
    /// Store chunk `i` (checked against the stored index).
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
    /// before its manifest is published.
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
    },
    /// Refused or failed, with a reason.
    Error {
        /// What went wrong.
        message: String,
    },
}

crate::codec::limited_codec!(BlobRequest, MAX_BLOB_MESSAGE_BYTES);
crate::codec::limited_codec!(BlobResponse, MAX_BLOB_MESSAGE_BYTES);

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
