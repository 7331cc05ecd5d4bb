//! The chaos report: the SPEC §5 JSON object (every required field, plus diagnostics) and the
//! human summary printed at the end of a run.
//!
//! The JSON is the contract scripts and CI read; its field names and meanings are fixed by
//! SPEC §5 and documented in [`crate::checker`]. Extra fields only add detail: `regressions`
//! and `content_mismatches` (the per-node monotonic-read and content checks), `race` (the
//! seed's race through the CLI), `clock_skew` (which mechanism skewed clocks, if any),
//! `record_ttl_ms` and `compaction_horizon_ms` (so a reader knows expiry and compaction
//! happened during the run), `probing` (the workload's endpoints are never probed),
//! `link_model` and `wan` (the emulated WAN links and what the switch did with the packets),
//! `partition_groups` (every split and one-way cut with its two groups) and
//! `heal_convergence_ms` (how long after each group partition healed every node caught up).
//! `queries` splits stale answers by whether their node said it was cut off
//! (`stale_cut_off`, `stale_cut_off_kept`, `stale_connected`) and counts the readers'
//! failovers from such answers (`cut_off_answers`, `failover_reads`, `fallbacks`).
//! `peer_bans` counts the bans in the nodes' logs: every node and peer is honest, so any ban
//! fails the run (issue 15).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checker::{Findings, HealConvergence, Propagation, Queries, Race, Violation, Writes};
use crate::history::{FaultKind, History};
use crate::wan::{LinkModel, WanCounts};

/// One group partition of the run, as the report lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartitionGroups {
    /// `split` or `oneway`.
    pub kind: String,
    /// Injected, s since start.
    pub start_s: f64,
    /// Healed, s since start.
    pub end_s: f64,
    /// Side A (the smaller half; for `oneway` the side that cannot hear side B).
    pub a: Vec<usize>,
    /// Side B.
    pub b: Vec<usize>,
}

/// The group partitions of a history, once each (the history holds one span per node).
pub fn partition_groups(h: &History) -> Vec<PartitionGroups> {
    let mut out: Vec<PartitionGroups> = Vec::new();
    for f in &h.faults {
        if !matches!(f.kind, FaultKind::Split | FaultKind::OneWay) {
            continue;
        }
        let Some([a, b]) = f.groups.as_deref() else {
            continue;
        };
        let (start_s, end_s) = (f.start_ms / 1000.0, f.end_ms / 1000.0);
        if out
            .iter()
            .any(|g| g.start_s == start_s && g.end_s == end_s && g.kind == f.kind.as_str())
        {
            continue;
        }
        out.push(PartitionGroups {
            kind: f.kind.as_str().to_owned(),
            start_s,
            end_s,
            a: a.clone(),
            b: b.clone(),
        });
    }
    out.sort_by(|x, y| x.start_s.total_cmp(&y.start_s));
    out
}

/// How clocks were skewed (SPEC §5's "faults such as clock skew").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockSkew {
    /// `libfaketime`, or `none` (not requested, or the library is missing).
    pub mechanism: String,
    /// How far a skewed clock was off, ms (ahead or behind).
    pub skew_ms: u64,
    /// The library used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
    /// How, or why not.
    pub note: String,
}

/// Peers banned by the run's nodes, from their logs ([`crate::cluster::scan_bans`]). Every
/// node and peer of a chaos run is honest, so any ban fails the run (issue 15: honest peers
/// graylisted by broken IWANT promises behind one-way cuts were banned for 15 minutes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerBans {
    /// Bans, all nodes and restarts together.
    pub total: u64,
    /// Bans by the reason the node logged (`graylisted`, `over_budget`, `invalid`).
    pub by_reason: BTreeMap<String, u64>,
    /// The first few ban lines, each prefixed with its log file's name.
    pub examples: Vec<String>,
}

