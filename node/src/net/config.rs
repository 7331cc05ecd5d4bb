//! The network layer's configuration: [`NetConfig`] (what the node chooses), [`MeshParams`]
//! (the gossip mesh sized to the cluster) and the gossipsub and peer-score configurations
//! built from them. Separate from the event loop so every parameter and the reason for its
//! value can be read, and tested for many sizes, in one place (see the parameter notes in
//! the `net` module docs).

use super::*;
/// Configuration of the network layer. Build it with [`NetConfig::new`] and adjust fields.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Node identity; signs gossip and authenticates connections.
    pub keypair: Keypair,
    /// Addresses to listen on, e.g. `/ip4/127.0.0.1/tcp/0`, `/ip4/127.0.0.1/udp/0/quic-v1`.
    pub listen: Vec<Multiaddr>,
    /// Bootstrap addresses: either ending in `/p2p/<peer id>` or bare (identify then tells us
    /// who answered). Re-dialled while the node has no connection at all.
    pub bootstrap: Vec<Multiaddr>,
    /// Gossipsub topic for records.
    pub topic: String,
    /// Largest payload accepted for gossip (records are ≤ 4 KiB; the margin is for the future).
    pub max_message_bytes: usize,
    /// Largest request or response payload (anti-entropy answers and blob chunks are far
    /// bigger than one gossip message).
    pub max_request_bytes: usize,
    /// Total established connections (inbound + outbound).
    pub max_connections: u32,
    /// Established connections per peer.
    pub max_connections_per_peer: u32,
    /// Expected number of nodes in the cluster, used to size the gossipsub mesh.
    pub expected_cluster_size: usize,
    /// Connections the node keeps (its degree): discovery dials up to this many peers;
    /// inbound connections come on top, and beyond [`trim_above`] of it connections are
    /// trimmed back to it. Constant, so a
    /// node's background work does not grow with the network (issue 16); Kademlia still
    /// finds every other peer, and gossip crosses the graph in a few hops.
    pub target_peers: usize,
    /// A connection is not trimmed in its first this long ([`TRIM_GRACE`] by default): a
    /// newcomer that bootstrapped through us needs the time to learn other peers.
    pub trim_grace: Duration,
    /// Timeout of one probe request (the detector keeps its own, shorter, timeouts; a late
    /// answer still counts as evidence of life).
    pub probe_request_timeout: Duration,
    /// Carry direct probes on one long-lived stream per connection ([`probe_stream`]). Off
    /// only to stand in for a node from before it, in tests: such a node is probed, and
    /// probes, with `/dpin/probe/1` requests.
    pub probe_stream: bool,
    /// Timeout of one outbound anti-entropy request.
    pub request_timeout: Duration,
    /// Connections no behaviour needs are closed after this long. Long on purpose (see the
    /// module docs): connections are bounded by count, not by idleness.
    pub idle_connection_timeout: Duration,
    /// Period of the discovery/maintenance tick: dial known-but-unconnected peers, re-run a
    /// Kademlia bootstrap while the cluster looks smaller than expected, re-dial bootstrap
    /// addresses when isolated.
    pub discovery_interval: Duration,
    /// libp2p's metrics, fed every swarm event ([`crate::metrics::Builder::libp2p`]).
    pub metrics: Option<swarm_metrics::SwarmMetrics>,
    /// Discovery and NAT: mDNS, relay server, relays to reserve on ([`nat`]).
    pub nat: NatConfig,
}

impl NetConfig {
    /// Configuration with defaults suited to a small (2–5 node) cluster on a LAN.
    pub fn new(keypair: Keypair, listen: Vec<Multiaddr>, bootstrap: Vec<Multiaddr>) -> Self {
        Self {
            keypair,
            listen,
            bootstrap,
            topic: GOSSIP_TOPIC.to_owned(),
            max_message_bytes: 64 * 1024,
            max_request_bytes: 4 * 1024 * 1024,
            max_connections: 128,
            max_connections_per_peer: 2,
            expected_cluster_size: 5,
            target_peers: DEFAULT_TARGET_PEERS,
            trim_grace: TRIM_GRACE,
            probe_request_timeout: Duration::from_secs(2),
            probe_stream: true,
            request_timeout: Duration::from_secs(2),
            idle_connection_timeout: Duration::from_secs(3600),
            discovery_interval: Duration::from_secs(2),
            metrics: None,
            nat: NatConfig::default(),
        }
    }

