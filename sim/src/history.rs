//! The history of a chaos run: every client operation and every fault, with its start and end
//! time in milliseconds since the run started.
//!
//! Jepsen's lesson is that a harness which only prints "OK" proves nothing: the workload must
//! *record* what it asked and what it was told, and a separate, pure checker must judge that
//! record afterwards. This module is the record. It is written as JSON Lines (one event per
//! line, `"type": "op"` or `"type": "fault"`) next to the report, so a reader can replay the
//! checker on it, grep it, or load it into anything that reads JSON.
//!
//! The types are deliberately plain data with public fields (and `Default`), so tests can write
//! histories by hand (see `tests/chaos_checker.rs`).
//!
//! Besides seqs, operations carry **content** (the endpoints a write sent or a read saw, in one
//! canonical text form, see [`content_of`]) so the checker can tell *which* record an answer
//! came from, and writes carry their **expiry** on the run's clock, so the checker knows which
//! names are live at each instant. Clock-skew faults carry the node's clock offset. All of
//! these fields are optional, so histories written before them still load. Reads also carry
//! whether the answering node said it was cut off, and the readers' failovers away from such
//! answers (see [`crate::workload`], "Readers").

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What kind of client operation an [`Op`] was.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// A resolve of one name at one node, part of a read round.
    #[default]
    Read,
    /// A writer's publish of a new record (a higher seq than it published before).
    Write,
    /// The seed's race: the delayed enactor A's write — a plan fixed before the newer write,
    /// or a one-step publish from a lagging node's view. A node that already holds something
    /// newer must refuse it; a lagging or partitioned node may take it, but it must never hold
    /// after the heal.
    StalePlan,
    /// The seed's clean-up job: a tombstone that names the old plan's seq (`--if-seq` or a
    /// tombstone plan). It may only ever delete that old plan, never the newer write.
    Cleanup,
    /// `dpin sign`: the planner fixing a plan's seq. Nothing is written to any node.
    Sign,
    /// A propagation probe: polls one node until it holds a just-acknowledged write.
    Probe,
    /// A resolve after the run has healed and converged: the final state the lost-write
    /// check compares against.
    FinalRead,
}

/// Protocol an operation used.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    /// The node's HTTP API.
    #[default]
    Http,
    /// The node's DNS front-end (UDP, A query).
    Dns,
    /// The `dpin` command line, run as a child process against the listed nodes (the paths a
    /// user takes: `dpin sign`, `dpin publish --record`, the one-step `dpin publish`).
    Cli,
}

/// What a node said (or did not say).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum OpOutcome {
    /// Read answered with a record (its endpoint count is in [`Op::endpoints`]).
    Found,
    /// Read answered "no such name" (HTTP 404, DNS NXDOMAIN or an answer without addresses).
    NotFound,
    /// Write applied (HTTP 200, `applied`).
    Applied,
    /// Write was already held (HTTP 200, `duplicate`).
    Duplicate,
    /// Equal seq, different content, and ours won the tie-break (HTTP 200, `conflict_won`).
    ConflictWon,
    /// Refused as stale (HTTP 409, `stale`).
    Stale,
    /// Refused: equal seq lost the tie-break, or compare-and-set mismatch (HTTP 409).
    Conflict,
    /// Refused for another reason (other 4xx), see [`Op::detail`].
    Rejected,
    /// No answer within the timeout. For a write: indeterminate (may or may not be applied).
    Timeout,
    /// Connection refused/reset, 5xx or an unparseable answer. For a write: indeterminate.
    #[default]
    Error,
    /// `dpin sign` wrote a plan (nothing was sent to a node).
    Planned,
}

impl OpOutcome {
    /// A write outcome that acknowledges the write (HTTP 200).
    pub fn is_ack(self) -> bool {
        matches!(
            self,
            OpOutcome::Applied | OpOutcome::Duplicate | OpOutcome::ConflictWon
        )
    }

    /// A read outcome in which the node answered (with or without a record).
    pub fn is_answer(self) -> bool {
        matches!(self, OpOutcome::Found | OpOutcome::NotFound)
    }
}

