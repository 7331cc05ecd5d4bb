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
//!
//! This file holds only the command line (`Cli`, `Cmd`) and the dispatch; each subcommand's
//! front-end lives in `cli` (the simulator's own front-end, `simulate`, is
//! `dpin_sim::simulate::run`, in the library, where its tests reach it):
//! * `cli::cluster` — `cluster`: start, print how to talk to the nodes, wait for Ctrl-C;
//! * `cli::chaos` — `chaos`: its options and replay command (`cli::chaos::args`), the
//!   checks and network layout decided before the runtime starts, and the run itself
//!   (`cli::chaos::run`: cluster, nemesis, workload, race, checker, report);
//! * `cli::check` — `check`: the checker on a saved history;
//! * `cli::attack` — `attack`: its options, handed to `dpin_sim::attack`;
//! * `cli` itself — what several subcommands share (the async runtime, durations, Ctrl-C).

mod cli;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use dpin_sim::checker;
use dpin_sim::cluster;

use cli::attack::{attack_main, AttackArgs};
use cli::chaos::args::ChaosArgs;
use cli::chaos::chaos_main;
use cli::check::check_main;
use cli::cluster::cluster_main;
use cli::run_async;

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
