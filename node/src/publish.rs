//! Writing names safely from a client: plans, enactment and compare-and-set.
//!
//! The October-2025 outage was a write path, not a merge rule: an enactor checked once that
//! its plan was newer, stalled, and applied it later over a newer one. Every path here leaves
//! the decision to the merge rule on the node at apply time, and adds the checks a writer needs
//! so that it is *told* when it raced instead of silently winning or losing:
//!
//! * **Plan, then enact** ([`Plan`], [`enact_plan`]). `dpin sign` fixes the seq when the plan
//!   is made (one more than the highest seq any listed peer holds, or the planner's own
//!   number with `--seq` — a planner that makes several plans before any is enacted numbers
//!   them itself, as the seed's planner did); `dpin publish --record`
//!   enacts it later. A late plan is refused as stale by every node that holds anything newer,
//!   and the client refuses before sending if any reachable peer holds a higher seq, or the
//!   same seq with other content. Re-enacting the same plan is a harmless duplicate.
//! * **One-step publish** ([`enact_cas`]). Reads the highest seq `H` from every listed peer,
//!   signs `H + 1` and sends it with compare-and-set `if_seq = H`, first to a peer that holds
//!   `H`. A peer holding more than `H` means another writer got there first: the write is
//!   refused (`raced`), never applied over it. A peer holding less is merely lagging, and the
//!   next peer is tried, as it is after a peer that refused only by its own clock (HTTP 422
//!   `clock`). Retrying after a timeout re-sends the same signed record, which a
//!   node that already applied it reports as a duplicate, not as a lost race.
//! * Every path picks seqs the same way — what was read, plus one — so a plan and a one-step
//!   write made after it compare as the order they were made in. (Seqs taken from the clock
//!   were tried for plans and rejected: a plan signed at time t then outranked every later
//!   one-step write whose counter was below t — the seed's race again, found by the chaos
//!   harness's mixed-path rounds.)
//! * **Deleting** names what it deletes: a tombstone needs `--if-hash` (the content hash of
//!   the record being deleted, as `dpin resolve` shows it), `--if-seq` (the seq being
//!   deleted), a pinned `--seq`, or a plan; a bare `--tombstone` is refused by the CLI. The
//!   hash is the safe one: a seq names a position, and two different records can hold one
//!   seq, so a clean-up that read seq `N` for plan A could delete plan B at `N`. With
//!   `--if-hash` the node applies the deletion only while the record it names is the winner
//!   (API `if_hash`, checked atomically with the merge, [`Node::publish_if`]); a retry of a
//!   deletion that already won is a duplicate. And if a write made from the same read lands
//!   at the deletion's seq anyway, the write wins on every replica (a live record beats a
//!   tombstone at equal seq), so the name is never left empty by that race.
//!
//! What an AP system can promise two concurrent writers (README "Writing safely"): every node
//! ends with the same single winner (higher seq, then a live record over a tombstone, then the
//! content-hash tie-break), and when
//! both writes reach one node, or nodes that can talk, at least one writer is refused. Two
//! writers on opposite sides of a partition can both be acknowledged at the same seq; after
//! the heal the tie-break picks one winner everywhere and counts a conflict
//! (`dpin_conflicts_total`). Nothing is ever left empty.

use std::path::Path;

use dpin_protocol::record::{seq_ceiling, Freshness};
use dpin_protocol::{Content, RecordBody, SignedRecord, ZoneKey, MAX_TTL_MS};
use serde::{Deserialize, Serialize};

use crate::client::{Answer, Client};
use crate::contract::{PublishRefusal, PublishRequest, SeqAnswer};
use crate::node::{now_ms, Node, NodeError, PublishResult};
use dpin_protocol::store::{Cas, Store};

/// Version of the plan file format.
pub const PLAN_VERSION: u32 = 1;

