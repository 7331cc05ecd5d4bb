//! Propagation bench: dpin's real release processes against raw in-process gossipsub, at the
//! same cluster sizes, side by side in one run (issue 14, "a bench the project ships").
//!
//! For each size N (default 3, 5 and 20) it measures, one after the other on the same machine:
//!
//! * **raw**: N rust-libp2p 0.56 gossipsub swarms in this process (loopback TCP, noise, yamux,
//!   signed messages, strict validation with an explicit `Accept` before forwarding, blake3
//!   message ids, 500 ms heartbeats) with the node's own mesh parameters
//!   ([`dpin_node::net::MeshParams::for_cluster`]). Each node dials the previous ones (all of
//!   them up to 13 nodes, else the 6 before it on a ring, about the node's target degree of
//!   12). One clock: the time from `publish` at the origin to the last node's receipt.
//! * **procs**: the raw side again with each swarm in its own process (`dpin-bench raw-peer`
//!   children driven over stdin and stdout, [`raw_procs_side`]), timed from the origin's
//!   `publish` to the last receipt on the host's `CLOCK_MONOTONIC`. dpin runs one process per
//!   node, so every hop wakes another process, often on another core, where the in-process
//!   swarms share two runtime threads; this side is that floor, before any of dpin's own
//!   work, and the table gives dpin's p99 against it too (`--no-raw-procs` skips it).
//! * **dpin**: N `dpin node` processes (`--no-probe --expected-nodes N`), one signed record per
//!   message published over HTTP at the origin (origins rotate); the time from the HTTP
//!   request to the last node having the record, observed in one or both ways
//!   (`--observe wait,dns`, over the same cluster in turn, each a row of the table):
//!   - **wait**: one blocking read per node (`GET /v1/seq/{name}?wait_seq=1`,
//!     `dpin_node::watch`), started before the publish and answered when the record is
//!     applied there; nothing polls, so the observers add no load while a message travels.
//!   - **applied** (a row of its own, from the `wait` run): the same messages timed on the
//!     nodes' own clocks. Each blocking read's answer says when the record was applied on
//!     its node (`changed_at_us`, the host's `CLOCK_MONOTONIC`, which every process on one
//!     host shares), and the bench reads the same clock just before it sends the publish.
//!     So the time runs from the publish's send to the last node's apply: the HTTP request
//!     into the origin, its verify and merge, and the gossip, but not the answers' way back
//!     to the bench nor the bench's wake-ups, which the raw side's in-process receipt does
//!     not pay either. A message some node answered without a stamp (its read registered
//!     after the record arrived) is left out of this row and counted.
//!   - **dns**: one DNS poller per node asking for the name until it answers, pausing
//!     `--poll-us` between queries (tokio's timer rounds the pause up to the next
//!     millisecond, so each arrival is seen up to about 1 ms late); messages during which
//!     a poller lost a DNS query are counted (`dns t/o`).
//!
//!   Both include the origin's verification and merge (gossip goes out while the origin's
//!   fsync runs; the writer's acknowledgement waits for it) and the HTTP request, and the
//!   observers run on the same cores as the nodes, so the dpin figure is an upper bound.
//!   A line per size and way gives the writer's wait too: the publish's send to its
//!   answer, which comes once the origin has committed the record (the gossip does not
//!   wait for that commit).
//!   After the run, the nodes' `/metrics` tell how the records arrived (gossip or
//!   anti-entropy), printed as one line per size. A line per size and way also gives the
//!   time until the origin itself showed the record (the HTTP publish, its verify and merge,
//!   the observer's answer), and from then to the last node: observed the same way at both
//!   ends, that is the spread by gossip alone, without the origin's entry.
//!
//! Per size and side it also prints the CPU the nodes used per message (all of them, from
//! `/proc/PID/stat`; the raw side's is this process's own): on a machine with fewer cores
//! than nodes that, more than the network, bounds how fast a message reaches every node.
//!
//! Both sides check one ed25519 signature per message per node: the raw side gossipsub's
//! envelope signature (strict validation), dpin the record's own signature (its gossip
//! envelopes are anonymous, see `dpin_node::net::GOSSIP_TOPIC`).
//!
//! It prints p50/p99/max per side and the dpin/raw ratio of each, and returns the rows. The
//! earlier baseline (FIELD-NOTES.md: N=3 dpin p99 4.3 ms vs raw 1.1 ms, N=20 34.5 vs 14.0 ms)
//! was measured the same way: an external DNS poller against raw in-process gossipsub.
//!
//! Wiring (`dpin-bench propagation`): a subcommand variant holding [`PropagationArgs`] and a
//! call to [`run`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dpin_protocol::{Endpoint, Host, Transport, ZoneKey};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity, ValidationMode};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, Swarm};
use tokio::sync::mpsc;

use crate::cluster::{self, Cluster, ClusterOptions, Layout};
use crate::dnsq::{self, DnsAnswer};
use crate::history::OpOutcome;
use crate::nodeapi::Api;
use crate::workload::make_record;

/// Arguments of `dpin-bench propagation`.
#[derive(clap::Args, Clone, Debug)]
pub struct PropagationArgs {
    /// Cluster sizes, each run as raw gossipsub then dpin.
    #[arg(long, value_delimiter = ',', default_value = "3,5,20")]
    pub nodes: Vec<usize>,
    /// Messages per size and side (origins rotate over the nodes).
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    /// Pause between messages, in milliseconds (each message is awaited first).
    #[arg(long, default_value_t = 20)]
    pub interval_ms: u64,
    /// Raw gossipsub payload bytes (a dpin record of one endpoint is about this size).
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// How dpin's arrival on each node is observed, each over the same cluster in turn:
    /// `wait` — one blocking read per node (`GET /v1/seq/{name}?wait_seq=1`), answered when
    /// the node applies the record, no load on the cores between; `dns` — one DNS poller
    /// per node asking for the name every `--poll-us` until it answers.
    #[arg(long, value_delimiter = ',', default_value = "wait,dns")]
    pub observe: Vec<Observe>,
    /// Pause of each DNS poller between queries, in microseconds (tokio's timer rounds it
    /// up to the next millisecond).
    #[arg(long, default_value_t = 500)]
    pub poll_us: u64,
    /// A message not on every node after this long counts as lost, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub timeout_ms: u64,
    /// The `dpin` binary (default: `dpin` next to this executable).
    #[arg(long)]
    pub dpin: Option<PathBuf>,
    /// Folder for the nodes' data dirs and logs (default: a fresh one under the temp dir,
    /// removed afterwards).
    #[arg(long)]
    pub base_dir: Option<PathBuf>,
    /// Skip the third side: raw gossipsub with each swarm in its own process
    /// (`dpin-bench raw-peer`), the floor any system of one process per node pays on this
    /// machine.
    #[arg(long)]
    pub no_raw_procs: bool,
}

