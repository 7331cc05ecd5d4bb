//! Criterion benchmarks of the dpin-protocol hot paths (figures only, no assertions on time):
//! sign, verify, batch verify of 256, `apply` of a signed update into a 100k-name `MemStore`
//! (validation + signature + merge), `apply_batch` of 256 updates into it, the read path on it
//! (index lookup, `resolve` of a held and of an unknown name), digest work on it, and the
//! codec. The node's DNS answer over the same read path: `cargo bench -p dpin-node`.
//!
//! Run: `cargo bench -p dpin-protocol` (about two minutes; each bench uses 20 samples over
//! 3 s). Per-signature figures for the batched benches: divide by 256, or read criterion's
//! `thrpt` line (elements/s).

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dpin_protocol::digest::{answer_digest, bucket_of, entry_digest, BUCKETS};
use dpin_protocol::record::{verify_batch, SIGNING_DOMAIN};
use dpin_protocol::{
    Content, Endpoint, Entry, Freshness, Host, MemStore, RecordBody, SignedRecord, Store,
    StoreDigest, Transport, ZoneKey,
};

/// 2025-10-19T00:00:00Z in Unix ms.
const NOW: u64 = 1_760_832_000_000;
const HOUR_MS: u64 = 3_600_000;
const STORE_NAMES: usize = 100_000;
const BATCH: usize = 256;

fn key() -> ZoneKey {
    ZoneKey::from_seed([42; 32])
}

