//! Durable store: the protocol's [`MemStore`] as the index, redb as the durable truth, with
//! group commit so that no reader ever waits for a disk flush.
//!
//! Applying a record (decide + index update) happens in memory under the node's store lock and
//! marks the name dirty; it takes microseconds (the signature is checked before the lock).
//! Every index change passes one place, which also keeps what used to be whole-store scans:
//! the names with a reserved label ([`DurableStore::reserved`]: offers, blob manifests) and a
//! change feed ([`DurableStore::take_changes`]) from which the prober keeps its endpoint set. Making it durable is a separate step,
//! [`Persister::flush`]: under its own writer lock it takes a snapshot of the dirty entries
//! (briefly holding the store's read lock), writes them in one redb transaction and commits
//! it with an fsync — with the store lock released, so resolves, DNS answers and gossip validation carry
//! on during the flush. Writers are acknowledged only after a flush that covers their record
//! (the store's generation counter says which), so a SIGKILL at any instant loses no
//! acknowledged record; concurrent writers share one fsync. Because a flush always writes the
//! *current* entry of each dirty name, commits can never put an older seq on disk after a
//! newer one. The floor (highest seq and hash ever accepted) is persisted with each entry,
//! including compacted ones, so a restarted node still refuses replays of old records.
//!
//! A gossiped record is not committed on its own: its entry goes to the replica log
//! ([`crate::replica_log`], one `write`, kept across a SIGKILL) and [`Persister::fold`] commits
//! the logged names a few at a time; [`DurableStore::open`] replays what a kill left.
//!
//! Start-up reads the whole log into the index: entries are decoded and checked against their
//! hashes on [`LOAD_THREADS`] threads, and the index is built in one bulk pass
//! ([`MemStore::load`]), not entry by entry (at 10⁶ records that was most of a restart).
//!
//! A damaged entry never loses its floor: if the stored body does not decode or does not match
//! its hash, the entry is loaded as a bare floor (counted in [`DurableStore::corrupt_on_load`]
//! and logged), so the old record it replaced still cannot be replayed, and anti-entropy
//! fetches the body back from a peer (a duplicate of a body-less floor restores the body).
//! Only an entry whose fixed header is damaged is skipped whole; redb's own checksums make
//! that a torn-disk case, and it is counted the same way.
//!
//! The winner's kind (live or tombstone) is part of its rank: at equal seq a live record beats
//! a tombstone (see `dpin_protocol::merge`). Every entry ever written carries it — the header's
//! tombstone byte has been there since the first store, so entry format 1 needs no successor
//! and the data dir no format step for the new rule. On load the kind of an entry with a
//! body is taken from the body itself (the body's hash was just checked; a header byte that
//! disagrees is corrected and counted as damage). A body-less floor keeps its header byte:
//! that is the only copy of its kind. Whatever that byte says, it cannot let an older record
//! back in — the kind only orders two records of the *same* seq, and every lower seq stays
//! stale — and a peer's copy of the same record (same hash) restores body and kind together.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use dpin_protocol::store::{Entry, MemStore, Store};
use dpin_protocol::{Floor, StoreDigest};
use redb::{
    Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};
use thiserror::Error;

/// The entries, keyed by [`entry_key`]: the name's digest bucket, then the name. That is the
/// order anti-entropy moves records in (bucket by bucket, names ascending within one), and the
/// order [`MemStore`] keeps them in. Keyed by the name alone (data format 1, [`ENTRIES_V1`]),
/// a catching-up node's flushes landed all over the tree: every fetched chunk of a few
/// thousand records, in bucket order, touched as many B-tree leaves as records, and at 10⁵–10⁶
/// records the commits were about a third of the joiner's CPU. In bucket order a chunk fills
/// a few neighbouring leaves.
const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries.by-bucket");
/// The entries table of data format 1, keyed by the name alone: read once, by
/// [`upgrade_entries`], which moves it into [`ENTRIES`] and deletes it.
const ENTRIES_V1: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");

/// The [`ENTRIES`] key of `name`, built in `buf`: its bucket byte, then its bytes.
fn entry_key<'a>(name: &str, buf: &'a mut Vec<u8>) -> &'a [u8] {
    buf.clear();
    buf.push(dpin_protocol::digest::bucket_of(name));
    buf.extend_from_slice(name.as_bytes());
    buf
}

/// Moves a format-1 entries table ([`ENTRIES_V1`], keyed by name) into [`ENTRIES`] in one
/// transaction (all or nothing: a crash leaves the old table whole), in the new table's key
/// order, and deletes the old one; creates [`ENTRIES`] if it is missing. Returns how many
/// entries moved (0 when there was no old table). Idempotent.
fn upgrade_entries(db: &Database) -> Result<usize, StoreError> {
    let w = db.begin_write()?;
    let had_v1 = w.list_tables()?.any(|t| t.name() == ENTRIES_V1.name());
    let mut moved = 0;
    {
        let mut new = w.open_table(ENTRIES)?;
        if had_v1 {
            let old = w.open_table(ENTRIES_V1)?;
            // Keys first (a bucket byte and a name each, tens of MB at 10⁶), sorted into the
            // new order, so the inserts fill the new tree leaf by leaf.
            let mut keys: Vec<(u8, String)> = Vec::new();
            for item in old.iter()? {
                let (k, _) = item?;
                let name = k.value();
                keys.push((dpin_protocol::digest::bucket_of(name), name.to_owned()));
            }
            keys.sort_unstable();
            let mut buf = Vec::new();
            for (_, name) in &keys {
                if let Some(v) = old.get(name.as_str())? {
                    new.insert(entry_key(name, &mut buf), v.value())?;
                    moved += 1;
                }
            }
        }
    }
    if had_v1 {
        w.delete_table(ENTRIES_V1)?;
    }
    w.commit()?;
    Ok(moved)
}

/// Brings the store file at `path` to the bucket-ordered entries table ([`upgrade_entries`])
/// without loading it: the data dir's step from format 1 to 2 (`crate::datadir`). A missing
/// file is left missing. Returns how many entries moved.
pub fn upgrade_file(path: &Path) -> Result<usize, StoreError> {
    if !path.exists() {
        return Ok(0);
    }
    let db = Database::builder()
        .set_cache_size(DB_CACHE_BYTES)
        .create(path)?;
    upgrade_entries(&db)
}
/// Entry encoding version byte, so the format can evolve without misreading old files.
///
/// Layout (51-byte header, then the body): format, floor seq (u64 LE), floor hash (32),
/// expiry ms (u64 LE), tombstone flag (the winner's kind, ranked by the merge rule), has-body
/// flag, body. Unchanged since the first store.
const ENTRY_FORMAT: u8 = 1;

