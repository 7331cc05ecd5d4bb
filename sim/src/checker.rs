//! The checker: judges a [`History`] against the invariants of SPEC §3 and computes the
//! numbers of the SPEC §5 chaos report.
//!
//! It is pure (no I/O, no clock), so it can be tested on hand-made histories and re-run on a
//! recorded one. The definitions, precisely:
//!
//! * **write-like ops** — [`OpKind::Write`] (a writer's new record, or the race's newer
//!   write), [`OpKind::StalePlan`] (the race's delayed enactor) and [`OpKind::Cleanup`] (the
//!   race's clean-up tombstone). All of them carry the seq, the content and (if known) the
//!   expiry of the record they sent. "Acknowledged" means answered 200 (applied, duplicate,
//!   conflict_won) — or, for the CLI, exit 0.
//! * **queries.total** — every [`OpKind::Read`] (one name at one node, HTTP or DNS).
//!   **ok** — reads answered with at least one endpoint. **unanswered** — reads that timed out
//!   or errored (expected while that node is faulted; not a failure by itself).
//! * **queries.failed** — read *rounds* (all reads sharing a `round`: one name asked from every
//!   node at once, and once more if nobody answered) in which NO node answered. This is the
//!   outage SPEC §5 calls "a query that no peer answered". A read without a round is a round of
//!   its own. **slow** — rounds that were retried (some node was asked twice) and answered only
//!   by the retry: every node stalled past the first timeout.
//! * **live** — a name is live at node k at time t when the highest-seq acknowledged write-like
//!   op of the name that ended before t is not a tombstone and has not expired *by node k's
//!   clock*: its expiry (a lower bound, see [`Op::expires_ms`]) minus `expiry_margin_ms` lies
//!   after t plus the node's clock offset (positive clock-skew spans overlapping the read,
//!   widened by [`SKEW_SETTLE_MS`] because a new offset takes up to a second to apply, and after
//!   the span by `stale_bound_ms` more for the node to get back the bodies it dropped by its
//!   wrong clock). A node whose clock runs ahead sees records expire early; it cannot know
//!   better, so such answers are counted apart (`expired_by_skew`), not as empty.
//! * **queries.empty** — answers without an endpoint (404, NXDOMAIN, an empty endpoint list)
//!   at a node where the name is live, when the node could have known it: some acknowledged,
//!   still-live record of the name (not deleted by an acknowledged tombstone with a higher seq
//!   that started before the read ended: a read may see a concurrent deletion) ended more
//!   than `stale_bound_ms` before the read, or the same node had already shown such a record. Names whose records expired are not
//!   empty: they are gone by design.
//!   **The one exception, partitions:** a write made on the other side of a partition cannot
//!   reach a node until the heal. A write whose acknowledging node was separated from the
//!   reading node (see [`FaultSpan::separates`]) by a partition that started *before the write
//!   started* and ended less than `stale_bound_ms` before the read does not make the read
//!   empty; if no other write makes it so, the answer is counted as `unreached_by_partition`.
//!   A node that had already shown the name and then answers without it is empty, partition
//!   or not, and so is a node that knew of any write the partition did not keep from it.
//!   **The same for a node out of the network:** a node killed, paused or restarting (or cut
//!   off from the write's node) from before a write started, without `stale_bound_ms` of being
//!   back in between, until less than `stale_bound_ms` before the read, cannot have heard it;
//!   when that is why its answer lacks the name (its older record expired meanwhile), the
//!   answer is counted as `empty_while_isolated`, not empty — the node is given the same bound
//!   to catch up after coming back as any node gets for any write ([`isolated_throughout`]).
//!   Counted apart and reported, never folded into `empty`.
//! * **queries.stale** — answers whose seq is lower than the highest seq acknowledged more than
//!   `stale_bound_ms` before the read started. Reported, not fatal: a partitioned node is
//!   expected to serve stale answers. **stale_partitioned** — those of them explained by a
//!   partition: every write they lag was acknowledged at a node separated from the answering
//!   node by a partition in force at some moment between the write's start and the read, which
//!   ended less than `stale_bound_ms` before the read (or had not ended).
//!   **stale_cut_off** / **stale_connected** — the same stale answers split by what the
//!   answering node said: that it was cut off from the network (the resolve answer's
//!   `cut_off`, a DNS TTL of at most 1 s; see [`Op::cut_off`]), or not (or nothing). A
//!   reader fails over from a flagged answer ([`crate::workload`]); **stale_cut_off_kept** —
//!   flagged stale answers the reader kept because no node it failed over to answered without
//!   the flag ([`Op::fallback`]): the only flagged stale answers a client was left with.
//!   Issue 15's target is `stale_cut_off_kept` = 0; `stale_connected` are the stale answers
//!   no flag warned of.
//! * **failover** — **cut_off_answers**: answers that said their node was cut off;
//!   **failover_reads**: reads made in their place ([`Op::failover_from`]; they are reads of
//!   the round like any other, judged the same way, but asking a node twice in a round this
//!   way does not make the round `slow`); **fallbacks**: flagged answers kept.
//! * **regressions** — reads at one node that went backwards: an answer with endpoints whose
//!   seq is lower than that of an earlier answer (HTTP, DNS, probe or final read) from the same
//!   node for the same name that ended before it started. Kills and restarts included: the
//!   highest seq a node has served must survive a restart. A DNS answer has no seq; it is the
//!   seq of the write whose addresses it shows.
//! * **content_mismatches** — answers whose content is not that of the record of their seq:
//!   an HTTP answer must show exactly the endpoints some write-like op sent at that seq, a DNS
//!   answer exactly the addresses of some write. A node serving a mix of two records, a record
//!   nobody wrote, or one record's endpoints under another's seq is caught here. A one-step
//!   publish (`dpin publish`: the CLI picks the seq from what the nodes hold) that ended
//!   without an answer has no seq in the history; the node may still have applied it, at the
//!   seq it chose, so its content counts as sent at any seq.
//! * **writes.acknowledged** — [`OpKind::Write`]s acknowledged. **indeterminate** — writes
//!   (of any kind) that timed out or errored.
//! * **writes.refused_stale** — the race's stale writes and clean-up tombstones that were
//!   refused (stale, conflict or compare-and-set mismatch), as a node that holds something
//!   newer must. **stale_applied** — such a write *applied* by a node that had already shown a
//!   higher seq of the name before the write started (the apply-time check failed), or — for a
//!   plan or the clean-up of plan A — applied by a node that had acknowledged or shown a write
//!   started after plan A was signed (the seed's race, whatever the seqs); fatal. (A
//!   lagging or partitioned node may take a stale write; that is `race.stale_enacted`, and it
//!   must not survive the heal.)
//! * **writes.lost** — acknowledged [`OpKind::Write`]s that are absent, or superseded by a
//!   lower seq, in the final state: for every node that took part in the final reads, the last
//!   [`OpKind::FinalRead`] of the name must show a record with endpoints and seq ≥ the write's
//!   seq — unless the write has expired by the end of that final read, or a later acknowledged
//!   tombstone deleted the name. Without any final read every live acknowledged write counts as
//!   lost (nothing shows it).
//! * **race** — per race round (ops sharing [`Op::race`]): **stale_refused** and
//!   **stale_enacted** (acknowledged by a lagging or partitioned node);
//!   **enacted_then_overridden** — enacted, and at the end no node shows it;
//!   **stale_held_after_heal** — the final state shows a stale write's content, or the name
//!   deleted by a clean-up tombstone, while a newer write was acknowledged: the seed's outcome;
//!   fatal. "Newer" is a higher seq, or — for a plan enacted late and for the clean-up of plan
//!   A — a write that *started after plan A was signed*, whatever seq it got: a plan made
//!   before a write must never end up over it (that is the seed's race, even when the two
//!   paths number their seqs differently).
//!   **ties** — a stale write acknowledged at the very seq of an acknowledged newer write (two
//!   writers on opposite sides of a partition): AP replication picks one winner everywhere,
//!   which `converged` and the final reads check.
//! * **propagation_ms** — for every write acknowledged as `applied` at node k and every other
//!   node j: from the acknowledgement to the end of the first observation at j that shows the
//!   name with seq ≥ the write's (clamped at 0). Observations are the [`OpKind::Probe`]s for
//!   that write (`want_seq`) if the history has any probes (they poll right after the
//!   acknowledgement), otherwise the reads (whose sampling interval then inflates the figure).
//!   Pairs where k or j was faulted in between are left out (that is recovery time, not
//!   propagation), as are pairs never observed, and pairs where j's clock may have run so far
//!   ahead that it judged the record expired (it shows the record again only once its clock
//!   is right, up to [`SKEW_SETTLE_MS`] after the skew heals). Heal probes are not
//!   propagation samples.
//! * **heal_convergence_ms** — for every group partition (split, one-way cut), from its heal
//!   to the moment every node shows, for every name, at least the seq acknowledged anywhere by
//!   the heal: measured by the heal probes ([`crate::workload::HEAL_PROBE`], one per node and
//!   name, round = the heal's number). **unconverged** — heals after which some node never
//!   showed it within the probe window. **interrupted_probes** — probes left out because a
//!   later fault cut their node off from every node that held the target (its writer, or a
//!   node this heal's probes had seen showing it) before the node showed it: that wait
//!   measures the later fault. Cut off means on the other side of the cut, or, where the
//!   harness recorded the nodes' connections, joined to no holder by connections the cut
//!   left whole. A node not cut off from every holder counts however late.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{hosts_of, FaultKind, FaultSpan, History, Op, OpKind, OpOutcome, Proto};
use crate::workload::HEAL_PROBE;

