//! Calibration of the gossip model against real gossipsub (issue 11 item 3).
//!
//! For each size N it runs, one after the other:
//!
//! * **real**: N rust-libp2p 0.56 gossipsub swarms in this process (loopback TCP, noise,
//!   yamux, signed messages, strict validation with an explicit `Accept` before forwarding,
//!   blake3 message ids, 500 ms heartbeats, flood publish, `history_length` 10 /
//!   `history_gossip` 6) with the mesh parameters the model uses for N (the node's
//!   [`dpin_node::net::MeshParams`]), connected along exactly the connection graph the model
//!   builds for the same seed, each connection dialed by the node that dialed it in the
//!   model (gossipsub keeps D_out of a mesh outbound). Once every mesh has formed,
//!   `messages` messages are published one at a time from rotating origins; each is awaited
//!   at every node, then the network is left quiet for [`QUIET_MS`] so late copies count
//!   against the right message.
//! * **model**: the simulator's convergence scenario with the same N, seed, mesh and number of
//!   updates, and 1 ms ± 1 ms links (in-process swarms have sub-millisecond links; the
//!   figures compared are structural, not times).
//!
//! What is compared, per delivery:
//!
//! * **hops**: a real node's hop count is its first sender's plus one (gossipsub's
//!   `propagation_source` of the first copy, the origin at 0), so the first-delivery tree is
//!   measured, not inferred. Compared: the mean over every node holding the update (the
//!   origin at 0, as the model's report counts), and the hops of the node reached last.
//! * **duplicates**: every full message a real node receives passes gossipsub's
//!   `message_id_fn` once before its duplicate check (and the origin's publish once), so the
//!   calls counted in that function minus the publish are the full-message receipts, and
//!   receipts − (N − 1) are the duplicates. Compared: duplicates per node per update, the
//!   model's `duplicates_per_delivery`.
//!
//! Tolerance ([`HOPS_TOLERANCE`], [`DUP_TOLERANCE`]): mean hops within ±0.5 hop, and
//! duplicates per node per update within ±25 % (or ±0.5 copies when both are small).
//!
//! Command: `dpin-sim simulate --calibrate 3,5,20,40 --updates 60` (or the ignored
//! test `calibrate_model_against_real_gossipsub` in `sim/tests/simulate_calibrate.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity, ValidationMode};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, Swarm};
use tokio::sync::mpsc;

use super::world::World;
use super::{scenarios, NodeId, Scenario, SimulateArgs};

/// Quiet time after each message is everywhere, before the next one, ms.
pub const QUIET_MS: u64 = 300;
/// Most a model's mean hop count may differ from the real one.
pub const HOPS_TOLERANCE: f64 = 0.5;
/// Most a model's duplicates per delivery may differ from the real ones, relative.
pub const DUP_TOLERANCE: f64 = 0.25;
/// Absolute slack for duplicates when both figures are small.
pub const DUP_SLACK: f64 = 0.5;

/// Structural figures of one side.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Figures {
    /// Mean hops of first deliveries.
    pub hops_mean: f64,
    /// Hops of the node each update reached last (max over updates).
    pub hops_last: u16,
    /// Duplicate copies per node per update.
    pub duplicates_per_delivery: f64,
    /// Full-message receipts per node per update.
    pub receipts_per_node: f64,
    /// Updates that reached every node.
    pub delivered: usize,
}

/// One row of the calibration table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// Nodes.
    pub nodes: usize,
    /// Mesh D / D_lo / D_hi.
    pub mesh: (usize, usize, usize),
    /// Real gossipsub.
    pub real: Figures,
    /// The model.
    pub model: Figures,
    /// Whether the model is within the tolerance.
    pub within: bool,
}

impl Row {
    /// The row as one line of text.
    pub fn text(&self) -> String {
        format!(
            "N={:<3} D={}/{}/{}  hops mean real {:.2} model {:.2}  last real {} model {}  dup/delivery real {:.2} model {:.2}  {}",
            self.nodes,
            self.mesh.0,
            self.mesh.1,
            self.mesh.2,
            self.real.hops_mean,
            self.model.hops_mean,
            self.real.hops_last,
            self.model.hops_last,
            self.real.duplicates_per_delivery,
            self.model.duplicates_per_delivery,
            if self.within { "within" } else { "OUTSIDE" }
        )
    }
}

/// Whether `model` is within the stated tolerance of `real`.
pub fn within(real: &Figures, model: &Figures) -> bool {
    let hops = (real.hops_mean - model.hops_mean).abs() <= HOPS_TOLERANCE;
    let d = (real.duplicates_per_delivery - model.duplicates_per_delivery).abs();
    let dup = d <= DUP_TOLERANCE * real.duplicates_per_delivery.max(1e-9) || d <= DUP_SLACK;
    hops && dup && real.delivered == model.delivered
}