/// Arguments of `dpin-bench raw-peer`: one raw gossipsub swarm in this process, driven over
/// stdin and stdout by `dpin-bench propagation` ([`raw_peer`]).
#[derive(clap::Args, Clone, Debug)]
pub struct RawPeerArgs {
    /// Cluster size, which sets the mesh parameters (as for the in-process swarms).
    #[arg(long)]
    pub nodes: usize,
}

/// How arrival at a dpin node is observed (see [`PropagationArgs::observe`]).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Observe {
    /// A blocking read per node, answered when the record is applied there.
    Wait,
    /// A DNS poller per node.
    Dns,
    /// The `wait` run's messages on the nodes' own clocks (a row, not a choice: every
    /// `wait` run gives it).
    #[value(skip)]
    Applied,
}

impl Observe {
    fn as_str(self) -> &'static str {
        match self {
            Observe::Wait => "wait",
            Observe::Dns => "dns",
            Observe::Applied => "applied",
        }
    }
}

/// One side's figures at one size.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Side {
    /// Messages that reached every node.
    pub delivered: usize,
    /// Messages that did not reach every node within the timeout.
    pub lost: usize,
    /// Median origin-to-last-node time, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Messages whose measurement lost a DNS query (a poller waited out its 200 ms timeout
    /// and asked again): their times include up to that wait, so a tail made of them is the
    /// measurement's, not the network's. Always 0 on the raw side, which has no pollers.
    pub dns_timeouts: usize,
}

/// Both sides at one size, dpin once per way of observing it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Row {
    /// Cluster size.
    pub nodes: usize,
    /// How this row's dpin side was observed.
    pub observe: Observe,
    /// Raw in-process gossipsub.
    pub raw: Side,
    /// dpin processes.
    pub dpin: Side,
    /// Raw gossipsub, one process per swarm (`None`: not measured, `--no-raw-procs`).
    pub raw_procs: Option<Side>,
}

impl Row {
    /// dpin p99 / raw p99.
    pub fn p99_ratio(&self) -> f64 {
        ratio(self.dpin.p99_ms, self.raw.p99_ms)
    }

    /// dpin p50 / raw p50.
    pub fn p50_ratio(&self) -> f64 {
        ratio(self.dpin.p50_ms, self.raw.p50_ms)
    }

    /// dpin p99 / raw p99 with one process per swarm (NaN when that side was skipped).
    pub fn p99_ratio_procs(&self) -> f64 {
        self.raw_procs
            .as_ref()
            .map_or(f64::NAN, |r| ratio(self.dpin.p99_ms, r.p99_ms))
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// "used X ms of CPU in Y s, Z ms per message (W per node)": `ticks` of CPU (clock ticks,
/// `/proc/PID/stat`) spent over `elapsed` on `messages` messages by `n` nodes.
fn cpu_per_message(ticks: u64, elapsed: Duration, messages: usize, n: usize) -> String {
    let ms = ticks as f64 * 1e3 / cluster::clock_ticks();
    format!(
        "used {ms:.0} ms of CPU in {:.1} s, {:.2} ms per message ({:.3} per node)",
        elapsed.as_secs_f64(),
        ms / messages.max(1) as f64,
        ms / (messages * n).max(1) as f64,
    )
}

/// The `q`-quantile (nearest rank) of sorted `v`, in ms.
fn quantile_ms(v: &[Duration], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1].as_secs_f64() * 1e3
}

/// A bench message: a record for `label` (seq 1, living `ttl_ms`) with one endpoint,
/// `127.NET.(m >> 8).m:443`, and that address (what a reader of the name gets back).
pub fn bench_record(
    key: &ZoneKey,
    label: &str,
    net: u8,
    m: usize,
    ttl_ms: u64,
) -> Result<(dpin_protocol::SignedRecord, Ipv4Addr)> {
    let addr = Ipv4Addr::new(127, net, (m >> 8) as u8, m as u8);
    let endpoint = Endpoint {
        host: Host::V4(addr.octets()),
        port: 443,
        transport: Transport::Tcp,
        weight: 1,
    };
    let record =
        make_record(key, label, 1, vec![endpoint], ttl_ms).map_err(|e| anyhow!("signing: {e}"))?;
    Ok((record, addr))
}

fn side(mut samples: Vec<Duration>, lost: usize, dns_timeouts: usize) -> Side {
    samples.sort();
    Side {
        dns_timeouts,
        delivered: samples.len(),
        lost,
        p50_ms: quantile_ms(&samples, 0.50),
        p99_ms: quantile_ms(&samples, 0.99),
        max_ms: samples.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
    }
}

/// Runs both sides at every size, prints the table, returns the rows.
pub async fn run(args: &PropagationArgs) -> Result<Vec<Row>> {
    if args.nodes.iter().any(|&n| n < 2) {
        bail!("every cluster size must be at least 2");
    }
    if args.messages == 0 {
        bail!("--messages must be at least 1");
    }
    if args.observe.is_empty() {
        bail!("--observe needs wait, dns or both");
    }
    let dpin = match &args.dpin {
        Some(p) => p.clone(),
        None => cluster::default_dpin()?,
    };
    let (base, remove_base) = match &args.base_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("dpin-propbench-{}", std::process::id())),
            true,
        ),
    };
    let mut rows = Vec::new();
    for &n in &args.nodes {
        eprintln!("propagation: N={n}: raw gossipsub ...");
        let raw = raw_side(n, args).await?;
        let raw_procs = if args.no_raw_procs {
            None
        } else {
            eprintln!("propagation: N={n}: raw gossipsub, one process per swarm ...");
            let exe = std::env::current_exe().context("this executable's path")?;
            Some(raw_procs_side(n, args, &exe).await?)
        };
        eprintln!("propagation: N={n}: dpin ...");
        let dir = base.join(format!("n{n}"));
        let d = dpin_side(n, args, &dpin, &dir).await;
        if remove_base {
            let _ = std::fs::remove_dir_all(&dir);
        }
        for (observe, dpin) in d? {
            rows.push(Row {
                nodes: n,
                observe,
                raw: raw.clone(),
                dpin,
                raw_procs: raw_procs.clone(),
            });
        }
    }
    if remove_base {
        let _ = std::fs::remove_dir_all(&base);
    }
    println!("{}", table(&rows, args));
    Ok(rows)
}

