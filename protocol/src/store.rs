//! The store abstraction and its in-memory implementation.
//!
//! A store keeps, per name, an [`Entry`]: the floor (highest `(seq, hash)` ever accepted) and,
//! unless compacted, the winning record's wire bytes. The floor is what makes dpin race-proof
//! over time: expiry hides a record from answers and compaction may drop an old body, but
//! neither lowers the floor, so a replayed or delayed older record is refused forever
//! (implementations that persist must persist the floor too).
//!
//! [`Store`] has a handful of required methods (lookup, durable put, bucket listing, digest)
//! and provides the logic — [`Store::apply`], [`Store::apply_batch`], [`Store::compact`],
//! [`Store::resolve`] — so the node's durable store and the simulator's in-memory stores run
//! exactly the same rules. [`MemStore`] keeps bodies as encoded bytes (memory ≈ encoded size
//! plus a small fixed overhead) and maintains the anti-entropy digest incrementally.
//!
//! An apply encodes the record once and hashes it once ([`Prepared`]); a caller that holds the
//! store behind a lock prepares and verifies the record first and merges it with
//! [`Store::apply_prepared`], so only the merge itself runs under the lock.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::convert::Infallible;

use crate::digest::{bucket_of, entry_digest, StoreDigest, BUCKETS};
use crate::error::{AdmissionError, ValidationError};
use crate::merge::{decide, Decision, Floor, Outcome, Rank};
use crate::record::{verify_batch_canonical, Freshness, SignedRecord};
use crate::{MAX_CLOCK_SKEW_MS, MAX_NODE_CLOCK_SKEW_MS, MAX_TTL_MS};

/// Slack on top of the other terms of [`DEFAULT_BODY_RETENTION_MS`]: every replica has seen a
/// record's expiry for a day before anyone may compact it, so peers do not keep re-sending
/// bodies the other side already dropped.
pub const COMPACTION_GRACE_MS: u64 = 24 * 3600 * 1000;

/// How long after its expiry the winning record's body (its signed bytes) is kept before
/// compaction may drop it; the floor is kept forever either way.
///
/// Why this long: the body is the only form in which a floor can travel — a bare floor is not
/// signed, so a node cannot take one from a peer without letting any peer freeze any name. As
/// long as an *older* record of the same name could still be live somewhere, the newer
/// winner must keep travelling in anti-entropy, so that a replica that missed it (partitioned,
/// newly joined, or with a replaced data dir) refuses the older one. An older record was
/// signed no later than the newer one, and the newer one no later than its own expiry, so the
/// older one expires at most [`MAX_TTL_MS`] plus the clock-skew allowances after the newer
/// one does. Keeping the body that long past expiry, plus [`COMPACTION_GRACE_MS`], means that
/// by the time any node compacts a winner, every record it beat has expired everywhere, and a
/// late replay of one can never be served. It also means a node whose clock runs ahead can
/// compact early only by more than a month, far beyond any allowance; if that happens, the
/// body comes back by itself (a duplicate of a body-less floor restores it, see
/// [`Outcome::Restored`]) once the clock is corrected.
pub const DEFAULT_BODY_RETENTION_MS: u64 =
    MAX_TTL_MS + MAX_CLOCK_SKEW_MS + MAX_NODE_CLOCK_SKEW_MS + COMPACTION_GRACE_MS;

/// Admission quotas of a store. Only a *new name* can be refused; an update of a name already
/// held always merges (it adds no name, and at most [`crate::MAX_RECORD_BYTES`] of body), and
/// nothing held — least of all a live name's winner — is ever evicted to make room. Zones
/// cost nothing to create, so without a quota anyone can grow every node without bound.
///
/// Three thresholds, checked in this order for a new name:
/// * the name's zone holds [`Quota::max_names_per_zone`] names or
///   [`Quota::max_bytes_per_zone`] bytes: refused ([`AdmissionError::ZoneFull`]);
/// * the zone is new to this store and the store is at `1 − 1/`[`Quota::new_zone_reserve`] of
///   either store limit: refused ([`AdmissionError::NewZone`]; an API answers 507). The last
///   share is kept for zones already held, so a flood of fresh zones cannot lock out the
///   store's existing writers;
/// * the store holds [`Quota::max_names`] names or [`Quota::max_bytes`] bytes: refused
///   ([`AdmissionError::StoreFull`]).
///
/// Bytes are a name's length plus its body's encoded length (0 once compacted). Compacted
/// floors count as names: they are kept forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Most names held (floors included).
    pub max_names: usize,
    /// Most bytes held (names plus bodies).
    pub max_bytes: u64,
    /// Most names one zone may hold.
    pub max_names_per_zone: usize,
    /// Most bytes one zone may hold.
    pub max_bytes_per_zone: u64,
    /// New zones are refused once the store is within `1/new_zone_reserve` of a limit
    /// (0 or 1: no reserve).
    pub new_zone_reserve: u32,
}