    pub(super) fn check(&self) -> Result<(), NetError> {
        let bad = |what: &str| Err(NetError::InvalidConfig(what.to_owned()));
        if self.listen.is_empty() {
            return bad("no listen address");
        }
        if self.topic.is_empty() {
            return bad("empty topic");
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > u32::MAX as usize {
            return bad("max_message_bytes must be in 1..=u32::MAX");
        }
        if self.max_request_bytes == 0 || self.max_request_bytes > u32::MAX as usize {
            return bad("max_request_bytes must be in 1..=u32::MAX");
        }
        if self.max_connections == 0 || self.max_connections_per_peer == 0 {
            return bad("connection limits must be at least 1");
        }
        if self.target_peers == 0 {
            return bad("target_peers must be at least 1");
        }
        if self.probe_request_timeout.is_zero()
            || self.request_timeout.is_zero()
            || self.discovery_interval.is_zero()
        {
            return bad("intervals and timeouts must be non-zero");
        }
        self.nat.check()
    }
}

/// Gossipsub mesh degree parameters derived from the expected cluster size.
///
/// Invariants (checked by gossipsub's builder, see FIELD-NOTES):
/// `outbound_min <= n_low <= n <= n_high` and `2 * outbound_min <= n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshParams {
    /// D: target mesh degree.
    pub n: usize,
    /// D_lo: graft more peers below this.
    pub n_low: usize,
    /// D_hi: prune peers above this.
    pub n_high: usize,
    /// D_out: minimum outbound peers kept in the mesh.
    pub outbound_min: usize,
}

impl MeshParams {
    /// Mesh sized for `cluster` nodes.
    ///
    /// * `n = clamp(cluster - 1, 2, 6)`: in a cluster of up to 7 nodes everyone is in
    ///   everyone's mesh (a full mesh is the lowest-latency, most robust topology there, and
    ///   with flood publishing it costs nothing extra); beyond that the standard D=6.
    /// * `n_low = max(1, 2n/3)`: a 3-node cluster (2 peers) sits at or above D_lo instead of
    ///   permanently below the default 5, so heartbeats do not keep trying to graft.
    /// * `n_high = 2n` up to 7 nodes: never below `cluster - 1`, so small clusters are never
    ///   pruned. Beyond, `n_high = D + 2 = 8` instead of gossipsub's usual 12, the value the
    ///   simulator picked for 1,000 and 10,000 nodes (README, "Mesh size"): meshes fill past
    ///   D by other peers' GRAFTs until D_hi refuses them, so D_hi sets the mean mesh (7.1 at
    ///   D_hi 12, 6.9 at 8), and with it the full-message sends per node per update (6.08 →
    ///   5.86 at 1k, 6.11 → 5.91 at 10k; issue 11's target is ≤ 6), with the hops to the last
    ///   node within the bound (5 at 1k; 6 → 7 at 10k, bound 11.4).
    /// * `outbound_min = min(2, n/2, n_low)`: satisfies both invariants.
    pub fn for_cluster(cluster: usize) -> Self {
        let n = cluster.saturating_sub(1).clamp(2, 6);
        let n_low = (n * 2 / 3).max(1);
        let n_high = if cluster > 7 { n + 2 } else { n * 2 };
        let outbound_min = 2.min(n / 2).min(n_low);
        Self {
            n,
            n_low,
            n_high,
            outbound_min,
        }
    }
}

/// How long gossipsub remembers a message id to drop copies of it (its default is 60 s).
///
/// **Why shorter.** Every id is kept in a hash table, a queue and two copies of the id for
/// this long, so the cache grows with the message rate: about 46 MB at 2,500 messages a
/// second with the default (a 10⁶-name node under churn, issue 14). A copy can only come
/// back while a peer still announces or queues the message: its message cache holds 5 s
/// (`history_length` × the heartbeat) and a publish waits in a send queue at most
/// `publish_queue_duration` (5 s). A copy later than this is not dropped as a duplicate but
/// checked again, and the merge rule ignores it (a record the store holds), so the cost of a
/// late copy is one signature check, not a forward.
pub const DUPLICATE_CACHE_TIME: Duration = Duration::from_secs(20);