/// Default staleness bound: an answer may lag the newest acknowledged write by this long.
pub const DEFAULT_STALE_BOUND_MS: f64 = 5000.0;
/// Default margin around a record's expiry within which an answer either way is fine (the
/// harness and the nodes read their clocks at slightly different moments).
pub const DEFAULT_EXPIRY_MARGIN_MS: f64 = 1000.0;
/// How long a new clock offset may take to reach a node (libfaketime re-reads its offset file
/// at most once a second), so skew spans are widened by this much on both sides.
pub const SKEW_SETTLE_MS: f64 = 1500.0;
/// At most this many example violations are kept per kind.
pub const MAX_EXAMPLES: usize = 10;

/// Checker settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CheckConfig {
    /// See [`DEFAULT_STALE_BOUND_MS`].
    pub stale_bound_ms: f64,
    /// See [`DEFAULT_EXPIRY_MARGIN_MS`].
    pub expiry_margin_ms: f64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            stale_bound_ms: DEFAULT_STALE_BOUND_MS,
            expiry_margin_ms: DEFAULT_EXPIRY_MARGIN_MS,
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
    /// Answers without an endpoint for a name whose record had expired (by design, not empty).
    #[serde(default)]
    pub expired: u64,
    /// Answers without an endpoint from a node whose clock ran ahead, for a record that had
    /// expired by that node's clock but not by real time (not empty: see the module docs).
    #[serde(default)]
    pub expired_by_skew: u64,
    /// Stale answers explained by a partition between the answering node and the node that
    /// acknowledged the newer write (a subset of `stale`; see the module docs).
    #[serde(default)]
    pub stale_partitioned: u64,
    /// Answers without an endpoint for a name whose only live writes were made on the other
    /// side of a partition since before they started (not empty: see the module docs).
    #[serde(default)]
    pub unreached_by_partition: u64,
    /// Answers without an endpoint from a node that was killed, paused, restarting or cut off
    /// from before every live write of the name started until less than the staleness bound
    /// before the read (not empty: it could not have heard them; see the module docs).
    #[serde(default)]
    pub empty_while_isolated: u64,
    /// Stale answers whose node said it was cut off (a subset of `stale`).
    #[serde(default)]
    pub stale_cut_off: u64,
    /// Of `stale_cut_off`, those the reader kept: no node it failed over to answered without
    /// the flag.
    #[serde(default)]
    pub stale_cut_off_kept: u64,
    /// Stale answers whose node did not say it was cut off (`stale` − `stale_cut_off`).
    #[serde(default)]
    pub stale_connected: u64,
    /// Answers that said their node was cut off.
    #[serde(default)]
    pub cut_off_answers: u64,
    /// Reads made failing over from such an answer (included in `total`).
    #[serde(default)]
    pub failover_reads: u64,
    /// Flagged answers kept because no node failed over to answered without the flag.
    #[serde(default)]
    pub fallbacks: u64,
}

/// Write counts (SPEC §5 `writes`, plus diagnostics).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writes {
    /// Writes answered 200.
    pub acknowledged: u64,
    /// Acknowledged writes absent or superseded by a lower seq at the end.
    pub lost: u64,
    /// Stale plans and old tombstones correctly refused (stale, conflict, cas mismatch).
    pub refused_stale: u64,
    /// Stale plans and old tombstones applied by a node that had shown a newer seq (must be 0).
    pub stale_applied: u64,
    /// Writes of any kind without an answer (timeout, connection error, 5xx).
    pub indeterminate: u64,
    /// Writes refused for another reason (conflict, invalid).
    pub refused_other: u64,
}

