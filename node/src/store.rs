//! Durable store: the protocol's [`MemStore`] as the index, redb as the durable truth, with
//! group commit so that no reader ever waits for a disk flush.
//!
//! Applying a record (decide + index update) happens in memory under the node's store lock and
//! marks the name dirty; it takes microseconds. Making it durable is a separate step,
//! [`Persister::flush`]: under its own writer lock it takes a snapshot of the dirty entries
//! (briefly holding the store lock), writes them in one redb transaction and commits it with an
//! fsync — with the store lock released, so resolves, DNS answers and gossip validation carry
//! on during the flush. Writers are acknowledged only after a flush that covers their record
//! (the store's generation counter says which), so a SIGKILL at any instant loses no
//! acknowledged record; concurrent writers share one fsync. Because a flush always writes the
//! *current* entry of each dirty name, commits can never put an older seq on disk after a
//! newer one. The floor (highest seq and hash ever accepted) is persisted with each entry,
//! including compacted ones, so a restarted node still refuses replays of old records.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use dpin_protocol::store::{Entry, MemStore, Store};
use dpin_protocol::{Floor, StoreDigest};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use thiserror::Error;

const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
/// Entry encoding version byte, so the format can evolve without misreading old files.
const ENTRY_FORMAT: u8 = 1;

/// Failures of the durable layer.
#[derive(Debug, Error)]
pub enum StoreError {
    /// redb could not open, read or commit.
    #[error("database error: {0}")]
    Db(String),
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

/// The node's store. Not internally synchronised: the node keeps it behind one mutex so that
/// decide-and-index happens atomically per record; durability is [`Persister`]'s job.
pub struct DurableStore {
    db: Arc<Database>,
    mem: MemStore,
    dirty: BTreeSet<String>,
    generation: u64,
    corrupt_on_load: usize,
}

impl DurableStore {
    /// Opens (or creates) `path` and loads every entry into memory.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        // Make sure the table exists so read transactions on an empty database succeed.
        let w = db.begin_write()?;
        w.open_table(ENTRIES)?;
        w.commit()?;
        let mut store = Self {
            db: Arc::new(db),
            mem: MemStore::new(),
            dirty: BTreeSet::new(),
            generation: 0,
            corrupt_on_load: 0,
        };
        store.reload()?;
        Ok(store)
    }

    /// Entries skipped at the last load because they were damaged on disk. They are left out
    /// of the index (and so of the digest), which makes anti-entropy fetch them again.
    pub fn corrupt_on_load(&self) -> usize {
        self.corrupt_on_load
    }

    /// The in-memory index (reads never touch the disk).
    pub fn mem(&self) -> &MemStore {
        &self.mem
    }

    /// Counts index changes; a flush that covers generation `g` made every change up to `g`
    /// durable.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The persister that makes this store's changes durable.
    pub fn persister(&self) -> Persister {
        Persister {
            db: self.db.clone(),
            durable: Arc::new(Mutex::new(self.generation)),
        }
    }

    /// Takes the dirty entries (current state, encoded) and the generation they bring the
    /// disk to.
    fn take_dirty(&mut self) -> (u64, Vec<(String, Vec<u8>)>) {
        let names = std::mem::take(&mut self.dirty);
        let entries = names
            .into_iter()
            .filter_map(|n| self.mem.entry(&n).map(|e| (n.clone(), encode_entry(e))))
            .collect();
        (self.generation, entries)
    }

    fn mark_dirty(&mut self, names: impl IntoIterator<Item = String>) {
        self.dirty.extend(names);
    }

    fn reload(&mut self) -> Result<(), StoreError> {
        let mut mem = MemStore::new();
        let mut corrupt = 0;
        let r = self.db.begin_read()?;
        let table = r.open_table(ENTRIES)?;
        for item in table.iter()? {
            let (k, v) = item?;
            let name = k.value().to_owned();
            match decode_entry(&name, v.value()) {
                Ok(entry) => mem.insert(&name, entry),
                Err(e) => {
                    tracing::error!(%e, "skipping damaged store entry");
                    corrupt += 1;
                }
            }
        }
        self.mem = mem;
        self.corrupt_on_load = corrupt;
        Ok(())
    }
}

impl Store for DurableStore {
    type Error = StoreError;

    fn entry(&self, name: &str) -> Option<&Entry> {
        self.mem.entry(name)
    }

    fn put_entry(&mut self, name: &str, entry: Entry) -> Result<(), StoreError> {
        // In memory only; durable at the next Persister::flush (callers acknowledge after it).
        self.mem.insert(name, entry);
        self.dirty.insert(name.to_owned());
        self.generation += 1;
        Ok(())
    }

    fn bucket_entries(&self, bucket: u8) -> Vec<(&str, &Entry)> {
        self.mem.bucket_entries(bucket)
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

fn decode_entry(name: &str, b: &[u8]) -> Result<Entry, StoreError> {
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
    if has_body {
        // Validate on load: a damaged body must never be served or gossiped.
        let rec = dpin_protocol::SignedRecord::decode(body)
            .map_err(|_| corrupt("body does not decode"))?;
        if rec.content_hash() != hash {
            return Err(corrupt("body does not match its hash"));
        }
    }
    Ok(Entry {
        floor: Floor {
            seq: u64_at(1),
            hash,
        },
        expires_at_ms: u64_at(41),
        tombstone: b[49] == 1,
        bytes: has_body.then(|| body.to_vec().into_boxed_slice()),
    })
}

/// Makes a [`DurableStore`]'s changes durable (group commit). Cloneable; one writer at a time.
#[derive(Clone)]
pub struct Persister {
    db: Arc<Database>,
    /// Highest generation known to be on disk; the lock also serialises flushes.
    durable: Arc<Mutex<u64>>,
}

impl Persister {
    /// Makes every change up to generation `upto` durable. Returns at once if a flush already
    /// covered it. `store` is locked only to snapshot the dirty entries, never during I/O.
    pub fn flush(&self, store: &Mutex<DurableStore>, upto: u64) -> Result<(), StoreError> {
        let mut durable = self
            .durable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *durable >= upto {
            return Ok(());
        }
        let (generation, entries) = store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take_dirty();
        let result = (|| -> Result<(), StoreError> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Immediate);
            {
                let mut table = txn.open_table(ENTRIES)?;
                for (name, bytes) in &entries {
                    table.insert(name.as_str(), bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                *durable = generation;
                Ok(())
            }
            Err(e) => {
                // Not on disk: keep them dirty so the next flush retries.
                store
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .mark_dirty(entries.into_iter().map(|(n, _)| n));
                Err(e)
            }
        }
    }
}
