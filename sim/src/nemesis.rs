//! The nemesis: injects and heals faults on a seeded schedule, never more than `max_down`
//! nodes affected at once.
//!
//! Faults, and why each one:
//! * **kill** — SIGKILL (no shutdown path runs; whatever was not fsynced is gone), then a
//!   restart with the same data dir and ports: tests durability and rejoining.
//! * **pause** — SIGSTOP then SIGCONT: the process hangs with its TCP connections open, which
//!   is what a real hang or GC pause looks like and what connection-based liveness cannot see.
//! * **partition** — the node's peer link goes down (see [`crate::netns`]); only available with
//!   the namespace layout, otherwise not scheduled (and the report says so).
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

use std::time::{Duration, Instant};

use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::cluster::Cluster;
use crate::history::{FaultKind, FaultSpan};
use crate::netns::Netns;
use crate::workload::{ActiveFault, Recorder};

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
}

struct Active {
    kind: FaultKind,
    index: usize,
    start_ms: f64,
    heal_at: Instant,
    offset_ms: Option<i64>,
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
        }
    }

    fn publish_active(&self, rec: &Recorder) {
        let now = Instant::now();
        let list: Vec<ActiveFault> = self
            .active
            .iter()
            .map(|a| ActiveFault {
                kind: a.kind,
                node: a.index + 1,
                until_ms: rec.now_ms()
                    + a.heal_at.saturating_duration_since(now).as_secs_f64() * 1000.0,
            })
            .collect();
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
        netns: Option<&Netns>,
        rec: &Recorder,
        until: Instant,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) {
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
                self.heal(cluster, netns, rec, a).await;
                self.publish_active(rec);
            }
            let max = self.cfg.max_down.min(cluster.nodes.len().saturating_sub(1));
            let down = self
                .active
                .iter()
                .filter(|a| a.kind != FaultKind::Skew)
                .count();
            if !down_kinds.is_empty()
                && Instant::now() >= next_start
                && Instant::now() < until
                && down < max
            {
                let kind = down_kinds[self.rng.gen_range(0..down_kinds.len())];
                self.inject(kind, cluster, netns, rec, until).await;
                self.publish_active(rec);
                next_start = Instant::now() + self.gap();
            }
            let skewed = self.active.iter().any(|a| a.kind == FaultKind::Skew);
            if skew && !skewed && Instant::now() >= next_skew && Instant::now() < until {
                self.inject(FaultKind::Skew, cluster, netns, rec, until)
                    .await;
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
        netns: Option<&Netns>,
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
        let start_ms = rec.now_ms();
        let result = match kind {
            FaultKind::Kill => cluster.kill(index).await.map(|()| self.counts.kills += 1),
            FaultKind::Pause => cluster.pause(index).map(|()| self.counts.pauses += 1),
            FaultKind::Partition => match netns {
                Some(ns) => ns
                    .set_isolated(index + 1, true)
                    .map(|()| self.counts.partitions += 1)
                    .map_err(anyhow::Error::from),
                None => Err(anyhow::anyhow!("partition needs the namespace layout")),
            },
            FaultKind::Skew => cluster
                .set_clock_offset(index, offset_ms.unwrap_or(0))
                .map(|()| self.counts.skews += 1),
        };
        match result {
            Ok(()) => self.active.push(Active {
                kind,
                index,
                start_ms,
                heal_at: Instant::now() + dur,
                offset_ms,
            }),
            Err(e) => self
                .errors
                .push(format!("{} node {}: {e:#}", kind.as_str(), index + 1)),
        }
    }

    async fn heal(
        &mut self,
        cluster: &mut Cluster,
        netns: Option<&Netns>,
        rec: &Recorder,
        a: Active,
    ) {
        let result: Result<()> = match a.kind {
            FaultKind::Kill => cluster
                .restart(a.index)
                .await
                .map(|()| self.counts.restarts += 1),
            FaultKind::Pause => cluster.resume(a.index),
            FaultKind::Partition => match netns {
                Some(ns) => ns
                    .set_isolated(a.index + 1, false)
                    .map_err(anyhow::Error::from),
                None => Ok(()),
            },
            FaultKind::Skew => cluster.set_clock_offset(a.index, 0),
        };
        if let Err(e) = result {
            self.errors.push(format!(
                "heal {} node {}: {e:#}",
                a.kind.as_str(),
                a.index + 1
            ));
        }
        rec.fault(FaultSpan {
            kind: a.kind,
            node: a.index + 1,
            start_ms: a.start_ms,
            end_ms: rec.now_ms(),
            offset_ms: a.offset_ms,
        });
    }

    /// Heals every active fault now.
    pub async fn heal_all(&mut self, cluster: &mut Cluster, netns: Option<&Netns>, rec: &Recorder) {
        while let Some(a) = self.active.pop() {
            self.heal(cluster, netns, rec, a).await;
        }
        self.publish_active(rec);
    }
}
