//! # `dpin-sim simulate` — the deterministic simulator
//!
//! N dpin nodes in one process, one thread, virtual time. Every node holds a
//! `dpin_protocol::MemStore` and runs the same protocol code as the real node: records are
//! real signed `SignedRecord`s, merged by `Store::apply` / `apply_batch`, synced by the
//! protocol's anti-entropy, every sync message encoded with the real codec and charged its
//! encoded size. What cannot run in virtual time (libp2p gossipsub, TCP, fsync, the wall clock)
//! is modelled, with the node's own parameters.
//!
//! Map (read in this order):
//! * [`sched`] — the scheduler: events in `(time, seq)` order (a calendar queue of
//!   milliseconds, a heap for the far future); no wall clock, no threads.
//! * [`rng`] — all randomness from the seed, one ChaCha8 stream per purpose.
//! * [`fasthash`] — a cheap hasher for the lookup tables (ids and random bytes as keys).
//! * [`net`] — the network model: latency + jitter, loss, partitions, bytes per message.
//! * [`world`] — the nodes and the event handlers: the gossip model (mesh D/D_lo/D_hi from
//!   the node's `MeshParams`, flood publish, forward on accept, IHAVE/IWANT on heartbeats), the
//!   durability model (what survives a crash), anti-entropy sessions, faults.
//! * [`antientropy`] — the ONE seam to the protocol's sync session (`dpin_protocol::sync`,
//!   the state machine the node drives).
//! * [`verify`] — applying records, with signatures checked on every apply (`--verify full`,
//!   the node's path) or once per distinct record per run (`--verify cached`).
//! * [`invariants`] — the checks run after every event on what it touched, and at quiescence.
//! * [`scenarios`] — convergence, partition-heal, race, churn.
//! * [`report`] — the figures, as text or one JSON object.
//! * [`calibrate`] — the gossip model against real in-process gossipsub swarms (hops and
//!   duplicates per delivery at N = 3, 5, 20, 40, with a stated tolerance).
//!
//! Determinism: a run is a pure function of (seed, options, commit). Its event log (every
//! delivered message and every apply outcome) is hashed into a running blake3 digest printed
//! with the report; `tests/simulate.rs` runs a seed twice and compares. Hash maps are used only
//! for membership and lookup, never iterated where order matters.
//!
//! On a broken invariant the run stops at the event that broke it and prints the seed and the
//! exact command that replays it; the process exits non-zero.
//!
//! Commands (release build, `cargo build --release -p dpin-sim`):
//! * 10k-node convergence: `target/release/dpin-sim simulate --scenario convergence
//!   --nodes 10000 --seed 1 --updates 3 --json`
//! * partition-heal, 10,000 differing records between two nodes, 20 ms links:
//!   `target/release/dpin-sim simulate --scenario partition-heal --nodes 2 --records 10000`
//! * the CI sweep (200 seeds × 50 nodes): `target/release/dpin-sim simulate --scenario race
//!   --nodes 50 --seeds 0..200 --loss 2 --clock-skew 500 --verify cached`
//! * the 1M-seed race sweep: the same with `--seeds 0..1000000` (each seed is independent:
//!   split the range over machines with `--seeds A..B`; a failure prints its replay command).
//!
//! The cached path uses the core's `Store::apply_verified`, so no merge logic lives here.

pub mod antientropy;
pub mod calibrate;
pub mod fasthash;
pub mod invariants;
pub mod net;
pub mod report;
pub mod rng;
pub mod scenarios;
pub mod sched;
pub mod verify;
pub mod world;

use std::io::Write;
use std::time::Instant;

pub use report::Report;
pub use verify::VerifyMode;
pub use world::{Mesh, World, WorldConfig};

/// A node's index in a run.
pub type NodeId = u32;
/// A record's index in a run's record table.
pub type RecId = u32;

/// Default most events per run (bounds a runaway run).
pub const DEFAULT_MAX_EVENTS: u64 = 500_000_000;

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// An invariant broke.
    #[error("invariant broken: {0}")]
    Invariant(invariants::Violation),
    /// The options make no sense.
    #[error("bad options: {0}")]
    Config(String),
    /// Too many events: a storm, or a run far bigger than intended.
    #[error("runaway run: {0}")]
    Runaway(String),
}

