//! `dpin-sim` — start a local dpin cluster, or break one on purpose and check what survived.
//!
//! Subcommands:
//! * `cluster` — N nodes on loopback, printed addresses and ready-to-paste commands; Ctrl-C stops
//!   them all.
//! * `stop` — stops a cluster (or a killed harness's leftovers) from its pidfiles.
//! * `chaos` — the Jepsen-style run: workload + nemesis + checker; writes the SPEC §5 report,
//!   the history (JSONL) and an SVG timeline; exits non-zero if any invariant broke.
//! * `check` — re-runs the checker on a recorded history.
//! * `simulate` — the deterministic in-process simulator (`dpin_sim::simulate`).
//! * `attack` — a hostile peer speaking the real protocol against one node
//!   (`dpin_sim::attack`): floods, oversized messages, sync bombs, blob chunks, fake offers,
//!   foreign manifests, junk zones, rotating peer ids; prints a JSON report.
//! * `node` (hidden) — runs a dpin node, exactly as `dpin node` does: the harness's fallback
//!   when no `dpin` binary sits next to it. The other `dpin` client commands (`sign`,
//!   `publish`, `resolve`, ...) are served the same way, so the chaos race can run the real CLI
//!   from whichever binary runs the nodes.

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use dpin_protocol::{Content, Endpoint, RecordBody, ZoneKey};
use dpin_sim::checker::{self, CheckConfig};
use dpin_sim::clock;
use dpin_sim::cluster::{self, Cluster, ClusterOptions, Layout};
use dpin_sim::history::{FaultKind, History, Proto};
use dpin_sim::nemesis::{Nemesis, NemesisConfig};
use dpin_sim::netns::{self, Netns};
use dpin_sim::nodeapi::Api;
use dpin_sim::race::{self, RaceConfig, RacePaths};
use dpin_sim::report::{ClockSkew, Report, RunMeta};
use dpin_sim::svg;
use dpin_sim::wan::{LinkModel, Wan};
use dpin_sim::workload::{self, Ctx, Plan, Recorder, Target, WorkloadConfig};

#[derive(Parser)]
#[command(
    name = "dpin-sim",
    version,
    about = "Local dpin cluster and Jepsen-style chaos harness"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start N nodes on loopback and keep them running until Ctrl-C.
    Cluster {
        /// Number of nodes.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Folder for data dirs, logs and pidfiles (default: a new folder under /tmp).
        #[arg(long)]
        base_dir: Option<PathBuf>,
        /// Serve DNS on every node (on a kernel-chosen loopback port).
        #[arg(long)]
        dns: bool,
        /// The dpin binary (default: `dpin` next to this executable, else the node built into dpin-sim).
        #[arg(long)]
        dpin: Option<PathBuf>,
    },
    /// Stop the processes of a cluster or chaos run from the pidfiles in its folder.
    Stop {
        /// The folder `cluster` or `chaos` printed.
        #[arg(long)]
        base_dir: PathBuf,
    },
    /// Run a chaos test: workload, faults, checker, report.
    Chaos(Box<ChaosArgs>),
    /// Deterministic in-process simulation of N nodes in virtual time (seeded, replayable).
    Simulate(Box<dpin_sim::simulate::SimulateArgs>),
    /// Attack one node as a hostile peer speaking the real protocol; prints a JSON report.
    Attack(Box<AttackArgs>),
    /// Re-run the checker on a recorded history (JSONL) and print the counts.
    Check {
        /// History file written by `chaos`.
        history: PathBuf,
        /// Staleness bound, ms.
        #[arg(long, default_value_t = checker::DEFAULT_STALE_BOUND_MS)]
        stale_bound_ms: f64,
        /// Also render the SVG timeline to this file.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
}

