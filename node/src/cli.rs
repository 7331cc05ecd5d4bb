//! The `dpin` command line: the node binary and its client.
//!
//! Lives in the library so the end-to-end test crate can build the very same CLI as its own
//! binary (`dpin-e2e`) without invoking cargo from inside a test. Subcommands: `keygen`, `node`, `publish`, `sign`, `resolve`, `status`, `offers`, `put`, `get`, `blob` (SPEC §4); the safe write paths live in [`crate::publish`]. Human output by
//! default, one JSON object with `--json`; errors are one line on stderr and a non-zero exit.

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
        /// Per-peer timeout in milliseconds.
        #[arg(long, default_value_t = 500)]
        timeout_ms: u64,
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

#[derive(clap::Args)]
struct NodeArgs {
    /// TOML file of settings: every key is a long flag of `dpin node` (see
    /// deploy/dpin.example.toml); flags and DPIN_* variables override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (store, identity key, format version). Created if missing; a directory
    /// written by a newer dpin is refused.
    #[arg(long)]
    data_dir: PathBuf,
    /// libp2p listen address; repeatable.
    #[arg(long, default_values_t = vec!["/ip4/0.0.0.0/tcp/7001".to_owned(), "/ip4/0.0.0.0/udp/7001/quic-v1".to_owned()])]
    listen: Vec<String>,
    /// Peer to bootstrap from (multiaddr, ideally ending in /p2p/PEER_ID); repeatable.
    #[arg(long)]
    bootstrap: Vec<String>,
    /// HTTP API address.
    #[arg(long, default_value = "127.0.0.1:7080")]
    api: SocketAddr,
    /// File holding the API token (one line). When set, writes (publish, blob uploads) need
    /// `Authorization: Bearer TOKEN`; the CLI sends DPIN_API_TOKEN. A file, not a flag value,
    /// so the token never shows in the process list. Without it the node still honours
    /// DPIN_API_TOKEN in its environment.
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// DNS address (UDP and TCP), e.g. 127.0.0.1:5353. Off when not given.
    #[arg(long)]
    dns: Option<SocketAddr>,
    /// DNS alias NAME=ZONE, so LABEL.NAME.dpin. resolves in that zone; repeatable.
    #[arg(long)]
    alias: Vec<String>,
    /// File of aliases, one `NAME ZONE` or `NAME=ZONE` per line (`#` comments).
    #[arg(long)]
    aliases: Option<PathBuf>,
    /// DNS responses per second per source prefix (/24, /56) over UDP; 0 turns rate limiting off.
    #[arg(long, default_value_t = crate::dns::DEFAULT_RRL_RATE)]
    dns_rrl_rate: u32,
    /// Every Nth rate-limited DNS query gets an empty truncated answer (retry over TCP); 0: none.
    #[arg(long, default_value_t = crate::dns::DEFAULT_RRL_SLIP)]
    dns_rrl_slip: u32,
    /// Target time between health probes of one endpoint, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    probe_interval_ms: u64,
    /// Endpoint probe timeout in milliseconds.
    #[arg(long, default_value_t = 1000)]
    probe_timeout_ms: u64,
    /// How UDP endpoints are probed.
    #[arg(long, value_enum, default_value_t = UdpProbe::Icmp)]
    udp_probe: UdpProbe,
    /// Do not probe endpoints (every endpoint's health is unknown).
    #[arg(long)]
    no_probe: bool,
    /// Allow probing this range although it is loopback, private, link-local or otherwise not
    /// global unicast (refused by default, see the README); repeatable, e.g. 127.0.0.0/8.
    #[arg(long = "probe-allow", value_name = "CIDR")]
    probe_allow: Vec<crate::health::Cidr>,
    /// Live nodes that probe each endpoint, chosen by rendezvous hashing; they share their
    /// verdicts as signed observation records, so the probe load an endpoint receives does
    /// not grow with the network. 0 makes every node probe every endpoint (for measurement).
    #[arg(long, default_value_t = crate::health::DEFAULT_PROBERS)]
    probers: usize,
    /// Offer this much storage (bytes; K/M/G/T suffixes accepted).
    #[arg(long, value_parser = crate::offers::parse_bytes)]
    offer_storage: Option<u64>,
    /// Offer this many compute cores.
    #[arg(long)]
    offer_compute: Option<u32>,
    /// Memory offered with the cores (bytes; K/M/G/T suffixes accepted).
    #[arg(long, value_parser = crate::offers::parse_bytes, default_value = "0")]
    memory: u64,
    /// GPUs offered with the cores.
    #[arg(long, default_value_t = 0)]
    gpus: u32,
    /// Region tag of the offers.
    #[arg(long, default_value = "")]
    region: String,
    /// Price of the offers (decimal, e.g. 0.25; per GiB-month for storage, per core-hour for compute).
    #[arg(long, value_parser = crate::offers::parse_price, default_value = "0")]
    price: u64,
    /// How often offers are refreshed, in milliseconds (they lapse after 3 missed refreshes).
    #[arg(long, default_value_t = 10_000)]
    offer_refresh_ms: u64,
    /// How often a storage node checks that it holds every blob it should, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    repair_interval_ms: u64,
    /// How often a storage node re-verifies every stored chunk, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    scrub_interval_ms: u64,
    /// Most simultaneous peer connections.
    #[arg(long, default_value_t = 256)]
    max_connections: u32,
    /// How many nodes the network is expected to have: sizes the gossip mesh (D = N - 1 up to
    /// 7 nodes, the standard D = 6 beyond; see `MeshParams::for_cluster`) and the discovery
    /// target. Networks larger than 7 should say so, or their mesh stays at D = 4.
    #[arg(long, default_value_t = 5)]
    expected_nodes: usize,
    /// Discover peers on the local network with mDNS and dial them like bootstrap peers
    /// (off by default; finds nothing on loopback-only nodes).
    #[arg(long)]
    mdns: bool,
    /// Serve libp2p relay v2 reservations and circuits for nodes behind NAT (off by default;
    /// bounded: see the README's "NAT" section).
    #[arg(long)]
    relay_server: bool,
    /// A relay (multiaddr ending in /p2p/RELAY_ID, a node run with --relay-server) to reserve
    /// a slot on, so this node is reachable at ADDR/p2p-circuit/p2p/SELF behind NAT; repeatable.
    #[arg(long = "relay", value_name = "ADDR")]
    relay: Vec<String>,
    /// How long after expiry a record's signed body is kept (and replicated) before
    /// compaction drops it, keeping only its floor. The default (about 31 days past expiry)
    /// outlives every record the winner beat; shorten it only for test runs whose TTLs are
    /// all shorter than the value.
    #[arg(long, default_value_t = dpin_protocol::store::DEFAULT_BODY_RETENTION_MS)]
    compaction_horizon_ms: u64,
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
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
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
            json,
        } => {
            let client = Client::new(api, Duration::from_millis(timeout_ms))?;
            resolve(&client, &name, json).await
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

async fn run_node(args: NodeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,libp2p_gossipsub=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    // Before anything in the dir is opened: a newer format is refused, an older upgraded.
    let prepared = crate::datadir::prepare(&args.data_dir)?;
    tracing::info!(
        data_dir = %args.data_dir.display(),
        format = crate::datadir::CURRENT_FORMAT,
        ?prepared,
        "data dir ready"
    );
    let keypair = identity::load_or_create(&args.data_dir.join("identity.key"))?;
    let offer_key = crate::offers::zone_key(&keypair)
        .context("the node identity is not an ed25519 key, so it cannot sign offers")?;
    if args.compaction_horizon_ms < dpin_protocol::store::DEFAULT_BODY_RETENTION_MS {
        tracing::warn!(
            horizon_ms = args.compaction_horizon_ms,
            "compaction horizon shortened: replays of older records are refused only if every TTL in use is shorter than it"
        );
    }
    let store = DurableStore::open_with_retention(
        &args.data_dir.join("store.redb"),
        args.compaction_horizon_ms,
    )
    .with_context(|| format!("cannot open the store in {}", args.data_dir.display()))?;
    let listen = parse_addrs(&args.listen, "--listen")?;
    let bootstrap = parse_addrs(&args.bootstrap, "--bootstrap")?;
    let api_listener = api::bind(args.api)
        .await
        .with_context(|| format!("cannot listen for the API on {}", args.api))?;
    let api_addr = api_listener.local_addr()?;

    // One registry for the whole node: libp2p's families go in before the network starts.
    let mut telemetry = crate::metrics::Builder::new();
    let mut config = NetConfig::new(keypair, listen, bootstrap);
    config.metrics = Some(telemetry.libp2p());
    config.max_connections = args.max_connections;
    config.expected_cluster_size = args.expected_nodes.max(1);
    config.nat = net::NatConfig {
        mdns: args.mdns,
        relay_server: args.relay_server,
        relays: parse_addrs(&args.relay, "--relay")?,
    };
    let (handle, events) = net::spawn(config)
        .await
        .context("cannot start networking")?;
    let health = Health::new(HealthConfig {
        enabled: !args.no_probe,
        interval: Duration::from_millis(args.probe_interval_ms.max(50)),
        timeout: Duration::from_millis(args.probe_timeout_ms.max(10)),
        udp: args.udp_probe,
        policy: crate::health::ProbePolicy {
            allow: args.probe_allow.clone(),
        },
        probers: args.probers,
        ..HealthConfig::default()
    });
    let blobs = Arc::new(
        crate::blobs::BlobStore::open(args.data_dir.join("blobs"))
            .with_context(|| format!("cannot open blob storage in {}", args.data_dir.display()))?,
    );
    let node = Node::new(
        store,
        handle.clone(),
        args.data_dir.clone(),
        health.clone(),
        blobs.clone(),
        telemetry,
    );
    let _ = node.0.node_key.set(offer_key.clone());
    node.0.expects_peers.store(
        !args.bootstrap.is_empty(),
        std::sync::atomic::Ordering::Relaxed,
    );
    let probe_node = node.clone();
    tokio::spawn(health_run(health, move || {
        crate::health::probe_targets(&probe_node)
    }));
    let listen_addrs = handle.listen_addrs().await.unwrap_or_default();
    {
        let mut la = node
            .0
            .listen_addrs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        la.extend(listen_addrs.iter().cloned());
    }
    let peer_id = handle.local_peer_id();
    out!("peer_id {peer_id}");
    for a in &listen_addrs {
        out!("listen {a}/p2p/{peer_id}");
    }
    out!("api {api_addr}");
    if let Some(dns_addr) = args.dns {
        let aliases = crate::dns::load_aliases(args.aliases.as_deref(), &args.alias)?;
        let bound = crate::dns::start(
            node.clone(),
            crate::dns::DnsConfig {
                addr: dns_addr,
                aliases,
                rrl: crate::dns::RrlConfig {
                    rate: args.dns_rrl_rate,
                    slip: args.dns_rrl_slip,
                },
            },
        )
        .await
        .with_context(|| format!("cannot serve DNS on {dns_addr}"))?;
        out!("dns {bound}");
    }
    tracing::info!(%peer_id, ?listen_addrs, %api_addr, "dpin node started");

    tokio::spawn(dnode::run_events(node.clone(), events));
    tokio::spawn(crate::alloc::run_trimmer());
    let local_offers = crate::offers::LocalOffers {
        storage_bytes: args.offer_storage,
        cores: args.offer_compute,
        memory_bytes: args.memory,
        gpus: args.gpus,
        region: args.region.clone(),
        price_milli: args.price,
        refresh: Duration::from_millis(args.offer_refresh_ms.max(100)),
    };
    let capacity = args.offer_storage.unwrap_or(0);
    let used = blobs.clone();
    tokio::spawn(crate::offers::run(
        node.clone(),
        offer_key,
        local_offers,
        move || capacity.saturating_sub(used.used()),
    ));
    if args.offer_storage.is_some() {
        tokio::spawn(crate::blobs::run_maintenance(
            node.clone(),
            Duration::from_millis(args.repair_interval_ms.max(100)),
            Duration::from_millis(args.scrub_interval_ms.max(100)),
        ));
    }
    let mut api_config = api::ApiConfig::from_env();
    if let Some(path) = &args.api_token_file {
        api_config.token = Some(read_api_token(path)?);
    }
    let api_task = tokio::spawn(api::serve_with(node.clone(), api_listener, api_config));
    tokio::select! {
        r = api_task => {
            r.context("API task failed")?.context("API server failed")?;
        }
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
        }
    }
    // Replicated records are made durable in the background a moment after they arrive
    // (Node::flush_soon); a clean stop writes whatever is still pending, so a stop right
    // after a record arrived does not lose it. A crash can still lose that tail: peers resend
    // it, and the writer's acknowledgement never depended on this node.
    let generation = node.read_store(crate::store::DurableStore::generation);
    match tokio::time::timeout(SHUTDOWN_FLUSH_TIMEOUT, node.flush(generation)).await {
        Ok(Ok(())) => tracing::info!(generation, "store flushed; stopped"),
        Ok(Err(e)) => tracing::error!(%e, "could not flush the store at shutdown"),
        Err(_) => {
            tracing::error!("the store did not flush within {SHUTDOWN_FLUSH_TIMEOUT:?} at shutdown")
        }
    }
    Ok(())
}

