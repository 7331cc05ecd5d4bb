//! What a Prometheus scrape costs a node (issue 15: "`/metrics` scraped every second costs
//! ≤ 1 % CPU"), measured on real `dpin node` processes.
//!
//! `dpin-bench scrape --nodes 5 --records 10000 --every-ms 1000` starts N nodes on loopback
//! (`--no-probe`), publishes `--records` signed records spread over the nodes (so every store
//! holds them, and the failure detector, ingest budget and histograms have something in
//! them), lets gossip settle, then alternates two kinds of window of `--window-s` seconds on
//! the same running cluster:
//!
//! * **quiet**: nothing talks to the nodes' APIs;
//! * **scraped**: every node's `/metrics` is fetched every `--every-ms`, as one Prometheus
//!   server with that scrape interval would.
//!
//! Each node's CPU time comes from `/proc/PID/stat` at the window's edges. The windows run in
//! the order Q S, S Q, Q S, … so a slow drift of the idle cost (a settling cluster) falls on
//! both kinds alike. The cost of scraping is the scraped windows' CPU per node minus the
//! quiet windows', in % of one core, and that difference per scrape in ms. The bench's own
//! CPU (the scraper) is not counted: it is the Prometheus server's cost, not the node's.
//!
//! `/proc` counts CPU in clock ticks (10 ms at the usual 100 Hz), so a 30 s window resolves
//! about 0.03 % of a core per node; rounds are repeated (`--rounds`) and medians printed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use dpin_protocol::ZoneKey;
use futures::StreamExt;

use crate::cluster::{self, Cluster, ClusterOptions, Layout};
use crate::history::OpOutcome;
use crate::nodeapi::Api;
use crate::propbench::bench_record;

/// Arguments of `dpin-bench scrape`.
#[derive(clap::Args, Clone, Debug)]
pub struct ScrapeArgs {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Signed records published before measuring (spread over the nodes' APIs).
    #[arg(long, default_value_t = 10_000)]
    pub records: usize,
    /// Scrape interval in the scraped windows, milliseconds (Prometheus's `scrape_interval`).
    #[arg(long, default_value_t = 1000)]
    pub every_ms: u64,
    /// Length of each window, seconds.
    #[arg(long, default_value_t = 30)]
    pub window_s: u64,
    /// Pairs of windows (one quiet, one scraped each).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds to let the cluster settle after the records are in, before the first window.
    #[arg(long, default_value_t = 15)]
    pub settle_s: u64,
    /// Node binaries to compare (repeat the flag); default: `dpin` next to this program.
    #[arg(long)]
    pub dpin: Vec<PathBuf>,
}

/// One binary's result.
#[derive(Clone, Debug)]
pub struct ScrapeRow {
    /// The binary measured.
    pub bin: String,
    /// CPU per node in each quiet window, % of one core (mean over the nodes).
    pub quiet: Vec<f64>,
    /// CPU per node in each scraped window, % of one core.
    pub scraped: Vec<f64>,
    /// Scrapes answered in all scraped windows, all nodes.
    pub scrapes: usize,
    /// Scrapes that failed (no answer or not 200).
    pub failed: usize,
    /// Mean `/metrics` body size, bytes.
    pub body_bytes: f64,
    /// Node CPU seconds the scraped windows used beyond the quiet ones, all nodes.
    pub extra_cpu_s: f64,
}

impl ScrapeRow {
    /// Median of the scraped windows minus the median of the quiet ones, % of a core per node.
    pub fn cost_pct(&self) -> f64 {
        median(&self.scraped) - median(&self.quiet)
    }

