//! The invariants, checked after every event on exactly what the event touched.
//!
//! An event (a delivered message, a timer, a fault) records each `(node, name)` whose entry it
//! may have changed; after the event, [`check_entry`] runs on each of them:
//!
//! * **no live name without a winner** — an entry whose winner is neither a tombstone nor
//!   expired (by that node's clock) must still hold the winner's body, or the name would answer
//!   nothing (what clean-up did to the seed's record);
//! * **no seq regression** — a node's rank for a name never goes down while the node lives; across a crash it restarts from what was durable (checked at restart, see
//!   below), since a replicated record that was never flushed was never acknowledged either;
//! * **no acknowledged write lost** — the node that acknowledged a write holds it, or something
//!   newer, from the acknowledgement on, including after a crash and restart (its durable copy
//!   is checked at restart); elsewhere, once held it can only be superseded by something newer
//!   (the regression check), and at quiescence every live node holds it or something newer.
//!
//! At quiescence ([`check_quiescent`]) every live node must hold the same winners: the same
//! `Store::digest()` root, and every acknowledged rank.
//!
//! Every comparison is by the protocol's merge order, [`Rank`] `(seq, live, hash)` (what
//! `dpin_protocol::merge::decide` ranks by), never by the floor `(seq, hash)` alone: at equal
//! seq a live record beats a tombstone whatever the hashes, and a checker ranking by the floor
//! would call that legal replacement a regression (or a lost acknowledged tombstone).

use std::collections::BTreeMap;

use dpin_protocol::merge::Rank;
use dpin_protocol::Entry;
use dpin_protocol::{MemStore, Store};

use super::NodeId;

/// Which invariant broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// A live name's winner is gone at a node.
    LiveNameWithoutWinner,
    /// A node's floor for a name went down.
    SeqRegression,
    /// An acknowledged write is gone or was superseded by an older record.
    AckedWriteLost,
    /// At quiescence, live nodes hold different winners.
    Diverged,
}

/// One broken invariant, with where and when.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// Which invariant.
    pub kind: ViolationKind,
    /// The node where it was seen.
    pub node: NodeId,
    /// The name involved (empty for divergence).
    pub name: String,
    /// Virtual time of the event after which it was seen, ms.
    pub at_ms: u64,
    /// What exactly was seen.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} at node {} name {:?} t={} ms: {}",
            self.kind, self.node, self.name, self.at_ms, self.detail
        )
    }
}

/// What the checker remembers per node.
#[derive(Clone, Debug, Default)]
pub struct NodeWatch {
    /// Last rank seen per name while the node lives.
    pub observed: BTreeMap<u32, Rank>,
    /// Highest rank this node acknowledged to a writer, per name.
    pub acked: BTreeMap<u32, Rank>,
}

fn fmt_rank(f: Option<Rank>) -> String {
    match f {
        Some(f) => format!(
            "seq {} {} hash {}",
            f.seq,
            if f.live { "live" } else { "tombstone" },
            hex::encode(&f.hash[..4])
        ),
        None => "nothing".to_owned(),
    }
}

/// Checks one touched `(node, name)` after an event and updates what the checker remembers.
pub fn check_entry(
    store: &MemStore,
    watch: &mut NodeWatch,
    node: NodeId,
    name_id: u32,
    name: &str,
    node_now_ms: u64,
    at_ms: u64,
) -> Result<(), Violation> {
    let entry = store.entry(name);
    let floor = entry.map(Entry::rank);
    let v = |kind, detail: String| Violation {
        kind,
        node,
        name: name.to_owned(),
        at_ms,
        detail,
    };
    if let Some(e) = entry {
        if e.bytes.is_none() && !e.tombstone && e.expires_at_ms > node_now_ms {
            return Err(v(
                ViolationKind::LiveNameWithoutWinner,
                format!(
                    "floor {} expires at {} (node clock {}) but its body is gone",
                    fmt_rank(floor),
                    e.expires_at_ms,
                    node_now_ms
                ),
            ));
        }
    }
    if let Some(acked) = watch.acked.get(&name_id) {
        if floor.is_none_or(|f| f < *acked) {
            return Err(v(
                ViolationKind::AckedWriteLost,
                format!(
                    "acknowledged {} here, now holds {}",
                    fmt_rank(Some(*acked)),
                    fmt_rank(floor)
                ),
            ));
        }
    }
    if let Some(seen) = watch.observed.get(&name_id) {
        if floor.is_none_or(|f| f < *seen) {
            return Err(v(
                ViolationKind::SeqRegression,
                format!(
                    "held {}, now holds {}",
                    fmt_rank(Some(*seen)),
                    fmt_rank(floor)
                ),
            ));
        }
    }
    if let Some(f) = floor {
        watch.observed.insert(name_id, f);
    }
    Ok(())
}

