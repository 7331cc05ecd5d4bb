//! The simulated world: N nodes, the records they exchange, the event loop and its handlers.
//!
//! One [`World`] is one run. Every handler takes one event, changes the nodes it concerns,
//! records what it touched, and the loop then checks the invariants on exactly that
//! ([`super::invariants`]). Nodes are plain structs: a `MemStore` (what the node holds), a
//! second `MemStore` (what it has fsynced), its connections, its gossip mesh, its gossip caches
//! and its anti-entropy sessions.
//!
//! ## Gossip model (gossipsub, with the parameters of `node/src/net.rs`)
//! * A writer's node applies the record, waits for its fsync (the node gossips only after the
//!   durable commit), then flood-publishes to every connected peer.
//! * A node receiving a message it has not seen applies it; if the store changed (the node's
//!   `Accept` verdict) it forwards to its mesh peers except the sender; otherwise (`Ignore`:
//!   stale, duplicate, refused) it does not forward. Like rust-libp2p, it never forwards a
//!   message back to its publisher (gossipsub's `source`); the calibration against real
//!   swarms ([`super::calibrate`]) showed the copies the model otherwise sent back. Every copy
//!   of an already seen message is a duplicate: counted, dropped.
//! * Heartbeats every 500 ms (while the node has messages in its cache): IHAVE with the ids of
//!   the last 3 s (`history_gossip` 6) to `max(gossip_lazy, 0.25 × non-mesh peers)` random
//!   non-mesh peers; a peer missing one answers IWANT and gets the full message from the 5 s
//!   cache (`history_length` 10). An IHAVE to a peer that has seen every id it names is
//!   charged but not delivered as an event, unless the failure detector runs
//!   (`World::ihave_is_moot`).
//! * The mesh: D / D_lo / D_hi / D_out from `MeshParams::for_cluster(N)` (or flags), upkept
//!   by gossipsub's heartbeat rules (`World::maintain_mesh`): a node below D_lo grafts random
//!   peers up to D; a node at D_lo or more with fewer than D_out outbound peers (connections
//!   it dialed) in its mesh grafts outbound peers up to D_out. A GRAFT to a peer already at
//!   D_hi is refused (rust-libp2p's rule for inbound peers). The node subscribes before it
//!   connects, so meshes start empty: the first heartbeats, in a random order, form them, and
//!   a node others' GRAFTs already brought to D_lo grafts no more. Upkeep runs again when a
//!   mesh peer crashes, leaves or is cut off, and at every heartbeat.
//! * Connections: each node dials random peers until it holds `degree` connections (the
//!   node's target degree, 12), and accepts inbound ones up to twice that (the node trims
//!   back to twice its target).
//!
//! ## Durability model (the node's rule)
//! A write through a node's API is acknowledged only after its fsync ([`ACK_DELAY_MS`]); if
//! the node crashes first, the writer gets no acknowledgement and the record is neither
//! durable nor gossiped. (The node itself now gossips a write while its fsync runs, not
//! after it; the model still gossips at the acknowledgement, 2 ms later, which is the more
//! conservative case for the invariants. Aligning it changes every pinned digest.) A record taken from gossip is durable after the next group commit
//! ([`FLUSH_DELAY_MS`]); one taken from anti-entropy is durable before the answer or the next
//! request. A crash drops everything else; a restart starts from the durable copy.
//!
//! Compaction (the race scenario) ticks on a fixed grid per node, but a tick is scheduled only
//! when a body the node holds may be due by then (`World::arm_compaction`): the ticks left
//! out are those that would have found nothing to drop.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use dpin_protocol::liveness::{Detector, DetectorConfig, Output as DetOut, PeerStatus};
use dpin_protocol::merge::{Outcome, Rank};
use dpin_protocol::{Freshness, MemStore, SignedRecord, Store, SyncRequest, SyncResponse};
use rand::seq::SliceRandom;
use rand::Rng;

use super::antientropy::{self, Initiator, InitiatorStep, ResponderAction, SessionConfig};
use super::fasthash::{FastMap, FastSet};
use super::invariants::{self, NodeWatch, Violation};
use super::net::{NetModel, CONTROL_FRAME_BYTES, GOSSIP_FRAME_BYTES, MESSAGE_ID_BYTES};
use super::rng::{self, SimRng};
use super::sched::Scheduler;
use super::verify::{Verifier, VerifyMode};
use super::{NodeId, RecId, SimError};

/// Unix ms at virtual time 0 (2027-01-15): records' expiry and seq ceilings are real times.
pub const EPOCH_MS: u64 = 1_800_000_000_000;
/// Gossipsub heartbeat (node/src/net.rs).
pub const HEARTBEAT_MS: u64 = 500;
/// IHAVE window: `history_gossip` 6 heartbeats.
pub const GOSSIP_WINDOW_MS: u64 = 6 * HEARTBEAT_MS;
/// Message cache answering IWANT: `history_length` 10 heartbeats.
pub const MCACHE_MS: u64 = 10 * HEARTBEAT_MS;
/// gossipsub's default `gossip_factor`.
pub const GOSSIP_FACTOR: f64 = 0.25;
/// Group commit delay of replicated records (the node's `flush_soon`).
pub const FLUSH_DELAY_MS: u64 = 1;
/// fsync before a write is acknowledged and gossiped.
pub const ACK_DELAY_MS: u64 = 2;
/// Periodic anti-entropy (the node's `SYNC_INTERVAL`).
pub const SYNC_INTERVAL_MS: u64 = 5_000;
/// Sessions one node runs at once (the node's `MAX_CONCURRENT_SYNCS`).
pub const MAX_CONCURRENT_SYNCS: usize = 4;
/// How long the larger-id side of a pair that sees the other come (back) alive waits for the
/// smaller-id side's catch-up session before starting one itself (the node's
/// `CATCH_UP_FALLBACK`).
pub const CATCH_UP_FALLBACK_MS: u64 = 300;
/// Timeout of one sync request (the node's `request_timeout`).
pub const REQUEST_TIMEOUT_MS: u64 = 2_000;
/// Connection limit of a node (`max_connections`).
pub const MAX_CONNECTIONS: usize = 128;
/// Connections a node dials up to: the node's target degree (node/src/net.rs
/// `NetConfig::target_peers`).
pub const DIAL_TARGET: usize = dpin_node::net::DEFAULT_TARGET_PEERS;
/// A helper answers "no answer" this long after relaying a probe (node/src/net.rs
/// `RELAY_NACK_AFTER`).
pub const RELAY_NACK_AFTER_MS: u64 = 150;
/// Bytes of one probe message (tag, nonce, a peer id for ping-req) plus framing.
pub const PROBE_BYTES: u64 = CONTROL_FRAME_BYTES + 48;

/// Event-log bytes buffered before they are hashed.
const LOG_BUF_BYTES: usize = 64 * 1024;

/// Gossip mesh degrees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Mesh {
    /// D.
    pub n: usize,
    /// D_lo.
    pub n_low: usize,
    /// D_hi.
    pub n_high: usize,
    /// gossip_lazy (the node sets it to D).
    pub lazy: usize,
    /// D_out: outbound peers (connections the node dialed) a mesh of at least D_lo keeps.
    pub outbound_min: usize,
}

/// Everything a run is configured with.
#[derive(Clone, Debug)]
pub struct WorldConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Nodes present at start.
    pub nodes: usize,
    /// Node slots (nodes that may join later included).
    pub capacity: usize,
    /// Connections each node dials up to.
    pub degree: usize,
    /// Mesh degrees.
    pub mesh: Mesh,
    /// Peers each node starts a session with every [`SYNC_INTERVAL_MS`].
    pub sync_peers: usize,
    /// Fixed latency, ms.
    pub latency_ms: u64,
    /// Jitter, ms.
    pub jitter_ms: u64,
    /// Loss probability.
    pub loss: f64,
    /// Per-node clock offsets are drawn uniformly in `[-skew, +skew]`.
    pub clock_skew_ms: u64,
    /// Body retention of every store (`MemStore::with_retention`), `None` for the default.
    pub retention_ms: Option<u64>,
    /// Compaction tick, `None` for no compaction.
    pub compact_every_ms: Option<u64>,
    /// Signature checking.
    pub verify: VerifyMode,
    /// Most events before the run is declared runaway.
    pub max_events: u64,
    /// Run the node's failure detector (probes, indirect probes) on every node.
    pub detector: bool,
}

/// One interned record.
pub struct RecordInfo {
    /// The signed record.
    pub rec: Arc<SignedRecord>,
    /// Its wire bytes.
    pub bytes: Arc<[u8]>,
    /// Content hash (the merge tie-break and message identity).
    pub hash: [u8; 32],
    /// Interned name.
    pub name_id: u32,
    /// Its rank `(seq, live, hash)`: the merge order the invariants compare by.
    pub rank: Rank,
}

/// A scheduled fault or write (scenarios build lists of them).
#[derive(Clone, Debug)]
pub enum Action {
    /// A writer publishes `rec` through node `via` (compare-and-set if `expected`).
    Write {
        /// API node.
        via: NodeId,
        /// The record.
        rec: RecId,
        /// Compare-and-set precondition.
        expected: Option<u64>,
    },
    /// The node dies (SIGKILL).
    Crash(NodeId),
    /// The node restarts from its durable store.
    Restart(NodeId),
    /// A new node joins with an empty store.
    Join(NodeId),
    /// The node leaves for good.
    Leave(NodeId),
    /// The network is cut into the given sides.
    Partition(Vec<u8>),
    /// Every cut heals.
    Heal,
    /// The node stops (SIGSTOP): it keeps its state and its connections but answers nothing;
    /// only its peers' failure detectors can tell.
    Pause(NodeId),
    /// The paused node runs again.
    Resume(NodeId),
}