    /// Node CPU per scrape, milliseconds (the extra CPU over the scrapes answered).
    pub fn ms_per_scrape(&self) -> f64 {
        if self.scrapes == 0 {
            return f64::NAN;
        }
        self.extra_cpu_s * 1e3 / self.scrapes as f64
    }
}

/// The median of `v` (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 0 {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

/// Whether round `r`'s scraped window comes first: Q S, S Q, Q S, … (drift falls on both).
pub fn scraped_first(r: usize) -> bool {
    r % 2 == 1
}

/// Runs the bench for every binary and prints one table.
pub async fn run(args: &ScrapeArgs, bins: Vec<PathBuf>) -> Result<Vec<ScrapeRow>> {
    if !(1..=60).contains(&args.nodes) || args.rounds == 0 || args.window_s == 0 {
        bail!("--nodes must be in 1..=60, --rounds and --window-s at least 1");
    }
    if args.every_ms < 10 {
        bail!("--every-ms must be at least 10");
    }
    let mut rows = Vec::new();
    for bin in &bins {
        rows.push(one(args, bin).await?);
    }
    println!(
        "/metrics scrape cost: {} nodes, {} records, a scrape of every node every {} ms, {} rounds of {} s quiet + {} s scraped, `dpin node --no-probe`, loopback",
        args.nodes, args.records, args.every_ms, args.rounds, args.window_s, args.window_s
    );
    println!(
        "| binary | quiet CPU/node % core (each window) | scraped (each window) | cost % core per node (median − median) | node CPU per scrape ms | body KB | scrapes (failed) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.1} | {} ({}) |",
            r.bin,
            list(&r.quiet),
            list(&r.scraped),
            r.cost_pct(),
            r.ms_per_scrape(),
            r.body_bytes / 1024.0,
            r.scrapes,
            r.failed
        );
    }
    Ok(rows)
}

async fn one(args: &ScrapeArgs, bin: &std::path::Path) -> Result<ScrapeRow> {
    let n = args.nodes;
    let dir = std::env::temp_dir().join(format!("dpin-bench-scrape-{}", std::process::id()));
    let opts = ClusterOptions {
        dpin: bin.to_path_buf(),
        base_dir: dir.clone(),
        nodes: n,
        dns: false,
        layout: Layout::Loopback,
        node_args: vec!["--no-probe".to_owned()],
        faketime: None,
    };
    eprintln!("dpin-bench: scrape, {n} nodes of {}", bin.display());
    let mut cluster = Cluster::start(&opts).await?;
    let result = measure(args, &cluster).await;
    cluster.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let mut row = result?;
    row.bin = bin.display().to_string();
    Ok(row)
}

async fn measure(args: &ScrapeArgs, cluster: &Cluster) -> Result<ScrapeRow> {
    let n = args.nodes;
    let api = Api::new()?;
    let apis = cluster.apis();
    let pids: Vec<u32> = cluster.nodes.iter().filter_map(|p| p.pid()).collect();
    if apis.len() != n || pids.len() != n {
        bail!(
            "only {} APIs and {} processes of {n} nodes",
            apis.len(),
            pids.len()
        );
    }
    if n > 1
        && !cluster
            .wait_connected(&api, n - 1, Duration::from_secs(60))
            .await
    {
        bail!("the {n} nodes did not all connect within 60 s");
    }
    publish(&api, &apis, args.records).await?;
    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let ticks = cluster::clock_ticks();
    let window = Duration::from_secs(args.window_s);
    let mut row = ScrapeRow {
        bin: String::new(),
        quiet: Vec::new(),
        scraped: Vec::new(),
        scrapes: 0,
        failed: 0,
        body_bytes: 0.0,
        extra_cpu_s: 0.0,
    };
    let (mut bytes, mut quiet_s, mut scraped_s) = (0usize, 0.0, 0.0);
    for r in 0..args.rounds {
        let order = if scraped_first(r) {
            [true, false]
        } else {
            [false, true]
        };
        for scrape in order {
            let before = cpu(&pids)?;
            let t0 = Instant::now();
            if scrape {
                let (ok, failed, b) = scrape_for(&http, &apis, window, args.every_ms).await;
                row.scrapes += ok;
                row.failed += failed;
                bytes += b;
            } else {
                tokio::time::sleep(window).await;
            }
            let secs = t0.elapsed().as_secs_f64();
            let used = cpu(&pids)?.saturating_sub(before) as f64 / ticks;
            let pct = used / secs / n as f64 * 100.0;
            if scrape {
                row.scraped.push(pct);
                scraped_s += used;
            } else {
                row.quiet.push(pct);
                quiet_s += used;
            }
            eprintln!(
                "dpin-bench: round {r} {}: {pct:.3} % of a core per node",
                if scrape { "scraped" } else { "quiet" }
            );
        }
    }
    row.extra_cpu_s = scraped_s - quiet_s;
    row.body_bytes = bytes as f64 / row.scrapes.max(1) as f64;
    Ok(row)
}

