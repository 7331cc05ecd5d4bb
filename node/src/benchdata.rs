//! Synthetic signed records for the data-scale benches: the `scalebench` example and
//! `dpin-bench dns-fill` (which `deploy/dns-bench.sh` runs at a million names). Not used by the
//! node itself.
//!
//! Record `i` is `service-{i}` in zone `i % BENCH_ZONES` (zone keys from fixed seeds, so every
//! run and every tool writes the same names), with two endpoints on one loopback host,
//! `127.0.(i >> 8).(i & 255)`, ports 443 and 8443: DNS answers it with one A record, and the
//! default probe policy never probes loopback, so a node holding them sends nothing.
//!
//! [`write_store`] signs them and writes them straight into a data dir's `store.redb` through
//! the node's own [`DurableStore`], flushed and checked on disk: a million publishes through
//! the API would take an hour of fsyncs.

use std::path::Path;

use dpin_protocol::store::{Entry, Quota, Store};
use dpin_protocol::{Content, Endpoint, Host, RecordBody, SignedRecord, Transport, ZoneKey};
use thiserror::Error;

use crate::store::{DurableStore, StoreError};

/// How many zones the records are spread over.
pub const BENCH_ZONES: u32 = 1000;

/// What can stop a bench store from being written.
#[derive(Debug, Error)]
pub enum BenchDataError {
    /// The durable store refused to open, write or flush.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A record could not be signed (it would not be valid).
    #[error("signing record {index}: {reason}")]
    Sign {
        /// The record's index.
        index: usize,
        /// Why.
        reason: String,
    },
    /// A file could not be created, written or read (including the caller's own output).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The flushed file is smaller than the records it should hold.
    #[error("store.redb holds {on_disk} bytes, less than the {encoded} encoded: not flushed")]
    NotFlushed {
        /// The file's size.
        on_disk: u64,
        /// The records' encoded bytes.
        encoded: u64,
    },
    /// A thread panicked while holding the store's lock.
    #[error("the store's lock is poisoned")]
    Poisoned,
}

/// The key of bench zone `z`.
pub fn bench_zone(z: u32) -> ZoneKey {
    let mut seed = [7u8; 32];
    seed[..4].copy_from_slice(&z.to_le_bytes());
    ZoneKey::from_seed(seed)
}

/// The loopback host of record `i` (the A record DNS answers).
pub fn bench_host(i: usize) -> [u8; 4] {
    [127, 0, (i >> 8) as u8, i as u8]
}

/// Record `i`, signed with `zones[i % zones.len()]`, at `seq`, expiring at `expires_at_ms`.
pub fn bench_record(
    zones: &[ZoneKey],
    i: usize,
    seq: u64,
    expires_at_ms: u64,
) -> Result<SignedRecord, BenchDataError> {
    let key = &zones[i % zones.len()];
    let ep = |port| Endpoint {
        host: Host::V4(bench_host(i)),
        port,
        transport: Transport::Tcp,
        weight: 1,
    };
    RecordBody {
        zone: key.zone(),
        label: format!("service-{i}"),
        seq,
        expires_at_ms,
        content: Content::Endpoints(vec![ep(443), ep(8443)]),
    }
    .sign(key)
    .map_err(|e| BenchDataError::Sign {
        index: i,
        reason: e.to_string(),
    })
}

/// What [`write_store`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The name of the last record.
    pub last: String,
    /// The records' encoded bytes, summed.
    pub encoded: usize,
}

/// Writes records `0..n` (seq 1, expiring at `expires_at_ms`) into a fresh `dir/store.redb`,
/// calls `each` with every record in order, and flushes. Fails if the file on disk is smaller
/// than the records it should hold.
pub fn write_store(
    dir: &Path,
    n: usize,
    expires_at_ms: u64,
    mut each: impl FnMut(usize, &SignedRecord) -> std::io::Result<()>,
) -> Result<Written, BenchDataError> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("store.redb");
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let store = std::sync::RwLock::new(DurableStore::open(&path)?);
    let lock = || store.write().map_err(|_| BenchDataError::Poisoned);
    // Taken before the writes: a persister knows the generation it was made at as durable,
    // so one made afterwards would flush nothing.
    let persister = lock()?.persister();
    let zones: Vec<ZoneKey> = (0..BENCH_ZONES).map(bench_zone).collect();
    let mut last = String::new();
    let mut encoded = 0usize;
    {
        let mut s = lock()?;
        s.set_quota(Quota::UNLIMITED);
        for i in 0..n {
            let r = bench_record(&zones, i, 1, expires_at_ms)?;
            each(i, &r)?;
            let e = Entry::from_record(&r);
            encoded += e.bytes.as_ref().map_or(0, |b| b.len());
            last = r.name();
            s.put_entry(&last, e)?;
        }
    }
    let generation = lock()?.generation();
    persister.flush(&store, generation)?;
    let on_disk = std::fs::metadata(&path)?.len();
    if on_disk < encoded as u64 {
        return Err(BenchDataError::NotFlushed {
            on_disk,
            encoded: encoded as u64,
        });
    }
    Ok(Written { last, encoded })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_bench_store_opens_with_every_record_and_the_callback_saw_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut seen = Vec::new();
        let w = write_store(dir.path(), 25, u64::MAX / 2, |i, r| {
            seen.push((i, r.name()));
            Ok(())
        })
        .expect("write");
        assert_eq!(seen.len(), 25);
        assert_eq!(w.last, seen[24].1);
        assert!(w.last.starts_with("service-24."));
        let s = DurableStore::open(&dir.path().join("store.redb")).expect("reopen");
        for (_, name) in &seen {
            assert!(s.entry(name).is_some(), "{name} missing after reopen");
        }
        assert_eq!(s.len(), 25);
    }

    #[test]
    fn bench_records_of_one_index_are_the_same_in_every_run() {
        let zones: Vec<ZoneKey> = (0..3).map(bench_zone).collect();
        let a = bench_record(&zones, 7, 1, 1_000).expect("sign");
        let b = bench_record(&zones, 7, 1, 1_000).expect("sign");
        assert_eq!(a.encode(), b.encode());
        assert_eq!(a.body.zone, zones[1].zone());
    }
}