/// Failures of the durable layer.
#[derive(Debug, Error)]
pub enum StoreError {
    /// redb could not open, read or commit.
    #[error("database error: {0}")]
    Db(String),
    /// The replica log could not be read, written or removed (`crate::replica_log`).
    #[error("replica log: {0}")]
    Log(#[from] std::io::Error),
    /// A stored entry could not be decoded (the file was damaged or written by a newer dpin).
    #[error("corrupt entry for {name:?}: {reason}")]
    Corrupt {
        /// The name whose entry is damaged.
        name: String,
        /// What was wrong.
        reason: &'static str,
    },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// redb's page cache. Every read is served by the in-memory index, so redb reads only at
/// load (once, in key order) and for the B-tree pages a commit rewrites; its default cache
/// (1 GiB) kept a copy of the whole file in memory after the load (about the encoded size of
/// the store again, issue 14's memory target). Evicted pages come back from the OS page cache.
///
/// Small, because what it holds is mostly waste: after a load it is full of the last pages
/// the load read (at 32 MiB, 30 MB of a 10⁶-record node's memory, never read again), and a
/// commit's writes land on leaves spread over the whole file, which a cache a tenth of the
/// file's size hit only a tenth of the time anyway. A few MiB keep the branch pages near the
/// root that every commit walks.
pub const DB_CACHE_BYTES: usize = 4 << 20;

/// Most changes the feed holds for its reader ([`DurableStore::take_changes`]) before it
/// gives up on them and tells the reader to rebuild from the whole store instead: a bound on
/// memory when the reader is slow or absent (probing off), at about 300 bytes a change.
pub const MAX_FEED_CHANGES: usize = 65_536;

/// One change to the store's index: a name's winner replaced (or its body dropped by
/// compaction). Entries are copies; `old` is `None` for a name new to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The name.
    pub name: Box<str>,
    /// What the store held before.
    pub old: Option<Entry>,
    /// What it holds now.
    pub new: Entry,
}

/// What [`DurableStore::take_changes`] hands its reader.
#[derive(Debug, PartialEq, Eq)]
pub enum Changes {
    /// Every change since the last call, in order.
    Since(Vec<Change>),
    /// The changes were not kept (the store was just loaded, or the feed passed
    /// [`MAX_FEED_CHANGES`]): rebuild from the whole store.
    Rebuild,
}

/// The change feed: changes since its reader last took them, or the mark that it must
/// rebuild.
#[derive(Debug)]
struct Feed {
    changes: Vec<Change>,
    rebuild: bool,
}

/// The node's one store, shared by its threads. DNS answers, resolves, listings and a
/// flush's encoding only read it, under the read lock, so they never wait for one another:
/// with a mutex, the two DNS answer threads sharing a core waited for each other, about 90 %
/// of all the answers' lock waiting (stop 49). Applies (on the store writer thread,
/// [`crate::store_writer`]) and compaction's drops take the write lock ([`write()`]); a flush
/// takes its dirty names and compaction scans under the read lock. Side by side near DNS
/// saturation (`deploy/dns-lock-bench.sh`, 150,000 queries a second offered to one core under 1,000
/// gossiped updates a second) the answers waited 32–48 ms per 5 s in all, against 287–351 ms
/// with the mutex, and as many updates were applied.
pub type SharedStore = RwLock<DurableStore>;

/// The read lock of `lock` (the store's, [`SharedStore`]). A poisoned lock means a panic
/// while a writer held it; the store is still the last applied state (writes are durable
/// before the index changes), so the node keeps serving.
pub fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The write lock of `lock` if no one holds it (poison as for [`read`]), else `None`.
fn try_write<T>(lock: &RwLock<T>) -> Option<RwLockWriteGuard<'_, T>> {
    match lock.try_write() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// How long a writer that finds the store held defers to readers before it queues for the
/// lock ([`write()`]).
pub const WRITER_DEFERS: std::time::Duration = std::time::Duration::from_millis(2);

/// The write lock of `store` (poison as for [`read`]). A writer that finds it held first
/// *defers* ([`write_deferring`] with [`WRITER_DEFERS`]): std's lock holds every new reader
/// behind a queued writer, and a writer below the DNS answer threads' priority (compaction's
/// drops, the prober's change feed; gossip merges and flushes did too before stop 52) kept
/// the answers waiting for a thread that itself waited for a core (stop 50: answers' p99
/// 2.4–7.9 ms against 1.5–5.0 ms with the mutex before, side by side).
pub fn write(store: &SharedStore) -> RwLockWriteGuard<'_, DurableStore> {
    write_deferring(store, WRITER_DEFERS)
}

/// The write lock of `lock`: taken at once if it is free; else retried every 20 µs for up to
/// `defer`, while readers keep taking the read lock beside whoever holds it; then queued like
/// any writer, after which new readers wait for it. So readers on other cores cannot starve a
/// writer: a write waits at most `defer` and its fair turn.
pub fn write_deferring<T>(lock: &RwLock<T>, defer: std::time::Duration) -> RwLockWriteGuard<'_, T> {
    if let Some(g) = try_write(lock) {
        return g;
    }
    let deadline = std::time::Instant::now() + defer;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_micros(20));
        if let Some(g) = try_write(lock) {
            return g;
        }
    }
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Most records a batch applies per hold of the write lock ([`apply_in_holds`]): about 12 µs
/// each at 10⁶ names, so a hold stays near 0.2 ms. A sync chunk carries up to
/// [`dpin_protocol::digest::MAX_RECORDS_PER_CHUNK`] (2,048) records, which in one hold kept
/// the DNS answers waiting about 25 ms.
pub const APPLY_HOLD_RECORDS: usize = 16;

