//! `dpin-bench` — side-by-side measurements of real `dpin node` processes.
//!
//! Four measurements, each run for one or more node binaries in ONE invocation, so "before"
//! and "after" are compared on the same machine at the same time (FIELD-NOTES: runs of
//! different minutes are noisy):
//!
//! * `dpin-bench idle --nodes 10,20,40 --dpin OLD --dpin NEW` (issue 16): starts N idle nodes
//!   on loopback (`dpin node --no-probe`, each bootstrapping from node 1, no records), lets
//!   them settle, then reads every node's CPU time from `/proc/PID/stat` over a window and
//!   prints CPU per node (% of one core), RSS per node (`VmRSS`) and connections per node
//!   (peers the node's `/v1/status` reports as connected), one row per (binary, N); from
//!   `/metrics` at the start and end of the window, connection churn (new connections per
//!   node per minute), connections trimmed, false downs (peers declared down by silence: in
//!   an idle cluster every one is false) and nodes that judge themselves cut off at the end
//!   ("-" for a binary without the counter). For issue 16's 10-minute false-down run:
//!   `dpin-bench idle --nodes 40 --measure-s 600`.
//! * `dpin-bench heal --nodes 5 --rounds 6 --dpin OLD --dpin NEW` (issue 10's chaos finding):
//!   needs root and iproute2. Builds the chaos harness's namespace topology
//!   ([`dpin_sim::netns`]), partitions one node at a time by taking its peer link down (TCP
//!   connections hang, as with a cut cable), writes a new record at node 1 during the cut,
//!   heals, and measures how long after the heal the cut node (a) answers the new record and
//!   (b) sees its peers alive again. Prints the per-round figures and the medians.
//!
//! * `dpin-bench detect --nodes 10 --trials 5 --dpin OLD --dpin NEW` (issue 16): pauses one
//!   node at a time (SIGSTOP) and times how long each of its connected peers takes to mark it
//!   down, polling their `/v1/status` every 20 ms; the peers that watched it (status
//!   `watched`) are reported apart from the rest (a binary without the field counts every
//!   peer as "other").
//!
//! * `dpin-bench propagation --nodes 3,5,20 --messages 200` (issue 14): N raw libp2p gossipsub
//!   swarms in this process, then N `dpin node` processes, at each N; the time from a publish
//!   at the origin to the last node's receipt (dpin: answered over DNS), p50/p99/max for each
//!   side and the dpin/raw ratios ([`dpin_sim::propbench`]).
//!
//! * `dpin-bench dns-fill`, `dpin-bench gossip-load` and `dpin-bench publish-load`
//!   ([`dpin_sim::dnsbench`]): what `deploy/dns-bench.sh` runs at a million names (the data
//!   dir and the reference zone, and the gossip load during the latency runs: sent by gossip
//!   from peers in one process, or published over HTTP to other nodes).
//!
//! * `dpin-bench scrape --nodes 5 --records 10000 --every-ms 1000` (issue 15): what scraping
//!   `/metrics` costs a node, quiet and scraped windows alternating on one running cluster
//!   ([`dpin_sim::scrapebench`]).
//!
//! Traffic stays on loopback (idle, propagation) or inside namespaces this process creates and deletes
//! (heal, 198.18.0.0/15), as the project rules require.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use dpin_protocol::{Endpoint, Host, Transport, ZoneKey};
use dpin_sim::cluster::{Cluster, ClusterOptions, Layout};
use dpin_sim::netns::{self, Netns};
use dpin_sim::nodeapi::Api;
use dpin_sim::scrapebench::median;
use dpin_sim::workload::make_record;

