//! The chaos report: the SPEC §5 JSON object (every required field, plus diagnostics) and the
//! human summary printed at the end of a run.
//!
//! The JSON is the contract scripts and CI read; its field names and meanings are fixed by
//! SPEC §5 and documented in [`crate::checker`]. Extra fields only add detail.

use serde::{Deserialize, Serialize};

use crate::checker::{Findings, Propagation, Queries, Violation, Writes};

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
    /// Query counts.
    pub queries: Queries,
    /// Write counts.
    pub writes: Writes,
    /// Propagation latency of acknowledged writes to the other nodes.
    pub propagation_ms: Propagation,
    /// Every node held identical records (equal store digests) after healing.
    pub converged: bool,
    /// Seconds from the heal to equal digests (absent if not converged).
    pub convergence_s: Option<f64>,
    /// How partitions were made (or why there were none).
    pub partition_method: String,
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
    /// Examples of violated invariants.
    pub violations: Vec<Violation>,
    /// Problems of the harness itself (a restart that failed, ...).
    pub harness_errors: Vec<String>,
    /// Whether the run passed: no failed query, no empty answer, no lost write, no stale write
    /// applied, converged, and no harness error.
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
}

impl Report {
    /// Combines the checker's findings with the run's facts.
    pub fn new(meta: RunMeta, f: &Findings) -> Self {
        let converged = meta.convergence.is_some();
        let pass = f.invariants_hold() && converged && meta.harness_errors.is_empty();
        Report {
            nodes: meta.nodes,
            duration_s: meta.duration_s,
            seed: meta.seed,
            kills: meta.counts.kills,
            restarts: meta.counts.restarts,
            partitions: meta.counts.partitions,
            pauses: meta.counts.pauses,
            queries: f.queries.clone(),
            writes: f.writes.clone(),
            propagation_ms: f.propagation.clone(),
            converged,
            convergence_s: meta.convergence,
            partition_method: meta.partition_method,
            dns: meta.dns,
            dns_note: meta.dns_note,
            stale_bound_ms: meta.stale_bound_ms,
            faults: meta.faults,
            max_down: meta.max_down,
            replay: meta.replay,
            history: meta.history,
            base_dir: meta.base_dir,
            dpin: meta.dpin,
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
                "  faults     kills {}  restarts {}  pauses {}  partitions {}",
                self.kills, self.restarts, self.pauses, self.partitions
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
                "             stale  {} (older than the newest write acknowledged > {} ms before)",
                q.stale, self.stale_bound_ms
            ),
            format!(
                "  writes     acknowledged {}, indeterminate {}, refused (other) {}",
                w.acknowledged, w.indeterminate, w.refused_other
            ),
            format!("             lost {}{}", w.lost, mark(w.lost > 0)),
            format!(
                "             stale plans / old tombstones refused {}, applied {}{}",
                w.refused_stale,
                w.stale_applied,
                mark(w.stale_applied > 0)
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
            format!("  partitions {}", self.partition_method),
        ];
        if let Some(n) = &self.dns_note {
            s.push(format!("  dns        off: {n}"));
        }
        for v in self.violations.iter().take(12) {
            s.push(format!("  ! {}: {}", v.kind, v.detail));
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
