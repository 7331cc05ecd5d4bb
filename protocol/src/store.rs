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
//! plus a small fixed overhead: a held body carries its name, which is not kept again) and
//! maintains the anti-entropy digest incrementally, and the count of live names from a window
//! its writes adjust ([`MemStore::live_count`]), so neither costs a walk of the store.
//!
//! An apply encodes the record once and hashes it once ([`Prepared`]); a caller that holds the
//! store behind a lock prepares and verifies the record first and merges it with
//! [`Store::apply_prepared`], so only the merge itself runs under the lock.

use std::borrow::{Borrow, Cow};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;

use crate::digest::{bucket_of, entry_digest, RootTree, StoreDigest, BUCKETS};
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
/// Memory of a store at its quota: bodies and names at most `max_bytes` (1 GiB; a
/// [`MemStore`] keeps a name's text only for a floor without its body, the body carries it),
/// plus about 150 bytes of index per name (tree node share and entry; about 150 MB for 1 M
/// names), so about 1.15 GiB; the node's redb file holds the same entries with a 42-byte
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
    /// The record's name, formatted at its first apply: a driver that applies one prepared
    /// record at many replicas (the simulator) formats it once instead of at every apply.
    name: std::sync::OnceLock<String>,
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
            name: std::sync::OnceLock::new(),
        }
    }

    /// Gives the record's name, already formatted by the caller (it must be
    /// `record().name()`; checked in debug builds), so it is not formatted again.
    pub fn with_name(self, name: String) -> Self {
        debug_assert_eq!(name, self.record.name());
        let _ = self.name.set(name);
        self
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

    /// Its name (`label.zone`), formatted once.
    pub fn name(&self) -> &str {
        self.name.get_or_init(|| self.record.name())
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

    /// Names and entries whose name hashes into `bucket`, in name order. A name is lent if
    /// the store keeps it as text, and rebuilt otherwise ([`MemStore`] rebuilds a name from
    /// its record's bytes rather than keep it twice).
    fn bucket_entries(&self, bucket: u8) -> Vec<(Cow<'_, str>, &Entry)>;

    /// Entries of `bucket` that still hold a body, in name order, strictly after `after` (from
    /// the start if `None`), at most `limit` of them: what a digest answer lists. The default
    /// walks [`Store::bucket_entries`]; stores with an ordered index override it so that the
    /// walk allocates at most `limit` entries whatever the bucket's size.
    fn bucket_entries_after(
        &self,
        bucket: u8,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<(Cow<'_, str>, &Entry)> {
        self.bucket_entries(bucket)
            .into_iter()
            .filter(|(n, e)| e.bytes.is_some() && after.is_none_or(|a| **n > *a))
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
        self.compact_names(names, now_ms)
    }

    /// Drops the bodies of `names` that are compactable at `now_ms` (checked again here, so a
    /// name rewritten since it was listed keeps its body); keeps their floors. Returns how many
    /// bodies were dropped. [`Store::compact`] is [`Store::compactable`] then this.
    fn compact_names(&mut self, names: Vec<String>, now_ms: u64) -> Result<usize, Self::Error> {
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
    let name = prepared.name();
    let held_entry = store.entry(name);
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
        if let Err(e) = store.admit(name, entry) {
            return Ok(Outcome::Invalid(ValidationError::Admission(e)));
        }
    }
    Ok(match decision {
        Decision::Apply => {
            store.put_entry(name, new_entry.unwrap_or_else(|| prepared.entry()))?;
            Outcome::Applied {
                previous_seq: held.map(|f| f.seq),
            }
        }
        Decision::ApplyConflict => {
            store.put_entry(name, new_entry.unwrap_or_else(|| prepared.entry()))?;
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
            store.put_entry(name, new_entry.unwrap_or_else(|| prepared.entry()))?;
            Outcome::Restored
        }
        Decision::Duplicate => Outcome::Duplicate,
    })
}

/// Text form of a zone id: lowercase RFC 4648 base32 without padding, as [`crate::ZoneId`]
/// displays it (32 bytes → 52 characters).
const ZONE_TEXT_LEN: usize = 52;
const BASE32_LOWER: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A zone's text ([`crate::ZoneId`]'s display form), computed without allocation: 5 bits per
/// character, big-endian, the last character padded with zero bits.
fn zone_text_of(zone: &[u8; 32]) -> [u8; ZONE_TEXT_LEN] {
    // Five bytes are eight characters: six whole groups, then the last two bytes as four
    // characters, their 16 bits padded with zero bits to 20. A lookup that finds its name
    // compares the whole zone text, so this runs once per found lookup: group by group it
    // costs a fraction of a bit-by-bit loop.
    let mut out = [0u8; ZONE_TEXT_LEN];
    for (src, dst) in zone.chunks(5).zip(out.chunks_mut(8)) {
        let mut group = [0u8; 8];
        group[3..3 + src.len()].copy_from_slice(src);
        let bits = u64::from_be_bytes(group);
        for (i, c) in dst.iter_mut().enumerate() {
            *c = BASE32_LOWER[((bits >> (35 - 5 * i)) & 0x1f) as usize];
        }
    }
    out
}

/// Slots of [`ZONE_TEXT_MEMO`].
const ZONE_TEXT_MEMO_SLOTS: usize = 64;

/// A memoised zone text: the zone's bytes and their text.
type ZoneTextSlot = Option<([u8; 32], [u8; ZONE_TEXT_LEN])>;

thread_local! {
    /// This thread's memo of zone texts, direct-mapped by the zone's first byte.
    ///
    /// A store holds many names per zone, and rebuilds a zone's text for every lookup that
    /// finds a name read from a body and every name it lists ([`Name::cmp`], [`Name::text`]);
    /// a process holding many replicas (the simulator) does so for the same few zones again
    /// and again. A hit compares all 32 bytes, so it returns exactly what [`zone_text_of`]
    /// would; a miss computes and replaces the slot. Fixed size (about 5 KiB per thread).
    static ZONE_TEXT_MEMO: std::cell::RefCell<[ZoneTextSlot; ZONE_TEXT_MEMO_SLOTS]> =
        const { std::cell::RefCell::new([None; ZONE_TEXT_MEMO_SLOTS]) };
}

/// [`zone_text_of`] written into `out`, through this thread's memo. (Written through a
/// reference, not returned: a returned array was copied out of the slot byte by byte, which
/// cost as much as computing it.)
fn zone_text_cached(zone: &[u8; 32], out: &mut [u8; ZONE_TEXT_LEN]) {
    ZONE_TEXT_MEMO.with_borrow_mut(|memo| {
        let slot = &mut memo[usize::from(zone[0]) % ZONE_TEXT_MEMO_SLOTS];
        match slot {
            Some((z, text)) if z == zone => out.copy_from_slice(text),
            _ => {
                let text = zone_text_of(zone);
                out.copy_from_slice(&text);
                *slot = Some((*zone, text));
            }
        }
    })
}

/// A zone's text as a `str`, written into `buf` through the memo ([`zone_text_cached`]).
fn zone_str<'b>(zone: &[u8; 32], buf: &'b mut [u8; ZONE_TEXT_LEN]) -> &'b str {
    zone_text_cached(zone, buf);
    // Base32 characters: always UTF-8.
    std::str::from_utf8(buf).unwrap_or_default()
}

