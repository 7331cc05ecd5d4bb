//! WAN emulation for the chaos harness: delay, jitter and loss on every node-to-node path, and
//! the cuts partitions are made of (one node isolated, split-brain halves, one-way cuts).
//!
//! Users run dpin across networks they do not control: tens of milliseconds between peers,
//! jitter, lost packets, and partitions that cut a cluster into groups rather than one node at
//! a time. A chaos run on a zero-latency bridge proves little about that.
//!
//! **Why in userspace.** The usual tool, `tc qdisc ... netem`, needs the kernel's `sch_netem`,
//! and the kernels this project's machines and CI run have neither it nor tc's drop actions
//! (`tc qdisc add dev X root netem ...` answers "Specified qdisc kind is unknown"). So the
//! harness is the switch: each node namespace gets a TUN device `dtK` holding 198.18.0.K/24
//! (see [`crate::netns`]); every IPv4 packet node K sends to another node arrives here, and is
//! dropped (a cut, or loss) or written to the destination's TUN after the link delay.
//!
//! **The link model** ([`LinkModel`]) is that of one node-to-node path, each direction on its
//! own: a one-way delay of `delay_ms`, plus a jitter drawn uniformly from ±`jitter_ms` per
//! packet (as netem's default), and a loss of `loss_pct` percent of packets per direction. A
//! round trip therefore costs twice the delay. Packets of one path keep their order (each is
//! delivered no earlier than the one before it): real WAN paths rarely reorder, and TCP reads
//! reordering as loss.
//!
//! **Cuts** ([`Partition`]) drop packets by direction: [`CutKind::Isolate`] cuts one node off
//! from all others, [`CutKind::Split`] drops everything between two groups, and
//! [`CutKind::OneWay`] drops only what group `b` sends to group `a` (group `a` cannot hear
//! group `b`; `b` still hears `a`). TCP needs both directions, so a one-way cut stops every
//! connection between the groups too — but each side sees it differently (one side's packets
//! arrive and go unanswered), which is the asymmetric failure Jepsen tests with one-sided
//! firewall rules.
//!
//! Costs and bounds: one reader thread per node (blocking reads on its TUN), one delivery
//! thread holding a time-ordered queue of at most [`MAX_QUEUED`] packets (more are dropped and
//! counted as `overflow`). Every decision is counted ([`WanCounts`]), and the report shows the
//! counts. The per-packet random draws come from ChaCha streams of the run's seed; which
//! packet meets which draw still depends on timing.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Longest one-way delay accepted, ms: more is a typo, not a WAN.
pub const MAX_DELAY_MS: f64 = 10_000.0;
/// Most packets waiting for delivery at once (about 1.5 GB at 1500 bytes would be absurd;
/// 65,536 packets are 100 MB at most, and far more than a 25-node cluster has in flight).
pub const MAX_QUEUED: usize = 65_536;
/// Largest packet read from a TUN device (the devices keep the default MTU of 1500).
const MAX_PACKET: usize = 65_536;

/// Errors of the link model or the switch.
#[derive(Debug, thiserror::Error)]
pub enum WanError {
    /// A link-model value out of range.
    #[error("bad link model: {0}")]
    Model(String),
    /// Creating or configuring a TUN device failed.
    #[error("node {node}: cannot set up its TUN device: {message}")]
    Tun {
        /// 1-based node index.
        node: usize,
        /// Why.
        message: String,
    },
}

/// Delay, jitter and loss of every node-to-node path, each direction on its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkModel {
    /// One-way delay, ms.
    pub delay_ms: f64,
    /// Jitter, ms: each packet's delay is drawn uniformly from delay ± jitter (never below 0).
    pub jitter_ms: f64,
    /// Packets lost per direction, percent.
    pub loss_pct: f64,
}

