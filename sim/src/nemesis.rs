//! The nemesis: injects and heals faults on a seeded schedule, never more than `max_down`
//! nodes affected at once.
//!
//! Faults, and why each one:
//! * **kill** — SIGKILL (no shutdown path runs; whatever was not fsynced is gone), then a
//!   restart with the same data dir and ports: tests durability and rejoining.
//! * **pause** — SIGSTOP then SIGCONT: the process hangs with its TCP connections open, which
//!   is what a real hang or GC pause looks like and what connection-based liveness cannot see.
//! * **partition** — the node is cut off from every other node by the WAN switch (see
//!   [`crate::wan`]); only available with the namespace layout, otherwise not scheduled (and
//!   the report says so).
//! * **split** — split-brain: the nodes are cut into two halves (`n / 2` random nodes against
//!   the rest) and nothing passes between them, while clients keep reading and writing on both
//!   sides.
//! * **oneway** — an asymmetric cut: 1 to `n / 2` random nodes cannot hear the others (what
//!   the others send them is dropped; what they send passes).
//!
//!   A group partition (split, oneway) involves every node, so it starts only when no other
//!   node is down, and no kill, pause or partition starts while it lasts: `max_down` bounds
//!   the nodes that are *unreachable to clients or alone*; a split keeps all of them serving.
//! * **rolling-restart** — a mode of its own (not mixed with the faults above): every node in
//!   turn is stopped cleanly (SIGTERM, wait for the exit), started again on the same data dir
//!   and ports, and waited for until it has peers again; then the next, for as long as the
//!   run lasts. Under the workload's load, nothing acknowledged may be lost and no read round
//!   may fail.
//! * **skew** — the node's wall clock jumps `skew_ms` ahead or behind (the sign is drawn) while
//!   it runs, and is set right again at the heal (see [`crate::clock`]): expiry, compaction and
//!   the seq ceiling at that node follow its wrong clock, which is what a node with a broken
//!   NTP looks like. A skewed node is not down — it serves and replicates — so skew does not
//!   count against `max_down` and runs beside the other faults, one skewed node at a time.
//!   Skew spans last longer than the other faults (`skew_fault_ms`), long enough for records
//!   to expire and be compacted by the wrong clock. Only available when the nodes run under
//!   libfaketime.
//!
//! The schedule (which fault, which node, how long, the gap before the next) is drawn from a
//! ChaCha RNG seeded by the run's seed, so a seed replays the same sequence of decisions. Each
//! fault is recorded as an interval from injection to the moment the node is healthy again
//! (for a kill: restarted and answering). No new fault starts in the last few seconds, and
//! [`Nemesis::heal_all`] ends every fault before the run is judged.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use std::sync::Arc;

use crate::cluster::Cluster;
use crate::history::{FaultKind, FaultSpan};
use crate::nodeapi::Api;
use crate::wan::{CutKind, Partition, Wan};
use crate::workload::{ActiveFault, Recorder, Target};

/// Nemesis settings.
#[derive(Clone, Debug)]
pub struct NemesisConfig {
    /// Fault kinds to use.
    pub faults: Vec<FaultKind>,
    /// Most nodes affected at once.
    pub max_down: usize,
    /// Seed.
    pub seed: u64,
    /// Shortest and longest fault duration.
    pub fault_ms: (u64, u64),
    /// Shortest and longest gap between faults.
    pub gap_ms: (u64, u64),
    /// How far a skewed clock is off, ms (the sign is drawn per fault).
    pub skew_ms: i64,
    /// Shortest and longest skew span.
    pub skew_fault_ms: (u64, u64),
}

/// Counts of injected faults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// SIGKILLs.
    pub kills: u64,
    /// Successful restarts.
    pub restarts: u64,
    /// SIGSTOPs.
    pub pauses: u64,
    /// Partitions.
    pub partitions: u64,
    /// Clock skews.
    pub skews: u64,
    /// Split-brain partitions.
    pub splits: u64,
    /// One-way cuts.
    pub oneway_cuts: u64,
    /// Clean restarts (rolling-restart mode).
    pub clean_restarts: u64,
}

/// Whether a fault of `kind` may start now, given the active faults' kinds: `down` nodes are
/// killed, paused or isolated, and `group` is whether a group partition is in force. Skew runs
/// beside anything (one skew at a time is the caller's rule); a group partition needs every
/// node up and excludes every other down-fault while it lasts.
pub fn may_start(kind: FaultKind, down: usize, group: bool, max_down: usize) -> bool {
    match kind {
        FaultKind::Skew => true,
        FaultKind::Split | FaultKind::OneWay => down == 0 && !group,
        _ => !group && down < max_down,
    }
}