/// Why a write was not made.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// No listed peer answered.
    #[error(
        "no peer answered ({0}); check that at least one --api address is a running dpin node"
    )]
    NoPeer(String),
    /// Another writer changed the name after we read it; nothing was overwritten.
    #[error("raced: {name} moved from seq {read} to seq {now} at {addr} while this write was under way (another writer); nothing was overwritten — check `dpin resolve {name}` and publish again if your change still applies")]
    Raced {
        /// The name.
        name: String,
        /// The seq read before signing.
        read: u64,
        /// The seq the peer holds now.
        now: u64,
        /// The peer that said so.
        addr: String,
    },
    /// A plan (or pinned seq) that something newer already supersedes.
    #[error("stale: {addr} holds seq {held} of {name}, newer than this record's seq {seq}; a newer write was made after this was planned, so it must not be applied")]
    Stale {
        /// The name.
        name: String,
        /// The record's seq.
        seq: u64,
        /// The newer seq held.
        held: u64,
        /// The peer that holds it.
        addr: String,
    },
    /// A different record already holds this seq.
    #[error("conflict: {addr} already holds a different record of {name} at seq {seq}; two writes were planned with one seq — plan again")]
    Conflict {
        /// The name.
        name: String,
        /// The contested seq.
        seq: u64,
        /// The peer that holds the other record.
        addr: String,
    },
    /// The record a write names (`--if-hash`) is no longer the winner: it was replaced or
    /// deleted after it was read.
    #[error("replaced: {name}'s winner is no longer the record {named} (held at {addr}: seq {held_seq}{}); it was replaced after you read it, so nothing was changed — check `dpin resolve {name}`", held_hash.as_deref().map(|h| format!(", hash {h}")).unwrap_or_default())]
    Replaced {
        /// The name.
        name: String,
        /// The hash the write named (hex).
        named: String,
        /// The seq held now.
        held_seq: u64,
        /// The hash held now (hex), if the peer said.
        held_hash: Option<String>,
        /// The peer that said so.
        addr: String,
    },
    /// Every peer that answered lags behind the seq read from another peer.
    #[error("every reachable peer lags behind seq {read} of {name} (read before signing); retry in a moment")]
    AllLagging {
        /// The name.
        name: String,
        /// The seq read.
        read: u64,
    },
    /// A node refused the record (stale, conflict, invalid...).
    #[error("{addr} refused: {kind}: {message} (HTTP {status})")]
    Refused {
        /// The peer.
        addr: String,
        /// HTTP status.
        status: u16,
        /// Machine-readable kind (`stale`, `conflict`, `cas_mismatch`, `invalid`...).
        kind: String,
        /// The node's explanation.
        message: String,
    },
    /// The record could not be built (bad seq, TTL, endpoint...).
    #[error("{0}")]
    Invalid(String),
    /// A plan file could not be read or written.
    #[error("plan file {path}: {reason}")]
    PlanFile {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// A signed record waiting to be enacted: what `dpin sign --out` writes and
/// `dpin publish --record` reads. JSON, so operators can inspect it; the record itself is the
/// signed wire bytes in hex, so the file cannot be edited without breaking the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Format version ([`PLAN_VERSION`]).
    pub dpin_plan: u32,
    /// The full name.
    pub name: String,
    /// The seq fixed at planning time.
    pub seq: u64,
    /// The highest seq the peers held when the plan was made.
    pub planned_over: u64,
    /// Whether the plan deletes the name.
    pub tombstone: bool,
    /// Expiry (Unix ms).
    pub expires_at_ms: u64,
    /// Content hash of the signed record (hex): what a clean-up names to delete exactly this
    /// plan (`dpin publish --tombstone --if-hash`). Informational; plans written before it
    /// existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Signed record, hex.
    pub record: String,
}

impl Plan {
    /// A plan for `record`, made over `planned_over`.
    pub fn new(record: &SignedRecord, planned_over: u64) -> Self {
        Plan {
            dpin_plan: PLAN_VERSION,
            name: record.name(),
            seq: record.body.seq,
            planned_over,
            tombstone: record.is_tombstone(),
            expires_at_ms: record.body.expires_at_ms,
            hash: Some(hex::encode(record.content_hash())),
            record: hex::encode(record.encode()),
        }
    }

    /// The signed record, checked against the plan's own fields and its signature.
    pub fn record(&self) -> Result<SignedRecord, WriteError> {
        if self.dpin_plan != PLAN_VERSION {
            return Err(WriteError::Invalid(format!(
                "plan format version {} is not supported (this dpin reads version {PLAN_VERSION})",
                self.dpin_plan
            )));
        }
        let bytes = hex::decode(self.record.trim())
            .map_err(|e| WriteError::Invalid(format!("plan record is not hex: {e}")))?;
        let record = SignedRecord::decode(&bytes)
            .map_err(|e| WriteError::Invalid(format!("plan record does not decode: {e}")))?;
        record
            .validate_fields()
            .and_then(|()| record.verify_signature())
            .map_err(|e| WriteError::Invalid(format!("plan record is not valid: {e}")))?;
        if record.name() != self.name
            || record.body.seq != self.seq
            || self
                .hash
                .as_deref()
                .is_some_and(|h| h != hex::encode(record.content_hash()))
        {
            return Err(WriteError::Invalid(
                "plan fields do not match its signed record (edited by hand?)".into(),
            ));
        }
        Ok(record)
    }

