//! The `dpin` command line: the node binary and its client.
//!
//! Lives in the library so the end-to-end test crate can build the very same CLI as its own
//! binary (`dpin-e2e`) without invoking cargo from inside a test. Subcommands: `keygen`, `node`, `publish`, `sign`, `resolve`, `status`, `offers`, `put`, `get`, `blob` (SPEC §4); the safe write paths live in [`crate::publish`]. Human output by
//! default, one JSON object with `--json`; errors are one line on stderr and a non-zero exit.
//!
//! * this file: the command line (`Cli`, `Cmd`), `main`, and the dispatch to each subcommand
//!   (plus `keygen`, which is a few lines);
//! * [`serve`]: `dpin node`'s settings and start-up;
//! * [`client`]: the subcommands that talk to a node's API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::client::{Answer, Client};
use crate::contract::{
    BlobInfoAnswer, BlobPutAnswer, OffersAnswer, PublishAnswer, ResolveAnswer, StatusAnswer,
};
use crate::health::{run as health_run, Health, HealthConfig, UdpProbe};
use crate::net::{self, NetConfig};
use crate::node::{self as dnode, now_ms, Node};
use crate::store::DurableStore;
use crate::{api, identity};
use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use dpin_protocol::{Content, Endpoint, ZoneKey};
use libp2p::Multiaddr;
use serde_json::{json, Value};

/// Prints a line to stdout, ignoring a closed pipe (`dpin status | head -1` must not panic).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod client;
mod serve;

use client::*;
pub use serve::shutdown_signal;
use serve::*;

