//! The four scenarios. Each builds a [`World`], schedules its writes and faults, runs, and
//! fills a [`Report`].
//!
//! * `convergence` — writes through random nodes; every live node must receive every update.
//!   Reports hops (p50, max, and of the node reached last) against `2 × log_{D−1}(N)`,
//!   full-message sends per node per update, duplicates, time, then idle messages per node per
//!   second over `--idle-s` (gossip, anti-entropy and the failure detector's probes) and false
//!   downs, then pauses one node and times how long each of its peers takes to mark it down.
//! * `partition-heal` — the two halves hold `--records` different records between them (half
//!   each, loaded before the run as if written and gossiped within each half), the cut heals at
//!   1 s; reports the bytes anti-entropy moved against the encoded size of what differed, and
//!   the simulated time from the heal to identical digests.
//! * `race` — the seed's race: a planner signs numbered plans (seq = plan time in ms) for a few
//!   names of one shared zone key, sometimes two different plans with one seq (equivocation);
//!   enactors apply them through random nodes, some after a long stall (stale plans); after an
//!   applied plan a clean-up publishes a tombstone naming an older plan (`expected seq`, seq
//!   one above it); records expire within seconds and are compacted with a shortened
//!   retention; API nodes crash mid-write (before the fsync acknowledges); partitions, crashes,
//!   loss and clock skew throughout.
//! * `churn` — continuous writes while nodes crash, restart, join and leave.
//!
//! Every scenario ends by healing, restarting the crashed nodes, and running until every live
//! node holds the same winners (the quiescence invariant), within a deadline.

use dpin_protocol::{Content, Endpoint, Host, RecordBody, SignedRecord, Transport, ZoneKey};
use rand::seq::SliceRandom;
use rand::Rng;

use super::invariants::{Violation, ViolationKind};
use super::report::Report;
use super::rng::{self, SimRng};
use super::world::{Action, Tracker, World, WorldConfig, EPOCH_MS, MCACHE_MS};
use super::{NodeId, RecId, Scenario, SimError};

/// Virtual time allowed after the last fault for the network to become quiescent.
pub const QUIESCENCE_DEADLINE_MS: u64 = 120_000;
/// Resolution of the quiescence probe.
pub const PROBE_MS: u64 = 10;
/// How long the detection measurement waits for every peer of a paused node to mark it down.
pub const DETECT_DEADLINE_MS: u64 = 30_000;

