//! The checker: judges a [`History`] against the invariants of SPEC §3 and computes the
//! numbers of the SPEC §5 chaos report.
//!
//! It is pure (no I/O, no clock), so it can be tested on hand-made histories and re-run on a
//! recorded one. The definitions, precisely:
//!
//! * **queries.total** — every [`OpKind::Read`] (one name at one node, HTTP or DNS).
//!   **ok** — reads answered with at least one endpoint. **unanswered** — reads that timed out
//!   or errored (expected while that node is faulted; not a failure by itself).
//! * **queries.failed** — read *rounds* (all reads sharing a `round`: one name asked from every
//!   node at once, and once more if nobody answered) in which NO node answered. This is the
//!   outage SPEC §5 calls "a query that no peer answered". A read without a round is a round of
//!   its own. **slow** — rounds that were retried (some node was asked twice) and answered only
//!   by the retry: every node stalled past the first timeout.
//! * **queries.empty** — answers without an endpoint (404, NXDOMAIN, an empty endpoint list)
//!   for a name that has a live record: an acknowledged write of the name finished before the
//!   read started, and either the staleness bound has passed since the name's first
//!   acknowledgement or the same node had already answered the name with endpoints. (No
//!   acknowledged write ever deletes a name: the only tombstones are the clean-up job's, which
//!   must be refused.)
//! * **queries.stale** — answers whose seq is lower than the highest seq acknowledged more than
//!   `stale_bound_ms` before the read started. Reported, not fatal: a partitioned node is
//!   expected to serve stale answers.
//! * **writes.acknowledged** — [`OpKind::Write`]s answered 200 (applied, duplicate,
//!   conflict_won). **indeterminate** — writes (of any kind) that timed out or errored.
//! * **writes.refused_stale** — the race's stale plans and the clean-up job's old tombstones
//!   that were answered 409 stale, as they must be. **stale_applied** — those that were
//!   acknowledged instead: the seed's failure; fatal.
//! * **writes.lost** — acknowledged writes that are absent, or superseded by a lower seq, in
//!   the final state: for every node that took part in the final reads, the last
//!   [`OpKind::FinalRead`] of the name must show a record with endpoints and seq ≥ the write's
//!   seq. Without any final read every acknowledged write counts as lost (nothing shows it).
//! * **propagation_ms** — for every write acknowledged as `applied` at node k and every other
//!   node j: from the acknowledgement to the end of the first observation at j that shows the
//!   name with seq ≥ the write's (clamped at 0). Observations are the [`OpKind::Probe`]s for
//!   that write (`want_seq`) if the history has any probes (they poll right after the
//!   acknowledgement), otherwise the reads (whose sampling interval then inflates the figure). Pairs where k or j was faulted in between are
//!   left out (that is recovery time, not propagation), as are pairs never observed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{FaultSpan, History, Op, OpKind, OpOutcome};

/// Default staleness bound: an answer may lag the newest acknowledged write by this long.
pub const DEFAULT_STALE_BOUND_MS: f64 = 5000.0;
/// At most this many example violations are kept per kind.
pub const MAX_EXAMPLES: usize = 10;

/// Checker settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CheckConfig {
    /// See [`DEFAULT_STALE_BOUND_MS`].
    pub stale_bound_ms: f64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            stale_bound_ms: DEFAULT_STALE_BOUND_MS,
        }
    }
}

/// Query counts (SPEC §5 `queries`, plus diagnostics).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queries {
    /// Reads (one name at one node).
    pub total: u64,
    /// Reads answered with at least one endpoint.
    pub ok: u64,
    /// Read rounds no node answered.
    pub failed: u64,
    /// Answers without an endpoint for a live name.
    pub empty: u64,
    /// Answers older than the newest write acknowledged before the staleness bound.
    pub stale: u64,
    /// Read rounds.
    pub rounds: u64,
    /// Rounds no node answered within the first attempt's timeout, answered only when retried
    /// (a node-wide stall: not an outage by the SPEC's definition, but worth a look).
    pub slow: u64,
    /// Reads with no answer (timeout or error) — a faulted node, not an outage by itself.
    pub unanswered: u64,
}