/// The report written to `--report FILE`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Number of nodes.
    pub nodes: usize,
    /// Length of the workload phase, seconds.
    pub duration_s: f64,
    /// The seed (replays the same schedule and workload decisions).
    pub seed: u64,
    /// SIGKILLs.
    pub kills: u64,
    /// Restarts after kills.
    pub restarts: u64,
    /// Partitions.
    pub partitions: u64,
    /// SIGSTOP/SIGCONT pauses.
    pub pauses: u64,
    /// Clock skews.
    #[serde(default)]
    pub skews: u64,
    /// Split-brain partitions.
    #[serde(default)]
    pub splits: u64,
    /// One-way cuts.
    #[serde(default)]
    pub oneway_cuts: u64,
    /// Clean restarts of the rolling-restart mode.
    #[serde(default)]
    pub clean_restarts: u64,
    /// The emulated link of every node-to-node path (absent: no WAN switch, loopback).
    #[serde(default)]
    pub link_model: Option<LinkModel>,
    /// What the WAN switch did with the nodes' packets.
    #[serde(default)]
    pub wan: Option<WanCounts>,
    /// Every split and one-way cut, with its groups.
    #[serde(default)]
    pub partition_groups: Vec<PartitionGroups>,
    /// How long after each group partition healed every node held what either side had
    /// acknowledged.
    #[serde(default)]
    pub heal_convergence_ms: HealConvergence,
    /// Query counts.
    pub queries: Queries,
    /// Write counts.
    pub writes: Writes,
    /// Reads at one node that went backwards in seq (must be 0).
    #[serde(default)]
    pub regressions: u64,
    /// Answers whose content is not the record of their seq (must be 0).
    #[serde(default)]
    pub content_mismatches: u64,
    /// The seed's race through the CLI.
    #[serde(default)]
    pub race: Race,
    /// Propagation latency of acknowledged writes to the other nodes.
    pub propagation_ms: Propagation,
    /// Every node held identical records (equal store digests) after healing.
    pub converged: bool,
    /// Seconds from the heal to equal digests (absent if not converged).
    pub convergence_s: Option<f64>,
    /// How partitions were made (or why there were none).
    pub partition_method: String,
    /// How clocks were skewed (or why they were not).
    pub clock_skew: ClockSkew,
    /// Lifetime of the workload's records, ms.
    pub record_ttl_ms: u64,
    /// The nodes' compaction horizon, ms (absent: the node binary has no such flag).
    pub compaction_horizon_ms: Option<u64>,
    /// Whether nodes probed endpoints.
    pub probing: String,
    /// The `dpin` binary the race ran as its CLI.
    pub race_cli: String,
    /// Whether the readers also queried DNS.
    pub dns: bool,
    /// Why DNS was not used, if it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_note: Option<String>,
    /// The staleness bound used, ms.
    pub stale_bound_ms: f64,
    /// Fault kinds scheduled.
    pub faults: Vec<String>,
    /// Most nodes faulted at once.
    pub max_down: usize,
    /// The exact command that replays this run.
    pub replay: String,
    /// History file (JSONL).
    pub history: String,
    /// Folder with the nodes' data dirs and logs.
    pub base_dir: String,
    /// The node binary that ran (`dpin`, or dpin-sim's built-in node).
    pub dpin: String,
    /// Peers the nodes banned (all of them honest): any fails the run.
    #[serde(default)]
    pub peer_bans: PeerBans,
    /// Examples of violated invariants.
    pub violations: Vec<Violation>,
    /// Problems of the harness itself (a restart that failed, ...).
    pub harness_errors: Vec<String>,
    /// Whether the run passed: no failed query, no empty answer, no lost write, no stale write
    /// applied or holding after the heal, no read going backwards, no wrong content,
    /// converged, no honest peer banned, and no harness error.
    pub pass: bool,
}