fn endpoint(i: u64) -> Endpoint {
    Endpoint {
        host: Host::V4([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
        port: 8080,
        transport: Transport::Tcp,
        weight: 1,
    }
}

fn sign(
    key: &ZoneKey,
    label: &str,
    seq: u64,
    expires_at_ms: u64,
    content: Content,
) -> Result<SignedRecord, SimError> {
    RecordBody {
        zone: key.zone(),
        label: label.to_owned(),
        seq,
        expires_at_ms,
        content,
    }
    .sign(key)
    .map_err(|e| SimError::Config(format!("cannot sign a scenario record: {e}")))
}

/// Runs `scenario` on a world built from `cfg`; `params` carries the scenario's own knobs.
pub fn run(scenario: Scenario, cfg: WorldConfig, params: &Params) -> Result<Report, SimError> {
    match scenario {
        Scenario::Convergence => convergence(cfg, params),
        Scenario::PartitionHeal => partition_heal(cfg, params),
        Scenario::Race => race(cfg),
        Scenario::Churn => churn(cfg),
    }
}

/// Scenario knobs that are not part of the world.
#[derive(Clone, Debug)]
pub struct Params {
    /// Updates written in `convergence`.
    pub updates: usize,
    /// Gap between updates, ms.
    pub update_gap_ms: u64,
    /// Differing records in `partition-heal`.
    pub records: usize,
    /// Idle window measured after convergence, ms.
    pub idle_ms: u64,
}

/// Runs until every live node holds the same winners, probing every [`PROBE_MS`].
fn settle(w: &mut World, from: u64) -> Result<u64, SimError> {
    let deadline = from + QUIESCENCE_DEADLINE_MS;
    let mut t = from.max(w.now());
    loop {
        w.run_until(t)?;
        if w.is_quiescent() {
            return Ok(t);
        }
        if t >= deadline {
            return Err(SimError::Invariant(w.check_quiescent().err().unwrap_or(
                Violation {
                    kind: ViolationKind::Diverged,
                    node: 0,
                    name: String::new(),
                    at_ms: t,
                    detail: "not quiescent at the deadline".into(),
                },
            )));
        }
        t += PROBE_MS;
    }
}

fn convergence(cfg: WorldConfig, p: &Params) -> Result<Report, SimError> {
    let mut scn = rng::stream(cfg.seed, "scenario");
    let mut w = World::new(cfg)?;
    let key = ZoneKey::generate(&mut scn);
    let start = 1_000;
    let mut recs: Vec<RecId> = Vec::new();
    for u in 0..p.updates {
        let rec = sign(
            &key,
            &format!("svc{u}"),
            1,
            EPOCH_MS + 3_600_000,
            Content::Endpoints(vec![endpoint(u as u64)]),
        )?;
        recs.push(w.intern(rec));
    }
    let mut tracker = Tracker::new(&recs, w.nodes.len());
    for (u, &rec) in recs.iter().enumerate() {
        let at = start + u as u64 * p.update_gap_ms;
        tracker.written_at[u] = at;
        let via = scn.gen_range(0..w.cfg.nodes) as NodeId;
        w.schedule(
            at,
            Action::Write {
                via,
                rec,
                expected: None,
            },
        )?;
    }
    w.tracker = Some(tracker);
    let live = w.live();
    let last_write = start + p.updates.saturating_sub(1) as u64 * p.update_gap_ms;
    w.run_while(last_write + QUIESCENCE_DEADLINE_MS, |w| {
        w.now() < last_write
            || w.tracker
                .as_ref()
                .is_some_and(|t| t.have.iter().any(|&h| h < live))
    })?;
    let t = w
        .tracker
        .take()
        .ok_or_else(|| SimError::Config("tracker vanished".into()))?;
    if let Some(u) = t.have.iter().position(|&h| h < live) {
        return Err(SimError::Invariant(Violation {
            kind: ViolationKind::Diverged,
            node: 0,
            name: format!("svc{u}"),
            at_ms: w.now(),
            detail: format!("update reached {} of {live} live nodes", t.have[u]),
        }));
    }
    let delivered_at = w.now();
    let mut r = Report::new(&w);
    let mut hops = t.hops.clone();
    hops.sort_unstable();
    r.hops_p50 = hops.get(hops.len() / 2).copied();
    r.hops_max = hops.last().copied();
    r.hops_mean = Some(hops.iter().map(|&h| f64::from(h)).sum::<f64>() / hops.len().max(1) as f64);
    r.hops_last = t.last.iter().map(|(h, _)| *h).max();
    let d = w.cfg.mesh.n.max(3) as f64;
    r.hops_bound = Some(2.0 * (live as f64).ln() / (d - 1.0).ln());
    r.converge_ms = t.last.iter().map(|(_, ms)| *ms).max();
    r.delivered_by_sync = Some(t.by_sync);
    r.updates = Some(p.updates);
    let sends_at_delivery = w.stats.full_sends;
    // Idle: nothing written and the gossip caches empty (IHAVE stops after the message
    // cache window); what does the network cost per node per second?
    let t0 = delivered_at + MCACHE_MS;
    w.run_until(t0)?;
    let m0 = w.stats.messages;
    let probes = |s: &super::world::Stats| s.probes + s.probe_reqs + s.probe_answers;
    let (p0, i0) = (probes(&w.stats), w.stats.ihave);
    w.run_until(t0 + p.idle_ms)?;
    r.idle_messages_per_node_per_s = Some(w.rate_per_node(m0, t0, t0 + p.idle_ms));
    // What the idle traffic is: the detector's probes and answers, gossip's IHAVE, the rest
    // (anti-entropy, mesh upkeep).
    let per_node_s =
        |n: u64| n as f64 / w.live().max(1) as f64 / (p.idle_ms.max(1) as f64 / 1000.0);
    r.idle_probe_messages_per_node_per_s = Some(per_node_s(probes(&w.stats) - p0));
    r.idle_ihave_per_node_per_s = Some(per_node_s(w.stats.ihave - i0));
    if w.cfg.detector {
        let now = w.now();
        let live: Vec<&super::world::SimNode> =
            w.nodes.iter().filter(|n| n.up && n.present).collect();
        let watched: usize = live
            .iter()
            .map(|n| {
                n.peers
                    .iter()
                    .filter(|p| n.detector.watches(p, now))
                    .count()
            })
            .sum();
        r.mean_watched = Some(watched as f64 / live.len().max(1) as f64);
    }
    let mut idle_end = w.now();
    if w.cfg.detector {
        r.idle_false_downs = Some(w.stats.false_downs);
        // Failure detection: pause one node (SIGSTOP: its connections stay open, it answers
        // nothing) and time how long each of its peers takes to mark it down.
        let paused = scn.gen_range(0..w.cfg.nodes) as NodeId;
        let peers = w.nodes[paused as usize].peers.len();
        let at = idle_end + 1;
        w.schedule(at, Action::Pause(paused))?;
        // Its watchers: the peers whose detectors watch it (chose it, or watch it back).
        let watchers: Vec<NodeId> = w.nodes[paused as usize]
            .peers
            .iter()
            .copied()
            .filter(|&q| w.nodes[q as usize].detector.watches(&paused, at))
            .collect();
        w.detect_watch = Some((paused, at, Default::default()));
        w.run_while(at + DETECT_DEADLINE_MS, |w| {
            w.detect_watch
                .as_ref()
                .is_some_and(|(_, _, downs)| downs.len() < peers)
        })?;
        if let Some((_, at, downs)) = w.detect_watch.take() {
            let mut ms: Vec<u64> = downs.values().map(|t| t.saturating_sub(at)).collect();
            ms.sort_unstable();
            r.detect_ms_p50 = ms.get(ms.len() / 2).copied();
            r.detect_ms_max = ms.last().copied();
            r.detected_by = Some((ms.len(), peers));
            let by_watchers: Vec<u64> = watchers
                .iter()
                .filter_map(|q| downs.get(q).map(|t| t.saturating_sub(at)))
                .collect();
            r.detect_watchers_ms_max = by_watchers.iter().max().copied();
            r.detected_by_watchers = Some((by_watchers.len(), watchers.len()));
        }
        let resume = w.now() + 1;
        w.schedule(resume, Action::Resume(paused))?;
        w.run_until(resume)?;
        idle_end = w.now();
    }
    let end = settle(&mut w, idle_end)?;
    r.finish(&w, end);
    let per = (live * p.updates.max(1)) as f64;
    r.sends_per_node_per_update = Some(w.stats.full_sends as f64 / per);
    r.sends_per_node_per_update_at_delivery = Some(sends_at_delivery as f64 / per);
    r.duplicates_per_delivery = Some(w.stats.duplicates as f64 / per);
    r.delivered_at_ms = Some(delivered_at);
    Ok(r)
}

fn partition_heal(cfg: WorldConfig, p: &Params) -> Result<Report, SimError> {
    if cfg.nodes < 2 {
        return Err(SimError::Config(
            "partition-heal needs at least 2 nodes".into(),
        ));
    }
    let mut scn = rng::stream(cfg.seed, "scenario");
    let n = cfg.nodes;
    let mut w = World::new(cfg)?;
    let sides: Vec<u8> = (0..n).map(|i| u8::from(i >= n / 2)).collect();
    let keys: Vec<ZoneKey> = (0..4).map(|_| ZoneKey::generate(&mut scn)).collect();
    let mut side_bytes = [0u64; 2];
    for i in 0..p.records {
        let key = &keys[i % keys.len()];
        let rec = sign(
            key,
            &format!("rec{i}"),
            1 + scn.gen_range(0..1000),
            EPOCH_MS + 3_600_000,
            Content::Endpoints(vec![endpoint(i as u64)]),
        )?;
        let side = (i % 2) as u8;
        let id = w.intern(rec);
        side_bytes[side as usize] += w.records[id as usize].bytes.len() as u64;
        for (node, &s) in sides.iter().enumerate() {
            if s == side {
                w.preload(node as NodeId, id);
            }
        }
    }
    w.schedule(0, Action::Partition(sides.clone()))?;
    let heal_at = 1_000;
    w.schedule(heal_at, Action::Heal)?;
    w.run_until(heal_at.saturating_sub(1))?;
    let (b0, s0) = (w.stats.bytes, w.stats.sync_bytes);
    w.run_until(heal_at)?;
    let end = settle(&mut w, heal_at)?;
    let mut r = Report::new(&w);
    r.finish(&w, end);
    let differing = side_bytes[0] + side_bytes[1];
    let needed: u64 = sides.iter().map(|&s| side_bytes[1 - s as usize]).sum();
    r.records = Some(p.records);
    r.bytes_after_heal = Some(w.stats.bytes - b0);
    r.sync_bytes_after_heal = Some(w.stats.sync_bytes - s0);
    r.differing_records_bytes = Some(differing);
    r.needed_bytes = Some(needed);
    r.bytes_ratio = Some((w.stats.bytes - b0) as f64 / needed.max(1) as f64);
    r.converge_ms = Some(end - heal_at);
    Ok(r)
}

/// One planned write of the race.
struct Plan {
    label: &'static str,
    rec: RecId,
    seq: u64,
    expires_at_ms: u64,
}

const RACE_LABELS: [&str; 3] = ["api", "db", "www"];
/// Longest record lifetime in the race, ms; retention must exceed it (plus skew).
const RACE_MAX_TTL_MS: u64 = 3_000;
/// Body retention of the race's stores (`MemStore::with_retention`).
pub const RACE_RETENTION_MS: u64 = 6_000;
/// Compaction tick of the race.
pub const RACE_COMPACT_EVERY_MS: u64 = 250;

fn race(mut cfg: WorldConfig) -> Result<Report, SimError> {
    cfg.retention_ms = Some(RACE_RETENTION_MS);
    cfg.compact_every_ms = Some(RACE_COMPACT_EVERY_MS);
    let mut scn = rng::stream(cfg.seed, "scenario");
    let n = cfg.nodes;
    let mut w = World::new(cfg)?;
    let key = ZoneKey::generate(&mut scn);
    let pick = |scn: &mut SimRng| scn.gen_range(0..n) as NodeId;
    // The planner: a plan every 150–400 ms per label for 4 s, seq = plan time (ms since
    // epoch, "plans numbered by time"), sometimes an equivocating twin at the same seq.
    let mut plans: Vec<Plan> = Vec::new();
    let mut t = 200u64;
    while t < 4_000 {
        let label = RACE_LABELS[scn.gen_range(0..RACE_LABELS.len())];
        let seq = EPOCH_MS + t;
        let expires = EPOCH_MS + t + scn.gen_range(800..=RACE_MAX_TTL_MS);
        let twins = if scn.gen_bool(0.1) { 2 } else { 1 };
        for k in 0..twins {
            let rec = sign(
                &key,
                label,
                seq,
                expires,
                Content::Endpoints(vec![endpoint(t * 2 + k)]),
            )?;
            let rec = w.intern(rec);
            plans.push(Plan {
                label,
                rec,
                seq,
                expires_at_ms: expires,
            });
        }
        t += scn.gen_range(150..=400);
    }
    // Enactors: each plan applied by one or two enactors through random nodes; a third of
    // the applications stall for 0.5–2.5 s first (the stale plan).
    for (i, plan) in plans.iter().enumerate() {
        let planned = plan.seq - EPOCH_MS;
        for _ in 0..scn.gen_range(1..=2) {
            let stall = if scn.gen_bool(0.33) {
                scn.gen_range(500..2_500)
            } else {
                scn.gen_range(1..50)
            };
            let at = planned + stall;
            let via = pick(&mut scn);
            w.schedule(
                at,
                Action::Write {
                    via,
                    rec: plan.rec,
                    expected: None,
                },
            )?;
            // The writer (or its node) crashes mid-plan: after the apply, before the fsync
            // acknowledged it.
            if scn.gen_bool(0.05) {
                w.schedule(at + 1, Action::Crash(via))?;
                w.schedule(at + scn.gen_range(300..2_000), Action::Restart(via))?;
            }
            // Clean-up after an applied plan: delete an older plan of the same label, naming
            // its seq (compare-and-set) with a tombstone one above it.
            if scn.gen_bool(0.5) {
                if let Some(old) = plans[..i]
                    .iter()
                    .filter(|o| o.label == plan.label && o.seq < plan.seq)
                    .collect::<Vec<_>>()
                    .choose(&mut scn)
                {
                    let tomb = sign(
                        &key,
                        old.label,
                        old.seq + 1,
                        old.expires_at_ms.max(EPOCH_MS + at + 500),
                        Content::Tombstone,
                    )?;
                    let tomb = w.intern(tomb);
                    w.schedule(
                        at + scn.gen_range(5..200),
                        Action::Write {
                            via,
                            rec: tomb,
                            expected: Some(old.seq),
                        },
                    )?;
                }
            }
        }
    }
    // Faults: partitions and crashes.
    for _ in 0..scn.gen_range(0..=2) {
        let at = scn.gen_range(300..4_000);
        let cut = scn.gen_range(1..n.max(2));
        let mut sides: Vec<u8> = (0..n).map(|i| u8::from(i < cut)).collect();
        sides.shuffle(&mut scn);
        w.schedule(at, Action::Partition(sides))?;
        w.schedule(at + scn.gen_range(300..2_500), Action::Heal)?;
    }
    for _ in 0..scn.gen_range(0..=3) {
        let at = scn.gen_range(100..4_500);
        let node = pick(&mut scn);
        w.schedule(at, Action::Crash(node))?;
        w.schedule(at + scn.gen_range(200..3_000), Action::Restart(node))?;
    }
    // Long enough that every record expires and is compacted (max TTL + retention + skew)
    // while the nodes still run.
    let end_faults = 4_000 + RACE_MAX_TTL_MS + RACE_RETENTION_MS + 2_500;
    w.schedule(end_faults, Action::Heal)?;
    for node in 0..n as NodeId {
        w.schedule(end_faults, Action::Restart(node))?;
    }
    w.run_until(end_faults)?;
    let end = settle(&mut w, end_faults)?;
    let mut r = Report::new(&w);
    r.finish(&w, end);
    r.converge_ms = Some(end - end_faults);
    Ok(r)
}

fn churn(cfg: WorldConfig) -> Result<Report, SimError> {
    let mut scn = rng::stream(cfg.seed, "scenario");
    let n = cfg.nodes;
    let capacity = cfg.capacity;
    let mut w = World::new(cfg)?;
    let key = ZoneKey::generate(&mut scn);
    let names = 20u64;
    let run_ms = 10_000u64;
    let mut t = 100u64;
    let mut seq = 0u64;
    while t < run_ms {
        seq += 1;
        let label = format!("svc{}", scn.gen_range(0..names));
        let rec = sign(
            &key,
            &label,
            EPOCH_MS + t,
            EPOCH_MS + 3_600_000,
            Content::Endpoints(vec![endpoint(seq)]),
        )?;
        let rec = w.intern(rec);
        let via = scn.gen_range(0..capacity) as NodeId;
        w.schedule(
            t,
            Action::Write {
                via,
                rec,
                expected: None,
            },
        )?;
        t += scn.gen_range(20..150);
    }
    let mut next_join = n as NodeId;
    let mut t = 300u64;
    while t < run_ms {
        let node = scn.gen_range(0..n) as NodeId;
        match scn.gen_range(0..10) {
            0..=4 => {
                w.schedule(t, Action::Crash(node))?;
                w.schedule(t + scn.gen_range(200..4_000), Action::Restart(node))?;
            }
            5..=7 if (next_join as usize) < capacity => {
                w.schedule(t, Action::Join(next_join))?;
                next_join += 1;
            }
            8 => w.schedule(t, Action::Leave(node))?,
            _ => {}
        }
        t += scn.gen_range(100..800);
    }
    let end_faults = run_ms + 4_000;
    for node in 0..capacity as NodeId {
        w.schedule(end_faults, Action::Restart(node))?;
    }
    w.run_until(end_faults)?;
    let end = settle(&mut w, end_faults)?;
    let mut r = Report::new(&w);
    r.finish(&w, end);
    r.converge_ms = Some(end - end_faults);
    Ok(r)
}