/// Builds the gossipsub configuration; separate so tests can check it for many sizes.
pub(super) fn gossipsub_config(
    topic: &gossipsub::TopicHash,
    max_message_bytes: usize,
    cluster: usize,
) -> Result<gossipsub::Config, NetError> {
    let mesh = MeshParams::for_cluster(cluster);
    let topic_max = max_message_bytes.saturating_add(GOSSIP_ENVELOPE_OVERHEAD);
    let frame_max = topic_max.max(MIN_GOSSIP_FRAME);
    gossipsub::ConfigBuilder::default()
        // No envelope signature, author or sequence number (see GOSSIP_TOPIC); a message
        // carrying any of them is invalid.
        .validation_mode(ValidationMode::Anonymous)
        // An anonymous message has no author, so a peer cannot tell it came from us and may
        // forward our own publish back to us. gossipsub would call that "self origin" and
        // penalise the honest forwarder as if it sent an invalid message (P4, squared): in
        // chaos runs such echoes graylisted, and so banned, healthy peers. Allowed, the echo
        // is only a duplicate (our publish is in the duplicate cache) and is dropped.
        .allow_self_origin(true)
        // Nothing is forwarded before the node's verdict.
        .validate_messages()
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::new(blake3::hash(&m.data).as_bytes())
        })
        // Frame cap for whole RPCs (control messages included) ...
        .max_transmit_size(frame_max)
        // ... and the per-message cap for our topic. Setting a per-topic size is also what
        // makes the builder check the mesh invariants for this topic.
        .max_transmit_size_for_topic(topic_max, topic.clone())
        .connection_handler_queue_len(GOSSIP_QUEUE_LEN)
        .mesh_n(mesh.n)
        .mesh_n_low(mesh.n_low)
        .mesh_n_high(mesh.n_high)
        .mesh_outbound_min(mesh.outbound_min)
        .mesh_n_for_topic(mesh.n, topic.clone())
        .mesh_n_low_for_topic(mesh.n_low, topic.clone())
        .mesh_n_high_for_topic(mesh.n_high, topic.clone())
        .mesh_outbound_min_for_topic(mesh.outbound_min, topic.clone())
        .gossip_lazy(mesh.n)
        // 500 ms heartbeats repair the mesh quickly after a peer dies; the first one comes
        // soon after start instead of the default 5 s so IHAVE gossip starts early.
        .heartbeat_interval(Duration::from_millis(500))
        .heartbeat_initial_delay(Duration::from_millis(100))
        // Keep the default *time* windows (5 s of history, 3 s gossiped) at 2 ticks/second.
        .history_length(10)
        .history_gossip(6)
        .duplicate_cache_time(DUPLICATE_CACHE_TIME)
        .build()
        .map_err(|e| NetError::Build(format!("gossipsub config: {e}")))
}

/// Gossip score at or below which a peer is graylisted (its RPCs ignored) and banned by
/// this layer for [`GRAYLIST_BAN`].
pub const GRAYLIST_THRESHOLD: f64 = -80.0;

/// Gossipsub peer scoring (issue 12). The defaults are tuned for Ethereum-style busy topics
/// and are wrong for dpin in three ways, fixed here:
///
/// * **P1/P2 (time in mesh, first deliveries) are capped at +1 each.** The defaults give up
///   to +3,600 for an hour in the mesh (1 ms quantum) and +2,000 for first deliveries: a
///   peer that behaved (or published valid junk) for a while could then send thousands of
///   invalid messages before it went negative.
/// * **P3/P3b (mesh delivery rate) are off.** dpin's topic is quiet for hours; every mesh
///   peer delivers nothing at idle, and the default threshold (20 messages per window) would
///   push every honest peer negative.
/// * **P4 (invalid messages) decides.** Weight −1 on the squared count, the count decaying
///   by 10 % a second (half-life about 7 s): a peer is graylisted (score ≤
///   [`GRAYLIST_THRESHOLD`], −80) after about nine recent messages the node *rejected* (a
///   verdict of `Reject`, not `Ignore`): within milliseconds of a flood, and within about
///   ten seconds for a peer that sends one a second; an honest peer, which validates before
///   forwarding, never forwards a rejected message. Graylisted peers are banned by the
///   network layer (those with recent rejections: [`GraylistDecision`]). (With the count halving each second, a peer whose invalid messages
///   trickled in at a few a second, as in a loaded debug build, stayed above the graylist.)
/// * **P6 (IP colocation) is off.** It penalises more than a threshold of peers behind one
///   IP address. Honest deployments do that: a test cluster on one host (every peer is
///   127.0.0.1), several nodes of one operator behind one NAT, containers published on one
///   address. Any threshold either punishes such a cluster (and, through the graylist, bans
///   it) or is above what one attacker host needs. Peer id rotation is answered by per-peer
///   budgets and bans, and connections are bounded by `connection_limits`.
/// * **P7 (behaviour: broken IWANT promises, GRAFT floods)** tolerates a few (threshold 4)
///   so a loaded honest peer that misses an IWANT deadline is not punished.
pub(super) fn peer_score_config(
    topic: &gossipsub::TopicHash,
) -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let topic_params = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 100.0,
        first_message_deliveries_weight: 0.1,
        first_message_deliveries_decay: 0.5,
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -1.0,
        invalid_message_deliveries_decay: 0.9,
        ..Default::default()
    };
    let params = gossipsub::PeerScoreParams {
        topics: HashMap::from([(topic.clone(), topic_params)]),
        topic_score_cap: 10.0,
        ip_colocation_factor_weight: 0.0,
        behaviour_penalty_weight: -1.0,
        behaviour_penalty_threshold: 4.0,
        behaviour_penalty_decay: 0.5,
        ..Default::default()
    };
    let thresholds = gossipsub::PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -40.0,
        graylist_threshold: GRAYLIST_THRESHOLD,
        ..Default::default()
    };
    (params, thresholds)
}
