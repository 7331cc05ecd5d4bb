//! Applying records to a replica's store, with signature checks paid once per record.
//!
//! Every replica of a run checks the same few signed records: 10,000 nodes receiving one
//! update would verify one signature 10,000 times (37 µs each in release), which is most of
//! the run's time and tells nothing new. Two modes:
//!
//! * [`VerifyMode::Full`] calls the protocol's own `Store::apply` / `Store::apply_batch`, which
//!   verify on every call, exactly as the node does.
//! * [`VerifyMode::Cached`] checks fields and signature once per distinct `(content hash,
//!   signature)` per run (through the protocol's `validate_fields` and `verify_signature`),
//!   checks the time limits on every call (`validate_time`, they depend on the replica's
//!   clock), and then runs the post-verification merge step below. That step mirrors the
//!   private `apply_validated` of `protocol/src/store.rs` line by line around the protocol's
//!   own `decide`, and `tests/simulate_verify_cache.rs` checks it gives the same outcome and
//!   the same store as `Store::apply` on random sequences. The core should expose an
//!   `apply_verified` entry point so this mirror can go (see the module map).

use std::collections::HashSet;

use dpin_protocol::merge::{decide, Decision, Floor, Outcome};
use dpin_protocol::{Entry, Freshness, MemStore, SignedRecord, Store};

/// How signatures are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// The protocol's `Store::apply`: a signature check on every apply, as in the node.
    Full,
    /// Fields and signature checked once per distinct record per run.
    Cached,
}

/// The record checker of one run.
pub struct Verifier {
    mode: VerifyMode,
    good: HashSet<([u8; 32], [u8; 64])>,
    /// Signature verifications performed.
    pub verifications: u64,
}

impl Verifier {
    /// A verifier with an empty cache.
    pub fn new(mode: VerifyMode) -> Self {
        Self {
            mode,
            good: HashSet::new(),
            verifications: 0,
        }
    }

    /// The mode in use.
    pub fn mode(&self) -> VerifyMode {
        self.mode
    }

    /// Applies `record` (whose content hash is `hash`) to `store` in the run's mode.
    pub fn apply(
        &mut self,
        store: &mut MemStore,
        record: &SignedRecord,
        hash: [u8; 32],
        now_ms: u64,
        freshness: Freshness,
        expected_seq: Option<u64>,
    ) -> Outcome {
        match self.mode {
            VerifyMode::Full => {
                self.verifications += 1;
                match store.apply(record, now_ms, freshness, expected_seq) {
                    Ok(o) => o,
                    Err(never) => match never {},
                }
            }
            VerifyMode::Cached => {
                self.apply_cached(store, record, hash, now_ms, freshness, expected_seq)
            }
        }
    }

    /// Applies `record` with the signature checked once per run, whatever the mode (the
    /// durable copy of a store uses this: the record was checked when the replica took it).
    pub fn apply_cached(
        &mut self,
        store: &mut MemStore,
        record: &SignedRecord,
        hash: [u8; 32],
        now_ms: u64,
        freshness: Freshness,
        expected_seq: Option<u64>,
    ) -> Outcome {
        if let Err(e) = record.validate_time(now_ms, freshness) {
            return Outcome::Invalid(e);
        }
        let key = (hash, record.signature);
        if !self.good.contains(&key) {
            self.verifications += 1;
            if let Err(e) = record
                .validate_fields()
                .and_then(|()| record.verify_signature())
            {
                return Outcome::Invalid(e);
            }
            self.good.insert(key);
        }
        apply_verified(store, record, hash, expected_seq, now_ms)
    }

    /// Applies a batch (anti-entropy), in the run's mode: `Store::apply_batch` (one batch
    /// signature check) or the cached path record by record.
    pub fn apply_batch(
        &mut self,
        store: &mut MemStore,
        records: &[(&SignedRecord, [u8; 32])],
        now_ms: u64,
    ) -> Vec<Outcome> {
        match self.mode {
            VerifyMode::Full => {
                self.verifications += records.len() as u64;
                let owned: Vec<SignedRecord> = records.iter().map(|(r, _)| (*r).clone()).collect();
                match store.apply_batch(&owned, now_ms, Freshness::Replicate) {
                    Ok(o) => o,
                    Err(never) => match never {},
                }
            }
            VerifyMode::Cached => records
                .iter()
                .map(|(r, h)| self.apply_cached(store, r, *h, now_ms, Freshness::Replicate, None))
                .collect(),
        }
    }
}

/// The merge step after validation, as in `protocol/src/store.rs::apply_validated` with the
/// signature already verified.
pub fn apply_verified(
    store: &mut MemStore,
    record: &SignedRecord,
    hash: [u8; 32],
    expected_seq: Option<u64>,
    now_ms: u64,
) -> Outcome {
    let name = record.name();
    let held_entry = store.entry(&name);
    let held = held_entry.map(|e| e.floor);
    let body_missing = held_entry.is_some_and(|e| e.bytes.is_none());
    let body_wanted =
        held_entry.is_some_and(|e| !e.is_past_retention(now_ms, store.retention_ms()));
    let incoming = Floor {
        seq: record.body.seq,
        hash,
    };
    let decision = decide(held, incoming);
    if let Some(expected) = expected_seq {
        let actual = held.map_or(0, |f| f.seq);
        if actual != expected && decision != Decision::Duplicate {
            return Outcome::CasMismatch { expected, actual };
        }
    }
    let have = held.map_or(0, |f| f.seq);
    match decision {
        Decision::Apply => {
            store.insert(&name, Entry::from_record(record));
            Outcome::Applied {
                previous_seq: held.map(|f| f.seq),
            }
        }
        Decision::ApplyConflict => {
            store.insert(&name, Entry::from_record(record));
            Outcome::Conflict {
                seq: incoming.seq,
                applied: true,
            }
        }
        Decision::RejectConflict => Outcome::Conflict {
            seq: incoming.seq,
            applied: false,
        },
        Decision::Stale => Outcome::Stale {
            have,
            got: incoming.seq,
        },
        Decision::Duplicate if body_missing && body_wanted => {
            store.insert(&name, Entry::from_record(record));
            Outcome::Restored
        }
        Decision::Duplicate => Outcome::Duplicate,
    }
}
