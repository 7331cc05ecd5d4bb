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
//! * **`dpin-bench gossip-load`** sends the same updates to the measured node *by gossip*
//!   itself: `--peers` fresh libp2p identities (the node's own network layer, as
//!   `dpin-sim attack` joins) connect to it and publish the updates in turn. No other node,
//!   no HTTP and no fsync stand between the load and the measured node, so on a 2-core
//!   machine the load costs the client CPU little: the three source nodes and their HTTP
//!   publishes of `publish-load` took that CPU from dnsperf, and reached only 550 of 1,000
//!   a second (README, DNS). A node takes at most 250 gossip messages a second from a peer
//!   in its first 10 s and 500 after (`dpin_protocol::ingest`), so 1,000 a second from 5
//!   peers stay under both.
//!
//! Both loads pace the same way ([`Pacer`]) and make the same updates ([`Updates`]).
//!
//! Wiring: `dpin-bench` has a subcommand variant for each, holding [`FillArgs`],
//! [`LoadArgs`] and [`GossipLoadArgs`], and calls [`fill`], [`load`] and [`gossip_load`].

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

/// Paces sends at a fixed rate for a fixed time from its creation, until SIGTERM or SIGINT
/// (a bench script stops a load after its runs that way), and keeps the summary figures.
struct Pacer {
    rate: u32,
    duration_s: f64,
    started: Instant,
    interval: Duration,
    total: u64,
    next: u64,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    late: u64,
    max_late: Duration,
}

impl Pacer {
    fn new(rate: u32, duration_s: f64) -> Result<Self> {
        if rate == 0 {
            bail!("--rate must be at least 1");
        }
        if !(duration_s > 0.0 && duration_s <= 3600.0) {
            bail!("--duration-s must be in (0, 3600]");
        }
        Ok(Pacer {
            rate,
            duration_s,
            started: Instant::now(),
            interval: Duration::from_secs_f64(1.0 / f64::from(rate)),
            total: (duration_s * f64::from(rate)).round() as u64,
            next: 0,
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            late: 0,
            max_late: Duration::ZERO,
        })
    }

    fn due(&self, k: u64) -> Instant {
        self.started + self.interval.mul_f64(k as f64)
    }

    /// Waits until the next send is due; `None` once all are sent or a signal came.
    async fn tick(&mut self) -> Option<u64> {
        if self.next >= self.total {
            return None;
        }
        let k = self.next;
        tokio::select! {
            _ = tokio::time::sleep_until(self.due(k).into()) => {}
            _ = self.term.recv() => return None,
            _ = self.int.recv() => return None,
        }
        self.next += 1;
        Some(k)
    }

    /// Send `k` goes out now: counted late if more than one interval after its time.
    fn sending(&mut self, k: u64) {
        let behind = Instant::now().saturating_duration_since(self.due(k));
        if behind > self.interval {
            self.late += 1;
            self.max_late = self.max_late.max(behind);
        }
    }

    /// "offered R /s for up to D s, sent S in T s (X /s), L sent late (max M ms)".
    fn summary(&self, sent: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        format!(
            "offered {} /s for up to {:.1} s, sent {sent} in {secs:.1} s ({:.0} /s), {} sent late (max {:.1} ms)",
            self.rate,
            self.duration_s,
            sent as f64 / secs,
            self.late,
            self.max_late.as_secs_f64() * 1000.0,
        )
    }
}

/// Signed updates of the bench names: record `i` (picked by a seeded RNG over `0..records`)
/// at a sequence number from the wall clock in microseconds, above the fill's seq 1 and any
/// earlier run's, so every update wins over the one held.
struct Updates {
    zones: Vec<ZoneKey>,
    rng: ChaCha8Rng,
    records: usize,
    expires: u64,
    made: u64,
}

