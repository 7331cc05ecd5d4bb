//! `dpin node`: its settings (flags, `DPIN_*` variables and the TOML file, see
//! [`crate::config`]) and start-up: open the store, start the network, the API, DNS, the
//! prober, offers and blob maintenance, then serve until Ctrl-C or SIGTERM and flush.
//!
//! Split from `cli.rs` (issue 11): the daemon's start-up is one responsibility, the client
//! subcommands another.

use super::*;
#[derive(clap::Args)]
pub(super) struct NodeArgs {
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
    /// Threads answering DNS over UDP; 0 (the default): one per core the process may use, at
    /// least 2 (one preempted leaves the other to answer), at most 4.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=64))]
    dns_udp_threads: u16,
    /// Scheduling slice the DNS answer threads ask the kernel for, in µs (Linux 6.12+; older
    /// kernels ignore it): a short slice lets an answer thread woken by a query take the core
    /// from the node's background work at once. 0 keeps the kernel's default.
    #[arg(long, default_value_t = crate::dns::DEFAULT_UDP_SLICE_US, value_parser = parse_slice_us)]
    dns_slice_us: u32,
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
    /// Longest a gossiped record waits in the replica log before it is committed to the store
    /// (folds also run every 4 records), in milliseconds: what a power loss can take back. A
    /// SIGKILL takes back nothing either way. See `dpin_node::replica_log`.
    #[arg(long, default_value_t = crate::replica_log::FOLD_INTERVAL.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    replica_fold_ms: u64,
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
    /// Nice steps the node's background threads (the async runtime: gossip, sync, HTTP,
    /// libp2p) run below its DNS answer threads, so answers do not wait behind replication on
    /// a busy core (0-19; 0: all at the process's priority). See `dpin_node::priority`.
    #[arg(long, default_value_t = crate::priority::DEFAULT_BACKGROUND_NICE, value_parser = clap::value_parser!(u8).range(0..=19))]
    background_nice: u8,
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

impl NodeArgs {
    /// `--background-nice`: read before the runtime starts (its threads are lowered as they
    /// start).
    pub(super) fn background_nice(&self) -> u8 {
        self.background_nice
    }
}

pub(super) async fn run_node(args: NodeArgs) -> Result<()> {
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("info,libp2p_gossipsub=warn")
                }),
            )
            .with_writer(crate::logs::Truncating::new(std::io::stderr))
            .finish()
            .with(crate::logs::LimitLayer::global())
            .init();
    }
    if args.background_nice > 0 {
        match crate::priority::lowering_failure() {
            Some(e) => tracing::warn!(error = e, "could not lower the background threads' priority; DNS answers share the CPU with them equally"),
            None => tracing::info!(background_nice = args.background_nice, "background threads run below the DNS answer threads"),
        }
    }
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
    node.set_replica_fold_interval(Duration::from_millis(args.replica_fold_ms));
    node.0.expects_peers.store(
        !args.bootstrap.is_empty(),
        std::sync::atomic::Ordering::Relaxed,
    );
    let probe_node = node.clone();
    let pace_node = node.clone();
    tokio::spawn(health_run(
        health,
        move || crate::health::probe_targets(&probe_node),
        move || crate::health::Pace {
            backlog: crate::store::read(pace_node.shared_store()).feed_backlog(),
            joining: pace_node.joining(),
        },
    ));
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
                udp_threads: usize::from(args.dns_udp_threads),
                udp_slice_us: args.dns_slice_us,
            },
        )
        .await
        .with_context(|| format!("cannot serve DNS on {dns_addr}"))?;
        out!("dns {bound}");
    }
    tracing::info!(%peer_id, ?listen_addrs, %api_addr, "dpin node started");

    tokio::spawn(dnode::run_events(node.clone(), events));
    tokio::spawn(crate::alloc::run_trimmer());
    tokio::spawn(crate::logs::run_reporter());
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
    // (gossiped ones through the replica log, crate::replica_log; fetched ones by
    // Node::flush_replicas_soon); a clean stop commits whatever is still pending and leaves no
    // replica log behind. A SIGKILL keeps the logged ones (the next start replays them); a
    // power loss can lose that tail: peers resend it, and the writer's acknowledgement never
    // depended on this node.
    let stop = async {
        node.fold_replicas().await?;
        let generation = node.read_store(crate::store::DurableStore::generation);
        node.flush(generation).await.map(|()| generation)
    };
    match tokio::time::timeout(SHUTDOWN_FLUSH_TIMEOUT, stop).await {
        Ok(Ok(generation)) => tracing::info!(generation, "store flushed; stopped"),
        Ok(Err(e)) => tracing::error!(%e, "could not flush the store at shutdown"),
        Err(_) => {
            tracing::error!("the store did not flush within {SHUTDOWN_FLUSH_TIMEOUT:?} at shutdown")
        }
    }
    Ok(())
}

/// Longest a clean stop waits for the store's last flush.
pub(super) const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

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

pub(super) fn parse_addrs(raw: &[String], flag: &str) -> Result<Vec<Multiaddr>> {
    raw.iter()
        .map(|s| {
            s.parse::<Multiaddr>().with_context(|| {
                format!("{flag} {s:?} is not a multiaddr (e.g. /ip4/127.0.0.1/tcp/7001)")
            })
        })
        .collect()
}

#[cfg(test)]
mod config_file_tests {
    use super::*;

    /// `--dns-slice-us` takes 0 or what Linux takes, and says which otherwise.
    #[test]
    fn a_dns_slice_is_zero_or_within_what_linux_takes() {
        assert_eq!(parse_slice_us("0"), Ok(0));
        assert_eq!(parse_slice_us("100"), Ok(100));
        assert_eq!(parse_slice_us("100000"), Ok(100_000));
        for bad in ["99", "100001", "-1", "fast"] {
            let e = parse_slice_us(bad).expect_err(bad);
            assert!(
                e.contains("100 to 100000") || e.contains("microseconds"),
                "{bad}: {e}"
            );
        }
    }

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

/// `--dns-slice-us`: 0, or a slice Linux takes ([`crate::priority::SLICE_US_RANGE`]).
fn parse_slice_us(s: &str) -> std::result::Result<u32, String> {
    let us: u32 = s
        .parse()
        .map_err(|e| format!("not a number of microseconds: {e}"))?;
    let range = crate::priority::SLICE_US_RANGE;
    if us == 0 || range.contains(&us) {
        Ok(us)
    } else {
        Err(format!(
            "0 (the kernel's default) or {} to {} µs",
            range.start(),
            range.end()
        ))
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