    /// Writes the plan to `path` (atomically: a temporary file renamed into place).
    pub fn write(&self, path: &Path) -> Result<(), WriteError> {
        let err = |reason: String| WriteError::PlanFile {
            path: path.display().to_string(),
            reason,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| err(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text + "\n").map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
    }

    /// Reads a plan from `path`.
    pub fn read(path: &Path) -> Result<Self, WriteError> {
        let err = |reason: String| WriteError::PlanFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| err(format!("not a dpin plan: {e}")))
    }
}

/// What one peer holds for a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFloor {
    /// The peer's `--api` address.
    pub addr: String,
    /// Highest seq it holds (0 if none).
    pub seq: u64,
    /// Content hash of the record at that seq (hex), if any.
    pub hash: Option<String>,
}

/// Asks every listed peer at once what it holds for `name`. Fails only if none answers.
pub async fn read_floors(client: &Client, name: &str) -> Result<Vec<PeerFloor>, WriteError> {
    let mut floors = Vec::new();
    let mut failures = Vec::new();
    for answer in client.ask_all(&format!("/v1/seq/{name}")).await {
        match answer {
            Ok(a) if a.status == 200 => match a.decode::<SeqAnswer>() {
                Ok(SeqAnswer { seq, hash, .. }) => floors.push(PeerFloor {
                    addr: a.addr,
                    seq,
                    hash,
                }),
                Err(e) => failures.push(e),
            },
            Ok(a) => failures.push(format!("{}: HTTP {}", a.addr, a.status)),
            Err(e) => failures.push(e),
        }
    }
    if floors.is_empty() {
        return Err(WriteError::NoPeer(failures.join("; ")));
    }
    Ok(floors)
}

/// The highest seq among `floors` (0 if none holds the name).
pub fn highest(floors: &[PeerFloor]) -> u64 {
    floors.iter().map(|f| f.seq).max().unwrap_or(0)
}

/// The seq after `held`, refused if it would pass the seq ceiling (checked arithmetic: a name
/// at `u64::MAX` cannot exist, because the ceiling refuses it, but the check does not rely on
/// that).
pub fn next_seq(held: u64, now_ms: u64) -> Result<u64, WriteError> {
    let next = held.checked_add(1).ok_or_else(|| {
        WriteError::Invalid(format!(
            "seq {held} has no successor; the name cannot be written"
        ))
    })?;
    check_seq(next, now_ms)?;
    Ok(next)
}

/// Refuses a seq above the ceiling before anything is signed, with the reason.
pub fn check_seq(seq: u64, now_ms: u64) -> Result<(), WriteError> {
    if seq == 0 {
        return Err(WriteError::Invalid("seq must be at least 1".into()));
    }
    let ceiling = seq_ceiling(now_ms, Freshness::Publish);
    if seq > ceiling {
        return Err(WriteError::Invalid(format!(
            "seq {seq} is above the ceiling {ceiling} (the current time in microseconds plus 5 min); seqs may not jump ahead of time, so no record can take a name's last seq — use a smaller --seq"
        )));
    }
    Ok(())
}

/// Signs `content` for `label` at `seq`, living `ttl_ms` from `now_ms`.
pub fn sign(
    key: &ZoneKey,
    label: &str,
    content: Content,
    seq: u64,
    ttl_ms: u64,
    now_ms: u64,
) -> Result<SignedRecord, WriteError> {
    if ttl_ms == 0 || ttl_ms > MAX_TTL_MS {
        return Err(WriteError::Invalid(format!(
            "ttl must be between 1 ms and 30d, got {ttl_ms} ms"
        )));
    }
    check_seq(seq, now_ms)?;
    let expires_at_ms = now_ms
        .checked_add(ttl_ms)
        .ok_or_else(|| WriteError::Invalid("ttl overflows the clock".into()))?;
    let record = RecordBody {
        zone: key.zone(),
        label: label.to_owned(),
        seq,
        expires_at_ms,
        content,
    }
    .sign(key)
    .map_err(|e| WriteError::Invalid(format!("record is not valid: {e}")))?;
    record
        .validate_time(now_ms, Freshness::Publish)
        .map_err(|e| WriteError::Invalid(format!("record is not valid: {e}")))?;
    Ok(record)
}