#[derive(Parser)]
#[command(
    name = "dpin-bench",
    about = "Side-by-side measurements of dpin node binaries"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Idle cost per node at several cluster sizes.
    Idle {
        /// Cluster sizes, comma separated.
        #[arg(long, default_value = "10,20,40")]
        nodes: String,
        /// Node binaries to compare (repeat the flag); default: `dpin` next to this program.
        #[arg(long)]
        dpin: Vec<PathBuf>,
        /// Seconds to let the cluster settle before measuring.
        #[arg(long, default_value_t = 15)]
        settle_s: u64,
        /// Measurement window, seconds.
        #[arg(long, default_value_t = 10)]
        measure_s: u64,
        /// Extra arguments for every `dpin node` (after `--no-probe`).
        #[arg(long, allow_hyphen_values = true)]
        node_arg: Vec<String>,
    },
    /// Time for a partitioned node to converge after its link comes back.
    Heal {
        /// Nodes in the cluster.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Partition rounds per binary.
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// How long each partition lasts, seconds (long enough for TCP to back off).
        #[arg(long, default_value_t = 10)]
        partition_s: u64,
        /// Node binaries to compare (repeat the flag).
        #[arg(long)]
        dpin: Vec<PathBuf>,
    },
    /// Publish-to-last-node propagation: dpin's real processes against raw in-process
    /// gossipsub at the same N, side by side in one run (issue 14).
    Propagation(dpin_sim::propbench::PropagationArgs),
    /// One raw gossipsub swarm driven over stdin/stdout: what `propagation` starts for its
    /// one-process-per-swarm side.
    #[command(hide = true)]
    RawPeer(dpin_sim::propbench::RawPeerArgs),
    /// A data dir of N bench names, the same names as a reference zone file, and a dnsperf
    /// query file (`deploy/dns-bench.sh` at data scale; issue 14).
    DnsFill(dpin_sim::dnsbench::FillArgs),
    /// Signed updates of the bench names published to one node at a fixed rate, for a node
    /// beside it to receive by gossip while its DNS is measured (issue 14).
    PublishLoad(dpin_sim::dnsbench::LoadArgs),
    /// Signed updates of the bench names sent by gossip straight to one node, from fresh
    /// peers in this process, while its DNS is measured (issue 14).
    GossipLoad(dpin_sim::dnsbench::GossipLoadArgs),
    /// What scraping `/metrics` costs a node: quiet and scraped windows alternating on one
    /// running cluster (issue 15).
    Scrape(dpin_sim::scrapebench::ScrapeArgs),
    /// Time for each peer of a paused node to mark it down, its watchers apart (issue 16).
    Detect {
        /// Nodes in the cluster.
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// Pauses per binary (a different node each time).
        #[arg(long, default_value_t = 5)]
        trials: usize,
        /// Seconds to let the cluster settle before the first pause.
        #[arg(long, default_value_t = 20)]
        settle_s: u64,
        /// Node binaries to compare (repeat the flag).
        #[arg(long)]
        dpin: Vec<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Idle {
            nodes,
            dpin,
            settle_s,
            measure_s,
            node_arg,
        } => runtime().and_then(|rt| {
            rt.block_on(idle(&nodes, binaries(dpin)?, settle_s, measure_s, node_arg))
        }),
        Cmd::Heal {
            nodes,
            rounds,
            partition_s,
            dpin,
        } => heal_main(nodes, rounds, partition_s, dpin),
        Cmd::Detect {
            nodes,
            trials,
            settle_s,
            dpin,
        } => runtime().and_then(|rt| rt.block_on(detect(nodes, trials, settle_s, binaries(dpin)?))),
        Cmd::Propagation(args) => runtime()
            .and_then(|rt| rt.block_on(dpin_sim::propbench::run(&args)))
            .map(|_| ()),
        Cmd::RawPeer(args) => {
            runtime().and_then(|rt| rt.block_on(dpin_sim::propbench::raw_peer(&args)))
        }
        Cmd::DnsFill(args) => dpin_sim::dnsbench::fill(&args),
        Cmd::PublishLoad(args) => {
            runtime().and_then(|rt| rt.block_on(dpin_sim::dnsbench::load(&args)))
        }
        Cmd::GossipLoad(args) => {
            runtime().and_then(|rt| rt.block_on(dpin_sim::dnsbench::gossip_load(&args)))
        }
        Cmd::Scrape(args) => runtime().and_then(|rt| {
            let bins = binaries(args.dpin.clone())?;
            rt.block_on(dpin_sim::scrapebench::run(&args, bins))
                .map(|_| ())
        }),
    };
    if let Err(e) = code {
        eprintln!("dpin-bench: {e:#}");
        std::process::exit(1);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn binaries(given: Vec<PathBuf>) -> Result<Vec<PathBuf>> {
    if !given.is_empty() {
        return Ok(given);
    }
    Ok(vec![dpin_sim::cluster::default_dpin()?])
}

/// `n` nodes of `bin` on loopback under `dir`, without DNS or faked clocks.
fn loopback(
    bin: &std::path::Path,
    dir: &std::path::Path,
    n: usize,
    node_args: Vec<String>,
) -> ClusterOptions {
    ClusterOptions {
        dpin: bin.to_path_buf(),
        base_dir: dir.to_path_buf(),
        nodes: n,
        dns: false,
        layout: Layout::Loopback,
        node_args,
        faketime: None,
    }
}

fn base_dir(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("dpin-bench-{what}-{}", std::process::id()))
}

