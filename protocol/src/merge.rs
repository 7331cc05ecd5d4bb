//! The merge rule: the one place in dpin that decides which record wins.
//!
//! Every replica runs this at apply time, for records from writers, gossip and sync alike —
//! the lesson of the October-2025 outage was that checking "is my plan newer?" once, earlier,
//! somewhere else, is not enough. The rule is a total order on `(seq, content hash)`:
//!
//! * higher `seq` wins;
//! * equal `seq` and equal hash is the same record (duplicate, ignored);
//! * equal `seq` with a different hash is an equivocation: the writer signed two different
//!   records with one seq. The one with the greater blake3 hash of its canonical bytes wins on
//!   every replica, whatever the arrival order, and the event is reported as a conflict;
//! * lower `seq` than the floor (the highest seq ever accepted for the name) is stale.
//!
//! Because the order is total and the decision depends only on the floor, applying any set of
//! records in any order, any number of times, leaves every replica with the same winner
//! (commutative, associative, idempotent — see the property tests).

use crate::error::ValidationError;

/// What a replica remembers about a name for ordering purposes: the highest accepted
/// `(seq, hash)`. Survives expiry, tombstones and compaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Floor {
    /// Highest seq accepted.
    pub seq: u64,
    /// Content hash of the record accepted at that seq.
    pub hash: [u8; 32],
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

/// Decides whether `incoming` beats `floor`. Pure and total: the whole ordering of dpin.
pub fn decide(floor: Option<Floor>, incoming: Floor) -> Decision {
    let Some(have) = floor else {
        return Decision::Apply;
    };
    match incoming.seq.cmp(&have.seq) {
        std::cmp::Ordering::Greater => Decision::Apply,
        std::cmp::Ordering::Less => Decision::Stale,
        std::cmp::Ordering::Equal => match incoming.hash.cmp(&have.hash) {
            std::cmp::Ordering::Equal => Decision::Duplicate,
            std::cmp::Ordering::Greater => Decision::ApplyConflict,
            std::cmp::Ordering::Less => Decision::RejectConflict,
        },
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
    /// Refused: a compare-and-set precondition (`expected seq`) did not hold.
    CasMismatch {
        /// The seq the writer expected to replace.
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

    fn f(seq: u64, h: u8) -> Floor {
        Floor { seq, hash: [h; 32] }
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
    }
}