fn refused(a: &Answer) -> WriteError {
    let e = a.error();
    WriteError::Refused {
        addr: a.addr.clone(),
        status: a.status,
        kind: e.error,
        message: e.message,
    }
}

/// Why no peer took a compare-and-set write (see [`enact_in_order`]).
struct Exhausted {
    /// Some peer had not caught up with the record the write was checked against.
    lagging: bool,
    /// Peers that could not be asked, or whose clock refused the record.
    failures: Vec<String>,
}

/// Sends the compare-and-set publish `req` to the peers in `preferred` first, then to the
/// others in `--api` order, until one takes it. A refusal by a node's clock only (see api.rs)
/// moves on: another peer may take it. A compare-and-set mismatch at held seq `held` is judged
/// by `mismatch`: `None` means that peer has not caught up yet (it would take the write, but
/// so will one that is up to date: try the next), `Some(e)` ends the write with `e`. Any
/// other refusal ends it too.
async fn enact_in_order(
    client: &Client,
    req: &PublishRequest,
    preferred: Vec<&str>,
    mut mismatch: impl FnMut(&Answer, u64) -> Option<WriteError>,
) -> Result<Answer, Result<Exhausted, WriteError>> {
    let mut order = preferred;
    for addr in client.addrs() {
        if !order.contains(&addr.as_str()) {
            order.push(addr);
        }
    }
    let mut out = Exhausted {
        lagging: false,
        failures: Vec::new(),
    };
    for addr in order {
        let a = match client.ask(addr, "/v1/publish", Some(req)).await {
            Ok(a) => a,
            Err(e) => {
                out.failures.push(e);
                continue;
            }
        };
        if a.status == 200 {
            return Ok(a);
        }
        let e = a.error();
        match (e.refusal(), e.held_seq) {
            (Some(PublishRefusal::Clock), _) => {
                out.failures.push(format!("{}: {}", a.addr, e.message))
            }
            (Some(PublishRefusal::CasMismatch), Some(held)) => match mismatch(&a, held) {
                None => out.lagging = true,
                Some(e) => return Err(Err(e)),
            },
            _ => return Err(Err(refused(&a))),
        }
    }
    Err(Ok(out))
}

/// What an exhausted compare-and-set write reports: every peer lagging behind `read`, or no
/// peer able to take it.
fn exhausted(r: Result<Exhausted, WriteError>, name: String, read: u64) -> WriteError {
    match r {
        Err(e) => e,
        Ok(x) if x.lagging => WriteError::AllLagging { name, read },
        Ok(x) => WriteError::NoPeer(x.failures.join("; ")),
    }
}

/// Publishes `record` with compare-and-set against `expected` (the seq read before signing),
/// trying first the peers that hold exactly `expected`, then the others in `--api` order.
pub async fn enact_cas(
    client: &Client,
    floors: &[PeerFloor],
    record: &SignedRecord,
    expected: u64,
) -> Result<Answer, WriteError> {
    let name = record.name();
    let req = PublishRequest::new(record).if_seq(Some(expected));
    let preferred = floors
        .iter()
        .filter(|f| f.seq == expected)
        .map(|f| f.addr.as_str())
        .collect();
    enact_in_order(client, &req, preferred, |a, held| {
        // Below what another peer showed us: lagging. At or above it: another write won.
        (held >= expected).then(|| WriteError::Raced {
            name: name.clone(),
            read: expected,
            now: held,
            addr: a.addr.clone(),
        })
    })
    .await
    .map_err(|r| exhausted(r, name.clone(), expected))
}

/// Parses a record's content hash as printed by `dpin resolve` (64 hex characters).
pub fn parse_hash(text: &str) -> Result<String, WriteError> {
    let t = text.trim().to_ascii_lowercase();
    match hex::decode(&t) {
        Ok(b) if b.len() == 32 => Ok(t),
        _ => Err(WriteError::Invalid(format!(
            "{text:?} is not a record hash: expected 64 hex characters, as `dpin resolve` prints after `hash`"
        ))),
    }
}