/// The scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Writes spread to every node.
    Convergence,
    /// Two halves diverge, then heal.
    PartitionHeal,
    /// The seed's race under faults.
    Race,
    /// Crash, restart, join and leave while writing.
    Churn,
}

impl Scenario {
    /// The CLI name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Convergence => "convergence",
            Scenario::PartitionHeal => "partition-heal",
            Scenario::Race => "race",
            Scenario::Churn => "churn",
        }
    }
}

/// `dpin-sim simulate` options.
#[derive(clap::Args, Clone, Debug)]
pub struct SimulateArgs {
    /// Nodes.
    #[arg(long, default_value_t = 50)]
    pub nodes: usize,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Scenario.
    #[arg(long, value_enum, default_value_t = Scenario::Convergence)]
    pub scenario: Scenario,
    /// Link latency `MS[,JITTER]`: fixed part plus uniform jitter, ms.
    #[arg(long, default_value = "20,5")]
    pub latency: String,
    /// Message loss, percent.
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Node clocks are offset uniformly within ± this many ms.
    #[arg(long, default_value_t = 0)]
    pub clock_skew: u64,
    /// Connections each node dials up to (default: the node's target degree, 12, or N−1).
    #[arg(long)]
    pub degree: Option<usize>,
    /// Gossip mesh D (default: the node's `MeshParams::for_cluster(N)`).
    #[arg(long)]
    pub mesh_n: Option<usize>,
    /// Gossip mesh D_lo.
    #[arg(long)]
    pub mesh_n_low: Option<usize>,
    /// Gossip mesh D_hi.
    #[arg(long)]
    pub mesh_n_high: Option<usize>,
    /// Peers each node syncs with per 5 s interval.
    #[arg(long, default_value_t = 1)]
    pub sync_peers: usize,
    /// Updates written (convergence).
    #[arg(long, default_value_t = 1)]
    pub updates: usize,
    /// Differing records (partition-heal).
    #[arg(long, default_value_t = 10_000)]
    pub records: usize,
    /// Idle window measured after convergence, seconds (simulated).
    #[arg(long, default_value_t = 10)]
    pub idle_s: u64,
    /// Signature checks: on every apply (the node's path) or once per record per run.
    #[arg(long, value_enum, default_value_t = VerifyMode::Full)]
    pub verify: VerifyMode,
    /// Run every seed in `A..B` (B excluded) instead of `--seed`.
    #[arg(long)]
    pub seeds: Option<String>,
    /// Run COUNT seeds starting at `--seed`.
    #[arg(long)]
    pub sweep: Option<u64>,
    /// Threads for sweeps (default: available cores). Each seed runs on one thread.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Calibrate the gossip model against real in-process gossipsub swarms at these sizes
    /// (comma-separated, e.g. `3,5,20,40`), `--updates` messages each, instead of a run.
    #[arg(long, value_delimiter = ',')]
    pub calibrate: Option<Vec<usize>>,
}

impl SimulateArgs {
    /// The CLI defaults for `scenario` with `nodes` nodes and `seed` (for tests and benches).
    pub fn new(scenario: Scenario, nodes: usize, seed: u64) -> Self {
        Self {
            nodes,
            seed,
            scenario,
            latency: "20,5".into(),
            loss: 0.0,
            clock_skew: 0,
            degree: None,
            mesh_n: None,
            mesh_n_low: None,
            mesh_n_high: None,
            sync_peers: 1,
            updates: 1,
            records: 10_000,
            idle_s: 10,
            verify: VerifyMode::Full,
            seeds: None,
            sweep: None,
            jobs: None,
            json: false,
            calibrate: None,
        }
    }