/// Longest a clean stop waits for the store's last flush.
const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves on Ctrl-C or SIGTERM (shared with `dpin-sim`).
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn parse_addrs(raw: &[String], flag: &str) -> Result<Vec<Multiaddr>> {
    raw.iter()
        .map(|s| {
            s.parse::<Multiaddr>().with_context(|| {
                format!("{flag} {s:?} is not a multiaddr (e.g. /ip4/127.0.0.1/tcp/7001)")
            })
        })
        .collect()
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

fn api_error(a: &Answer) -> anyhow::Error {
    let e = a.error();
    let kind = if e.error.is_empty() {
        "error"
    } else {
        &e.error
    };
    anyhow::anyhow!(
        "{} refused: {kind}: {} (HTTP {})",
        a.addr,
        e.message,
        a.status
    )
}

/// The node's answer as received, plus `answered_by`: what `--json` prints (passed on as
/// JSON, so fields a newer node adds reach scripts too).
fn with_answered_by(a: &Answer) -> Value {
    let mut out = a.body.clone();
    out["answered_by"] = json!(a.addr);
    out
}

/// What a writer wants to write, before a seq is chosen.
struct Write<'a> {
    key: &'a Path,
    label: &'a str,
    endpoints: &'a [String],
    ttl: Option<&'a str>,
    tombstone: bool,
}

