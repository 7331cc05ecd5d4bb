//! The invariants, checked after every event on exactly what the event touched.
//!
//! An event (a delivered message, a timer, a fault) records each `(node, name)` whose entry it
//! may have changed; after the event, [`check_entry`] runs on each of them:
//!
//! * **no live name without a winner** — an entry whose winner is neither a tombstone nor
//!   expired (by that node's clock) must still hold the winner's body, or the name would answer
//!   nothing (what clean-up did to the seed's record);
//! * **no seq regression** — a node's floor `(seq, hash)` for a name never goes down while the
//!   node lives; across a crash it restarts from what was durable (checked at restart, see
//!   below), since a replicated record that was never flushed was never acknowledged either;
//! * **no acknowledged write lost** — the node that acknowledged a write holds it, or something
//!   newer, from the acknowledgement on, including after a crash and restart (its durable copy
//!   is checked at restart); elsewhere, once held it can only be superseded by something newer
//!   (the regression check), and at quiescence every live node holds it or something newer.
//!
//! At quiescence ([`check_quiescent`]) every live node must hold the same winners: the same
//! `Store::digest()` root, and every acknowledged floor.

use std::collections::BTreeMap;

use dpin_protocol::merge::Floor;
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
    /// Last floor seen per name while the node lives.
    pub observed: BTreeMap<u32, Floor>,
    /// Highest floor this node acknowledged to a writer, per name.
    pub acked: BTreeMap<u32, Floor>,
}

fn fmt_floor(f: Option<Floor>) -> String {
    match f {
        Some(f) => format!("seq {} hash {}", f.seq, hex::encode(&f.hash[..4])),
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
    let floor = entry.map(|e| e.floor);
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
                    fmt_floor(floor),
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
                    fmt_floor(Some(*acked)),
                    fmt_floor(floor)
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
                    fmt_floor(Some(*seen)),
                    fmt_floor(floor)
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
        let floor = store.entry(name).map(|e| e.floor);
        if floor.is_none_or(|f| f < *acked) {
            return Err(Violation {
                kind: ViolationKind::AckedWriteLost,
                node,
                name: name.to_owned(),
                at_ms,
                detail: format!(
                    "acknowledged {} before the crash, restarted with {}",
                    fmt_floor(Some(*acked)),
                    fmt_floor(floor)
                ),
            });
        }
    }
    watch.observed.clear();
    Ok(())
}

/// The quiescence check over the live nodes' stores: one digest root, and every
/// acknowledged floor (`acked`, per name) held everywhere.
pub fn check_quiescent<'a>(
    live: impl Iterator<Item = (NodeId, &'a MemStore)>,
    acked: &BTreeMap<u32, Floor>,
    names: &[std::sync::Arc<str>],
    at_ms: u64,
) -> Result<(), Violation> {
    let mut first: Option<(NodeId, [u8; 32])> = None;
    for (node, store) in live {
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
        for (&name_id, a) in acked {
            let name = names.get(name_id as usize).map_or("", |n| &**n);
            let floor = store.entry(name).map(|e| e.floor);
            if floor.is_none_or(|f| f < *a) {
                return Err(Violation {
                    kind: ViolationKind::AckedWriteLost,
                    node,
                    name: name.to_owned(),
                    at_ms,
                    detail: format!(
                        "at quiescence holds {}, acknowledged {}",
                        fmt_floor(floor),
                        fmt_floor(Some(*a))
                    ),
                });
            }
        }
    }
    Ok(())
}