/// Write counts (SPEC §5 `writes`, plus diagnostics).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writes {
    /// Writes answered 200.
    pub acknowledged: u64,
    /// Acknowledged writes absent or superseded by a lower seq at the end.
    pub lost: u64,
    /// Stale plans and old tombstones correctly refused with 409 stale.
    pub refused_stale: u64,
    /// Stale plans and old tombstones that were acknowledged (must be 0).
    pub stale_applied: u64,
    /// Writes of any kind without an answer (timeout, connection error, 5xx).
    pub indeterminate: u64,
    /// Writes refused for another reason (conflict, invalid).
    pub refused_other: u64,
}

/// Propagation latency percentiles.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Propagation {
    /// Median, ms.
    pub p50: f64,
    /// 99th percentile, ms.
    pub p99: f64,
    /// Maximum, ms.
    pub max: f64,
    /// Number of (write, node) pairs measured.
    pub samples: u64,
}

/// One example of a violated invariant, for the human summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// `failed`, `empty`, `lost`, `stale`, `stale_applied`.
    pub kind: String,
    /// What exactly.
    pub detail: String,
}

/// Everything the checker found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Findings {
    /// Query counts.
    pub queries: Queries,
    /// Write counts.
    pub writes: Writes,
    /// Propagation percentiles.
    pub propagation: Propagation,
    /// Propagation samples: (acknowledgement time ms, latency ms), by acknowledgement time.
    pub propagation_samples: Vec<(f64, f64)>,
    /// Example violations (at most [`MAX_EXAMPLES`] per kind).
    pub examples: Vec<Violation>,
}

impl Findings {
    /// Whether the invariants that must hold in every run held: no failed query, no empty
    /// answer, no lost write, no stale write applied.
    pub fn invariants_hold(&self) -> bool {
        self.queries.failed == 0
            && self.queries.empty == 0
            && self.writes.lost == 0
            && self.writes.stale_applied == 0
    }

    fn example(&mut self, kind: &str, detail: String) {
        if self.examples.iter().filter(|v| v.kind == kind).count() < MAX_EXAMPLES {
            self.examples.push(Violation {
                kind: kind.to_owned(),
                detail,
            });
        }
    }
}

/// Acknowledged writes of one name: (ack time, seq) sorted by ack time, with the running
/// maximum of seq, so "highest seq acknowledged by time t" is one binary search.
struct AckIndex {
    times: Vec<f64>,
    running_max: Vec<u64>,
}

impl AckIndex {
    fn new(mut acks: Vec<(f64, u64)>) -> Self {
        acks.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut max = 0;
        let running_max = acks
            .iter()
            .map(|&(_, s)| {
                max = max.max(s);
                max
            })
            .collect();
        Self {
            times: acks.iter().map(|a| a.0).collect(),
            running_max,
        }
    }

    /// Highest seq acknowledged at or before `t`.
    fn max_by(&self, t: f64) -> Option<u64> {
        let n = self.times.partition_point(|&x| x <= t);
        n.checked_sub(1).map(|i| self.running_max[i])
    }