/// Default store quota: 1 000 000 names and 1 GiB of names and bodies.
///
/// Memory of a store at its quota: bodies and names at most `max_bytes` (1 GiB), plus about
/// 200 bytes of index per name (map node, entry, per-zone counter; about 200 MB for 1 M
/// names), so about 1.2 GiB; the node's redb file holds the same entries with a 42-byte
/// header each, about 1.1 GiB plus redb's own overhead. Updates of held names may add at
/// most `MAX_RECORD_BYTES` each on top of `max_bytes` (bounded by `max_names × 4 KiB`).
pub const DEFAULT_QUOTA: Quota = Quota {
    max_names: 1_000_000,
    max_bytes: 1 << 30,
    max_names_per_zone: 100_000,
    max_bytes_per_zone: 64 << 20,
    new_zone_reserve: 16,
};

impl Default for Quota {
    fn default() -> Self {
        DEFAULT_QUOTA
    }
}

impl Quota {
    /// No limit at all (the simulator and tests that measure other things).
    pub const UNLIMITED: Quota = Quota {
        max_names: usize::MAX,
        max_bytes: u64::MAX,
        max_names_per_zone: usize::MAX,
        max_bytes_per_zone: u64::MAX,
        new_zone_reserve: 0,
    };

    /// Whether a new name of `bytes` bytes may join, given the store's and its zone's usage
    /// (`zone` is `None` if the store holds nothing of the zone).
    pub fn admit(
        &self,
        store: Usage,
        zone: Option<Usage>,
        bytes: u64,
    ) -> Result<(), AdmissionError> {
        let z = zone.unwrap_or_default();
        if z.names >= self.max_names_per_zone
            || z.bytes.saturating_add(bytes) > self.max_bytes_per_zone
        {
            return Err(AdmissionError::ZoneFull {
                names: z.names,
                bytes: z.bytes,
            });
        }
        let after = store.bytes.saturating_add(bytes);
        if zone.is_none() && self.new_zone_reserve > 1 {
            let r = self.new_zone_reserve;
            let names_cap = self.max_names - self.max_names / r as usize;
            let bytes_cap = self.max_bytes - self.max_bytes / u64::from(r);
            if store.names >= names_cap || after > bytes_cap {
                return Err(AdmissionError::NewZone {
                    names: store.names,
                    bytes: store.bytes,
                });
            }
        }
        if store.names >= self.max_names || after > self.max_bytes {
            return Err(AdmissionError::StoreFull {
                names: store.names,
                bytes: store.bytes,
            });
        }
        Ok(())
    }
}

/// Names and bytes held (a whole store or one zone), as [`Quota`] counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Names (floors included).
    pub names: usize,
    /// Name bytes plus body bytes.
    pub bytes: u64,
}

/// The zone part of a name (`label.zone`: labels have no dot).
pub fn zone_of(name: &str) -> &str {
    name.split_once('.').map_or(name, |(_, z)| z)
}

fn entry_bytes(name: &str, entry: &Entry) -> u64 {
    (name.len() + entry.bytes.as_ref().map_or(0, |b| b.len())) as u64
}

/// Compare-and-set preconditions a writer attaches to a record, checked against what the
/// store holds *before* the record is merged (and atomically with the merge: both run under
/// the caller's `&mut`). A retry of a write that already won — the very same record is held —
/// is a duplicate whatever the preconditions say, so a client that retries after a timeout is
/// told the truth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cas {
    /// Apply only if the held seq is this (0 = name unknown).
    pub seq: Option<u64>,
    /// Apply only if the held winner is this record (its content hash). A seq names a
    /// position, not a record: two different records can hold one seq (an equivocation, or
    /// two writers that read the same seq), so a clean-up that read seq `N` and deletes "seq
    /// `N`" could delete a record it never saw. The hash names the record it saw.
    pub hash: Option<[u8; 32]>,
}