/// The printed table.
pub fn table(rows: &[Row], args: &PropagationArgs) -> String {
    let mut out = format!(
        "propagation, origin to last node, ms ({} messages per size and side, one run; \
         dpin observed by blocking reads (wait) or DNS pollers (dns), or timed on the \
         nodes' clocks from the publish's send to the last apply (applied); procs: raw \
         gossipsub with one process per swarm):\n\
         {:>4} {:>7} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>9} {:>9} {:>10} {:>8} {:>10} {:>10} {:>9}\n",
        args.messages,
        "N",
        "observe",
        "raw p50",
        "raw p99",
        "raw max",
        "dpin p50",
        "dpin p99",
        "dpin max",
        "p50 x",
        "p99 x",
        "lost r/d",
        "dns t/o",
        "procs p50",
        "procs p99",
        "p99 x pr"
    );
    for r in rows {
        let (procs_p50, procs_p99) = r
            .raw_procs
            .as_ref()
            .map_or((f64::NAN, f64::NAN), |p| (p.p50_ms, p.p99_ms));
        out.push_str(&format!(
            "{:>4} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>10.2} {:>10.2} {:>10.2} {:>9.2} {:>9.2} {:>10} {:>8} {:>10.2} {:>10.2} {:>9.2}\n",
            r.nodes,
            r.observe.as_str(),
            r.raw.p50_ms,
            r.raw.p99_ms,
            r.raw.max_ms,
            r.dpin.p50_ms,
            r.dpin.p99_ms,
            r.dpin.max_ms,
            r.p50_ratio(),
            r.p99_ratio(),
            format!("{}/{}", r.raw.lost, r.dpin.lost),
            r.dpin.dns_timeouts,
            procs_p50,
            procs_p99,
            r.p99_ratio_procs(),
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Raw gossipsub

/// Nodes `i` dials: every earlier node up to 13 nodes (a full mesh, as the node's mesh is for
/// small clusters), else the 6 before it on a ring (degree about 12, the node's target).
fn dial_targets(i: usize, n: usize) -> Vec<usize> {
    if n <= 13 {
        (0..i).collect()
    } else {
        (1..=6).map(|k| (i + n - k) % n).collect()
    }
}

/// The node's gossipsub configuration for a cluster of `n` (net.rs `gossipsub_config`, minus
/// the per-topic size caps, which do not change timing).
fn raw_config(n: usize, topic: &IdentTopic) -> Result<gossipsub::Config> {
    let mesh = dpin_node::net::MeshParams::for_cluster(n);
    let hash = topic.hash();
    gossipsub::ConfigBuilder::default()
        .validation_mode(ValidationMode::Strict)
        .validate_messages()
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::new(blake3::hash(&m.data).as_bytes())
        })
        .mesh_n(mesh.n)
        .mesh_n_low(mesh.n_low)
        .mesh_n_high(mesh.n_high)
        .mesh_outbound_min(mesh.outbound_min)
        .mesh_n_for_topic(mesh.n, hash.clone())
        .mesh_n_low_for_topic(mesh.n_low, hash.clone())
        .mesh_n_high_for_topic(mesh.n_high, hash.clone())
        .mesh_outbound_min_for_topic(mesh.outbound_min, hash)
        .gossip_lazy(mesh.n)
        .heartbeat_interval(Duration::from_millis(500))
        .heartbeat_initial_delay(Duration::from_millis(100))
        .history_length(10)
        .history_gossip(6)
        .build()
        .map_err(|e| anyhow!("gossipsub config: {e}"))
}

fn raw_swarm(n: usize, topic: &IdentTopic) -> Result<Swarm<gossipsub::Behaviour>> {
    let config = raw_config(n, topic)?;
    let key = libp2p::identity::Keypair::generate_ed25519();
    let behaviour = gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), config)
        .map_err(|e| anyhow!("gossipsub: {e}"))?;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| anyhow!("tcp: {e}"))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| anyhow!("behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    swarm
        .behaviour_mut()
        .subscribe(topic)
        .map_err(|e| anyhow!("subscribe: {e}"))?;
    Ok(swarm)
}

/// What a raw swarm is told to do.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SwarmCmd {
    /// Dial this address.
    Dial(Multiaddr),
    /// Publish message M with a payload of this many bytes ([`raw_payload`]).
    Publish(u64, usize),
}

impl SwarmCmd {
    /// The line `dpin-bench raw-peer` reads for it.
    fn line(&self) -> String {
        match self {
            SwarmCmd::Dial(a) => format!("dial {a}"),
            SwarmCmd::Publish(m, bytes) => format!("pub {m} {bytes}"),
        }
    }

    /// Parses [`SwarmCmd::line`]'s form.
    fn parse(line: &str) -> Result<SwarmCmd> {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("dial"), Some(addr), None, None) => {
                Ok(SwarmCmd::Dial(addr.parse().context("dial address")?))
            }
            (Some("pub"), Some(m), Some(bytes), None) => Ok(SwarmCmd::Publish(
                m.parse().context("message number")?,
                bytes.parse().context("payload size")?,
            )),
            _ => bail!("raw-peer: unknown command {line:?}"),
        }
    }
}