#[derive(clap::Args, Clone, Debug)]
struct AttackArgs {
    /// The target node's peer multiaddr, with `/p2p/PEER_ID` (as `dpin node` prints it).
    #[arg(long)]
    target: String,
    /// What to send: KIND or KIND:RATE (messages per second), repeatable. Kinds:
    /// invalid-signature, oversized, sync-bomb, whole-store-sync, blob-flood, fake-offers,
    /// foreign-manifests, junk-zones.
    #[arg(long, required = true)]
    kind: Vec<dpin_sim::attack::Stream>,
    /// Rate of kinds given without one: N or N/s.
    #[arg(long, default_value = "100/s", value_parser = dpin_sim::attack::parse_rate)]
    rate: f64,
    /// How long: seconds, or with a unit (30s, 2m).
    #[arg(long, default_value = "10s")]
    duration: String,
    /// A new peer id (keypair and connection) every K messages.
    #[arg(long)]
    rotate_every: Option<u64>,
    /// Root (hex) of an honest blob, for foreign-manifests.
    #[arg(long)]
    blob_root: Option<String>,
    /// Seed of the junk.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn attack_main(args: AttackArgs) -> i32 {
    run_async(async move {
        let blob_root = match &args.blob_root {
            Some(h) => Some(
                hex::decode(h)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| anyhow!("--blob-root must be 64 hex digits"))?,
            ),
            None => None,
        };
        let config = dpin_sim::attack::AttackConfig {
            target: args
                .target
                .parse()
                .with_context(|| format!("bad --target {:?}", args.target))?,
            streams: args.kind.clone(),
            default_rate_per_s: args.rate,
            duration: parse_duration(&args.duration)?,
            rotate_every: args.rotate_every,
            blob_root,
            seed: args.seed,
        };
        let report = dpin_sim::attack::run(config).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        Ok(())
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum NetChoice {
    /// Namespaces if partitions are requested and possible, else loopback.
    Auto,
    /// Everything on 127.0.0.1; no partitions.
    Loopback,
    /// One network namespace per node (root + iproute2).
    Netns,
}

#[derive(clap::Args, Clone, Debug)]
struct ChaosArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Workload duration: seconds, or with a unit (90s, 5m).
    #[arg(long, default_value = "60")]
    duration: String,
    /// Seed of the workload and fault schedule (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Report file (SPEC §5 JSON).
    #[arg(long, default_value = "chaos-report.json")]
    report: PathBuf,
    /// Fault kinds, comma-separated: kill, pause, partition (one node cut off), split
    /// (split-brain halves), oneway (some nodes cannot hear the rest), skew (needs
    /// libfaketime); or rolling-restart alone (every node restarted cleanly, one at a time).
    #[arg(long, default_value = "kill,pause,partition", value_delimiter = ',')]
    faults: Vec<FaultKind>,
    /// One-way delay of every node-to-node path, ms (emulated by the harness's WAN switch;
    /// needs the namespace layout).
    #[arg(long, default_value_t = 0.0)]
    link_delay_ms: f64,
    /// Jitter of every path, ms: each packet's delay is uniform in delay ± jitter.
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Packets lost on every path, percent per direction.
    #[arg(long, default_value_t = 0.0)]
    loss_pct: f64,
    /// How far a skewed node's wall clock is off, ms (ahead or behind, drawn per fault).
    #[arg(long, default_value_t = 600_000)]
    skew_ms: u64,
    /// The libfaketime library for skew faults (default: the Debian `faketime` package's).
    #[arg(long)]
    libfaketime: Option<PathBuf>,
    /// Lifetime of every record the workload writes, ms: short, so records expire and are
    /// compacted during the run; live names are refreshed well within it.
    #[arg(long, default_value_t = workload::DEFAULT_RECORD_TTL_MS)]
    record_ttl_ms: u64,
    /// The nodes' `--compaction-horizon-ms` (how long after expiry a body is kept); must
    /// exceed the record TTL. Default: the TTL plus 5 s.
    #[arg(long)]
    compaction_horizon_ms: Option<u64>,
    /// Write paths of the race's enactors: plans only, one-step only, or both (drawn per round).
    #[arg(long, value_enum, default_value_t = RacePaths::Both)]
    race_paths: RacePaths,
    /// Most nodes faulted at once.
    #[arg(long, default_value_t = 1)]
    max_down: usize,
    /// SVG timeline file.
    #[arg(long, default_value = "chaos-timeline.svg")]
    svg: PathBuf,
    /// Staleness bound, ms: an answer may lag the newest acknowledged write by this long.
    #[arg(long, default_value_t = checker::DEFAULT_STALE_BOUND_MS)]
    stale_bound_ms: f64,
    /// Writes per second (all writers together).
    #[arg(long, default_value_t = 20.0)]
    write_rate: f64,
    /// Read rounds per second per protocol (each round reads one name from every node).
    #[arg(long, default_value_t = 20.0)]
    read_rate: f64,
    /// Network layout.
    #[arg(long, value_enum, default_value_t = NetChoice::Auto)]
    net: NetChoice,
    /// Do not serve or query DNS.
    #[arg(long)]
    no_dns: bool,
    /// Folder for the nodes' data dirs and logs (default: a new folder under /tmp).
    #[arg(long)]
    base_dir: Option<PathBuf>,
    /// The dpin binary (default: `dpin` next to this executable, else the node built into dpin-sim).
    #[arg(long)]
    dpin: Option<PathBuf>,
}

/// `dpin` subcommands dpin-sim runs itself (none of them is a dpin-sim subcommand).
const DPIN_COMMANDS: [&str; 10] = [
    "node", "keygen", "publish", "sign", "resolve", "status", "offers", "put", "get", "blob",
];

fn main() {
    // `dpin-sim node ...` is the dpin node itself (see `cluster::default_dpin`); so are the
    // client commands the chaos race runs.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| DPIN_COMMANDS.iter().any(|c| a == *c))
    {
        dpin_node::cli::main();
        return;
    }
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Chaos(args) => chaos_main(*args),
        Cmd::Simulate(args) => dpin_sim::simulate::run(&args),
        Cmd::Attack(args) => attack_main(*args),
        Cmd::Cluster {
            nodes,
            base_dir,
            dns,
            dpin,
        } => run_async(cluster_main(nodes, base_dir, dns, dpin)),
        Cmd::Stop { base_dir } => match cluster::stop_from_pidfiles(&base_dir) {
            Ok(n) => {
                println!("stopped {n} process(es) from {}", base_dir.display());
                0
            }
            Err(e) => {
                eprintln!("dpin-sim: {e:#}");
                1
            }
        },
        Cmd::Check {
            history,
            stale_bound_ms,
            svg,
        } => check_main(&history, stale_bound_ms, svg.as_deref()),
    };
    std::process::exit(code);
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run_async(fut: impl std::future::Future<Output = Result<()>>) -> i32 {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dpin-sim: {e:#}");
            return 2;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("dpin-sim: {e:#}");
            1
        }
    }
}