/// Walks the index to each of `records`' names under the *read* lock, beside the DNS answers,
/// so that the apply that follows under the write lock finds the walk's nodes and the held
/// bodies in the CPU's cache. At 10⁶ names a walk is a chain of cache misses (about twenty
/// names read from bodies), and the apply makes it before it decides: profiled on the store
/// writer under 1,000 gossiped updates a second (stop 53), that lookup was about a fifth of
/// the time the write lock was held. The walk's result is not used; the apply looks again.
pub fn warm(store: &SharedStore, records: &[dpin_protocol::store::Prepared<'_>]) {
    let s = read(store);
    for p in records {
        std::hint::black_box(s.mem().entry(p.name()));
    }
}

/// Applies `records` (prepared and verified) in order, [`APPLY_HOLD_RECORDS`] per hold of the
/// write lock, calling `between` after each hold but the last (the node yields the core
/// there, so readers woken by the release take the lock before the next hold). Returns every
/// outcome and the store's generation after the last apply. An error stops the batch; the
/// records applied before it stay applied, as with one hold. Each hold is warmed first
/// ([`warm`]).
pub fn apply_in_holds(
    store: &SharedStore,
    records: &[dpin_protocol::store::Prepared<'_>],
    now_ms: u64,
    freshness: dpin_protocol::Freshness,
    mut between: impl FnMut(),
) -> Result<(Vec<dpin_protocol::Outcome>, u64), StoreError> {
    let mut outcomes = Vec::with_capacity(records.len());
    let mut chunks = records.chunks(APPLY_HOLD_RECORDS).peekable();
    while let Some(chunk) = chunks.next() {
        warm(store, chunk);
        let mut s = write(store);
        outcomes.extend(s.apply_prepared_batch(chunk, now_ms, freshness)?);
        drop(s);
        if chunks.peek().is_some() {
            between();
        }
    }
    Ok((outcomes, read(store).generation()))
}

/// The node's store. Not internally synchronised: the node keeps it behind one lock
/// ([`SharedStore`]) so that decide-and-index happens atomically per record; durability is
/// [`Persister`]'s job.
///
/// Every change of the index ([`Store::put_entry`], and every entry loaded from disk) goes
/// through one place, which keeps the node's indexes instead of whole-store scans: the names
/// with a reserved label (offers, blob manifests: [`DurableStore::reserved`]), and a change
/// feed for the prober's endpoint set ([`DurableStore::take_changes`]), whose decoding happens
/// in its reader, off the store lock.
pub struct DurableStore {
    db: Arc<Database>,
    /// The store file (the replica log's files sit beside it, `crate::replica_log`).
    path: std::path::PathBuf,
    /// The number the replica log's next file takes (one past every file replay found).
    log_next: u64,
    /// What the last open took from the replica log.
    replayed: Replayed,
    mem: MemStore,
    /// Names changed since the last flush took them. Behind a mutex of its own so that a
    /// flush takes them under the store's *read* lock ([`DurableStore::take_dirty_names`]):
    /// applies add to it under the write lock, which excludes every reader, so the names and
    /// the generation a flush reads together are still one consistent snapshot.
    dirty: Mutex<BTreeSet<String>>,
    generation: u64,
    corrupt_on_load: usize,
    /// Names whose label is reserved (starts with `_`: offers, blob manifests) and whose
    /// entry holds a body, so listing them reads only them.
    reserved: BTreeSet<Box<str>>,
    feed: Feed,
    /// Readers waiting for names to change (blocking reads, [`crate::watch`]).
    watches: Arc<crate::watch::Watches>,
}

impl DurableStore {
    /// Opens (or creates) `path` and loads every entry into memory.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_retention(path, dpin_protocol::store::DEFAULT_BODY_RETENTION_MS)
    }

    /// Like [`DurableStore::open`], keeping winners' bodies `retention_ms` past expiry
    /// (see [`dpin_protocol::store::DEFAULT_BODY_RETENTION_MS`]; shorter only for test runs
    /// with short TTLs).
    pub fn open_with_retention(path: &Path, retention_ms: u64) -> Result<Self, StoreError> {
        let db = Database::builder()
            .set_cache_size(DB_CACHE_BYTES)
            .create(path)?;
        // Make sure the table exists so read transactions on an empty database succeed, and
        // move a format-1 table into it if one is there (the data dir's migration does it
        // first; a store opened directly must not read an old file as empty).
        upgrade_entries(&db)?;
        let mut store = Self {
            db: Arc::new(db),
            path: path.to_owned(),
            log_next: 0,
            replayed: Replayed::default(),
            mem: MemStore::new().with_retention(retention_ms),
            dirty: Mutex::new(BTreeSet::new()),
            generation: 0,
            corrupt_on_load: 0,
            reserved: BTreeSet::new(),
            feed: Feed {
                changes: Vec::new(),
                rebuild: true,
            },
            watches: Arc::default(),
        };
        store.reload()?;
        store.replay_replica_log()?;
        Ok(store)
    }

    /// Takes what the replica log holds ([`crate::replica_log`]) into the loaded store, commits
    /// it to redb and deletes the log's files. A logged entry is taken only if it outranks the
    /// store's (the merge rule's rank), so replay is idempotent and an old frame never replaces
    /// a record a later commit put on disk. A torn or damaged tail is skipped and counted.
    fn replay_replica_log(&mut self) -> Result<(), StoreError> {
        let files = crate::replica_log::files(&self.path)?;
        let mut replayed = Replayed::default();
        for (number, path) in &files {
            self.log_next = self.log_next.max(number.saturating_add(1));
            let frames = crate::replica_log::read_frames(path)?;
            if frames.torn {
                replayed.torn += 1;
                tracing::warn!(path = %path.display(), "replica log: a torn or damaged tail was skipped");
            }
            for (name, bytes) in frames.entries {
                let entry = match decode_stored_entry(&name, &bytes) {
                    Ok(e) => e,
                    Err(e) => {
                        replayed.torn += 1;
                        tracing::warn!(%e, "replica log: an entry did not decode; skipped");
                        continue;
                    }
                };
                let newer = self
                    .mem
                    .entry(&name)
                    .is_none_or(|held| entry.rank() > held.rank());
                if newer {
                    self.put_entry(&name, entry)?;
                    replayed.taken += 1;
                } else {
                    replayed.stale += 1;
                }
            }
        }
        if !self.dirty_mut().is_empty() {
            // A failed commit fails the open, which drops this store: nothing to put back.
            let (_, entries) = self.take_dirty();
            commit(&self.db, &entries)?;
        }
        for (_, path) in &files {
            remove_if_present(path)?;
        }
        if !files.is_empty() {
            tracing::info!(
                files = files.len(),
                taken = replayed.taken,
                stale = replayed.stale,
                torn = replayed.torn,
                "replica log replayed into the store"
            );
        }
        self.replayed = replayed;
        Ok(())
    }

    /// What the last open took from the replica log.
    pub fn replayed(&self) -> Replayed {
        self.replayed
    }

    /// `name`'s current entry in the store's own encoding, for the replica log
    /// ([`Persister::log_replicas`]); `None` if the store holds nothing for it.
    pub fn logged_entry(&self, name: &str) -> Option<(String, Vec<u8>)> {
        self.mem
            .entry(name)
            .map(|e| (name.to_owned(), encode_entry(e)))
    }

    /// Entries found damaged on disk at the last load. A damaged body is dropped and its
    /// floor kept (anti-entropy fetches the body again); a damaged header loses the entry.
    pub fn corrupt_on_load(&self) -> usize {
        self.corrupt_on_load
    }

    /// Sets the admission quota for new names (see [`dpin_protocol::store::Quota`]; the
    /// default is [`dpin_protocol::store::DEFAULT_QUOTA`]). Names already held, loaded from
    /// disk or not, are never dropped, even above a lower quota.
    pub fn set_quota(&mut self, quota: dpin_protocol::store::Quota) {
        self.mem.set_quota(quota);
    }

    /// The in-memory index (reads never touch the disk).
    pub fn mem(&self) -> &MemStore {
        &self.mem
    }

    /// Names held with a reserved label starting with `prefix` (which must start with `_`,
    /// e.g. `_offer-` or `_blob-<root>.`) and holding a body, in name order, with their
    /// entries: reads only those names, not the store.
    pub fn reserved<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a Entry)> {
        self.reserved
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |n| n.starts_with(prefix))
            .filter_map(|n| self.mem.entry(n).map(|e| (&**n, e)))
    }

    /// Whether the feed has a backlog: the changes waiting for its reader are past half of
    /// [`MAX_FEED_CHANGES`], or it overflowed and waits for a rebuild. The prober then takes
    /// them early (`crate::health::run`) instead of letting the feed overflow into a rebuild
    /// from the whole store, or, on a joining node, holds off until the bulk has arrived
    /// (`crate::health::Pace`).
    pub fn feed_backlog(&self) -> bool {
        self.feed.rebuild || self.feed.changes.len() >= MAX_FEED_CHANGES / 2
    }

    /// The changes since the last call (the change feed's one reader is the prober's
    /// endpoint index, [`crate::health::ProbeIndex`]), or [`Changes::Rebuild`] right after
    /// the store was loaded and whenever more than [`MAX_FEED_CHANGES`] piled up.
    pub fn take_changes(&mut self) -> Changes {
        let changes = std::mem::take(&mut self.feed.changes);
        if std::mem::take(&mut self.feed.rebuild) {
            Changes::Rebuild
        } else {
            Changes::Since(changes)
        }
    }

    /// The readers waiting on names of this store ([`crate::watch`]); woken at every change.
    pub fn watches(&self) -> Arc<crate::watch::Watches> {
        self.watches.clone()
    }

    /// The one place the index changes: keeps the reserved-name index and the change feed,
    /// and wakes the readers waiting on the name.
    fn index_change(&mut self, name: &str, entry: Entry) {
        if is_reserved(name) {
            if entry.bytes.is_some() {
                if !self.reserved.contains(name) {
                    self.reserved.insert(name.into());
                }
            } else {
                self.reserved.remove(name);
            }
        }
        if !self.feed.rebuild {
            if self.feed.changes.len() >= MAX_FEED_CHANGES {
                self.feed.changes = Vec::new();
                self.feed.rebuild = true;
            } else {
                self.feed.changes.push(Change {
                    name: name.into(),
                    old: self.mem.entry(name).cloned(),
                    new: entry.clone(),
                });
            }
        }
        self.mem.insert(name, entry);
        self.watches.changed(name);
    }

    /// Counts index changes; a flush that covers generation `g` made every change up to `g`
    /// durable.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The persister that makes this store's changes durable.
    ///
    /// Call it once per open store: the persister owns the replica log's appends, and two
    /// would number their files alike.
    pub fn persister(&self) -> Persister {
        Persister {
            db: self.db.clone(),
            durable: Arc::new(Mutex::new(self.generation)),
            log: Arc::new(Mutex::new(LogState {
                log: crate::replica_log::ReplicaLog::new(&self.path, self.log_next),
                sealed: Vec::new(),
            })),
        }
    }

    /// Takes the dirty entries (current state, encoded) and the generation they bring the
    /// disk to.
    fn take_dirty(&mut self) -> (u64, Vec<(String, Vec<u8>)>) {
        let (generation, names) = self.take_dirty_names();
        let mut entries = Vec::with_capacity(names.len());
        self.encode_current(names, &mut entries);
        (generation, entries)
    }

    /// Takes the dirty names and the generation their entries bring the disk to: a swap, so
    /// the store lock is held for no time whatever their number ([`Persister::flush`] encodes
    /// them in [`ENCODE_CHUNK`]s, taking the lock for each). `&self`: the flush calls it under
    /// the read lock, beside the DNS answers. Under the write lock, a flush (a background
    /// thread, 250 a second under 1,000 gossiped updates a second) that found readers in the
    /// lock deferred and then queued for it, and a queued writer holds every new reader
    /// behind it until it gets a core.
    fn take_dirty_names(&self) -> (u64, BTreeSet<String>) {
        let names = std::mem::take(&mut *self.dirty_lock());
        (self.generation, names)
    }

    fn dirty_lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.dirty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn dirty_mut(&mut self) -> &mut BTreeSet<String> {
        self.dirty
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends the current entry of each of `names` (encoded) to `out`; names no longer held
    /// are skipped. An entry encoded after the names were taken is at least as new as the one
    /// that made them dirty, so it is still what their generation needs on disk.
    fn encode_current(
        &self,
        names: impl IntoIterator<Item = String>,
        out: &mut Vec<(String, Vec<u8>)>,
    ) {
        out.extend(
            names
                .into_iter()
                .filter_map(|n| self.mem.entry(&n).map(encode_entry).map(|b| (n, b))),
        );
    }

    fn mark_dirty(&self, names: impl IntoIterator<Item = String>) {
        self.dirty_lock().extend(names);
    }

    fn reload(&mut self) -> Result<(), StoreError> {
        let mut mem = MemStore::new()
            .with_retention(self.mem.retention_ms())
            .with_quota(self.mem.quota());
        let r = self.db.begin_read()?;
        let table = r.open_table(ENTRIES)?;
        let held = usize::try_from(table.len()?).unwrap_or(0);
        let (items, reserved, corrupt) = load_entries(&table, held)?;
        mem.load(items);
        self.mem = mem;
        self.reserved = reserved;
        // The feed's reader rebuilds from the loaded store.
        self.feed = Feed {
            changes: Vec::new(),
            rebuild: true,
        };
        self.corrupt_on_load = corrupt;
        Ok(())
    }
}

/// Threads that decode and check the entries at load: the start-up of a large store is
/// dominated by decoding each body and checking it against its hash (then hashing its
/// digest contribution), which needs nothing shared. Two: the machines dpin is measured on
/// have two cores; more would only queue.
pub const LOAD_THREADS: usize = 2;

/// Entries read from redb per batch handed to a load thread: large enough that handing over
/// costs nothing per entry, small enough that the batches in flight (two queued per thread)
/// are a few MB.
pub const LOAD_BATCH: usize = 4096;