/// The seq at which a reachable peer holds the record with content hash `hash` (hex) as the
/// winner of `name`; refused as [`WriteError::Replaced`] if no peer does (the record was
/// replaced or deleted, or never existed).
pub fn seq_of(floors: &[PeerFloor], name: &str, hash: &str) -> Result<u64, WriteError> {
    if let Some(f) = floors.iter().find(|f| f.hash.as_deref() == Some(hash)) {
        return Ok(f.seq);
    }
    let top = floors.iter().max_by_key(|f| f.seq);
    Err(WriteError::Replaced {
        name: name.to_owned(),
        named: hash.to_owned(),
        held_seq: top.map_or(0, |f| f.seq),
        held_hash: top.and_then(|f| f.hash.clone()),
        addr: top.map_or_else(String::new, |f| f.addr.clone()),
    })
}

/// Publishes `record` with compare-and-set on the record it replaces (`if_hash`, hex), and on
/// `if_seq` too if given: first to the peers that hold that record, then the others in
/// `--api` order. A peer that holds a lower seq than the named record's has not seen it yet
/// and is skipped; a peer that holds another record at or above it says the record was
/// replaced, and nothing is written anywhere.
pub async fn enact_if_hash(
    client: &Client,
    floors: &[PeerFloor],
    record: &SignedRecord,
    if_hash: &str,
    if_seq: Option<u64>,
) -> Result<Answer, WriteError> {
    let name = record.name();
    let named_seq = floors
        .iter()
        .find(|f| f.hash.as_deref() == Some(if_hash))
        .map(|f| f.seq);
    let req = PublishRequest::new(record)
        .if_hash(Some(if_hash.to_owned()))
        .if_seq(if_seq);
    let preferred = floors
        .iter()
        .filter(|f| f.hash.as_deref() == Some(if_hash))
        .map(|f| f.addr.as_str())
        .collect();
    enact_in_order(client, &req, preferred, |a, held| {
        // Below the named record's seq: this peer has not seen it yet.
        if named_seq.is_some_and(|s| held < s) {
            return None;
        }
        let held_hash = floors
            .iter()
            .find(|f| f.addr == a.addr && f.seq == held)
            .and_then(|f| f.hash.clone());
        Some(WriteError::Replaced {
            name: name.clone(),
            named: if_hash.to_owned(),
            held_seq: held,
            held_hash,
            addr: a.addr.clone(),
        })
    })
    .await
    .map_err(|r| exhausted(r, name.clone(), named_seq.unwrap_or(0)))
}

/// Enacts a record whose seq was fixed in advance (a plan or a pinned `--seq`): refused here
/// if any reachable peer already holds something newer or a different record at the same
/// seq, and by the node's merge rule otherwise. A re-enacted plan is a duplicate (success).
pub async fn enact_plan(client: &Client, record: &SignedRecord) -> Result<Answer, WriteError> {
    let name = record.name();
    let seq = record.body.seq;
    let hash = hex::encode(record.content_hash());
    let floors = read_floors(client, &name).await?;
    if let Some(f) = floors.iter().find(|f| f.seq > seq) {
        return Err(WriteError::Stale {
            name,
            seq,
            held: f.seq,
            addr: f.addr.clone(),
        });
    }
    if let Some(f) = floors
        .iter()
        .find(|f| f.seq == seq && f.hash.as_deref().is_some_and(|h| h != hash))
    {
        return Err(WriteError::Conflict {
            name,
            seq,
            addr: f.addr.clone(),
        });
    }
    let req = PublishRequest::new(record);
    let mut failures = Vec::new();
    for addr in client.addrs() {
        match client.ask(addr, "/v1/publish", Some(&req)).await {
            Ok(a) if a.status == 200 => return Ok(a),
            Ok(a) => {
                let e = a.error();
                if e.refusal() == Some(PublishRefusal::Clock) {
                    failures.push(format!("{}: {}", a.addr, e.message));
                    continue;
                }
                return Err(match (e.refusal(), e.held_seq) {
                    (Some(PublishRefusal::Stale), Some(held)) => WriteError::Stale {
                        name,
                        seq,
                        held,
                        addr: a.addr,
                    },
                    (Some(PublishRefusal::Conflict), _) => WriteError::Conflict {
                        name,
                        seq,
                        addr: a.addr,
                    },
                    _ => refused(&a),
                });
            }
            Err(e) => failures.push(e),
        }
    }
    Err(WriteError::NoPeer(failures.join("; ")))
}

