//! The merge rule: the one place in dpin that decides which record wins.
//!
//! Every replica runs this at apply time, for records from writers, gossip and sync alike —
//! the lesson of the October-2025 outage was that checking "is my plan newer?" once, earlier,
//! somewhere else, is not enough. The rule is a total order on [`Rank`], `(seq, live, hash)`:
//!
//! * higher `seq` wins;
//! * equal `seq` and equal hash is the same record (duplicate, ignored);
//! * equal `seq`, a live record (anything but a tombstone) and a tombstone: the live record
//!   wins, whatever the hashes;
//! * equal `seq`, two different records of the same kind: an equivocation. The one with the
//!   greater blake3 hash of its canonical bytes wins on every replica, whatever the arrival
//!   order;
//! * any equal-`seq` replacement is reported as a conflict (the writer signed two different
//!   records with one seq);
//! * lower `seq` than the floor (the highest seq ever accepted for the name) is stale.
//!
//! Why a live record beats a tombstone at equal seq: two writers that read the same seq `N`
//! both write `N + 1`, one a deletion (a clean-up) and one a new endpoint set. Both meant to
//! replace what they read; the write fulfils the deletion's intent too (the record it meant to
//! delete is gone), while the deletion would leave the name empty — the October-2025 outage
//! ended exactly so. Ordering them by hash made that a coin toss, on every replica alike.
//! The kind is part of the content, so it is a function of the hash: the rank adds no state
//! that could disagree between replicas holding the same record, and a body-less floor keeps
//! its kind (the store entry's `tombstone` flag) so the decision never needs the body.
//!
//! Because the order is total and the decision depends only on the held rank, applying any
//! set of records in any order, any number of times, leaves every replica with the same
//! winner (commutative, associative, idempotent — see the property tests).

use crate::error::ValidationError;
use crate::record::SignedRecord;

/// What a replica remembers about a name: the `(seq, hash)` of the winner it accepted.
/// Survives expiry, tombstones and compaction; with the winner's kind (the store entry keeps
/// it, see [`crate::store::Entry::rank`]) it is the name's [`Rank`].
///
/// Its own `Ord` is `(seq, hash)`, which is *not* the merge order between a live record and
/// a tombstone of one seq: compare [`Rank`]s to ask which record wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Floor {
    /// Highest seq accepted.
    pub seq: u64,
    /// Content hash of the record accepted at that seq.
    pub hash: [u8; 32],
}

impl Floor {
    /// The floor of `record`.
    pub fn of(record: &SignedRecord) -> Self {
        Floor {
            seq: record.body.seq,
            hash: record.content_hash(),
        }
    }

    /// This floor's rank when its record is `live` (not a tombstone).
    pub fn rank(self, live: bool) -> Rank {
        Rank {
            seq: self.seq,
            live,
            hash: self.hash,
        }
    }
}

/// The merge order's key: `(seq, live, hash)`, compared in that order (the derived `Ord` *is*
/// the merge rule). A greater rank wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rank {
    /// The record's seq.
    pub seq: u64,
    /// Whether the record is live (not a tombstone): at equal seq, live beats a tombstone.
    pub live: bool,
    /// Content hash of the record's canonical bytes: the tie-break within one kind.
    pub hash: [u8; 32],
}

impl Rank {
    /// The rank of `record`.
    pub fn of(record: &SignedRecord) -> Self {
        Floor::of(record).rank(!record.is_tombstone())
    }

    /// The rank of a record whose content hash is already known.
    pub fn with_hash(record: &SignedRecord, hash: [u8; 32]) -> Self {
        Rank {
            seq: record.body.seq,
            live: !record.is_tombstone(),
            hash,
        }
    }

    /// The `(seq, hash)` part.
    pub fn floor(self) -> Floor {
        Floor {
            seq: self.seq,
            hash: self.hash,
        }
    }
}

/// The decision for one incoming record against the current floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The incoming record wins; store it.
    Apply,
    /// The incoming record wins an equivocation tie-break; store it and count a conflict.
    ApplyConflict,
    /// Same record already held.
    Duplicate,
    /// Equal seq, different content, and the held record wins the tie-break.
    RejectConflict,
    /// Lower seq than the floor.
    Stale,
}

/// Decides whether `incoming` beats the `held` rank. Pure and total: the whole ordering of
/// dpin.
pub fn decide(held: Option<Rank>, incoming: Rank) -> Decision {
    let Some(have) = held else {
        return Decision::Apply;
    };
    match incoming.seq.cmp(&have.seq) {
        std::cmp::Ordering::Greater => Decision::Apply,
        std::cmp::Ordering::Less => Decision::Stale,
        // Same content, same record: its kind is part of the content, so a differing `live`
        // can only come from a damaged flag, and the record itself is the truth.
        std::cmp::Ordering::Equal if incoming.hash == have.hash => Decision::Duplicate,
        std::cmp::Ordering::Equal if incoming > have => Decision::ApplyConflict,
        std::cmp::Ordering::Equal => Decision::RejectConflict,
    }
}