/// A batch of raw entries: names and values packed into one buffer.
#[derive(Default)]
struct RawBatch {
    bytes: Vec<u8>,
    /// Per entry: where its name ends and where its value ends in `bytes`.
    ends: Vec<(usize, usize)>,
}

/// What a load thread makes of one entry.
struct Decoded {
    item: dpin_protocol::store::LoadItem,
    /// The name, when it is reserved and holds a body (the reserved-name index).
    reserved: Option<Box<str>>,
}

/// Decodes and checks one batch (a load thread's work); `corrupt` counts damaged entries.
fn decode_batch(batch: &RawBatch, corrupt: &mut usize) -> Vec<Decoded> {
    let mut out = Vec::with_capacity(batch.ends.len());
    let mut start = 0;
    for &(name_end, end) in &batch.ends {
        let (Some(name), Some(value)) = (
            batch
                .bytes
                .get(start..name_end)
                .and_then(|b| std::str::from_utf8(b).ok()),
            batch.bytes.get(name_end..end),
        ) else {
            // Cannot happen (the reader packed them from a `&str` key); counted, not served.
            *corrupt += 1;
            start = end;
            continue;
        };
        start = end;
        let entry = match decode_entry(name, value) {
            Ok(Loaded::Whole(entry)) => entry,
            Ok(Loaded::FloorOnly(entry, e)) => {
                tracing::error!(%e, "damaged record body on disk; keeping its floor, a peer will resend the body");
                *corrupt += 1;
                entry
            }
            Ok(Loaded::Fixed(entry, e)) => {
                tracing::error!(%e, "damaged store entry header; corrected from its verified body");
                *corrupt += 1;
                entry
            }
            Err(e) => {
                tracing::error!(%e, "skipping store entry with a damaged header");
                *corrupt += 1;
                continue;
            }
        };
        let reserved = (is_reserved(name) && entry.bytes.is_some()).then(|| name.into());
        out.push(Decoded {
            item: dpin_protocol::store::LoadItem::new(name, entry),
            reserved,
        });
    }
    out
}

type LoadedEntries = (
    Vec<dpin_protocol::store::LoadItem>,
    BTreeSet<Box<str>>,
    usize,
);

/// Reads every entry of `table` (about `held` of them) in key order and decodes them on
/// [`LOAD_THREADS`] threads, in batches of [`LOAD_BATCH`]; returns them in key order, with
/// the reserved names and the count of damaged entries.
fn load_entries(
    table: &redb::ReadOnlyTable<&[u8], &[u8]>,
    held: usize,
) -> Result<LoadedEntries, StoreError> {
    use std::sync::mpsc;
    std::thread::scope(|scope| {
        let (done_tx, done_rx) = mpsc::channel::<(usize, Vec<Decoded>, usize)>();
        let mut workers = Vec::with_capacity(LOAD_THREADS);
        for _ in 0..LOAD_THREADS {
            // Two batches queued per thread: the reader stays ahead without reading the
            // whole table into memory.
            let (tx, rx) = mpsc::sync_channel::<(usize, RawBatch)>(2);
            let done = done_tx.clone();
            scope.spawn(move || {
                for (seq, batch) in rx {
                    let mut corrupt = 0;
                    let decoded = decode_batch(&batch, &mut corrupt);
                    if done.send((seq, decoded, corrupt)).is_err() {
                        return;
                    }
                }
            });
            workers.push(tx);
        }
        drop(done_tx);
        let mut sent = 0usize;
        let mut batch = RawBatch::default();
        let send = |batch: RawBatch, sent: &mut usize| {
            let to = &workers[*sent % LOAD_THREADS];
            *sent += 1;
            // A thread gone (it panicked) shows as entries missing below.
            let _ = to.send((*sent - 1, batch));
        };
        for item in table.iter()? {
            let (k, v) = item?;
            // The name follows the bucket byte (an empty key, never written, reads as an
            // empty name: counted as damaged by the decode).
            batch
                .bytes
                .extend_from_slice(k.value().get(1..).unwrap_or_default());
            let name_end = batch.bytes.len();
            batch.bytes.extend_from_slice(v.value());
            batch.ends.push((name_end, batch.bytes.len()));
            if batch.ends.len() >= LOAD_BATCH {
                send(std::mem::take(&mut batch), &mut sent);
            }
        }
        if !batch.ends.is_empty() {
            send(batch, &mut sent);
        }
        drop(workers);
        let mut batches: Vec<Option<(Vec<Decoded>, usize)>> = (0..sent).map(|_| None).collect();
        for (seq, decoded, corrupt) in done_rx {
            if let Some(slot) = batches.get_mut(seq) {
                *slot = Some((decoded, corrupt));
            }
        }
        let mut items = Vec::with_capacity(held);
        let mut reserved = BTreeSet::new();
        let mut corrupt = 0;
        for slot in batches {
            let Some((decoded, c)) = slot else {
                return Err(StoreError::Db("a load thread stopped".into()));
            };
            corrupt += c;
            for d in decoded {
                reserved.extend(d.reserved);
                items.push(d.item);
            }
        }
        Ok((items, reserved, corrupt))
    })
}

impl Store for DurableStore {
    type Error = StoreError;

    fn entry(&self, name: &str) -> Option<&Entry> {
        self.mem.entry(name)
    }

    fn put_entry(&mut self, name: &str, entry: Entry) -> Result<(), StoreError> {
        // In memory only; durable at the next Persister::flush (callers acknowledge after it).
        self.index_change(name, entry);
        self.dirty_mut().insert(name.to_owned());
        self.generation += 1;
        Ok(())
    }

    fn bucket_entries(&self, bucket: u8) -> Vec<(std::borrow::Cow<'_, str>, &Entry)> {
        self.mem.bucket_entries(bucket)
    }

    fn admit(&self, name: &str, entry: &Entry) -> Result<(), dpin_protocol::error::AdmissionError> {
        self.mem.admit(name, entry)
    }

    fn bucket_entries_after(
        &self,
        bucket: u8,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<(std::borrow::Cow<'_, str>, &Entry)> {
        self.mem.bucket_entries_after(bucket, after, limit)
    }

    fn digest(&self) -> StoreDigest {
        self.mem.digest()
    }

    fn compactable(&self, now_ms: u64) -> Vec<String> {
        self.mem.compactable(now_ms)
    }

    fn len(&self) -> usize {
        self.mem.len()
    }

    fn retention_ms(&self) -> u64 {
        self.mem.retention_ms()
    }
}

/// Whether `name`'s label is reserved (offers `_offer-*`, blob manifests `_blob-*`): user
/// labels never start with `_` ([`dpin_protocol::record::validate_label`]).
fn is_reserved(name: &str) -> bool {
    name.starts_with('_')
}

fn encode_entry(e: &Entry) -> Vec<u8> {
    let body = e.bytes.as_deref().unwrap_or(&[]);
    let mut out = Vec::with_capacity(51 + body.len());
    out.push(ENTRY_FORMAT);
    out.extend_from_slice(&e.floor.seq.to_le_bytes());
    out.extend_from_slice(&e.floor.hash);
    out.extend_from_slice(&e.expires_at_ms.to_le_bytes());
    out.push(u8::from(e.tombstone));
    out.push(u8::from(e.bytes.is_some()));
    out.extend_from_slice(body);
    out
}

/// An entry read from disk.
enum Loaded {
    /// Header and body intact.
    Whole(Entry),
    /// The header (floor) is intact but the body is not; the body was dropped.
    FloorOnly(Entry, StoreError),
    /// Body intact, but a header field disagreed with it and was corrected from the body.
    Fixed(Entry, StoreError),
}

/// Decodes one stored entry of `name` (a redb value or a replica log frame's entry), checking
/// its body against its hash: a damaged body leaves the floor, a header field that disagrees
/// with the body is taken from the body. Only a damaged header is an error.
pub fn decode_stored_entry(name: &str, b: &[u8]) -> Result<Entry, StoreError> {
    match decode_entry(name, b)? {
        Loaded::Whole(e) | Loaded::Fixed(e, _) | Loaded::FloorOnly(e, _) => Ok(e),
    }
}

fn decode_entry(name: &str, b: &[u8]) -> Result<Loaded, StoreError> {
    let corrupt = |reason| StoreError::Corrupt {
        name: name.to_owned(),
        reason,
    };
    if b.len() < 51 {
        return Err(corrupt("entry shorter than its header"));
    }
    if b[0] != ENTRY_FORMAT {
        return Err(corrupt("unknown entry format version"));
    }
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(a)
    };
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&b[9..41]);
    let has_body = b[50] == 1;
    let body = &b[51..];
    let mut entry = Entry {
        floor: Floor {
            seq: u64_at(1),
            hash,
        },
        expires_at_ms: u64_at(41),
        tombstone: b[49] == 1,
        bytes: None,
    };
    if !has_body {
        return Ok(Loaded::Whole(entry));
    }
    // Validate on load: a damaged body must never be served or gossiped — but its floor still
    // guards the name against replays of older records.
    let rec = match dpin_protocol::SignedRecord::decode(body) {
        Ok(rec) => rec,
        Err(_) => return Ok(Loaded::FloorOnly(entry, corrupt("body does not decode"))),
    };
    if rec.content_hash() != hash {
        return Ok(Loaded::FloorOnly(
            entry,
            corrupt("body does not match its hash"),
        ));
    }
    entry.bytes = Some(body.to_vec().into_boxed_slice());
    // The verified body is the truth about its kind, which the merge rule ranks by.
    if entry.tombstone != rec.is_tombstone() {
        entry.tombstone = rec.is_tombstone();
        return Ok(Loaded::Fixed(
            entry,
            corrupt("kind flag disagrees with the body; taken from the body"),
        ));
    }
    Ok(Loaded::Whole(entry))
}