impl LinkModel {
    /// Checks the ranges: 0 ≤ delay ≤ [`MAX_DELAY_MS`], 0 ≤ jitter ≤ delay (so a packet's delay
    /// is never negative), 0 ≤ loss < 100.
    pub fn validate(&self) -> Result<(), WanError> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !ok(self.delay_ms) || self.delay_ms > MAX_DELAY_MS {
            return Err(WanError::Model(format!(
                "--link-delay-ms {} must be within 0..={MAX_DELAY_MS}",
                self.delay_ms
            )));
        }
        if !ok(self.jitter_ms) || self.jitter_ms > self.delay_ms {
            return Err(WanError::Model(format!(
                "--jitter-ms {} must be within 0..=--link-delay-ms ({})",
                self.jitter_ms, self.delay_ms
            )));
        }
        if !ok(self.loss_pct) || self.loss_pct >= 100.0 {
            return Err(WanError::Model(format!(
                "--loss-pct {} must be within 0..100",
                self.loss_pct
            )));
        }
        Ok(())
    }

    /// No delay, no jitter, no loss.
    pub fn is_ideal(&self) -> bool {
        self.delay_ms == 0.0 && self.jitter_ms == 0.0 && self.loss_pct == 0.0
    }

    /// One line for the report and the timeline.
    pub fn describe(&self) -> String {
        format!(
            "{} ms ± {} ms one-way (uniform), {}% loss per direction",
            self.delay_ms, self.jitter_ms, self.loss_pct
        )
    }

    /// One packet's fate: `None` if it is lost, else its delay in ms.
    pub fn draw(&self, rng: &mut impl Rng) -> Option<f64> {
        if self.loss_pct > 0.0 && rng.gen_bool((self.loss_pct / 100.0).clamp(0.0, 1.0)) {
            return None;
        }
        let jitter = if self.jitter_ms > 0.0 {
            rng.gen_range(-self.jitter_ms..=self.jitter_ms)
        } else {
            0.0
        };
        Some((self.delay_ms + jitter).max(0.0))
    }
}

/// What a partition cuts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CutKind {
    /// Node `a[0]` reaches no other node and no node reaches it.
    Isolate,
    /// Nothing passes between groups `a` and `b`, either way.
    Split,
    /// Group `a` cannot hear group `b`: what `b` sends to `a` is dropped; `a` to `b` passes.
    OneWay,
}

/// A partition: two groups of 1-based node indexes and what is cut between them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// What is cut.
    pub kind: CutKind,
    /// First group (the isolated node; the minority half; the side that cannot hear).
    pub a: Vec<usize>,
    /// Second group (everyone else).
    pub b: Vec<usize>,
}

impl Partition {
    /// Node `k` (1-based) cut off from the other `n - 1`.
    pub fn isolate(k: usize, n: usize) -> Self {
        Partition {
            kind: CutKind::Isolate,
            a: vec![k],
            b: (1..=n).filter(|&j| j != k).collect(),
        }
    }

    /// Whether a packet from node `from` to node `to` is dropped.
    pub fn drops(&self, from: usize, to: usize) -> bool {
        let (fa, fb) = (self.a.contains(&from), self.b.contains(&from));
        let (ta, tb) = (self.a.contains(&to), self.b.contains(&to));
        match self.kind {
            CutKind::Isolate | CutKind::Split => (fa && tb) || (fb && ta),
            CutKind::OneWay => fb && ta,
        }
    }

    /// Whether `x` and `y` cannot hold a connection (a cut in either direction).
    pub fn separates(&self, x: usize, y: usize) -> bool {
        self.drops(x, y) || self.drops(y, x)
    }