impl From<Option<u64>> for Cas {
    fn from(seq: Option<u64>) -> Self {
        Cas { seq, hash: None }
    }
}

impl Cas {
    /// Whether these preconditions hold over `held` (the name's current entry's rank).
    pub fn holds(&self, held: Option<Rank>) -> bool {
        let seq_ok = self
            .seq
            .is_none_or(|want| held.map_or(0, |r| r.seq) == want);
        let hash_ok = self
            .hash
            .is_none_or(|want| held.is_some_and(|r| r.hash == want));
        seq_ok && hash_ok
    }
}

/// Wire length of a record's signature, which follows the canonical body bytes.
const SIGNATURE_BYTES: usize = 64;

/// A record given to [`Prepared`], owned or borrowed.
pub trait RecordArg<'a> {
    /// The record as a `Cow`.
    fn into_cow(self) -> Cow<'a, SignedRecord>;
}

impl<'a> RecordArg<'a> for SignedRecord {
    fn into_cow(self) -> Cow<'a, SignedRecord> {
        Cow::Owned(self)
    }
}

impl<'a> RecordArg<'a> for &'a SignedRecord {
    fn into_cow(self) -> Cow<'a, SignedRecord> {
        Cow::Borrowed(self)
    }
}

/// A record made ready to merge: encoded once, hashed once, its fields checked and — when
/// asked — its signature verified, all without the store.
///
/// Why: an apply used to encode the record five times (the size check, the content hash for
/// the rank, the signature message, and the floor's hash and the body of the new entry — seven
/// for a new name, whose entry is built once more for the quota) and hash it twice (three).
/// The wire bytes are the canonical body bytes followed by the 64-byte signature (fixed-width
/// bincode, the array has no length prefix), so one encode gives the body to hash, the
/// message to verify and the bytes to keep. And the node verifies signatures — the costly
/// part of an apply — *before* it takes the store lock ([`Prepared::verify`],
/// [`Prepared::verify_all`]), so DNS and resolve readers never wait behind a signature check;
/// under the lock only the time limits, compare-and-set and the merge rule run
/// ([`Store::apply_prepared`]).
#[derive(Clone, Debug)]
pub struct Prepared<'a> {
    record: Cow<'a, SignedRecord>,
    /// The record's wire bytes (empty if it does not fit in `MAX_RECORD_BYTES`).
    wire: Box<[u8]>,
    /// blake3 of the canonical body bytes: the content hash.
    hash: [u8; 32],
    /// `validate_fields`.
    fields: Result<(), ValidationError>,
    /// The signature check, once done (`None`: not yet; the store verifies it under its lock).
    signature: Option<Result<(), ValidationError>>,
}

impl<'a> Prepared<'a> {
    /// Encodes and hashes `record` and checks its fields; the signature is not verified yet.
    pub fn new(record: impl RecordArg<'a>) -> Self {
        let record = record.into_cow();
        let wire = record.encode().into_boxed_slice();
        let fields = record.validate_fields_encoded(wire.len());
        let hash = match wire.len().checked_sub(SIGNATURE_BYTES) {
            Some(n) if fields.is_ok() => *blake3::hash(&wire[..n]).as_bytes(),
            // Refused by its fields anyway; the hash only has to be the record's.
            _ => record.content_hash(),
        };
        Prepared {
            record,
            wire,
            hash,
            fields,
            signature: None,
        }
    }

    /// [`Prepared::new`] followed by [`Prepared::verify`].
    pub fn verified(record: impl RecordArg<'a>) -> Self {
        let mut p = Self::new(record);
        p.verify();
        p
    }

    /// A record whose fields and signature the caller has already checked for these exact
    /// bytes (see [`Store::apply_verified`]): neither is checked again.
    pub fn trusted(record: impl RecordArg<'a>) -> Self {
        let mut p = Self::new(record);
        p.fields = Ok(());
        p.signature = Some(Ok(()));
        p
    }

    fn canonical(&self) -> &[u8] {
        &self.wire[..self.wire.len().saturating_sub(SIGNATURE_BYTES)]
    }