/// One client operation against one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// What was attempted.
    pub kind: OpKind,
    /// Over which protocol.
    pub proto: Proto,
    /// Which client process did it (`writer-0`, `reader-http-1`, `race-b`, ...).
    pub process: String,
    /// Node index, 1-based: the node asked, or for a CLI op the `--api` node that answered
    /// (the first listed if none did). 0 for a `dpin sign --seq`, which asks no node.
    pub node: usize,
    /// Full name, `label.zone`.
    pub name: String,
    /// Read round: all reads with the same round asked the same name at (about) the same time
    /// from every node. A round in which no node answered is a failed query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u64>,
    /// Start, ms since run start.
    pub start_ms: f64,
    /// End (answer or timeout), ms since run start.
    pub end_ms: f64,
    /// What happened.
    pub outcome: OpOutcome,
    /// For writes the seq sent; for reads the seq seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// For reads that found a record: how many endpoints the answer carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<usize>,
    /// Error text or HTTP error kind, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For probes: the acknowledged seq the probe waited for (`seq` is what it saw).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub want_seq: Option<u64>,
    /// Content: for writes what was sent, for reads what was seen, in the form of
    /// [`content_of`] (`tombstone` for a deletion). A DNS answer carries addresses only, so
    /// DNS reads hold the hosts alone (see [`hosts_of`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// For writes: when the record expires, ms since run start on the harness's clock (a
    /// lower bound: the CLI signs a moment after the op starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<f64>,
    /// For the race's operations: the race round they belong to (planner, enactors and
    /// clean-up of one round share it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub race: Option<u64>,
    /// For reads: whether the answer said its node is cut off from the network (HTTP: the
    /// resolve answer's `cut_off`; DNS: a TTL of at most
    /// [`dpin_protocol::reach::CUT_OFF_DNS_TTL_SECS`]). `None`: the answer did not say (no
    /// answer, or a history from before the flag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_off: Option<bool>,
    /// For reads made by a reader failing over: the node (1-based) whose answer in the same
    /// round said it was cut off, and in whose place this node was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_from: Option<usize>,
    /// For a read whose answer said cut off: no node the reader failed over to gave an
    /// answer that did not say so, and the reader kept this one (never fail closed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fallback: bool,
}

/// The canonical content text of an endpoint set: `host:port` items, sorted, joined by `,`.
/// Port and transport suffixes beyond `host:port` are not part of it.
pub fn content_of<'a>(endpoints: impl IntoIterator<Item = (&'a str, u16)>) -> String {
    let mut items: Vec<String> = endpoints
        .into_iter()
        .map(|(h, p)| format!("{h}:{p}"))
        .collect();
    items.sort();
    items.dedup();
    items.join(",")
}

/// The content marker of a tombstone.
pub const TOMBSTONE: &str = "tombstone";

/// The hosts of a content text (what a DNS A answer can show): sorted, unique, joined by `,`.
pub fn hosts_of(content: &str) -> String {
    let mut hosts: Vec<&str> = content
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|item| item.rsplit_once(':').map_or(item, |(h, _)| h))
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    hosts.join(",")
}

/// Kind of fault the nemesis injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL, later restarted with the same data dir and arguments.
    Kill,
    /// SIGSTOP, later SIGCONT.
    Pause,
    /// The node is cut off from every other node (clients still reach it).
    Partition,
    /// The node's wall clock is off by [`FaultSpan::offset_ms`] (its monotonic clock is not).
    Skew,
    /// Split-brain: the nodes are cut into two groups ([`FaultSpan::groups`]) and nothing
    /// passes between them. Clients still reach every node, and write on both sides.
    Split,
    /// One-way cut: the first group of [`FaultSpan::groups`] cannot hear the second (what the
    /// second sends to the first is dropped; the other direction passes).
    OneWay,
    /// A clean restart: SIGTERM, wait for the exit, start again on the same data dir and ports
    /// (the rolling-restart mode restarts every node, one at a time, under load).
    Restart,
}

impl FaultKind {
    /// Lowercase name, as used on the command line and in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Skew => "skew",
            FaultKind::Split => "split",
            FaultKind::OneWay => "oneway",
            FaultKind::Restart => "rolling-restart",
        }
    }
}