    /// The exact command that replays `seed` with these options.
    pub fn replay(&self, seed: u64) -> String {
        let mut s = format!(
            "dpin-sim simulate --nodes {} --seed {} --scenario {} --latency {} --loss {} --clock-skew {} --sync-peers {} --verify {}",
            self.nodes,
            seed,
            self.scenario.as_str(),
            self.latency,
            self.loss,
            self.clock_skew,
            self.sync_peers,
            match self.verify {
                VerifyMode::Full => "full",
                VerifyMode::Cached => "cached",
            }
        );
        for (flag, v) in [
            ("--degree", self.degree),
            ("--mesh-n", self.mesh_n),
            ("--mesh-n-low", self.mesh_n_low),
            ("--mesh-n-high", self.mesh_n_high),
        ] {
            if let Some(v) = v {
                s += &format!(" {flag} {v}");
            }
        }
        match self.scenario {
            Scenario::Convergence => {
                s += &format!(" --updates {} --idle-s {}", self.updates, self.idle_s)
            }
            Scenario::PartitionHeal => s += &format!(" --records {}", self.records),
            _ => {}
        }
        s
    }

    fn latency(&self) -> Result<(u64, u64), SimError> {
        let bad = || {
            SimError::Config(format!(
                "--latency {:?}: want MS or MS,JITTER",
                self.latency
            ))
        };
        let mut it = self.latency.split(',');
        let ms = it
            .next()
            .ok_or_else(bad)?
            .trim()
            .parse()
            .map_err(|_| bad())?;
        let jitter = match it.next() {
            Some(j) => j.trim().parse().map_err(|_| bad())?,
            None => 0,
        };
        if it.next().is_some() {
            return Err(bad());
        }
        Ok((ms, jitter))
    }

    /// The world configuration of one seed.
    pub fn world_config(&self, seed: u64) -> Result<WorldConfig, SimError> {
        if self.nodes == 0 || self.nodes > 1_000_000 {
            return Err(SimError::Config("--nodes must be in 1..=1000000".into()));
        }
        if !(0.0..=100.0).contains(&self.loss) {
            return Err(SimError::Config("--loss is a percentage, 0..=100".into()));
        }
        let (latency_ms, jitter_ms) = self.latency()?;
        let degree = self.degree.unwrap_or(world::DIAL_TARGET).max(1);
        // The node sizes its mesh to the connections it keeps (node/src/net.rs).
        let node = dpin_node::net::MeshParams::for_cluster(self.nodes.min(degree + 1));
        let n = self.mesh_n.unwrap_or(node.n);
        let n_low = self.mesh_n_low.unwrap_or(if self.mesh_n.is_some() {
            (n * 2 / 3).max(1)
        } else {
            node.n_low
        });
        let n_high = self.mesh_n_high.unwrap_or(if self.mesh_n.is_some() {
            n * 2
        } else {
            node.n_high
        });
        if !(n_low <= n && n <= n_high && n >= 1) {
            return Err(SimError::Config("need 1 ≤ D_lo ≤ D ≤ D_hi".into()));
        }
        let capacity = match self.scenario {
            Scenario::Churn => self.nodes + self.nodes.div_ceil(5),
            _ => self.nodes,
        };
        Ok(WorldConfig {
            seed,
            nodes: self.nodes,
            capacity,
            degree,
            mesh: Mesh {
                n,
                n_low,
                n_high,
                lazy: n,
                // The node's rule (`MeshParams::for_cluster`), for flags too.
                outbound_min: 2.min(n / 2).min(n_low),
            },
            sync_peers: self.sync_peers,
            latency_ms,
            jitter_ms,
            loss: self.loss / 100.0,
            clock_skew_ms: self.clock_skew,
            retention_ms: None,
            compact_every_ms: None,
            verify: self.verify,
            max_events: DEFAULT_MAX_EVENTS,
            // The failure detector's traffic is part of the idle cost the convergence
            // scenario measures; the fault scenarios model connections as closing at once.
            detector: self.scenario == Scenario::Convergence,
        })
    }

    pub(crate) fn params(&self) -> scenarios::Params {
        scenarios::Params {
            updates: self.updates.max(1),
            update_gap_ms: 100,
            records: self.records,
            idle_ms: self.idle_s * 1000,
        }
    }