    /// Every node either group names.
    pub fn nodes(&self) -> Vec<usize> {
        let mut all: Vec<usize> = self.a.iter().chain(&self.b).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Draws a group partition of nodes `1..=n` (n ≥ 2): for [`CutKind::Split`] a random
    /// `n / 2` nodes against the rest (halves; the first group is the smaller one when `n` is
    /// odd), for [`CutKind::OneWay`] 1 to `n / 2` random nodes that cannot hear the rest, for
    /// [`CutKind::Isolate`] one random node. Both groups are sorted.
    pub fn draw(kind: CutKind, n: usize, rng: &mut impl Rng) -> Self {
        let n = n.max(2);
        let mut order: Vec<usize> = (1..=n).collect();
        order.shuffle(rng);
        let size = match kind {
            CutKind::Isolate => 1,
            CutKind::Split => n / 2,
            CutKind::OneWay => rng.gen_range(1..=n / 2),
        };
        let mut a = order[..size].to_vec();
        let mut b = order[size..].to_vec();
        a.sort_unstable();
        b.sort_unstable();
        Partition { kind, a, b }
    }
}

/// The directed cut matrix of `n` nodes under `parts` (index `(from-1)*n + (to-1)`).
pub fn cut_matrix(n: usize, parts: &[Partition]) -> Vec<bool> {
    let mut m = vec![false; n * n];
    for from in 1..=n {
        for to in 1..=n {
            m[(from - 1) * n + (to - 1)] = from != to && parts.iter().any(|p| p.drops(from, to));
        }
    }
    m
}

/// The node index (1-based) of a 198.18.0.K address, if it is one of `n` nodes.
pub fn node_of(addr: [u8; 4], n: usize) -> Option<usize> {
    let [a, b, c, d] = addr;
    let k = usize::from(d);
    ((a, b, c) == (198, 18, 0) && (1..=n).contains(&k)).then_some(k)
}

/// What the switch did with the packets, by reason.
#[derive(Debug, Default)]
struct Counters {
    forwarded: AtomicU64,
    lost: AtomicU64,
    cut: AtomicU64,
    foreign: AtomicU64,
    overflow: AtomicU64,
    write_errors: AtomicU64,
}

/// A snapshot of the switch's counters (in the report as `wan`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WanCounts {
    /// Packets delivered to their destination node.
    pub forwarded: u64,
    /// Dropped by the loss model.
    pub lost: u64,
    /// Dropped by a partition's cut.
    pub cut: u64,
    /// Dropped as not node-to-node IPv4 (IPv6 neighbour chatter, an unknown address).
    pub foreign: u64,
    /// Dropped because [`MAX_QUEUED`] packets were already waiting.
    pub overflow: u64,
    /// Writes to a destination TUN that failed.
    pub write_errors: u64,
}

struct Shared {
    n: usize,
    model: LinkModel,
    cuts: RwLock<Vec<bool>>,
    counters: Counters,
}

/// A packet waiting for delivery, ordered by delivery time (then arrival).
struct Queued {
    at: Instant,
    seq: u64,
    to: usize,
    packet: Vec<u8>,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        // Reversed: BinaryHeap is a max-heap, the earliest delivery must come first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The running switch. Its threads end when the node namespaces (and with them the TUN
/// devices) are deleted.
pub struct Wan {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Wan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wan")
            .field("nodes", &self.shared.n)
            .field("model", &self.shared.model)
            .finish()
    }
}

impl Wan {
    /// Creates one TUN device per node in the calling thread's namespace (the hub), moves
    /// device K into node K's namespace with address 198.18.0.K/24, and starts forwarding.
    /// `ns_of(k)` names node k's namespace.
    pub fn start(
        n: usize,
        ns_of: impl Fn(usize) -> String,
        model: LinkModel,
        seed: u64,
    ) -> Result<Self, WanError> {
        model.validate()?;
        let shared = Arc::new(Shared {
            n,
            model,
            cuts: RwLock::new(vec![false; n * n]),
            counters: Counters::default(),
        });
        let mut readers = Vec::with_capacity(n);
        let mut writers = Vec::with_capacity(n);
        for k in 1..=n {
            let err = |message: String| WanError::Tun { node: k, message };
            let name = format!("dt{k}");
            let mut config = tun::Configuration::default();
            config.tun_name(&name);
            let dev = tun::create(&config).map_err(|e| err(e.to_string()))?;
            let node_ns = ns_of(k);
            let addr = format!("198.18.0.{k}/24");
            for args in [
                vec!["link", "set", "dev", &name, "netns", &node_ns],
                vec!["-n", &node_ns, "addr", "add", &addr, "dev", &name],
                vec!["-n", &node_ns, "link", "set", "dev", &name, "up"],
            ] {
                crate::netns::ip(&args).map_err(|e| err(e.to_string()))?;
            }
            let (r, w) = dev.split();
            readers.push(r);
            writers.push(w);
        }
        let (tx, rx) = mpsc::sync_channel::<Queued>(MAX_QUEUED);
        for (i, reader) in readers.into_iter().enumerate() {
            let shared = shared.clone();
            let tx = tx.clone();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(400 + i as u64);
            std::thread::Builder::new()
                .name(format!("wan-read-{}", i + 1))
                .spawn(move || read_loop(i + 1, reader, &shared, &tx, &mut rng))
                .map_err(|e| WanError::Tun {
                    node: i + 1,
                    message: format!("cannot start its reader thread: {e}"),
                })?;
        }
        drop(tx);
        let deliver_shared = shared.clone();
        std::thread::Builder::new()
            .name("wan-deliver".to_owned())
            .spawn(move || deliver_loop(writers, &rx, &deliver_shared))
            .map_err(|e| WanError::Tun {
                node: 0,
                message: format!("cannot start the delivery thread: {e}"),
            })?;
        Ok(Wan { shared })
    }