#[derive(Debug)]
enum Ev {
    Gossip {
        to: NodeId,
        from: NodeId,
        rec: RecId,
        hops: u16,
        /// The node that published it (gossipsub's `source`): never forwarded back to it.
        origin: NodeId,
    },
    IHave {
        to: NodeId,
        from: NodeId,
        ids: Arc<[RecId]>,
    },
    IWant {
        to: NodeId,
        from: NodeId,
        ids: Vec<RecId>,
    },
    SyncReq {
        to: NodeId,
        from: NodeId,
        sid: u64,
        /// Boxed, like the answer: sync messages are a small share of the events, and
        /// inline they made every event (a slot of the scheduler's slab) several times larger.
        msg: Box<Wire<SyncRequest>>,
    },
    SyncResp {
        to: NodeId,
        from: NodeId,
        sid: u64,
        msg: Box<Wire<SyncResponse>>,
    },
    SyncTimeout {
        node: NodeId,
        sid: u64,
        nonce: u32,
    },
    Heartbeat {
        node: NodeId,
        inc: u32,
    },
    SyncTick {
        node: NodeId,
    },
    /// The larger-id side's catch-up fallback: start a session with `peer` unless one (either
    /// direction) started at or after `since`.
    CatchUp {
        node: NodeId,
        peer: NodeId,
        since: u64,
    },
    /// Node `node`'s compaction tick due at `at` (ignored unless it is the node's
    /// `compact_at`: an earlier tick replaced it).
    CompactTick {
        node: NodeId,
        at: u64,
    },
    Flush {
        node: NodeId,
        inc: u32,
    },
    Ack {
        node: NodeId,
        inc: u32,
        rec: RecId,
    },
    Act(usize),
    DetTick {
        node: NodeId,
    },
    /// A probe; `relay` is the helper's relay id when it probes for someone else.
    Probe {
        to: NodeId,
        from: NodeId,
        nonce: u64,
        relay: Option<u64>,
        /// The prober's detector watches `to` (the node's `WATCH_BIT`).
        watch: bool,
    },
    ProbeReq {
        to: NodeId,
        from: NodeId,
        target: NodeId,
        nonce: u64,
    },
    /// An answer: `target` answered probe `nonce` (directly, or relayed by a helper).
    ProbeAck {
        to: NodeId,
        from: NodeId,
        target: NodeId,
        nonce: u64,
        relay: Option<u64>,
    },
    ProbeNack {
        to: NodeId,
        from: NodeId,
        target: NodeId,
        nonce: u64,
    },
    RelayTimeout {
        node: NodeId,
        relay: u64,
    },
}

/// A sync message in flight: what the receiver decodes, and its encoded size.
///
/// Every message is encoded with the real codec, and the network is charged (and the event
/// log records) exactly that many bytes. The receiver gets what decoding those bytes gives:
/// the message itself, since the codec round-trips every value it can encode (its own
/// property tests), or the codec's error for one it could not encode. Not decoding the bytes
/// again saved a third of a sync message's cost in a sweep, and counting them
/// (`encoded_len`) instead of building them saves the encoding's allocation and copy.
#[derive(Debug)]
struct Wire<M> {
    msg: Result<M, String>,
    len: u64,
}

impl Wire<SyncRequest> {
    fn request(req: SyncRequest) -> Self {
        // Counted, not built: `encode` would give exactly this many bytes (none for a value
        // it cannot encode, which the receiver then fails to decode).
        let len = req.encoded_len();
        let msg = if len == 0 {
            SyncRequest::decode(&[]).map_err(|e| e.to_string())
        } else {
            Ok(req)
        };
        Wire {
            msg,
            len: len as u64,
        }
    }
}

impl Wire<SyncResponse> {
    fn response(resp: SyncResponse) -> Self {
        // Counted, not built: `encode` would give exactly this many bytes (none for a value
        // it cannot encode, which the receiver then fails to decode).
        let len = resp.encoded_len();
        let msg = if len == 0 {
            SyncResponse::decode(&[]).map_err(|e| e.to_string())
        } else {
            Ok(resp)
        };
        Wire {
            msg,
            len: len as u64,
        }
    }
}

/// One write to a node's durable copy, kept until someone reads the copy.
///
/// Only a restart (and the checks that look at the disk) reads the durable copy, and most
/// nodes of a run never restart; applying every fsynced record to it as it happened was a
/// tenth of a race sweep. Each write is a pure function of the copy and its arguments (the
/// record, the node's clock when it was written), so applying the list in order later gives
/// exactly the copy that applying each at once gave.
#[derive(Clone, Copy, Debug)]
enum DurableOp {
    /// The record became durable at node time `now` (`Freshness::Replicate`).
    Apply { rec: RecId, now: u64 },
    /// Compaction ran on the disk at node time `now`.
    Compact { now: u64 },
}

/// Most writes a node's durable copy keeps pending before they are applied: bounds the list's
/// memory in long runs (a node that never restarts applies them in batches of this size).
const MAX_DURABLE_LOG: usize = 4096;

struct Session {
    init: Initiator,
    peer: NodeId,
    nonce: u32,
}

/// One simulated node.
pub struct SimNode {
    /// What the node holds.
    pub store: MemStore,
    /// What it has fsynced (kept without its digest, [`MemStore::without_digest`]), up to
    /// the writes still in `durable_log`: read it through [`World::durable`].
    durable: MemStore,
    /// Writes to the durable copy not applied to it yet, in order ([`DurableOp`]).
    durable_log: Vec<DurableOp>,
    pending: Vec<RecId>,
    flush_scheduled: bool,
    /// Running.
    pub up: bool,
    /// Part of the network (joined and not left).
    pub present: bool,
    incarnation: u32,
    /// Clock offset, ms.
    pub skew_ms: i64,
    /// Connections.
    pub peers: Vec<NodeId>,
    /// The connections this node dialed (gossipsub's outbound peers), a subset of `peers`.
    pub dialed: Vec<NodeId>,
    /// Gossip mesh.
    pub mesh: Vec<NodeId>,
    seen: FastSet<RecId>,
    /// Gossip cache: (when, record, hops, origin).
    history: VecDeque<(u64, RecId, u16, NodeId)>,
    hb_scheduled: bool,
    hb_phase: u64,
    /// The node's compaction ticks fall on `compact_phase + k × compact_every_ms`.
    compact_phase: u64,
    /// When the node's next compaction tick is scheduled, if one is.
    compact_at: Option<u64>,
    sessions: BTreeMap<u64, Session>,
    /// The checker's memory of this node.
    pub watch: NodeWatch,
    /// The node's failure detector (protocol::liveness, the node's parameters).
    pub detector: Detector<NodeId>,
    /// Probes this node relays for others: relay id -> (asker, target, nonce).
    relays: BTreeMap<u64, (NodeId, NodeId, u64)>,
}

/// Counters of a run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    /// Events processed.
    pub events: u64,
    /// Messages sent (all kinds).
    pub messages: u64,
    /// Bytes sent (all kinds).
    pub bytes: u64,
    /// Bytes of gossip messages (full records).
    pub gossip_bytes: u64,
    /// Bytes of IHAVE/IWANT.
    pub control_bytes: u64,
    /// Bytes of anti-entropy messages.
    pub sync_bytes: u64,
    /// Full-message gossip sends (flood, forward, IWANT answers).
    pub full_sends: u64,
    /// Copies of already seen gossip messages.
    pub duplicates: u64,
    /// IHAVE messages sent.
    pub ihave: u64,
    /// IWANT messages sent.
    pub iwant: u64,
    /// Messages lost to the loss model.
    pub lost: u64,
    /// Messages cut by a partition.
    pub cut: u64,
    /// Messages to a node that was down.
    pub to_down: u64,
    /// Anti-entropy sessions started.
    pub sync_sessions: u64,
    /// Sessions that failed (timeout, refusal).
    pub sync_failures: u64,
    /// Records that changed a store through anti-entropy.
    pub sync_applied: u64,
    /// Records that changed a store through gossip.
    pub gossip_applied: u64,
    /// Writes attempted.
    pub writes: u64,
    /// Writes acknowledged (won at their node and fsynced).
    pub acked: u64,
    /// Writes refused at their node (stale, conflict, CAS mismatch, invalid).
    pub refused: u64,
    /// Writes lost to a crash before their acknowledgement.
    pub unacked_crash: u64,
    /// Equivocations seen at apply time.
    pub conflicts: u64,
    /// Replicated records lost in a crash before their group commit.
    pub unflushed_lost: u64,
    /// Bodies dropped by compaction.
    pub compacted: u64,
    /// At quiescence: (node, name) pairs where a live node lacks an acknowledged write that
    /// every holder had compacted before the node learned it (see
    /// `invariants::check_quiescent`; possible only with a retention of seconds).
    pub acked_missed_compacted: u64,
    /// Crashes.
    pub crashes: u64,
    /// Restarts.
    pub restarts: u64,
    /// Joins.
    pub joins: u64,
    /// Leaves.
    pub leaves: u64,
    /// Partitions.
    pub partitions: u64,
    /// Signature verifications.
    pub verifications: u64,
    /// Failure-detector probes sent (direct, and relayed for others).
    pub probes: u64,
    /// Indirect-probe requests sent.
    pub probe_reqs: u64,
    /// Probe answers (acks and nacks) sent.
    pub probe_answers: u64,
    /// Peers a detector marked down while they were up and reachable.
    pub false_downs: u64,
    /// Peers a detector marked suspect while they were up and reachable.
    pub false_suspects: u64,
}

/// Per-update delivery tracking (convergence).
#[derive(Default)]
pub struct Tracker {
    index: FastMap<RecId, usize>,
    got: Vec<Vec<bool>>,
    /// Nodes holding each tracked update.
    pub have: Vec<usize>,
    /// Hop counts of first deliveries by gossip.
    pub hops: Vec<u16>,
    /// Hops of the node that got each update last, and when (virtual ms).
    pub last: Vec<(u16, u64)>,
    /// Deliveries that came through anti-entropy.
    pub by_sync: u64,
    /// When each update was written (virtual ms).
    pub written_at: Vec<u64>,
}