impl Updates {
    fn new(records: usize, seed: u64) -> Result<Self> {
        if records == 0 {
            bail!("--records must be at least 1");
        }
        Ok(Updates {
            zones: (0..BENCH_ZONES).map(bench_zone).collect(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            records,
            expires: unix_ms().saturating_add(RECORD_LIFETIME_MS),
            made: 0,
        })
    }

    fn next(&mut self) -> Result<dpin_protocol::SignedRecord> {
        let i = self.rng.gen_range(0..self.records);
        self.made += 1;
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(self.made + 1);
        Ok(bench_record(&self.zones, i, seq, self.expires)?)
    }
}

/// Publishes at the offered rate for the duration and prints the summary line.
pub async fn load(a: &LoadArgs) -> Result<()> {
    if a.in_flight == 0 {
        bail!("--in-flight must be at least 1");
    }
    let mut updates = Updates::new(a.records, a.seed)?;
    let mut pacer = Pacer::new(a.rate, a.duration_s)?;
    let api = Api::new().context("HTTP client")?;
    let slots = Arc::new(Semaphore::new(a.in_flight));
    let mut tasks = tokio::task::JoinSet::new();
    let mut outcomes: BTreeMap<OpOutcome, u64> = BTreeMap::new();
    let mut sent = 0u64;
    while let Some(k) = pacer.tick().await {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .context("semaphore closed")?;
        pacer.sending(k);
        let record = updates.next()?;
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
    let words: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k:?} {v}")).collect();
    println!(
        "publish-load: {}, outcomes: {}",
        pacer.summary(sent),
        words.join(", ")
    );
    Ok(())
}

/// Arguments of `dpin-bench gossip-load`.
#[derive(clap::Args, Clone, Debug)]
pub struct GossipLoadArgs {
    /// The measured node's libp2p address with `/p2p/PEER_ID` (the `listen` line `dpin node`
    /// prints).
    #[arg(long)]
    pub target: libp2p::Multiaddr,
    /// Identities (each its own connection) the updates come from, in turn.
    #[arg(long, default_value_t = 5)]
    pub peers: usize,
    /// Names to pick from: the `--records` given to `dns-fill`.
    #[arg(long)]
    pub records: usize,
    /// Updates per second, all peers together.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// How long to send, in seconds.
    #[arg(long)]
    pub duration_s: f64,
    /// Seed of the RNG that picks the names.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Most identities `gossip-load` starts.
const MAX_LOAD_PEERS: usize = 64;

/// Connects the peers, publishes at the offered rate for the duration, prints the summary.
pub async fn gossip_load(a: &GossipLoadArgs) -> Result<()> {
    if a.peers == 0 || a.peers > MAX_LOAD_PEERS {
        bail!("--peers must be in 1..={MAX_LOAD_PEERS}");
    }
    let mut updates = Updates::new(a.records, a.seed)?;
    let target = crate::attack::target_peer(&a.target)?;
    let shared = Arc::new(crate::attack::Shared::default());
    let mut sessions = Vec::with_capacity(a.peers);
    for _ in 0..a.peers {
        sessions.push(
            crate::attack::Session::start(&a.target, target, false, shared.clone(), Instant::now())
                .await?,
        );
    }
    let mut pacer = Pacer::new(a.rate, a.duration_s)?;
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut sent = 0u64;
    while let Some(k) = pacer.tick().await {
        let wire = updates.next()?.encode();
        pacer.sending(k);
        sent += 1;
        let outcome = match sessions[k as usize % sessions.len()]
            .net
            .publish(wire)
            .await
        {
            Ok(status) => format!("{status:?}"),
            Err(e) => format!("error ({e})"),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    let words: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "gossip-load: from {} peers, {}, outcomes: {}",
        a.peers,
        pacer.summary(sent),
        words.join(", ")
    );
    for s in sessions {
        let _ = s.net.shutdown().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both loads send the same stream for a seed (a run can be compared with another), every
    /// update is a bench name of the fill, and it wins over what the fill wrote (seq 1).
    #[test]
    fn updates_follow_the_seed_name_fill_names_and_win_over_the_fill() -> Result<()> {
        let names = |seed| -> Result<Vec<String>> {
            let mut u = Updates::new(50, seed)?;
            (0..20).map(|_| Ok(u.next()?.name())).collect()
        };
        assert_eq!(names(7)?, names(7)?);
        assert_ne!(names(7)?, names(8)?);
        let zones: Vec<ZoneKey> = (0..BENCH_ZONES).map(bench_zone).collect();
        let fill: Vec<String> = (0..50)
            .map(|i| Ok(bench_record(&zones, i, 1, u64::MAX)?.name()))
            .collect::<Result<_>>()?;
        let mut u = Updates::new(50, 7)?;
        for _ in 0..20 {
            let r = u.next()?;
            assert!(fill.contains(&r.name()), "{} is not a bench name", r.name());
            assert!(r.body.seq > 1);
        }
        assert!(Updates::new(0, 1).is_err());
        Ok(())
    }

    #[test]
    fn a_pacer_refuses_a_rate_or_duration_out_of_range() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            assert!(Pacer::new(0, 1.0).is_err());
            assert!(Pacer::new(10, 0.0).is_err());
            assert!(Pacer::new(10, 3601.0).is_err());
            let mut p = Pacer::new(1000, 0.005).expect("pacer");
            let mut ticks = Vec::new();
            while let Some(k) = p.tick().await {
                p.sending(k);
                ticks.push(k);
            }
            assert_eq!(ticks, vec![0, 1, 2, 3, 4], "5 ms at 1,000 a second");
        });
    }
}
