//! Durable store: the protocol's [`MemStore`] as the read index, redb as the write-ahead truth.
//!
//! Every write goes to redb and is committed (fsync) before the in-memory index changes and
//! before anyone is told "applied", so a SIGKILL at any instant loses no acknowledged record.
//! The floor (highest seq and hash ever accepted) is persisted with each entry, including
//! compacted ones, so a restarted node still refuses replays of old records.
//!
//! Many records arriving together (a sync batch) are written in one transaction via
//! [`DurableStore::batch`], which keeps catch-up after a partition from costing one fsync per
//! record.

use std::path::Path;

use dpin_protocol::store::{Entry, MemStore, Store};
use dpin_protocol::{Floor, StoreDigest};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
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
/// decide-persist-index happens atomically per record.
pub struct DurableStore {
    db: Database,
    mem: MemStore,
    txn: Option<WriteTransaction>,
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
            db,
            mem: MemStore::new(),
            txn: None,
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

    /// Runs `f` with all writes in one redb transaction, committed before returning.
    /// If the commit fails the in-memory index is reloaded from disk so it never claims a
    /// write that is not durable.
    pub fn batch<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.txn = Some(self.db.begin_write()?);
        let result = f(self);
        let txn = self.txn.take();
        match (result, txn) {
            (Ok(v), Some(txn)) => match txn.commit() {
                Ok(()) => Ok(v),
                Err(e) => {
                    self.reload()?;
                    Err(e.into())
                }
            },
            (Ok(v), None) => Ok(v),
            (Err(e), txn) => {
                if let Some(txn) = txn {
                    let _ = txn.abort();
                }
                self.reload()?;
                Err(e)
            }
        }
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

    /// Number of entries on disk (for consistency checks in tests).
    pub fn disk_len(&self) -> Result<u64, StoreError> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(ENTRIES)?.len()?)
    }
}

impl Store for DurableStore {
    type Error = StoreError;

    fn entry(&self, name: &str) -> Option<&Entry> {
        self.mem.entry(name)
    }

    fn put_entry(&mut self, name: &str, entry: Entry) -> Result<(), StoreError> {
        let bytes = encode_entry(&entry);
        match self.txn.as_ref() {
            Some(txn) => {
                txn.open_table(ENTRIES)?.insert(name, bytes.as_slice())?;
            }
            None => {
                let txn = self.db.begin_write()?;
                txn.open_table(ENTRIES)?.insert(name, bytes.as_slice())?;
                txn.commit()?;
            }
        }
        self.mem.insert(name, entry);
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