fn check_main(path: &Path, stale_bound_ms: f64, svg_out: Option<&Path>) -> i32 {
    let h = match History::read_jsonl(path) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("dpin-sim: {e}");
            return 2;
        }
    };
    let f = checker::check(
        &h,
        &CheckConfig {
            stale_bound_ms,
            ..CheckConfig::default()
        },
    );
    let out = serde_json::json!({
        "queries": f.queries, "writes": f.writes, "propagation_ms": f.propagation,
        "regressions": f.regressions, "content_mismatches": f.content_mismatches,
        "race": f.race, "violations": f.examples,
    });
    {
        use std::io::Write;
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = writeln!(std::io::stdout(), "{out:#}");
    }
    if let Some(svg_path) = svg_out {
        let nodes = h.ops.iter().map(|o| o.node).max().unwrap_or(1);
        let work_end_s = h
            .ops
            .iter()
            .filter(|o| o.kind == dpin_sim::history::OpKind::Read)
            .map(|o| o.end_ms)
            .fold(0.0, f64::max)
            / 1000.0;
        let title = format!("dpin chaos: {}", path.display());
        if let Err(e) = std::fs::write(svg_path, svg::render(&h, &f, nodes, work_end_s, &title)) {
            eprintln!("dpin-sim: cannot write {}: {e}", svg_path.display());
            return 2;
        }
    }
    i32::from(!f.invariants_hold())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn terminated() {
    dpin_node::cli::shutdown_signal().await;
}

fn new_base_dir(kind: &str) -> PathBuf {
    std::env::temp_dir().join(format!("dpin-{kind}-{}", std::process::id()))
}

// ---------------------------------------------------------------- cluster

async fn cluster_main(
    nodes: usize,
    base_dir: Option<PathBuf>,
    dns: bool,
    dpin: Option<PathBuf>,
) -> Result<()> {
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let dpin = match dpin {
        Some(p) => p,
        None => cluster::default_dpin()?,
    };
    let base_dir = base_dir.unwrap_or_else(|| new_base_dir("cluster"));
    let opts = ClusterOptions {
        dpin: dpin.clone(),
        base_dir: base_dir.clone(),
        nodes,
        dns,
        layout: Layout::Loopback,
        node_args: Vec::new(),
        faketime: None,
    };
    println!(
        "starting {nodes} dpin nodes; data, logs and pidfiles in {}",
        base_dir.display()
    );
    let mut cluster = tokio::select! {
        c = Cluster::start(&opts) => c?,
        _ = terminated() => bail!("interrupted during start"),
    };
    let result = serve_cluster(&mut cluster, &dpin).await;
    println!("stopping {} nodes ...", cluster.nodes.len());
    cluster.shutdown().await;
    println!("stopped; data kept in {}", base_dir.display());
    result
}

async fn serve_cluster(cluster: &mut Cluster, dpin: &Path) -> Result<()> {
    let api = Api::new().context("cannot build the HTTP client")?;
    let n = cluster.nodes.len();
    if !cluster
        .wait_connected(&api, n.saturating_sub(1), Duration::from_secs(30))
        .await
    {
        eprintln!("dpin-sim: warning: not every node sees every peer yet");
    }
    // A demo name, so the printed commands work right away.
    let key = ZoneKey::from_seed(rand::random());
    let key_path = cluster.base_dir.join("demo.key");
    write_key(&key_path, &key.to_key_file())?;
    let demo_ep: Endpoint = "127.0.0.1:8080"
        .parse()
        .map_err(|e| anyhow!("demo endpoint: {e}"))?;
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        + 24 * 3600 * 1000;
    let record = RecordBody {
        zone: key.zone(),
        label: "demo".to_owned(),
        seq: 1,
        expires_at_ms: expires,
        content: Content::Endpoints(vec![demo_ep]),
    }
    .sign(&key)
    .map_err(|e| anyhow!("demo record: {e}"))?;
    let mut published = false;
    for addr in cluster.apis() {
        if api
            .publish(addr, &record, Duration::from_secs(2))
            .await
            .outcome
            .is_ack()
        {
            published = true;
            break;
        }
    }
    let name = format!("demo.{}", key.zone());
    // The CLI lines need the real `dpin` (the embedded one only runs nodes).
    let embedded = std::env::current_exe().is_ok_and(|e| e == dpin);
    let dpin_cli = if embedded {
        PathBuf::from("dpin")
    } else {
        dpin.to_path_buf()
    };
    let dpin = dpin_cli.as_path();
    let apis: Vec<String> = cluster.apis().iter().map(ToString::to_string).collect();
    println!();
    for node in &cluster.nodes {
        let Some(info) = &node.info else { continue };
        println!(
            "node {}: pid {:<7} api {:<21} dns {:<21} peer {}",
            node.index,
            node.pid().unwrap_or(0),
            info.api,
            info.dns.map_or("-".to_owned(), |d| d.to_string()),
            info.peer_id
        );
    }
    if let Some(note) = &cluster.dns_note {
        println!("DNS is off: {note}");
    }
    println!();
    if published {
        println!(
            "demo name published: {name} -> 127.0.0.1:8080 (key {})",
            key_path.display()
        );
    } else {
        println!("warning: could not publish the demo name");
    }
    if embedded {
        println!("(nodes run from dpin-sim itself; build the CLI with: cargo build --release -p dpin-node)");
    }
    println!("try:");
    println!(
        "  {} resolve --api {} {name}",
        dpin.display(),
        apis.join(",")
    );
    for node in &cluster.nodes {
        if let Some(d) = node.info.as_ref().and_then(|i| i.dns) {
            println!("  dig @{} -p {} {name}.dpin A", d.ip(), d.port());
        }
    }
    println!(
        "  {} publish --key {} --api {} demo 127.0.0.1:9090",
        dpin.display(),
        key_path.display(),
        apis.join(",")
    );
    println!(
        "  {} status --api {}",
        dpin.display(),
        apis.first().cloned().unwrap_or_default()
    );
    println!(
        "stop with Ctrl-C here, or: dpin-sim stop --base-dir {}",
        cluster.base_dir.display()
    );
    terminated().await;
    Ok(())
}