/// The restart check: the durable store a node comes back with still holds everything the
/// node acknowledged. Resets the regression baseline to what came back.
pub fn check_restart(
    store: &MemStore,
    watch: &mut NodeWatch,
    node: NodeId,
    names: &[std::sync::Arc<str>],
    at_ms: u64,
) -> Result<(), Violation> {
    for (&name_id, acked) in &watch.acked {
        let name = names.get(name_id as usize).map_or("", |n| &**n);
        let floor = store.entry(name).map(Entry::rank);
        if floor.is_none_or(|f| f < *acked) {
            return Err(Violation {
                kind: ViolationKind::AckedWriteLost,
                node,
                name: name.to_owned(),
                at_ms,
                detail: format!(
                    "acknowledged {} before the crash, restarted with {}",
                    fmt_rank(Some(*acked)),
                    fmt_rank(floor)
                ),
            });
        }
    }
    watch.observed.clear();
    Ok(())
}

/// The quiescence check over the live nodes' stores: one digest root, and every
/// acknowledged rank (`acked`, per name) held everywhere — with one exception, see below.
/// Returns how many `(node, name)` pairs the exception excused.
///
/// **Missed before compaction.** A floor travels only with its signed body (a bare floor is
/// not signed, `dpin_protocol::store::DEFAULT_BODY_RETENTION_MS`), and a body is dropped
/// `retention` after its record expired. A node that missed an acknowledged write (its copy
/// was lost in a crash before the group commit, gossip did not reach it, and no anti-entropy
/// session with a holder ran) while every holder still had the body, can never learn that
/// floor once every holder compacted it: the protocol has nothing left to send. In production
/// the retention is a day and more, so this takes a day of isolation; the race shortens the
/// retention to seconds, so it happens in a few seeds in ten thousand. It is not a lost write
/// when all of the following hold, and the check excuses exactly that:
/// * some live node still holds the acknowledged rank or a higher one (the write survives);
/// * no live node holds the body of a record of that rank or higher for the name (it was
///   compacted at every holder, so no transfer is possible);
/// * the lacking node holds no body for the name either (its own older winner is compacted
///   too, so it serves nothing older and can resend nothing older).
///
/// A write gone from every live node, or missing at a node while a body that carries it is
/// still held (anti-entropy could and should have moved it), is still `AckedWriteLost`.
pub fn check_quiescent<'a>(
    live: impl Iterator<Item = (NodeId, &'a MemStore)> + Clone,
    acked: &BTreeMap<u32, Rank>,
    names: &[std::sync::Arc<str>],
    at_ms: u64,
) -> Result<u64, Violation> {
    let mut first: Option<(NodeId, [u8; 32])> = None;
    for (node, store) in live.clone() {
        let root = store.digest().root;
        match first {
            None => first = Some((node, root)),
            Some((n0, r0)) if r0 != root => {
                return Err(Violation {
                    kind: ViolationKind::Diverged,
                    node,
                    name: String::new(),
                    at_ms,
                    detail: format!(
                        "digest {} differs from node {}'s {}",
                        hex::encode(&root[..8]),
                        n0,
                        hex::encode(&r0[..8])
                    ),
                });
            }
            Some(_) => {}
        }
    }
    let mut excused = 0;
    for (&name_id, a) in acked {
        let name = names.get(name_id as usize).map_or("", |n| &**n);
        // Whether the write survives somewhere, and whether a body that carries it is still
        // held anywhere (then anti-entropy can move it).
        let (mut survives, mut carried) = (false, false);
        for (_, store) in live.clone() {
            if let Some(e) = store.entry(name).filter(|e| e.rank() >= *a) {
                survives = true;
                carried |= e.bytes.is_some();
            }
        }
        for (node, store) in live.clone() {
            let entry = store.entry(name);
            let floor = entry.map(Entry::rank);
            if floor.is_some_and(|f| f >= *a) {
                continue;
            }
            let bodiless_here = entry.is_none_or(|e| e.bytes.is_none());
            if survives && !carried && bodiless_here {
                excused += 1;
                continue;
            }
            let why = if !survives {
                "no live node holds it"
            } else if carried {
                "a body carrying it is still held elsewhere"
            } else {
                "this node still holds an older body"
            };
            return Err(Violation {
                kind: ViolationKind::AckedWriteLost,
                node,
                name: name.to_owned(),
                at_ms,
                detail: format!(
                    "at quiescence holds {}, acknowledged {} ({why})",
                    fmt_rank(floor),
                    fmt_rank(Some(*a))
                ),
            });
        }
    }
    Ok(excused)
}