impl Tracker {
    /// Tracks `recs`.
    pub fn new(recs: &[RecId], capacity: usize) -> Self {
        Self {
            index: recs.iter().enumerate().map(|(i, r)| (*r, i)).collect(),
            got: vec![vec![false; capacity]; recs.len()],
            have: vec![0; recs.len()],
            hops: Vec::new(),
            last: vec![(0, 0); recs.len()],
            by_sync: 0,
            written_at: vec![0; recs.len()],
        }
    }
}

/// One run.
pub struct World {
    /// Configuration.
    pub cfg: WorldConfig,
    sched: Scheduler<Ev>,
    /// Nodes by id.
    pub nodes: Vec<SimNode>,
    /// Interned records.
    pub records: Vec<RecordInfo>,
    by_bytes: FastMap<[u8; 32], RecId>,
    name_ids: BTreeMap<Arc<str>, u32>,
    /// Interned names.
    pub names: Vec<Arc<str>>,
    /// The network model.
    pub net: NetModel,
    rng_gossip: SimRng,
    rng_sync: SimRng,
    verifier: Verifier,
    /// Records whose signatures were checked up front ([`World::prefetch_signatures`]).
    prefetched: usize,
    log: blake3::Hasher,
    /// Event-log bytes not yet hashed: hashing in large pieces gives the same digest as
    /// record by record (blake3 is a stream) at a fraction of the cost per event.
    log_buf: Vec<u8>,
    /// Counters.
    pub stats: Stats,
    /// Per-message sends by node (for messages per node per second).
    touched: Vec<(NodeId, u32)>,
    /// Highest acknowledged rank per name.
    pub acked: BTreeMap<u32, Rank>,
    actions: Vec<Action>,
    next_sid: u64,
    /// When a session between each pair (smaller id first) last started, either direction.
    last_session: FastMap<(NodeId, NodeId), u64>,
    /// Delivery tracking, if the scenario asked for it.
    pub tracker: Option<Tracker>,
    rng_detector: SimRng,
    next_relay: u64,
    /// Detection watch: (paused node, pause time, when each peer marked it down).
    pub detect_watch: Option<(NodeId, u64, BTreeMap<NodeId, u64>)>,
    /// A list of peers reused by the handlers that pick some (heartbeats, sync ticks), so
    /// they allocate nothing per event.
    scratch_peers: Vec<NodeId>,
    /// An error met where it could not be returned; the run stops with it after the event.
    deferred_error: Option<SimError>,
}

fn outcome_tag(o: &Outcome) -> u8 {
    match o {
        Outcome::Applied { .. } => 1,
        Outcome::Duplicate => 2,
        Outcome::Stale { .. } => 3,
        Outcome::Conflict { applied: true, .. } => 4,
        Outcome::Conflict { applied: false, .. } => 5,
        Outcome::Restored => 6,
        Outcome::Invalid(_) => 7,
        Outcome::CasMismatch { .. } => 8,
    }
}