    /// Puts exactly these partitions in force (an empty list heals everything).
    pub fn set_cuts(&self, parts: &[Partition]) {
        let m = cut_matrix(self.shared.n, parts);
        *self
            .shared
            .cuts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = m;
    }

    /// The link model in force.
    pub fn model(&self) -> LinkModel {
        self.shared.model
    }

    /// The counters so far.
    pub fn counts(&self) -> WanCounts {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WanCounts {
            forwarded: g(&c.forwarded),
            lost: g(&c.lost),
            cut: g(&c.cut),
            foreign: g(&c.foreign),
            overflow: g(&c.overflow),
            write_errors: g(&c.write_errors),
        }
    }
}

/// Reads node `k`'s packets until its device goes away, and queues each for delivery.
fn read_loop(
    k: usize,
    mut reader: impl Read,
    shared: &Shared,
    tx: &SyncSender<Queued>,
    rng: &mut ChaCha8Rng,
) {
    let c = &shared.counters;
    let n = shared.n;
    let mut buf = vec![0u8; MAX_PACKET];
    // Per destination: when the previous packet is delivered (a path keeps its order).
    let mut last: Vec<Option<Instant>> = vec![None; n + 1];
    let mut seq: u64 = (k as u64) << 48;
    loop {
        let len = match reader.read(&mut buf) {
            Ok(0) | Err(_) => return, // device gone: the run is over
            Ok(len) => len,
        };
        let packet = &buf[..len];
        // IPv4 only: version nibble 4, a full header, destination another node.
        let to = (len >= 20 && packet[0] >> 4 == 4)
            .then(|| node_of([packet[16], packet[17], packet[18], packet[19]], n))
            .flatten()
            .filter(|&to| to != k);
        let Some(to) = to else {
            c.foreign.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let cut = shared
            .cuts
            .read()
            .map(|m| m[(k - 1) * n + (to - 1)])
            .unwrap_or(false);
        if cut {
            c.cut.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Some(delay_ms) = shared.model.draw(rng) else {
            c.lost.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let now = Instant::now();
        let mut at = now + Duration::from_secs_f64(delay_ms / 1000.0);
        if let Some(prev) = last[to] {
            at = at.max(prev);
        }
        last[to] = Some(at);
        seq += 1;
        match tx.try_send(Queued {
            at,
            seq,
            to,
            packet: packet.to_vec(),
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                c.overflow.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

/// Delivers queued packets when due, until every reader has ended and the queue is empty.
fn deliver_loop(mut writers: Vec<tun::Writer>, rx: &mpsc::Receiver<Queued>, shared: &Shared) {
    let c = &shared.counters;
    let mut heap: BinaryHeap<Queued> = BinaryHeap::new();
    let mut open = true;
    while open || !heap.is_empty() {
        let now = Instant::now();
        while heap.peek().is_some_and(|q| q.at <= now) {
            let Some(q) = heap.pop() else { break };
            match writers.get_mut(q.to - 1).map(|w| w.write(&q.packet)) {
                Some(Ok(_)) => c.forwarded.fetch_add(1, Ordering::Relaxed),
                _ => c.write_errors.fetch_add(1, Ordering::Relaxed),
            };
        }
        let wait = heap.peek().map_or(Duration::from_millis(100), |q| {
            q.at.saturating_duration_since(Instant::now())
        });
        if !open {
            std::thread::sleep(wait);
            continue;
        }
        match rx.recv_timeout(wait) {
            Ok(q) => {
                if heap.len() >= MAX_QUEUED {
                    c.overflow.fetch_add(1, Ordering::Relaxed);
                } else {
                    heap.push(q);
                }
                // Take whatever else is waiting without sleeping.
                while let Ok(q) = rx.try_recv() {
                    if heap.len() >= MAX_QUEUED {
                        c.overflow.fetch_add(1, Ordering::Relaxed);
                    } else {
                        heap.push(q);
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
    }
}