impl Node {
    /// Applies a writer's record under every compare-and-set precondition in `cas` (the held
    /// seq and/or the held winner's content hash), checked atomically with the merge under the
    /// store lock; commits it durably and, at the same time, gossips it if it changed the
    /// store (what [`Node::publish`] does with a seq precondition only).
    pub async fn publish_if(
        &self,
        record: SignedRecord,
        cas: Cas,
    ) -> Result<PublishResult, NodeError> {
        let started = std::time::Instant::now();
        // Verified before the store lock is taken; encoded once (the gossip below sends the
        // same bytes).
        let (applied, prepared) = self
            .with_store_verified(record, move |s, p| {
                s.apply_prepared(p, now_ms(), Freshness::Publish, cas)
                    .map(|o| (o, s.generation()))
            })
            .await?;
        let (outcome, generation) = applied?;
        // The commit and the gossip run at once: peers need not wait for our fsync (the
        // record is already served here from memory, and a peer that gets a record whose
        // writer is never acknowledged holds one more unacknowledged write, which the
        // contract allows); the writer still hears "applied" only once it is on disk here.
        let durable = async {
            if outcome.is_winner() {
                self.flush(generation).await
            } else {
                Ok(())
            }
        };
        let gossip = async {
            if !outcome.changed_store() {
                return None;
            }
            self.gossip_record(prepared.wire().to_vec()).await
        };
        let (durable, gossip) = tokio::join!(durable, gossip);
        durable?;
        self.count_publish(&outcome, started.elapsed());
        Ok(PublishResult { outcome, gossip })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn the_last_seq_cannot_be_signed_and_has_no_successor() {
        assert!(check_seq(u64::MAX, NOW).is_err());
        assert!(next_seq(u64::MAX, NOW).is_err());
        assert_eq!(next_seq(41, NOW).ok(), Some(42));
        // Millisecond timestamps (the node's own offers) are far below the ceiling.
        assert!(check_seq(NOW, NOW).is_ok());
    }

    #[test]
    fn ttls_beyond_thirty_days_or_overflowing_the_clock_are_refused() {
        let key = ZoneKey::generate(&mut rand::rngs::OsRng);
        let eps = || Content::Endpoints(vec!["127.0.0.1:80".parse().expect("endpoint")]);
        assert!(sign(&key, "a", eps(), 1, MAX_TTL_MS + 1, NOW).is_err());
        assert!(sign(&key, "a", eps(), 1, 0, NOW).is_err());
        assert!(sign(&key, "a", eps(), 1, MAX_TTL_MS, u64::MAX - 5).is_err());
        assert!(sign(&key, "a", eps(), 1, MAX_TTL_MS, NOW).is_ok());
    }

    #[test]
    fn a_clean_up_finds_the_seq_of_the_record_it_names_or_is_told_it_was_replaced() {
        let floor = |addr: &str, seq, hash: &str| PeerFloor {
            addr: addr.into(),
            seq,
            hash: Some(hash.into()),
        };
        let a = "aa".repeat(32);
        let b = "bb".repeat(32);
        let floors = [floor("n1", 7, &a), floor("n2", 8, &b)];
        assert_eq!(seq_of(&floors, "web.z", &a).ok(), Some(7));
        let floors = [floor("n1", 7, &b)];
        assert!(matches!(
            seq_of(&floors, "web.z", &a),
            Err(WriteError::Replaced { held_seq: 7, .. })
        ));
        assert_eq!(parse_hash(&a.to_uppercase()).ok(), Some(a));
        assert!(parse_hash("abc").is_err());
    }

    #[test]
    fn a_plan_round_trips_and_a_hand_edited_plan_is_refused() {
        let key = ZoneKey::generate(&mut rand::rngs::OsRng);
        let eps = Content::Endpoints(vec!["127.0.0.1:80".parse().expect("endpoint")]);
        let rec = sign(&key, "web", eps, 7, 60_000, NOW).expect("signs");
        let plan = Plan::new(&rec, 6);
        assert_eq!(plan.record().expect("valid plan"), rec);
        let mut edited = plan.clone();
        edited.seq = 9;
        assert!(edited.record().is_err());
    }
}