/// Run facts the checker does not know.
#[derive(Clone, Debug)]
pub struct RunMeta {
    /// Nodes.
    pub nodes: usize,
    /// Workload duration, s.
    pub duration_s: f64,
    /// Seed.
    pub seed: u64,
    /// kills, restarts, partitions, pauses.
    pub counts: crate::nemesis::FaultCounts,
    /// Converged, and how long it took.
    pub convergence: Option<f64>,
    /// Partition method text.
    pub partition_method: String,
    /// Clock skew mechanism.
    pub clock_skew: ClockSkew,
    /// Record TTL, ms.
    pub record_ttl_ms: u64,
    /// Compaction horizon, ms.
    pub compaction_horizon_ms: Option<u64>,
    /// Probing text.
    pub probing: String,
    /// The race's CLI.
    pub race_cli: String,
    /// DNS used.
    pub dns: bool,
    /// Why not.
    pub dns_note: Option<String>,
    /// Bound.
    pub stale_bound_ms: f64,
    /// Faults.
    pub faults: Vec<String>,
    /// Max down.
    pub max_down: usize,
    /// Replay command.
    pub replay: String,
    /// History path.
    pub history: String,
    /// Base dir.
    pub base_dir: String,
    /// Node binary.
    pub dpin: String,
    /// Harness errors.
    pub harness_errors: Vec<String>,
    /// Link model, if the WAN switch ran.
    pub link_model: Option<LinkModel>,
    /// The switch's counters.
    pub wan: Option<WanCounts>,
    /// Group partitions.
    pub partition_groups: Vec<PartitionGroups>,
}

impl Report {
    /// Combines the checker's findings with the run's facts, and counts the bans in the
    /// nodes' logs under `meta.base_dir` ([`crate::cluster::scan_bans`]; logs that cannot be
    /// read are a harness error).
    pub fn new(mut meta: RunMeta, f: &Findings) -> Self {
        let converged = meta.convergence.is_some();
        let peer_bans = match crate::cluster::scan_bans(Path::new(&meta.base_dir)) {
            Ok(bans) => bans,
            Err(e) => {
                meta.harness_errors
                    .push(format!("cannot count bans in the nodes' logs: {e:#}"));
                PeerBans::default()
            }
        };
        let pass = f.invariants_hold()
            && converged
            && meta.harness_errors.is_empty()
            && f.heal.unconverged == 0
            && peer_bans.total == 0;
        Report {
            nodes: meta.nodes,
            duration_s: meta.duration_s,
            seed: meta.seed,
            kills: meta.counts.kills,
            restarts: meta.counts.restarts,
            partitions: meta.counts.partitions,
            pauses: meta.counts.pauses,
            skews: meta.counts.skews,
            splits: meta.counts.splits,
            oneway_cuts: meta.counts.oneway_cuts,
            clean_restarts: meta.counts.clean_restarts,
            link_model: meta.link_model,
            wan: meta.wan,
            partition_groups: meta.partition_groups,
            heal_convergence_ms: f.heal.clone(),
            queries: f.queries.clone(),
            writes: f.writes.clone(),
            regressions: f.regressions,
            content_mismatches: f.content_mismatches,
            race: f.race.clone(),
            propagation_ms: f.propagation.clone(),
            converged,
            convergence_s: meta.convergence,
            partition_method: meta.partition_method,
            clock_skew: meta.clock_skew,
            record_ttl_ms: meta.record_ttl_ms,
            compaction_horizon_ms: meta.compaction_horizon_ms,
            probing: meta.probing,
            race_cli: meta.race_cli,
            dns: meta.dns,
            dns_note: meta.dns_note,
            stale_bound_ms: meta.stale_bound_ms,
            faults: meta.faults,
            max_down: meta.max_down,
            replay: meta.replay,
            history: meta.history,
            base_dir: meta.base_dir,
            dpin: meta.dpin,
            peer_bans,
            violations: f.examples.clone(),
            harness_errors: meta.harness_errors,
            pass,
        }
    }