/// The seed's race, counted per operation (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Race {
    /// Race rounds (planner, two enactors, clean-up).
    pub rounds: u64,
    /// Plans signed by the planner (`dpin sign`).
    pub plans_signed: u64,
    /// The newer writes acknowledged.
    pub newer_acknowledged: u64,
    /// Stale writes and clean-up tombstones refused.
    pub stale_refused: u64,
    /// Stale writes and clean-up tombstones acknowledged (by a lagging or partitioned node).
    pub stale_enacted: u64,
    /// Enacted, and shown by no node at the end.
    pub enacted_then_overridden: u64,
    /// Stale writes or clean-up deletions that hold at the end over a newer write (must be 0).
    pub stale_held_after_heal: u64,
    /// Stale writes acknowledged at the same seq as an acknowledged newer write.
    pub ties: u64,
    /// Stale writes and clean-ups without an answer.
    pub indeterminate: u64,
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

/// Convergence after the heals of group partitions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HealConvergence {
    /// Group partitions healed and probed.
    pub heals: u64,
    /// Heals after which some node did not catch up within the probe window.
    pub unconverged: u64,
    /// Heal probes left out because a later fault cut their node off from every node holding
    /// the target before it showed it (see [`heal_convergence`]).
    #[serde(default)]
    pub interrupted_probes: u64,
    /// Median over the converged heals, ms.
    pub p50: f64,
    /// Slowest converged heal, ms.
    pub max: f64,
    /// Every heal in order: when, how long its last probe took, and which node and name
    /// that was (what to trace when a heal is slow). Absent in older reports.
    #[serde(default)]
    pub each: Vec<HealDetail>,
}

/// One heal of a group partition ([`HealConvergence::each`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HealDetail {
    /// When the heal's probes started, ms since the run's start.
    pub at_ms: f64,
    /// From the heal to its last counted probe showing the write, ms (`None`: not
    /// converged).
    pub converged_ms: Option<f64>,
    /// The node whose probe came last (or, not converged, the first that failed).
    pub last_node: Option<usize>,
    /// The name that probe waited for.
    pub last_name: Option<String>,
    /// Probes counted.
    pub counted: u64,
    /// Probes left out as cut off by a later fault.
    pub interrupted: u64,
}

/// One example of a violated invariant, for the human summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// `failed`, `empty`, `lost`, `stale`, `stale_applied`, `regression`, `content`,
    /// `stale_held`.
    pub kind: String,
    /// What exactly.
    pub detail: String,
}

/// One stale answer, for the timeline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StaleMark {
    /// The answering node (1-based).
    pub node: usize,
    /// Read start, ms since run start.
    pub t_ms: f64,
    /// Every write it lags was made across a partition (`stale_partitioned`).
    pub across_partition: bool,
    /// The answer said its node was cut off (`stale_cut_off`).
    pub cut_off: bool,
}

/// Everything the checker found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Findings {
    /// Query counts.
    pub queries: Queries,
    /// Write counts.
    pub writes: Writes,
    /// Reads at one node that went backwards in seq.
    pub regressions: u64,
    /// Answers whose content is not the record of their seq.
    pub content_mismatches: u64,
    /// The race's counts.
    pub race: Race,
    /// Propagation percentiles.
    pub propagation: Propagation,
    /// Propagation samples: (acknowledgement time ms, latency ms), by acknowledgement time.
    pub propagation_samples: Vec<(f64, f64)>,
    /// Reads that went backwards: (node, read start ms), for the timeline.
    pub regression_marks: Vec<(usize, f64)>,
    /// Empty answers: (node, read start ms), for the timeline.
    pub empty_marks: Vec<(usize, f64)>,
    /// Stale answers, for the timeline.
    pub stale_marks: Vec<StaleMark>,
    /// Convergence after group-partition heals.
    pub heal: HealConvergence,
    /// Example violations (at most [`MAX_EXAMPLES`] per kind).
    pub examples: Vec<Violation>,
}