fn write_key(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

// ---------------------------------------------------------------- chaos

fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .with_context(|| format!("bad duration {s:?}; use e.g. 30, 90s, 5m"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("bad duration unit in {s:?}; use s, m or h"),
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= 24.0 * 3600.0) {
        bail!("duration {s:?} out of range (0 < d <= 24h)");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn replay_command(args: &ChaosArgs, seed: u64, faults: &[FaultKind]) -> String {
    let exe = std::env::args()
        .next()
        .unwrap_or_else(|| "dpin-sim".to_owned());
    let faults: Vec<&str> = faults.iter().map(|f| f.as_str()).collect();
    let mut cmd = format!(
        "{exe} chaos --nodes {} --duration {} --seed {seed} --faults {} --max-down {} --stale-bound-ms {} --write-rate {} --read-rate {} --report {} --svg {}",
        args.nodes,
        args.duration,
        if faults.is_empty() { "none".to_owned() } else { faults.join(",") },
        args.max_down,
        args.stale_bound_ms,
        args.write_rate,
        args.read_rate,
        args.report.display(),
        args.svg.display()
    );
    cmd.push_str(&format!(
        " --record-ttl-ms {} --race-paths {}",
        args.record_ttl_ms,
        args.race_paths.as_str()
    ));
    if let Some(h) = args.compaction_horizon_ms {
        cmd.push_str(&format!(" --compaction-horizon-ms {h}"));
    }
    if faults.contains(&"skew") {
        cmd.push_str(&format!(" --skew-ms {}", args.skew_ms));
        if let Some(l) = &args.libfaketime {
            cmd.push_str(&format!(" --libfaketime {}", l.display()));
        }
    }
    if args.link_delay_ms > 0.0 || args.jitter_ms > 0.0 || args.loss_pct > 0.0 {
        cmd.push_str(&format!(
            " --link-delay-ms {} --jitter-ms {} --loss-pct {}",
            args.link_delay_ms, args.jitter_ms, args.loss_pct
        ));
    }
    if args.net != NetChoice::Auto {
        cmd.push_str(&format!(" --net {:?}", args.net).to_lowercase());
    }
    if args.no_dns {
        cmd.push_str(" --no-dns");
    }
    if let Some(d) = &args.dpin {
        cmd.push_str(&format!(" --dpin {}", d.display()));
    }
    cmd
}

fn chaos_main(mut args: ChaosArgs) -> i32 {
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!("dpin-sim chaos: seed {seed}");
    let duration = match parse_duration(&args.duration) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("dpin-sim: {e:#}");
            return 2;
        }
    };
    if args.nodes < 2 {
        eprintln!("dpin-sim: chaos needs at least 2 nodes");
        return 2;
    }
    args.faults.sort();
    args.faults.dedup();
    let requested = args.faults.clone();
    if args.record_ttl_ms < 2000 {
        eprintln!("dpin-sim: --record-ttl-ms must be at least 2000 (names are refreshed every third of it)");
        return 2;
    }
    if args.skew_ms > i64::MAX as u64 / 2 {
        eprintln!("dpin-sim: --skew-ms is too large");
        return 2;
    }
    let horizon = args
        .compaction_horizon_ms
        .unwrap_or(args.record_ttl_ms.saturating_add(5000));
    if horizon <= args.record_ttl_ms {
        eprintln!(
            "dpin-sim: --compaction-horizon-ms ({horizon}) must exceed --record-ttl-ms ({}): a body may only be compacted once every record it beat has expired",
            args.record_ttl_ms
        );
        return 2;
    }
    if requested.contains(&FaultKind::Restart) && requested.len() > 1 {
        eprintln!("dpin-sim: rolling-restart is a mode of its own; give it alone (--faults rolling-restart)");
        return 2;
    }
    let model = LinkModel {
        delay_ms: args.link_delay_ms,
        jitter_ms: args.jitter_ms,
        loss_pct: args.loss_pct,
    };
    if let Err(e) = model.validate() {
        eprintln!("dpin-sim: {e}");
        return 2;
    }
    let cut_kinds = [FaultKind::Partition, FaultKind::Split, FaultKind::OneWay];
    let want_partition = requested.iter().any(|f| cut_kinds.contains(f));
    let want_wan = want_partition || !model.is_ideal();
    // Choose the layout on the main thread: entering a namespace must happen before any other
    // thread exists.
    let use_netns = match args.net {
        NetChoice::Loopback => false,
        NetChoice::Netns => true,
        NetChoice::Auto => want_wan && netns::available(),
    };
    let mut ns = None;
    let mut wan = None;
    let mut netns_error = None;
    if use_netns {
        netns::remove_stale();
        let built = Netns::create_for_wan(args.nodes)
            .and_then(|n| n.enter_hub().map(|()| n))
            .map_err(anyhow::Error::from)
            .and_then(|n| {
                // The switch's threads start here, in the hub (before the runtime's threads).
                let w = Wan::start(args.nodes, |k| n.node_ns(k), model, seed)?;
                Ok((n, w))
            });
        match built {
            Ok((n, w)) => {
                ns = Some(n);
                wan = Some(w);
            }
            Err(e) if args.net == NetChoice::Netns => {
                eprintln!("dpin-sim: cannot build network namespaces: {e}");
                return 2;
            }
            Err(e) => {
                eprintln!(
                    "dpin-sim: warning: cannot build network namespaces ({e}); using loopback"
                );
                netns_error = Some(e.to_string());
            }
        }
    }
    let partition_method = if let Some(n) = &ns {
        format!(
            "netns: each node in its own network namespace ({p}-nK), peer traffic on \
             198.18.0.K through a TUN device dtK to the harness's WAN switch in {p}-hub \
             (links: {link}), API/DNS on 198.19.0.K via bridge dpm; a partition makes the \
             switch drop packets between the groups it cuts (one node and the rest; two \
             halves; one way only), while clients still reach every node; nothing outside \
             these namespaces is touched and they are deleted at the end",
            p = n.hub().trim_end_matches("-hub"),
            link = model.describe()
        )
    } else if want_partition {
        args.faults.retain(|f| !cut_kinds.contains(f));
        let why = match (&netns_error, args.net) {
            (Some(e), _) => format!("building them failed: {e}"),
            (None, NetChoice::Loopback) => "--net loopback was given".to_owned(),
            _ => "needs root and iproute2".to_owned(),
        };
        let m = format!(
            "none: partitions need network namespaces ({why}); not scheduled. Loopback \
             traffic of one process cannot be cut safely without the host firewall"
        );
        eprintln!("dpin-sim: warning: {m}");
        m
    } else {
        "none: partitions not requested".to_owned()
    };
    let (faketime, clock_skew) = if requested.contains(&FaultKind::Skew) {
        match clock::find_libfaketime(args.libfaketime.as_deref()) {
            Some(lib) => {
                let note = format!(
                    "every node runs under LD_PRELOAD={} with its own FAKETIME_TIMESTAMP_FILE \
                     (re-read at most once a second) and FAKETIME_DONT_FAKE_MONOTONIC=1; a \
                     skew rewrites one node's file to ±{} s while it runs, and back to +0 at \
                     the heal",
                    lib.display(),
                    args.skew_ms / 1000
                );
                (
                    Some(lib.clone()),
                    ClockSkew {
                        mechanism: "libfaketime".to_owned(),
                        skew_ms: args.skew_ms,
                        library: Some(lib.display().to_string()),
                        note,
                    },
                )
            }
            None => {
                args.faults.retain(|f| *f != FaultKind::Skew);
                let where_ = match &args.libfaketime {
                    Some(p) => format!("{} does not exist", p.display()),
                    None => format!("none of {}", clock::LIBFAKETIME_PATHS.join(", ")),
                };
                let m = format!(
                    "clock skew NOT tested: libfaketime is missing ({where_}); install the Debian \
                     package `faketime` (apt-get install faketime) or pass --libfaketime PATH"
                );
                eprintln!("dpin-sim: warning: {m}");
                (
                    None,
                    ClockSkew {
                        mechanism: "none".to_owned(),
                        skew_ms: args.skew_ms,
                        library: None,
                        note: m,
                    },
                )
            }
        }
    } else {
        (
            None,
            ClockSkew {
                mechanism: "none".to_owned(),
                skew_ms: 0,
                library: None,
                note: "skew not requested".to_owned(),
            },
        )
    };
    if ns.is_none() && !model.is_ideal() {
        eprintln!(
            "dpin-sim: warning: the link model ({}) needs the namespace layout; links are NOT emulated",
            model.describe()
        );
    }
    let replay = replay_command(&args, seed, &requested);
    let setup = RunSetup {
        partition_method,
        replay: replay.clone(),
        horizon_ms: horizon,
        faketime,
        clock_skew,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dpin-sim: {e:#}");
            return 2;
        }
    };
    let result = rt.block_on(run_chaos(
        &args,
        seed,
        duration,
        ns.as_ref(),
        wan.as_ref(),
        setup,
    ));
    drop(rt);
    drop(ns); // deletes the namespaces (the nodes are gone by now), and the switch's devices
    match result {
        Ok(report) => {
            println!("{}", report.summary());
            if report.pass {
                0
            } else {
                eprintln!("dpin-sim: chaos run FAILED (seed {seed}); replay with:\n  {replay}");
                1
            }
        }
        Err(e) => {
            eprintln!("dpin-sim: {e:#}");
            eprintln!("dpin-sim: seed {seed}; replay with:\n  {replay}");
            2
        }
    }
}

fn sibling(path: &Path, ext: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(|| "chaos".into(), |s| s.to_string_lossy().into_owned());
    path.with_file_name(format!("{stem}.{ext}"))
}

/// What `chaos_main` decided before the async runtime started.
struct RunSetup {
    partition_method: String,
    replay: String,
    horizon_ms: u64,
    faketime: Option<PathBuf>,
    clock_skew: ClockSkew,
}

/// Whether `dpin node` accepts `flag` (older builds lack `--compaction-horizon-ms`).
fn node_supports(dpin: &Path, flag: &str) -> bool {
    std::process::Command::new(dpin)
        .args(["node", "--help"])
        .env_remove("LD_PRELOAD")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
}

async fn run_chaos(
    args: &ChaosArgs,
    seed: u64,
    duration: Duration,
    ns: Option<&Netns>,
    wan: Option<&Wan>,
    setup: RunSetup,
) -> Result<Report> {
    let dpin = match &args.dpin {
        Some(p) => p.clone(),
        None => cluster::default_dpin()?,
    };
    // Workload endpoints (127.x addresses) must never be contacted: no probing at all.
    let mut node_args = vec!["--no-probe".to_owned()];
    let compaction = if node_supports(&dpin, "--compaction-horizon-ms") {
        node_args.extend([
            "--compaction-horizon-ms".to_owned(),
            setup.horizon_ms.to_string(),
        ]);
        Some(setup.horizon_ms)
    } else {
        eprintln!(
            "dpin-sim: warning: {} has no --compaction-horizon-ms; records expire but are not compacted during the run",
            dpin.display()
        );
        None
    };
    // Mesh and discovery sized to the cluster (a node assumes 5 otherwise).
    if node_supports(&dpin, "--expected-nodes") {
        node_args.extend(["--expected-nodes".to_owned(), args.nodes.to_string()]);
    }
    let base_dir = args
        .base_dir
        .clone()
        .unwrap_or_else(|| new_base_dir("chaos"));
    std::fs::create_dir_all(&base_dir)
        .with_context(|| format!("cannot create {}", base_dir.display()))?;
    let layout = match ns {
        Some(n) => {
            std::fs::write(base_dir.join("netns.txt"), n.names().join("\n"))
                .context("cannot record namespace names")?;
            Layout::Netns {
                namespaces: (1..=args.nodes).map(|k| n.node_ns(k)).collect(),
                data: (1..=args.nodes).map(|k| n.data_addr(k)).collect(),
                mgmt: (1..=args.nodes).map(|k| n.mgmt_addr(k)).collect(),
            }
        }
        None => Layout::Loopback,
    };
    let dns_bind = match ns {
        Some(n) => IpAddr::V4(n.hub_addr()),
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    eprintln!(
        "dpin-sim: starting {} nodes ({}) in {} ({})",
        args.nodes,
        dpin.display(),
        base_dir.display(),
        if ns.is_some() {
            "network namespaces"
        } else {
            "loopback"
        }
    );
    let opts = ClusterOptions {
        dpin,
        base_dir: base_dir.clone(),
        nodes: args.nodes,
        dns: !args.no_dns,
        layout,
        node_args,
        faketime: setup.faketime.clone(),
    };
    // Listen for Ctrl-C/SIGTERM before the first node starts: from then on the default action
    // (dying at once) would leave the nodes behind.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signal_task = tokio::spawn(async move {
        terminated().await;
        eprintln!("\ndpin-sim: interrupted; healing and stopping the nodes ...");
        let _ = stop_tx.send(true);
    });
    let mut start_stop = stop_rx.clone();
    // Dropping a half-started cluster kills its nodes (kill_on_drop).
    let mut cluster = tokio::select! {
        c = Cluster::start(&opts) => c?,
        _ = start_stop.wait_for(|s| *s) => bail!("interrupted"),
    };
    let out = chaos_phases(
        args,
        seed,
        duration,
        wan,
        &mut cluster,
        stop_rx.clone(),
        dns_bind,
        setup,
        compaction,
        &base_dir,
    )
    .await;
    cluster.shutdown().await;
    signal_task.abort();
    if *stop_rx.borrow() {
        bail!("interrupted");
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn chaos_phases(
    args: &ChaosArgs,
    seed: u64,
    duration: Duration,
    wan: Option<&Wan>,
    cluster: &mut Cluster,
    stop: tokio::sync::watch::Receiver<bool>,
    dns_bind: IpAddr,
    setup: RunSetup,
    compaction: Option<u64>,
    base_dir: &Path,
) -> Result<Report> {
    let api = Api::new().context("cannot build the HTTP client")?;
    let n = cluster.nodes.len();
    let mut harness_errors = Vec::new();
    if !cluster
        .wait_connected(&api, n - 1, Duration::from_secs(30))
        .await
    {
        harness_errors.push("the mesh did not form within 30 s of start".to_owned());
    }
    let targets: Arc<Vec<Target>> = Arc::new(
        cluster
            .nodes
            .iter()
            .filter_map(|nd| {
                nd.info.as_ref().map(|i| Target {
                    node: nd.index,
                    api: i.api,
                    dns: i.dns,
                })
            })
            .collect(),
    );
    let wcfg = WorkloadConfig {
        seed,
        writers: 3,
        names_per_writer: 4,
        race_names: 2,
        write_rate: args.write_rate,
        read_rate: args.read_rate,
        dns_bind,
        record_ttl_ms: args.record_ttl_ms,
        // Ephemeral names stop early enough to expire and be compacted before the end.
        ephemeral_until: duration
            .saturating_sub(Duration::from_millis(
                args.record_ttl_ms + setup.horizon_ms + 5000,
            ))
            .max(duration / 4),
    };
    let plan = Arc::new(Plan::new(&wcfg));
    let rec = Arc::new(Recorder::new());
    let setup_ctx = Ctx {
        rec: rec.clone(),
        api: api.clone(),
        targets: targets.clone(),
        deadline: Instant::now() + Duration::from_secs(60),
        probe_tx: None,
        stop: stop.clone(),
    };
    let unacked = workload::setup(&setup_ctx, &plan).await;
    if !unacked.is_empty() {
        harness_errors.push(format!(
            "setup: first write not acknowledged for {unacked:?}"
        ));
    }
    if !workload::wait_replicated(&setup_ctx, &plan, Duration::from_secs(30)).await {
        harness_errors.push("setup: names not on every node within 30 s".to_owned());
    }

    // Workload + nemesis.
    let work_start_ms = rec.now_ms();
    let deadline = Instant::now() + duration;
    let (probe_tx, probe_rx) = tokio::sync::mpsc::channel(1);
    let ctx = Ctx {
        rec: rec.clone(),
        api: api.clone(),
        targets: targets.clone(),
        deadline,
        probe_tx: Some(probe_tx),
        stop: stop.clone(),
    };
    let dns = cluster.dns && targets.iter().all(|t| t.dns.is_some());
    eprintln!(
        "dpin-sim: {} names, {} writers + race, readers over HTTP{}; running {:.0} s with faults [{}]",
        plan.names.len(),
        wcfg.writers,
        if dns { " and DNS" } else { "" },
        duration.as_secs_f64(),
        args.faults.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(",")
    );
    let mut tasks = Vec::new();
    for w in 0..wcfg.writers {
        tasks.push(tokio::spawn(workload::writer(
            ctx.clone(),
            plan.clone(),
            w,
            wcfg.write_rate / wcfg.writers as f64,
            seed,
            wcfg.ephemeral_until,
        )));
    }
    let key_file = base_dir.join("race-zone.key");
    race::write_key_file(&key_file, &plan)
        .with_context(|| format!("cannot write {}", key_file.display()))?;
    tasks.push(tokio::spawn(race::race(
        ctx.clone(),
        plan.clone(),
        RaceConfig {
            dpin: cluster.dpin.clone(),
            key_file,
            plan_dir: base_dir.join("plans"),
            period: Duration::from_millis(1500),
            seed,
            paths: args.race_paths,
        },
    )));
    tasks.push(tokio::spawn(workload::reader(
        ctx.clone(),
        plan.clone(),
        0,
        Proto::Http,
        wcfg.read_rate,
        dns_bind,
    )));
    if dns {
        tasks.push(tokio::spawn(workload::reader(
            ctx.clone(),
            plan.clone(),
            1,
            Proto::Dns,
            wcfg.read_rate,
            dns_bind,
        )));
    }
    tasks.push(tokio::spawn(workload::prober(ctx.clone(), probe_rx)));
    let progress = tokio::spawn(progress(ctx.clone(), duration));
    drop(ctx);

    let mut nemesis = Nemesis::new(NemesisConfig {
        faults: args.faults.clone(),
        max_down: args.max_down,
        seed,
        fault_ms: (1000, 5000),
        gap_ms: (1000, 4000),
        skew_ms: i64::try_from(args.skew_ms).unwrap_or(i64::MAX / 2),
        // Long enough for records to expire and be compacted by the wrong clock.
        skew_fault_ms: (
            args.record_ttl_ms.max(5000),
            (args.record_ttl_ms + setup.horizon_ms).max(10_000),
        ),
    });
    // Faults end a little before the workload does, so the last seconds show the recovery.
    let quiet_tail = Duration::from_secs(2).min(duration / 4);
    nemesis
        .run(cluster, wan, &rec, deadline - quiet_tail, &stop)
        .await;
    nemesis.heal_all(cluster, wan, &rec).await;
    let mut stop_wait = stop.clone();
    tokio::select! {
        _ = tokio::time::sleep_until(deadline.into()) => {}
        _ = stop_wait.wait_for(|s| *s) => {}
    }
    let work_end_ms = rec.now_ms();
    // Every task loop ends at the deadline; the longest single step is a write failing over
    // across all nodes.
    let join_limit = workload::WRITE_TIMEOUT * (n as u32 + 2) + Duration::from_secs(5);
    for t in tasks {
        let abort = t.abort_handle();
        if tokio::time::timeout(join_limit, t).await.is_err() {
            abort.abort();
            harness_errors.push("a workload task did not stop in time".to_owned());
        }
    }
    let _ = progress.await;
    if *stop.borrow() {
        bail!("interrupted");
    }
    // Heal (already done), converge, final reads.
    nemesis.heal_all(cluster, wan, &rec).await;
    // Heal probes end within their window.
    tokio::time::sleep(Duration::from_millis(200)).await;
    harness_errors.extend(nemesis.errors.iter().cloned());
    eprintln!("dpin-sim: workload done; waiting for convergence (at most 30 s) ...");
    let convergence = workload::wait_converged(&api, &targets, Duration::from_secs(30))
        .await
        .map(|d| d.as_secs_f64());
    workload::final_reads(&rec, &api, &targets, &plan, Duration::from_secs(60)).await;

    let history = rec.history();
    let findings = checker::check(
        &history,
        &CheckConfig {
            stale_bound_ms: args.stale_bound_ms,
            ..CheckConfig::default()
        },
    );
    let history_path = sibling(&args.report, "history.jsonl");
    history
        .write_jsonl(&history_path)
        .with_context(|| format!("cannot write {}", history_path.display()))?;
    let report = Report::new(
        RunMeta {
            nodes: n,
            duration_s: (work_end_ms - work_start_ms) / 1000.0,
            seed,
            counts: nemesis.counts.clone(),
            convergence,
            partition_method: setup.partition_method,
            clock_skew: setup.clock_skew,
            record_ttl_ms: args.record_ttl_ms,
            compaction_horizon_ms: compaction,
            probing: "off: every node runs with --no-probe, so the workload's 127.x endpoints are never contacted".to_owned(),
            race_cli: format!(
                "{} (paths: {})",
                cluster.dpin.display(),
                args.race_paths.as_str()
            ),
            dns,
            dns_note: cluster
                .dns_note
                .clone()
                .or_else(|| args.no_dns.then(|| "--no-dns given".to_owned())),
            stale_bound_ms: args.stale_bound_ms,
            faults: args.faults.iter().map(|f| f.as_str().to_owned()).collect(),
            max_down: args.max_down,
            replay: setup.replay,
            history: history_path.display().to_string(),
            base_dir: base_dir.display().to_string(),
            dpin: cluster.dpin.display().to_string(),
            harness_errors,
            link_model: wan.map(Wan::model),
            wan: wan.map(Wan::counts),
            partition_groups: dpin_sim::report::partition_groups(&history),
        },
        &findings,
    );
    let json = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
    std::fs::write(&args.report, json + "\n")
        .with_context(|| format!("cannot write {}", args.report.display()))?;
    let title = format!(
        "dpin chaos: {} nodes, seed {}, {} — {}\nlinks: {}; max down {}; {} group partitions",
        n,
        seed,
        args.faults
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(","),
        if report.pass { "PASS" } else { "FAIL" },
        wan.map_or("loopback".to_owned(), |w| w.model().describe()),
        args.max_down,
        report.partition_groups.len()
    );
    let picture = svg::render(&history, &findings, n, work_end_ms / 1000.0, &title);
    std::fs::write(&args.svg, picture)
        .with_context(|| format!("cannot write {}", args.svg.display()))?;
    eprintln!(
        "dpin-sim: report {}, timeline {}",
        args.report.display(),
        args.svg.display()
    );
    Ok(report)
}

/// Prints one progress line per second on stderr until the workload ends.
async fn progress(ctx: Ctx, duration: Duration) {
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while ctx.running() {
        tick.tick().await;
        let c = &ctx.rec.counters;
        let active = ctx.rec.active.lock().map(|a| a.clone()).unwrap_or_default();
        let now_ms = ctx.rec.now_ms();
        let faults = if active.is_empty() {
            "none".to_owned()
        } else {
            let left = |f: &workload::ActiveFault| ((f.until_ms - now_ms) / 1000.0).max(0.0);
            // A group partition is one fault: its side A, then the count of side B.
            let side_a: Vec<String> = active
                .iter()
                .filter(|f| f.group == Some(0))
                .map(|f| format!("n{}", f.node))
                .collect();
            let side_b = active.iter().filter(|f| f.group == Some(1)).count();
            let mut parts: Vec<String> = active
                .iter()
                .filter(|f| f.group.is_none())
                .map(|f| format!("{} n{} ({:.1}s left)", f.kind.as_str(), f.node, left(f)))
                .collect();
            if let Some(f) = active.iter().find(|f| f.group.is_some()) {
                parts.push(format!(
                    "{} A [{}] | B {side_b} nodes ({:.1}s left)",
                    f.kind.as_str(),
                    side_a.join(" "),
                    left(f)
                ));
            }
            parts.join(", ")
        };
        let line = format!(
            "[{:>5.1}/{:.0}s] ops {} | reads ok {} no-answer {} | failed {} empty {} | acked writes {} stale refused {} | fault: {}",
            start.elapsed().as_secs_f64(),
            duration.as_secs_f64(),
            c.ops.load(Ordering::Relaxed),
            c.reads_ok.load(Ordering::Relaxed),
            c.unanswered.load(Ordering::Relaxed),
            c.failed_rounds.load(Ordering::Relaxed),
            c.empty.load(Ordering::Relaxed),
            c.acked.load(Ordering::Relaxed),
            c.refused_stale.load(Ordering::Relaxed),
            faults
        );
        if tty {
            eprint!("\r\x1b[K{line}");
        } else {
            eprintln!("{line}");
        }
    }
    if tty {
        eprintln!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpin_sim::history::OpOutcome;

    #[test]
    fn durations_parse_with_units() -> Result<()> {
        assert_eq!(parse_duration("30")?, Duration::from_secs(30));
        assert_eq!(parse_duration("90s")?, Duration::from_secs(90));
        assert_eq!(parse_duration("5m")?, Duration::from_secs(300));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("5x").is_err());
        Ok(())
    }

    #[test]
    fn report_file_siblings() {
        assert_eq!(
            sibling(Path::new("/tmp/r/chaos-report.json"), "history.jsonl"),
            PathBuf::from("/tmp/r/chaos-report.history.jsonl")
        );
    }

    #[test]
    fn outcome_helpers() {
        assert!(OpOutcome::Applied.is_ack());
        assert!(!OpOutcome::Stale.is_ack());
    }
}