/// Byte-wise order of two byte strings, each given as the concatenation of three pieces.
fn cmp_pieces(a: [&[u8]; 3], b: [&[u8]; 3]) -> Ordering {
    let (mut a, mut b) = (
        a.into_iter().filter(|p| !p.is_empty()),
        b.into_iter().filter(|p| !p.is_empty()),
    );
    let (mut pa, mut pb): (&[u8], &[u8]) = (&[], &[]);
    loop {
        if pa.is_empty() {
            pa = a.next().unwrap_or_default();
        }
        if pb.is_empty() {
            pb = b.next().unwrap_or_default();
        }
        if pa.is_empty() || pb.is_empty() {
            // One string ended: the shorter one sorts first.
            return (!pa.is_empty()).cmp(&!pb.is_empty());
        }
        let k = pa.len().min(pb.len());
        match pa[..k].cmp(&pb[..k]) {
            Ordering::Equal => {
                pa = &pa[k..];
                pb = &pb[k..];
            }
            unequal => return unequal,
        }
    }
}

/// A name as the index sees it: text, or the `label.zone` a record's wire bytes carry.
#[derive(Clone, Copy, Debug)]
enum Name<'a> {
    Text(&'a str),
    /// Read in place from a body: the label's bytes, then `.` and the zone's text.
    Body {
        label: &'a [u8],
        zone: &'a [u8; 32],
    },
}

impl<'a> Name<'a> {
    /// The name a record's wire bytes carry, read where the codec puts it: a
    /// [`crate::record::RecordBody`] starts with the zone's 32 bytes, then the label as a
    /// u64 little-endian length and its bytes. `None` if the bytes are too short. The store
    /// never trusts this alone: an entry is indexed by its body's name only when that name
    /// equals, byte for byte, the name it was stored under ([`MemStore::insert`]).
    fn of_body(bytes: &'a [u8]) -> Option<Self> {
        let zone: &[u8; 32] = bytes.get(..32)?.try_into().ok()?;
        let len: [u8; 8] = bytes.get(32..40)?.try_into().ok()?;
        let len = usize::try_from(u64::from_le_bytes(len)).ok()?;
        let label = bytes.get(40..40usize.checked_add(len)?)?;
        Some(Name::Body { label, zone })
    }

    /// The bytes before the zone's text (all of a text name).
    fn head(&self) -> &'a [u8] {
        match *self {
            Name::Text(s) => s.as_bytes(),
            Name::Body { label, .. } => label,
        }
    }

    /// The name's bytes from offset `from` of its head on, as up to three pieces: the rest of
    /// the head, then (for a body) `.` and the zone's text, written into `zone_text`.
    fn tail<'b>(&self, from: usize, zone_text: &'b mut [u8; ZONE_TEXT_LEN]) -> [&'b [u8]; 3]
    where
        'a: 'b,
    {
        let rest = self.head().get(from..).unwrap_or_default();
        match *self {
            Name::Text(_) => [rest, &[], &[]],
            Name::Body { zone, .. } => {
                zone_text_cached(zone, zone_text);
                [rest, b".", &zone_text[..]]
            }
        }
    }

    /// Byte-wise order of the full names, the order of `str`. Most names differ within the
    /// head (the label), which is compared as a slice; only then is the rest compared, piece
    /// by piece (a lookup that finds its name ends here: it compares the whole zone text).
    fn cmp(&self, other: &Name<'_>) -> Ordering {
        let (a, b) = (self.head(), other.head());
        let n = a.len().min(b.len());
        if let unequal @ (Ordering::Less | Ordering::Greater) = a.get(..n).cmp(&b.get(..n)) {
            return unequal;
        }
        // The zone's text is needed only when the names still tie past the common head. Two
        // bodies with one label tie exactly when their zones' bytes do (the text is a function
        // of them); otherwise the byte after the common head (a head's next byte, a body's `.`
        // or a text's end) decides most of the rest without it.
        if let (Name::Body { zone: za, .. }, Name::Body { zone: zb, .. }) = (*self, *other) {
            if a.len() == b.len() && za == zb {
                return Ordering::Equal;
            }
        }
        if let unequal @ (Ordering::Less | Ordering::Greater) =
            self.byte_after(n).cmp(&other.byte_after(n))
        {
            return unequal;
        }
        let (mut ta, mut tb) = ([0u8; ZONE_TEXT_LEN], [0u8; ZONE_TEXT_LEN]);
        cmp_pieces(self.tail(n, &mut ta), other.tail(n, &mut tb))
    }

    /// The name's byte at offset `at` of its head, or where the head ends there, the byte
    /// after it: `.` for a body, none for a text (a name that ends sorts first).
    fn byte_after(&self, at: usize) -> Option<u8> {
        match self.head().get(at) {
            Some(&byte) => Some(byte),
            None => match self {
                Name::Text(_) => None,
                Name::Body { .. } => Some(b'.'),
            },
        }
    }

    /// The name as text: lent for a text name, rebuilt for a body's.
    fn text(&self) -> Cow<'a, str> {
        match *self {
            Name::Text(s) => Cow::Borrowed(s),
            Name::Body { label, zone } => {
                // An entry is indexed by its body's name only if that name equals the (UTF-8)
                // name it was stored under, so the label is valid UTF-8 and nothing is lost.
                let mut s = String::with_capacity(label.len() + 1 + ZONE_TEXT_LEN);
                s.push_str(&String::from_utf8_lossy(label));
                s.push('.');
                s.push_str(zone_str(zone, &mut [0u8; ZONE_TEXT_LEN]));
                Cow::Owned(s)
            }
        }
    }
}