/// What a raw swarm tells, one per event, the clock read first. The in-process side gets them
/// over a channel; a `dpin-bench raw-peer` child prints them on stdout ([`PeerLine::line`]).
#[derive(Clone, Debug, PartialEq, Eq)]
enum PeerLine {
    /// `listen ADDR`: its address, with `/p2p/PEER_ID`.
    Listen(Multiaddr),
    /// `mesh K`: its topic mesh now has K peers (told when it changes).
    Mesh(usize),
    /// `sent M T`: message M handed to gossipsub at T (host monotonic µs), just after the
    /// clock was read.
    Sent(u64, u64),
    /// `fail M`: gossipsub refused to publish message M.
    Fail(u64),
    /// `got M T`: message M received at T (host monotonic µs).
    Got(u64, u64),
}

impl PeerLine {
    /// Its line on a child's stdout.
    fn line(&self) -> String {
        match self {
            PeerLine::Listen(a) => format!("listen {a}"),
            PeerLine::Mesh(k) => format!("mesh {k}"),
            PeerLine::Sent(m, t) => format!("sent {m} {t}"),
            PeerLine::Fail(m) => format!("fail {m}"),
            PeerLine::Got(m, t) => format!("got {m} {t}"),
        }
    }
}

/// Parses [`PeerLine::line`]'s form; `None` for anything else.
fn parse_peer_line(line: &str) -> Option<PeerLine> {
    let mut words = line.split_whitespace();
    let kind = words.next()?;
    let mut num = || words.next().and_then(|w| w.parse::<u64>().ok());
    let parsed = match kind {
        "listen" => PeerLine::Listen(line["listen".len()..].trim().parse().ok()?),
        "mesh" => PeerLine::Mesh(usize::try_from(num()?).ok()?),
        "sent" => PeerLine::Sent(num()?, num()?),
        "fail" => PeerLine::Fail(num()?),
        "got" => PeerLine::Got(num()?, num()?),
        _ => return None,
    };
    Some(parsed)
}

/// A bench message's payload: its number, then padding to `payload_bytes` (unique content:
/// message ids are content hashes).
fn raw_payload(m: u64, payload_bytes: usize) -> Vec<u8> {
    let mut data = m.to_le_bytes().to_vec();
    data.extend(std::iter::repeat_n(0xa5u8, payload_bytes.saturating_sub(8)));
    data
}

/// Runs one raw swarm ([`raw_swarm`]) until `cmds` ends: listens on loopback, dials and
/// publishes as told, accepts every message it receives (strict validation needs the
/// verdict before forwarding), and tells `tell` each [`PeerLine`] as it happens. Ends early
/// when `tell` returns false (nobody listens any more).
async fn drive_raw_swarm(
    nodes: usize,
    mut cmds: mpsc::UnboundedReceiver<SwarmCmd>,
    mut tell: impl FnMut(PeerLine) -> bool,
) -> Result<()> {
    let topic = IdentTopic::new("dpin-propbench");
    let mut s = raw_swarm(nodes, &topic)?;
    s.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let me = *s.local_peer_id();
    let mut mesh_tick = tokio::time::interval(Duration::from_millis(50));
    let mut last_mesh = None;
    loop {
        let told = tokio::select! {
            cmd = cmds.recv() => match cmd {
                None => return Ok(()),
                Some(SwarmCmd::Dial(addr)) => {
                    s.dial(addr).context("dial")?;
                    true
                }
                Some(SwarmCmd::Publish(m, bytes)) => {
                    let data = raw_payload(m, bytes);
                    let t = dpin_node::clock::host_mono_us();
                    match s.behaviour_mut().publish(topic.clone(), data) {
                        Ok(_) => tell(PeerLine::Sent(m, t)),
                        Err(_) => tell(PeerLine::Fail(m)),
                    }
                }
            },
            ev = s.select_next_some() => match ev {
                SwarmEvent::NewListenAddr { address, .. } => {
                    tell(PeerLine::Listen(address.with(Protocol::P2p(me))))
                }
                SwarmEvent::Behaviour(gossipsub::Event::Message {
                    propagation_source,
                    message_id,
                    message,
                }) => {
                    let at = dpin_node::clock::host_mono_us();
                    s.behaviour_mut().report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        MessageAcceptance::Accept,
                    );
                    let id = message.data.get(..8).and_then(|b| b.try_into().ok());
                    id.is_none_or(|id| tell(PeerLine::Got(u64::from_le_bytes(id), at)))
                }
                _ => true,
            },
            _ = mesh_tick.tick() => {
                let k = s.behaviour().mesh_peers(&topic.hash()).count();
                if last_mesh == Some(k) {
                    true
                } else {
                    last_mesh = Some(k);
                    tell(PeerLine::Mesh(k))
                }
            }
        };
        if !told {
            return Ok(());
        }
    }
}

/// Raw gossipsub, the `N` swarms in this process (sharing its runtime's two threads), each
/// driven by [`drive_raw_swarm`] and measured by [`measure_raw`].
async fn raw_side(n: usize, args: &PropagationArgs) -> Result<Side> {
    let (note_tx, mut notes) = mpsc::unbounded_channel::<(usize, PeerLine)>();
    let mut cmds = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        cmds.push(cmd_tx);
        let note_tx = note_tx.clone();
        tasks.push(tokio::spawn(drive_raw_swarm(n, cmd_rx, move |l| {
            note_tx.send((i, l)).is_ok()
        })));
    }
    drop(note_tx);
    let me = std::process::id();
    let r = measure_raw(n, args, "raw: this process", &cmds, &mut notes, || {
        cluster::cpu_ticks(me)
    })
    .await;
    drop(cmds);
    for t in tasks {
        t.abort();
    }
    r
}