/// What an open took from the replica log ([`DurableStore::replayed`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Entries that outranked the store's and were taken.
    pub taken: usize,
    /// Entries the store already held at their rank or above.
    pub stale: usize,
    /// Torn or damaged file tails and entries that did not decode, skipped.
    pub torn: usize,
}

/// Most sealed replica log files waiting for a fold (each at most
/// [`crate::replica_log::FOLD_AT_BYTES`] and a few records, so a few MB in all); past it,
/// folds keep failing and gossiped records are committed one by one instead.
pub const MAX_SEALED_LOGS: usize = 16;

/// Dirty entries a flush encodes per hold of the store lock (tens of µs).
pub const ENCODE_CHUNK: usize = 32;

/// Removes `path`; already gone is fine.
fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `entries` in one redb transaction and commits it durably (fsync).
fn commit(db: &Database, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate);
    {
        let mut table = txn.open_table(ENTRIES)?;
        let mut key = Vec::new();
        for (name, bytes) in entries {
            table.insert(entry_key(name, &mut key), bytes.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// The replica log and the files it sealed that no commit has covered yet.
struct LogState {
    log: crate::replica_log::ReplicaLog,
    sealed: Vec<std::path::PathBuf>,
}

/// Makes a [`DurableStore`]'s changes durable (group commit). Cloneable; one writer at a time.
#[derive(Clone)]
pub struct Persister {
    db: Arc<Database>,
    /// Highest generation known to be on disk; the lock also serialises flushes.
    durable: Arc<Mutex<u64>>,
    /// The replica log ([`Persister::log_replicas`], [`Persister::fold`]).
    log: Arc<Mutex<LogState>>,
}

impl Persister {
    /// Makes every change up to generation `upto` durable. Returns at once if a flush already
    /// covered it. `store` is locked only to snapshot the dirty entries, never during I/O.
    pub fn flush(&self, store: &SharedStore, upto: u64) -> Result<(), StoreError> {
        let mut durable = self
            .durable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *durable >= upto {
            return Ok(());
        }
        let (generation, names) = read(store).take_dirty_names();
        // Encoded under the read lock, so DNS answers and resolves read beside it; a chunk per
        // hold, so a hold is bounded whatever the number of dirty names (a catch-up's
        // thousands): the flush runs below the answer threads' priority, so it can be
        // preempted while holding it, and a writer that has deferred its [`WRITER_DEFERS`]
        // and queued meanwhile holds up the readers behind it. Stop 43 timed holds by the old
        // one-hold take of up to 0.88 ms.
        let mut entries = Vec::with_capacity(names.len());
        let mut names = names.into_iter().peekable();
        while names.peek().is_some() {
            let chunk: Vec<String> = names.by_ref().take(ENCODE_CHUNK).collect();
            read(store).encode_current(chunk, &mut entries);
        }
        match commit(&self.db, &entries) {
            Ok(()) => {
                *durable = generation;
                Ok(())
            }
            Err(e) => {
                // Not on disk: keep them dirty so the next flush retries.
                read(store).mark_dirty(entries.into_iter().map(|(n, _)| n));
                Err(e)
            }
        }
    }

    /// Appends applied replicas' entries ([`DurableStore::logged_entry`]) to the replica log:
    /// kept across a SIGKILL from here on, on disk after the next [`Persister::fold`] (see
    /// `crate::replica_log`). The entries stay dirty in the store, so any flush commits them
    /// too.
    ///
    /// Refused while [`MAX_SEALED_LOGS`] sealed files wait for a fold that keeps failing: the
    /// log is then no longer bounded by the folds, and the caller commits instead.
    pub fn log_replicas(
        &self,
        entries: &[(String, Vec<u8>)],
    ) -> Result<crate::replica_log::Appended, StoreError> {
        let mut state = self.log_state();
        if state.sealed.len() >= MAX_SEALED_LOGS {
            return Err(StoreError::Log(std::io::Error::other(
                "too many replica log files wait for a fold",
            )));
        }
        Ok(state.log.append(entries)?)
    }

    /// Commits everything the replica log holds to redb and deletes its files: seals the
    /// current file (later appends go to the next), flushes the store up to its generation now
    /// (every sealed entry was applied, so counted, before it was appended, so before the
    /// seal), then deletes the sealed files. Returns how many files it deleted. A failed flush
    /// keeps them for the next fold or the next open's replay.
    pub fn fold(&self, store: &SharedStore) -> Result<usize, StoreError> {
        let sealed = {
            let mut state = self.log_state();
            if let Some(path) = state.log.seal() {
                state.sealed.push(path);
            }
            state.sealed.clone()
        };
        if sealed.is_empty() {
            return Ok(0);
        }
        let generation = read(store).generation();
        self.flush(store, generation)?;
        for path in &sealed {
            remove_if_present(path)?;
        }
        self.log_state().sealed.retain(|p| !sealed.contains(p));
        Ok(sealed.len())
    }

    /// Runs `f` while holding the lock every flush takes, so commits wait until it returns
    /// (tests: a stalled disk).
    #[cfg(test)]
    pub(crate) fn hold_flushes<T>(&self, f: impl FnOnce() -> T) -> T {
        let _held = self
            .durable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f()
    }

    /// Whether the replica log holds entries no fold has committed yet.
    pub fn log_pending(&self) -> bool {
        let state = self.log_state();
        !state.log.is_empty() || !state.sealed.is_empty()
    }

    fn log_state(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpin_protocol::{Content, Freshness, Outcome, RecordBody, SignedRecord, ZoneKey};

    const NOW: u64 = 1_800_000_000_000;

    fn tombstone(key: &ZoneKey, seq: u64) -> SignedRecord {
        RecordBody {
            zone: key.zone(),
            label: "web".into(),
            seq,
            expires_at_ms: NOW + 3_600_000,
            content: Content::Tombstone,
        }
        .sign(key)
        .expect("signs")
    }

    /// A thread that adds one to `lock`'s value under [`write_deferring`] with `defer`.
    fn deferring_writer(
        lock: &Arc<RwLock<u32>>,
        defer: std::time::Duration,
    ) -> std::thread::JoinHandle<()> {
        let lock = lock.clone();
        std::thread::spawn(move || *write_deferring(&lock, defer) += 1)
    }

    /// A writer that finds readers in the lock defers to them: while it waits, new readers
    /// still take the read lock (std's queued writer would hold them), and it takes the lock
    /// once the readers let go. The deferral here is long, so a slow machine cannot end it
    /// before the check.
    #[test]
    fn a_deferring_writer_lets_new_readers_in_and_writes_when_they_are_gone() {
        let lock = Arc::new(RwLock::new(0u32));
        let held = lock.read().expect("not poisoned");
        let writer = deferring_writer(&lock, std::time::Duration::from_secs(60));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!writer.is_finished(), "the writer waits for the reader");
        assert!(
            lock.try_read().is_ok(),
            "a new reader is not held behind the deferring writer"
        );
        drop(held);
        writer.join().expect("writer thread");
        assert_eq!(*lock.read().expect("not poisoned"), 1);
    }

    /// Runs `f` on another thread while this one holds `store`'s read lock (as a DNS answer
    /// would), for up to 5 s: whether `f` finished in that time, and its result once the lock
    /// is let go (a blocked `f` then finishes too).
    fn beside_a_held_read_lock<T: Send>(
        store: &SharedStore,
        f: impl FnOnce() -> T + Send,
    ) -> (bool, T) {
        let held = read(store);
        std::thread::scope(|scope| {
            let run = scope.spawn(f);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !run.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let finished = run.is_finished();
            drop(held);
            (finished, run.join().expect("the thread beside the reader"))
        })
    }

    /// A flush takes its dirty names under the store's read lock: a reader holding the lock
    /// (a DNS answer) does not stop it, and no writer queues in front of the next readers.
    /// Before stop 52 it took them under the write lock and waited here for the reader.
    #[test]
    fn a_flush_takes_its_names_beside_a_held_read_lock() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("store.redb");
        let key = ZoneKey::generate(&mut rand::rngs::OsRng);
        {
            let store = RwLock::new(DurableStore::open(&path)?);
            let persister = read(&store).persister();
            let generation = {
                let mut s = write(&store);
                s.apply(&record(&key, 1), NOW, Freshness::Publish, None)?;
                s.generation()
            };
            let (finished, flushed) =
                beside_a_held_read_lock(&store, || persister.flush(&store, generation));
            flushed?;
            assert!(
                finished,
                "the flush waited for the reader to let go of the store"
            );
        }
        let reopened = DurableStore::open(&path)?;
        assert_eq!(
            reopened.entry(&record(&key, 1).name()).map(|e| e.floor.seq),
            Some(1)
        );
        Ok(())
    }

    /// [`warm`] walks the index under the read lock only: it finishes while another thread
    /// holds that lock (a DNS answer), where the write lock would wait for it.
    #[test]
    fn warming_an_apply_reads_beside_a_held_read_lock() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let key = ZoneKey::generate(&mut rand::rngs::OsRng);
        let store = RwLock::new(DurableStore::open(&dir.path().join("store.redb"))?);
        write(&store).apply(&record(&key, 1), NOW, Freshness::Publish, None)?;
        let records = [
            dpin_protocol::store::Prepared::verified(record(&key, 2)),
            dpin_protocol::store::Prepared::verified(record(&key, 3)),
        ];
        let (finished, ()) = beside_a_held_read_lock(&store, || warm(&store, &records));
        assert!(
            finished,
            "warming waited for the reader to let go of the store"
        );
        Ok(())
    }

    /// A batch is applied [`APPLY_HOLD_RECORDS`] records per hold of the write lock, and the
    /// lock is free between holds (readers get in there), not taken once for the whole batch.
    #[test]
    fn a_batch_applies_in_holds_of_a_few_records_with_the_lock_free_between(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = RwLock::new(DurableStore::open(&dir.path().join("store.redb"))?);
        let key = ZoneKey::generate(&mut rand::rngs::OsRng);
        let n = APPLY_HOLD_RECORDS * 3 + 5;
        let mut prepared: Vec<dpin_protocol::store::Prepared<'static>> = (0..n)
            .map(|i| {
                let body = RecordBody {
                    zone: key.zone(),
                    label: format!("svc{i}"),
                    seq: 1,
                    expires_at_ms: NOW + 3_600_000,
                    content: Content::Endpoints(vec!["127.0.0.1:80".parse().expect("endpoint")]),
                };
                dpin_protocol::store::Prepared::new(body.sign(&key).expect("signs"))
            })
            .collect();
        dpin_protocol::store::Prepared::verify_all(&mut prepared);
        let mut seen = Vec::new();
        let (outcomes, generation) =
            apply_in_holds(&store, &prepared, NOW, Freshness::Replicate, || {
                let free = store.try_read().expect("the lock is free between holds");
                seen.push(free.len());
            })?;
        let holds: Vec<usize> = (1..=3).map(|h| h * APPLY_HOLD_RECORDS).collect();
        assert_eq!(
            seen, holds,
            "each hold applied the next {APPLY_HOLD_RECORDS}"
        );
        assert_eq!(outcomes.len(), n);
        assert!(outcomes.iter().all(Outcome::changed_store), "{outcomes:?}");
        let s = read(&store);
        assert_eq!(s.len(), n);
        assert_eq!(generation, s.generation());
        Ok(())
    }

    /// Past its deferral a writer queues like any other, so readers that keep coming cannot
    /// starve it: with no deferral, a new reader must wait for the queued writer.
    #[test]
    fn past_its_deferral_a_writer_queues_and_holds_new_readers() {
        let lock = Arc::new(RwLock::new(0u32));
        let held = lock.read().expect("not poisoned");
        let writer = deferring_writer(&lock, std::time::Duration::ZERO);
        // The writer queues within a moment; until it has, a new reader still gets in.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while lock.try_read().is_ok() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(
            lock.try_read().is_err(),
            "a new reader waits for the queued writer"
        );
        drop(held);
        writer.join().expect("writer thread");
        assert_eq!(*lock.read().expect("not poisoned"), 1);
    }

    /// A store written by data format 1 (entries keyed by name alone) is moved to the
    /// bucket-ordered table when opened: every entry, floor and body is still there, the old
    /// table is gone, and a second open moves nothing. Without the move the store would open
    /// empty and forget every floor.
    #[test]
    fn a_format_1_store_opens_with_every_entry_in_bucket_order(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("store.redb");
        let key = ZoneKey::from_seed([4; 32]);
        let records: Vec<SignedRecord> = (0..300u64)
            .map(|i| {
                RecordBody {
                    zone: key.zone(),
                    label: format!("n{i}"),
                    seq: 1 + i % 3,
                    expires_at_ms: NOW + 3_600_000,
                    content: Content::Tombstone,
                }
                .sign(&key)
                .expect("signs")
            })
            .collect();
        persist(&path, &records.iter().collect::<Vec<_>>())?;
        // Rewrite the file as format 1 kept it: the same entries, keyed by name alone.
        {
            let db = Database::create(&path)?;
            let w = db.begin_write()?;
            {
                let new = w.open_table(ENTRIES)?;
                let mut old = w.open_table(ENTRIES_V1)?;
                for item in new.iter()? {
                    let (k, v) = item?;
                    let name = std::str::from_utf8(&k.value()[1..])?.to_owned();
                    old.insert(name.as_str(), v.value())?;
                }
            }
            w.delete_table(ENTRIES)?;
            w.commit()?;
        }
        let reopened = DurableStore::open(&path)?;
        assert_eq!(reopened.len(), records.len(), "every entry moved");
        for r in &records {
            let e = reopened.entry(&r.name()).ok_or("entry lost")?;
            assert_eq!(e.floor.seq, r.body.seq);
            assert_eq!(e.bytes.as_deref(), Some(r.encode().as_slice()));
        }
        assert_eq!(reopened.corrupt_on_load(), 0);
        drop(reopened);
        let db = Database::create(&path)?;
        let r = db.begin_read()?;
        assert!(
            !r.list_tables()?.any(|t| t.name() == ENTRIES_V1.name()),
            "the old table is deleted"
        );
        drop(r);
        assert_eq!(upgrade_entries(&db)?, 0, "a second upgrade moves nothing");
        Ok(())
    }

    /// Rewrites the stored entry of `name` with `edit` applied to its bytes.
    fn edit_entry(
        path: &Path,
        name: &str,
        edit: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), Box<dyn std::error::Error>> {
        let db = Database::create(path)?;
        let w = db.begin_write()?;
        {
            let mut table = w.open_table(ENTRIES)?;
            let mut key = Vec::new();
            let key = entry_key(name, &mut key);
            let mut bytes = table.get(key)?.ok_or("entry missing")?.value().to_vec();
            edit(&mut bytes);
            table.insert(key, bytes.as_slice())?;
        }
        w.commit()?;
        Ok(())
    }

    fn persist(path: &Path, records: &[&SignedRecord]) -> Result<(), Box<dyn std::error::Error>> {
        let store = RwLock::new(DurableStore::open(path)?);
        let persister = store.write().map_err(|e| e.to_string())?.persister();
        let generation = {
            let mut s = store.write().map_err(|e| e.to_string())?;
            for r in records {
                s.apply(r, NOW, Freshness::Publish, None)?;
            }
            s.generation()
        };
        persister.flush(&store, generation)?;
        Ok(())
    }

    #[test]
    fn a_body_less_tombstone_floor_keeps_its_kind_across_a_restart(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("store.redb");
        let key = ZoneKey::generate(&mut rand::rngs::OsRng);
        let (old, deletion) = (record(&key, 1), tombstone(&key, 2));
        persist(&path, &[&old, &deletion])?;
        // Drop the body as compaction would (has-body flag off, body cut).
        edit_entry(&path, &deletion.name(), |b| {
            b[50] = 0;
            b.truncate(51);
        })?;
        let mut reopened = DurableStore::open(&path)?;
        assert_eq!(reopened.corrupt_on_load(), 0);
        let entry = reopened.entry(&deletion.name()).ok_or("floor lost")?;
        assert!(entry.tombstone && entry.bytes.is_none());
        assert!(matches!(
            reopened.apply(&old, NOW, Freshness::Replicate, None)?,
            Outcome::Stale { have: 2, got: 1 }
        ));
        // A live record at the tombstone's seq wins, whatever the hashes: the floor knew its
        // kind without the body.
        let live = record(&key, 2);
        assert!(reopened
            .apply(&live, NOW, Freshness::Replicate, None)?
            .is_winner());
        assert_eq!(reopened.resolve(&live.name(), NOW), Some(live));
        Ok(())
    }

    #[test]
    fn a_kind_flag_that_disagrees_with_its_body_is_corrected_from_the_body_and_counted(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("store.redb");
        let key = ZoneKey::generate(&mut rand::rngs::OsRng);
        let live = record(&key, 2);
        persist(&path, &[&live])?;
        edit_entry(&path, &live.name(), |b| b[49] = 1)?;
        let mut reopened = DurableStore::open(&path)?;
        assert_eq!(reopened.corrupt_on_load(), 1, "the damage is counted");
        let entry = reopened.entry(&live.name()).ok_or("entry lost")?;
        assert!(!entry.tombstone, "the kind comes from the verified body");
        assert_eq!(reopened.resolve(&live.name(), NOW), Some(live.clone()));
        // So a tombstone at the same seq still loses to it.
        assert!(!reopened
            .apply(&tombstone(&key, 2), NOW, Freshness::Replicate, None)?
            .is_winner());
        Ok(())
    }

    fn record(key: &ZoneKey, seq: u64) -> SignedRecord {
        RecordBody {
            zone: key.zone(),
            label: "web".into(),
            seq,
            expires_at_ms: NOW + 3_600_000,
            content: Content::Endpoints(vec![format!("127.0.0.{seq}:80")
                .parse()
                .expect("endpoint")]),
        }
        .sign(key)
        .expect("signs")
    }

    /// Applies `r` as a replica and appends its entry to the replica log, with no commit.
    fn apply_and_log(
        store: &SharedStore,
        persister: &Persister,
        r: &SignedRecord,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut s = store.write().map_err(|e| e.to_string())?;
        assert!(s.apply(r, NOW, Freshness::Replicate, None)?.changed_store());
        let entry = s.logged_entry(&r.name()).ok_or("applied, so held")?;
        persister.log_replicas(&[entry])?;
        Ok(())
    }

    fn seq_of(s: &DurableStore, name: &str) -> Option<u64> {
        s.resolve(name, NOW).map(|r| r.body.seq)
    }

    /// A gossiped record whose entry reached the replica log, and no commit, is in the store
    /// after the process dies (nothing flushed or folded; the store and persister are simply
    /// dropped, as a SIGKILL leaves them): the next open replays it, commits it and deletes the
    /// log, and the open after that finds it in redb with nothing left to replay.
    #[test]
    fn a_logged_replica_survives_a_kill_and_is_replayed_into_the_store(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("store.redb");
        let key = ZoneKey::from_seed([21; 32]);
        let name = record(&key, 1).name();
        persist(&path, &[&record(&key, 1)])?;
        {
            let store = RwLock::new(DurableStore::open(&path)?);
            let persister = store.write().map_err(|e| e.to_string())?.persister();
            apply_and_log(&store, &persister, &record(&key, 2))?;
            assert!(persister.log_pending());
        }
        assert_eq!(crate::replica_log::files(&path)?.len(), 1);
        let s = DurableStore::open(&path)?;
        assert_eq!(seq_of(&s, &name), Some(2), "the logged replica came back");
        assert_eq!(
            s.replayed(),
            Replayed {
                taken: 1,
                stale: 0,
                torn: 0
            }
        );
        assert!(crate::replica_log::files(&path)?.is_empty(), "log deleted");
        drop(s);
        let s = DurableStore::open(&path)?;
        assert_eq!(seq_of(&s, &name), Some(2), "committed by the replay");
        assert_eq!(s.replayed(), Replayed::default());
        Ok(())
    }

    /// Replay takes a logged entry only if it outranks the store's: a frame of seq 2 logged
    /// before seq 3 was committed (a writer's flush) does not bring seq 2 back.
    #[test]
    fn an_older_logged_entry_never_replaces_a_newer_committed_one(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("store.redb");
        let key = ZoneKey::from_seed([22; 32]);
        let name = record(&key, 1).name();
        {
            let store = RwLock::new(DurableStore::open(&path)?);
            let persister = store.write().map_err(|e| e.to_string())?.persister();
            apply_and_log(&store, &persister, &record(&key, 2))?;
            let generation = {
                let mut s = store.write().map_err(|e| e.to_string())?;
                s.apply(&record(&key, 3), NOW, Freshness::Publish, None)?;
                s.generation()
            };
            persister.flush(&store, generation)?;
        }
        let s = DurableStore::open(&path)?;
        assert_eq!(seq_of(&s, &name), Some(3));
        assert_eq!(s.replayed().stale, 1);
        assert_eq!(s.replayed().taken, 0);
        assert!(crate::replica_log::files(&path)?.is_empty());
        Ok(())
    }

    /// A fold commits what the log holds and deletes its files; appends after it go to a new
    /// file that the next fold (or open) takes. A torn tail in a file is skipped and counted,
    /// and the whole frames before it still come back.
    #[test]
    fn a_fold_commits_the_log_and_a_torn_tail_keeps_the_frames_before_it(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("store.redb");
        let a = ZoneKey::from_seed([23; 32]);
        let b = ZoneKey::from_seed([24; 32]);
        {
            let store = RwLock::new(DurableStore::open(&path)?);
            let persister = store.write().map_err(|e| e.to_string())?.persister();
            assert_eq!(
                persister.fold(&store)?,
                0,
                "nothing logged, nothing to fold"
            );
            apply_and_log(&store, &persister, &record(&a, 1))?;
            assert_eq!(persister.fold(&store)?, 1);
            assert!(!persister.log_pending());
            assert!(
                crate::replica_log::files(&path)?.is_empty(),
                "folded and deleted"
            );
            apply_and_log(&store, &persister, &record(&b, 1))?;
        }
        let files = crate::replica_log::files(&path)?;
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, 1, "the file after the folded one");
        // A crash mid-append: half a frame after the whole one.
        let mut bytes = std::fs::read(&files[0].1)?;
        let half = bytes[..bytes.len() / 2].to_vec();
        bytes.extend_from_slice(&half);
        std::fs::write(&files[0].1, &bytes)?;
        let s = DurableStore::open(&path)?;
        assert_eq!(seq_of(&s, &record(&a, 1).name()), Some(1), "folded before");
        assert_eq!(seq_of(&s, &record(&b, 1).name()), Some(1), "replayed");
        assert_eq!(
            s.replayed(),
            Replayed {
                taken: 1,
                stale: 0,
                torn: 1
            }
        );
        // The next log file is numbered past the replayed one.
        let persister = s.persister();
        drop(s);
        assert!(crate::replica_log::files(&path)?.is_empty());
        persister.log_replicas(&[("x.zone".into(), vec![1, 2, 3])])?;
        assert_eq!(crate::replica_log::files(&path)?[0].0, 2);
        Ok(())
    }

    /// While too many sealed files wait for a fold (folds keep failing), the log refuses more
    /// (its caller commits instead); a fold that succeeds takes them and the log takes appends
    /// again.
    #[test]
    fn the_log_refuses_appends_while_too_many_files_wait_for_a_fold(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("store.redb");
        let store = RwLock::new(DurableStore::open(&path)?);
        let persister = store.write().map_err(|e| e.to_string())?.persister();
        let entry = || vec![("x.zone".to_string(), vec![1u8, 2, 3])];
        persister
            .log
            .lock()
            .map_err(|e| e.to_string())?
            .sealed
            .extend(
                (100..100 + MAX_SEALED_LOGS as u64)
                    .map(|n| crate::replica_log::file_path(&path, n)),
            );
        assert!(matches!(
            persister.log_replicas(&entry()),
            Err(StoreError::Log(_))
        ));
        assert_eq!(persister.fold(&store)?, MAX_SEALED_LOGS);
        persister.log_replicas(&entry())?;
        Ok(())
    }

    /// A store of several load batches per load thread reopens with every entry, the same
    /// digest and reserved names, a damaged body in the middle counted and kept as a floor.
    #[test]
    fn a_store_of_many_batches_reopens_whole() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("store.redb");
        let key = ZoneKey::generate(&mut rand::rngs::OsRng);
        let n = LOAD_BATCH * LOAD_THREADS * 2 + 17;
        let mut records: Vec<SignedRecord> = (0..n)
            .map(|i| {
                RecordBody {
                    zone: key.zone(),
                    label: format!("service-{i}"),
                    seq: 1,
                    expires_at_ms: NOW + 3_600_000,
                    content: Content::Endpoints(vec!["127.0.0.1:80".parse().expect("endpoint")]),
                }
                .sign(&key)
            })
            .collect::<Result<_, _>>()?;
        let offers = 3;
        records.extend((1..=offers).map(|seed| offer(&ZoneKey::from_seed([seed; 32]), 1, false)));
        let n = records.len();
        let mut before = MemStore::new();
        {
            let store = RwLock::new(DurableStore::open(&path)?);
            let persister = store.write().map_err(|e| e.to_string())?.persister();
            let mut s = store.write().map_err(|e| e.to_string())?;
            s.set_quota(dpin_protocol::store::Quota::UNLIMITED);
            for r in &records {
                s.put_entry(&r.name(), Entry::from_record(r))?;
                before.insert(&r.name(), Entry::from_record(r));
            }
            let generation = s.generation();
            drop(s);
            persister.flush(&store, generation)?;
        }
        let damaged = records[n / 2].name();
        edit_entry(&path, &damaged, |b| {
            // The label's first byte (after the header, the zone and the label's length).
            if let Some(byte) = b.get_mut(51 + 32 + 8) {
                *byte ^= 1;
            }
        })?;
        let reopened = DurableStore::open(&path)?;
        assert_eq!(reopened.corrupt_on_load(), 1);
        assert_eq!(reopened.len(), n);
        let floor = reopened.entry(&damaged).ok_or("floor lost")?;
        assert!(floor.bytes.is_none());
        before.insert(&damaged, floor.clone());
        assert_eq!(reopened.digest(), before.digest());
        assert_eq!(reopened.mem().usage(), before.usage());
        for r in &records {
            assert_eq!(reopened.entry(&r.name()), before.entry(&r.name()));
        }
        let reserved: Vec<&str> = reopened.reserved("_offer-").map(|(n, _)| n).collect();
        assert_eq!(reserved.len(), usize::from(offers));
        Ok(())
    }

    #[test]
    fn a_damaged_body_keeps_its_floor_so_the_old_record_cannot_be_replayed_after_restart(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("store.redb");
        let key = ZoneKey::generate(&mut rand::rngs::OsRng);
        let (old, new) = (record(&key, 1), record(&key, 2));
        {
            let store = RwLock::new(DurableStore::open(&path)?);
            let persister = store.write().map_err(|e| e.to_string())?.persister();
            let generation = {
                let mut s = store.write().map_err(|e| e.to_string())?;
                s.apply(&old, NOW, Freshness::Publish, None)?;
                s.apply(&new, NOW, Freshness::Publish, None)?;
                s.generation()
            };
            persister.flush(&store, generation)?;
            // Flip one byte of the stored record body (just before the 64-byte signature), as a
            // bad sector would.
            let s = store.write().map_err(|e| e.to_string())?;
            let w = s.db.begin_write()?;
            {
                let mut table = w.open_table(ENTRIES)?;
                let name = new.name();
                let mut key = Vec::new();
                let key = entry_key(&name, &mut key);
                let mut bytes = table.get(key)?.ok_or("entry missing")?.value().to_vec();
                let at = bytes.len() - 65;
                bytes[at] ^= 0xff;
                table.insert(key, bytes.as_slice())?;
            }
            w.commit()?;
        }
        let mut reopened = DurableStore::open(&path)?;
        assert_eq!(reopened.corrupt_on_load(), 1, "the damage is counted");
        let entry = reopened.entry(&new.name()).ok_or("floor lost")?;
        assert_eq!((entry.floor.seq, entry.bytes.is_some()), (2, false));
        assert!(
            matches!(
                reopened.apply(&old, NOW, Freshness::Replicate, None)?,
                Outcome::Stale { have: 2, got: 1 }
            ),
            "the record the damaged one replaced was replayed back in"
        );
        // A peer resends the body: it is restored, and served again.
        assert_eq!(
            reopened.apply(&new, NOW, Freshness::Replicate, None)?,
            Outcome::Restored
        );
        assert_eq!(reopened.resolve(&new.name(), NOW), Some(new));
        Ok(())
    }

    fn offer(key: &ZoneKey, seq: u64, tombstone: bool) -> SignedRecord {
        RecordBody {
            zone: key.zone(),
            label: "_offer-storage".into(),
            seq,
            expires_at_ms: NOW + 3_600_000,
            content: if tombstone {
                Content::Tombstone
            } else {
                Content::StorageOffer(dpin_protocol::StorageOffer {
                    capacity_bytes: 1 << 30,
                    free_bytes: 1 << 29,
                    region: "eu".into(),
                    price_milli: 1,
                })
            },
        }
        .sign(key)
        .expect("signs")
    }

    fn reserved_names(s: &DurableStore, prefix: &str) -> Vec<String> {
        s.reserved(prefix).map(|(n, _)| n.to_owned()).collect()
    }

    /// The reserved-name index equals a scan of the whole store for the prefix.
    fn scanned(s: &DurableStore, prefix: &str) -> Vec<String> {
        s.mem()
            .iter()
            .filter(|(n, e)| n.starts_with(prefix) && e.bytes.is_some())
            .map(|(n, _)| n.to_owned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    #[test]
    fn the_reserved_name_index_follows_applies_tombstones_compaction_and_a_restart(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("store.redb");
        let (a, b) = (ZoneKey::from_seed([1; 32]), ZoneKey::from_seed([2; 32]));
        let store = RwLock::new(DurableStore::open_with_retention(&path, 1)?);
        let persister = store.write().map_err(|e| e.to_string())?.persister();
        {
            let mut s = store.write().map_err(|e| e.to_string())?;
            for r in [offer(&a, 1, false), offer(&b, 1, false), record(&a, 1)] {
                assert!(s.apply(&r, NOW, Freshness::Publish, None)?.is_winner());
            }
            assert_eq!(reserved_names(&s, "_offer-").len(), 2);
            assert_eq!(reserved_names(&s, "_offer-"), scanned(&s, "_offer-"));
            assert!(
                reserved_names(&s, "web").is_empty(),
                "user names are not indexed"
            );
            // A deletion keeps the tombstone's body (offers listed it before: the scan
            // took every body under the prefix).
            assert!(s
                .apply(&offer(&b, 2, true), NOW, Freshness::Publish, None)?
                .is_winner());
            assert_eq!(reserved_names(&s, "_offer-"), scanned(&s, "_offer-"));
        }
        let generation = store.write().map_err(|e| e.to_string())?.generation();
        persister.flush(&store, generation)?;
        drop((store, persister));
        let mut reopened = DurableStore::open_with_retention(&path, 1)?;
        assert_eq!(
            reserved_names(&reopened, "_offer-").len(),
            2,
            "loaded from disk"
        );
        assert_eq!(
            reserved_names(&reopened, "_offer-"),
            scanned(&reopened, "_offer-")
        );
        // Compaction drops the bodies long past expiry: they leave the index with them.
        let dropped = reopened.compact(NOW + 3_600_000 + 10)?;
        assert_eq!(dropped, 3);
        assert!(reserved_names(&reopened, "_offer-").is_empty());
        assert_eq!(scanned(&reopened, "_offer-"), Vec::<String>::new());
        Ok(())
    }

    #[test]
    fn the_change_feed_hands_over_each_change_once_and_asks_for_a_rebuild_after_a_load_or_overflow(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut s = DurableStore::open(&dir.path().join("store.redb"))?;
        let key = ZoneKey::from_seed([3; 32]);
        assert_eq!(
            s.take_changes(),
            Changes::Rebuild,
            "a loaded store is read whole first"
        );
        assert_eq!(s.take_changes(), Changes::Since(Vec::new()));
        let (one, two) = (record(&key, 1), record(&key, 2));
        s.apply(&one, NOW, Freshness::Publish, None)?;
        s.apply(&two, NOW, Freshness::Publish, None)?;
        // Refused records change nothing and are not in the feed.
        s.apply(&one, NOW, Freshness::Publish, None)?;
        let name: Box<str> = one.name().into();
        assert_eq!(
            s.take_changes(),
            Changes::Since(vec![
                Change {
                    name: name.clone(),
                    old: None,
                    new: Entry::from_record(&one),
                },
                Change {
                    name,
                    old: Some(Entry::from_record(&one)),
                    new: Entry::from_record(&two),
                },
            ])
        );
        assert_eq!(s.take_changes(), Changes::Since(Vec::new()));
        // Past the bound the changes are dropped and the reader told to rebuild.
        // The backlog shows from half the bound, and while a rebuild is pending.
        let entry = Entry::from_record(&two);
        for i in 0..=MAX_FEED_CHANGES {
            assert_eq!(s.feed_backlog(), i >= MAX_FEED_CHANGES / 2, "{i}");
            s.put_entry(&format!("n{i}.{}", key.zone()), entry.clone())?;
        }
        assert!(s.feed_backlog(), "overflowed");
        assert_eq!(s.take_changes(), Changes::Rebuild);
        assert!(!s.feed_backlog());
        assert_eq!(s.take_changes(), Changes::Since(Vec::new()));
        Ok(())
    }
}
