//! Criterion benchmarks of the node's read path (figures only, no assertions on time): a DNS
//! query answered by [`Responder::respond`] from a store of 100k names, through the same steps
//! as the node's own answers — the store lock, `Store::resolve` (index lookup, live check,
//! decode), the endpoint selection of [`dpin_node::answer::select`] and the response's
//! encoding — for a held name and for one the store does not hold. `udp_a_hit` takes the
//! fast path for plain A queries (`dns/fast.rs`); `udp_a_hit_full_path` answers the same
//! queries through hickory's parse and encode alone, for the side by side.
//!
//! Run: `cargo bench -p dpin-node` (under a minute; each bench uses 20 samples over 3 s). The
//! protocol's share of it alone (`entry_hit`, `resolve_hit`): `cargo bench -p dpin-protocol`.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dpin_node::answer::{select, Answer, Literals};
use dpin_node::dns::{Proto, Responder, Source};
use dpin_protocol::{
    Content, Endpoint, EndpointsView, Entry, Host, MemStore, RecordBody, SignedRecord, Store,
    Transport, ZoneKey,
};
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};

/// 2025-10-19T00:00:00Z in Unix ms.
const NOW: u64 = 1_760_832_000_000;
const STORE_NAMES: u64 = 100_000;

/// The node's answer path without the node: the store behind a lock, as
/// `dpin_node::answer::answer` reads it (no endpoint has a health state here: all unknown),
/// and as `dpin_node::answer::dns_literals` reads it for the DNS fast path.
struct Store100k(Mutex<MemStore>);

impl Source for Store100k {
    fn answer(&self, name: &str, now_ms: u64) -> Option<Answer> {
        let record = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .resolve(name, now_ms)?;
        let eps = record.endpoints()?.to_vec();
        let endpoints = select(eps, &[]);
        Some(Answer { record, endpoints })
    }

    /// As the node reads it with probing off (`dpin_node::answer::dns_literals`): in place.
    fn literals(&self, name: &str, now_ms: u64) -> Option<Literals> {
        let store = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = store.entry(name).filter(|e| e.is_live(now_ms))?;
        let view = EndpointsView::of(entry.bytes.as_deref()?)?;
        Some(Literals::of_view(&view))
    }
}

fn key() -> ZoneKey {
    ZoneKey::from_seed([42; 32])
}

fn record(key: &ZoneKey, i: u64) -> SignedRecord {
    RecordBody {
        zone: key.zone(),
        label: format!("n{i}"),
        seq: 1,
        expires_at_ms: NOW + 24 * 3_600_000,
        content: Content::Endpoints(vec![Endpoint {
            host: Host::V4([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
            port: 80,
            transport: Transport::Tcp,
            weight: 1,
        }]),
    }
    .sign(key)
    .expect("bench records are valid")
}

/// A UDP query for `name`'s A records with EDNS, as dnsperf sends them.
fn query(name: &str) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(4242).set_recursion_desired(true);
    m.add_query(Query::query(
        Name::from_str(name).expect("bench names are valid"),
        RecordType::A,
    ));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.set_edns(e);
    m.to_vec().expect("bench queries encode")
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

fn dns_benches(c: &mut Criterion) {
    let key = key();
    let zone = key.zone().to_string();
    let mut store = MemStore::new();
    for i in 0..STORE_NAMES {
        let r = record(&key, i);
        store.insert(&r.name(), Entry::from_record(&r));
    }
    let responder = Responder::new(Store100k(Mutex::new(store)), &BTreeMap::new());
    // Names visited in a fixed stride, so successive queries land in different parts of the
    // index, as random queries do.
    let queries: Vec<Vec<u8>> = (0..STORE_NAMES)
        .map(|i| query(&format!("n{}.{zone}.dpin.", (i * 7919) % STORE_NAMES)))
        .collect();
    let mut next = cycling(queries);
    let mut g = c.benchmark_group("dns_100k");
    g.throughput(Throughput::Elements(1));
    g.bench_function("udp_a_hit", |b| {
        b.iter_batched(
            &mut next,
            |q| {
                let r = responder.respond(&q, Proto::Udp, NOW);
                assert!(r.is_some(), "a held name is answered");
                black_box(r)
            },
            BatchSize::SmallInput,
        )
    });
    // The same queries through hickory's parse and encode only, without the fast path
    // (`Responder::respond_full`): the two side by side in one run.
    g.bench_function("udp_a_hit_full_path", |b| {
        b.iter_batched(
            &mut next,
            |q| {
                let r = responder.respond_full(&q, Proto::Udp, NOW);
                assert!(r.is_some(), "a held name is answered");
                black_box(r)
            },
            BatchSize::SmallInput,
        )
    });
    // Labels the zone does not hold, in the same stride.
    let absent: Vec<Vec<u8>> = (0..STORE_NAMES)
        .map(|i| query(&format!("absent{}.{zone}.dpin.", (i * 7919) % STORE_NAMES)))
        .collect();
    let mut next_absent = cycling(absent);
    g.bench_function("udp_nxdomain", |b| {
        b.iter_batched(
            &mut next_absent,
            |q| black_box(responder.respond(&q, Proto::Udp, NOW)),
            BatchSize::SmallInput,
        )
    });
    // The same through the full path alone: what the fast path's declined try costs a miss.
    g.bench_function("udp_nxdomain_full_path", |b| {
        b.iter_batched(
            &mut next_absent,
            |q| black_box(responder.respond_full(&q, Proto::Udp, NOW)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = dns_benches
}
criterion_main!(benches);