/// Runs the calibration at each size, `messages` updates per size, topology from `seed`.
pub fn calibrate(sizes: &[usize], messages: usize, seed: u64) -> Result<Vec<Row>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let mut rows = Vec::new();
    for &n in sizes {
        if n < 2 {
            bail!("calibration needs at least 2 nodes");
        }
        let mut args = SimulateArgs::new(Scenario::Convergence, n, seed);
        args.latency = "1,1".into();
        args.updates = messages.max(1);
        args.idle_s = 1;
        let cfg = args
            .world_config(seed)
            .map_err(|e| anyhow!("model config: {e}"))?;
        let mesh = cfg.mesh;
        let topo = World::new(cfg.clone()).map_err(|e| anyhow!("model world: {e}"))?;
        let peers: Vec<Vec<NodeId>> = topo.nodes.iter().map(|x| x.peers.clone()).collect();
        // Who dialed whom: gossipsub keeps D_out of a mesh outbound.
        let dialed: Vec<Vec<NodeId>> = topo.nodes.iter().map(|x| x.dialed.clone()).collect();
        drop(topo);
        let r = scenarios::run(Scenario::Convergence, cfg, &args.params())
            .map_err(|e| anyhow!("model run: {e}"))?;
        let model = Figures {
            hops_mean: r.hops_mean.unwrap_or(0.0),
            hops_last: r.hops_last.unwrap_or(0),
            duplicates_per_delivery: r.duplicates_per_delivery.unwrap_or(0.0),
            receipts_per_node: r.sends_per_node_per_update.unwrap_or(0.0),
            delivered: args.updates,
        };
        let real = rt.block_on(real_side(n, &peers, &dialed, mesh, args.updates))?;
        rows.push(Row {
            nodes: n,
            mesh: (mesh.n, mesh.n_low, mesh.n_high),
            within: within(&real, &model),
            real,
            model,
        });
    }
    Ok(rows)
}

fn config(mesh: super::Mesh, receipts: Arc<AtomicU64>) -> Result<gossipsub::Config> {
    gossipsub::ConfigBuilder::default()
        .validation_mode(ValidationMode::Strict)
        .validate_messages()
        .message_id_fn(move |m: &gossipsub::Message| {
            receipts.fetch_add(1, Ordering::Relaxed);
            gossipsub::MessageId::new(blake3::hash(&m.data).as_bytes())
        })
        .mesh_n(mesh.n)
        .mesh_n_low(mesh.n_low)
        .mesh_n_high(mesh.n_high)
        .mesh_outbound_min(mesh.outbound_min)
        .gossip_lazy(mesh.lazy)
        .heartbeat_interval(Duration::from_millis(500))
        .heartbeat_initial_delay(Duration::from_millis(100))
        .history_length(10)
        .history_gossip(6)
        .build()
        .map_err(|e| anyhow!("gossipsub config: {e}"))
}

fn swarm(
    mesh: super::Mesh,
    topic: &IdentTopic,
    receipts: Arc<AtomicU64>,
) -> Result<Swarm<gossipsub::Behaviour>> {
    let key = libp2p::identity::Keypair::generate_ed25519();
    let behaviour = gossipsub::Behaviour::new(
        MessageAuthenticity::Signed(key.clone()),
        config(mesh, receipts)?,
    )
    .map_err(|e| anyhow!("gossipsub: {e}"))?;
    let mut s = libp2p::SwarmBuilder::with_existing_identity(key)
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
    s.behaviour_mut()
        .subscribe(topic)
        .map_err(|e| anyhow!("subscribe: {e}"))?;
    Ok(s)
}

/// A first delivery: (node, message number, first sender).
type Arrival = (usize, u64, PeerId);