    /// The human summary (several lines, no trailing newline).
    pub fn summary(&self) -> String {
        let q = &self.queries;
        let w = &self.writes;
        let p = &self.propagation_ms;
        let mark = |bad: bool| if bad { "  <-- FAIL" } else { "" };
        let mut s = vec![
            format!(
                "dpin chaos: {} nodes, {:.1} s, seed {}, faults [{}], max down {}",
                self.nodes,
                self.duration_s,
                self.seed,
                self.faults.join(","),
                self.max_down
            ),
            format!(
                "  faults     kills {}  restarts {}  pauses {}  partitions {}  clock skews {} ({}, ±{} s)",
                self.kills,
                self.restarts,
                self.pauses,
                self.partitions,
                self.skews,
                self.clock_skew.mechanism,
                self.clock_skew.skew_ms / 1000
            ),
            format!(
                "             splits {}  one-way cuts {}  clean restarts {}",
                self.splits, self.oneway_cuts, self.clean_restarts
            ),
            format!(
                "  links      {}",
                match (&self.link_model, &self.wan) {
                    (Some(m), Some(w)) => format!(
                        "{}; switch forwarded {}, lost {}, cut {}, overflow {}",
                        m.describe(),
                        w.forwarded,
                        w.lost,
                        w.cut,
                        w.overflow
                    ),
                    (Some(m), None) => m.describe(),
                    _ => "loopback (no WAN switch)".to_owned(),
                }
            ),
            format!(
                "  records    ttl {} ms, compaction horizon {}, endpoint probing off",
                self.record_ttl_ms,
                self.compaction_horizon_ms
                    .map_or("none (node lacks the flag)".to_owned(), |h| format!("{h} ms"))
            ),
            format!(
                "  queries    {} reads ({} rounds{}): ok {}, unanswered {} (faulted nodes)",
                q.total,
                q.rounds,
                if self.dns {
                    ", HTTP + DNS"
                } else {
                    ", HTTP only"
                },
                q.ok,
                q.unanswered
            ),
            format!("             failed {}{}", q.failed, mark(q.failed > 0)),
            format!(
                "             slow   {} (no node answered within {} ms; answered on retry)",
                q.slow,
                crate::workload::READ_TIMEOUT.as_millis()
            ),
            format!("             empty  {}{}", q.empty, mark(q.empty > 0)),
            format!(
                "             expired {} (no record: it had expired), of which by a skewed clock only {}",
                q.expired + q.expired_by_skew,
                q.expired_by_skew
            ),
            format!(
                "             went backwards at one node {}{}",
                self.regressions,
                mark(self.regressions > 0)
            ),
            format!(
                "             wrong content {}{}",
                self.content_mismatches,
                mark(self.content_mismatches > 0)
            ),
            format!(
                "             stale  {} (older than the newest write acknowledged > {} ms before), of which across a partition {}",
                q.stale, self.stale_bound_ms, q.stale_partitioned
            ),
            format!(
                "             stale from nodes that said they were cut off {} (kept by the reader, no other node answering without the flag: {}), from nodes that did not {}",
                q.stale_cut_off, q.stale_cut_off_kept, q.stale_connected
            ),
            format!(
                "             said cut off {} answers; readers failed over with {} reads, kept {} flagged answers",
                q.cut_off_answers, q.failover_reads, q.fallbacks
            ),
            format!(
                "             no record yet, the writes being across a partition: {}",
                q.unreached_by_partition
            ),
            format!(
                "  writes     acknowledged {}, indeterminate {}, refused (other) {}",
                w.acknowledged, w.indeterminate, w.refused_other
            ),
            format!("             lost {}{}", w.lost, mark(w.lost > 0)),
            format!(
                "             stale plans / old tombstones refused {}, applied over a newer seq {}{}",
                w.refused_stale,
                w.stale_applied,
                mark(w.stale_applied > 0)
            ),
            format!(
                "  race (CLI) {} rounds, {} plans signed, newer writes acked {}; stale refused {}, enacted {} (then overridden {}), ties {}",
                self.race.rounds,
                self.race.plans_signed,
                self.race.newer_acknowledged,
                self.race.stale_refused,
                self.race.stale_enacted,
                self.race.enacted_then_overridden,
                self.race.ties
            ),
            format!(
                "             stale plan holds after heal {}{}",
                self.race.stale_held_after_heal,
                mark(self.race.stale_held_after_heal > 0)
            ),
            format!(
                "  propagation p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
                p.p50, p.p99, p.max, p.samples
            ),
            format!(
                "  converged  {}{}{}",
                self.converged,
                self.convergence_s
                    .map(|s| format!(" ({s:.1} s after healing)"))
                    .unwrap_or_default(),
                mark(!self.converged)
            ),
            format!(
                "  heals      {} group partitions healed: converged p50 {:.0} ms, max {:.0} ms; not converged {}; probes cut off again by a later fault {}{}",
                self.heal_convergence_ms.heals,
                self.heal_convergence_ms.p50,
                self.heal_convergence_ms.max,
                self.heal_convergence_ms.unconverged,
                self.heal_convergence_ms.interrupted_probes,
                mark(self.heal_convergence_ms.unconverged > 0)
            ),
            format!("  slow heals {}", heal_details(&self.heal_convergence_ms.each)),
            format!(
                "  bans       honest peers banned {}{}{}",
                self.peer_bans.total,
                if self.peer_bans.by_reason.is_empty() {
                    String::new()
                } else {
                    format!(" {:?}", self.peer_bans.by_reason)
                },
                mark(self.peer_bans.total > 0)
            ),
            format!("  partitions {}", self.partition_method),
            format!("  clock skew {}", self.clock_skew.note),
        ];
        if let Some(n) = &self.dns_note {
            s.push(format!("  dns        off: {n}"));
        }
        for g in self.partition_groups.iter().take(20) {
            s.push(format!(
                "  {} {:.1}-{:.1} s: A {:?} | B {:?}",
                g.kind, g.start_s, g.end_s, g.a, g.b
            ));
        }
        for v in self.violations.iter().take(12) {
            s.push(format!("  ! {}: {}", v.kind, v.detail));
        }
        for b in &self.peer_bans.examples {
            s.push(format!("  ! ban: {b}"));
        }
        for e in &self.harness_errors {
            s.push(format!("  ! harness: {e}"));
        }
        s.push(format!(
            "{}: history {}, nodes' logs in {}",
            if self.pass { "PASS" } else { "FAIL" },
            self.history,
            self.base_dir
        ));
        s.push(format!("replay: {}", self.replay));
        s.join("\n")
    }
}

