//! Applying records to a replica's store, with signature checks paid once per record.
//!
//! Every replica of a run checks the same few signed records: 10,000 nodes receiving one
//! update would verify one signature 10,000 times (37 µs each in release), which is most of
//! the run's time and tells nothing new. Two modes:
//!
//! * [`VerifyMode::Full`] calls the protocol's own `Store::apply` / `Store::apply_batch`, which
//!   verify on every call, exactly as the node does.
//! * [`VerifyMode::Cached`] checks fields and signature once per distinct `(content hash,
//!   signature)` per run (the records a scenario signed before the run starts as one batch,
//!   [`Verifier::prefetch`]) (through the protocol's `validate_fields` and `verify_signature`),
//!   checks the time limits on every call (`validate_time`, they depend on the replica's
//!   clock), and then runs the protocol's `Store::apply_prepared` with the record prepared
//!   once per run as `Prepared::trusted` (what `Store::apply_verified` prepares on every call:
//!   the same merge path as `Store::apply`, minus the signature check).
//!   `tests/simulate_verify_cache.rs` checks it gives the same outcome and the same store as
//!   `Store::apply` on random sequences.
//!
//! Keeping the prepared record matters: preparing encodes and hashes the record and checks
//! its fields, which decompresses the zone key's curve point (a field square root); per apply
//! at every replica that was a third of a race sweep's time.

use dpin_protocol::merge::Outcome;
use dpin_protocol::store::{Cas, Prepared};
use dpin_protocol::{Freshness, MemStore, SignedRecord, Store};

use super::fasthash::FastMap;

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
    /// Records whose fields and signature passed, prepared once (`Prepared::trusted`).
    good: FastMap<([u8; 32], [u8; 64]), Prepared<'static>>,
    /// Signature verifications performed.
    pub verifications: u64,
}

impl Verifier {
    /// A verifier with an empty cache.
    pub fn new(mode: VerifyMode) -> Self {
        Self {
            mode,
            good: FastMap::default(),
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
        let prepared = match self.checked(record, hash) {
            Ok(p) => p,
            Err(e) => return Outcome::Invalid(e),
        };
        match store.apply_prepared(prepared, now_ms, freshness, Cas::from(expected_seq)) {
            Ok(o) => o,
            Err(never) => match never {},
        }
    }

    /// Checks the fields and signature of `record` (content hash `hash`) unless this run
    /// already did, as [`Verifier::apply_cached`] does before it applies.
    pub fn check_once(&mut self, record: &SignedRecord, hash: [u8; 32]) {
        let _ = self.checked(record, hash);
    }

    /// The record prepared once per run, checking fields and signature the first time.
    fn checked(
        &mut self,
        record: &SignedRecord,
        hash: [u8; 32],
    ) -> Result<&Prepared<'static>, dpin_protocol::ValidationError> {
        match self.good.entry((hash, record.signature)) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                self.verifications += 1;
                record
                    .validate_fields()
                    .and_then(|()| record.verify_signature())?;
                Ok(e.insert(Prepared::trusted(record.clone())))
            }
        }
    }

    /// Checks, as one batch signature verification, the fields and signatures of the records
    /// in `records` not checked yet, and keeps those that pass as checked (cached mode only;
    /// a no-op in full mode). The outcome of every later apply is the one it would have had
    /// without this call: the protocol's batch verification accepts exactly what single
    /// verification accepts (`dpin_protocol::signature`), a record with invalid fields is
    /// left out (it is refused for its fields when applied), and a batch that fails keeps
    /// nothing, so each of its records is then checked alone when it is first applied. A
    /// scenario signs its records up front: checking them together costs about half as much
    /// per signature as one by one.
    pub fn prefetch(&mut self, records: &[(&SignedRecord, [u8; 32])]) {
        if self.mode != VerifyMode::Cached {
            return;
        }
        let todo: Vec<(&SignedRecord, [u8; 32])> = records
            .iter()
            .filter(|(r, h)| {
                !self.good.contains_key(&(*h, r.signature)) && r.validate_fields().is_ok()
            })
            .copied()
            .collect();
        if todo.is_empty() {
            return;
        }
        let owned: Vec<SignedRecord> = todo.iter().map(|(r, _)| (*r).clone()).collect();
        self.verifications += owned.len() as u64;
        if !dpin_protocol::record::verify_batch(&owned) {
            return;
        }
        for (r, (_, h)) in owned.into_iter().zip(todo) {
            let key = (h, r.signature);
            self.good.entry(key).or_insert_with(|| Prepared::trusted(r));
        }
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