/// The outcome of offering a record to a store, as reported to writers, peers and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stored as the new winner.
    Applied {
        /// The seq it replaced, if the name was known.
        previous_seq: Option<u64>,
    },
    /// Already held; nothing changed.
    Duplicate,
    /// Refused: the store already accepted a higher seq.
    Stale {
        /// The floor seq held.
        have: u64,
        /// The seq offered.
        got: u64,
    },
    /// Equivocation at `seq`: two different records with the same seq. `applied` says whether
    /// the offered record won the deterministic tie-break.
    Conflict {
        /// The contested seq.
        seq: u64,
        /// Whether the offered record is now the winner.
        applied: bool,
    },
    /// The store held only this record's floor (its body was damaged on disk or compacted
    /// early) and took the body back. Same winner as before; answers can be served again.
    Restored,
    /// Refused: the record failed validation.
    Invalid(ValidationError),
    /// Refused: a compare-and-set precondition (`expected seq`, or the expected winner's
    /// hash, see [`crate::store::Cas`]) did not hold.
    CasMismatch {
        /// The seq the writer expected to replace (for a hash precondition without one, the
        /// held seq: the record the writer named is not the winner, whatever its seq).
        expected: u64,
        /// The seq actually held (0 when the name is unknown).
        actual: u64,
    },
}

impl Outcome {
    /// Whether the offered record is now the stored winner.
    pub fn is_winner(&self) -> bool {
        matches!(
            self,
            Outcome::Applied { .. }
                | Outcome::Duplicate
                | Outcome::Restored
                | Outcome::Conflict { applied: true, .. }
        )
    }

    /// Whether the store changed (so the record should be forwarded and persisted).
    pub fn changed_store(&self) -> bool {
        matches!(
            self,
            Outcome::Applied { .. } | Outcome::Restored | Outcome::Conflict { applied: true, .. }
        )
    }

    /// A short machine-readable kind (`applied`, `duplicate`, `restored`, `stale`,
    /// `conflict`, `invalid`, `cas_mismatch`), used in API error bodies and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Applied { .. } => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Restored => "restored",
            Outcome::Stale { .. } => "stale",
            Outcome::Conflict { .. } => "conflict",
            Outcome::Invalid(_) => "invalid",
            Outcome::CasMismatch { .. } => "cas_mismatch",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(seq: u64, h: u8) -> Rank {
        Floor { seq, hash: [h; 32] }.rank(true)
    }

    fn t(seq: u64, h: u8) -> Rank {
        Floor { seq, hash: [h; 32] }.rank(false)
    }

    #[test]
    fn equal_seq_never_overwrites_a_greater_hash() {
        assert_eq!(decide(Some(f(3, 9)), f(3, 1)), Decision::RejectConflict);
        assert_eq!(decide(Some(f(3, 1)), f(3, 9)), Decision::ApplyConflict);
        assert_eq!(decide(Some(f(3, 1)), f(3, 1)), Decision::Duplicate);
    }

    #[test]
    fn lower_seq_is_stale_and_higher_applies() {
        assert_eq!(decide(Some(f(5, 0)), f(4, 255)), Decision::Stale);
        assert_eq!(decide(Some(f(5, 255)), f(6, 0)), Decision::Apply);
        assert_eq!(decide(None, f(1, 0)), Decision::Apply);
        assert_eq!(decide(Some(f(5, 0)), t(4, 255)), Decision::Stale);
        assert_eq!(decide(Some(t(5, 255)), f(4, 255)), Decision::Stale);
    }

    #[test]
    fn at_equal_seq_a_live_record_beats_a_tombstone_whatever_the_hashes() {
        assert_eq!(decide(Some(t(3, 9)), f(3, 1)), Decision::ApplyConflict);
        assert_eq!(decide(Some(f(3, 1)), t(3, 9)), Decision::RejectConflict);
        // Two tombstones of one seq still order by hash.
        assert_eq!(decide(Some(t(3, 1)), t(3, 9)), Decision::ApplyConflict);
        assert_eq!(decide(Some(t(3, 9)), t(3, 1)), Decision::RejectConflict);
        // A higher-seq tombstone still deletes.
        assert_eq!(decide(Some(f(3, 255)), t(4, 0)), Decision::Apply);
    }
}