impl std::str::FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "kill" => Ok(FaultKind::Kill),
            "pause" => Ok(FaultKind::Pause),
            "partition" => Ok(FaultKind::Partition),
            "skew" => Ok(FaultKind::Skew),
            "split" => Ok(FaultKind::Split),
            "oneway" | "one-way" => Ok(FaultKind::OneWay),
            "rolling-restart" | "restart" => Ok(FaultKind::Restart),
            other => Err(format!(
                "unknown fault {other:?}; use kill, pause, partition, split, oneway, skew or rolling-restart"
            )),
        }
    }
}

/// One fault interval: from injection until the node is healthy again (restarted and
/// answering, resumed, reconnected, or its clock set right again).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultSpan {
    /// What was done.
    pub kind: FaultKind,
    /// To which node (1-based).
    pub node: usize,
    /// Injection time, ms since run start.
    pub start_ms: f64,
    /// Heal time, ms since run start.
    pub end_ms: f64,
    /// For a skew: how far the node's wall clock was set off real time, ms (positive =
    /// ahead). Expiry at that node is judged by its clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_ms: Option<i64>,
    /// For a group partition ([`FaultKind::Split`], [`FaultKind::OneWay`]): the two groups of
    /// 1-based node indexes; a one-way cut drops what the second group sends to the first. A
    /// group partition is recorded as one span per node it affects, each with the groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<Vec<usize>>>,
    /// For a group partition: the nodes this span's node reported connected (its
    /// `/v1/status`) when the cut began or just before it healed. Which islands of the cut
    /// could pass a record to each other at all: a node can sit on a holder's side of a cut
    /// with no connection to it (the checker's `heal_convergence`). Absent in histories
    /// recorded before it was (then only the sides count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<usize>>,
}

impl FaultSpan {
    /// Whether this fault cut nodes `x` and `y` apart, in either direction (TCP needs both,
    /// so a one-way cut separates them too).
    pub fn separates(&self, x: usize, y: usize) -> bool {
        if x == y {
            return false;
        }
        match self.kind {
            FaultKind::Partition => self.node == x || self.node == y,
            FaultKind::Split | FaultKind::OneWay => match self.groups.as_deref() {
                Some([a, b]) => {
                    (a.contains(&x) && b.contains(&y)) || (a.contains(&y) && b.contains(&x))
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// Whether this is a partition of any kind (one node isolated, split, one-way cut).
    pub fn is_partition(&self) -> bool {
        matches!(
            self.kind,
            FaultKind::Partition | FaultKind::Split | FaultKind::OneWay
        )
    }
}

/// One line of the JSONL history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A client operation.
    Op(Op),
    /// A fault interval.
    Fault(FaultSpan),
}

/// A whole run's history.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// Client operations, in completion order.
    pub ops: Vec<Op>,
    /// Fault intervals, in injection order.
    pub faults: Vec<FaultSpan>,
}

/// Reading or writing a history file failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// File I/O.
    #[error("history file: {0}")]
    Io(#[from] std::io::Error),
    /// A line was not a valid event.
    #[error("history line {line}: {source}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What serde said.
        source: serde_json::Error,
    },
}

impl History {
    /// Writes the history as JSON Lines: faults first, then operations sorted by start time.
    pub fn write_jsonl(&self, path: &Path) -> Result<(), HistoryError> {
        let mut out = BufWriter::new(std::fs::File::create(path)?);
        let mut ops: Vec<&Op> = self.ops.iter().collect();
        ops.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        for f in &self.faults {
            serde_json::to_writer(&mut out, &Event::Fault(f.clone()))
                .map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
        }
        for op in ops {
            serde_json::to_writer(&mut out, &Event::Op(op.clone()))
                .map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(())
    }

    /// Reads a JSON Lines history written by [`History::write_jsonl`].
    pub fn read_jsonl(path: &Path) -> Result<Self, HistoryError> {
        let file = std::io::BufReader::new(std::fs::File::open(path)?);
        let mut h = History::default();
        for (i, line) in file.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Event>(&line).map_err(|source| HistoryError::Parse {
                line: i + 1,
                source,
            })? {
                Event::Op(op) => h.ops.push(op),
                Event::Fault(f) => h.faults.push(f),
            }
        }
        Ok(h)
    }

    /// Latest end time of any op or fault (the run's length as the history saw it).
    pub fn end_ms(&self) -> f64 {
        let ops = self.ops.iter().map(|o| o.end_ms);
        let faults = self.faults.iter().map(|f| f.end_ms);
        ops.chain(faults).fold(0.0, f64::max)
    }
}