    fn first_ack(&self) -> Option<f64> {
        self.times.first().copied()
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn faulted_between(faults: &[FaultSpan], node: usize, from: f64, to: f64) -> bool {
    faults
        .iter()
        .any(|f| f.node == node && f.start_ms <= to && f.end_ms >= from)
}

fn describe(op: &Op) -> String {
    format!(
        "{:?} {:?} by {} at node {} of {} [{:.0}..{:.0} ms]: {:?} seq {:?} endpoints {:?}{}",
        op.kind,
        op.proto,
        op.process,
        op.node,
        op.name,
        op.start_ms,
        op.end_ms,
        op.outcome,
        op.seq,
        op.endpoints,
        op.detail
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default()
    )
}

/// Checks a history. See the module docs for the definitions.
pub fn check(history: &History, config: &CheckConfig) -> Findings {
    let mut f = Findings::default();
    let bound = config.stale_bound_ms;

    // Acknowledged writes per name.
    let mut acks: BTreeMap<&str, Vec<(f64, u64)>> = BTreeMap::new();
    for op in &history.ops {
        if op.kind == OpKind::Write && op.outcome.is_ack() {
            if let Some(seq) = op.seq {
                acks.entry(&op.name).or_default().push((op.end_ms, seq));
            }
        }
    }
    let acks: BTreeMap<&str, AckIndex> = acks
        .into_iter()
        .map(|(k, v)| (k, AckIndex::new(v)))
        .collect();

    // Writes.
    for op in &history.ops {
        match op.kind {
            OpKind::Write => match op.outcome {
                o if o.is_ack() => f.writes.acknowledged += 1,
                OpOutcome::Timeout | OpOutcome::Error => f.writes.indeterminate += 1,
                _ => f.writes.refused_other += 1,
            },
            OpKind::StalePlan | OpKind::Cleanup => match op.outcome {
                OpOutcome::Stale => f.writes.refused_stale += 1,
                o if o.is_ack() => {
                    f.writes.stale_applied += 1;
                    f.example("stale_applied", describe(op));
                }
                OpOutcome::Timeout | OpOutcome::Error => f.writes.indeterminate += 1,
                _ => f.writes.refused_other += 1,
            },
            _ => {}
        }
    }

    // Reads, in start order so "the node already answered this name" is well defined.
    let mut reads: Vec<&Op> = history
        .ops
        .iter()
        .filter(|o| o.kind == OpKind::Read)
        .collect();
    reads.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    // (node, name) -> earliest end of an answer with endpoints.
    let mut answered_with_endpoints: BTreeMap<(usize, &str), f64> = BTreeMap::new();
    for op in &reads {
        if op.outcome == OpOutcome::Found && op.endpoints.unwrap_or(0) > 0 {
            let e = answered_with_endpoints
                .entry((op.node, op.name.as_str()))
                .or_insert(op.end_ms);
            *e = e.min(op.end_ms);
        }
    }
    // round -> (answered, an op of it, nodes asked, whether some node was asked twice)
    let mut rounds: BTreeMap<u64, (bool, &Op, BTreeSet<usize>, bool)> = BTreeMap::new();
    for op in &reads {
        f.queries.total += 1;
        let answered = op.outcome.is_answer();
        match op.round {
            Some(r) => {
                let e = rounds
                    .entry(r)
                    .or_insert_with(|| (false, op, BTreeSet::new(), false));
                e.0 |= answered;
                if !e.2.insert(op.node) {
                    e.3 = true;
                }
            }
            None => {
                f.queries.rounds += 1;
                if !answered {
                    f.queries.failed += 1;
                    f.example("failed", describe(op));
                }
            }
        }
        if !answered {
            f.queries.unanswered += 1;
            continue;
        }
        let ack = acks.get(op.name.as_str());
        let has_endpoints = op.outcome == OpOutcome::Found && op.endpoints.unwrap_or(0) > 0;
        if has_endpoints {
            f.queries.ok += 1;
            if let (Some(ack), Some(seen)) = (ack, op.seq) {
                if let Some(newest) = ack.max_by(op.start_ms - bound) {
                    if seen < newest {
                        f.queries.stale += 1;
                        f.example(
                            "stale",
                            format!("{} (seq {newest} was acknowledged by then)", describe(op)),
                        );
                    }
                }
            }
            continue;
        }
        // An answer without endpoints: empty, if the name has a live record.
        let Some(first_ack) = ack.and_then(AckIndex::first_ack) else {
            continue;
        };
        if first_ack > op.start_ms {
            continue;
        }
        let past_bound = op.start_ms >= first_ack + bound;
        let node_had_it = answered_with_endpoints
            .get(&(op.node, op.name.as_str()))
            .is_some_and(|&t| t <= op.start_ms);
        if past_bound || node_had_it {
            f.queries.empty += 1;
            f.example("empty", describe(op));
        }
    }
    for (answered, op, _, retried) in rounds.values() {
        f.queries.rounds += 1;
        if *answered && *retried {
            f.queries.slow += 1;
        }
        if !answered {
            f.queries.failed += 1;
            f.example(
                "failed",
                format!(
                    "round {:?}: no node answered, e.g. {}",
                    op.round,
                    describe(op)
                ),
            );
        }
    }

    // Lost writes: compare every acknowledged write with the final state at every node.
    let mut final_state: BTreeMap<(&str, usize), &Op> = BTreeMap::new();
    let mut final_nodes: BTreeSet<usize> = BTreeSet::new();
    for op in &history.ops {
        if op.kind != OpKind::FinalRead {
            continue;
        }
        final_nodes.insert(op.node);
        let e = final_state.entry((op.name.as_str(), op.node)).or_insert(op);
        if op.end_ms >= e.end_ms {
            *e = op;
        }
    }
    for op in &history.ops {
        if op.kind != OpKind::Write || !op.outcome.is_ack() {
            continue;
        }
        let Some(seq) = op.seq else { continue };
        let mut lost_at = Vec::new();
        if final_nodes.is_empty() {
            lost_at.push("every node (no final read)".to_owned());
        }
        for &node in &final_nodes {
            let shown = final_state
                .get(&(op.name.as_str(), node))
                .filter(|o| o.outcome == OpOutcome::Found && o.endpoints.unwrap_or(0) > 0)
                .and_then(|o| o.seq);
            match shown {
                Some(s) if s >= seq => {}
                Some(s) => lost_at.push(format!("node {node} shows seq {s}")),
                None => lost_at.push(format!("node {node} shows no record")),
            }
        }
        if !lost_at.is_empty() {
            f.writes.lost += 1;
            f.example(
                "lost",
                format!(
                    "{} acknowledged; at the end {}",
                    describe(op),
                    lost_at.join(", ")
                ),
            );
        }
    }

    // Propagation: measured by the probes if the history has any (each polls one node for one
    // acknowledged write, right after the ack), else by the first read that shows the write
    // (then the readers' sampling interval is part of the figure).
    let by_probe = history.ops.iter().any(|o| o.kind == OpKind::Probe);
    let mut probed: BTreeMap<(&str, usize, u64), f64> = BTreeMap::new();
    let mut seen: BTreeMap<(&str, usize), Vec<(f64, u64)>> = BTreeMap::new();
    let mut nodes: BTreeSet<usize> = BTreeSet::new();
    for op in &history.ops {
        nodes.insert(op.node);
        let found = op.outcome == OpOutcome::Found && op.endpoints.unwrap_or(0) > 0;
        let Some(s) = op.seq.filter(|_| found) else {
            continue;
        };
        match op.kind {
            OpKind::Probe if by_probe => {
                if let Some(want) = op.want_seq.filter(|&w| s >= w) {
                    let e = probed
                        .entry((op.name.as_str(), op.node, want))
                        .or_insert(op.end_ms);
                    *e = e.min(op.end_ms);
                }
            }
            OpKind::Read if !by_probe => {
                seen.entry((op.name.as_str(), op.node))
                    .or_default()
                    .push((op.end_ms, s));
            }
            _ => {}
        }
    }
    for v in seen.values_mut() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let mut samples = Vec::new();
    for w in &history.ops {
        if w.kind != OpKind::Write || w.outcome != OpOutcome::Applied {
            continue;
        }
        let Some(seq) = w.seq else { continue };
        for &j in nodes.iter().filter(|&&j| j != w.node) {
            let observed = if by_probe {
                probed.get(&(w.name.as_str(), j, seq)).copied()
            } else {
                seen.get(&(w.name.as_str(), j)).and_then(|obs| {
                    let from = obs.partition_point(|o| o.0 < w.start_ms);
                    obs[from..].iter().find(|o| o.1 >= seq).map(|o| o.0)
                })
            };
            let Some(t) = observed else { continue };
            if faulted_between(&history.faults, j, w.start_ms, t)
                || faulted_between(&history.faults, w.node, w.start_ms, t)
            {
                continue;
            }
            samples.push((w.end_ms, (t - w.end_ms).max(0.0)));
        }
    }
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut lat: Vec<f64> = samples.iter().map(|s| s.1).collect();
    lat.sort_by(f64::total_cmp);
    f.propagation = Propagation {
        p50: percentile(&lat, 50.0),
        p99: percentile(&lat, 99.0),
        max: lat.last().copied().unwrap_or(0.0),
        samples: lat.len() as u64,
    };
    f.propagation_samples = samples;
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn ack_index_answers_highest_seq_by_time() {
        let idx = AckIndex::new(vec![(30.0, 2), (10.0, 1), (50.0, 5), (40.0, 3)]);
        assert_eq!(idx.max_by(5.0), None);
        assert_eq!(idx.max_by(10.0), Some(1));
        assert_eq!(idx.max_by(45.0), Some(3));
        assert_eq!(idx.max_by(1e9), Some(5));
    }
}