struct Active {
    kind: FaultKind,
    index: usize,
    start_ms: f64,
    heal_at: Instant,
    offset_ms: Option<i64>,
    /// The cut in force, for partitions of every kind.
    part: Option<Partition>,
    /// For a group partition: each node's connected peers (1-based) at its start, joined
    /// with those just before its heal ([`FaultSpan::peers`]).
    links: BTreeMap<usize, BTreeSet<usize>>,
}

/// How long a connection snapshot waits for each node's `/v1/status`.
const LINKS_TIMEOUT: Duration = Duration::from_millis(500);

/// Every answering node's connected peers, as 1-based indexes (peers the harness does not
/// know are left out); a node that does not answer within [`LINKS_TIMEOUT`] is absent.
async fn connections(cluster: &Cluster) -> BTreeMap<usize, BTreeSet<usize>> {
    let Ok(api) = Api::new() else {
        return BTreeMap::new();
    };
    let index: BTreeMap<&str, usize> = cluster
        .nodes
        .iter()
        .filter_map(|nd| nd.info.as_ref().map(|i| (i.peer_id.as_str(), nd.index)))
        .collect();
    let asks = targets_of(cluster).into_iter().map(|t| {
        let api = api.clone();
        async move { (t.node, api.connected_peers(t.api, LINKS_TIMEOUT).await) }
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .filter_map(|(node, peers)| {
            let peers = peers?
                .iter()
                .filter_map(|p| index.get(p.as_str()).copied())
                .collect();
            Some((node, peers))
        })
        .collect()
}

/// The nemesis state.
pub struct Nemesis {
    cfg: NemesisConfig,
    rng: ChaCha8Rng,
    active: Vec<Active>,
    /// Counts so far.
    pub counts: FaultCounts,
    /// Problems met (a restart that failed, a signal that could not be sent).
    pub errors: Vec<String>,
    /// Group partitions healed so far (numbers the heal probes).
    heals: u64,
}

/// How long a cleanly restarted node may take to see its peers again.
pub const RESTART_REJOIN_TIMEOUT: Duration = Duration::from_secs(30);

fn targets_of(cluster: &Cluster) -> Vec<Target> {
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
        .collect()
}

impl Nemesis {
    /// A nemesis with its own RNG stream of `cfg.seed`.
    pub fn new(cfg: NemesisConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(300);
        Self {
            cfg,
            rng,
            active: Vec::new(),
            counts: FaultCounts::default(),
            errors: Vec::new(),
            heals: 0,
        }
    }

    fn publish_active(&self, rec: &Recorder) {
        let now = Instant::now();
        let mut list: Vec<ActiveFault> = Vec::new();
        for a in &self.active {
            let until_ms =
                rec.now_ms() + a.heal_at.saturating_duration_since(now).as_secs_f64() * 1000.0;
            match &a.part {
                Some(p) if p.kind != CutKind::Isolate => {
                    for (group, side) in [&p.a, &p.b].into_iter().enumerate() {
                        list.extend(side.iter().map(|&node| ActiveFault {
                            kind: a.kind,
                            node,
                            until_ms,
                            group: Some(group),
                        }));
                    }
                }
                _ => list.push(ActiveFault {
                    kind: a.kind,
                    node: a.index + 1,
                    until_ms,
                    group: None,
                }),
            }
        }
        *rec.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = list;
    }

    /// Runs the schedule: injects faults until `until`, each one clipped to end by `until`,
    /// and heals them when due. Returns when every fault is healed, or early when `stop` turns
    /// true (faults still active then are healed by [`Nemesis::heal_all`]).
    pub async fn run(
        &mut self,
        cluster: &mut Cluster,
        wan: Option<&Wan>,
        rec: &Arc<Recorder>,
        until: Instant,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) {
        if self.cfg.faults.contains(&FaultKind::Restart) {
            self.rolling_restart(cluster, rec, until, stop).await;
            return;
        }
        let down_kinds: Vec<FaultKind> = self
            .cfg
            .faults
            .iter()
            .copied()
            .filter(|k| *k != FaultKind::Skew)
            .collect();
        let skew = self.cfg.faults.contains(&FaultKind::Skew);
        if down_kinds.is_empty() && !skew {
            return;
        }
        let mut next_start = Instant::now() + self.gap();
        let mut next_skew = Instant::now() + self.gap();
        // Bounded: no injection after `until`, and every fault is clipped to end by then.
        while (Instant::now() < until || !self.active.is_empty()) && !*stop.borrow() {
            let now = Instant::now();
            let due: Vec<usize> = (0..self.active.len())
                .filter(|&i| self.active[i].heal_at <= now)
                .collect();
            for i in due.into_iter().rev() {
                let a = self.active.remove(i);
                self.heal(cluster, wan, rec, a).await;
                self.publish_active(rec);
            }
            let max = self.cfg.max_down.min(cluster.nodes.len().saturating_sub(1));
            let down = self
                .active
                .iter()
                .filter(|a| {
                    !matches!(
                        a.kind,
                        FaultKind::Skew | FaultKind::Split | FaultKind::OneWay
                    )
                })
                .count();
            let group = self
                .active
                .iter()
                .any(|a| matches!(a.kind, FaultKind::Split | FaultKind::OneWay));
            if !down_kinds.is_empty() && Instant::now() >= next_start && Instant::now() < until {
                // The kind is drawn first (so a seed's sequence of draws does not depend on
                // timing); one that may not start now waits for the next turn.
                let kind = down_kinds[self.rng.gen_range(0..down_kinds.len())];
                if may_start(kind, down, group, max) {
                    self.inject(kind, cluster, wan, rec, until).await;
                    self.publish_active(rec);
                }
                next_start = Instant::now() + self.gap();
            }
            let skewed = self.active.iter().any(|a| a.kind == FaultKind::Skew);
            if skew && !skewed && Instant::now() >= next_skew && Instant::now() < until {
                self.inject(FaultKind::Skew, cluster, wan, rec, until).await;
                self.publish_active(rec);
                next_skew = Instant::now() + self.gap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn gap(&mut self) -> Duration {
        let (lo, hi) = self.cfg.gap_ms;
        Duration::from_millis(self.rng.gen_range(lo..=hi.max(lo)))
    }

    async fn inject(
        &mut self,
        kind: FaultKind,
        cluster: &mut Cluster,
        wan: Option<&Wan>,
        rec: &Recorder,
        until: Instant,
    ) {
        // Down-faults avoid nodes already down; a skew avoids nothing but another skew (a
        // skewed node may still be killed, paused or partitioned).
        let free: Vec<usize> = (0..cluster.nodes.len())
            .filter(|i| {
                self.active.iter().all(|a| {
                    a.index != *i || (a.kind == FaultKind::Skew) != (kind == FaultKind::Skew)
                })
            })
            .collect();
        if free.is_empty() {
            return;
        }
        let index = free[self.rng.gen_range(0..free.len())];
        let (lo, hi) = if kind == FaultKind::Skew {
            self.cfg.skew_fault_ms
        } else {
            self.cfg.fault_ms
        };
        let offset_ms = (kind == FaultKind::Skew).then(|| {
            if self.rng.gen_bool(0.5) {
                self.cfg.skew_ms
            } else {
                -self.cfg.skew_ms
            }
        });
        let drawn = Duration::from_millis(self.rng.gen_range(lo..=hi.max(lo)));
        let dur = drawn.min(until.saturating_duration_since(Instant::now()));
        if dur < Duration::from_millis(lo.min(1000)) {
            return; // too close to the end for a meaningful fault
        }
        let n = cluster.nodes.len();
        let part = match kind {
            FaultKind::Partition => Some(Partition::isolate(index + 1, n)),
            FaultKind::Split => Some(Partition::draw(CutKind::Split, n, &mut self.rng)),
            FaultKind::OneWay => Some(Partition::draw(CutKind::OneWay, n, &mut self.rng)),
            _ => None,
        };
        let start_ms = rec.now_ms();
        let mut links = BTreeMap::new();
        let result = match kind {
            FaultKind::Kill => cluster.kill(index).await.map(|()| self.counts.kills += 1),
            FaultKind::Pause => cluster.pause(index).map(|()| self.counts.pauses += 1),
            FaultKind::Partition | FaultKind::Split | FaultKind::OneWay => match (wan, &part) {
                (Some(wan), Some(p)) => {
                    let mut parts: Vec<Partition> =
                        self.active.iter().filter_map(|a| a.part.clone()).collect();
                    parts.push(p.clone());
                    wan.set_cuts(&parts);
                    if p.kind != CutKind::Isolate {
                        links = connections(cluster).await;
                    }
                    match kind {
                        FaultKind::Split => self.counts.splits += 1,
                        FaultKind::OneWay => self.counts.oneway_cuts += 1,
                        _ => self.counts.partitions += 1,
                    }
                    Ok(())
                }
                _ => Err(anyhow::anyhow!(
                    "partitions need the namespace layout and its WAN switch"
                )),
            },
            FaultKind::Skew => cluster
                .set_clock_offset(index, offset_ms.unwrap_or(0))
                .map(|()| self.counts.skews += 1),
            FaultKind::Restart => Err(anyhow::anyhow!(
                "rolling-restart is a mode of its own, not a random fault"
            )),
        };
        match result {
            Ok(()) => self.active.push(Active {
                kind,
                index,
                start_ms,
                heal_at: Instant::now() + dur,
                offset_ms,
                part,
                links,
            }),
            Err(e) => self
                .errors
                .push(format!("{} node {}: {e:#}", kind.as_str(), index + 1)),
        }
    }

    async fn heal(
        &mut self,
        cluster: &mut Cluster,
        wan: Option<&Wan>,
        rec: &Arc<Recorder>,
        mut a: Active,
    ) {
        let result: Result<()> = match a.kind {
            FaultKind::Kill => cluster
                .restart(a.index)
                .await
                .map(|()| self.counts.restarts += 1),
            FaultKind::Pause => cluster.resume(a.index),
            FaultKind::Partition | FaultKind::Split | FaultKind::OneWay => {
                // The connections just before the heal, joined to those at the start.
                if a.part.as_ref().is_some_and(|p| p.kind != CutKind::Isolate) {
                    for (node, peers) in connections(cluster).await {
                        a.links.entry(node).or_default().extend(peers);
                    }
                }
                // `a` is already out of the active list: what is left stays cut.
                if let Some(wan) = wan {
                    let parts: Vec<Partition> =
                        self.active.iter().filter_map(|x| x.part.clone()).collect();
                    wan.set_cuts(&parts);
                }
                Ok(())
            }
            FaultKind::Skew => cluster.set_clock_offset(a.index, 0),
            FaultKind::Restart => Ok(()),
        };
        if let Err(e) = result {
            self.errors.push(format!(
                "heal {} node {}: {e:#}",
                a.kind.as_str(),
                a.index + 1
            ));
        }
        let end_ms = rec.now_ms();
        match &a.part {
            Some(p) if p.kind != CutKind::Isolate => {
                for node in p.nodes() {
                    rec.fault(FaultSpan {
                        kind: a.kind,
                        node,
                        start_ms: a.start_ms,
                        end_ms,
                        offset_ms: None,
                        groups: Some(vec![p.a.clone(), p.b.clone()]),
                        peers: a
                            .links
                            .get(&node)
                            .map(|peers| peers.iter().copied().collect()),
                    });
                }
                // How long until every node holds what either side acknowledged.
                self.heals += 1;
                tokio::spawn(crate::workload::heal_probe(
                    rec.clone(),
                    targets_of(cluster),
                    self.heals,
                    end_ms,
                ));
            }
            _ => rec.fault(FaultSpan {
                kind: a.kind,
                node: a.index + 1,
                start_ms: a.start_ms,
                end_ms,
                offset_ms: a.offset_ms,
                groups: None,
                peers: None,
            }),
        }
    }

    /// The rolling-restart mode: every node in turn stopped cleanly, started again and waited
    /// for until it has peers, with a drawn gap between nodes, until `until`.
    async fn rolling_restart(
        &mut self,
        cluster: &mut Cluster,
        rec: &Recorder,
        until: Instant,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) {
        let api = match Api::new() {
            Ok(a) => a,
            Err(e) => {
                self.errors.push(format!("rolling restart: {e:#}"));
                return;
            }
        };
        let n = cluster.nodes.len();
        // A node counts as back once it sees this many live peers.
        let want_peers = n.saturating_sub(1).min(2);
        let mut i = 0;
        tokio::time::sleep(self.gap()).await;
        while Instant::now() < until && !*stop.borrow() {
            let start_ms = rec.now_ms();
            self.active.push(Active {
                kind: FaultKind::Restart,
                index: i,
                start_ms,
                heal_at: until,
                offset_ms: None,
                part: None,
                links: BTreeMap::new(),
            });
            self.publish_active(rec);
            let result = async {
                cluster.stop_node(i).await?;
                cluster.restart(i).await?;
                if !cluster
                    .wait_node_connected(&api, i, want_peers, RESTART_REJOIN_TIMEOUT)
                    .await
                {
                    anyhow::bail!(
                        "node {} had not {want_peers} live peers {} s after its restart",
                        i + 1,
                        RESTART_REJOIN_TIMEOUT.as_secs()
                    );
                }
                Ok(())
            }
            .await;
            self.active.clear();
            self.publish_active(rec);
            match result {
                Ok(()) => self.counts.clean_restarts += 1,
                Err(e) => self
                    .errors
                    .push(format!("rolling restart node {}: {e:#}", i + 1)),
            }
            rec.fault(FaultSpan {
                kind: FaultKind::Restart,
                node: i + 1,
                start_ms,
                end_ms: rec.now_ms(),
                offset_ms: None,
                groups: None,
                peers: None,
            });
            i = (i + 1) % n;
            let gap = self.gap();
            let left = until.saturating_duration_since(Instant::now());
            tokio::time::sleep(gap.min(left)).await;
        }
    }

    /// Heals every active fault now.
    pub async fn heal_all(
        &mut self,
        cluster: &mut Cluster,
        wan: Option<&Wan>,
        rec: &Arc<Recorder>,
    ) {
        while let Some(a) = self.active.pop() {
            self.heal(cluster, wan, rec, a).await;
        }
        self.publish_active(rec);
    }
}