/// What the index orders by: (bucket, name), so one bucket is one contiguous range and a
/// bucket lists in name order.
trait Indexed {
    fn key(&self) -> (u8, Name<'_>);
}

fn cmp_keys(a: (u8, Name<'_>), b: (u8, Name<'_>)) -> Ordering {
    a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1))
}

// The index's elements and a probe built from a name's text are compared as `dyn Indexed`
// (the `Borrow` form of both sets), so a lookup needs no element of its own.
impl PartialEq for dyn Indexed + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for dyn Indexed + '_ {}
impl PartialOrd for dyn Indexed + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for dyn Indexed + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_keys(self.key(), other.key())
    }
}

/// A lookup key: a name's text and its bucket.
struct Probe<'a> {
    bucket: u8,
    name: &'a str,
}

impl Indexed for Probe<'_> {
    fn key(&self) -> (u8, Name<'_>) {
        (self.bucket, Name::Text(self.name))
    }
}

/// The index's two kinds of element, ordered by their [`Indexed`] key.
macro_rules! indexed_element {
    ($t:ty) => {
        impl PartialEq for $t {
            fn eq(&self, other: &Self) -> bool {
                self.cmp(other) == Ordering::Equal
            }
        }
        impl Eq for $t {}
        impl PartialOrd for $t {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for $t {
            fn cmp(&self, other: &Self) -> Ordering {
                cmp_keys(self.key(), other.key())
            }
        }
        impl<'a> Borrow<dyn Indexed + 'a> for $t {
            fn borrow(&self) -> &(dyn Indexed + 'a) {
                self
            }
        }
    };
}

/// An entry whose body carries its name (almost every entry): the name is not kept again.
/// Invariant: `entry.bytes` is `Some` and [`Name::of_body`] of it is the name the entry was
/// stored under.
#[derive(Clone, Debug)]
struct Held {
    bucket: u8,
    entry: Entry,
}

impl Indexed for Held {
    fn key(&self) -> (u8, Name<'_>) {
        let name = self.entry.bytes.as_deref().and_then(Name::of_body);
        // Never `None` (the invariant); an empty name would only misplace, not panic.
        (self.bucket, name.unwrap_or(Name::Text("")))
    }
}

/// An entry whose name must be kept as text: a floor without its body (compacted, or a body
/// that was lost), or a body that does not carry the name it was stored under.
#[derive(Clone, Debug)]
struct Named {
    bucket: u8,
    name: Box<str>,
    entry: Entry,
}

impl Indexed for Named {
    fn key(&self) -> (u8, Name<'_>) {
        (self.bucket, Name::Text(&self.name))
    }
}

indexed_element!(Held);
indexed_element!(Named);

/// The entries of `held` and `named` (each in index order, no name in both) merged into
/// one walk in (bucket, name) order.
fn merged<'a>(
    held: impl Iterator<Item = &'a Held>,
    named: impl Iterator<Item = &'a Named>,
) -> impl Iterator<Item = (u8, Name<'a>, &'a Entry)> {
    let (mut held, mut named) = (held.peekable(), named.peekable());
    std::iter::from_fn(move || {
        let held_first = match (held.peek(), named.peek()) {
            (Some(h), Some(n)) => cmp_keys(h.key(), n.key()) != Ordering::Greater,
            (h, _) => h.is_some(),
        };
        if held_first {
            held.next().map(|h| {
                let (bucket, name) = h.key();
                (bucket, name, &h.entry)
            })
        } else {
            named
                .next()
                .map(|n| (n.bucket, Name::Text(&n.name), &n.entry))
        }
    })
}

/// In-memory store: the reference implementation, used by the simulator, tests and as the
/// node's read index in front of its durable log.
///
/// Memory: an entry whose body is held is indexed by the name its body carries, read in
/// place, so the name's text (about a third of a typical record's size) is not kept a second
/// time; only body-less floors keep their name as text. Names are therefore handed out owned
/// ([`MemStore::iter`], [`Store::bucket_entries`]); lookups compare names without allocating.
/// Two different names are never confused: the index compares full names, and an entry is
/// indexed by its body's name only when that is exactly the name it was stored under.
#[derive(Clone, Debug)]
pub struct MemStore {
    /// Entries whose body carries their name.
    held: BTreeSet<Held>,
    /// Entries whose name is kept as text; no name is in both sets.
    named: BTreeSet<Named>,
    /// Bucket digests, shared with the [`StoreDigest`]s handed out: a write changes them in
    /// place unless a digest taken earlier is still held (then it copies the 8 KiB once).
    buckets: std::sync::Arc<[[u8; 32]; BUCKETS]>,
    /// The root over `buckets`, rehashed at a read only in the chunks written since the last
    /// one: every sync request and answer asks for it.
    root: RootTree,
    /// Whether `buckets` and `root` are kept up to date on every write (see
    /// [`MemStore::without_digest`]).
    keep_digest: bool,
    retention_ms: u64,
    quota: Quota,
    usage: Usage,
    /// Usage per zone (zone id text); a zone leaves the map when it holds nothing.
    zones: BTreeMap<Box<str>, Usage>,
    /// No body held becomes compactable before this time (Unix ms): a lower bound, lowered
    /// by every insert and made exact by every scan, so [`Store::compactable`] — asked every
    /// sync interval — walks the store only when something may be due, not every time.
    compact_due: CompactDue,
    /// What [`MemStore::live_count`] needs to count without walking the store every call.
    live: LiveCount,
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

/// Distinct expiry times a [`LiveWindow`] keeps (about 16 bytes each in its map, so under
/// 1 MiB): it covers the time until the next this many names expire, and a count after that
/// walks the store again. At 10⁶ names with expiries spread over 20 days that is hours.
pub const LIVE_WINDOW_EXPIRIES: usize = 16_384;

/// [`MemStore::live`]: a mutex, because [`MemStore::live_count`] takes `&self` (the node
/// counts under its read lock); writes hold `&mut` and reach it without locking.
#[derive(Debug, Default)]
struct LiveCount(std::sync::Mutex<Option<LiveWindow>>);

impl Clone for LiveCount {
    fn clone(&self) -> Self {
        let w = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        LiveCount(std::sync::Mutex::new(w.clone()))
    }
}

impl LiveCount {
    fn window(&mut self) -> &mut Option<LiveWindow> {
        self.0
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An entry went in (`added`) or came out of the store.
    fn note(&mut self, entry: &Entry, added: bool) {
        if let Some(w) = self.window() {
            w.note(entry, added);
        }
    }

    fn reset(&mut self) {
        *self.window() = None;
    }
}

/// The live count at `from`, kept exact by every write since, with the expiry times after
/// `from` up to `until` of the names it counts. Between `from` and `until` the count at any
/// time is `live` less the names whose expiry has passed, all of which `ending` holds.
#[derive(Clone, Debug)]
struct LiveWindow {
    from: u64,
    until: u64,
    live: usize,
    /// Expiry time → how many counted names expire then, for times in `(from, until]`.
    ending: BTreeMap<u64, u32>,
}

impl LiveWindow {
    /// Counts `entries` at `now`, keeping the first [`LIVE_WINDOW_EXPIRIES`] expiry times
    /// after it.
    fn walk<'a>(entries: impl Iterator<Item = &'a Entry>, now: u64) -> Self {
        let mut w = LiveWindow {
            from: now,
            until: u64::MAX,
            live: 0,
            ending: BTreeMap::new(),
        };
        // Each name counted as a write at `now` would count it.
        for e in entries {
            w.note(e, true);
        }
        w
    }