#[derive(Parser)]
#[command(
    name = "dpin",
    version,
    about = "Peer-to-peer names that no single failure can erase"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a zone key file (mode 0600) and print the zone id.
    Keygen {
        /// Where to write the key.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Run a node. Every flag can also come from a TOML file (--config) or an environment
    /// variable DPIN_<FLAG> (e.g. DPIN_DATA_DIR); the command line wins, then the environment,
    /// then the file.
    Node(Box<NodeArgs>),
    /// Sign a record locally and publish it through a node, never over a newer write.
    ///
    /// Without --seq the seq is one more than the highest any listed peer holds, sent with
    /// compare-and-set against it: if another writer got there first, the write is refused
    /// (`raced`) instead of overwriting it. With --record, enacts a plan from `dpin sign`.
    Publish {
        /// Zone key file (not with --record).
        #[arg(long, required_unless_present = "record", conflicts_with = "record")]
        key: Option<PathBuf>,
        /// Enact a plan written by `dpin sign --out`: refused as stale if anything newer is held.
        #[arg(long, conflicts_with_all = ["label", "endpoints", "ttl", "if_seq", "seq", "tombstone"])]
        record: Option<PathBuf>,
        /// Node API addresses, tried in order.
        #[arg(long, value_delimiter = ',', required = true)]
        api: Vec<String>,
        /// Label inside the zone.
        #[arg(required_unless_present = "record")]
        label: Option<String>,
        /// Endpoints: HOST:PORT, HOST:PORT/udp, [v6]:PORT, optional @WEIGHT.
        endpoints: Vec<String>,
        /// Lifetime of the record (e.g. 30s, 10m, 2h, 7d; at most 30d). Default 24h, and 30d
        /// for a tombstone, so a deletion outlives whatever it deletes.
        #[arg(long)]
        ttl: Option<String>,
        /// Compare-and-set: only apply if the held seq is N (0 = new name).
        #[arg(long)]
        if_seq: Option<u64>,
        /// Compare-and-set on the record: only apply while the winner is the record with this
        /// content hash (hex, as `dpin resolve` prints it). The safe way to delete: a clean-up
        /// names the plan it means to delete, never another record at the same seq.
        #[arg(long, value_name = "HASH")]
        if_hash: Option<String>,
        /// Use this seq (fixed in advance, like a plan) instead of one more than the highest
        /// any peer holds; refused as stale if anything newer is held.
        #[arg(long)]
        seq: Option<u64>,
        /// Delete the name (signed tombstone); needs --if-hash HASH (the record being deleted),
        /// --if-seq N (the seq being deleted) or --seq.
        #[arg(long)]
        tombstone: bool,
        /// Per-peer timeout in milliseconds. Longer than a read's: the node answers a write
        /// only after its fsync, which takes hundreds of milliseconds on a busy disk (500 ms
        /// timed out in the e2e suite on a loaded machine, "no peer answered").
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Sign a record now and write it as a plan to enact later with `dpin publish --record`.
    ///
    /// The seq is fixed now (one more than the highest any listed peer holds, or --seq), so
    /// a plan enacted late is refused wherever anything newer is held. A planner that makes
    /// several plans before any is enacted numbers them itself with --seq.
    Sign {
        /// Zone key file.
        #[arg(long)]
        key: PathBuf,
        /// Node API addresses asked for the current seq (not needed with --seq).
        #[arg(long, value_delimiter = ',', required_unless_present = "seq")]
        api: Vec<String>,
        /// Label inside the zone.
        label: String,
        /// Endpoints: HOST:PORT, HOST:PORT/udp, [v6]:PORT, optional @WEIGHT.
        endpoints: Vec<String>,
        /// Lifetime from now (default 24h, 30d for a tombstone; at most 30d). A plan must be
        /// enacted before it expires.
        #[arg(long)]
        ttl: Option<String>,
        /// Use this seq instead of asking the peers.
        #[arg(long)]
        seq: Option<u64>,
        /// Plan a deletion.
        #[arg(long)]
        tombstone: bool,
        /// Where to write the plan.
        #[arg(long)]
        out: PathBuf,
        /// Per-peer timeout in milliseconds.
        #[arg(long, default_value_t = 500)]
        timeout_ms: u64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Resolve a name through the first peer that answers and does not say it is cut off
    /// from the network (then through the first that answers: never fail closed).
    Resolve {
        /// Node API addresses, tried in order.
        #[arg(long, value_delimiter = ',', required = true)]
        api: Vec<String>,
        /// LABEL.ZONE (optionally with .dpin).
        name: String,
        /// Per-peer timeout in milliseconds (a wait comes on top).
        #[arg(long, default_value_t = 500)]
        timeout_ms: u64,
        /// Wait until the peer holds the name at this seq or later (a write has reached
        /// it), then answer; after --wait-ms, answer what it holds.
        #[arg(long)]
        wait_seq: Option<u64>,
        /// How long --wait-seq waits at most, in milliseconds (at most 25000).
        #[arg(long, default_value_t = crate::watch::DEFAULT_WAIT_MS, requires = "wait_seq",
              value_parser = clap::value_parser!(u64).range(0..=crate::watch::MAX_WAIT_MS))]
        wait_ms: u64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Store a file in the network with K replicas; prints its hash.
    Put {
        /// Node API addresses, tried in order.
        #[arg(long, value_delimiter = ',', required = true)]
        api: Vec<String>,
        /// The file.
        file: PathBuf,
        /// Copies to keep.
        #[arg(long, default_value_t = 3)]
        replicas: u8,
        /// Whole-transfer timeout in seconds.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Fetch a stored file by hash from any peer, verifying every chunk.
    Get {
        /// Node API addresses, tried in order.
        #[arg(long, value_delimiter = ',', required = true)]
        api: Vec<String>,
        /// The blob's hash (hex).
        hash: String,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
        /// Whole-transfer timeout in seconds.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
    },
    /// Show a stored blob's manifest and which nodes hold it.
    Blob {
        /// Node API addresses, tried in order.
        #[arg(long, value_delimiter = ',', required = true)]
        api: Vec<String>,
        /// The blob's hash (hex).
        hash: String,
        /// Per-peer timeout in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List live storage and compute offers, cheapest first.
    Offers {
        /// Node API addresses, tried in order.
        #[arg(long, value_delimiter = ',', required = true)]
        api: Vec<String>,
        /// Only `storage` or `compute`.
        #[arg(long)]
        kind: Option<String>,
        /// Only this region.
        #[arg(long)]
        region: Option<String>,
        /// Minimum free storage (K/M/G/T suffixes accepted).
        #[arg(long, value_parser = crate::offers::parse_bytes)]
        min_free: Option<u64>,
        /// Minimum cores.
        #[arg(long)]
        min_cores: Option<u32>,
        /// Minimum memory (K/M/G/T suffixes accepted).
        #[arg(long, value_parser = crate::offers::parse_bytes)]
        min_memory: Option<u64>,
        /// Minimum GPUs.
        #[arg(long)]
        min_gpus: Option<u32>,
        /// Maximum price (decimal).
        #[arg(long, value_parser = crate::offers::parse_price)]
        max_price: Option<u64>,
        /// Per-peer timeout in milliseconds.
        #[arg(long, default_value_t = 500)]
        timeout_ms: u64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show a node's peers, record count and digest.
    Status {
        /// Node API addresses, tried in order.
        #[arg(long, value_delimiter = ',', required = true)]
        api: Vec<String>,
        /// Per-peer timeout in milliseconds.
        #[arg(long, default_value_t = 500)]
        timeout_ms: u64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// Parses the command line, runs the command, prints a one-line error and exits non-zero on
/// failure.
pub fn main() {
    crate::alloc::tune();
    let command = Cli::command().mut_subcommand("node", crate::config::with_env);
    let argv = match crate::config::expand(std::env::args_os().collect(), &command) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dpin: {e}");
            std::process::exit(2);
        }
    };
    let cli = match Cli::from_arg_matches(&command.get_matches_from(argv)) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let json_errors = matches!(
        &cli.cmd,
        Cmd::Publish { json: true, .. }
            | Cmd::Sign { json: true, .. }
            | Cmd::Resolve { json: true, .. }
            | Cmd::Status { json: true, .. }
            | Cmd::Offers { json: true, .. }
            | Cmd::Put { json: true, .. }
            | Cmd::Blob { json: true, .. }
    );
    // `dpin node`: the runtime's threads run below the DNS answer threads (crate::priority),
    // which are started from a thread at the process's priority, started here first.
    let background = match &cli.cmd {
        Cmd::Node(args) => {
            if let Err(e) = crate::priority::start_base_spawner() {
                eprintln!("dpin: cannot start a thread: {e}");
                std::process::exit(1);
            }
            let target = crate::priority::background_target(args.background_nice());
            // This thread too: what it starts (the blob syncer, libp2p's timer thread) is
            // background work. Only the spawner's threads stay at the process's priority.
            crate::priority::lower_background_thread(target);
            target
        }
        _ => None,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || crate::priority::lower_background_thread(background))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dpin: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        let msg = format!("{e:#}").replace('\n', " ");
        if json_errors {
            out!("{}", json!({"error": msg}));
        }
        eprintln!("dpin: {msg}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Keygen { out, force } => keygen(&out, force),
        Cmd::Node(args) => run_node(*args).await,
        Cmd::Publish {
            key,
            record,
            api,
            label,
            endpoints,
            ttl,
            if_seq,
            if_hash,
            seq,
            tombstone,
            timeout_ms,
            json,
        } => {
            let client = Client::new(api, Duration::from_millis(timeout_ms))?;
            match (record, key, label) {
                (Some(plan), _, _) => publish_plan(&client, &plan, if_hash.as_deref(), json).await,
                (None, Some(key), Some(label)) => {
                    let write = Write {
                        key: &key,
                        label: &label,
                        endpoints: &endpoints,
                        ttl: ttl.as_deref(),
                        tombstone,
                    };
                    let cas = Precondition {
                        seq: if_seq,
                        hash: if_hash,
                    };
                    publish(&client, &write, cas, seq, json).await
                }
                _ => bail!("publish needs --key and a LABEL, or --record PLAN"),
            }
        }
        Cmd::Sign {
            key,
            api,
            label,
            endpoints,
            ttl,
            seq,
            tombstone,
            out,
            timeout_ms,
            json,
        } => {
            let write = Write {
                key: &key,
                label: &label,
                endpoints: &endpoints,
                ttl: ttl.as_deref(),
                tombstone,
            };
            sign_plan(api, timeout_ms, &write, seq, &out, json).await
        }
        Cmd::Resolve {
            api,
            name,
            timeout_ms,
            wait_seq,
            wait_ms,
            json,
        } => {
            let wait = wait_seq.map(|seq| (seq, wait_ms));
            let per_peer = timeout_ms.saturating_add(wait.map_or(0, |(_, ms)| ms));
            let client = Client::new(api, Duration::from_millis(per_peer))?;
            resolve(&client, &name, wait, json).await
        }
        Cmd::Put {
            api,
            file,
            replicas,
            timeout_s,
            json,
        } => {
            let client = Client::new(api, Duration::from_secs(timeout_s))?;
            put(&client, &file, replicas, json).await
        }
        Cmd::Get {
            api,
            hash,
            out,
            timeout_s,
        } => {
            let client = Client::new(api, Duration::from_secs(timeout_s))?;
            get(&client, &hash, &out).await
        }
        Cmd::Blob {
            api,
            hash,
            timeout_ms,
            json,
        } => {
            let client = Client::new(api, Duration::from_millis(timeout_ms))?;
            blob_info(&client, &hash, json).await
        }
        Cmd::Offers {
            api,
            kind,
            region,
            min_free,
            min_cores,
            min_memory,
            min_gpus,
            max_price,
            timeout_ms,
            json,
        } => {
            if let Some(k) = &kind {
                if k != "storage" && k != "compute" {
                    bail!("--kind must be storage or compute, not {k:?}");
                }
            }
            let filter = crate::offers::OfferFilter {
                kind,
                region,
                min_free,
                min_cores,
                min_memory,
                min_gpus,
                max_price,
            };
            let client = Client::new(api, Duration::from_millis(timeout_ms))?;
            offers(&client, &filter, json).await
        }
        Cmd::Status {
            api,
            timeout_ms,
            json,
        } => {
            let client = Client::new(api, Duration::from_millis(timeout_ms))?;
            status(&client, json).await
        }
    }
}

fn keygen(out: &Path, force: bool) -> Result<()> {
    if out.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", out.display());
    }
    let key = ZoneKey::generate(&mut rand::rngs::OsRng);
    identity::write_secret_file(out, key.to_key_file().as_bytes())
        .with_context(|| format!("cannot write {}", out.display()))?;
    out!("{}", key.zone());
    Ok(())
}

/// `30s`, `10m`, `2h`, `7d`, `500ms`, or plain seconds; overflow is an error, not a wrap.
fn parse_duration(s: &str) -> Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("bad duration {s:?}; use e.g. 30s, 10m, 2h, 7d"))?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => bail!("bad duration unit in {s:?}; use ms, s, m, h or d"),
    };
    let ms = n
        .checked_mul(ms_per_unit)
        .with_context(|| format!("duration {s:?} is too long"))?;
    Ok(Duration::from_millis(ms))
}