/// Resident set size in MB.
fn rss_mb(pid: u32) -> Option<f64> {
    Some(status_kb(pid, "VmRSS:")? / 1024.0)
}

/// A `kB` field of `/proc/PID/status` (`VmRSS:`, `RssAnon:`, ...).
fn status_kb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Least-squares slope of y over x; `None` with fewer than two distinct x.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (points.len() >= 2 && sxx > 0.0).then(|| sxy / sxx)
}

/// A GET of `path` on a node's API (2 s timeout); `None` if it did not answer.
async fn get(http: &reqwest::Client, api: SocketAddr, path: &str) -> Option<reqwest::Response> {
    http.get(format!("http://{api}{path}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()
}

/// Connected peers per `/v1/status`.
async fn connections(http: &reqwest::Client, api: SocketAddr) -> Option<usize> {
    let body: serde_json::Value = get(http, api, "/v1/status").await?.json().await.ok()?;
    Some(
        body.get("peers")?
            .as_array()?
            .iter()
            .filter(|p| p.get("connected").and_then(serde_json::Value::as_bool) == Some(true))
            .count(),
    )
}

/// Each peer's `(state, watched)` per a node's `/v1/status`, by peer id.
async fn peer_states(
    http: &reqwest::Client,
    api: SocketAddr,
) -> Option<(String, std::collections::BTreeMap<String, (String, bool)>)> {
    let body: serde_json::Value = get(http, api, "/v1/status").await?.json().await.ok()?;
    let me = body.get("peer_id")?.as_str()?.to_owned();
    let peers = body
        .get("peers")?
        .as_array()?
        .iter()
        .filter_map(|p| {
            Some((
                p.get("peer_id")?.as_str()?.to_owned(),
                (
                    p.get("state")?.as_str()?.to_owned(),
                    p.get("watched").and_then(serde_json::Value::as_bool) == Some(true),
                ),
            ))
        })
        .collect();
    Some((me, peers))
}

/// `dpin-bench detect`: per binary, pause `trials` nodes one after the other (SIGSTOP) and
/// poll every other node's status every 20 ms until each connected peer marks the paused one
/// down; peers that watched it at the pause are reported apart (issue 16's ≤ 2 s target is
/// theirs). Figures include up to one 20 ms poll and the status round trip.
async fn detect(n: usize, trials: usize, settle_s: u64, bins: Vec<PathBuf>) -> Result<()> {
    if !(3..=60).contains(&n) || trials == 0 {
        bail!("--nodes must be in 3..=60 and --trials at least 1");
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut rows = Vec::new();
    for bin in &bins {
        let dir = base_dir(&format!("detect-{n}"));
        let opts = loopback(bin, &dir, n, vec!["--no-probe".to_owned()]);
        eprintln!("dpin-bench: detect, {n} nodes of {}", bin.display());
        let mut cluster = Cluster::start(&opts).await?;
        tokio::time::sleep(Duration::from_secs(settle_s)).await;
        let apis = cluster.apis();
        let (mut watchers_ms, mut others_ms, mut missed) = (Vec::new(), Vec::new(), 0usize);
        for t in 0..trials {
            let target = (1 + t * 3) % n;
            let Some((target_id, _)) = peer_states(&http, apis[target]).await else {
                bail!("node {target} does not answer its status");
            };
            // Who is connected to the target, and who watches it, just before the pause.
            let mut observers = Vec::new();
            for (i, &api) in apis.iter().enumerate() {
                if i == target {
                    continue;
                }
                if let Some((_, peers)) = peer_states(&http, api).await {
                    if let Some((state, watched)) = peers.get(&target_id) {
                        if state == "alive" {
                            observers.push((i, *watched));
                        }
                    }
                }
            }
            cluster.pause(target)?;
            let t0 = Instant::now();
            let mut pending = observers.clone();
            while !pending.is_empty() && t0.elapsed() < Duration::from_secs(30) {
                let mut still = Vec::new();
                for (i, watched) in pending {
                    let down = peer_states(&http, apis[i])
                        .await
                        .is_some_and(|(_, p)| p.get(&target_id).is_some_and(|(s, _)| s == "down"));
                    if down {
                        let ms = t0.elapsed().as_secs_f64() * 1000.0;
                        if watched {
                            watchers_ms.push(ms);
                        } else {
                            others_ms.push(ms);
                        }
                    } else {
                        still.push((i, watched));
                    }
                }
                pending = still;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            missed += pending.len();
            cluster.resume(target)?;
            // Let everyone see it alive again before the next pause.
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        cluster.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
        rows.push((bin.display().to_string(), watchers_ms, others_ms, missed));
    }
    println!("paused node marked down, from SIGSTOP to the observer's status (ms), {n} nodes, {trials} pauses");
    println!("| binary | watchers: count | median | max | other peers: count | median | max | never (30 s) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (bin, mut w, mut o, missed) in rows {
        let stat = |v: &mut Vec<f64>| {
            if v.is_empty() {
                ("-".to_owned(), "-".to_owned())
            } else {
                let max = v.iter().copied().fold(0.0, f64::max);
                (format!("{:.0}", median(v)), format!("{max:.0}"))
            }
        };
        let (wm, wx) = stat(&mut w);
        let (om, ox) = stat(&mut o);
        println!(
            "| {bin} | {} | {wm} | {wx} | {} | {om} | {ox} | {missed} |",
            w.len(),
            o.len()
        );
    }
    Ok(())
}

/// Every sample of a node's `/metrics` (name with labels -> value); `None` if unreachable.
async fn metrics(
    http: &reqwest::Client,
    api: SocketAddr,
) -> Option<std::collections::BTreeMap<String, f64>> {
    let body = get(http, api, "/metrics").await?.text().await.ok()?;
    Some(dpin_sim::nodeapi::parse_metrics(&body))
}

/// Sum over nodes of `name` at the end minus at the start of the window; `None` if a node
/// does not export it (an older binary).
fn delta(
    start: &[Option<std::collections::BTreeMap<String, f64>>],
    end: &[Option<std::collections::BTreeMap<String, f64>>],
    name: &str,
) -> Option<f64> {
    let mut sum = 0.0;
    for (s, e) in start.iter().zip(end) {
        sum += e.as_ref()?.get(name)? - s.as_ref()?.get(name)?;
    }
    Some(sum)
}

/// Sum over nodes of gauge `name` at the end of the window.
fn gauge_sum(end: &[Option<std::collections::BTreeMap<String, f64>>], name: &str) -> Option<f64> {
    let mut sum = 0.0;
    for e in end {
        sum += e.as_ref()?.get(name)?;
    }
    Some(sum)
}

struct IdleRow {
    bin: String,
    n: usize,
    cpu_per_node: f64,
    cpu_max: f64,
    rss_per_node: f64,
    rss_max: f64,
    conns_per_node: f64,
    conns_max: usize,
    /// Mean anonymous RSS per node (`RssAnon`: the node's own memory; `VmRSS` adds the
    /// binary's text, which every process on the machine shares), MB.
    anon_per_node: f64,
    /// Anonymous RSS per connection, KB: the least-squares slope of each node's `RssAnon`
    /// over its connection count, across the nodes of one run (issue 14's per-connection
    /// target); `None` when every node had the same count.
    anon_kb_per_conn: Option<f64>,
    /// `/proc/loadavg` (1, 5, 15 min) at the end of the window: the machine may be shared,
    /// and per-process CPU figures read differently on a loaded machine.
    loadavg: String,
    /// New peer connections per node per minute during the window (churn), from
    /// `dpin_net_connected_total`; `None` for binaries without the counter.
    churn_per_node_min: Option<f64>,
    /// Connections trimmed during the window, all nodes (`dpin_net_trimmed_total`).
    trimmed: Option<f64>,
    /// Peers declared down by silence during the window, all nodes
    /// (`dpin_detector_downs_by_silence_total`): every one is false in an idle run.
    false_downs: Option<f64>,
    /// Nodes that judge themselves cut off at the end (`dpin_cut_off`).
    cut_off: Option<f64>,
}

/// The first three fields of `/proc/loadavg`, or "?".
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_owned())
}

async fn idle(
    sizes: &str,
    bins: Vec<PathBuf>,
    settle_s: u64,
    measure_s: u64,
    extra: Vec<String>,
) -> Result<()> {
    let sizes: Vec<usize> = sizes
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .context("--nodes wants a comma-separated list of sizes")?;
    if sizes.iter().any(|&n| n == 0 || n > 200) {
        bail!("cluster sizes must be in 1..=200");
    }
    let ticks = dpin_sim::cluster::clock_ticks();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut rows = Vec::new();
    for &n in &sizes {
        for bin in &bins {
            let dir = base_dir(&format!("idle-{n}"));
            let mut node_args = vec!["--no-probe".to_owned()];
            node_args.extend(extra.iter().cloned());
            let opts = loopback(bin, &dir, n, node_args);
            eprintln!("dpin-bench: {n} idle nodes of {}", bin.display());
            let mut cluster = Cluster::start(&opts).await?;
            tokio::time::sleep(Duration::from_secs(settle_s)).await;
            let pids: Vec<u32> = cluster.nodes.iter().filter_map(|p| p.pid()).collect();
            let apis = cluster.apis();
            let mut m0 = Vec::new();
            for &api in &apis {
                m0.push(metrics(&http, api).await);
            }
            let t0 = Instant::now();
            let before: Vec<Option<u64>> = pids
                .iter()
                .map(|&p| dpin_sim::cluster::cpu_ticks(p))
                .collect();
            tokio::time::sleep(Duration::from_secs(measure_s)).await;
            let after: Vec<Option<u64>> = pids
                .iter()
                .map(|&p| dpin_sim::cluster::cpu_ticks(p))
                .collect();
            let secs = t0.elapsed().as_secs_f64();
            let mut m1 = Vec::new();
            for &api in &apis {
                m1.push(metrics(&http, api).await);
            }
            let load = loadavg();
            let cpu: Vec<f64> = before
                .iter()
                .zip(&after)
                .filter_map(|(b, a)| {
                    Some((a.as_ref()? - b.as_ref()?) as f64 / ticks / secs * 100.0)
                })
                .collect();
            let rss: Vec<f64> = pids.iter().filter_map(|&p| rss_mb(p)).collect();
            // Each node's connections, and with its anonymous RSS in KB (read together) the
            // points of the per-connection slope.
            let mut conns = Vec::new();
            let mut pairs = Vec::new();
            for node in &cluster.nodes {
                let Some(info) = node.info.as_ref() else {
                    continue;
                };
                let Some(c) = connections(&http, info.api).await else {
                    continue;
                };
                conns.push(c);
                if let Some(kb) = node.pid().and_then(|pid| status_kb(pid, "RssAnon:")) {
                    pairs.push((c as f64, kb));
                }
            }
            cluster.shutdown().await;
            let _ = std::fs::remove_dir_all(&dir);
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
            rows.push(IdleRow {
                bin: bin.display().to_string(),
                n,
                cpu_per_node: mean(&cpu),
                cpu_max: cpu.iter().copied().fold(0.0, f64::max),
                rss_per_node: mean(&rss),
                rss_max: rss.iter().copied().fold(0.0, f64::max),
                conns_per_node: conns.iter().sum::<usize>() as f64 / conns.len().max(1) as f64,
                conns_max: conns.iter().copied().max().unwrap_or(0),
                anon_per_node: mean(&pairs.iter().map(|p| p.1 / 1024.0).collect::<Vec<_>>()),
                anon_kb_per_conn: slope(&pairs),
                loadavg: load,
                churn_per_node_min: delta(&m0, &m1, "dpin_net_connected_total")
                    .map(|d| d / n as f64 / secs * 60.0),
                trimmed: delta(&m0, &m1, "dpin_net_trimmed_total"),
                false_downs: delta(&m0, &m1, "dpin_detector_downs_by_silence_total"),
                cut_off: gauge_sum(&m1, "dpin_cut_off"),
            });
            if cpu.len() != n || rss.len() != n || conns.len() != n {
                eprintln!(
                    "dpin-bench: warning: measured cpu {} / rss {} / status {} of {n} nodes",
                    cpu.len(),
                    rss.len(),
                    conns.len()
                );
            }
        }
    }
    println!(
        "idle cost per node: settle {settle_s} s, window {measure_s} s, `dpin node --no-probe`, loopback"
    );
    println!(
        "| binary | N | CPU/node % core (mean) | CPU max | total CPU % | RSS/node MB (mean) | RSS max | anon RSS/node MB | anon KB/conn | conns/node (mean) | conns max | new conns/node/min | trimmed | false downs | cut off | load avg 1/5/15 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let show = |v: Option<f64>, prec: usize| v.map_or("-".to_owned(), |x| format!("{x:.prec$}"));
    for r in &rows {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {} | {} | {} | {} | {} | {} |",
            r.bin,
            r.n,
            r.cpu_per_node,
            r.cpu_max,
            r.cpu_per_node * r.n as f64,
            r.rss_per_node,
            r.rss_max,
            r.anon_per_node,
            show(r.anon_kb_per_conn, 0),
            r.conns_per_node,
            r.conns_max,
            show(r.churn_per_node_min, 1),
            show(r.trimmed, 0),
            show(r.false_downs, 0),
            show(r.cut_off, 0),
            r.loadavg
        );
    }
    Ok(())
}

fn heal_main(nodes: usize, rounds: usize, partition_s: u64, dpin: Vec<PathBuf>) -> Result<()> {
    if nodes < 3 {
        bail!("--nodes must be at least 3");
    }
    if !netns::available() {
        bail!("the heal measurement needs root and iproute2 (network namespaces)");
    }
    let bins = binaries(dpin)?;
    netns::remove_stale();
    // Enter the hub before any thread exists (threads inherit the namespace).
    let ns = Netns::create(nodes)?;
    ns.enter_hub()?;
    let rt = runtime()?;
    let result = rt.block_on(heal(&ns, nodes, rounds, partition_s, &bins));
    drop(rt);
    drop(ns);
    result
}

struct HealRound {
    node: usize,
    visible_ms: Option<f64>,
    alive_ms: Option<f64>,
}

async fn heal(
    ns: &Netns,
    nodes: usize,
    rounds: usize,
    partition_s: u64,
    bins: &[PathBuf],
) -> Result<()> {
    let api = Api::new()?;
    let key = ZoneKey::from_seed([0x5a; 32]);
    let mut table: Vec<(String, Vec<HealRound>)> = Vec::new();
    for bin in bins {
        let dir = base_dir("heal");
        let opts = ClusterOptions {
            dpin: bin.clone(),
            base_dir: dir.clone(),
            nodes,
            dns: false,
            layout: Layout::Netns {
                namespaces: (1..=nodes).map(|k| ns.node_ns(k)).collect(),
                data: (1..=nodes).map(|k| ns.data_addr(k)).collect(),
                mgmt: (1..=nodes).map(|k| ns.mgmt_addr(k)).collect(),
            },
            node_args: vec![
                "--no-probe".to_owned(),
                "--expected-nodes".to_owned(),
                nodes.to_string(),
            ],
            faketime: None,
        };
        eprintln!("dpin-bench: heal, {nodes} nodes of {}", bin.display());
        let mut cluster = Cluster::start(&opts).await?;
        let result = heal_rounds(&cluster, ns, &api, &key, nodes, rounds, partition_s).await;
        for k in 1..=nodes {
            let _ = ns.set_isolated(k, false);
        }
        cluster.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
        table.push((bin.display().to_string(), result?));
    }
    println!(
        "heal: {nodes} nodes in network namespaces; each round cuts one node's peer link for {partition_s} s, writes at node 1 during the cut, heals, and polls the cut node every 10 ms"
    );
    println!("| binary | round | node | heal -> record visible ms | heal -> all peers alive ms |");
    println!("|---|---|---|---|---|");
    let show = |v: Option<f64>| v.map_or("timeout".to_owned(), |x| format!("{x:.0}"));
    for (bin, rs) in &table {
        for (i, r) in rs.iter().enumerate() {
            println!(
                "| {bin} | {} | {} | {} | {} |",
                i + 1,
                r.node,
                show(r.visible_ms),
                show(r.alive_ms)
            );
        }
    }
    println!("| binary | median visible ms | max visible ms | median alive ms | max alive ms |");
    println!("|---|---|---|---|---|");
    for (bin, rs) in &table {
        let vis: Vec<f64> = rs.iter().filter_map(|r| r.visible_ms).collect();
        let alive: Vec<f64> = rs.iter().filter_map(|r| r.alive_ms).collect();
        let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
        println!(
            "| {bin} | {:.0} | {:.0} | {:.0} | {:.0} |",
            median(&vis),
            max(&vis),
            median(&alive),
            max(&alive)
        );
    }
    Ok(())
}

async fn heal_rounds(
    cluster: &Cluster,
    ns: &Netns,
    api: &Api,
    key: &ZoneKey,
    nodes: usize,
    rounds: usize,
    partition_s: u64,
) -> Result<Vec<HealRound>> {
    let apis = cluster.apis();
    if !cluster
        .wait_connected(api, nodes - 1, Duration::from_secs(30))
        .await
    {
        bail!("the cluster did not connect fully within 30 s");
    }
    let writer = apis[0];
    let label = "heal";
    let mut out = Vec::new();
    for r in 0..rounds {
        // Cut nodes 2..=N in turn (node 1 takes the writes).
        let k = 2 + r % (nodes - 1);
        let target = apis[k - 1];
        ns.set_isolated(k, true)?;
        // Let the cut node's detector and TCP notice, as in a real cut.
        tokio::time::sleep(Duration::from_secs(partition_s / 2)).await;
        let seq = (r + 1) as u64;
        let rec = make_record(
            key,
            label,
            seq,
            vec![Endpoint {
                host: Host::V4([127, 0, 0, (seq % 250) as u8 + 1]),
                port: 8000,
                transport: Transport::Tcp,
                weight: 1,
            }],
            3_600_000,
        )
        .map_err(|e| anyhow!("cannot sign: {e}"))?;
        let w = api.publish(writer, &rec, Duration::from_secs(5)).await;
        if !w.outcome.is_ack() {
            bail!(
                "round {}: write at node 1 not acknowledged: {:?}",
                r + 1,
                w.detail
            );
        }
        tokio::time::sleep(Duration::from_secs(partition_s - partition_s / 2)).await;
        let name = rec.name();
        let healed = Instant::now();
        ns.set_isolated(k, false)?;
        let deadline = healed + Duration::from_secs(30);
        let (mut visible, mut alive) = (None, None);
        while Instant::now() < deadline && (visible.is_none() || alive.is_none()) {
            if visible.is_none() {
                let got = api.resolve(target, &name, Duration::from_millis(500)).await;
                if got.seq.is_some_and(|s| s >= seq) {
                    visible = Some(healed.elapsed().as_secs_f64() * 1000.0);
                }
            }
            if alive.is_none() {
                if let Some(s) = api.status(target, Duration::from_millis(500)).await {
                    if s.peers_alive >= nodes - 1 {
                        alive = Some(healed.elapsed().as_secs_f64() * 1000.0);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!(
            "dpin-bench: round {} node {k}: visible {:?} ms, alive {:?} ms",
            r + 1,
            visible,
            alive
        );
        out.push(HealRound {
            node: k,
            visible_ms: visible,
            alive_ms: alive,
        });
        // Let everything settle before the next cut.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_is_the_least_squares_gradient_and_undefined_without_spread() {
        let line: Vec<(f64, f64)> = (0..5)
            .map(|x| (x as f64, 100.0 + 60.0 * x as f64))
            .collect();
        assert!((slope(&line).expect("defined") - 60.0).abs() < 1e-9);
        assert_eq!(slope(&[(3.0, 1.0), (3.0, 5.0)]), None);
        assert_eq!(slope(&[]), None);
    }
}