/// `dpin-bench raw-peer`: one raw swarm in this process ([`drive_raw_swarm`]), for
/// [`raw_procs_side`]. Reads [`SwarmCmd`] lines on stdin and prints [`PeerLine`]s on stdout,
/// each as it happens; the clock is read before the line is written, so the write is not in
/// the times. Ends when stdin closes, or with an error on a line it does not know.
pub async fn raw_peer(args: &RawPeerArgs) -> Result<()> {
    use std::io::Write as _;
    use tokio::io::AsyncBufReadExt as _;
    if args.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let commands = async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await.context("reading stdin")? {
            if cmd_tx.send(SwarmCmd::parse(&line)?).is_err() {
                break;
            }
        }
        Ok(())
    };
    // One line per write (stdout is line-buffered); a closed pipe means the bench is gone.
    let swarm = drive_raw_swarm(args.nodes, cmd_rx, |l| {
        writeln!(std::io::stdout(), "{}", l.line()).is_ok()
    });
    tokio::select! {
        r = commands => r,
        r = swarm => r,
    }
}

/// The raw side again with each swarm in its own process: `n` children of `exe`
/// (`dpin-bench raw-peer`), driven over their stdin and stdout, measured by [`measure_raw`]
/// as the in-process side is. Between this and the in-process side is what one process per
/// node costs on this machine (waking another process on another core, for every hop)
/// before any of dpin's own work.
pub async fn raw_procs_side(
    n: usize,
    args: &PropagationArgs,
    exe: &std::path::Path,
) -> Result<Side> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let mut children = Vec::with_capacity(n);
    let mut cmds = Vec::with_capacity(n);
    let (note_tx, mut notes) = mpsc::unbounded_channel::<(usize, PeerLine)>();
    for i in 0..n {
        let mut child = tokio::process::Command::new(exe)
            .args(["raw-peer", "--nodes", &n.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} raw-peer", exe.display()))?;
        let out = child.stdout.take().context("raw-peer stdout")?;
        let mut stdin = child.stdin.take().context("raw-peer stdin")?;
        children.push(child);
        let note_tx = note_tx.clone();
        tokio::spawn(async move {
            let mut out = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(l)) = out.next_line().await {
                if let Some(parsed) = parse_peer_line(&l) {
                    if note_tx.send((i, parsed)).is_err() {
                        return;
                    }
                }
            }
        });
        let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<SwarmCmd>();
        cmds.push(cmd_tx);
        tokio::spawn(async move {
            while let Some(cmd) = cmd_rx.recv().await {
                let line = format!("{}\n", cmd.line());
                if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
                    return;
                }
            }
        });
    }
    drop(note_tx);
    let pids: Vec<u32> = children.iter().filter_map(|c| c.id()).collect();
    let r = measure_raw(
        n,
        args,
        &format!("raw, one process per swarm: the {n} processes"),
        &cmds,
        &mut notes,
        || Some(pids.iter().filter_map(|&p| cluster::cpu_ticks(p)).sum()),
    )
    .await;
    drop(cmds);
    for mut c in children {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    r
}