    /// Drops the latest expiry time while more than [`LIVE_WINDOW_EXPIRIES`] are kept: the
    /// window then ends before it.
    fn trim(&mut self) {
        while self.ending.len() > LIVE_WINDOW_EXPIRIES {
            if let Some((last, _)) = self.ending.pop_last() {
                self.until = last - 1;
            }
        }
    }

    /// The count at `now`, with the window moved to start there; `None` if `now` is outside
    /// the window (before its start: the clock went back; after its end).
    fn advance(&mut self, now: u64) -> Option<usize> {
        if now < self.from || now > self.until {
            return None;
        }
        while let Some(entry) = self.ending.first_entry() {
            if *entry.key() > now {
                break;
            }
            let n = *entry.get() as usize;
            debug_assert!(self.live >= n, "a live window counts every name it ends");
            self.live = self.live.saturating_sub(n);
            entry.remove();
        }
        self.from = now;
        Some(self.live)
    }

    fn note(&mut self, e: &Entry, added: bool) {
        // Counted when live at `from`: a body, no tombstone, expiring after `from`.
        if !e.is_live(self.from) {
            return;
        }
        let ends = e.expires_at_ms <= self.until;
        if added {
            self.live += 1;
            if ends {
                *self.ending.entry(e.expires_at_ms).or_default() += 1;
                self.trim();
            }
        } else {
            debug_assert!(self.live > 0, "a live window counts every name it drops");
            self.live = self.live.saturating_sub(1);
            if ends {
                if let std::collections::btree_map::Entry::Occupied(mut o) =
                    self.ending.entry(e.expires_at_ms)
                {
                    *o.get_mut() -= 1;
                    if *o.get() == 0 {
                        o.remove();
                    }
                }
            }
        }
    }
}

impl Default for MemStore {
    fn default() -> Self {
        Self {
            held: BTreeSet::new(),
            named: BTreeSet::new(),
            buckets: std::sync::Arc::new([[0u8; 32]; BUCKETS]),
            root: RootTree::default(),
            keep_digest: true,
            retention_ms: DEFAULT_BODY_RETENTION_MS,
            quota: DEFAULT_QUOTA,
            usage: Usage::default(),
            zones: BTreeMap::new(),
            // Nothing held: nothing is ever due until an insert lowers it.
            compact_due: CompactDue(std::sync::atomic::AtomicU64::new(u64::MAX)),
            live: LiveCount::default(),
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

    /// A store that does not keep its anti-entropy digest on every write: for a copy nobody
    /// syncs from, like the simulator's image of what a node has fsynced, which takes every
    /// write the node takes and whose digest is never read. [`Store::digest`] stays exact: it
    /// is rebuilt from the entries on every call. [`MemStore::with_digest`] turns the upkeep
    /// back on (a restarted node's store, cloned from that copy).
    pub fn without_digest(mut self) -> Self {
        self.keep_digest = false;
        self
    }

    /// Keeps the digest on every write again, rebuilding it once from the entries if it was
    /// not kept ([`MemStore::without_digest`]).
    pub fn with_digest(mut self) -> Self {
        if !self.keep_digest {
            self.buckets = std::sync::Arc::new(self.computed_buckets());
            self.root = RootTree::all_stale();
            self.keep_digest = true;
        }
        self
    }

    /// The bucket digests computed from the entries (held bodies only).
    fn computed_buckets(&self) -> [[u8; 32]; BUCKETS] {
        let mut buckets = [[0u8; 32]; BUCKETS];
        for (bucket, name, e) in merged(self.held.iter(), self.named.iter()) {
            if e.bytes.is_some() {
                let d = entry_digest(&name.text(), &e.floor);
                for (acc, b) in buckets[usize::from(bucket)].iter_mut().zip(d.iter()) {
                    *acc ^= b;
                }
            }
        }
        buckets
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

    /// Every name and entry, in (bucket, name) order. Names are rebuilt from the records'
    /// bytes (the store does not keep them twice), so each is an owned `String`.
    pub fn iter(&self) -> impl Iterator<Item = (String, &Entry)> {
        merged(self.held.iter(), self.named.iter()).map(|(_, n, e)| (n.text().into_owned(), e))
    }

    /// Entries of `bucket` in name order, from the start or strictly after `after`.
    fn bucket_walk<'a>(
        &'a self,
        bucket: u8,
        after: Option<&str>,
    ) -> impl Iterator<Item = (Name<'a>, &'a Entry)> {
        use std::ops::Bound;
        let probe = Probe {
            bucket,
            name: after.unwrap_or(""),
        };
        let probe: &dyn Indexed = &probe;
        let lower = match after {
            Some(_) => Bound::Excluded(probe),
            None => Bound::Included(probe),
        };
        let held = self.held.range::<dyn Indexed, _>((lower, Bound::Unbounded));
        let named = self
            .named
            .range::<dyn Indexed, _>((lower, Bound::Unbounded));
        merged(held, named)
            .take_while(move |(b, _, _)| *b == bucket)
            .map(|(_, n, e)| (n, e))
    }

    /// Whether a compaction walk may find a body to drop at `now_ms`: the bound that
    /// [`Store::compactable`] keeps, so that a caller walking in steps
    /// ([`MemStore::compactable_in`]) can tell first whether a walk is worth starting.
    pub fn compaction_due(&self, now_ms: u64) -> bool {
        now_ms >= self.compact_due.get()
    }

    /// Starts a compaction walk taken one bucket at a time with [`MemStore::compactable_in`],
    /// for a caller that shares the store behind a lock and releases it between buckets (the
    /// node: its DNS answers take the same lock, and a whole walk of a million names held it
    /// for tens of milliseconds). The bound is raised to "never" here and lowered by every
    /// write from now on as usual, so a write made between two steps, in a bucket already
    /// walked, still counts; [`MemStore::compaction_walk_end`] then lowers it to what the
    /// walk found. A walk that stops early must call [`MemStore::compaction_walk_abandon`].
    pub fn compaction_walk_start(&self) {
        self.compact_due.set(u64::MAX);
    }

    /// One bucket of a compaction walk ([`MemStore::compaction_walk_start`]): the names in
    /// `bucket` whose bodies may be dropped at `now_ms`, and the earliest time another body in
    /// it becomes compactable (`u64::MAX` if none). The bound leaves out the names returned:
    /// the caller drops their bodies ([`Store::compact_names`]) before the walk ends. It may
    /// let go of the store in between (scan under a read lock, drop under the write lock): a
    /// name written meanwhile lowered the bound itself, and `compact_names` leaves its body.
    pub fn compactable_in(&self, bucket: u8, now_ms: u64) -> (Vec<String>, u64) {
        let mut next = u64::MAX;
        let mut out = Vec::new();
        for (name, e) in self.bucket_walk(bucket, None) {
            if e.bytes.is_none() {
                continue;
            }
            if e.is_compactable(now_ms, self.retention_ms) {
                out.push(name.text().into_owned());
            } else {
                next = next.min(e.expires_at_ms.saturating_add(self.retention_ms));
            }
        }
        (out, next)
    }

    /// Ends a compaction walk: `next` is the smallest bound [`MemStore::compactable_in`]
    /// returned over every bucket. Writes made during the walk have already lowered the bound
    /// themselves; the lower of the two stays.
    pub fn compaction_walk_end(&self, next: u64) {
        if next < self.compact_due.get() {
            self.compact_due.set(next);
        }
    }

    /// Ends a compaction walk that did not visit every bucket: the next call walks again.
    pub fn compaction_walk_abandon(&self) {
        self.compact_due.set(0);
    }

    /// Names that are live at `now_ms` ([`Entry::is_live`]), exactly.
    ///
    /// Not a walk per call: at 10⁶ names a walk costs about 10 ms under the node's store lock
    /// (its status answer asks for this, and monitoring polls it). One walk starts a window
    /// ([`LiveWindow`]) that every write adjusts; later calls read the count from it and
    /// move it forward past the names that expired since, and walk again only when the
    /// clock leaves it (it went back, or passed the [`LIVE_WINDOW_EXPIRIES`]-th expiry time
    /// after the walk).
    pub fn live_count(&self, now_ms: u64) -> usize {
        let mut window = self
            .live
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(live) = window.as_mut().and_then(|w| w.advance(now_ms)) {
            return live;
        }
        let w = LiveWindow::walk(self.entries(), now_ms);
        let live = w.live;
        *window = Some(w);
        live
    }

    /// The walk [`MemStore::live_count`] replaces, for tests and benches to compare with.
    pub fn live_count_walked(&self, now_ms: u64) -> usize {
        self.entries().filter(|e| e.is_live(now_ms)).count()
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        let held = self.held.iter().map(|h| &h.entry);
        held.chain(self.named.iter().map(|n| &n.entry))
    }

    fn toggle_digest(&mut self, bucket: u8, name: &str, entry: &Entry) {
        if entry.bytes.is_some() && self.keep_digest {
            self.root.touch(bucket);
            let d = entry_digest(name, &entry.floor);
            let buckets = std::sync::Arc::make_mut(&mut self.buckets);
            for (acc, b) in buckets[bucket as usize].iter_mut().zip(d.iter()) {
                *acc ^= b;
            }
        }
    }

    /// Infallible form of [`Store::put_entry`].
    ///
    /// A name's new entry usually goes where its old one was (a newer body carrying the same
    /// name replaces a held one): that takes one walk of the index
    /// ([`BTreeSet::replace`]), where taking the old element and inserting the new took two.
    /// The node makes every write under its store lock, which its DNS answers also take, and
    /// at 10⁶ names each walk is a chain of cache misses. The new entry is counted (digest,
    /// usage) before it goes in and the old one after it came out: both are sums, so the order
    /// does not change them, and a zone's count never passes through zero on a replacement.
    pub fn insert(&mut self, name: &str, entry: Entry) {
        let bucket = bucket_of(name);
        self.toggle_digest(bucket, name, &entry);
        self.account(name, &entry, true);
        self.live.note(&entry, true);
        if entry.bytes.is_some() {
            let due = entry.expires_at_ms.saturating_add(self.retention_ms);
            if due < self.compact_due.get() {
                self.compact_due.set(due);
            }
        }
        let carries_name = entry
            .bytes
            .as_deref()
            .and_then(Name::of_body)
            .is_some_and(|n| n.cmp(&Name::Text(name)) == Ordering::Equal);
        let probe = Probe { bucket, name };
        let probe: &dyn Indexed = &probe;
        // No name is in both sets: the one that takes the new entry is searched by the
        // replace itself, the other only if that found nothing.
        let old = if carries_name {
            match self.held.replace(Held { bucket, entry }) {
                Some(h) => Some(h.entry),
                None => self.named.take(probe).map(|n| n.entry),
            }
        } else {
            let named = Named {
                bucket,
                name: name.into(),
                entry,
            };
            match self.named.replace(named) {
                Some(n) => Some(n.entry),
                None => self.held.take(probe).map(|h| h.entry),
            }
        };
        if let Some(old) = old {
            self.toggle_digest(bucket, name, &old);
            self.account(name, &old, false);
            self.live.note(&old, false);
        }
    }
}

/// One entry made ready for [`MemStore::load`] by [`LoadItem::new`]: the part of an insert
/// that needs no store (the name's bucket, its digest contribution, whether the body carries
/// the name, what the quota counts), so a loader can do it for many entries on several
/// threads and hand the store only the bulk build.
#[derive(Debug)]
pub struct LoadItem {
    /// The digest contribution (`None` without a body: only bodies are in the digest).
    digest: Option<[u8; 32]>,
    /// Name and body bytes, as the quota counts them.
    usage_bytes: u64,
    element: Element,
}

/// The index element a [`LoadItem`] becomes.
#[derive(Debug)]
enum Element {
    Held(Held),
    Named(Named),
}

impl LoadItem {
    /// Prepares `name`'s `entry` (any thread).
    pub fn new(name: &str, entry: Entry) -> Self {
        let bucket = bucket_of(name);
        let digest = entry
            .bytes
            .is_some()
            .then(|| entry_digest(name, &entry.floor));
        let usage_bytes = entry_bytes(name, &entry);
        // Held only when the body carries exactly this name and the name's zone is the
        // body's zone text (a label without a dot), so [`MemStore::load`] can count the
        // zone's usage from the body alone.
        let carries_name = zone_of(name).len() == ZONE_TEXT_LEN
            && entry
                .bytes
                .as_deref()
                .and_then(Name::of_body)
                .is_some_and(|n| n.cmp(&Name::Text(name)) == Ordering::Equal);
        let element = if carries_name {
            Element::Held(Held { bucket, entry })
        } else {
            Element::Named(Named {
                bucket,
                name: name.into(),
                entry,
            })
        };
        Self {
            digest,
            usage_bytes,
            element,
        }
    }
}

impl MemStore {
    /// Loads `items` into the store in one bulk build: what a node does at start with every
    /// entry of its durable log. The result is the store that inserting each item's entry
    /// with [`MemStore::insert`] would give, built in linear time from items in name order
    /// (the order a durable table lists its keys in; any other order is sorted first), with
    /// the index's nodes filled whole: inserted one by one in bucket order, which is random
    /// against name order, they end about two thirds full (at 10⁶ entries, 128 MB of index
    /// against 82 MB).
    ///
    /// Each name must appear at most once among `items` and not be held already (a durable
    /// table's keys are distinct); a store that holds entries already takes the items one by
    /// one instead.
    pub fn load(&mut self, items: Vec<LoadItem>) {
        if self.len() > 0 {
            for item in items {
                let (name, entry) = match item.element {
                    Element::Held(h) => (h.key().1.text().into_owned(), h.entry),
                    Element::Named(n) => (n.name.into_string(), n.entry),
                };
                self.insert(&name, entry);
            }
            return;
        }
        let mut held = Vec::with_capacity(items.len());
        let mut named = Vec::new();
        // The bulk build bypasses `insert`: the next count walks.
        self.live.reset();
        let buckets = std::sync::Arc::make_mut(&mut self.buckets);
        let mut due = self.compact_due.get();
        for item in items {
            let (bucket, entry) = match &item.element {
                Element::Held(h) => (h.bucket, &h.entry),
                Element::Named(n) => (n.bucket, &n.entry),
            };
            if let (Some(d), true) = (item.digest, self.keep_digest) {
                for (acc, b) in buckets[usize::from(bucket)].iter_mut().zip(d.iter()) {
                    *acc ^= b;
                }
            }
            if entry.bytes.is_some() {
                due = due.min(entry.expires_at_ms.saturating_add(self.retention_ms));
            }
            let mut zone_text = [0u8; ZONE_TEXT_LEN];
            let zone = match &item.element {
                Element::Named(n) => zone_of(&n.name),
                Element::Held(h) => match h.key().1 {
                    Name::Body { zone, .. } => zone_str(zone, &mut zone_text),
                    Name::Text(t) => zone_of(t),
                },
            };
            self.usage.names += 1;
            self.usage.bytes = self.usage.bytes.saturating_add(item.usage_bytes);
            let add = |u: &mut Usage| {
                u.names += 1;
                u.bytes = u.bytes.saturating_add(item.usage_bytes);
            };
            match self.zones.get_mut(zone) {
                Some(u) => add(u),
                None => {
                    let mut u = Usage::default();
                    add(&mut u);
                    self.zones.insert(zone.into(), u);
                }
            }
            match item.element {
                Element::Held(h) => held.push(h),
                Element::Named(n) => named.push(n),
            }
        }
        self.compact_due.set(due);
        if self.keep_digest {
            self.root = RootTree::all_stale();
        }
        // Name order within each bucket is kept by the stable sort on the bucket alone, so
        // the sort inside `from_iter` finds the items in order and builds the set in one pass.
        held.sort_by_key(|h| h.bucket);
        named.sort_by_key(|n| n.bucket);
        self.held = held.into_iter().collect();
        self.named = named.into_iter().collect();
    }
}

impl Store for MemStore {
    type Error = Infallible;

    fn entry(&self, name: &str) -> Option<&Entry> {
        let probe = Probe {
            bucket: bucket_of(name),
            name,
        };
        let probe: &dyn Indexed = &probe;
        match self.held.get(probe) {
            Some(h) => Some(&h.entry),
            None => self.named.get(probe).map(|n| &n.entry),
        }
    }

    fn put_entry(&mut self, name: &str, entry: Entry) -> Result<(), Infallible> {
        self.insert(name, entry);
        Ok(())
    }

    fn bucket_entries(&self, bucket: u8) -> Vec<(Cow<'_, str>, &Entry)> {
        self.bucket_walk(bucket, None)
            .map(|(n, e)| (n.text(), e))
            .collect()
    }

    fn bucket_entries_after(
        &self,
        bucket: u8,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<(Cow<'_, str>, &Entry)> {
        self.bucket_walk(bucket, after)
            .filter(|(_, e)| e.bytes.is_some())
            .take(limit)
            .map(|(n, e)| (n.text(), e))
            .collect()
    }

    fn digest(&self) -> StoreDigest {
        if !self.keep_digest {
            return StoreDigest::from_buckets(&self.computed_buckets());
        }
        StoreDigest {
            root: self.root.root(&self.buckets),
            buckets: std::sync::Arc::clone(&self.buckets),
        }
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
        for (_, name, e) in merged(self.held.iter(), self.named.iter()) {
            if e.bytes.is_none() {
                continue;
            }
            due_next = due_next.min(e.expires_at_ms.saturating_add(self.retention_ms));
            if e.is_compactable(now_ms, self.retention_ms) {
                out.push(name.text().into_owned());
            }
        }
        self.compact_due.set(due_next);
        out
    }

    fn len(&self) -> usize {
        self.held.len() + self.named.len()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::ZoneKey;
    use crate::record::{Content, Endpoint, Host, RecordBody, Transport};

    fn record(seed: u8, label: &str, seq: u64) -> SignedRecord {
        let key = ZoneKey::from_seed([seed; 32]);
        let body = RecordBody {
            zone: key.zone(),
            label: label.to_owned(),
            seq,
            expires_at_ms: 1_000_000,
            content: Content::Endpoints(vec![Endpoint {
                host: Host::V4([10, 0, 0, seed]),
                port: 443,
                transport: Transport::Tcp,
                weight: 1,
            }]),
        };
        match body.sign(&key) {
            Ok(r) => r,
            Err(e) => panic!("test record does not sign: {e}"),
        }
    }

    #[test]
    fn a_body_name_is_the_records_name() {
        for seed in 0..=255u8 {
            let r = record(seed, &format!("l{seed}"), 1);
            let wire = r.encode();
            let name = Name::of_body(&wire).map(|n| n.text().into_owned());
            assert_eq!(name.as_deref(), Some(r.name().as_str()), "seed {seed}");
        }
    }

    /// Labels whose names sort differently from the labels alone (`-` sorts below `.`, one
    /// label a prefix of another), in several zones (base32 digits sort below letters).
    fn tricky_records() -> Vec<SignedRecord> {
        let labels = [
            "a",
            "a-b",
            "a0",
            "ab",
            "b",
            "service-1",
            "service-12",
            "service-1-2",
            "z",
        ];
        (1..=4u8)
            .flat_map(|seed| labels.iter().map(move |l| record(seed, l, 1)))
            .collect()
    }

    #[test]
    fn names_read_from_bodies_sort_as_their_text() {
        let records = tricky_records();
        let wires: Vec<Vec<u8>> = records.iter().map(SignedRecord::encode).collect();
        let names: Vec<String> = records.iter().map(SignedRecord::name).collect();
        for (wa, na) in wires.iter().zip(&names) {
            let Some(a) = Name::of_body(wa) else {
                panic!("no name in {na}'s body");
            };
            for (wb, nb) in wires.iter().zip(&names) {
                let Some(b) = Name::of_body(wb) else {
                    panic!("no name in {nb}'s body");
                };
                let want = na.cmp(nb);
                assert_eq!(a.cmp(&b), want, "{na} vs {nb}");
                assert_eq!(a.cmp(&Name::Text(nb)), want, "{na} vs text {nb}");
                assert_eq!(Name::Text(na).cmp(&b), want, "text {na} vs {nb}");
            }
        }
    }

    /// Bodies held, floors without bodies, and a body filed under a name it does not carry
    /// all list, look up and count as one store ordered by (bucket, name).
    #[test]
    fn a_mixed_store_lists_in_bucket_and_name_order() {
        let records = tricky_records();
        let mut store = MemStore::new();
        let mut want: Vec<(u8, String, Entry)> = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let mut entry = Entry::from_record(r);
            if i % 3 == 0 {
                entry.bytes = None;
            }
            store.insert(&r.name(), entry.clone());
            want.push((bucket_of(&r.name()), r.name(), entry));
        }
        // A body filed under another name: found under that name only.
        let odd = Entry::from_record(&record(9, "elsewhere", 1));
        store.insert("filed-here.test", odd.clone());
        want.push((bucket_of("filed-here.test"), "filed-here.test".into(), odd));
        want.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));

        assert!(!store.held.is_empty() && store.named.len() > 1);
        assert_eq!(store.len(), want.len());
        let listed: Vec<(String, Entry)> = store.iter().map(|(n, e)| (n, e.clone())).collect();
        let expected: Vec<(String, Entry)> = want
            .iter()
            .map(|(_, n, e)| (n.clone(), e.clone()))
            .collect();
        assert_eq!(listed, expected);
        for (b, n, e) in &want {
            assert_eq!(store.entry(n), Some(e), "{n}");
            let bucket: Vec<String> = store
                .bucket_entries(*b)
                .into_iter()
                .map(|(n, _)| n.into_owned())
                .collect();
            let mut in_bucket: Vec<String> = want
                .iter()
                .filter(|w| w.0 == *b)
                .map(|w| w.1.clone())
                .collect();
            assert_eq!(bucket, in_bucket);
            // Listing after a name: the bodies that follow it.
            in_bucket.retain(|m| m > n && want.iter().any(|w| &w.1 == m && w.2.bytes.is_some()));
            let after: Vec<String> = store
                .bucket_entries_after(*b, Some(n), usize::MAX)
                .into_iter()
                .map(|(n, _)| n.into_owned())
                .collect();
            assert_eq!(after, in_bucket);
        }
        assert_eq!(store.entry("elsewhere.nothing"), None);
        let elsewhere = record(9, "elsewhere", 1).name();
        assert_eq!(store.entry(&elsewhere), None);

        // Replacing moves an entry between the two sets and keeps the digest exact: a store
        // built from the same final entries in another order has the same digest.
        for r in &records {
            store.insert(&r.name(), Entry::from_record(r));
        }
        let mut rebuilt = MemStore::new();
        for (n, e) in store.iter().collect::<Vec<_>>().into_iter().rev() {
            rebuilt.insert(&n, e.clone());
        }
        assert_eq!(rebuilt.digest(), store.digest());
        assert_eq!(rebuilt.len(), store.len());
        assert_eq!(store.named.len(), 1);
        // And counts usage exactly: per zone too, and no zone left behind at zero.
        assert_eq!(rebuilt.usage(), store.usage());
        assert_eq!(rebuilt.zone_count(), store.zone_count());
        for (n, _) in store.iter() {
            assert_eq!(
                rebuilt.zone_usage(zone_of(&n)),
                store.zone_usage(zone_of(&n))
            );
        }
        // Back to floors: bodies dropped in place, the counts still exact.
        for r in &records {
            let mut floor = Entry::from_record(r);
            floor.bytes = None;
            store.insert(&r.name(), floor);
        }
        let mut fresh = MemStore::new();
        for (n, e) in store.iter() {
            fresh.insert(&n, e.clone());
        }
        assert_eq!(fresh.digest(), store.digest());
        assert_eq!(fresh.usage(), store.usage());
        assert_eq!(fresh.zone_count(), store.zone_count());
        assert_eq!(store.held.len(), 0);
    }

    /// Every entry a store can hold, for the load tests: bodies, floors without bodies, a body
    /// filed under a name it does not carry, and a name whose zone part is not a zone id.
    fn mixed_entries() -> Vec<(String, Entry)> {
        let mut out: Vec<(String, Entry)> = tricky_records()
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut entry = Entry::from_record(r);
                if i % 3 == 0 {
                    entry.bytes = None;
                }
                (r.name(), entry)
            })
            .collect();
        out.push((
            "filed-here.test".into(),
            Entry::from_record(&record(9, "elsewhere", 1)),
        ));
        let mut short_lived = Entry::from_record(&record(7, "short", 1));
        short_lived.expires_at_ms = 10;
        out.push((record(7, "short", 1).name(), short_lived));
        out
    }