impl Findings {
    /// Whether the invariants that must hold in every run held: no failed query, no empty
    /// answer, no lost write, no stale write applied over a newer one, no read going
    /// backwards, no answer with the wrong content, no stale write holding after the heal.
    pub fn invariants_hold(&self) -> bool {
        self.queries.failed == 0
            && self.queries.empty == 0
            && self.writes.lost == 0
            && self.writes.stale_applied == 0
            && self.regressions == 0
            && self.content_mismatches == 0
            && self.race.stale_held_after_heal == 0
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
    faults.iter().any(|f| {
        // A skewed clock does not delay replication; it is no reason to drop a sample.
        f.kind != FaultKind::Skew && f.node == node && f.start_ms <= to && f.end_ms >= from
    })
}

/// Whether a partition separating nodes `x` and `y` started no later than `from` and ended no
/// earlier than `until` (or is the same span still cut at `until`): nothing could cross
/// between them in `[from, until]`.
pub fn cut_off_throughout(faults: &[FaultSpan], x: usize, y: usize, from: f64, until: f64) -> bool {
    faults
        .iter()
        .any(|f| f.separates(x, y) && f.start_ms <= from && f.end_ms >= until)
}

/// Whether node `node` was out of reach of a write acknowledged at node `from` that started at
/// `start`, until less than `bound` before `t`: killed, paused or restarting itself, or cut off
/// from `from` by a partition. The fault spans, each extended by `bound` past its end (the
/// time a node that comes back is given to catch up, as any node is given for any write),
/// must cover `[start, t]` without a gap, beginning with a fault already in force at `start`.
pub fn isolated_throughout(
    faults: &[FaultSpan],
    node: usize,
    from: usize,
    start: f64,
    t: f64,
    bound: f64,
) -> bool {
    let mut spans: Vec<(f64, f64)> = faults
        .iter()
        .filter(|f| {
            (f.node == node
                && matches!(
                    f.kind,
                    FaultKind::Kill | FaultKind::Pause | FaultKind::Restart
                ))
                || f.separates(node, from)
        })
        .map(|f| (f.start_ms, f.end_ms + bound))
        .collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut covered = start;
    let mut began = false;
    for (s, e) in spans {
        if s > covered {
            break;
        }
        if e >= start {
            began = true;
            covered = covered.max(e);
        }
    }
    began && covered >= t
}

fn is_heal_probe(op: &Op) -> bool {
    op.kind == OpKind::Probe && op.process == HEAL_PROBE
}

/// How far ahead of real time node `node`'s clock may have been during `[from, to]`, ms
/// (0 if never ahead). Spans are widened by [`SKEW_SETTLE_MS`] at the start, and at the end
/// also by `recovery_ms`: a node whose clock ran ahead dropped bodies by its wrong clock, and
/// once the clock is right it gets them back from its peers or the next write — it is given
/// the same bound as propagation.
fn clock_ahead(faults: &[FaultSpan], node: usize, from: f64, to: f64, recovery_ms: f64) -> f64 {
    faults
        .iter()
        .filter(|f| {
            f.kind == FaultKind::Skew
                && f.node == node
                && f.start_ms - SKEW_SETTLE_MS <= to
                && f.end_ms + SKEW_SETTLE_MS + recovery_ms >= from
        })
        .filter_map(|f| f.offset_ms)
        .map(|o| o as f64)
        .fold(0.0, f64::max)
}

/// Whether node `j`, observing write `w` at `t`, may have had a clock so far ahead (a skew,
/// widened as [`clock_ahead`] widens it) that it judged the record expired: until its clock
/// was right again, what it showed followed its clock, not replication, so the sample says
/// nothing about propagation.
fn hidden_by_clock(faults: &[FaultSpan], j: usize, w: &Op, t: f64) -> bool {
    let ahead = clock_ahead(faults, j, w.start_ms, t, 0.0);
    ahead > 0.0 && w.expires_ms.is_some_and(|e| t + ahead >= e)
}

fn describe(op: &Op) -> String {
    format!(
        "{:?} {:?} by {} at node {}{} of {} [{:.0}..{:.0} ms]: {:?} seq {:?} endpoints {:?}{}{}",
        op.kind,
        op.proto,
        op.process,
        op.node,
        op.failover_from
            .map(|n| format!(" (failing over from node {n})"))
            .unwrap_or_default(),
        op.name,
        op.start_ms,
        op.end_ms,
        op.outcome,
        op.seq,
        op.endpoints,
        op.content
            .as_deref()
            .map(|c| format!(" content [{c}]"))
            .unwrap_or_default(),
        op.detail
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default()
    )
}

fn is_write_like(kind: OpKind) -> bool {
    matches!(kind, OpKind::Write | OpKind::StalePlan | OpKind::Cleanup)
}

fn is_read_like(kind: OpKind) -> bool {
    matches!(kind, OpKind::Read | OpKind::Probe | OpKind::FinalRead)
}

fn is_tombstone(op: &Op) -> bool {
    op.content.as_deref() == Some(crate::history::TOMBSTONE)
        || (op.kind == OpKind::Cleanup && op.content.is_none())
}

fn shows_endpoints(op: &Op) -> bool {
    op.outcome == OpOutcome::Found && op.endpoints.unwrap_or(0) > 0
}

/// What the checker knows about the records of the run: which content was written at which
/// seq, so an answer can be traced to the write it came from.
struct Contents<'a> {
    /// Exact content -> seqs it was sent with.
    exact: BTreeMap<&'a str, BTreeSet<u64>>,
    /// Hosts of a content (what DNS shows) -> seqs.
    hosts: BTreeMap<String, BTreeSet<u64>>,
    /// Contents sent at a seq the history does not know: a one-step publish (the CLI's
    /// `publish` picks the seq from what the nodes hold) that ended without an answer may
    /// have been applied, at whatever seq it chose.
    unknown_seq: BTreeSet<&'a str>,
    /// The hosts of those contents (what DNS shows).
    unknown_seq_hosts: BTreeSet<String>,
}

impl<'a> Contents<'a> {
    fn new(history: &'a History) -> Self {
        let mut exact: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
        let mut hosts: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        let mut unknown_seq = BTreeSet::new();
        let mut unknown_seq_hosts = BTreeSet::new();
        for op in &history.ops {
            if !(is_write_like(op.kind) || op.kind == OpKind::Sign) {
                continue;
            }
            match (op.content.as_deref(), op.seq) {
                (Some(c), Some(seq)) => {
                    exact.entry(c).or_default().insert(seq);
                    hosts.entry(hosts_of(c)).or_default().insert(seq);
                }
                (Some(c), None) => {
                    unknown_seq.insert(c);
                    unknown_seq_hosts.insert(hosts_of(c));
                }
                (None, _) => {}
            }
        }
        Self {
            exact,
            hosts,
            unknown_seq,
            unknown_seq_hosts,
        }
    }

    /// The seq a read showed: its own, or (DNS) the seq of the one write with its addresses.
    fn seq_of(&self, op: &Op) -> Option<u64> {
        op.seq.or_else(|| {
            let c = op.content.as_deref()?;
            let seqs = self.hosts.get(&hosts_of(c))?;
            (seqs.len() == 1)
                .then(|| seqs.iter().next().copied())
                .flatten()
        })
    }

    /// Why the read's content is not the record of its seq, if it is not.
    fn mismatch(&self, op: &Op) -> Option<String> {
        let c = op.content.as_deref()?;
        if op.proto == Proto::Dns {
            let hosts = hosts_of(c);
            return match self.hosts.get(&hosts) {
                None if !self.unknown_seq_hosts.contains(&hosts) => {
                    Some("no write sent these addresses".to_owned())
                }
                _ => None,
            };
        }
        if self.unknown_seq.contains(c) {
            // Sent at a seq only the node that applied it knew.
            return None;
        }
        match (self.exact.get(c), op.seq) {
            (None, _) => Some("no write sent these endpoints".to_owned()),
            (Some(seqs), Some(s)) if !seqs.contains(&s) => Some(format!(
                "these endpoints were written at seq {seqs:?}, not at seq {s}"
            )),
            _ => None,
        }
    }
}