    /// Verifies the signature (once; a record whose fields are invalid is not verified: it is
    /// refused for its fields first).
    pub fn verify(&mut self) {
        if self.signature.is_none() && self.fields.is_ok() {
            self.signature = Some(self.record.verify_signature_canonical(self.canonical()));
        }
    }

    /// Verifies every record's signature not yet verified, as one batch (about twice the
    /// rate of one-by-one verification); if the batch fails, each is verified on its own to
    /// find the bad ones.
    pub fn verify_all(batch: &mut [Prepared<'_>]) {
        let todo: Vec<usize> = (0..batch.len())
            .filter(|&i| batch[i].signature.is_none() && batch[i].fields.is_ok())
            .collect();
        if todo.is_empty() {
            return;
        }
        let items: Vec<(&SignedRecord, &[u8])> = todo
            .iter()
            .map(|&i| (&*batch[i].record, batch[i].canonical()))
            .collect();
        if verify_batch_canonical(&items) {
            for i in todo {
                batch[i].signature = Some(Ok(()));
            }
        } else {
            for i in todo {
                batch[i].verify();
            }
        }
    }

    /// The record.
    pub fn record(&self) -> &SignedRecord {
        &self.record
    }

    /// Its wire bytes.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// Its content hash (blake3 of the canonical body bytes).
    pub fn content_hash(&self) -> [u8; 32] {
        self.hash
    }

    /// Its rank under the merge rule.
    pub fn rank(&self) -> Rank {
        Rank::with_hash(&self.record, self.hash)
    }

    /// The entry that holds it as a name's winner.
    pub fn entry(&self) -> Entry {
        Entry {
            floor: Floor {
                seq: self.record.body.seq,
                hash: self.hash,
            },
            expires_at_ms: self.record.body.expires_at_ms,
            tombstone: self.record.is_tombstone(),
            bytes: Some(self.wire.clone()),
        }
    }
}

/// What a store holds for one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Highest accepted `(seq, hash)`; with `tombstone` it is the name's [`Rank`], which
    /// never decreases.
    pub floor: Floor,
    /// Expiry of the winning record (Unix ms).
    pub expires_at_ms: u64,
    /// Whether the winner is a tombstone. Part of the rank (at equal seq a live record beats
    /// a tombstone), so it is kept, and persisted, with the floor after the body is dropped.
    pub tombstone: bool,
    /// Wire bytes of the winning record; `None` once compacted.
    pub bytes: Option<Box<[u8]>>,
}

impl Entry {
    /// The entry for a freshly accepted record.
    pub fn from_record(record: &SignedRecord) -> Self {
        Prepared::new(record).entry()
    }

    /// The rank of the held winner: what the merge rule compares an incoming record with.
    pub fn rank(&self) -> Rank {
        self.floor.rank(!self.tombstone)
    }

    /// The winning record, if its body is still held and decodes (it was validated on entry).
    pub fn record(&self) -> Option<SignedRecord> {
        self.bytes
            .as_deref()
            .and_then(|b| SignedRecord::decode(b).ok())
    }

    /// Whether the name is live at `now_ms`: a non-tombstone winner that has not expired.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.bytes.is_some() && !self.tombstone && self.expires_at_ms > now_ms
    }

    /// Whether compaction may drop the body at `now_ms`, keeping bodies `retention_ms` past
    /// expiry (see [`DEFAULT_BODY_RETENTION_MS`]).
    pub fn is_compactable(&self, now_ms: u64, retention_ms: u64) -> bool {
        self.bytes.is_some() && self.is_past_retention(now_ms, retention_ms)
    }

    /// Whether the winner is more than `retention_ms` past its expiry (body held or not).
    pub fn is_past_retention(&self, now_ms: u64, retention_ms: u64) -> bool {
        self.expires_at_ms.saturating_add(retention_ms) <= now_ms
    }
}

/// Storage for entries, with the merge logic provided on top.
pub trait Store {
    /// Error of the durable layer (`Infallible` in memory).
    type Error: std::error::Error + Send + Sync + 'static;

    /// The entry held for `name`.
    fn entry(&self, name: &str) -> Option<&Entry>;

    /// Makes `entry` the state of `name`. Implementations that persist must have made the
    /// write durable when this returns `Ok`: callers acknowledge writers after it.
    fn put_entry(&mut self, name: &str, entry: Entry) -> Result<(), Self::Error>;