/// A node's place on the failure detector's watch ring: its index mixed (splitmix64's
/// finaliser), so uniform and unrelated to the topology's index-based distance, as public keys
/// are in the node.
fn watch_key(n: &NodeId) -> u64 {
    let mut z = u64::from(*n).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl World {
    /// A world with `cfg.nodes` nodes connected and meshed, nothing written yet.
    pub fn new(cfg: WorldConfig) -> Result<Self, SimError> {
        if cfg.nodes == 0 || cfg.capacity < cfg.nodes || cfg.capacity > u32::MAX as usize / 2 {
            return Err(SimError::Config("need 1 ≤ nodes ≤ capacity".into()));
        }
        let mut rng_topo = rng::stream(cfg.seed, "topology");
        let mut rng_clock = rng::stream(cfg.seed, "clock");
        let store = || {
            let s = MemStore::new();
            match cfg.retention_ms {
                Some(r) => s.with_retention(r),
                None => s,
            }
        };
        let nodes = (0..cfg.capacity)
            .map(|i| {
                let skew = if cfg.clock_skew_ms > 0 {
                    let s = cfg.clock_skew_ms as i64;
                    rng_clock.gen_range(-s..=s)
                } else {
                    0
                };
                SimNode {
                    store: store(),
                    // Nobody syncs from the durable copy: its digest is never read, so it
                    // does not keep one on every write (a restart turns it back on).
                    durable: store().without_digest(),
                    durable_log: Vec::new(),
                    pending: Vec::new(),
                    flush_scheduled: false,
                    up: i < cfg.nodes,
                    present: i < cfg.nodes,
                    incarnation: 0,
                    skew_ms: skew,
                    peers: Vec::new(),
                    mesh: Vec::new(),
                    dialed: Vec::new(),
                    seen: FastSet::default(),
                    history: VecDeque::new(),
                    hb_scheduled: false,
                    hb_phase: rng_clock.gen_range(0..HEARTBEAT_MS),
                    compact_phase: 0,
                    compact_at: None,
                    sessions: BTreeMap::new(),
                    watch: NodeWatch::default(),
                    detector: Detector::new(DetectorConfig::default(), i as NodeId, watch_key),
                    relays: BTreeMap::new(),
                }
            })
            .collect();
        let net = NetModel::new(
            cfg.latency_ms,
            cfg.jitter_ms,
            cfg.loss,
            rng::stream(cfg.seed, "network"),
        );
        let mut w = World {
            sched: Scheduler::default(),
            nodes,
            records: Vec::new(),
            by_bytes: FastMap::default(),
            name_ids: BTreeMap::new(),
            names: Vec::new(),
            net,
            rng_gossip: rng::stream(cfg.seed, "gossip"),
            rng_sync: rng::stream(cfg.seed, "sync"),
            verifier: Verifier::new(cfg.verify),
            prefetched: 0,
            log: blake3::Hasher::new(),
            log_buf: Vec::with_capacity(LOG_BUF_BYTES),
            stats: Stats::default(),
            touched: Vec::new(),
            acked: BTreeMap::new(),
            actions: Vec::new(),
            next_sid: 0,
            last_session: FastMap::default(),
            tracker: None,
            rng_detector: rng::stream(cfg.seed, "detector"),
            next_relay: 0,
            detect_watch: None,
            scratch_peers: Vec::new(),
            deferred_error: None,
            cfg,
        };
        let mut order: Vec<NodeId> = (0..w.cfg.nodes as NodeId).collect();
        order.shuffle(&mut rng_topo);
        for &n in &order {
            w.connect(n, &mut rng_topo);
        }
        // The first heartbeats, in a random order: like gossipsub's, a node grafts up to D
        // only while its mesh is below D_lo (the node subscribes before it connects, so its
        // mesh starts empty and only heartbeats and peers' GRAFTs fill it); a node that
        // others' GRAFTs already brought to D_lo grafts no more.
        order.shuffle(&mut rng_topo);
        for _ in 0..5 {
            for &n in &order {
                w.maintain_mesh(n);
            }
        }
        if w.cfg.detector {
            let tick = DetectorConfig::default().tick_ms.max(1);
            for n in 0..w.cfg.capacity as NodeId {
                let peers = w.nodes[n as usize].peers.clone();
                for p in peers {
                    w.nodes[n as usize].detector.connected(p, 0);
                }
                let phase = w.rng_detector.gen_range(0..tick);
                w.sched.push(phase, Ev::DetTick { node: n })?;
            }
        }
        for n in 0..w.cfg.capacity as NodeId {
            let phase = w.rng_sync.gen_range(0..SYNC_INTERVAL_MS);
            w.sched.push(phase, Ev::SyncTick { node: n })?;
            if let Some(every) = w.cfg.compact_every_ms {
                // The tick's phase; ticks are scheduled only when a body may be due
                // (`World::arm_compaction`).
                w.nodes[n as usize].compact_phase = w.rng_sync.gen_range(0..every.max(1));
            }
        }
        Ok(w)
    }

    /// Virtual time now, ms.
    pub fn now(&self) -> u64 {
        self.sched.now()
    }

    /// Node `n`'s clock: Unix ms.
    pub fn node_now(&self, n: NodeId) -> u64 {
        let skew = self.nodes.get(n as usize).map_or(0, |x| x.skew_ms);
        (EPOCH_MS as i64 + self.sched.now() as i64 + skew).max(0) as u64
    }

    /// The running digest of the event log.
    pub fn log_digest(&self) -> String {
        let mut h = self.log.clone();
        h.update(&self.log_buf);
        h.finalize().to_hex().to_string()
    }

    /// Signature verifications so far.
    pub fn verifications(&self) -> u64 {
        self.verifier.verifications
    }

    /// Interns a record (once per distinct content).
    pub fn intern(&mut self, rec: SignedRecord) -> RecId {
        let bytes: Arc<[u8]> = rec.encode().into();
        let key = *blake3::hash(&bytes).as_bytes();
        if let Some(&id) = self.by_bytes.get(&key) {
            return id;
        }
        let name = rec.name();
        let name_id = match self.name_ids.get(name.as_str()) {
            Some(&id) => id,
            None => {
                let id = self.names.len() as u32;
                let arc: Arc<str> = name.into();
                self.names.push(arc.clone());
                self.name_ids.insert(arc, id);
                id
            }
        };
        let hash = rec.content_hash();
        let id = self.records.len() as RecId;
        self.records.push(RecordInfo {
            rank: Rank::with_hash(&rec, hash),
            rec: Arc::new(rec),
            bytes,
            hash,
            name_id,
        });
        self.by_bytes.insert(key, id);
        id
    }

    /// Puts `rec` into node `n`'s store and durable store directly, as if it had arrived and
    /// been flushed before the run (scenario set-up, e.g. the two halves of partition-heal).
    pub fn preload(&mut self, n: NodeId, rec: RecId) {
        self.settle_durable(n);
        let now = self.node_now(n);
        let info = &self.records[rec as usize];
        let node = &mut self.nodes[n as usize];
        for store in [&mut node.store, &mut node.durable] {
            self.verifier.apply_cached(
                store,
                &info.rec,
                info.hash,
                now,
                Freshness::Replicate,
                None,
            );
        }
        node.seen.insert(rec);
        node.watch.observed.insert(info.name_id, info.rank);
        let due = info
            .rec
            .body
            .expires_at_ms
            .saturating_add(node.store.retention_ms());
        self.arm_compaction(n, due);
    }

    /// Schedules a scenario action at virtual time `at`.
    pub fn schedule(&mut self, at: u64, action: Action) -> Result<(), SimError> {
        let i = self.actions.len();
        self.actions.push(action);
        self.sched.push(at, Ev::Act(i))
    }

    /// Processes events until virtual time `until` (inclusive) or until nothing is pending.
    /// Stops at the first invariant violation.
    pub fn run_until(&mut self, until: u64) -> Result<(), SimError> {
        self.run_while(until, |_| true)
    }

    /// Like [`World::run_until`], also stopping (after an event) when `keep_going` says so.
    pub fn run_while(
        &mut self,
        until: u64,
        mut keep_going: impl FnMut(&World) -> bool,
    ) -> Result<(), SimError> {
        self.prefetch_signatures();
        loop {
            let Some((_, ev)) = self.sched.pop_due(until) else {
                return Ok(());
            };
            self.stats.events += 1;
            if self.stats.events > self.cfg.max_events {
                return Err(SimError::Runaway(format!(
                    "more than {} events",
                    self.cfg.max_events
                )));
            }
            self.handle(ev)?;
            if let Some(e) = self.deferred_error.take() {
                return Err(e);
            }
            self.check_touched().map_err(SimError::Invariant)?;
            if !keep_going(self) {
                return Ok(());
            }
        }
    }

    /// Checks the signatures of the records interned since the last call as one batch
    /// ([`Verifier::prefetch`]: same outcomes, half the cost per signature).
    fn prefetch_signatures(&mut self) {
        if self.prefetched >= self.records.len() {
            return;
        }
        let batch: Vec<(&SignedRecord, [u8; 32])> = self.records[self.prefetched..]
            .iter()
            .map(|r| (&*r.rec, r.hash))
            .collect();
        self.verifier.prefetch(&batch);
        self.prefetched = self.records.len();
    }

    /// Runs the invariant checks on everything touched since the last check.
    pub fn check_touched(&mut self) -> Result<(), Violation> {
        let at = self.now();
        let touched = std::mem::take(&mut self.touched);
        for &(n, name_id) in &touched {
            let node_now = self.node_now(n);
            let node = &mut self.nodes[n as usize];
            if !node.up {
                continue;
            }
            let name = &self.names[name_id as usize];
            invariants::check_entry(&node.store, &mut node.watch, n, name_id, name, node_now, at)?;
        }
        self.touched = touched;
        self.touched.clear();
        Ok(())
    }

    /// The quiescence check over all live nodes.
    pub fn check_quiescent(&self) -> Result<(), Violation> {
        self.quiescence().map(|_| ())
    }

    /// Acknowledged writes some live node missed before every holder compacted their bodies
    /// (excused by the quiescence check, see [`invariants::check_quiescent`]); 0 when the
    /// world is not quiescent.
    pub fn acked_missed_compacted(&self) -> u64 {
        self.quiescence().unwrap_or(0)
    }

    fn quiescence(&self) -> Result<u64, Violation> {
        invariants::check_quiescent(
            self.nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.up && n.present)
                .map(|(i, n)| (i as NodeId, &n.store)),
            &self.acked,
            &self.names,
            self.now(),
        )
    }

    /// Whether every live node has the same digest and every acknowledged write.
    pub fn is_quiescent(&self) -> bool {
        self.check_quiescent().is_ok()
    }

    /// Test hook: replaces node `n`'s entry for `name` (durable too if `durable`), as a bug or
    /// a damaged disk would, and marks it touched so the next check looks at it.
    pub fn tamper(&mut self, n: NodeId, name: &str, entry: dpin_protocol::Entry, durable: bool) {
        let name_id = self.name_ids.get(name).copied();
        if durable {
            self.settle_durable(n);
        }
        let node = &mut self.nodes[n as usize];
        if durable {
            node.durable.insert(name, entry);
        } else {
            node.store.insert(name, entry);
        }
        if let Some(id) = name_id {
            self.touched.push((n, id));
        }
        self.arm_compaction_from_store(n);
    }

    /// The interned id of `name`.
    pub fn name_id(&self, name: &str) -> Option<u32> {
        self.name_ids.get(name).copied()
    }

    fn log_event(&mut self, tag: u8, a: u64, b: u64, c: u64) {
        let mut buf = [0u8; 33];
        buf[0] = tag;
        buf[1..9].copy_from_slice(&self.sched.now().to_le_bytes());
        buf[9..17].copy_from_slice(&a.to_le_bytes());
        buf[17..25].copy_from_slice(&b.to_le_bytes());
        buf[25..33].copy_from_slice(&c.to_le_bytes());
        self.log_buf.extend_from_slice(&buf);
        if self.log_buf.len() >= LOG_BUF_BYTES {
            self.log.update(&self.log_buf);
            self.log_buf.clear();
        }
    }

    // ---------------------------------------------------------------- topology and mesh

    fn connect(&mut self, n: NodeId, rng: &mut SimRng) {
        let target = self.cfg.degree.min(self.cfg.nodes.saturating_sub(1));
        let present = self.cfg.nodes.max(
            self.nodes
                .iter()
                .rposition(|x| x.present)
                .map_or(0, |p| p + 1),
        );
        // Bounded: a few tries per wanted connection.
        for _ in 0..target.saturating_mul(8) {
            if self.nodes[n as usize].peers.len() >= target {
                break;
            }
            let p = rng.gen_range(0..present) as NodeId;
            if p == n
                || !self.nodes[p as usize].present
                || self.nodes[p as usize].peers.len()
                    >= self.cfg.degree.saturating_mul(2).clamp(1, MAX_CONNECTIONS)
                || self.nodes[n as usize].peers.contains(&p)
            {
                continue;
            }
            self.nodes[n as usize].peers.push(p);
            self.nodes[n as usize].dialed.push(p);
            self.nodes[p as usize].peers.push(n);
            if self.cfg.detector {
                let now = self.now();
                self.nodes[n as usize].detector.connected(p, now);
                self.nodes[p as usize].detector.connected(n, now);
            }
        }
    }

    fn reachable(&self, a: NodeId, b: NodeId) -> bool {
        let nb = &self.nodes[b as usize];
        nb.up && nb.present && self.net.can_talk(a, b)
    }

    /// Grafts random eligible peers until `n`'s mesh has `target` members.
    fn graft_up(&mut self, n: NodeId, target: usize) {
        let count = target.saturating_sub(self.nodes[n as usize].mesh.len());
        self.graft_random(n, false, count);
    }

    /// Grafts up to `count` random peers of `n` (among all its connections, or only those it
    /// dialed) that are reachable, not yet in its mesh and below D_hi. The candidates are
    /// shuffled even when `count` is 0, so the gossip RNG's stream does not depend on it.
    fn graft_random(&mut self, n: NodeId, dialed_only: bool, count: usize) {
        let hi = self.cfg.mesh.n_high;
        let node = &self.nodes[n as usize];
        let pool = if dialed_only {
            &node.dialed
        } else {
            &node.peers
        };
        let mut candidates: Vec<NodeId> = pool
            .iter()
            .copied()
            .filter(|&p| {
                self.reachable(n, p)
                    && !node.mesh.contains(&p)
                    && self.nodes[p as usize].mesh.len() < hi
            })
            .collect();
        candidates.shuffle(&mut self.rng_gossip);
        candidates.truncate(count);
        for p in candidates {
            self.nodes[n as usize].mesh.push(p);
            self.nodes[p as usize].mesh.push(n);
        }
    }

    /// One heartbeat's mesh upkeep at `n`, gossipsub's rules: below D_lo, graft random peers
    /// up to D; at D_lo or more with fewer than D_out outbound peers (connections `n`
    /// dialed) in the mesh, graft outbound peers up to D_out. (Pruning above D_hi never
    /// applies: a GRAFT to a peer at D_hi is refused.)
    fn maintain_mesh(&mut self, n: NodeId) {
        let m = self.cfg.mesh;
        if self.nodes[n as usize].mesh.len() < m.n_low {
            self.graft_up(n, m.n);
        }
        let node = &self.nodes[n as usize];
        if node.mesh.len() < m.n_low {
            return;
        }
        let outbound = node.mesh.iter().filter(|p| node.dialed.contains(p)).count();
        if outbound < m.outbound_min {
            self.graft_random(n, true, m.outbound_min - outbound);
        }
    }

    /// Removes `n` from every mesh and repairs the meshes that fell below D_lo.
    fn leave_meshes(&mut self, n: NodeId) {
        let mesh = std::mem::take(&mut self.nodes[n as usize].mesh);
        for p in mesh {
            self.nodes[p as usize].mesh.retain(|&x| x != n);
            if self.nodes[p as usize].up {
                self.maintain_mesh(p);
            }
        }
    }

    // ---------------------------------------------------------------- sending

    fn send(&mut self, from: NodeId, to: NodeId, bytes: u64, ev: Ev) -> Result<(), SimError> {
        self.stats.messages += 1;
        self.stats.bytes += bytes;
        if !self.net.can_talk(from, to) {
            self.stats.cut += 1;
            return Ok(());
        }
        if self.net.lost() {
            self.stats.lost += 1;
            return Ok(());
        }
        let at = self.now() + self.net.delay();
        self.sched.push(at, ev)
    }

    fn send_gossip(
        &mut self,
        from: NodeId,
        to: NodeId,
        rec: RecId,
        hops: u16,
        origin: NodeId,
    ) -> Result<(), SimError> {
        let bytes = self.records[rec as usize].bytes.len() as u64 + GOSSIP_FRAME_BYTES;
        self.stats.full_sends += 1;
        self.stats.gossip_bytes += bytes;
        self.send(
            from,
            to,
            bytes,
            Ev::Gossip {
                to,
                from,
                rec,
                hops,
                origin,
            },
        )
    }

    fn deliverable(&mut self, from: NodeId, to: NodeId) -> bool {
        if !self.net.can_talk(from, to) {
            self.stats.cut += 1;
            return false;
        }
        let n = &self.nodes[to as usize];
        if !n.up || !n.present {
            self.stats.to_down += 1;
            return false;
        }
        true
    }

    // ---------------------------------------------------------------- applying

    fn apply(
        &mut self,
        n: NodeId,
        rec: RecId,
        freshness: Freshness,
        expected: Option<u64>,
    ) -> Outcome {
        let now = self.node_now(n);
        let info = &self.records[rec as usize];
        let o = self.verifier.apply(
            &mut self.nodes[n as usize].store,
            &info.rec,
            info.hash,
            now,
            freshness,
            expected,
        );
        let name_id = info.name_id;
        self.after_apply(n, rec, name_id, &o);
        o
    }

    fn after_apply(&mut self, n: NodeId, rec: RecId, name_id: u32, o: &Outcome) {
        self.log_event(10 + outcome_tag(o), u64::from(n), u64::from(rec), 0);
        if matches!(o, Outcome::Conflict { .. }) {
            self.stats.conflicts += 1;
        }
        if o.changed_store() {
            self.touched.push((n, name_id));
            // The winner now held is this record: its body may be dropped `retention`
            // after it expires.
            if self.cfg.compact_every_ms.is_some() {
                let retention = self.nodes[n as usize].store.retention_ms();
                let due = self.records[rec as usize]
                    .rec
                    .body
                    .expires_at_ms
                    .saturating_add(retention);
                self.arm_compaction(n, due);
            }
        }
    }

    fn track(&mut self, n: NodeId, rec: RecId, hops: Option<u16>) {
        let now = self.now();
        let Some(t) = self.tracker.as_mut() else {
            return;
        };
        let Some(&u) = t.index.get(&rec) else {
            return;
        };
        let slot = &mut t.got[u][n as usize];
        if *slot {
            return;
        }
        *slot = true;
        t.have[u] += 1;
        match hops {
            Some(h) => t.hops.push(h),
            None => t.by_sync += 1,
        }
        t.last[u] = (hops.unwrap_or(0), now.saturating_sub(t.written_at[u]));
    }

    /// Durable copy of a record the node took (group commit or immediate): queued on the
    /// node's [`DurableOp`] list. Its signature check (once per record per run) is counted
    /// now, as applying it at once did, so the run's verification count does not depend on
    /// whether the node ever restarts.
    fn make_durable(&mut self, n: NodeId, rec: RecId) {
        let now = self.node_now(n);
        let info = &self.records[rec as usize];
        if info.rec.validate_time(now, Freshness::Replicate).is_ok() {
            self.verifier.check_once(&info.rec, info.hash);
        }
        let node = &mut self.nodes[n as usize];
        node.durable_log.push(DurableOp::Apply { rec, now });
        if node.durable_log.len() >= MAX_DURABLE_LOG {
            self.settle_durable(n);
        }
    }

    /// Applies node `n`'s pending durable writes to its durable copy, in order.
    fn settle_durable(&mut self, n: NodeId) {
        let node = &mut self.nodes[n as usize];
        let log = std::mem::take(&mut node.durable_log);
        for op in &log {
            match *op {
                DurableOp::Apply { rec, now } => {
                    let info = &self.records[rec as usize];
                    self.verifier.apply_cached(
                        &mut node.durable,
                        &info.rec,
                        info.hash,
                        now,
                        Freshness::Replicate,
                        None,
                    );
                }
                DurableOp::Compact { now } => {
                    if let Err(never) = node.durable.compact(now) {
                        match never {}
                    }
                }
            }
        }
        // Keep the list's allocation for the next writes.
        node.durable_log = log;
        node.durable_log.clear();
    }

    /// Node `n`'s durable copy: what a restart would come back with.
    pub fn durable(&mut self, n: NodeId) -> &MemStore {
        self.settle_durable(n);
        &self.nodes[n as usize].durable
    }

    /// Applies records received through anti-entropy (bytes as on the wire); they are durable
    /// before the node answers or sends its next request. Returns how many changed the store.
    fn apply_synced(&mut self, n: NodeId, records: &[Vec<u8>]) -> usize {
        let mut ids = Vec::new();
        for b in records
            .iter()
            .take(dpin_protocol::digest::MAX_RECORDS_PER_CHUNK)
        {
            let key = *blake3::hash(b).as_bytes();
            match self.by_bytes.get(&key) {
                // Same bytes as an interned record: decoding them gives that record.
                Some(&id) => ids.push(id),
                None => match SignedRecord::decode(b) {
                    Ok(r) => ids.push(self.intern(r)),
                    Err(_) => continue,
                },
            }
        }
        if ids.is_empty() {
            return 0;
        }
        let now = self.node_now(n);
        let batch: Vec<(&SignedRecord, [u8; 32])> = ids
            .iter()
            .map(|&i| {
                let r = &self.records[i as usize];
                (&*r.rec, r.hash)
            })
            .collect();
        let outcomes = self
            .verifier
            .apply_batch(&mut self.nodes[n as usize].store, &batch, now);
        let mut changed = 0;
        for (&id, o) in ids.iter().zip(outcomes.iter()) {
            let name_id = self.records[id as usize].name_id;
            self.after_apply(n, id, name_id, o);
            if o.changed_store() {
                changed += 1;
                self.make_durable(n, id);
                self.track(n, id, None);
            }
        }
        self.stats.sync_applied += changed as u64;
        changed
    }

    // ---------------------------------------------------------------- event handlers

    fn handle(&mut self, ev: Ev) -> Result<(), SimError> {
        match ev {
            Ev::Gossip {
                to,
                from,
                rec,
                hops,
                origin,
            } => self.on_gossip(to, from, rec, hops, origin),
            Ev::IHave { to, from, ids } => self.on_ihave(to, from, ids),
            Ev::IWant { to, from, ids } => self.on_iwant(to, from, ids),
            Ev::SyncReq { to, from, sid, msg } => self.on_sync_req(to, from, sid, *msg),
            Ev::SyncResp { to, from, sid, msg } => self.on_sync_resp(to, from, sid, *msg),
            Ev::SyncTimeout { node, sid, nonce } => {
                let n = &mut self.nodes[node as usize];
                if n.sessions.get(&sid).is_some_and(|s| s.nonce == nonce) {
                    n.sessions.remove(&sid);
                    self.stats.sync_failures += 1;
                    self.log_event(30, u64::from(node), sid, 0);
                }
                Ok(())
            }
            Ev::Heartbeat { node, inc } => self.on_heartbeat(node, inc),
            Ev::SyncTick { node } => self.on_sync_tick(node),
            Ev::CatchUp { node, peer, since } => {
                let key = (node.min(peer), node.max(peer));
                if self.last_session.get(&key).is_some_and(|&t| t >= since) {
                    return Ok(());
                }
                let up = self.nodes[node as usize].up && self.nodes[node as usize].present;
                if up && self.reachable(node, peer) {
                    self.start_session(node, peer)?;
                }
                Ok(())
            }
            Ev::CompactTick { node, at } => self.on_compact(node, at),
            Ev::Flush { node, inc } => {
                let n = &mut self.nodes[node as usize];
                n.flush_scheduled = false;
                if n.incarnation != inc || !n.up {
                    return Ok(());
                }
                let pending = std::mem::take(&mut n.pending);
                for rec in pending {
                    self.make_durable(node, rec);
                }
                Ok(())
            }
            Ev::Ack { node, inc, rec } => self.on_ack(node, inc, rec),
            Ev::DetTick { node } => self.on_det_tick(node),
            Ev::Probe {
                to,
                from,
                nonce,
                relay,
                watch,
            } => self.on_probe(to, from, nonce, relay, watch),
            Ev::ProbeReq {
                to,
                from,
                target,
                nonce,
            } => self.on_probe_req(to, from, target, nonce),
            Ev::ProbeAck {
                to,
                from,
                target,
                nonce,
                relay,
            } => self.on_probe_ack(to, from, target, nonce, relay),
            Ev::ProbeNack {
                to,
                from,
                target,
                nonce,
            } => {
                if self.deliverable(from, to) {
                    self.heard(to, from);
                    self.nodes[to as usize].detector.nack(target, nonce);
                }
                Ok(())
            }
            Ev::RelayTimeout { node, relay } => {
                if let Some((asker, target, nonce)) =
                    self.nodes[node as usize].relays.remove(&relay)
                {
                    if self.nodes[node as usize].up {
                        self.send_probe_msg(
                            node,
                            asker,
                            Ev::ProbeNack {
                                to: asker,
                                from: node,
                                target,
                                nonce,
                            },
                        )?;
                    }
                }
                Ok(())
            }
            Ev::Act(i) => {
                let action = self.actions.get(i).cloned();
                match action {
                    Some(a) => self.act(a),
                    None => Ok(()),
                }
            }
        }
    }

    fn on_gossip(
        &mut self,
        to: NodeId,
        from: NodeId,
        rec: RecId,
        hops: u16,
        origin: NodeId,
    ) -> Result<(), SimError> {
        if !self.deliverable(from, to) {
            return Ok(());
        }
        self.heard(to, from);
        self.log_event(1, u64::from(to), u64::from(from), u64::from(rec));
        if !self.nodes[to as usize].seen.insert(rec) {
            self.stats.duplicates += 1;
            return Ok(());
        }
        let o = self.apply(to, rec, Freshness::Replicate, None);
        if !o.changed_store() {
            // The node's `Ignore` verdict: not forwarded, no penalty.
            return Ok(());
        }
        self.stats.gossip_applied += 1;
        self.track(to, rec, Some(hops));
        self.schedule_flush(to, rec)?;
        self.remember(to, rec, hops, origin)?;
        // By index: sending changes no mesh, so the list needs no copy.
        for i in 0..self.nodes[to as usize].mesh.len() {
            let p = self.nodes[to as usize].mesh[i];
            if p != from && p != origin {
                self.send_gossip(to, p, rec, hops.saturating_add(1), origin)?;
            }
        }
        Ok(())
    }

    fn schedule_flush(&mut self, n: NodeId, rec: RecId) -> Result<(), SimError> {
        let node = &mut self.nodes[n as usize];
        node.pending.push(rec);
        if !node.flush_scheduled {
            node.flush_scheduled = true;
            let inc = node.incarnation;
            let at = self.now() + FLUSH_DELAY_MS;
            self.sched.push(at, Ev::Flush { node: n, inc })?;
        }
        Ok(())
    }

    /// Puts a message in the node's gossip cache and makes sure heartbeats run.
    fn remember(
        &mut self,
        n: NodeId,
        rec: RecId,
        hops: u16,
        origin: NodeId,
    ) -> Result<(), SimError> {
        let now = self.now();
        let node = &mut self.nodes[n as usize];
        node.history.push_back((now, rec, hops, origin));
        if !node.hb_scheduled {
            node.hb_scheduled = true;
            let phase = node.hb_phase;
            let inc = node.incarnation;
            let next = (now.saturating_sub(phase) / HEARTBEAT_MS + 1) * HEARTBEAT_MS + phase;
            self.sched.push(next, Ev::Heartbeat { node: n, inc })?;
        }
        Ok(())
    }

    fn on_heartbeat(&mut self, n: NodeId, inc: u32) -> Result<(), SimError> {
        let now = self.now();
        {
            let node = &mut self.nodes[n as usize];
            if node.incarnation != inc || !node.up {
                return Ok(());
            }
            node.hb_scheduled = false;
            while node
                .history
                .front()
                .is_some_and(|(t, _, _, _)| t + MCACHE_MS <= now)
            {
                node.history.pop_front();
            }
        }
        self.maintain_mesh(n);
        let node = &self.nodes[n as usize];
        let ids: Arc<[RecId]> = node
            .history
            .iter()
            .filter(|(t, _, _, _)| t + GOSSIP_WINDOW_MS > now)
            .map(|(_, r, _, _)| *r)
            .collect();
        if !ids.is_empty() {
            let mut others = std::mem::take(&mut self.scratch_peers);
            others.clear();
            others.extend(
                node.peers
                    .iter()
                    .copied()
                    .filter(|p| !node.mesh.contains(p))
                    .filter(|&p| {
                        let x = &self.nodes[p as usize];
                        x.up && x.present
                    }),
            );
            let want = self
                .cfg
                .mesh
                .lazy
                .max((GOSSIP_FACTOR * others.len() as f64) as usize);
            others.shuffle(&mut self.rng_gossip);
            others.truncate(want);
            let bytes = CONTROL_FRAME_BYTES + MESSAGE_ID_BYTES * ids.len() as u64;
            for &p in &others {
                self.stats.ihave += 1;
                self.stats.control_bytes += bytes;
                if self.ihave_is_moot(n, p, &ids) {
                    self.stats.messages += 1;
                    self.stats.bytes += bytes;
                    continue;
                }
                self.send(
                    n,
                    p,
                    bytes,
                    Ev::IHave {
                        to: p,
                        from: n,
                        ids: ids.clone(),
                    },
                )?;
            }
            self.scratch_peers = others;
        }
        if !self.nodes[n as usize].history.is_empty() {
            let node = &mut self.nodes[n as usize];
            node.hb_scheduled = true;
            self.sched
                .push(now + HEARTBEAT_MS, Ev::Heartbeat { node: n, inc })?;
        }
        Ok(())
    }

    /// Whether an IHAVE of `ids` from `from` to `to` would change nothing: `to` has seen
    /// every id already and no failure detector runs. Such an IHAVE is charged (message,
    /// bytes) but not delivered as an event. Its delivery would only have been logged: the
    /// receiver asks for nothing it has seen, and what it has seen only grows while it lives
    /// (a crash clears it, and a node that restarts within the message's flight catches up
    /// through anti-entropy, as every restart does). With the detector on, every message a
    /// node receives is evidence that its sender lives, so then every IHAVE is delivered.
    fn ihave_is_moot(&self, from: NodeId, to: NodeId, ids: &[RecId]) -> bool {
        if self.cfg.detector || !self.net.can_talk(from, to) {
            return false;
        }
        let seen = &self.nodes[to as usize].seen;
        ids.iter().all(|r| seen.contains(r))
    }

    fn on_ihave(&mut self, to: NodeId, from: NodeId, ids: Arc<[RecId]>) -> Result<(), SimError> {
        if !self.deliverable(from, to) {
            return Ok(());
        }
        self.log_event(2, u64::from(to), u64::from(from), ids.len() as u64);
        let node = &self.nodes[to as usize];
        let wanted: Vec<RecId> = ids
            .iter()
            .copied()
            .filter(|r| !node.seen.contains(r))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let bytes = CONTROL_FRAME_BYTES + MESSAGE_ID_BYTES * wanted.len() as u64;
        self.stats.iwant += 1;
        self.stats.control_bytes += bytes;
        self.send(
            to,
            from,
            bytes,
            Ev::IWant {
                to: from,
                from: to,
                ids: wanted,
            },
        )
    }

    fn on_iwant(&mut self, to: NodeId, from: NodeId, ids: Vec<RecId>) -> Result<(), SimError> {
        if !self.deliverable(from, to) {
            return Ok(());
        }
        self.log_event(3, u64::from(to), u64::from(from), ids.len() as u64);
        let now = self.now();
        let cached: Vec<(RecId, u16, NodeId)> = self.nodes[to as usize]
            .history
            .iter()
            .filter(|(t, r, _, _)| t + MCACHE_MS > now && ids.contains(r))
            .map(|(_, r, h, o)| (*r, *h, *o))
            .collect();
        for (rec, hops, origin) in cached {
            self.send_gossip(to, from, rec, hops.saturating_add(1), origin)?;
        }
        Ok(())
    }

    fn on_sync_tick(&mut self, n: NodeId) -> Result<(), SimError> {
        let now = self.now();
        self.sched
            .push(now + SYNC_INTERVAL_MS, Ev::SyncTick { node: n })?;
        let node = &self.nodes[n as usize];
        if !node.up || !node.present {
            return Ok(());
        }
        let mut peers = std::mem::take(&mut self.scratch_peers);
        peers.clear();
        peers.extend(node.peers.iter().copied().filter(|&p| self.reachable(n, p)));
        peers.shuffle(&mut self.rng_sync);
        peers.truncate(self.cfg.sync_peers);
        for &p in &peers {
            self.start_session(n, p)?;
        }
        self.scratch_peers = peers;
        Ok(())
    }

    /// Starts an anti-entropy session from `n` with `peer`, unless `n` runs too many.
    pub fn start_session(&mut self, n: NodeId, peer: NodeId) -> Result<(), SimError> {
        let node = &mut self.nodes[n as usize];
        if !node.up || node.sessions.len() >= MAX_CONCURRENT_SYNCS {
            return Ok(());
        }
        if node.sessions.values().any(|s| s.peer == peer) {
            return Ok(());
        }
        self.next_sid += 1;
        let sid = self.next_sid;
        node.sessions.insert(
            sid,
            Session {
                // Every simulated node runs this release: budgeted chunks both ways.
                init: Initiator::new(SessionConfig::budgeted()),
                peer,
                nonce: 0,
            },
        );
        let now = self.now();
        self.last_session.insert((n.min(peer), n.max(peer)), now);
        self.stats.sync_sessions += 1;
        self.log_event(31, u64::from(n), u64::from(peer), sid);
        self.drive(n, sid)
    }

    fn drive(&mut self, n: NodeId, sid: u64) -> Result<(), SimError> {
        let now_node = self.node_now(n);
        let node = &mut self.nodes[n as usize];
        let Some(s) = node.sessions.get_mut(&sid) else {
            return Ok(());
        };
        match s.init.poll(&node.store, now_node) {
            InitiatorStep::Send(req) => {
                s.nonce += 1;
                let nonce = s.nonce;
                let peer = s.peer;
                let msg = Box::new(Wire::request(req));
                let len = msg.len;
                self.stats.sync_bytes += len;
                let at = self.now() + REQUEST_TIMEOUT_MS;
                self.sched.push(
                    at,
                    Ev::SyncTimeout {
                        node: n,
                        sid,
                        nonce,
                    },
                )?;
                self.send(
                    n,
                    peer,
                    len,
                    Ev::SyncReq {
                        to: peer,
                        from: n,
                        sid,
                        msg,
                    },
                )
            }
            InitiatorStep::Done(_) => {
                node.sessions.remove(&sid);
                self.log_event(32, u64::from(n), sid, 0);
                Ok(())
            }
        }
    }

    fn on_sync_req(
        &mut self,
        to: NodeId,
        from: NodeId,
        sid: u64,
        msg: Wire<SyncRequest>,
    ) -> Result<(), SimError> {
        if !self.deliverable(from, to) {
            return Ok(());
        }
        self.heard(to, from);
        self.log_event(4, u64::from(to), u64::from(from), msg.len);
        let resp = match msg.msg {
            Err(message) => SyncResponse::Error { message },
            Ok(req) => match antientropy::respond(&self.nodes[to as usize].store, req) {
                ResponderAction::Reply(r) => r,
                ResponderAction::ApplyThenAck(records) => {
                    let applied = self.apply_synced(to, &records);
                    antientropy::push_ack(applied)
                }
            },
        };
        let msg = Box::new(Wire::response(resp));
        let len = msg.len;
        self.stats.sync_bytes += len;
        self.send(
            to,
            from,
            len,
            Ev::SyncResp {
                to: from,
                from: to,
                sid,
                msg,
            },
        )
    }

    fn on_sync_resp(
        &mut self,
        to: NodeId,
        from: NodeId,
        sid: u64,
        msg: Wire<SyncResponse>,
    ) -> Result<(), SimError> {
        if !self.deliverable(from, to) {
            return Ok(());
        }
        self.heard(to, from);
        self.log_event(5, u64::from(to), u64::from(from), msg.len);
        let now_node = self.node_now(to);
        let node = &mut self.nodes[to as usize];
        let Some(s) = node.sessions.get_mut(&sid) else {
            return Ok(());
        };
        let result = match msg.msg {
            Ok(resp) => s
                .init
                .handle_response(&node.store, resp, now_node)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match result {
            Ok(records) => {
                if !records.is_empty() {
                    self.apply_synced(to, &records);
                }
                self.drive(to, sid)
            }
            Err(_) => {
                node.sessions.remove(&sid);
                self.stats.sync_failures += 1;
                Ok(())
            }
        }
    }

    /// Makes sure node `n` has a compaction tick at or after the time its clock reads
    /// `due_node_ms` (Unix ms): the first tick of its grid then, unless one is scheduled
    /// sooner. Nothing to do without compaction.
    fn arm_compaction(&mut self, n: NodeId, due_node_ms: u64) {
        let Some(every) = self.cfg.compact_every_ms else {
            return;
        };
        let every = every.max(1);
        let now = self.now();
        let node = &mut self.nodes[n as usize];
        // The virtual time at which the node's clock reads `due_node_ms`.
        let due = (due_node_ms as i64 - EPOCH_MS as i64 - node.skew_ms).max(0) as u64;
        // The first tick of the grid after now (a tick at now already ran or runs as the
        // old one did) and at or after `due`.
        let from = due.max(now + 1);
        let phase = node.compact_phase;
        let at = if from <= phase {
            phase
        } else {
            phase + (from - phase).div_ceil(every) * every
        };
        if node.compact_at.is_some_and(|t| t <= at) {
            return;
        }
        node.compact_at = Some(at);
        // Arming happens where no error can be returned (applying a record); a full
        // scheduler stops the run after the event.
        if let Err(e) = self.sched.push(at, Ev::CompactTick { node: n, at }) {
            self.deferred_error.get_or_insert(e);
        }
    }

    /// A compaction tick. Ticks are scheduled only when a held body may be due, at the
    /// times the node's fixed-period tick would have run: one that finds nothing due was a
    /// tick the node runs but that does nothing (`Store::compactable` is empty), so leaving
    /// it out changes no store.
    fn on_compact(&mut self, n: NodeId, at: u64) -> Result<(), SimError> {
        if self.cfg.compact_every_ms.is_none() || self.nodes[n as usize].compact_at != Some(at) {
            return Ok(());
        }
        self.nodes[n as usize].compact_at = None;
        let node_now = self.node_now(n);
        let node = &mut self.nodes[n as usize];
        if !node.up {
            // A restart arms the tick again from what the node comes back with.
            return Ok(());
        }
        let names = node.store.compactable(node_now);
        if !names.is_empty() {
            let dropped = match node.store.compact(node_now) {
                Ok(d) => d,
                Err(never) => match never {},
            };
            node.durable_log.push(DurableOp::Compact { now: node_now });
            let settle = node.durable_log.len() >= MAX_DURABLE_LOG;
            self.stats.compacted += dropped as u64;
            self.log_event(33, u64::from(n), dropped as u64, 0);
            if settle {
                self.settle_durable(n);
            }
            for name in names {
                if let Some(id) = self.name_ids.get(name.as_str()) {
                    self.touched.push((n, *id));
                }
            }
        }
        self.arm_compaction_from_store(n);
        Ok(())
    }

    /// Arms node `n`'s compaction tick for the earliest body its store holds.
    fn arm_compaction_from_store(&mut self, n: NodeId) {
        if self.cfg.compact_every_ms.is_none() {
            return;
        }
        let retention = self.nodes[n as usize].store.retention_ms();
        let due = self.nodes[n as usize]
            .store
            .iter()
            .filter(|(_, e)| e.bytes.is_some())
            .map(|(_, e)| e.expires_at_ms.saturating_add(retention))
            .min();
        if let Some(due) = due {
            self.arm_compaction(n, due);
        }
    }

    fn on_ack(&mut self, n: NodeId, inc: u32, rec: RecId) -> Result<(), SimError> {
        let node = &self.nodes[n as usize];
        if node.incarnation != inc || !node.up {
            self.stats.unacked_crash += 1;
            return Ok(());
        }
        // fsynced: durable, acknowledged, then gossiped (flood publish).
        self.make_durable(n, rec);
        let info = &self.records[rec as usize];
        let (name_id, floor) = (info.name_id, info.rank);
        self.stats.acked += 1;
        self.log_event(40, u64::from(n), u64::from(rec), 0);
        let acked = self.acked.entry(name_id).or_insert(floor);
        *acked = (*acked).max(floor);
        let mine = self.nodes[n as usize]
            .watch
            .acked
            .entry(name_id)
            .or_insert(floor);
        *mine = (*mine).max(floor);
        self.touched.push((n, name_id));
        self.nodes[n as usize].seen.insert(rec);
        self.remember(n, rec, 0, n)?;
        // By index: sending changes no connection, so the list needs no copy.
        for i in 0..self.nodes[n as usize].peers.len() {
            let p = self.nodes[n as usize].peers[i];
            let x = &self.nodes[p as usize];
            if x.up && x.present {
                self.send_gossip(n, p, rec, 1, n)?;
            }
        }
        Ok(())
    }

    fn act(&mut self, a: Action) -> Result<(), SimError> {
        match a {
            Action::Write { via, rec, expected } => {
                self.stats.writes += 1;
                let node = &self.nodes[via as usize];
                if !node.up || !node.present {
                    self.stats.refused += 1;
                    return Ok(());
                }
                let o = self.apply(via, rec, Freshness::Publish, expected);
                self.log_event(41, u64::from(via), u64::from(rec), 0);
                if o.is_winner() {
                    if o.changed_store() {
                        self.track(via, rec, Some(0));
                    }
                    let inc = self.nodes[via as usize].incarnation;
                    let at = self.now() + ACK_DELAY_MS;
                    self.sched.push(
                        at,
                        Ev::Ack {
                            node: via,
                            inc,
                            rec,
                        },
                    )?;
                } else {
                    self.stats.refused += 1;
                }
                Ok(())
            }
            Action::Crash(n) => {
                self.crash(n);
                Ok(())
            }
            Action::Pause(n) => {
                self.log_event(55, u64::from(n), 0, 0);
                self.nodes[n as usize].up = false;
                Ok(())
            }
            Action::Resume(n) => {
                self.log_event(56, u64::from(n), 0, 0);
                let node = &mut self.nodes[n as usize];
                if node.present {
                    node.up = true;
                }
                Ok(())
            }
            Action::Restart(n) => self.restart(n),
            Action::Join(n) => {
                if self.nodes[n as usize].present {
                    return Ok(());
                }
                self.stats.joins += 1;
                self.log_event(50, u64::from(n), 0, 0);
                let node = &mut self.nodes[n as usize];
                node.present = true;
                node.up = true;
                let mut rng = rng::stream(self.cfg.seed ^ u64::from(n), "join");
                self.connect(n, &mut rng);
                self.come_up(n)
            }
            Action::Leave(n) => {
                self.stats.leaves += 1;
                self.crash(n);
                let peers = std::mem::take(&mut self.nodes[n as usize].peers);
                self.nodes[n as usize].dialed.clear();
                for p in peers {
                    self.nodes[p as usize].peers.retain(|&x| x != n);
                    self.nodes[p as usize].dialed.retain(|&x| x != n);
                }
                self.nodes[n as usize].present = false;
                Ok(())
            }
            Action::Partition(sides) => {
                self.stats.partitions += 1;
                self.log_event(51, sides.len() as u64, 0, 0);
                self.net.partition(sides);
                // Connections across the cut time out; meshes drop those peers and repair.
                for n in 0..self.nodes.len() as NodeId {
                    let cut: Vec<NodeId> = self.nodes[n as usize]
                        .mesh
                        .iter()
                        .copied()
                        .filter(|&p| !self.net.can_talk(n, p))
                        .collect();
                    if cut.is_empty() {
                        continue;
                    }
                    self.nodes[n as usize].mesh.retain(|p| !cut.contains(p));
                }
                for n in 0..self.nodes.len() as NodeId {
                    if self.nodes[n as usize].up {
                        self.maintain_mesh(n);
                    }
                }
                Ok(())
            }
            Action::Heal => {
                let was = self.net.is_partitioned();
                // The pairs the cut separated: they see each other come alive again.
                let mut healed: Vec<(NodeId, NodeId)> = Vec::new();
                if was {
                    for n in 0..self.nodes.len() as NodeId {
                        for &p in &self.nodes[n as usize].peers {
                            if n < p && !self.net.can_talk(n, p) {
                                healed.push((n, p));
                            }
                        }
                    }
                }
                self.net.heal();
                self.log_event(52, 0, 0, 0);
                if !was {
                    return Ok(());
                }
                // Meshes that lost members to the cut graft again at the next heartbeat.
                for n in 0..self.nodes.len() as NodeId {
                    if self.nodes[n as usize].up {
                        self.maintain_mesh(n);
                    }
                }
                // Peers across the healed cut see each other alive again and catch up (the
                // node's on_transition), within each node's session slots.
                healed.shuffle(&mut self.rng_sync);
                for (a, b) in healed {
                    self.catch_up(a, b)?;
                }
                Ok(())
            }
        }
    }

    /// SIGKILL: everything not fsynced is gone, and the peers notice at once.
    pub fn crash(&mut self, n: NodeId) {
        let node = &mut self.nodes[n as usize];
        if !node.up {
            return;
        }
        self.stats.crashes += 1;
        self.stats.unflushed_lost += node.pending.len() as u64;
        node.up = false;
        node.incarnation += 1;
        node.pending.clear();
        node.flush_scheduled = false;
        node.sessions.clear();
        node.history.clear();
        node.seen.clear();
        node.hb_scheduled = false;
        self.log_event(53, u64::from(n), 0, 0);
        self.leave_meshes(n);
    }

    fn restart(&mut self, n: NodeId) -> Result<(), SimError> {
        let at = self.now();
        let node = &self.nodes[n as usize];
        if node.up || !node.present {
            return Ok(());
        }
        self.settle_durable(n);
        let node = &mut self.nodes[n as usize];
        self.stats.restarts += 1;
        node.up = true;
        node.store = node.durable.clone().with_digest();
        invariants::check_restart(&node.store, &mut node.watch, n, &self.names, at)
            .map_err(SimError::Invariant)?;
        let names: Vec<(u32, Rank)> = node
            .store
            .iter()
            .filter_map(|(name, e)| self.name_ids.get(name.as_str()).map(|id| (*id, e.rank())))
            .collect();
        node.watch.observed.extend(names);
        self.log_event(54, u64::from(n), 0, 0);
        self.arm_compaction_from_store(n);
        self.come_up(n)
    }

    /// A node (re)joins: mesh grafts, sync with some peers at once, and the peers that see it
    /// alive sync with it too.
    fn come_up(&mut self, n: NodeId) -> Result<(), SimError> {
        self.graft_up(n, self.cfg.mesh.n);
        let mut peers: Vec<NodeId> = self.nodes[n as usize]
            .peers
            .iter()
            .copied()
            .filter(|&p| self.reachable(n, p))
            .collect();
        peers.shuffle(&mut self.rng_sync);
        for &p in &peers {
            self.catch_up(n, p)?;
        }
        Ok(())
    }

    /// Two nodes that see each other come (back) alive, as the node's `catch_up`: one session
    /// settles both directions, so the smaller id starts it at once and the larger starts one
    /// only if none (either direction) started within [`CATCH_UP_FALLBACK_MS`] (the first
    /// side's session slots were full). Records cross once instead of twice.
    fn catch_up(&mut self, a: NodeId, b: NodeId) -> Result<(), SimError> {
        let (lo, hi) = (a.min(b), a.max(b));
        let now = self.now();
        if self.nodes[lo as usize].up && self.reachable(lo, hi) {
            self.start_session(lo, hi)?;
        }
        self.sched.push(
            now + CATCH_UP_FALLBACK_MS,
            Ev::CatchUp {
                node: hi,
                peer: lo,
                since: now.saturating_sub(CATCH_UP_FALLBACK_MS),
            },
        )
    }

    // ---------------------------------------------------------------- failure detection

    fn heard(&mut self, n: NodeId, from: NodeId) {
        if self.cfg.detector {
            let now = self.now();
            self.nodes[n as usize].detector.heard(from, now);
        }
    }

    fn send_probe_msg(&mut self, from: NodeId, to: NodeId, ev: Ev) -> Result<(), SimError> {
        self.stats.control_bytes += PROBE_BYTES;
        self.send(from, to, PROBE_BYTES, ev)
    }

    fn on_det_tick(&mut self, n: NodeId) -> Result<(), SimError> {
        let now = self.now();
        let tick = self.nodes[n as usize].detector.config().tick_ms.max(1);
        self.sched.push(now + tick, Ev::DetTick { node: n })?;
        let node = &self.nodes[n as usize];
        if !node.up || !node.present {
            return Ok(());
        }
        let outs = self.nodes[n as usize]
            .detector
            .tick(now, &mut self.rng_detector);
        for o in outs {
            match o {
                DetOut::Probe { peer, nonce, watch } => {
                    self.stats.probes += 1;
                    self.send_probe_msg(
                        n,
                        peer,
                        Ev::Probe {
                            to: peer,
                            from: n,
                            nonce,
                            relay: None,
                            watch,
                        },
                    )?;
                }
                DetOut::ProbeVia {
                    helper,
                    target,
                    nonce,
                } => {
                    self.stats.probe_reqs += 1;
                    self.send_probe_msg(
                        n,
                        helper,
                        Ev::ProbeReq {
                            to: helper,
                            from: n,
                            target,
                            nonce,
                        },
                    )?;
                }
                DetOut::Transition((p, _, new)) => {
                    let healthy = self.reachable(n, p);
                    match new {
                        PeerStatus::Down => {
                            self.log_event(57, u64::from(n), u64::from(p), 0);
                            if healthy {
                                self.stats.false_downs += 1;
                            }
                            if let Some((target, _, downs)) = self.detect_watch.as_mut() {
                                if *target == p {
                                    downs.entry(n).or_insert(now);
                                }
                            }
                        }
                        PeerStatus::Suspect if healthy => self.stats.false_suspects += 1,
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    fn on_probe(
        &mut self,
        to: NodeId,
        from: NodeId,
        nonce: u64,
        relay: Option<u64>,
        watch: bool,
    ) -> Result<(), SimError> {
        if !self.deliverable(from, to) {
            return Ok(());
        }
        if watch && self.cfg.detector {
            let now = self.now();
            self.nodes[to as usize].detector.watched_by(from, now);
        } else {
            self.heard(to, from);
        }
        self.stats.probe_answers += 1;
        self.send_probe_msg(
            to,
            from,
            Ev::ProbeAck {
                to: from,
                from: to,
                target: to,
                nonce,
                relay,
            },
        )
    }

    fn on_probe_req(
        &mut self,
        to: NodeId,
        from: NodeId,
        target: NodeId,
        nonce: u64,
    ) -> Result<(), SimError> {
        if !self.deliverable(from, to) {
            return Ok(());
        }
        self.heard(to, from);
        if !self.nodes[to as usize].peers.contains(&target) {
            self.stats.probe_answers += 1;
            return self.send_probe_msg(
                to,
                from,
                Ev::ProbeNack {
                    to: from,
                    from: to,
                    target,
                    nonce,
                },
            );
        }
        self.next_relay += 1;
        let relay = self.next_relay;
        self.nodes[to as usize]
            .relays
            .insert(relay, (from, target, nonce));
        let now = self.now();
        self.sched.push(
            now + RELAY_NACK_AFTER_MS,
            Ev::RelayTimeout { node: to, relay },
        )?;
        self.stats.probes += 1;
        self.send_probe_msg(
            to,
            target,
            Ev::Probe {
                to: target,
                from: to,
                nonce,
                relay: Some(relay),
                watch: false,
            },
        )
    }

    fn on_probe_ack(
        &mut self,
        to: NodeId,
        from: NodeId,
        target: NodeId,
        nonce: u64,
        relay: Option<u64>,
    ) -> Result<(), SimError> {
        if !self.deliverable(from, to) {
            return Ok(());
        }
        self.heard(to, from);
        match relay {
            // Our own probe (or a helper's relayed answer): evidence of `target`.
            None => {
                if self.cfg.detector {
                    let now = self.now();
                    self.nodes[to as usize].detector.ack(target, nonce, now);
                }
                Ok(())
            }
            Some(r) => match self.nodes[to as usize].relays.remove(&r) {
                Some((asker, target, nonce)) => {
                    self.stats.probe_answers += 1;
                    self.send_probe_msg(
                        to,
                        asker,
                        Ev::ProbeAck {
                            to: asker,
                            from: to,
                            target,
                            nonce,
                            relay: None,
                        },
                    )
                }
                None => Ok(()),
            },
        }
    }

    /// Messages per live node per second over `[from_ms, to_ms]`, given the message count at
    /// `from_ms`.
    pub fn rate_per_node(&self, messages_at_start: u64, from_ms: u64, to_ms: u64) -> f64 {
        let live = self.live().max(1);
        let secs = to_ms.saturating_sub(from_ms) as f64 / 1000.0;
        if secs <= 0.0 {
            return 0.0;
        }
        (self.stats.messages - messages_at_start) as f64 / live as f64 / secs
    }

    /// Number of live nodes.
    pub fn live(&self) -> usize {
        self.nodes.iter().filter(|n| n.up && n.present).count()
    }

    /// Mean gossip mesh size over live nodes.
    pub fn mean_mesh(&self) -> f64 {
        let live: Vec<&SimNode> = self.nodes.iter().filter(|n| n.up && n.present).collect();
        live.iter().map(|n| n.mesh.len()).sum::<usize>() as f64 / live.len().max(1) as f64
    }

    /// Mean number of connections over live nodes.
    pub fn mean_degree(&self) -> f64 {
        let live: Vec<&SimNode> = self.nodes.iter().filter(|n| n.up && n.present).collect();
        live.iter().map(|n| n.peers.len()).sum::<usize>() as f64 / live.len().max(1) as f64
    }
}