impl Write<'_> {
    fn key(&self) -> Result<ZoneKey> {
        let text = std::fs::read_to_string(self.key)
            .with_context(|| format!("cannot read key file {}", self.key.display()))?;
        Ok(ZoneKey::from_key_file(&text)?)
    }

    fn content(&self) -> Result<Content> {
        if self.tombstone {
            if !self.endpoints.is_empty() {
                bail!("--tombstone takes no endpoints");
            }
            return Ok(Content::Tombstone);
        }
        if self.endpoints.is_empty() {
            bail!("give at least one ENDPOINT (HOST:PORT), or --tombstone to delete");
        }
        let eps = self
            .endpoints
            .iter()
            .map(|e| {
                e.parse::<Endpoint>()
                    .with_context(|| format!("bad endpoint {e:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Content::Endpoints(eps))
    }

    /// The TTL in ms: given, or 24 h for records and the maximum (30 d) for tombstones, so a
    /// deletion outlives every record it deletes.
    fn ttl_ms(&self) -> Result<u64> {
        match self.ttl {
            Some(t) => Ok(u64::try_from(parse_duration(t)?.as_millis()).unwrap_or(u64::MAX)),
            None if self.tombstone => Ok(dpin_protocol::MAX_TTL_MS),
            None => Ok(24 * 3_600_000),
        }
    }

    fn sign(&self, key: &ZoneKey, seq: u64, now: u64) -> Result<dpin_protocol::SignedRecord> {
        Ok(crate::publish::sign(
            key,
            self.label,
            self.content()?,
            seq,
            self.ttl_ms()?,
            now,
        )?)
    }
}

fn print_published(a: &Answer, json_out: bool) -> Result<()> {
    if json_out {
        out!("{}", with_answered_by(a));
    } else {
        let p: PublishAnswer = a.decode().map_err(anyhow::Error::msg)?;
        out!(
            "{} seq {} ({} by {})",
            p.name,
            p.seq,
            p.outcome.as_str(),
            a.addr
        );
    }
    Ok(())
}

/// The compare-and-set preconditions given on the command line.
struct Precondition {
    /// `--if-seq`.
    seq: Option<u64>,
    /// `--if-hash` (hex, checked before anything is signed).
    hash: Option<String>,
}

async fn publish(
    client: &Client,
    write: &Write<'_>,
    cas: Precondition,
    seq: Option<u64>,
    json_out: bool,
) -> Result<()> {
    let Precondition {
        seq: if_seq,
        hash: if_hash,
    } = cas;
    if write.tombstone && if_seq.is_none() && if_hash.is_none() && seq.is_none() {
        bail!("deleting needs --if-hash HASH, the record you are deleting (`dpin resolve` prints its hash), or --if-seq N, or a pinned --seq, or a plan from `dpin sign --tombstone`; a bare --tombstone would delete whatever is there, even a newer write");
    }
    let key = write.key()?;
    let name = format!("{}.{}", write.label, key.zone());
    let now = now_ms();
    if let Some(hash) = if_hash {
        let hash = crate::publish::parse_hash(&hash)?;
        let floors = crate::publish::read_floors(client, &name).await?;
        let seq = match (seq, if_seq) {
            (Some(s), _) => s,
            (None, Some(expected)) => crate::publish::next_seq(expected, now)?,
            (None, None) => {
                crate::publish::next_seq(crate::publish::seq_of(&floors, &name, &hash)?, now)?
            }
        };
        let record = write.sign(&key, seq, now)?;
        let answer = crate::publish::enact_if_hash(client, &floors, &record, &hash, if_seq).await?;
        return print_published(&answer, json_out);
    }
    let answer = match (seq, if_seq) {
        // A seq fixed in advance behaves like a plan: the merge rule decides.
        (Some(seq), None) => {
            let record = write.sign(&key, seq, now)?;
            crate::publish::enact_plan(client, &record).await?
        }
        (seq, Some(expected)) => {
            let floors = crate::publish::read_floors(client, &name)
                .await
                .unwrap_or_default();
            let seq = match seq {
                Some(s) => s,
                None => crate::publish::next_seq(expected, now)?,
            };
            let record = write.sign(&key, seq, now)?;
            crate::publish::enact_cas(client, &floors, &record, expected).await?
        }
        // The default: compare-and-set against the highest seq any listed peer holds, so a
        // concurrent or newer write is never silently overwritten.
        (None, None) => {
            let floors = crate::publish::read_floors(client, &name).await?;
            let held = crate::publish::highest(&floors);
            let record = write.sign(&key, crate::publish::next_seq(held, now)?, now)?;
            crate::publish::enact_cas(client, &floors, &record, held).await?
        }
    };
    print_published(&answer, json_out)
}

async fn sign_plan(
    api: Vec<String>,
    timeout_ms: u64,
    write: &Write<'_>,
    seq: Option<u64>,
    out: &Path,
    json_out: bool,
) -> Result<()> {
    let key = write.key()?;
    let name = format!("{}.{}", write.label, key.zone());
    let now = now_ms();
    let (seq, planned_over) = match seq {
        Some(s) => (s, 0),
        None => {
            let client = Client::new(api, Duration::from_millis(timeout_ms))?;
            let held = crate::publish::highest(&crate::publish::read_floors(&client, &name).await?);
            (crate::publish::next_seq(held, now)?, held)
        }
    };
    let record = write.sign(&key, seq, now)?;
    let plan = crate::publish::Plan::new(&record, planned_over);
    plan.write(out)?;
    if json_out {
        out!("{}", serde_json::to_string(&plan)?);
    } else {
        out!("{name} seq {seq} planned in {}", out.display());
    }
    Ok(())
}

async fn publish_plan(
    client: &Client,
    path: &Path,
    if_hash: Option<&str>,
    json_out: bool,
) -> Result<()> {
    let plan = crate::publish::Plan::read(path)?;
    let record = plan.record()?;
    let answer = match if_hash {
        // A clean-up plan that names the record it deletes: enacted only while that record is
        // the winner (the plan's own seq still decides against anything newer).
        Some(hash) => {
            let hash = crate::publish::parse_hash(hash)?;
            let floors = crate::publish::read_floors(client, &record.name()).await?;
            crate::publish::enact_if_hash(client, &floors, &record, &hash, None).await?
        }
        None => crate::publish::enact_plan(client, &record).await?,
    };
    print_published(&answer, json_out)
}

/// Resolves through the first peer that answers without saying it is cut off from the
/// network; a peer that says so is passed over for the next, and its answer is used only if
/// no other peer answers (never fail closed), with a warning that it may be stale.
async fn resolve(client: &Client, name: &str, json_out: bool) -> Result<()> {
    let settled = client
        .first_connected(&format!("/v1/resolve/{name}"))
        .await?;
    let a = &settled.answer;
    if a.status != 200 {
        return Err(api_error(a));
    }
    let mut out = with_answered_by(a);
    if !settled.passed_over.is_empty() {
        // Peers whose answers said they were cut off, in the order asked.
        out["passed_over_cut_off"] = json!(settled.passed_over);
    }
    for p in &settled.passed_over {
        eprintln!("note: passed over {p}: it says it is cut off from the network");
    }
    if settled.cut_off {
        eprintln!(
            "warning: {} says it is cut off from the network (it hears too few of its peers);              this answer may be stale, and no other --api peer answered",
            a.addr
        );
    }
    if json_out {
        out!("{out}");
        return Ok(());
    }
    let r: ResolveAnswer = a.decode().map_err(anyhow::Error::msg)?;
    out!(
        "{} seq {} (answered by {}{})",
        r.name,
        r.seq,
        a.addr,
        if settled.cut_off {
            ", which says it is cut off: may be stale"
        } else {
            ""
        }
    );
    // The record's content hash: what a clean-up names to delete exactly this record
    // (`dpin publish --tombstone --if-hash HASH`).
    if let Some(hash) = &r.hash {
        out!("  hash {hash}");
    }
    for e in &r.endpoints {
        let host = if e.host.contains(':') {
            format!("[{}]", e.host)
        } else {
            e.host.clone()
        };
        out!(
            "  {host}:{}/{} weight {}{}",
            e.port,
            e.transport,
            e.weight,
            // Three states: healthy, unknown (not probed, e.g. a private address the probe
            // policy refuses), unhealthy.
            match e.health.as_str() {
                "unhealthy" => " UNHEALTHY",
                "unknown" => " (health unknown)",
                _ => "",
            }
        );
    }
    Ok(())
}

async fn status(client: &Client, json_out: bool) -> Result<()> {
    let a = client
        .first("/v1/status", None, |a| a.status == 200)
        .await?;
    if a.status != 200 {
        return Err(api_error(&a));
    }
    if json_out {
        out!("{}", with_answered_by(&a));
        return Ok(());
    }
    let st: StatusAnswer = a.decode().map_err(anyhow::Error::msg)?;
    out!("peer {} (answered by {})", st.peer_id, a.addr);
    out!(
        "records {}  live {}  digest {}",
        st.records,
        st.live_records,
        st.digest
    );
    let now = now_ms();
    for p in &st.peers {
        let state = if p.state.is_empty() {
            "UNKNOWN".to_owned()
        } else {
            p.state.to_uppercase()
        };
        let ago = format!(
            " for {:.1}s",
            now.saturating_sub(p.since_ms) as f64 / 1000.0
        );
        let rtt = p
            .rtt_ms
            .map(|r| format!(", rtt {r:.1} ms"))
            .unwrap_or_default();
        out!("  {} {state}{ago}{rtt}", p.peer_id);
    }
    Ok(())
}

async fn offers(
    client: &Client,
    filter: &crate::offers::OfferFilter,
    json_out: bool,
) -> Result<()> {
    let mut query = Vec::new();
    let f = serde_json::to_value(filter)?;
    for (k, v) in f.as_object().into_iter().flatten() {
        match v {
            Value::Null => {}
            Value::String(s) => query.push(format!("{k}={s}")),
            other => query.push(format!("{k}={other}")),
        }
    }
    let path = format!("/v1/offers?{}", query.join("&"));
    let a = client.first(&path, None, |a| a.status == 200).await?;
    if a.status != 200 {
        return Err(api_error(&a));
    }
    if json_out {
        out!("{}", with_answered_by(&a));
        return Ok(());
    }
    let list = a
        .decode::<OffersAnswer>()
        .map_err(anyhow::Error::msg)?
        .offers;
    out!("{} offers (answered by {})", list.len(), a.addr);
    for o in list {
        let price = o.price_milli as f64 / 1000.0;
        let what = if o.kind == "storage" {
            format!(
                "storage {} free of {}",
                human_bytes(o.free_bytes.unwrap_or(0)),
                human_bytes(o.capacity_bytes.unwrap_or(0))
            )
        } else {
            format!(
                "compute {} cores, {} memory, {} GPUs",
                o.cores.unwrap_or(0),
                human_bytes(o.memory_bytes.unwrap_or(0)),
                o.gpus.unwrap_or(0)
            )
        };
        out!("  {:<8.3} {:<12} {} {}", price, o.region, o.peer_id, what);
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

async fn put(client: &Client, file: &Path, replicas: u8, json_out: bool) -> Result<()> {
    let meta =
        std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", file.display());
    }
    let mut last = None;
    for addr in client.addrs() {
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("cannot read {}", file.display()))?;
        match client
            .upload(
                addr,
                &format!("/v1/blobs?replicas={replicas}"),
                f,
                meta.len(),
            )
            .await
        {
            Ok(a) if a.status == 200 => {
                if json_out {
                    out!("{}", with_answered_by(&a));
                } else {
                    let put: BlobPutAnswer = a.decode().map_err(anyhow::Error::msg)?;
                    out!("{}", put.hash);
                    eprintln!(
                        "stored {} bytes in {} chunks on {} holders (via {})",
                        put.size,
                        put.chunks,
                        put.holders.len(),
                        a.addr
                    );
                }
                return Ok(());
            }
            Ok(a) if a.status < 500 => return Err(api_error(&a)),
            Ok(a) => last = Some(api_error(&a)),
            Err(e) => last = Some(anyhow::anyhow!("{addr}: {e}")),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no --api address")))
}

async fn get(client: &Client, hash: &str, out: &Path) -> Result<()> {
    let root = parse_root(hash)?;
    let info = client
        .first(&format!("/v1/blobs/{hash}/info"), None, |a| a.status == 200)
        .await?;
    if info.status != 200 {
        return Err(api_error(&info));
    }
    let manifest: BlobInfoAnswer = info.decode().map_err(anyhow::Error::msg)?;
    let index = hex::decode(&manifest.index).context("peer sent a malformed index")?;
    if dpin_protocol::blob::root_of(&index) != root {
        bail!("{} sent an index that does not match the hash", info.addr);
    }
    let chunk_size = manifest.chunk_size as usize;
    let size = manifest.size;
    if chunk_size == 0 {
        bail!("{} sent a manifest without a chunk size", info.addr);
    }
    let part = out.with_extension("part");
    let mut errors = Vec::new();
    for addr in client.addrs() {
        let path = format!("/v1/blobs/{hash}");
        match client
            .download(addr, &path, &part, &index, chunk_size, size)
            .await
        {
            Ok(()) => {
                std::fs::rename(&part, out)
                    .with_context(|| format!("cannot write {}", out.display()))?;
                eprintln!("{size} bytes verified against {hash} (from {addr})");
                return Ok(());
            }
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    let _ = std::fs::remove_file(&part);
    bail!("no peer delivered a verified copy: {}", errors.join("; "))
}

fn parse_root(hash: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(hash.trim()).context("the hash must be 64 hex characters")?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("the hash must be 64 hex characters"))
}

async fn blob_info(client: &Client, hash: &str, json_out: bool) -> Result<()> {
    parse_root(hash)?;
    let a = client
        .first(&format!("/v1/blobs/{hash}/info"), None, |a| a.status == 200)
        .await?;
    if a.status != 200 {
        return Err(api_error(&a));
    }
    if json_out {
        let mut out = with_answered_by(&a);
        if let Some(o) = out.as_object_mut() {
            o.remove("index");
        }
        out!("{out}");
        return Ok(());
    }
    let info: BlobInfoAnswer = a.decode().map_err(anyhow::Error::msg)?;
    out!(
        "{hash}: {} bytes, {} chunks, {} replicas wanted, {} complete copies (answered by {})",
        info.size,
        info.chunks,
        info.replicas,
        info.complete_copies,
        a.addr
    );
    for h in &info.holders {
        out!("  {} {}/{} chunks", h.peer_id, h.chunks, h.total);
    }
    Ok(())
}

#[cfg(test)]
mod config_file_tests {
    use super::*;

    /// Every `dpin node` flag is a config key documented in deploy/dpin.example.toml, and the
    /// keys the example sets are accepted.
    #[test]
    fn every_node_flag_is_a_documented_key_of_the_example_config() {
        let example = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/dpin.example.toml"
        ));
        let cmd = Cli::command().mut_subcommand("node", crate::config::with_env);
        let node = cmd.find_subcommand("node").expect("node subcommand");
        for a in node.get_arguments() {
            let Some(long) = a.get_long() else { continue };
            if long == "help" || long == "config" {
                continue;
            }
            let documented = example.lines().any(|l| {
                l.trim_start_matches('#')
                    .trim()
                    .starts_with(&format!("{long} ="))
            });
            assert!(
                documented,
                "deploy/dpin.example.toml does not document `{long}`"
            );
        }
        let table: toml::Table = toml::from_str(example).expect("the example parses");
        let args =
            crate::config::args_from_table(Path::new("example"), &table, node, &[], |_| false)
                .expect("the example's keys are node flags");
        assert_eq!(args, ["--data-dir", "/var/lib/dpin"]);
    }
}

/// Reads the API token file: its first line, trimmed; an empty or unreadable file is an error
/// (a node meant to need a token must never start open).
fn read_api_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the API token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        anyhow::bail!("the API token file {} is empty", path.display());
    }
    Ok(token)
}

#[cfg(test)]
mod api_token_file_tests {
    use super::read_api_token;

    #[test]
    fn the_token_is_the_first_line_trimmed_and_an_empty_file_refuses_to_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("token");
        std::fs::write(&good, "  s3cret \nignored\n").expect("write");
        assert_eq!(read_api_token(&good).expect("token"), "s3cret");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        assert!(read_api_token(&empty).is_err());
        assert!(read_api_token(&dir.path().join("missing")).is_err());
    }
}
