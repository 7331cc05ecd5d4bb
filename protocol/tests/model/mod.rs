//! The merge rule's model for the property and race tests: the total order
//! `(seq, live, content hash)` written out independently of `dpin_protocol::merge`, so the
//! tests compare the store with a second statement of the rule, not with itself.
//!
//! The names shadow the `(seq, hash)` model of `common` (glob-imported next to this one),
//! which predates the rule that a live record beats a tombstone at equal seq.

#![allow(dead_code)]

use std::collections::BTreeMap;

use dpin_protocol::merge::Rank;
use dpin_protocol::{Outcome, SignedRecord};

/// A record's place in the total order: seq, then live over tombstone, then content hash.
pub fn rank(r: &SignedRecord) -> Rank {
    Rank {
        seq: r.body.seq,
        live: !r.is_tombstone(),
        hash: r.content_hash(),
    }
}

/// The model winner per name: the max by [`rank`] over `records`.
pub fn model_winners<'a>(
    records: impl IntoIterator<Item = &'a SignedRecord>,
) -> BTreeMap<String, SignedRecord> {
    let mut best: BTreeMap<String, SignedRecord> = BTreeMap::new();
    for r in records {
        let name = r.name();
        match best.get(&name) {
            Some(have) if rank(have) >= rank(r) => {}
            _ => {
                best.insert(name, r.clone());
            }
        }
    }
    best
}

/// The outcome the merge rule must report for `r` given the model winner `have`.
pub fn expected_outcome(have: Option<&SignedRecord>, r: &SignedRecord) -> Outcome {
    let Some(have) = have else {
        return Outcome::Applied { previous_seq: None };
    };
    let seq = r.body.seq;
    match (seq.cmp(&have.body.seq), rank(r).cmp(&rank(have))) {
        (std::cmp::Ordering::Greater, _) => Outcome::Applied {
            previous_seq: Some(have.body.seq),
        },
        (std::cmp::Ordering::Less, _) => Outcome::Stale {
            have: have.body.seq,
            got: seq,
        },
        (std::cmp::Ordering::Equal, std::cmp::Ordering::Equal) => Outcome::Duplicate,
        (std::cmp::Ordering::Equal, ord) => Outcome::Conflict {
            seq,
            applied: ord == std::cmp::Ordering::Greater,
        },
    }
}