    /// What a store shows of its contents: listing, lookups, digest, usage, compaction.
    fn observed(store: &MemStore, names: &[String]) -> impl PartialEq + std::fmt::Debug {
        let listed: Vec<(String, Entry)> = store.iter().map(|(n, e)| (n, e.clone())).collect();
        let looked_up: Vec<Option<Entry>> = names.iter().map(|n| store.entry(n).cloned()).collect();
        let zones: Vec<(String, Usage)> = names
            .iter()
            .map(|n| (zone_of(n).to_owned(), store.zone_usage(zone_of(n))))
            .collect();
        (
            listed,
            looked_up,
            store.digest(),
            store.usage(),
            zones,
            store.zone_count(),
            store.compactable(DEFAULT_BODY_RETENTION_MS + 1_000),
        )
    }

    /// A bulk load, from items in name order (as a durable table lists them) or in any
    /// other order, gives the store that inserting the entries one by one gives.
    #[test]
    fn a_bulk_load_is_the_store_of_the_same_inserts() {
        let entries = mixed_entries();
        let names: Vec<String> = entries.iter().map(|(n, _)| n.clone()).collect();
        let mut inserted = MemStore::new();
        for (n, e) in &entries {
            inserted.insert(n, e.clone());
        }
        let want = observed(&inserted, &names);
        let mut sorted = entries.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        for order in [sorted.clone(), sorted.into_iter().rev().collect()] {
            let mut loaded = MemStore::new();
            loaded.load(
                order
                    .iter()
                    .map(|(n, e)| LoadItem::new(n, e.clone()))
                    .collect(),
            );
            assert_eq!(observed(&loaded, &names), want);
            assert_eq!(loaded.len(), entries.len());
            // And it keeps working as a store: a replaced entry moves and the digest follows.
            let (n, e) = &entries[0];
            let mut e2 = e.clone();
            e2.bytes = entries[1].1.bytes.clone();
            let mut again = inserted.clone();
            again.insert(n, e2.clone());
            loaded.insert(n, e2);
            assert_eq!(observed(&loaded, &names), observed(&again, &names));
        }
    }