/// The slowest heals for the summary (the report's JSON keeps every one): `at s: ms (last:
/// node N, label)`, unconverged ones first.
fn heal_details(each: &[crate::checker::HealDetail]) -> String {
    if each.is_empty() {
        return "-".to_owned();
    }
    let mut slowest: Vec<&crate::checker::HealDetail> = each.iter().collect();
    slowest.sort_by(|a, b| {
        let key = |h: &crate::checker::HealDetail| h.converged_ms.unwrap_or(f64::INFINITY);
        key(b).total_cmp(&key(a))
    });
    let shown: Vec<String> = slowest
        .iter()
        .take(HEALS_LISTED)
        .map(|h| {
            let took = h
                .converged_ms
                .map_or_else(|| "not converged".to_owned(), |ms| format!("{ms:.0} ms"));
            let last = match (h.last_node, &h.last_name) {
                // The label: every name of a run is in the harness's one zone.
                (Some(n), Some(name)) => {
                    format!(
                        " (last: node {n}, {})",
                        name.split('.').next().unwrap_or(name)
                    )
                }
                _ => String::new(),
            };
            format!("at {:.1} s {took}{last}", h.at_ms / 1000.0)
        })
        .collect();
    format!(
        "slowest {} of {}: {}",
        shown.len(),
        each.len(),
        shown.join("; ")
    )
}

/// Heals the summary lists ([`heal_details`]).
const HEALS_LISTED: usize = 5;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::HealDetail;

    #[test]
    fn the_summary_lists_the_slowest_heals_unconverged_first_with_their_last_node_and_label() {
        let heal = |at_ms: f64, converged_ms: Option<f64>, node: usize| HealDetail {
            at_ms,
            converged_ms,
            last_node: Some(node),
            last_name: Some(format!("svc-{node}.zone")),
            counted: 25,
            interrupted: 0,
        };
        let each: Vec<HealDetail> = (0..7)
            .map(|i| {
                heal(
                    1_000.0 * f64::from(i),
                    Some(100.0 * f64::from(i)),
                    i as usize,
                )
            })
            .chain([heal(9_000.0, None, 9)])
            .collect();
        assert_eq!(
            heal_details(&each),
            "slowest 5 of 8: at 9.0 s not converged (last: node 9, svc-9); \
             at 6.0 s 600 ms (last: node 6, svc-6); at 5.0 s 500 ms (last: node 5, svc-5); \
             at 4.0 s 400 ms (last: node 4, svc-4); at 3.0 s 300 ms (last: node 3, svc-3)"
        );
        assert_eq!(heal_details(&[]), "-");
    }
}