    /// Names and entries whose name hashes into `bucket`, in name order.
    fn bucket_entries(&self, bucket: u8) -> Vec<(&str, &Entry)>;

    /// Entries of `bucket` that still hold a body, in name order, strictly after `after` (from
    /// the start if `None`), at most `limit` of them: what a digest answer lists. The default
    /// walks [`Store::bucket_entries`]; stores with an ordered index override it so that the
    /// walk allocates at most `limit` entries whatever the bucket's size.
    fn bucket_entries_after(
        &self,
        bucket: u8,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<(&str, &Entry)> {
        self.bucket_entries(bucket)
            .into_iter()
            .filter(|(n, e)| e.bytes.is_some() && after.is_none_or(|a| *n > a))
            .take(limit)
            .collect()
    }

    /// The current anti-entropy digest (covers entries that still hold a body).
    fn digest(&self) -> StoreDigest;

    /// Names whose bodies compaction may drop at `now_ms`.
    fn compactable(&self, now_ms: u64) -> Vec<String>;

    /// Number of names known (including compacted floors).
    fn len(&self) -> usize;

    /// Whether a new name (not held yet) may join this store with `entry`: the store's
    /// admission quota ([`Quota`]). The merge path asks before it stores a name it does not
    /// hold; updates of held names never ask. The default admits everything.
    fn admit(&self, name: &str, entry: &Entry) -> Result<(), AdmissionError> {
        let _ = (name, entry);
        Ok(())
    }

    /// How long past expiry this store keeps winners' bodies. Production stores keep
    /// [`DEFAULT_BODY_RETENTION_MS`]; a shorter retention (tests, chaos runs with short TTLs)
    /// is safe only while it exceeds the longest TTL in use.
    fn retention_ms(&self) -> u64 {
        DEFAULT_BODY_RETENTION_MS
    }

    /// Whether the store knows no name.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Validates `record` and merges it. `expected_seq` is compare-and-set: when given, the
    /// record is only applied if the currently held seq equals it (0 = name unknown).
    fn apply(
        &mut self,
        record: &SignedRecord,
        now_ms: u64,
        freshness: Freshness,
        expected_seq: Option<u64>,
    ) -> Result<Outcome, Self::Error> {
        self.apply_if(record, now_ms, freshness, Cas::from(expected_seq))
    }

    /// Like [`Store::apply`], with every compare-and-set precondition ([`Cas`]): the seq held
    /// and/or the content hash of the held winner.
    fn apply_if(
        &mut self,
        record: &SignedRecord,
        now_ms: u64,
        freshness: Freshness,
        cas: Cas,
    ) -> Result<Outcome, Self::Error> {
        self.apply_prepared(&Prepared::new(record), now_ms, freshness, cas)
    }

    /// Like [`Store::apply_if`], for a record already encoded, hashed and usually verified
    /// ([`Prepared`]): the node verifies before it takes the store lock. Checks, in order:
    /// fields, time limits, signature (now, if [`Prepared::verify`] was not called),
    /// compare-and-set, then the merge rule.
    fn apply_prepared(
        &mut self,
        record: &Prepared<'_>,
        now_ms: u64,
        freshness: Freshness,
        cas: Cas,
    ) -> Result<Outcome, Self::Error> {
        if let Err(e) = record
            .fields
            .clone()
            .and_then(|()| record.record.validate_time(now_ms, freshness))
        {
            return Ok(Outcome::Invalid(e));
        }
        apply_validated(self, record, cas, now_ms)
    }

    /// Like [`Store::apply`], for a record whose fields and signature the caller has already
    /// checked — `validate_fields` and `verify_signature` returned `Ok` for these exact bytes
    /// (e.g. a cache keyed by content hash and signature). Only the time limits (they depend
    /// on this store's clock), compare-and-set and the merge rule run. For drivers that see
    /// one record many times, like the simulator's thousands of replicas; the node verifies on
    /// every apply and does not use it.
    fn apply_verified(
        &mut self,
        record: &SignedRecord,
        now_ms: u64,
        freshness: Freshness,
        expected_seq: Option<u64>,
    ) -> Result<Outcome, Self::Error> {
        self.apply_prepared(
            &Prepared::trusted(record),
            now_ms,
            freshness,
            Cas::from(expected_seq),
        )
    }

    /// Merges many records, verifying their signatures as one batch (about twice the rate of
    /// one-by-one verification). A batch with a bad signature falls back to checking each.
    fn apply_batch(
        &mut self,
        records: &[SignedRecord],
        now_ms: u64,
        freshness: Freshness,
    ) -> Result<Vec<Outcome>, Self::Error> {
        let mut prepared: Vec<Prepared<'_>> = records.iter().map(Prepared::new).collect();
        Prepared::verify_all(&mut prepared);
        self.apply_prepared_batch(&prepared, now_ms, freshness)
    }

    /// Merges many prepared records in order ([`Store::apply_prepared`] without
    /// compare-and-set); verify them first with [`Prepared::verify_all`].
    fn apply_prepared_batch(
        &mut self,
        records: &[Prepared<'_>],
        now_ms: u64,
        freshness: Freshness,
    ) -> Result<Vec<Outcome>, Self::Error> {
        records
            .iter()
            .map(|r| self.apply_prepared(r, now_ms, freshness, Cas::default()))
            .collect()
    }

    /// The record to answer with for `name` at `now_ms`: only live (unexpired, not tombstoned)
    /// winners are served.
    fn resolve(&self, name: &str, now_ms: u64) -> Option<SignedRecord> {
        self.entry(name)
            .filter(|e| e.is_live(now_ms))
            .and_then(Entry::record)
    }

    /// Drops the bodies of records expired for longer than [`Store::retention_ms`]. Keeps every
    /// floor, and never touches a live name (its winner has not expired). Returns how many
    /// bodies were dropped.
    fn compact(&mut self, now_ms: u64) -> Result<usize, Self::Error> {
        let names = self.compactable(now_ms);
        let retention_ms = self.retention_ms();
        let mut dropped = 0;
        for name in names {
            let Some(entry) = self.entry(&name) else {
                continue;
            };
            if !entry.is_compactable(now_ms, retention_ms) {
                continue;
            }
            let kept = Entry {
                bytes: None,
                ..entry.clone()
            };
            self.put_entry(&name, kept)?;
            dropped += 1;
        }
        Ok(dropped)
    }
}

fn apply_validated<S: Store + ?Sized>(
    store: &mut S,
    prepared: &Prepared<'_>,
    cas: Cas,
    now_ms: u64,
) -> Result<Outcome, S::Error> {
    let record = prepared.record();
    let name = record.name();
    let held_entry = store.entry(&name);
    let held = held_entry.map(Entry::rank);
    let body_missing = held_entry.is_some_and(|e| e.bytes.is_none());
    let body_wanted =
        held_entry.is_some_and(|e| !e.is_past_retention(now_ms, store.retention_ms()));
    let incoming = prepared.rank();
    let decision = decide(held, incoming);
    // Even a duplicate is verified: the same body with a forged signature must be reported as
    // invalid, not as a successful publish (gossipsub already drops byte-identical copies, so
    // this costs little).
    let signature = match &prepared.signature {
        Some(checked) => checked.clone(),
        None => record.verify_signature_canonical(prepared.canonical()),
    };
    if let Err(e) = signature {
        return Ok(Outcome::Invalid(e));
    }
    // Compare-and-set is checked against the state *before* this record: a retry of a write
    // that already won (same seq, same content) is a duplicate, not a lost race, so a client
    // that retries after a timeout is told the truth.
    if !cas.holds(held) && decision != Decision::Duplicate {
        let actual = held.map_or(0, |f| f.seq);
        return Ok(Outcome::CasMismatch {
            expected: cas.seq.unwrap_or(actual),
            actual,
        });
    }
    let have = held.map_or(0, |f| f.seq);
    let restores = decision == Decision::Duplicate && body_missing && body_wanted;
    let takes = matches!(decision, Decision::Apply | Decision::ApplyConflict) || restores;
    // Built once, only for a record that is kept (a copy of the one encoding).
    let new_entry = if takes { Some(prepared.entry()) } else { None };
    // A name not held yet asks the quota (only a winner makes an entry for one: `restores`
    // needs a held floor).
    if let (None, Some(entry)) = (held_entry, &new_entry) {
        if let Err(e) = store.admit(&name, entry) {
            return Ok(Outcome::Invalid(ValidationError::Admission(e)));
        }
    }
    Ok(match decision {
        Decision::Apply => {
            store.put_entry(&name, new_entry.unwrap_or_else(|| prepared.entry()))?;
            Outcome::Applied {
                previous_seq: held.map(|f| f.seq),
            }
        }
        Decision::ApplyConflict => {
            store.put_entry(&name, new_entry.unwrap_or_else(|| prepared.entry()))?;
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
        // The floor's own record came back while this store holds only the floor (its body was
        // damaged on disk, or compacted by a clock that ran ahead): take the body back, unless
        // the record is past retention here anyway (it would only be compacted again).
        Decision::Duplicate if restores => {
            store.put_entry(&name, new_entry.unwrap_or_else(|| prepared.entry()))?;
            Outcome::Restored
        }
        Decision::Duplicate => Outcome::Duplicate,
    })
}

/// Map key ordered by (bucket, name) so one bucket is one contiguous range.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    bucket: u8,
    name: Box<str>,
}

/// In-memory store: the reference implementation, used by the simulator, tests and as the
/// node's read index in front of its durable log.
#[derive(Clone, Debug)]
pub struct MemStore {
    entries: BTreeMap<Key, Entry>,
    buckets: Box<[[u8; 32]; BUCKETS]>,
    retention_ms: u64,
    /// The digest of `buckets`, computed at most once per change: every sync request and
    /// answer asks for it, and rebuilding the root hashes all 256 buckets.
    digest: std::sync::OnceLock<StoreDigest>,
    quota: Quota,
    usage: Usage,
    /// Usage per zone (zone id text); a zone leaves the map when it holds nothing.
    zones: BTreeMap<Box<str>, Usage>,
    /// No body held becomes compactable before this time (Unix ms): a lower bound, lowered
    /// by every insert and made exact by every scan, so [`Store::compactable`] — asked every
    /// sync interval — walks the store only when something may be due, not every time.
    compact_due: CompactDue,
}

/// [`MemStore::compact_due`]: an atomic, because [`Store::compactable`] takes `&self`.
#[derive(Debug, Default)]
struct CompactDue(std::sync::atomic::AtomicU64);

impl Clone for CompactDue {
    fn clone(&self) -> Self {
        CompactDue(std::sync::atomic::AtomicU64::new(self.get()))
    }
}

impl CompactDue {
    fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set(&self, v: u64) {
        self.0.store(v, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Default for MemStore {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            buckets: Box::new([[0u8; 32]; BUCKETS]),
            retention_ms: DEFAULT_BODY_RETENTION_MS,
            digest: std::sync::OnceLock::new(),
            quota: DEFAULT_QUOTA,
            usage: Usage::default(),
            zones: BTreeMap::new(),
            // Nothing held: nothing is ever due until an insert lowers it.
            compact_due: CompactDue(std::sync::atomic::AtomicU64::new(u64::MAX)),
        }
    }
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps winners' bodies `retention_ms` past expiry instead of
    /// [`DEFAULT_BODY_RETENTION_MS`] (tests and chaos runs with short TTLs; must exceed the
    /// longest TTL in use, see the constant's docs).
    pub fn with_retention(mut self, retention_ms: u64) -> Self {
        self.retention_ms = retention_ms;
        // The bound was kept under the old retention: the next call scans and re-derives it.
        self.compact_due.set(0);
        self
    }

    /// Admits new names under `quota` instead of [`DEFAULT_QUOTA`].
    pub fn with_quota(mut self, quota: Quota) -> Self {
        self.quota = quota;
        self
    }

    /// Changes the admission quota (held names are never dropped, even above a lower quota).
    pub fn set_quota(&mut self, quota: Quota) {
        self.quota = quota;
    }

    /// The admission quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Names and bytes held, as the quota counts them.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Names and bytes held in zone `zone` (zone id text).
    pub fn zone_usage(&self, zone: &str) -> Usage {
        self.zones.get(zone).copied().unwrap_or_default()
    }

    /// Zones holding at least one name.
    pub fn zone_count(&self) -> usize {
        self.zones.len()
    }

    fn account(&mut self, name: &str, entry: &Entry, add: bool) {
        let bytes = entry_bytes(name, entry);
        let zone = zone_of(name);
        let apply = |u: &mut Usage| {
            if add {
                u.names += 1;
                u.bytes = u.bytes.saturating_add(bytes);
            } else {
                u.names = u.names.saturating_sub(1);
                u.bytes = u.bytes.saturating_sub(bytes);
            }
        };
        apply(&mut self.usage);
        if add {
            // Look up before inserting: allocate the zone's key only for a zone new here.
            match self.zones.get_mut(zone) {
                Some(u) => apply(u),
                None => {
                    let mut u = Usage::default();
                    apply(&mut u);
                    self.zones.insert(zone.into(), u);
                }
            }
        } else if let Some(u) = self.zones.get_mut(zone) {
            apply(u);
            if u.names == 0 {
                self.zones.remove(zone);
            }
        }
    }

    /// Every name and entry, in (bucket, name) order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(k, e)| (&*k.name, e))
    }

    /// Names that are live at `now_ms`.
    pub fn live_count(&self, now_ms: u64) -> usize {
        self.entries.values().filter(|e| e.is_live(now_ms)).count()
    }

    fn toggle_digest(&mut self, bucket: u8, name: &str, entry: &Entry) {
        if entry.bytes.is_some() {
            self.digest = std::sync::OnceLock::new();
            let d = entry_digest(name, &entry.floor);
            for (acc, b) in self.buckets[bucket as usize].iter_mut().zip(d.iter()) {
                *acc ^= b;
            }
        }
    }

    /// Infallible form of [`Store::put_entry`].
    pub fn insert(&mut self, name: &str, entry: Entry) {
        let bucket = bucket_of(name);
        let key = Key {
            bucket,
            name: name.into(),
        };
        if let Some(old) = self.entries.remove(&key) {
            self.toggle_digest(bucket, name, &old);
            self.account(name, &old, false);
        }
        self.toggle_digest(bucket, name, &entry);
        self.account(name, &entry, true);
        if entry.bytes.is_some() {
            let due = entry.expires_at_ms.saturating_add(self.retention_ms);
            if due < self.compact_due.get() {
                self.compact_due.set(due);
            }
        }
        self.entries.insert(key, entry);
    }
}

impl Store for MemStore {
    type Error = Infallible;

    fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.get(&Key {
            bucket: bucket_of(name),
            name: name.into(),
        })
    }

    fn put_entry(&mut self, name: &str, entry: Entry) -> Result<(), Infallible> {
        self.insert(name, entry);
        Ok(())
    }

    fn bucket_entries(&self, bucket: u8) -> Vec<(&str, &Entry)> {
        let start = Key {
            bucket,
            name: "".into(),
        };
        self.entries
            .range(start..)
            .take_while(|(k, _)| k.bucket == bucket)
            .map(|(k, e)| (&*k.name, e))
            .collect()
    }

    fn bucket_entries_after(
        &self,
        bucket: u8,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<(&str, &Entry)> {
        use std::ops::Bound;
        let start = Key {
            bucket,
            name: after.unwrap_or("").into(),
        };
        let lower = match after {
            Some(_) => Bound::Excluded(start),
            None => Bound::Included(start),
        };
        self.entries
            .range((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.bucket == bucket)
            .filter(|(_, e)| e.bytes.is_some())
            .take(limit)
            .map(|(k, e)| (&*k.name, e))
            .collect()
    }

    fn digest(&self) -> StoreDigest {
        self.digest
            .get_or_init(|| StoreDigest::from_buckets(&self.buckets))
            .clone()
    }

    fn compactable(&self, now_ms: u64) -> Vec<String> {
        if now_ms < self.compact_due.get() {
            return Vec::new();
        }
        // One walk finds what is due and the exact bound for the rest (including what it
        // returns: if the caller compacts it, the next walk finds nothing due and raises the
        // bound past `now`).
        let mut due_next = u64::MAX;
        let mut out = Vec::new();
        for (k, e) in &self.entries {
            if e.bytes.is_none() {
                continue;
            }
            due_next = due_next.min(e.expires_at_ms.saturating_add(self.retention_ms));
            if e.is_compactable(now_ms, self.retention_ms) {
                out.push(k.name.to_string());
            }
        }
        self.compact_due.set(due_next);
        out
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn retention_ms(&self) -> u64 {
        self.retention_ms
    }

    fn admit(&self, name: &str, entry: &Entry) -> Result<(), AdmissionError> {
        if self.entry(name).is_some() {
            return Ok(());
        }
        let zone = self.zones.get(zone_of(name)).copied();
        self.quota.admit(self.usage, zone, entry_bytes(name, entry))
    }
}