    fn seed_range(&self) -> Result<Option<(u64, u64)>, SimError> {
        if let Some(r) = &self.seeds {
            let bad = || SimError::Config(format!("--seeds {r:?}: want A..B"));
            let (a, b) = r.split_once("..").ok_or_else(bad)?;
            let a: u64 = a.trim().parse().map_err(|_| bad())?;
            let b: u64 = b.trim().parse().map_err(|_| bad())?;
            if b <= a {
                return Err(bad());
            }
            return Ok(Some((a, b)));
        }
        Ok(self.sweep.map(|c| (self.seed, self.seed.saturating_add(c))))
    }
}

/// One run of one seed. `Err` carries the error and the replay command.
pub fn run_one(args: &SimulateArgs, seed: u64) -> Result<Report, (SimError, String)> {
    let started = Instant::now();
    let replay = args.replay(seed);
    let cfg = args.world_config(seed).map_err(|e| (e, replay.clone()))?;
    let mut r =
        scenarios::run(args.scenario, cfg, &args.params()).map_err(|e| (e, replay.clone()))?;
    r.scenario = args.scenario.as_str().to_owned();
    r.wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    r.replay = replay;
    Ok(r)
}

/// Summary of a sweep.
#[derive(Debug, serde::Serialize)]
pub struct SweepReport {
    /// Scenario.
    pub scenario: String,
    /// Nodes per run.
    pub nodes: usize,
    /// First seed.
    pub first_seed: u64,
    /// Seeds run.
    pub seeds: u64,
    /// Seeds that broke an invariant (or errored).
    pub failures: u64,
    /// The first failure: seed, error and replay command.
    pub first_failure: Option<(u64, String, String)>,
    /// Every failure in seed order, up to [`MAX_LISTED_FAILURES`]: seed, error and replay
    /// command (each is also printed on stderr as soon as its seed fails).
    pub failed: Vec<SweepFailure>,
    /// Wall time, s.
    pub wall_s: f64,
    /// Seeds per second.
    pub seeds_per_s: f64,
    /// blake3 over every seed's event-log digest, in seed order (a failed seed counts as
    /// 32 zero bytes): two sweeps of the same seeds ran the same runs iff this is equal, so
    /// an optimisation that must not change behaviour is checked with one number.
    pub sweep_digest: String,
    /// Threads used.
    pub jobs: usize,
}

/// Most failures a sweep report lists one by one (the count covers them all).
pub const MAX_LISTED_FAILURES: usize = 1000;

/// One failed seed of a sweep.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SweepFailure {
    /// The seed.
    pub seed: u64,
    /// What broke.
    pub error: String,
    /// The exact command that replays it.
    pub replay: String,
}

/// Runs seeds `[a, b)` on `jobs` threads; each seed is still one single-threaded run.
pub fn sweep(args: &SimulateArgs, a: u64, b: u64, jobs: usize) -> SweepReport {
    let started = Instant::now();
    let next = std::sync::atomic::AtomicU64::new(a);
    let failures = std::sync::Mutex::new(Vec::<(u64, String, String)>::new());
    let digests = std::sync::Mutex::new(Vec::<(u64, [u8; 32])>::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if seed >= b {
                    break;
                }
                match run_one(args, seed) {
                    Ok(r) => {
                        let mut d = [0u8; 32];
                        // The report's digest is 64 hex digits; a malformed one stays zero.
                        let _ = hex::decode_to_slice(&r.event_log_digest, &mut d);
                        digests
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push((seed, d));
                    }
                    Err((e, replay)) => {
                        // At once, so a long sweep that is stopped still names its failures.
                        eprintln!("dpin-sim simulate: seed {seed}: {e}\n  replay: {replay}");
                        let mut f = failures
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        f.push((seed, e.to_string(), replay));
                    }
                }
            });
        }
    });
    let mut f = failures
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f.sort();
    let wall_s = started.elapsed().as_secs_f64();
    let mut d = digests
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    d.sort_unstable();
    let mut h = blake3::Hasher::new();
    let mut di = d.iter().peekable();
    for seed in a..b {
        match di.next_if(|(s, _)| *s == seed) {
            Some((_, x)) => h.update(x),
            None => h.update(&[0u8; 32]),
        };
    }
    let failed = f
        .iter()
        .take(MAX_LISTED_FAILURES)
        .map(|(seed, error, replay)| SweepFailure {
            seed: *seed,
            error: error.clone(),
            replay: replay.clone(),
        })
        .collect();
    SweepReport {
        scenario: args.scenario.as_str().to_owned(),
        nodes: args.nodes,
        first_seed: a,
        seeds: b - a,
        failures: f.len() as u64,
        first_failure: f.into_iter().next(),
        failed,
        wall_s,
        seeds_per_s: (b - a) as f64 / wall_s.max(1e-9),
        sweep_digest: h.finalize().to_hex().to_string(),
        jobs: jobs.max(1),
    }
}