/// The nodes' CPU time together, in ticks; an error if a node has exited.
fn cpu(pids: &[u32]) -> Result<u64> {
    pids.iter()
        .map(|&p| cluster::cpu_ticks(p).ok_or_else(|| anyhow!("node process {p} is gone")))
        .sum()
}

/// `count` records with one endpoint each, at most 16 in flight, origins rotating.
async fn publish(api: &Api, apis: &[SocketAddr], count: usize) -> Result<()> {
    let key = &ZoneKey::from_seed(*blake3::hash(b"dpin-bench scrape").as_bytes());
    let run = std::process::id();
    let t0 = Instant::now();
    let mut refused = 0usize;
    let mut results = futures::stream::iter(0..count)
        .map(|m| {
            let api = api.clone();
            let to = apis[m % apis.len()];
            async move {
                let (record, _) = bench_record(key, &format!("s{run}-{m}"), 201, m, 3_600_000)?;
                Ok::<_, anyhow::Error>(api.publish(to, &record, Duration::from_secs(10)).await)
            }
        })
        .buffer_unordered(16);
    while let Some(w) = results.next().await {
        if !matches!(w?.outcome, OpOutcome::Applied) {
            refused += 1;
        }
    }
    eprintln!(
        "dpin-bench: published {count} records in {:.1} s ({refused} not applied)",
        t0.elapsed().as_secs_f64()
    );
    if refused > count / 100 {
        bail!("{refused} of {count} publishes were not applied");
    }
    Ok(())
}

/// Scrapes every node's `/metrics` each `every_ms` for `window`, each round's requests in
/// parallel; returns (answered, failed, body bytes). A round that overruns its slot skips the
/// ticks it missed, as Prometheus does; the count is what was answered.
async fn scrape_for(
    http: &reqwest::Client,
    apis: &[SocketAddr],
    window: Duration,
    every_ms: u64,
) -> (usize, usize, usize) {
    let (mut ok, mut failed, mut bytes) = (0, 0, 0);
    let end = Instant::now() + window;
    let mut tick = tokio::time::interval(Duration::from_millis(every_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let answers = futures::future::join_all(apis.iter().map(|a| async move {
            let resp = http.get(format!("http://{a}/metrics")).send().await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            resp.bytes().await.ok().map(|b| b.len())
        }))
        .await;
        for a in answers {
            match a {
                Some(b) => {
                    ok += 1;
                    bytes += b;
                }
                None => failed += 1,
            }
        }
    }
    (ok, failed, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_alternate_their_order_so_drift_falls_on_both_kinds() {
        let order: Vec<bool> = (0..4).map(scraped_first).collect();
        assert_eq!(order, [false, true, false, true]);
    }

    #[test]
    fn the_cost_is_the_median_scraped_window_less_the_median_quiet_one() {
        let row = ScrapeRow {
            bin: "b".into(),
            quiet: vec![0.30, 0.50, 0.32],
            scraped: vec![0.40, 0.36, 0.90],
            scrapes: 300,
            failed: 0,
            body_bytes: 1.0,
            extra_cpu_s: 0.6,
        };
        assert!((row.cost_pct() - 0.08).abs() < 1e-9);
        assert!((row.ms_per_scrape() - 2.0).abs() < 1e-9);
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);
    }
}