/// Checks a history. See the module docs for the definitions.
pub fn check(history: &History, config: &CheckConfig) -> Findings {
    let mut f = Findings::default();
    let bound = config.stale_bound_ms;
    let margin = config.expiry_margin_ms;
    let contents = Contents::new(history);

    // Acknowledged write-like ops per name, by end time.
    let mut acked: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in &history.ops {
        if is_write_like(op.kind) && op.outcome.is_ack() && op.seq.is_some() {
            acked.entry(&op.name).or_default().push(op);
        }
    }
    for v in acked.values_mut() {
        v.sort_by(|a, b| a.end_ms.total_cmp(&b.end_ms));
    }
    let ack_index: BTreeMap<&str, AckIndex> = acked
        .iter()
        .map(|(k, v)| {
            (
                *k,
                AckIndex::new(
                    v.iter()
                        .filter_map(|o| o.seq.map(|s| (o.end_ms, s)))
                        .collect(),
                ),
            )
        })
        .collect();
    // Whether record `w` is live at real time `t` as seen by a clock `ahead` ms fast.
    let live_at = |w: &Op, t: f64, ahead: f64| -> bool {
        !is_tombstone(w) && w.expires_ms.is_none_or(|e| e - margin > t + ahead)
    };

    // Reads of every kind, in start order.
    let mut reads: Vec<&Op> = history
        .ops
        .iter()
        .filter(|o| is_read_like(o.kind))
        .collect();
    reads.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));

    // Content of every answer, and reads that go backwards at one node.
    // (node, name) -> answers with endpoints so far: (end, seq), for the monotonic check.
    let mut shown: BTreeMap<(usize, &str), Vec<(f64, u64)>> = BTreeMap::new();
    for op in &reads {
        if !shows_endpoints(op) {
            continue;
        }
        if let Some(why) = contents.mismatch(op) {
            f.content_mismatches += 1;
            f.example("content", format!("{}: {why}", describe(op)));
        }
        let Some(seq) = contents.seq_of(op) else {
            continue;
        };
        let seen = shown.entry((op.node, op.name.as_str())).or_default();
        let before = seen
            .iter()
            .filter(|(end, _)| *end <= op.start_ms)
            .map(|&(_, s)| s)
            .max();
        if let Some(prev) = before.filter(|&p| seq < p) {
            f.regressions += 1;
            f.regression_marks.push((op.node, op.start_ms));
            f.example(
                "regression",
                format!(
                    "{} went back from seq {prev} shown earlier by the same node",
                    describe(op)
                ),
            );
        }
        seen.push((op.end_ms, seq));
    }

    // When each round's first plan (plan A) was signed: a write started after that is newer
    // than plan A in the seed's sense, whatever seq it got.
    let mut plan_a_signed: BTreeMap<u64, f64> = BTreeMap::new();
    for op in &history.ops {
        if let (OpKind::Sign, OpOutcome::Planned, Some(r)) = (op.kind, op.outcome, op.race) {
            let e = plan_a_signed.entry(r).or_insert(op.end_ms);
            *e = e.min(op.end_ms);
        }
    }
    // Whether a stale-role op enacts a plan (its seq and content are a `dpin sign` of its
    // round) or is the clean-up of plan A: then writes started after plan A was signed are
    // newer than it, whatever their seq.
    let from_plan = |op: &Op| -> bool {
        op.kind == OpKind::Cleanup
            || history.ops.iter().any(|s| {
                s.kind == OpKind::Sign
                    && s.race.is_some()
                    && s.race == op.race
                    && s.seq == op.seq
                    && s.content == op.content
            })
    };
    // Acknowledged non-tombstone writes of `op`'s name started after its round's plan A was
    // signed (none unless `op` comes from a plan).
    let later_writes = |op: &Op| -> Vec<&Op> {
        let Some(&t) = op.race.and_then(|r| plan_a_signed.get(&r)) else {
            return Vec::new();
        };
        if !from_plan(op) {
            return Vec::new();
        }
        acked
            .get(op.name.as_str())
            .map(|v| {
                v.iter()
                    .copied()
                    .filter(|w| {
                        // B's and the writers' writes; A's own stale writes do not count.
                        w.kind == OpKind::Write
                            && w.start_ms >= t
                            && !is_tombstone(w)
                            && w.seq != op.seq
                            && w.content != op.content
                    })
                    .collect()
            })
            .unwrap_or_default()
    };

    // Writes.
    for op in &history.ops {
        match op.kind {
            OpKind::Write => match op.outcome {
                o if o.is_ack() => f.writes.acknowledged += 1,
                OpOutcome::Timeout | OpOutcome::Error => f.writes.indeterminate += 1,
                _ => f.writes.refused_other += 1,
            },
            OpKind::StalePlan | OpKind::Cleanup => match op.outcome {
                OpOutcome::Stale | OpOutcome::Conflict => f.writes.refused_stale += 1,
                o if o.is_ack() => {
                    // Applied over a newer seq the same node had already shown?
                    let newer = op.seq.and_then(|q| {
                        shown
                            .get(&(op.node, op.name.as_str()))?
                            .iter()
                            .filter(|(end, s)| *end <= op.start_ms && *s > q)
                            .map(|&(_, s)| s)
                            .max()
                    });
                    // Or, for a plan or the clean-up, over a write started after plan A was
                    // signed that this node had acknowledged or shown before?
                    // Shown means shown with that write's content: at one seq two records can
                    // exist (plan A and a one-step write that read the same seq), and a node
                    // that showed plan A at that seq did not hold the other write.
                    let showed = |w: &Op| {
                        reads.iter().any(|r| {
                            r.node == op.node
                                && r.name == w.name
                                && r.end_ms <= op.start_ms
                                && r.seq.is_none_or(|s| Some(s) == w.seq)
                                && shows_endpoints(r)
                                && match (r.proto, &r.content, &w.content) {
                                    (Proto::Dns, Some(a), Some(b)) => hosts_of(a) == hosts_of(b),
                                    (_, Some(a), Some(b)) => a == b,
                                    _ => false,
                                }
                        })
                    };
                    let over_later = later_writes(op)
                        .into_iter()
                        .find(|w| w.end_ms <= op.start_ms && (w.node == op.node || showed(w)));
                    if o != OpOutcome::Duplicate {
                        if let Some(held) = newer {
                            f.writes.stale_applied += 1;
                            f.example(
                                "stale_applied",
                                format!(
                                    "{} although that node had shown seq {held} before",
                                    describe(op)
                                ),
                            );
                        } else if let Some(w) = over_later {
                            f.writes.stale_applied += 1;
                            f.example(
                                "stale_applied",
                                format!(
                                    "{} over a write started after plan A was signed, which that node held: {}",
                                    describe(op),
                                    describe(w)
                                ),
                            );
                        }
                    }
                }
                OpOutcome::Timeout | OpOutcome::Error => f.writes.indeterminate += 1,
                _ => f.writes.refused_other += 1,
            },
            _ => {}
        }
    }

    // Answers: stale, empty, expired.
    // (node, name) -> earliest end of an answer with endpoints, and its seq.
    let mut first_shown: BTreeMap<(usize, &str), Vec<(f64, u64)>> = BTreeMap::new();
    for op in &reads {
        if op.kind == OpKind::Read && shows_endpoints(op) {
            if let Some(s) = contents.seq_of(op) {
                first_shown
                    .entry((op.node, op.name.as_str()))
                    .or_default()
                    .push((op.end_ms, s));
            }
        }
    }
    // round -> (answered, an op of it, nodes asked, whether some node was asked twice)
    let mut rounds: BTreeMap<u64, (bool, &Op, BTreeSet<usize>, bool)> = BTreeMap::new();
    for op in reads.iter().filter(|o| o.kind == OpKind::Read) {
        f.queries.total += 1;
        let answered = op.outcome.is_answer();
        let said_cut_off = answered && op.cut_off == Some(true);
        f.queries.cut_off_answers += u64::from(said_cut_off);
        f.queries.failover_reads += u64::from(op.failover_from.is_some());
        f.queries.fallbacks += u64::from(said_cut_off && op.fallback);
        match op.round {
            Some(r) => {
                let e = rounds
                    .entry(r)
                    .or_insert_with(|| (false, op, BTreeSet::new(), false));
                e.0 |= answered;
                // A failover read may ask a node the round asked already; that is no retry.
                if !e.2.insert(op.node) && op.failover_from.is_none() {
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
        let t = op.start_ms;
        if shows_endpoints(op) {
            f.queries.ok += 1;
            let newest = ack_index
                .get(op.name.as_str())
                .and_then(|a| a.max_by(t - bound));
            if let (Some(newest), Some(seen)) = (newest, contents.seq_of(op)) {
                if seen < newest {
                    f.queries.stale += 1;
                    // Explained by a partition if every write it lags was made across one.
                    let lagged = acked
                        .get(op.name.as_str())
                        .into_iter()
                        .flatten()
                        .filter(|w| w.seq.is_some_and(|s| s > seen) && w.end_ms <= t - bound);
                    let mut explained = true;
                    for w in lagged {
                        let across = history.faults.iter().any(|p| {
                            p.separates(w.node, op.node)
                                && p.start_ms <= t
                                && p.end_ms >= w.start_ms
                                && p.end_ms + bound >= t
                        });
                        if !across {
                            explained = false;
                            break;
                        }
                    }
                    if explained {
                        f.queries.stale_partitioned += 1;
                    }
                    if said_cut_off {
                        f.queries.stale_cut_off += 1;
                        f.queries.stale_cut_off_kept += u64::from(op.fallback);
                    } else {
                        f.queries.stale_connected += 1;
                    }
                    f.stale_marks.push(StaleMark {
                        node: op.node,
                        t_ms: op.start_ms,
                        across_partition: explained,
                        cut_off: said_cut_off,
                    });
                    f.example(
                        "stale",
                        format!(
                            "{} (seq {newest} was acknowledged by then{}{})",
                            describe(op),
                            if explained {
                                "; across a partition"
                            } else {
                                ""
                            },
                            match (said_cut_off, op.fallback) {
                                (true, true) =>
                                    "; said cut off, kept: no other node answered without the flag",
                                (true, false) => "; said cut off, the reader failed over",
                                _ => "; did not say cut off",
                            }
                        ),
                    );
                }
            }
            continue;
        }
        // An answer without endpoints: empty if the name is live at this node and the node
        // could have known it.
        let before: Vec<&Op> = acked
            .get(op.name.as_str())
            .map(|v| v.iter().copied().filter(|w| w.end_ms <= t).collect())
            .unwrap_or_default();
        let Some(top) = before.iter().filter_map(|w| w.seq).max() else {
            continue; // never written (yet)
        };
        let at_top = || before.iter().copied().filter(|w| w.seq == Some(top));
        // At one seq a live write beats a tombstone (merge rule): the tombstone is no winner.
        let winners: Vec<&Op> = if at_top().any(|w| !is_tombstone(w)) {
            at_top().filter(|w| !is_tombstone(w)).collect()
        } else {
            at_top().collect()
        };
        let ahead = clock_ahead(&history.faults, op.node, op.start_ms, op.end_ms, bound);
        if winners.iter().any(|w| !live_at(w, t, ahead)) {
            if winners.iter().all(|w| live_at(w, t, 0.0)) {
                f.queries.expired_by_skew += 1;
            } else if winners.iter().all(|w| !is_tombstone(w)) {
                f.queries.expired += 1;
            }
            continue;
        }
        // Writes an acknowledged tombstone has deleted do not count — including a tombstone
        // still under way when the read started (concurrent with it, so the read may see it).
        let deleted_to = acked
            .get(op.name.as_str())
            .into_iter()
            .flatten()
            .filter(|w| is_tombstone(w) && w.start_ms <= op.end_ms)
            .filter_map(|w| w.seq)
            .max();
        // A tombstone deletes lower seqs; at its own seq a live write beats it (merge rule).
        let standing = |w: &Op| {
            (w.seq > deleted_to || (w.seq == deleted_to && !is_tombstone(w)))
                && live_at(w, t, ahead)
        };
        // A write made across a partition that started before it and lasted until less than
        // the bound before this read could not have reached this node.
        let unreachable =
            |w: &Op| cut_off_throughout(&history.faults, w.node, op.node, w.start_ms, t - bound);
        // The reading node itself was out of the network (killed, paused, restarting, cut
        // off) from before the write until less than the bound before this read.
        let isolated =
            |w: &Op| isolated_throughout(&history.faults, op.node, w.node, w.start_ms, t, bound);
        let known_long_enough = before
            .iter()
            .any(|w| w.end_ms + bound <= t && standing(w) && !unreachable(w) && !isolated(w));
        let node_had_it = first_shown
            .get(&(op.node, op.name.as_str()))
            .is_some_and(|v| {
                v.iter().any(|&(end, s)| {
                    end <= t && before.iter().any(|w| w.seq == Some(s) && standing(w))
                })
            });
        if known_long_enough || node_had_it {
            f.queries.empty += 1;
            f.empty_marks.push((op.node, op.start_ms));
            f.example("empty", describe(op));
        } else if before
            .iter()
            .any(|w| w.end_ms + bound <= t && standing(w) && unreachable(w))
        {
            f.queries.unreached_by_partition += 1;
        } else if before
            .iter()
            .any(|w| w.end_ms + bound <= t && standing(w) && isolated(w))
        {
            f.queries.empty_while_isolated += 1;
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

    // The final state: the last final read of every (name, node).
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
    let final_end = history
        .ops
        .iter()
        .filter(|o| o.kind == OpKind::FinalRead)
        .map(|o| o.end_ms)
        .fold(f64::NEG_INFINITY, f64::max);
    // Whether an acknowledged tombstone with a seq above `seq` deleted the name.
    let deleted_above = |name: &str, seq: u64| -> bool {
        acked
            .get(name)
            .is_some_and(|v| v.iter().any(|w| is_tombstone(w) && w.seq > Some(seq)))
    };

    // Lost writes: compare every acknowledged write with the final state at every node.
    for op in &history.ops {
        if op.kind != OpKind::Write || !op.outcome.is_ack() || is_tombstone(op) {
            continue;
        }
        let Some(seq) = op.seq else { continue };
        if deleted_above(&op.name, seq) {
            continue;
        }
        let mut lost_at = Vec::new();
        if final_nodes.is_empty() && live_at(op, history.end_ms(), 0.0) {
            lost_at.push("every node (no final read)".to_owned());
        }
        for &node in &final_nodes {
            let last = final_state.get(&(op.name.as_str(), node));
            // Expired by the time the node was asked: gone by design.
            let asked_at = last.map_or(final_end, |o| o.start_ms);
            if !live_at(op, asked_at, 0.0) {
                continue;
            }
            let shown = last
                .filter(|o| shows_endpoints(o))
                .and_then(|o| contents.seq_of(o));
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

    // The race.
    let mut race_ids: BTreeSet<u64> = BTreeSet::new();
    for op in &history.ops {
        let Some(r) = op.race else { continue };
        race_ids.insert(r);
        match op.kind {
            OpKind::Sign if op.outcome == OpOutcome::Planned => f.race.plans_signed += 1,
            OpKind::Write if op.outcome.is_ack() => f.race.newer_acknowledged += 1,
            _ => {}
        }
    }
    f.race.rounds = race_ids.len() as u64;
    for op in &history.ops {
        if !matches!(op.kind, OpKind::StalePlan | OpKind::Cleanup) {
            continue;
        }
        match op.outcome {
            OpOutcome::Stale | OpOutcome::Conflict => f.race.stale_refused += 1,
            OpOutcome::Timeout | OpOutcome::Error => f.race.indeterminate += 1,
            _ => {}
        }
        let Some(q) = op.seq else { continue };
        let name_acks = acked.get(op.name.as_str());
        // The newest acknowledged write of the name with a higher seq, if any.
        let newer: Option<&Op> = name_acks.and_then(|v| {
            v.iter()
                .copied()
                .filter(|w| w.seq > Some(q) && !is_tombstone(w))
                .max_by_key(|w| w.seq)
        });
        // A plan enacted late, or the clean-up of plan A, must not hold over a write that
        // started after plan A was signed, even if that write got a lower seq: that is the
        // seed's race (the one-step path numbers from what it reads, plans by time).
        let later: Option<&Op> = later_writes(op).into_iter().max_by_key(|w| w.seq);
        let newer = newer.or(later);
        let tie = name_acks.is_some_and(|v| {
            v.iter()
                .any(|w| w.kind == OpKind::Write && w.seq == Some(q) && w.content != op.content)
        });
        // Does the final state show this op's record (or, for a tombstone, its deletion)?
        let mut shown_at = Vec::new();
        for &node in &final_nodes {
            let Some(last) = final_state.get(&(op.name.as_str(), node)) else {
                continue;
            };
            let holds = if is_tombstone(op) {
                !shows_endpoints(last) && newer.is_some_and(|w| live_at(w, last.start_ms, 0.0))
            } else {
                shows_endpoints(last)
                    && last.content.is_some()
                    && contents.seq_of(last) == Some(q)
                    && match (last.proto, &last.content, &op.content) {
                        (Proto::Dns, Some(a), Some(b)) => hosts_of(a) == hosts_of(b),
                        (_, a, b) => a == b,
                    }
            };
            if holds {
                shown_at.push(node);
            }
        }
        if op.outcome.is_ack() {
            f.race.stale_enacted += 1;
            if tie {
                f.race.ties += 1;
            }
            if shown_at.is_empty() {
                f.race.enacted_then_overridden += 1;
            }
        }
        if !shown_at.is_empty() && newer.is_some() {
            f.race.stale_held_after_heal += 1;
            f.example(
                "stale_held",
                format!(
                    "{} holds at the end at node(s) {shown_at:?} over a newer write: {}",
                    describe(op),
                    newer.map(describe).unwrap_or_default()
                ),
            );
        }
    }

    // Propagation: measured by the probes if the history has any (each polls one node for one
    // acknowledged write, right after the ack), else by the first read that shows the write
    // (then the readers' sampling interval is part of the figure).
    let by_probe = history
        .ops
        .iter()
        .any(|o| o.kind == OpKind::Probe && !is_heal_probe(o));
    let mut probed: BTreeMap<(&str, usize, u64), f64> = BTreeMap::new();
    let mut seen: BTreeMap<(&str, usize), Vec<(f64, u64)>> = BTreeMap::new();
    let mut nodes: BTreeSet<usize> = BTreeSet::new();
    for op in &history.ops {
        nodes.insert(op.node);
        let Some(s) = contents.seq_of(op).filter(|_| shows_endpoints(op)) else {
            continue;
        };
        match op.kind {
            OpKind::Probe if by_probe && !is_heal_probe(op) => {
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
                || hidden_by_clock(&history.faults, j, w, t)
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
    f.heal = heal_convergence(history);
    f
}

/// Heal convergence from the heal probes (see the module docs).
///
/// A probe (node `j`, name) that a later fault cut off from every node holding the target
/// before `j` showed it is *interrupted*: the time it took measures that fault, not this
/// heal. Holders are the nodes that acknowledged the target write and those this heal's
/// probes saw showing it before the fault began; a fault of `j` itself (kill, pause,
/// partition) cuts it off from all of them. A group partition cuts `j` off from a holder on
/// its own side too when no chain of connections the cut left whole joins them (the
/// connections its nodes reported at its start and just before its heal,
/// [`FaultSpan::peers`]): a node holds about a dozen connections, so a small island of a
/// 25-node cut is often three strangers, and none of them can pass the record on until the
/// cut heals. Interrupted probes are left out of the heal's
/// time (and do not make it unconverged) and are counted; a probe not cut off from every
/// holder counts however late, so a slow catch-up is never hidden behind a later fault.
fn heal_convergence(history: &History) -> HealConvergence {
    // (name, seq) -> nodes that acknowledged a write-like op of it.
    let mut writers: BTreeMap<(&str, u64), BTreeSet<usize>> = BTreeMap::new();
    for op in &history.ops {
        let write_like = matches!(op.kind, OpKind::Write | OpKind::StalePlan | OpKind::Cleanup);
        if let (true, true, Some(seq)) = (write_like, op.outcome.is_ack(), op.seq) {
            writers
                .entry((op.name.as_str(), seq))
                .or_default()
                .insert(op.node);
        }
    }
    let mut by_heal: BTreeMap<u64, Vec<&Op>> = BTreeMap::new();
    for op in history.ops.iter().filter(|o| is_heal_probe(o)) {
        if let Some(id) = op.round {
            by_heal.entry(id).or_default().push(op);
        }
    }
    let seen = |op: &Op| {
        op.outcome == OpOutcome::Found && op.seq.is_some_and(|s| op.want_seq.is_none_or(|w| s >= w))
    };
    let links = recorded_links(history);
    let mut out = HealConvergence::default();
    for probes in by_heal.values() {
        let Some(heal_ms) = probes.first().map(|p| p.start_ms) else {
            continue;
        };
        // (name, node) -> when this heal's probe saw it there.
        let shown: BTreeMap<(&str, usize), f64> = probes
            .iter()
            .filter(|p| seen(p))
            .map(|p| ((p.name.as_str(), p.node), p.end_ms))
            .collect();
        let cut_off = |p: &Op| {
            history.faults.iter().any(|f| {
                if f.kind == FaultKind::Skew || f.start_ms >= p.end_ms || f.end_ms <= heal_ms {
                    return false;
                }
                if f.groups.is_none() {
                    // j itself killed, paused or cut off alone; another node's such fault
                    // leaves j its other holders.
                    return f.node == p.node;
                }
                let want = p.want_seq.unwrap_or(0);
                let mut holders = writers
                    .get(&(p.name.as_str(), want))
                    .into_iter()
                    .flatten()
                    .copied()
                    .chain(
                        shown
                            .range((p.name.as_str(), 0)..=(p.name.as_str(), usize::MAX))
                            .filter(|(_, t)| **t <= f.start_ms)
                            .map(|((_, n), _)| *n),
                    )
                    .filter(|h| *h != p.node)
                    .peekable();
                // With the connections recorded: no holder reachable over connections the
                // cut left whole. Without (older histories): every holder on the other side.
                let reach = links
                    .get(&fault_key(f))
                    .map(|adjacent| reachable(adjacent, f, p.node));
                holders.peek().is_some()
                    && holders.all(|h| match &reach {
                        Some(r) => !r.contains(&h),
                        None => f.separates(p.node, h),
                    })
            })
        };
        let (mut latest, mut converged, mut counted, mut interrupted) = (heal_ms, true, 0, 0);
        let mut last: Option<&Op> = None;
        let mut failed: Option<&Op> = None;
        for p in probes {
            if cut_off(p) {
                interrupted += 1;
            } else if seen(p) {
                if p.end_ms > latest {
                    latest = p.end_ms;
                    last = Some(*p);
                }
                counted += 1;
            } else {
                converged = false;
                failed = failed.or(Some(*p));
            }
        }
        out.heals += 1;
        out.interrupted_probes += interrupted;
        let converged_ms = if !converged {
            out.unconverged += 1;
            None
        } else if counted > 0 {
            Some(latest - heal_ms)
        } else {
            None
        };
        let named = failed.or(last);
        out.each.push(HealDetail {
            at_ms: heal_ms,
            converged_ms,
            last_node: named.map(|p| p.node),
            last_name: named.map(|p| p.name.clone()),
            counted,
            interrupted,
        });
    }
    let mut times: Vec<f64> = out.each.iter().filter_map(|h| h.converged_ms).collect();
    times.sort_by(f64::total_cmp);
    out.p50 = percentile(&times, 50.0);
    out.max = times.last().copied().unwrap_or(0.0);
    out
}

/// One group partition's spans share kind, start and end.
fn fault_key(f: &FaultSpan) -> (FaultKind, u64, u64) {
    (f.kind, f.start_ms.to_bits(), f.end_ms.to_bits())
}

/// Per group partition that recorded its nodes' connections ([`FaultSpan::peers`]): who was
/// connected to whom (either end's report is enough).
fn recorded_links(
    history: &History,
) -> BTreeMap<(FaultKind, u64, u64), BTreeMap<usize, BTreeSet<usize>>> {
    let mut out: BTreeMap<_, BTreeMap<usize, BTreeSet<usize>>> = BTreeMap::new();
    for f in history.faults.iter().filter(|f| f.groups.is_some()) {
        let Some(peers) = &f.peers else { continue };
        let adjacent = out.entry(fault_key(f)).or_default();
        for &q in peers {
            adjacent.entry(f.node).or_default().insert(q);
            adjacent.entry(q).or_default().insert(f.node);
        }
    }
    out
}

/// The nodes `from` could get a record from during cut `f`: those joined to it by a chain of
/// connections `f` did not cut.
fn reachable(
    adjacent: &BTreeMap<usize, BTreeSet<usize>>,
    f: &FaultSpan,
    from: usize,
) -> BTreeSet<usize> {
    let mut seen = BTreeSet::from([from]);
    let mut todo = vec![from];
    while let Some(a) = todo.pop() {
        for &b in adjacent.get(&a).into_iter().flatten() {
            if !f.separates(a, b) && seen.insert(b) {
                todo.push(b);
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_reachable_through_a_chain_of_connections_the_cut_left_whole() {
        let f = FaultSpan {
            groups: Some(vec![vec![1, 2, 3], vec![4, 5]]),
            ..span(FaultKind::Split, 1, 0.0, 1.0)
        };
        let mut adjacent: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        for (a, b) in [(1, 2), (2, 3), (3, 4), (1, 5)] {
            adjacent.entry(a).or_default().insert(b);
            adjacent.entry(b).or_default().insert(a);
        }
        assert_eq!(reachable(&adjacent, &f, 3), BTreeSet::from([1, 2, 3]));
        assert_eq!(
            reachable(&adjacent, &f, 4),
            BTreeSet::from([4]),
            "4-5 never connected"
        );
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    fn span(kind: FaultKind, node: usize, start_ms: f64, end_ms: f64) -> FaultSpan {
        FaultSpan {
            kind,
            node,
            start_ms,
            end_ms,
            offset_ms: None,
            groups: None,
            peers: None,
        }
    }

    #[test]
    fn a_node_down_or_cut_off_from_before_a_write_until_the_read_was_isolated() {
        const B: f64 = 5_000.0;
        // Node 7: killed at 1 s, back at 10 s, paused at 12 s (2 s back: less than the bound
        // to catch up), resumed at 20 s, partitioned 21–30 s. A write at node 1 at 5 s.
        let faults = vec![
            span(FaultKind::Kill, 7, 1_000.0, 10_000.0),
            span(FaultKind::Pause, 7, 12_000.0, 20_000.0),
            span(FaultKind::Partition, 7, 21_000.0, 30_000.0),
        ];
        assert!(isolated_throughout(&faults, 7, 1, 5_000.0, 33_000.0, B));
        // Long enough back after the partition: it should have caught up.
        assert!(!isolated_throughout(&faults, 7, 1, 5_000.0, 36_000.0, B));
        // A write made before the first fault could have reached it.
        assert!(!isolated_throughout(&faults, 7, 1, 500.0, 20_000.0, B));
        // Another node was not isolated at all.
        assert!(!isolated_throughout(&faults, 3, 1, 5_000.0, 20_000.0, B));
        // A gap of the bound or more between faults breaks it.
        let gap = vec![
            span(FaultKind::Kill, 7, 1_000.0, 10_000.0),
            span(FaultKind::Pause, 7, 16_000.0, 30_000.0),
        ];
        assert!(!isolated_throughout(&gap, 7, 1, 5_000.0, 20_000.0, B));
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