/// The `dpin-sim simulate` command: runs, prints, and returns the exit code (0 all invariants
/// held, 1 an invariant broke, 2 bad options or a runaway run).
pub fn run(args: &SimulateArgs) -> i32 {
    let mut out = std::io::stdout().lock();
    if let Some(sizes) = &args.calibrate {
        return match calibrate::calibrate(sizes, args.updates, args.seed) {
            Ok(rows) => {
                let printed = if args.json {
                    serde_json::to_string(&rows).map(|s| writeln!(out, "{s}"))
                } else {
                    Ok(rows.iter().try_for_each(|r| writeln!(out, "{}", r.text())))
                };
                if !matches!(printed, Ok(Ok(()))) {
                    2
                } else if rows.iter().all(|r| r.within) {
                    0
                } else {
                    1
                }
            }
            Err(e) => {
                eprintln!("dpin-sim simulate --calibrate: {e:#}");
                2
            }
        };
    }
    let range = match args.seed_range() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dpin-sim simulate: {e}");
            return 2;
        }
    };
    if let Some((a, b)) = range {
        let jobs = args.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let rep = sweep(args, a, b, jobs);
        let printed = if args.json {
            serde_json::to_string(&rep).map(|s| writeln!(out, "{s}"))
        } else {
            Ok(writeln!(
                out,
                "{} seeds {}..{} of {} at {} nodes: {} failed, {:.1} s, {:.1} seeds/s ({} threads), sweep digest {}",
                rep.seeds,
                a,
                b,
                rep.scenario,
                rep.nodes,
                rep.failures,
                rep.wall_s,
                rep.seeds_per_s,
                rep.jobs,
                rep.sweep_digest
            ))
        };
        if !matches!(printed, Ok(Ok(()))) {
            return 2;
        }
        // Each failure was printed (seed, error, replay) when it happened; the list again, in
        // seed order, at the end.
        if rep.failures > 0 {
            let seeds: Vec<String> = rep.failed.iter().map(|f| f.seed.to_string()).collect();
            let more = rep.failures as usize - rep.failed.len();
            eprintln!(
                "dpin-sim simulate: {} failed seeds: {}{}",
                rep.failures,
                seeds.join(" "),
                if more > 0 {
                    format!(" (and {more} more)")
                } else {
                    String::new()
                }
            );
            return 1;
        }
        return 0;
    }
    match run_one(args, args.seed) {
        Ok(r) => {
            let printed = if args.json {
                serde_json::to_string(&r).map(|s| writeln!(out, "{s}"))
            } else {
                Ok(write!(out, "{}", r.text()))
            };
            if matches!(printed, Ok(Ok(()))) {
                0
            } else {
                2
            }
        }
        Err((e, replay)) => {
            if args.json {
                let v = serde_json::json!({
                    "scenario": args.scenario.as_str(), "nodes": args.nodes, "seed": args.seed,
                    "invariants": e.to_string(), "replay": replay,
                });
                let _ = writeln!(out, "{v}");
            }
            eprintln!(
                "dpin-sim simulate: seed {}: {e}\n  replay: {replay}",
                args.seed
            );
            match e {
                SimError::Invariant(_) => 1,
                _ => 2,
            }
        }
    }
}