/// The raw measurement over `n` swarms, wherever they run: told through `cmds` (one sender
/// per swarm), heard through `notes` (swarm index, [`PeerLine`]). Collects the listen
/// addresses, dials [`dial_targets`], waits until every mesh has the node's low mark of
/// peers and a second more, then publishes `--messages` messages at rotating origins, each
/// timed from the origin's `publish` to the last receipt on the host's monotonic clock
/// (receipts may be heard before the origin's `sent`). Prints the CPU `cpu` (clock ticks)
/// says `who` spent meanwhile.
async fn measure_raw(
    n: usize,
    args: &PropagationArgs,
    who: &str,
    cmds: &[mpsc::UnboundedSender<SwarmCmd>],
    notes: &mut mpsc::UnboundedReceiver<(usize, PeerLine)>,
    cpu: impl Fn() -> Option<u64>,
) -> Result<Side> {
    let tell = |i: usize, cmd: SwarmCmd| {
        cmds[i]
            .send(cmd)
            .map_err(|_| anyhow!("raw swarm {i} stopped"))
    };
    let mut addrs: Vec<Option<Multiaddr>> = vec![None; n];
    let mut mesh = vec![0usize; n];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while addrs.iter().any(Option::is_none) {
        match tokio::time::timeout_at(deadline, notes.recv()).await {
            Ok(Some((i, PeerLine::Listen(a)))) => addrs[i] = Some(a),
            Ok(Some((i, PeerLine::Mesh(k)))) => mesh[i] = k,
            Ok(Some(_)) => {}
            Ok(None) => bail!("a raw swarm ended before it listened"),
            Err(_) => bail!("raw swarms did not all listen within 10 s at N={n}"),
        }
    }
    let addrs: Vec<Multiaddr> = addrs.into_iter().flatten().collect();
    for i in 0..n {
        for j in dial_targets(i, n) {
            tell(i, SwarmCmd::Dial(addrs[j].clone()))?;
        }
    }
    let mesh_low = dpin_node::net::MeshParams::for_cluster(n).n_low.min(n - 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while mesh.iter().any(|&k| k < mesh_low) {
        match tokio::time::timeout_at(deadline, notes.recv()).await {
            Ok(Some((i, PeerLine::Mesh(k)))) => mesh[i] = k,
            Ok(Some(_)) => {}
            Ok(None) => bail!("a raw swarm ended before its mesh formed"),
            Err(_) => bail!("raw gossipsub meshes did not form within 30 s at N={n}"),
        }
    }
    // Let the first heartbeats settle the meshes, as the dpin side waits for its peers.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let timeout = Duration::from_millis(args.timeout_ms);
    let (cpu_before, t_start) = (cpu(), Instant::now());
    let mut samples = Vec::with_capacity(args.messages);
    let mut lost = 0;
    for m in 0..args.messages as u64 {
        let origin = (m % n as u64) as usize;
        tell(origin, SwarmCmd::Publish(m, args.payload_bytes))?;
        let (mut sent, mut failed) = (None, false);
        let mut seen = vec![false; n];
        seen[origin] = true;
        let mut last = 0u64;
        let end = tokio::time::Instant::now() + timeout;
        while !failed && (sent.is_none() || seen.iter().any(|s| !s)) {
            match tokio::time::timeout_at(end, notes.recv()).await {
                Ok(Some((i, PeerLine::Sent(id, t)))) if id == m && i == origin => sent = Some(t),
                Ok(Some((i, PeerLine::Fail(id)))) if id == m && i == origin => failed = true,
                Ok(Some((i, PeerLine::Got(id, t)))) if id == m && !seen[i] => {
                    seen[i] = true;
                    last = last.max(t);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        match sent {
            Some(t0) if !failed && seen.iter().all(|s| *s) => {
                samples.push(Duration::from_micros(last.saturating_sub(t0)));
            }
            _ => lost += 1,
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    if let (Some(a), Some(b)) = (cpu_before, cpu()) {
        eprintln!(
            "propagation: N={n} {who} {}",
            cpu_per_message(b.saturating_sub(a), t_start.elapsed(), args.messages, n)
        );
    }
    Ok(side(samples, lost, 0))
}

// ---------------------------------------------------------------------------------------------
// dpin processes

async fn dpin_side(
    n: usize,
    args: &PropagationArgs,
    dpin: &std::path::Path,
    dir: &std::path::Path,
) -> Result<Vec<(Observe, Side)>> {
    let opts = ClusterOptions {
        dpin: dpin.to_owned(),
        base_dir: dir.to_owned(),
        nodes: n,
        dns: true,
        layout: Layout::Loopback,
        node_args: vec![
            "--no-probe".to_owned(),
            "--expected-nodes".to_owned(),
            n.to_string(),
        ],
        faketime: None,
    };
    let mut cluster = Cluster::start(&opts).await?;
    let r = dpin_measure(&cluster, n, args).await;
    if r.is_ok() {
        eprintln!("propagation: N={n}: {}", gossip_paths(&cluster).await);
    }
    cluster.shutdown().await;
    r
}

/// Live peers every dpin node must see before the measurement starts (or all the others,
/// in a smaller cluster): more than gossipsub's mesh target (6), fewer than the node's
/// target degree (12), which a node reaches only as discovery finds peers.
const READY_PEERS: usize = 8;

/// How the records travelled, summed over every node's `/metrics`: applied from gossip or
/// from anti-entropy, gossip copies ignored or dropped, and gossip not handed to a slow peer.
/// A record that reached a node by sync or by gossipsub's IHAVE/IWANT instead of the mesh
/// push explains a tail the times alone cannot.
async fn gossip_paths(cluster: &Cluster) -> String {
    let Ok(api) = Api::new() else {
        return "metrics: no HTTP client".to_owned();
    };
    let mut sum = std::collections::BTreeMap::<&str, f64>::new();
    let wanted = [
        (
            "gossip applied",
            "dpin_records_total{path=\"gossip\",outcome=\"applied\"}",
        ),
        (
            "sync applied",
            "dpin_records_total{path=\"sync\",outcome=\"applied\"}",
        ),
        ("gossip ignored", "dpin_gossip_ignored_total"),
        (
            "gossip dropped",
            "dpin_records_total{path=\"gossip\",outcome=\"dropped\"}",
        ),
        (
            "undelivered (queue full)",
            "dpin_net_gossip_undelivered_total{reason=\"queue_full\"}",
        ),
        (
            "undelivered (timeout)",
            "dpin_net_gossip_undelivered_total{reason=\"timeout\"}",
        ),
    ];
    let mut answered = 0;
    for info in cluster.nodes.iter().filter_map(|p| p.info.as_ref()) {
        let Some(m) = api.metrics(info.api, Duration::from_secs(2)).await else {
            continue;
        };
        answered += 1;
        for (label, key) in wanted {
            *sum.entry(label).or_default() += m.get(key).copied().unwrap_or(0.0);
        }
    }
    let parts: Vec<String> = wanted
        .iter()
        .map(|(label, _)| format!("{label} {}", sum.get(label).copied().unwrap_or(0.0)))
        .collect();
    format!("{answered} nodes: {}", parts.join(", "))
}

async fn dpin_measure(
    cluster: &Cluster,
    n: usize,
    args: &PropagationArgs,
) -> Result<Vec<(Observe, Side)>> {
    let api = Api::new()?;
    // A node keeps a target degree (12), not a full mesh, so past 13 nodes "every node sees
    // every other" never holds; ready means every node has a gossip mesh's worth of peers.
    let want = (n - 1).min(READY_PEERS);
    if !cluster
        .wait_connected(&api, want, Duration::from_secs(60))
        .await
    {
        bail!("some dpin node saw fewer than {want} peers within 60 s at N={n}");
    }
    let targets: Vec<(SocketAddr, SocketAddr)> = cluster
        .nodes
        .iter()
        .filter_map(|p| p.info.as_ref())
        .filter_map(|i| Some((i.api, i.dns?)))
        .collect();
    if targets.len() != n {
        bail!("only {} of {n} dpin nodes serve DNS", targets.len());
    }
    // Gossip meshes form within tens of ms of the connections; give heartbeats a moment too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pids: Vec<u32> = cluster.nodes.iter().filter_map(|p| p.pid()).collect();
    let cpu = || -> u64 { pids.iter().filter_map(|&p| cluster::cpu_ticks(p)).sum() };
    let mut out = Vec::new();
    for &observe in &args.observe {
        let (before, t) = (cpu(), Instant::now());
        let bench_before = cluster::cpu_ticks(std::process::id());
        out.extend(measure(&api, &targets, n, observe, args).await?);
        // What the nodes spent per message, all of them together: on a machine with few
        // cores this, not the network, bounds how fast a message can reach every node.
        let spent = cpu().saturating_sub(before);
        if let (Some(a), Some(b)) = (bench_before, cluster::cpu_ticks(std::process::id())) {
            eprintln!(
                "propagation: N={n} {}: the bench's observers and publisher used {:.0} ms",
                observe.as_str(),
                b.saturating_sub(a) as f64 * 1e3 / cluster::clock_ticks()
            );
        }
        eprintln!(
            "propagation: N={n} {}: the {n} nodes {}",
            observe.as_str(),
            cpu_per_message(spent, t.elapsed(), args.messages, n)
        );
    }
    Ok(out)
}

/// Publishes `--messages` records at rotating origins and times each one's arrival at
/// every node, observed the `observe` way: one side, and for `wait` a second one on the
/// nodes' own clocks ([`Observe::Applied`]).
async fn measure(
    api: &Api,
    targets: &[(SocketAddr, SocketAddr)],
    n: usize,
    observe: Observe,
    args: &PropagationArgs,
) -> Result<Vec<(Observe, Side)>> {
    let key = ZoneKey::from_seed(*blake3::hash(format!("propbench {n}").as_bytes()).as_bytes());
    let timeout = Duration::from_millis(args.timeout_ms);
    let run = std::process::id();
    let mut samples = Vec::with_capacity(args.messages);
    let mut lost = 0;
    let mut dns_timeouts = 0;
    let mut at_origin = Vec::with_capacity(args.messages);
    // The writer's wait: the publish's send to its answer, which the origin gives once it
    // has committed the record (fsync). Not part of the propagation, which runs meanwhile,
    // but what a writer pays, and what a change that moves the commit's place moves.
    let mut acked = Vec::with_capacity(args.messages);
    let mut spread = Vec::with_capacity(args.messages);
    // On the nodes' clocks (wait only): publish sent to last apply, origin's apply to last.
    let mut applied = Vec::with_capacity(args.messages);
    let mut applied_spread = Vec::with_capacity(args.messages);
    let mut unstamped = 0;
    for m in 0..args.messages {
        let origin = m % n;
        let label = format!("p{run}-{}-{m}", observe.as_str());
        let (record, addr) = bench_record(&key, &label, 200, m, 600_000)?;
        let timeouts = Arc::new(AtomicUsize::new(0));
        // Observers first, so none misses the first moment its node has the record. Each
        // ends with when it saw the record and, for a blocking read, when its node applied
        // it on the host's monotonic clock.
        type Seen = Option<(Instant, Option<u64>)>;
        let observers: Vec<tokio::task::JoinHandle<Seen>> = match observe {
            Observe::Wait | Observe::Applied => {
                let name = record.name();
                let observers = targets
                    .iter()
                    .map(|&(http, _)| {
                        let (api, name) = (api.clone(), name.clone());
                        tokio::spawn(async move {
                            let held = api.wait_seq(http, &name, 1, timeout).await;
                            let seen = Instant::now();
                            held.filter(|&(s, _)| s >= 1).map(|(_, at)| (seen, at))
                        })
                    })
                    .collect();
                // Each reader's request reaches its node and registers before the write
                // (one keep-alive HTTP request on loopback, well under this pause); one that
                // registered late answers at once, later than the arrival: the figure errs
                // high, never low.
                tokio::time::sleep(Duration::from_millis(5)).await;
                observers
            }
            Observe::Dns => dns_pollers(targets, &record, addr, timeout, &timeouts, args)
                .into_iter()
                .map(|p| tokio::spawn(async move { p.await.ok().flatten().map(|t| (t, None)) }))
                .collect(),
        };
        let t0 = Instant::now();
        let t0_us = dpin_node::clock::host_mono_us();
        let w = api.publish(targets[origin].0, &record, timeout).await;
        acked.push(t0.elapsed());
        if !matches!(w.outcome, OpOutcome::Applied) {
            eprintln!(
                "propagation: publish {m} at node {origin}: {:?} {:?}",
                w.outcome, w.detail
            );
        }
        let mut last = Some(t0);
        let mut origin_seen = None;
        let mut stamps = Vec::with_capacity(targets.len());
        for (k, p) in observers.into_iter().enumerate() {
            let seen = p.await.ok().flatten();
            stamps.push(seen.and_then(|(_, at)| at));
            if k == origin {
                if let Some((t, _)) = seen {
                    at_origin.push(t.duration_since(t0));
                    origin_seen = Some(t);
                }
            }
            last = match (last, seen) {
                (Some(a), Some((b, _))) => Some(a.max(b)),
                _ => None,
            };
        }
        if let (Some(o), Some(l)) = (origin_seen, last) {
            spread.push(l.saturating_duration_since(o));
        }
        if observe == Observe::Wait && last.is_some() {
            match on_node_clocks(t0_us, &stamps, origin) {
                Some((whole, from_origin)) => {
                    applied.push(whole);
                    applied_spread.push(from_origin);
                }
                None => unstamped += 1,
            }
        }
        match last {
            Some(t) => samples.push(t.duration_since(t0)),
            None => lost += 1,
        }
        if timeouts.load(Ordering::Relaxed) > 0 {
            dns_timeouts += 1;
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    at_origin.sort();
    spread.sort();
    acked.sort();
    eprintln!(
        "propagation: N={n} {}: publish acknowledged (committed at the origin) p50 {:.2} ms, p99 {:.2} ms",
        observe.as_str(),
        quantile_ms(&acked, 0.5),
        quantile_ms(&acked, 0.99)
    );
    eprintln!(
        "propagation: N={n} {}: seen at the origin itself p50 {:.2} ms, p99 {:.2} ms; origin to last node p50 {:.2} ms, p99 {:.2} ms",
        observe.as_str(),
        quantile_ms(&at_origin, 0.5),
        quantile_ms(&at_origin, 0.99),
        quantile_ms(&spread, 0.5),
        quantile_ms(&spread, 0.99)
    );
    let mut sides = vec![(observe, side(samples, lost, dns_timeouts))];
    if observe == Observe::Wait {
        applied_spread.sort();
        eprintln!(
            "propagation: N={n} applied (the nodes' clocks): origin's apply to the last node's p50 {:.2} ms, p99 {:.2} ms; {unstamped} messages without every node's stamp left out",
            quantile_ms(&applied_spread, 0.5),
            quantile_ms(&applied_spread, 0.99)
        );
        sides.push((Observe::Applied, side(applied, lost, 0)));
    }
    Ok(sides)
}

/// One message on the nodes' clocks: from `sent_us` (the bench's reading just before the
/// publish) to the last node's apply, and from the origin's apply to the last node's, given
/// every node's apply stamp (host monotonic µs) in node order. `None` unless every node
/// stamped it: a node that answered without a stamp (its read registered after the record
/// arrived) has no time to offer, and the last apply is not known without it.
fn on_node_clocks(
    sent_us: u64,
    stamps: &[Option<u64>],
    origin: usize,
) -> Option<(Duration, Duration)> {
    let origin_us = (*stamps.get(origin)?)?;
    let last_us = stamps
        .iter()
        .try_fold(sent_us, |last, s| s.map(|s| last.max(s)))?;
    Some((
        Duration::from_micros(last_us - sent_us),
        Duration::from_micros(last_us - origin_us),
    ))
}

/// One DNS poller per node for `record`'s name, each asking until its node answers `addr`.
/// They start polling at once (the name does not exist yet, so the first answers are
/// NXDOMAIN): a start signal through `Notify::notify_waiters` would be lost by any poller
/// not yet waiting on it, which then never ends (that hung the first version of this bench).
fn dns_pollers(
    targets: &[(SocketAddr, SocketAddr)],
    record: &dpin_protocol::SignedRecord,
    addr: Ipv4Addr,
    timeout: Duration,
    timeouts: &Arc<AtomicUsize>,
    args: &PropagationArgs,
) -> Vec<tokio::task::JoinHandle<Option<Instant>>> {
    let qname = format!("{}.dpin.", record.name());
    let poll = Duration::from_micros(args.poll_us);
    let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    targets
        .iter()
        .enumerate()
        .map(|(k, &(_, dns))| {
            let qname = qname.clone();
            let timeouts = timeouts.clone();
            tokio::spawn(async move {
                let end = Instant::now() + timeout;
                let mut id = (k as u16).wrapping_mul(7919);
                while Instant::now() < end {
                    id = id.wrapping_add(1);
                    let q = dnsq::query_a(bind, dns, &qname, id, Duration::from_millis(200));
                    match q.await {
                        Ok(DnsAnswer::Addrs(a)) if a.contains(&addr) => {
                            return Some(Instant::now());
                        }
                        Err(dnsq::DnsError::Timeout) => {
                            timeouts.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    tokio::time::sleep(poll).await;
                }
                None
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_clock_times_run_to_the_last_apply_and_need_every_nodes_stamp() {
        let ms = Duration::from_millis;
        // Sent at 1,000 µs; the origin (node 1) applied at 1,300, the others at 1,900 and
        // 2,500.
        let stamps = [Some(1_900), Some(1_300), Some(2_500)];
        assert_eq!(
            on_node_clocks(1_000, &stamps, 1),
            Some((Duration::from_micros(1_500), Duration::from_micros(1_200)))
        );
        // One node without a stamp: no figure, whichever node it is.
        assert_eq!(
            on_node_clocks(1_000, &[Some(1_900), None, Some(2_500)], 1),
            None
        );
        assert_eq!(
            on_node_clocks(1_000, &[None, Some(1_300), Some(2_500)], 1),
            None
        );
        // A stamp before the send (another host's clock, a bug) never makes a negative time.
        assert_eq!(
            on_node_clocks(5_000, &[Some(1_000), Some(2_000)], 0),
            Some((ms(0), Duration::from_micros(4_000)))
        );
        assert_eq!(on_node_clocks(1_000, &stamps, 7), None, "no such origin");
    }

    #[test]
    fn raw_peer_lines_and_commands_parse_and_anything_else_is_refused() {
        let addr =
            "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        assert_eq!(
            parse_peer_line(&format!("listen {addr}")),
            Some(PeerLine::Listen(addr.parse().expect("an address")))
        );
        assert_eq!(parse_peer_line("mesh 4"), Some(PeerLine::Mesh(4)));
        assert_eq!(
            parse_peer_line("sent 7 123456"),
            Some(PeerLine::Sent(7, 123_456))
        );
        assert_eq!(
            parse_peer_line("got 7 123999"),
            Some(PeerLine::Got(7, 123_999))
        );
        assert_eq!(parse_peer_line("fail 9"), Some(PeerLine::Fail(9)));
        for junk in [
            "",
            "got",
            "got 7",
            "sent x 1",
            "mesh -1",
            "listen nonsense",
            "hello 1 2",
        ] {
            assert_eq!(parse_peer_line(junk), None, "{junk:?}");
        }
        // Every line a swarm tells reads back as itself, and so does every command.
        for l in [
            PeerLine::Listen(addr.parse().expect("an address")),
            PeerLine::Mesh(4),
            PeerLine::Sent(7, 123_456),
            PeerLine::Fail(9),
            PeerLine::Got(7, 123_999),
        ] {
            assert_eq!(parse_peer_line(&l.line()), Some(l.clone()), "{l:?}");
        }
        for c in [
            SwarmCmd::Dial(addr.parse().expect("an address")),
            SwarmCmd::Publish(3, 200),
        ] {
            assert_eq!(SwarmCmd::parse(&c.line()).ok(), Some(c.clone()), "{c:?}");
        }
        for junk in ["", "dial", "pub 1", "pub x 200", "pub 1 200 9", "hello"] {
            assert!(SwarmCmd::parse(junk).is_err(), "{junk:?}");
        }
        // The payload carries its number first, padded to the size asked for.
        let p = raw_payload(7, 200);
        assert_eq!((p.len(), &p[..8]), (200, &7u64.to_le_bytes()[..]));
        assert_eq!(raw_payload(7, 3).len(), 8);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&v, 0.5), 50.0);
        assert_eq!(quantile_ms(&v, 0.99), 99.0);
        assert_eq!(quantile_ms(&v[..1], 0.99), 1.0);
        assert!(quantile_ms(&[], 0.5).is_nan());
    }

    #[test]
    fn raw_topology_is_a_full_mesh_when_small_and_about_degree_12_when_large() {
        // Every pair dialled exactly once at N = 5.
        let mut pairs: Vec<(usize, usize)> = (0..5)
            .flat_map(|i| {
                dial_targets(i, 5)
                    .into_iter()
                    .map(move |j| (j.min(i), j.max(i)))
            })
            .collect();
        pairs.sort();
        pairs.dedup();
        assert_eq!(pairs.len(), 10);
        // At N = 20 each node dials 6 and is dialled by 6.
        let dialled_by = (0..20)
            .flat_map(|i| dial_targets(i, 20))
            .filter(|&j| j == 0)
            .count();
        assert_eq!(dial_targets(0, 20).len() + dialled_by, 12);
    }
}