    /// Loading into a store that holds entries already adds the items as inserts would.
    #[test]
    fn a_load_into_a_held_store_adds_the_items() {
        let entries = mixed_entries();
        let names: Vec<String> = entries.iter().map(|(n, _)| n.clone()).collect();
        let (first, rest) = entries.split_at(entries.len() / 2);
        let mut inserted = MemStore::new();
        let mut loaded = MemStore::new();
        for (n, e) in first {
            inserted.insert(n, e.clone());
            loaded.insert(n, e.clone());
        }
        for (n, e) in rest {
            inserted.insert(n, e.clone());
        }
        loaded.load(
            rest.iter()
                .map(|(n, e)| LoadItem::new(n, e.clone()))
                .collect(),
        );
        assert_eq!(observed(&loaded, &names), observed(&inserted, &names));
    }

    /// The old bit-by-bit encoder, the reference for the grouped one.
    fn zone_text_bitwise(zone: &[u8; 32]) -> [u8; ZONE_TEXT_LEN] {
        let mut out = [0u8; ZONE_TEXT_LEN];
        let (mut acc, mut bits, mut o) = (0u32, 0u32, 0usize);
        for &b in zone {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out[o] = BASE32_LOWER[((acc >> bits) & 0x1f) as usize];
                o += 1;
            }
            // Keep only the bits not yet written (at most 4), so `acc` never overflows.
            acc &= (1 << bits) - 1;
        }
        if bits > 0 {
            out[o] = BASE32_LOWER[((acc << (5 - bits)) & 0x1f) as usize];
        }
        out
    }

    #[test]
    fn the_grouped_zone_text_is_the_bitwise_one() {
        let mut zone = [0u8; 32];
        for i in 0..200u32 {
            zone.copy_from_slice(blake3::hash(&i.to_le_bytes()).as_bytes());
            if i == 0 {
                zone = [0xff; 32];
            }
            if i == 1 {
                zone = [0; 32];
            }
            assert_eq!(zone_text_of(&zone), zone_text_bitwise(&zone), "{i}");
        }
    }

    #[test]
    fn the_zone_text_memo_returns_each_zones_own_text() {
        // Zones that share a memo slot (same first byte) and zones that differ only in their
        // last byte, asked in turn, each get their own text.
        let mut zones = Vec::new();
        for i in 0..40u8 {
            let mut z = *blake3::hash(&[i]).as_bytes();
            z[0] = i % 3;
            zones.push(z);
            let mut last = z;
            last[31] ^= 1;
            zones.push(last);
        }
        for _ in 0..3 {
            for z in &zones {
                let mut text = [0u8; ZONE_TEXT_LEN];
                zone_text_cached(z, &mut text);
                assert_eq!(text, zone_text_bitwise(z));
            }
        }
    }

    /// A copy that does not keep its digest still reports the exact one, and keeps it again
    /// exactly once asked to.
    #[test]
    fn a_store_without_digest_upkeep_reports_the_same_digest() {
        let records = tricky_records();
        let mut kept = MemStore::new();
        let mut quiet = MemStore::new().without_digest();
        for (i, r) in records.iter().enumerate() {
            let mut entry = Entry::from_record(r);
            if i % 3 == 0 {
                entry.bytes = None;
            }
            kept.insert(&r.name(), entry.clone());
            quiet.insert(&r.name(), entry);
        }
        assert_eq!(
            *quiet.buckets, [[0u8; 32]; BUCKETS],
            "nothing kept on write"
        );
        assert_eq!(quiet.digest(), kept.digest());
        let mut back = quiet.clone().with_digest();
        assert_eq!(back.digest(), kept.digest());
        let later = record(7, "later", 3);
        back.insert(&later.name(), Entry::from_record(&later));
        kept.insert(&later.name(), Entry::from_record(&later));
        assert_eq!(back.digest(), kept.digest());
        assert_ne!(back.digest(), quiet.digest());
    }

    /// Same label, different zones: different names, never confused.
    #[test]
    fn one_label_in_many_zones_is_many_names() {
        let mut store = MemStore::new();
        let records: Vec<SignedRecord> =
            (1..=50u8).map(|z| record(z, "www", u64::from(z))).collect();
        for r in &records {
            store.insert(&r.name(), Entry::from_record(r));
        }
        assert_eq!(store.len(), records.len());
        for r in &records {
            let held = store.entry(&r.name()).map(|e| e.floor.seq);
            assert_eq!(held, Some(r.body.seq));
        }
    }
}