async fn real_side(
    n: usize,
    peers: &[Vec<NodeId>],
    dialed: &[Vec<NodeId>],
    mesh: super::Mesh,
    messages: usize,
) -> Result<Figures> {
    let topic = IdentTopic::new("dpin-calibrate");
    let receipts = Arc::new(AtomicU64::new(0));
    let mut swarms = Vec::with_capacity(n);
    let mut addrs: Vec<Multiaddr> = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = swarm(mesh, &topic, receipts.clone())?;
        s.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
        let addr = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let SwarmEvent::NewListenAddr { address, .. } = s.select_next_some().await {
                    return address;
                }
            }
        })
        .await
        .context("a swarm did not start listening")?;
        addrs.push(addr.with(Protocol::P2p(*s.local_peer_id())));
        swarms.push(s);
    }
    let index: HashMap<PeerId, usize> = swarms
        .iter()
        .enumerate()
        .map(|(i, s)| (*s.local_peer_id(), i))
        .collect();
    // The model's connection graph, each edge dialed by the node that dialed it there.
    for (i, s) in swarms.iter_mut().enumerate() {
        for &p in dialed.get(i).map_or(&[][..], |v| &v[..]) {
            if (p as usize) < n {
                s.dial(addrs[p as usize].clone())?;
            }
        }
    }
    let mesh_low = mesh.n_low;
    let meshed: Arc<Vec<AtomicUsize>> = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
    let (arrive_tx, mut arrive_rx) = mpsc::unbounded_channel::<Arrival>();
    let mut publishers = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for (i, mut s) in swarms.into_iter().enumerate() {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        publishers.push(tx);
        let (topic, meshed, arrive_tx) = (topic.clone(), meshed.clone(), arrive_tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut mesh_tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    cmd = rx.recv() => {
                        let Some(data) = cmd else { return };
                        let _ = s.behaviour_mut().publish(topic.clone(), data);
                    }
                    ev = s.select_next_some() => {
                        if let SwarmEvent::Behaviour(gossipsub::Event::Message {
                            propagation_source,
                            message_id,
                            message,
                        }) = ev
                        {
                            s.behaviour_mut().report_message_validation_result(
                                &message_id,
                                &propagation_source,
                                MessageAcceptance::Accept,
                            );
                            if let Some(id) = message.data.get(..8).and_then(|b| b.try_into().ok()) {
                                let _ = arrive_tx.send((i, u64::from_le_bytes(id), propagation_source));
                            }
                        }
                    }
                    _ = mesh_tick.tick() => {
                        meshed[i].store(s.behaviour().mesh_peers(&topic.hash()).count(), Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    drop(arrive_tx);
    let deadline = Instant::now() + Duration::from_secs(30);
    // Every node meshed up to D_lo, or to all its peers if it has fewer.
    let want: Vec<usize> = (0..n)
        .map(|i| mesh_low.min(peers.get(i).map_or(0, Vec::len)))
        .collect();
    while meshed
        .iter()
        .zip(&want)
        .any(|(m, w)| m.load(Ordering::Relaxed) < *w)
    {
        if Instant::now() > deadline {
            bail!("gossipsub meshes did not form within 30 s at N={n}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A few heartbeats more: meshes settle towards D, as the model's start-up grafting does.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let timeout = Duration::from_secs(5);
    // The origin counts with hop 0, as in the model's report (the writer's node holds the
    // update at hop 0).
    let mut hops_all: Vec<u16> = Vec::new();
    let mut hops_last = 0u16;
    let mut receipts_total = 0u64;
    let mut delivered = 0;
    for m in 0..messages {
        let origin = m % n;
        let mut data = (m as u64).to_le_bytes().to_vec();
        // Unique content (ids are content hashes), about a one-endpoint record's size.
        data.extend(std::iter::repeat_n(0xa5u8, 200));
        let before = receipts.load(Ordering::Relaxed);
        publishers[origin]
            .send(data)
            .map_err(|_| anyhow!("swarm {origin} stopped"))?;
        let mut hops: Vec<Option<u16>> = vec![None; n];
        hops[origin] = Some(0);
        hops_all.push(0);
        let mut last = 0u16;
        let end = tokio::time::Instant::now() + timeout;
        while hops.iter().any(Option::is_none) {
            match tokio::time::timeout_at(end, arrive_rx.recv()).await {
                Ok(Some((node, id, from))) if id == m as u64 && hops[node].is_none() => {
                    // The first sender got it earlier, so its hops are known.
                    let h = index
                        .get(&from)
                        .and_then(|&f| hops[f])
                        .map_or(1, |h| h.saturating_add(1));
                    hops[node] = Some(h);
                    hops_all.push(h);
                    last = h;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(QUIET_MS)).await;
        if hops.iter().all(Option::is_some) {
            delivered += 1;
        }
        hops_last = hops_last.max(last);
        // Minus the origin's own call at publish.
        receipts_total += receipts
            .load(Ordering::Relaxed)
            .saturating_sub(before)
            .saturating_sub(1);
    }
    drop(publishers);
    for t in tasks {
        t.abort();
    }
    let per = (n * messages.max(1)) as f64;
    // First deliveries: every node but the origin, per message.
    let firsts = hops_all.iter().filter(|&&h| h > 0).count() as u64;
    Ok(Figures {
        hops_mean: hops_all.iter().map(|&h| f64::from(h)).sum::<f64>()
            / hops_all.len().max(1) as f64,
        hops_last,
        duplicates_per_delivery: receipts_total.saturating_sub(firsts) as f64 / per,
        receipts_per_node: receipts_total as f64 / per,
        delivered,
    })
}
