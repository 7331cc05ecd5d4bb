//! The two helpers `deploy/dns-bench.sh` runs at data scale (issue 14: "DNS at 1M names"):
//!
//! * **`dpin-bench dns-fill`** writes a data dir holding N signed records
//!   ([`dpin_node::benchdata`]: `service-{i}` over 1,000 zones, one loopback A each) straight
//!   into `store.redb`, and beside it the *same* names and addresses as a zone file for the
//!   reference server (origin `dpin.`) and as a dnsperf query file. Publishing a million names
//!   through the API, one fsync each, would take the better part of an hour.
//! * **`dpin-bench publish-load`** publishes signed updates of those names over HTTP to one
//!   or more nodes (in turn) at a fixed rate for a fixed time, so that the DNS node measured
//!   beside them receives them by gossip while dnsperf runs: the target's "p99 ≤ 1 ms at half
//!   the max rate while 1,000 publishes/s arrive by gossip". A node takes at most 500 gossip
//!   messages a second from one peer (`dpin_protocol::ingest`, the per-peer budget), so 1,000
//!   a second need at least three sources. Each update is record `i` (picked by a seeded RNG
//!   over `0..N`) at a sequence number taken from the wall clock in microseconds, so every
//!   update wins over the one held and a run can follow an earlier one on the same data. At
//!   most `--in-flight` requests are outstanding (the API allows 32 a client); a publish whose
//!   time comes while all are busy is sent late, and the report says how many were late and
//!   by how much at most. SIGTERM or SIGINT ends it early. It prints one line: offered and
//!   achieved rate, outcomes by name.
//!
//! Wiring: `dpin-bench` has a subcommand variant for each, holding [`FillArgs`] and
//! [`LoadArgs`], and calls [`fill`] and [`load`].

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dpin_node::benchdata::{self, bench_host, bench_record, bench_zone, BENCH_ZONES};
use dpin_node::clock::now_ms as unix_ms;
use dpin_protocol::ZoneKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;

use crate::history::OpOutcome;
use crate::nodeapi::Api;

/// How long the bench records live: longer than any bench run, short enough that a data dir
/// left behind holds nothing live for long.
const RECORD_LIFETIME_MS: u64 = 20 * 24 * 3600 * 1000;

/// Arguments of `dpin-bench dns-fill`.
#[derive(clap::Args, Clone, Debug)]
pub struct FillArgs {
    /// Records (names) to write.
    #[arg(long)]
    pub records: usize,
    /// The node's data dir (created; its `store.redb` is replaced).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The zone file for the reference server: origin `dpin.`, an SOA, an NS and one A per
    /// name.
    #[arg(long)]
    pub zone_file: PathBuf,
    /// The dnsperf query file: one `NAME A` line per name.
    #[arg(long)]
    pub queries: PathBuf,
}

/// Writes the data dir, the zone file and the query file; prints what it wrote.
pub fn fill(a: &FillArgs) -> Result<()> {
    if a.records == 0 {
        bail!("--records must be at least 1");
    }
    let create = |p: &PathBuf| -> Result<BufWriter<std::fs::File>> {
        Ok(BufWriter::new(std::fs::File::create(p).with_context(
            || format!("cannot create {}", p.display()),
        )?))
    };
    let mut zone = create(&a.zone_file)?;
    let mut queries = create(&a.queries)?;
    writeln!(zone, "$ORIGIN dpin.")?;
    writeln!(zone, "$TTL 60")?;
    writeln!(zone, "@ SOA ns.dpin. hostmaster.dpin. 1 60 60 86400 5")?;
    writeln!(zone, "@ NS ns.dpin.")?;
    writeln!(zone, "ns A 127.0.0.1")?;
    let started = Instant::now();
    let expires = unix_ms().saturating_add(RECORD_LIFETIME_MS);
    let written = benchdata::write_store(&a.data_dir, a.records, expires, |i, r| {
        let [a0, a1, a2, a3] = bench_host(i);
        let name = r.name();
        writeln!(zone, "{name} A {a0}.{a1}.{a2}.{a3}")?;
        writeln!(queries, "{name}.dpin A")
    })?;
    zone.flush()?;
    queries.flush()?;
    eprintln!(
        "dns-fill: {} records ({:.1} B encoded each) in {}, zone file {}, queries {}, in {:.1} s",
        a.records,
        written.encoded as f64 / a.records as f64,
        a.data_dir.display(),
        a.zone_file.display(),
        a.queries.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Arguments of `dpin-bench publish-load`.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// The HTTP API address (`IP:PORT`) of a node to publish to; repeat the flag for several
    /// nodes, which then take the publishes in turn.
    #[arg(long, required = true)]
    pub api: Vec<SocketAddr>,
    /// Names to pick from: the `--records` given to `dns-fill`.
    #[arg(long)]
    pub records: usize,
    /// Publishes per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// How long to publish, in seconds.
    #[arg(long)]
    pub duration_s: f64,
    /// Most requests outstanding at once.
    #[arg(long, default_value_t = 24)]
    pub in_flight: usize,
    /// Seed of the RNG that picks the names.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Publishes at the offered rate for the duration and prints the summary line.
pub async fn load(a: &LoadArgs) -> Result<()> {
    if a.records == 0 || a.rate == 0 || a.in_flight == 0 {
        bail!("--records, --rate and --in-flight must be at least 1");
    }
    if !(a.duration_s > 0.0 && a.duration_s <= 3600.0) {
        bail!("--duration-s must be in (0, 3600]");
    }
    let api = Api::new().context("HTTP client")?;
    let zones: Arc<Vec<ZoneKey>> = Arc::new((0..BENCH_ZONES).map(bench_zone).collect());
    let slots = Arc::new(Semaphore::new(a.in_flight));
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let total = (a.duration_s * f64::from(a.rate)).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / f64::from(a.rate));
    let expires = unix_ms().saturating_add(RECORD_LIFETIME_MS);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let (mut late, mut max_late) = (0u64, Duration::ZERO);
    let mut outcomes: BTreeMap<OpOutcome, u64> = BTreeMap::new();
    // SIGTERM or SIGINT ends the load early (the bench script stops it after its runs); the
    // publishes in flight are awaited and counted.
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sent = 0u64;
    for k in 0..total {
        let due = started + interval.mul_f64(k as f64);
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .context("semaphore closed")?;
        let behind = Instant::now().saturating_duration_since(due);
        if behind > interval {
            late += 1;
            max_late = max_late.max(behind);
        }
        let i = rng.gen_range(0..a.records);
        // Microseconds since the epoch: above the fill's seq 1 and any earlier run's.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(k + 2);
        let record = bench_record(&zones, i, seq, expires)?;
        sent += 1;
        let (api, addr) = (api.clone(), a.api[k as usize % a.api.len()]);
        tasks.spawn(async move {
            let r = api.publish(addr, &record, Duration::from_secs(5)).await;
            drop(permit);
            r.outcome
        });
        while let Some(done) = tasks.try_join_next() {
            *outcomes.entry(done.context("publish task")?).or_default() += 1;
        }
    }
    while let Some(done) = tasks.join_next().await {
        *outcomes.entry(done.context("publish task")?).or_default() += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let words: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k:?} {v}")).collect();
    println!(
        "publish-load: offered {} /s for up to {:.1} s, sent {sent} in {secs:.1} s ({:.0} /s), {late} sent late (max {:.1} ms), outcomes: {}",
        a.rate,
        a.duration_s,
        sent as f64 / secs,
        max_late.as_secs_f64() * 1000.0,
        words.join(", ")
    );
    Ok(())
}