fn endpoints(i: u64) -> Vec<Endpoint> {
    vec![
        Endpoint {
            host: Host::V4([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
            port: 443,
            transport: Transport::Tcp,
            weight: 1,
        },
        Endpoint {
            host: Host::Name("backup.example.net".into()),
            port: 8443,
            transport: Transport::Tcp,
            weight: 2,
        },
    ]
}

fn body(key: &ZoneKey, i: u64, seq: u64) -> RecordBody {
    RecordBody {
        zone: key.zone(),
        label: format!("name-{}", i % STORE_NAMES as u64),
        seq,
        expires_at_ms: NOW + 24 * HOUR_MS,
        content: Content::Endpoints(endpoints(i)),
    }
}

fn sign(key: &ZoneKey, i: u64, seq: u64) -> SignedRecord {
    body(key, i, seq)
        .sign(key)
        .expect("bench records are valid")
}

/// The items in turn, round and round (a bench's inputs, taken outside the timed part).
fn cycling<T: Clone>(items: Vec<T>) -> impl FnMut() -> T {
    let mut at = 0usize;
    move || {
        at = (at + 1) % items.len();
        items[at].clone()
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
}

fn record_benches(c: &mut Criterion) {
    let key = key();
    let rec = sign(&key, 7, 1);
    let bytes = rec.encode();
    let mut g = c.benchmark_group("record");
    g.bench_function("sign", |b| {
        b.iter_batched(
            || body(&key, 7, 1),
            |body| body.sign(&key).expect("valid"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("verify", |b| {
        b.iter(|| black_box(&rec).verify_signature().expect("valid"))
    });
    g.bench_function("validate_full", |b| {
        b.iter(|| {
            black_box(&rec)
                .validate(NOW, Freshness::Replicate)
                .expect("valid")
        })
    });
    let batch: Vec<SignedRecord> = (0..BATCH as u64).map(|i| sign(&key, i, 1)).collect();
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("verify_batch_256", |b| {
        b.iter(|| assert!(verify_batch(black_box(&batch))))
    });
    // What dpin ran before the one rule of `dpin_protocol::signature`, side by side: the same
    // work per record (key decoding, message building) through ed25519-dalek's cofactorless
    // `verify` and its `verify_batch` (whose verdicts disagree on crafted input).
    fn dalek_batch(records: &[SignedRecord]) -> bool {
        let mut messages = Vec::with_capacity(records.len());
        let mut signatures = Vec::with_capacity(records.len());
        let mut keys = Vec::with_capacity(records.len());
        for r in records {
            let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&r.body.zone.0) else {
                return false;
            };
            messages.push([SIGNING_DOMAIN, &r.body.canonical_bytes()].concat());
            signatures.push(ed25519_dalek::Signature::from_bytes(&r.signature));
            keys.push(vk);
        }
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        ed25519_dalek::verify_batch(&refs, &signatures, &keys).is_ok()
    }
    g.bench_function("verify_batch_256_dalek", |b| {
        b.iter(|| assert!(dalek_batch(black_box(&batch))))
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify_dalek", |b| {
        b.iter(|| {
            use ed25519_dalek::Verifier;
            let rec = black_box(&rec);
            let key = ed25519_dalek::VerifyingKey::from_bytes(&rec.body.zone.0).expect("a key");
            let msg = [SIGNING_DOMAIN, &rec.body.canonical_bytes()].concat();
            key.verify(&msg, &ed25519_dalek::Signature::from_bytes(&rec.signature))
                .expect("valid")
        })
    });
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("encode", |b| b.iter(|| black_box(&rec).encode()));
    g.bench_function("decode", |b| {
        b.iter(|| SignedRecord::decode(black_box(&bytes)).expect("decodes"))
    });
    g.bench_function("content_hash", |b| {
        b.iter(|| black_box(&rec).content_hash())
    });
    g.finish();
}

/// A MemStore of 100k names, each holding a signed record at seq 1.
fn big_store(key: &ZoneKey) -> MemStore {
    let mut store = MemStore::new();
    for i in 0..STORE_NAMES as u64 {
        let rec = sign(key, i, 1);
        store.insert(&rec.name(), Entry::from_record(&rec));
    }
    store
}

fn store_benches(c: &mut Criterion) {
    let key = key();
    let mut store = big_store(&key);
    // Every update gets a seq above everything before it, so each one really applies.
    let mut next_seq = 2u64;
    let mut next_name = 0u64;
    let mut fresh = |n: usize| -> Vec<SignedRecord> {
        (0..n)
            .map(|_| {
                next_name = (next_name + 7919) % STORE_NAMES as u64;
                next_seq += 1;
                sign(&key, next_name, next_seq)
            })
            .collect()
    };

    let mut g = c.benchmark_group("store_100k");
    g.bench_function("apply_one_update", |b| {
        b.iter_custom(|iters| {
            let updates = fresh(iters as usize);
            let start = Instant::now();
            for r in &updates {
                let outcome = store
                    .apply(r, NOW, Freshness::Replicate, None)
                    .expect("infallible");
                assert!(outcome.changed_store());
            }
            start.elapsed()
        })
    });
    // The index's part of an apply (what the node does under its store lock once a record
    // is verified and its rank decided): a newer entry replaces a held name's.
    g.bench_function("insert_replacing_a_held_name", |b| {
        b.iter_custom(|iters| {
            let updates: Vec<(String, Entry)> = fresh(iters as usize)
                .iter()
                .map(|r| (r.name(), Entry::from_record(r)))
                .collect();
            let start = Instant::now();
            for (name, entry) in updates {
                store.insert(&name, entry);
            }
            start.elapsed()
        })
    });
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("apply_batch_256_updates", |b| {
        b.iter_custom(|iters| {
            let batches: Vec<Vec<SignedRecord>> = (0..iters).map(|_| fresh(BATCH)).collect();
            let start = Instant::now();
            for batch in &batches {
                let outcomes = store
                    .apply_batch(batch, NOW, Freshness::Replicate)
                    .expect("infallible");
                assert!(outcomes.iter().all(|o| o.changed_store()));
            }
            start.elapsed()
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("digest_incremental_root", |b| {
        b.iter(|| black_box(&store).digest())
    });
    g.throughput(Throughput::Elements(STORE_NAMES as u64));
    g.bench_function("digest_rebuild_from_entries", |b| {
        b.iter(|| {
            let mut buckets = [[0u8; 32]; BUCKETS];
            for (name, e) in black_box(&store).iter() {
                if e.bytes.is_some() {
                    let d = entry_digest(&name, &e.floor);
                    let acc = &mut buckets[bucket_of(&name) as usize];
                    for (a, x) in acc.iter_mut().zip(d) {
                        *a ^= x;
                    }
                }
            }
            StoreDigest::from_buckets(&buckets)
        })
    });
    // The read path every DNS and HTTP answer takes: the index lookup, then the live check and
    // the decode of the held body (`Store::resolve`). Names visited in a fixed stride, so
    // successive lookups land in different parts of the tree, as random queries do.
    let names: Vec<String> = (0..STORE_NAMES as u64)
        .map(|i| sign(&key, (i * 7919) % STORE_NAMES as u64, 1).name())
        .collect();
    let mut next = cycling(names);
    g.throughput(Throughput::Elements(1));
    g.bench_function("entry_hit", |b| {
        b.iter_batched(
            &mut next,
            |name| black_box(black_box(&store).entry(&name).is_some()),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("resolve_hit", |b| {
        b.iter_batched(
            &mut next,
            |name| black_box(black_box(&store).resolve(&name, NOW)),
            BatchSize::SmallInput,
        )
    });
    // Labels the zone does not hold, in the same stride.
    let zone = key.zone().to_string();
    let absent: Vec<String> = (0..STORE_NAMES as u64)
        .map(|i| format!("absent-{}.{zone}", (i * 7919) % STORE_NAMES as u64))
        .collect();
    let mut next_absent = cycling(absent);
    g.bench_function("resolve_miss", |b| {
        b.iter_batched(
            &mut next_absent,
            |name| black_box(black_box(&store).resolve(&name, NOW)),
            BatchSize::SmallInput,
        )
    });
    // The responder's side of a round where one bucket differs (~390 summaries).
    let mut wire = store.digest().wire_buckets();
    wire[17] ^= 1;
    let root = [0u8; 32];
    g.throughput(Throughput::Elements(1));
    g.bench_function("answer_digest_one_bucket", |b| {
        b.iter(|| answer_digest(black_box(&store), &root, &wire, None))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = record_benches, store_benches
}
criterion_main!(benches);
