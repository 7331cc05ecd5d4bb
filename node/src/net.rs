//! Peer-to-peer networking for a dpin node: gossip, anti-entropy requests and peer discovery.
//!
//! # Shape
//!
//! One tokio task (the *event loop*) owns the libp2p [`Swarm`]; nothing else ever touches it.
//! The rest of the node talks to it through a cloneable [`NetHandle`] that sends commands over
//! a bounded channel and awaits a oneshot reply, and receives [`NetEvent`]s from a second
//! bounded channel. This is the layout of rust-libp2p's `file-sharing` example: it keeps the
//! swarm single-threaded (it is not `Sync`), makes every interaction explicit, and lets the
//! node apply backpressure without locks.
//!
//! # Module map
//!
//! This file holds the node-facing API: [`NetHandle`] and its commands, [`NetEvent`],
//! [`NetError`], [`NetStats`] and the ban reasons, plus every limit as a named constant. The
//! rest is split by responsibility (issue 11), each module an `impl EventLoop` block or the
//! pure code it uses:
//!
//! * `config`: [`NetConfig`], [`MeshParams`], the gossipsub and peer-score configurations.
//! * `behaviour`: the composed libp2p behaviour, the swarm's construction, [`spawn`].
//! * `transport`: TCP with the retransmission backoff capped at 1 s (issue 15: stalls after
//!   a partition heals).
//! * `event_loop`: the task that owns the swarm: its `run` loop, commands, behaviour events.
//! * `connections`: discovery dials, re-dials, maintenance and trimming (issue 16), and the
//!   repair of connections a partition left half-open (the peer re-dials while we hold our
//!   old end, and gossipsub never sends it our subscription): a peer that re-dials while we
//!   hold an older direct connection is reconnected afresh at once
//!   (`EventLoop::check_half_open`); one that gossips to us while gossipsub never heard it
//!   subscribe lost its subscription and is reconnected at its first message
//!   (`EventLoop::gossip_from`); and any other peer gossipsub never heard
//!   subscribe is, after a grace, as a backstop (`SubscribeChecks`).
//! * `bans`: bans and the graylist decision (issues 12 and 15).
//! * `probes`: carrying the failure detector's probes and goodbyes; [`probe_stream`] and
//!   [`probe_wire`] are the stream protocol and the request format.
//! * `codec`: the request-response codec with the inbound buffering bounds.
//! * [`nat`]: AutoNAT, relays, hole punching, mDNS; [`swarm_metrics`]: libp2p's metrics.
//! * `tests`: the layer's unit tests and in-process swarm tests.
//!
//! # Opaque bytes
//!
//! This layer carries opaque byte strings. It does not know the record format: every gossip
//! message is handed to the node *before* it is forwarded (gossipsub `validate_messages`), and
//! the node answers with [`NetHandle::report_validation`]. A message is therefore never relayed
//! by a node that has not checked it, and an invalid message stops at the first honest hop.
//!
//! # Why the parameters look the way they do (see `/work/shared/FIELD-NOTES.md`)
//!
//! * Gossipsub's default mesh (D=6, D_lo=5) can never be satisfied by a 3-node cluster, so
//!   the mesh is sized from [`NetConfig::expected_cluster_size`] (see [`MeshParams`]) and set
//!   both as the default *and* per topic: the builder only checks the mesh invariants for
//!   topics that have a per-topic transmit size, so we set one to get the check.
//! * Gossipsub never dials. Discovery is Kademlia (server mode, its own protocol name so it
//!   never mixes with the public IPFS DHT), fed by bootstrap addresses and by the listen
//!   addresses identify reports; a maintenance tick dials routing-table peers we are not
//!   connected to, up to the target degree (the rest of the connection limit is headroom
//!   for inbound connections from newcomers).
//! * **Constant background work per node (issue 16).** A node keeps
//!   [`NetConfig::target_peers`] connections (12 by default), not a full mesh: discovery dials
//!   up to that degree (dials in flight count, so one discovery pass does not dial the whole
//!   routing table), inbound connections come on top, and above [`trim_above`] (15) the node
//!   trims back to the target. The trim choice ([`choose_trim`](connections::choose_trim))
//!   never takes a gossip-mesh member or a connection in its first [`TRIM_GRACE`], and never
//!   the last link into a
//!   Kademlia distance class: those are the long links that keep the trimmed graph in one
//!   piece. A trimmed peer is told first (a goodbye on [`PROBE_PROTOCOL`]); neither end dials
//!   the other again for [`RELEASE_COOLDOWN`] unless it is left with under half its degree,
//!   and the node is told the disconnection was a release ([`NetHandle::take_released`]), so
//!   its failure detector forgets the peer instead of counting it down. Kademlia bootstraps
//!   run while the routing table is thinner than the target, otherwise at most every
//!   [`KAD_BOOTSTRAP_MIN_GAP`] and only when no known peer is left to dial (each bootstrap
//!   opens connections of its own, which are trimmed again). The gossip mesh is
//!   sized to the degree. The discovery tick doubles its period up to [`DISCOVERY_MAX_INTERVAL`]
//!   while the node is stable, and comes back to its base period as soon as a lost or
//!   released connection leaves the node below its target (else a node released by its last
//!   peer sat alone for up to that long), and Kademlia's own periodic bootstrap runs every
//!   [`KAD_PERIODIC_BOOTSTRAP`]. Failure detection probes peers on the detector's schedule
//!   (`dpin_protocol::liveness`: only peers it has not heard from, a bounded number per tick,
//!   indirect probes through helpers before suspicion) over [`PROBE_PROTOCOL`], instead of
//!   libp2p ping on every connection every 500 ms; this loop only carries the probes and
//!   relays other nodes' indirect probes (answering "no answer" after [`RELAY_NACK_AFTER`]).
//! * **What idle costs, measured (issue 16, 2026-12-02).** The cost is per *connection*,
//!   not per node: about 0.06–0.1 % of a core per connected peer, i.e. 0.6–1 ms of CPU per
//!   peer per second (`dpin-bench idle`: 0.88 % with 9 peers, 1.74 % with 19; `perf record
//!   -g` on one of 40 idle nodes with 35 peers: 2.2 %). The profile has no hot spot: kernel
//!   socket wake-ups ~23 %, polling connection tasks (futures/tokio/event-listener) ~30 %,
//!   memmove/malloc ~15 %, yamux ~5 %, noise ~3 %, Kademlia ~2 %, gossipsub ~1 % — the fixed
//!   cost of many small frames (each probe opens a yamux stream, negotiates multistream-select
//!   and carries an encrypted request and answer), not any one protocol. So the degree
//!   decides, and at N=40 it was 35 of 39 possible: discovery dials only up to the target
//!   (12), but Kademlia's own queries open connections too, the probes keep every connection
//!   busy, and trimming started only above three times the target (36), back to 24; a trimmed
//!   peer dialled straight back. Now trimmed above 15, back to 12, with a cooldown (see
//!   above); measured side by side in `dpin node`'s README section on `dpin-bench idle`.
//! * **Direct probes ride one long-lived stream per connection** ([`probe_stream`],
//!   `/dpin/probe-stream/1`): an 8-byte frame and its echo, one TCP segment each way,
//!   instead of a request-response exchange on a fresh yamux stream (stream open,
//!   multistream-select, request, answer, close: four to six frames each way). Measured side
//!   by side in one run (`dpin-bench idle --nodes 10,20,40`, 2026-12-02, with the allocator
//!   settings of `crate::alloc`): idle CPU per node 1.62 → 0.99 % of a core at N = 20 and
//!   1.33 → 0.92 % at N = 40 (the README's table). Indirect probes
//!   (ping-req), goodbyes and probes to peers without the stream protocol (older nodes)
//!   still use `/dpin/probe/1` requests ([`probe_wire`], their format and decoder).
//! * **Our dials take a fresh local port** (`DialOpts::allocate_new_port`), not libp2p's
//!   default of binding the dial socket to the listen port (port reuse). Port reuse buys
//!   nothing here (peers learn our listen addresses from identify, and only the dialling side
//!   remembers an address), and it failed for real: in the e2e suite a node's every dial
//!   failed with `Address already in use (os error 98)` (the `bind` to its listen port) for
//!   the whole 15–30 s a test waited, while `ss` showed only its listener and a TIME-WAIT
//!   socket of another test's client on the same port number at another loopback address
//!   (127.0.4.14, the DNS tests' slow clients). libp2p-tcp falls back to a fresh port only
//!   when `connect` says `AddrNotAvailable`, not when `bind` says `AddrInUse`, so the node
//!   stayed alone: 4 of 9 full e2e runs failed a "full mesh" wait that way.
//! * **Lost peers are re-dialled on fresh connections** ([`Redial`]): a connection that went
//!   silent behind a cut link sits in TCP retransmission backoff for seconds after the link
//!   heals, so the node closes it when the detector marks the peer down
//!   ([`NetHandle::reconnect`]) and dials again on a short jittered backoff while it is below
//!   its target degree. A live peer's connection the node closes to mend it (half-open, lost
//!   subscription) is re-dialled until a new one is up, whatever the degree: else a reset
//!   between two nodes at their degree lost the link.
//! * Gossipsub only keeps connections alive while the peer is in the mesh; an idle timeout
//!   would otherwise tear down the very connections the failure detector and the mesh repair
//!   rely on. The idle timeout is long by design; connection *count* is bounded by the target
//!   degree and `connection_limits`, not by idleness.
//! * Publishing when no subscribed peer is known yet (just after start) is *not* an error:
//!   [`PublishStatus::NoPeers`] tells the caller the record was not sent, the durable store
//!   plus anti-entropy covers it, and nobody may claim "published to the network" from it.
//! * Every queue is bounded. When the event channel is full the loop never waits: gossip is
//!   reported `Ignore` (no score penalty for the sender, the message is simply not relayed by
//!   us) and counted, other events are counted and dropped; an inbound request whose event is
//!   dropped has its response channel dropped, so the requester fails fast instead of waiting.
//! * Message ids are the blake3 hash of the payload: identical records published by two nodes
//!   are one message, so duplicates are suppressed by content rather than by sender/sequence.
//!
//! # Hostile peers (issue 12, the network side)
//!
//! * **Bans** ([`NetHandle::ban`]): `allow_block_list` closes every connection to a banned
//!   peer and refuses its connections, inbound and dialled, until the ban ends (checked every
//!   [`BAN_TICK`]); a banned peer is also dropped from Kademlia and never re-dialled. At most
//!   [`MAX_BANS`] at once (the one ending soonest makes room, counted), each at most
//!   [`MAX_BAN`]. An inbound connection from a banned peer is refused after its handshake
//!   (the peer id is only known then), so a banned peer still costs one handshake per try.
//! * **Gossipsub peer scoring** is on and tuned for a quiet topic (see `peer_score_config`):
//!   invalid messages (the node's `Reject`) decide, and a peer whose score reaches the
//!   graylist *and* whose messages we rejected within [`REJECTION_MEMORY`] is banned for
//!   [`GRAYLIST_BAN`], checked on every rejection (a graylisted peer's messages are ignored,
//!   so its score decays back within a second and a periodic check alone can miss it) and
//!   every [`BAN_TICK`]. A graylist no rejection explains (P7: broken IWANT promises, which a
//!   one-way cut inflicts on an honest peer; issue 15) is left to gossipsub's own, decaying
//!   graylist and counted (`NetStats::graylisted_not_banned`). IP colocation scoring is off,
//!   on purpose.
//! * **Bounded inbound buffering**: an inbound sync request is read in chunks under a shared
//!   budget of [`MAX_INBOUND_BUFFERED_BYTES`], held until the node answers or drops the
//!   request ([`ResponseChannel`] carries the hold), and at most
//!   [`MAX_INBOUND_PER_CONNECTION`] are in progress per connection. The excess is refused
//!   and counted (`NetStats::inbound_over_*`); the requester sees a failed request.

mod bans;
mod behaviour;
mod codec;
mod config;
mod connections;
mod event_loop;
pub mod nat;
pub use nat::{NatConfig, NatStats, NatStatus};
mod probe_stream;
pub mod probe_wire;
mod probes;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
mod transport;
use probe_wire::{
    decode_probe, probe_goodbye, probe_ping, probe_ping_req, ProbeRequest, MAX_PROBE_BYTES,
    PROBE_ACK, PROBE_NACK,
};
pub mod swarm_metrics;

use bans::GraylistDecision;
pub use behaviour::spawn;
use behaviour::{split_peer_id, Behaviour, BehaviourEvent};
use codec::{InboundBudget, InboundGuard, InboundLimits, Payload, SyncCodec};
use config::{gossipsub_config, peer_score_config};
pub use config::{MeshParams, NetConfig, DUPLICATE_CACHE_TIME, GRAYLIST_THRESHOLD};
pub use connections::trim_above;
use connections::{jitter, Redial};
use event_loop::EventLoop;
use probes::{PendingProbe, PingFor, StreamPing};

use std::{
    collections::{HashMap, HashSet},
    io,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::{future::BoxFuture, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{
    allow_block_list, autonat,
    connection_limits::{self, ConnectionLimits},
    core::transport::ListenerId,
    dcutr,
    gossipsub::{self, MessageAcceptance, MessageAuthenticity, ValidationMode},
    identify,
    identity::Keypair,
    kad, mdns,
    multiaddr::Protocol,
    noise, relay,
    request_response::{self, OutboundRequestId, ProtocolSupport},
    swarm::{
        behaviour::toggle::Toggle,
        dial_opts::{DialOpts, PeerCondition},
        DialError, NetworkBehaviour, SwarmEvent,
    },
    tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, trace, warn};

/// Protocol name of the anti-entropy request/response protocol.
pub const SYNC_PROTOCOL: &str = "/dpin/sync/1";
/// The gossipsub topic records travel on. Its messages are *anonymous* (gossipsub's
/// `MessageAuthenticity::Anonymous` and `ValidationMode::Anonymous`: no author, sequence
/// number or envelope signature). Every payload is a record signed by its zone key and
/// verified by the node before it is forwarded, so the envelope signature proved nothing the
/// node relies on, and it cost a second ed25519 check per message at every node (about half
/// the verification CPU on the propagation path, issue 16), a signature at the origin and
/// ~110 bytes per copy. Message ids are the payload's hash, and peer scores and the ingest
/// budget use the peer a copy came *from*, never its claimed author. Version 1 of the topic
/// carried signed envelopes, which nodes of that version require (they reject and penalise an
/// unsigned message), so the topic's version changed with the format: nodes of the two
/// versions do not gossip to each other, and records still cross between them by
/// anti-entropy.
pub const GOSSIP_TOPIC: &str = "dpin/records/2";
/// Connections a node keeps by default ([`NetConfig::target_peers`]); the simulator models
/// the same degree.
pub const DEFAULT_TARGET_PEERS: usize = 12;
/// Protocol name of the failure detector's probes (direct and indirect, SWIM style).
pub const PROBE_PROTOCOL: &str = "/dpin/probe/1";
/// Kademlia protocol name: private to dpin so the DHT never merges with the public IPFS one.
pub const KAD_PROTOCOL: &str = "/dpin/kad/1.0.0";
/// Identify protocol version string advertised to peers: `/dpin/id/MAJOR.MINOR.PATCH`, the
/// version of dpin's protocol family. 1.1 and later take budgeted sync chunks (fetches and
/// pushes of up to `dpin_protocol::digest::MAX_RECORDS_PER_CHUNK` names or records, see
/// `dpin_protocol::sync`); 1.0 releases refuse more than 64 and hold it against the sender,
/// so the node sends budgeted chunks only to peers that advertised 1.1 or later
/// ([`takes_budgeted_chunks`]).
pub const IDENTIFY_PROTOCOL: &str = "/dpin/id/1.1.0";

/// Whether a peer that advertised `protocol_version` in identify takes budgeted sync chunks:
/// a dpin identify version of 1.1 or later (see [`IDENTIFY_PROTOCOL`]). Anything else (1.0,
/// a foreign or garbled string) gets the per-message cap every release takes.
pub fn takes_budgeted_chunks(protocol_version: &str) -> bool {
    let Some(version) = protocol_version.strip_prefix("/dpin/id/") else {
        return false;
    };
    let mut parts = version.split('.').map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => major > 1 || (major == 1 && minor >= 1),
        _ => false,
    }
}

/// Capacity of the command channel (handle -> event loop). Callers wait when it is full,
/// which is the backpressure we want for commands.
const COMMAND_CHANNEL_CAPACITY: usize = 1024;
/// Capacity of the event channel (event loop -> node). The loop never waits on it.
const EVENT_CHANNEL_CAPACITY: usize = 4096;
/// Outbound requests awaiting a response; beyond this `request` fails with `Busy`.
const MAX_PENDING_REQUESTS: usize = 1024;
/// Room for the gossipsub envelope around the payload: the topic and protobuf tags (anonymous
/// envelopes, see [`GOSSIP_TOPIC`]; a signed one would add a peer id, a sequence number and a
/// 64-byte signature). 1 KiB leaves a wide margin.
const GOSSIP_ENVELOPE_OVERHEAD: usize = 1024;
/// gossipsub's per-connection send queue (`connection_handler_queue_len`): half of it bounds
/// the publishes waiting for one peer, the other half is a *preallocated* ring of forwards and
/// IHAVE/IWANT gossip. gossipsub's default of 5000 costs ~580 KB of resident memory per
/// connection before a single message is sent (2500 slots of ~232 B, written at allocation;
/// measured with heaptrack, issue 16): that was most of a node's growth in memory with its
/// degree. On a link that keeps up the queue stays near empty; it fills only when a peer stops
/// reading (paused, hung, partitioned), and then its overflow is dropped, counted as
/// `dpin_net_gossip_undelivered_total`, and left to anti-entropy, which repairs a peer that
/// missed gossip anyway. 256 forwards is about two seconds of a busy writer's traffic.
const GOSSIP_QUEUE_LEN: usize = 512;
/// Lower bound of the gossipsub RPC frame size: control messages (IHAVE/IWANT lists) must fit
/// even when records are small.
const MIN_GOSSIP_FRAME: usize = 64 * 1024;
/// How long `spawn` waits for the first listen address.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many identify-reported addresses per peer go into the routing table, so a
/// peer cannot flood it.
const MAX_ADDRS_PER_PEER: usize = 8;
/// First re-dial delay after a peer was lost. Short: after a partition heals or a paused peer
/// resumes, the next fresh dial is what reconnects it (see [`Redial`]).
const REDIAL_MIN: Duration = Duration::from_millis(200);
/// Longest re-dial delay during the first [`REDIAL_FAST_FOR`]: a healed link is used again
/// within about this long.
const REDIAL_MAX: Duration = Duration::from_millis(800);
/// How long a lost peer is re-dialled at the fast rate.
const REDIAL_FAST_FOR: Duration = Duration::from_secs(60);
/// Re-dial delay after that (a peer that stays away costs one dial per this interval).
const REDIAL_SLOW: Duration = Duration::from_secs(5);
/// A lost peer is given up after this long; discovery finds it again if it comes back.
const REDIAL_GIVE_UP: Duration = Duration::from_secs(600);
/// Most peers re-dialled at once (a bound, not a target).
const MAX_REDIAL_PEERS: usize = 256;
/// Most peers whose dialable addresses we remember for re-dialling.
const MAX_ADDR_BOOK_PEERS: usize = 1024;
/// A discovery dial holds a slot of the target degree for at most this long. A dial into a
/// cut link hangs in SYN retransmissions until the kernel gives up (about 20 s on Linux),
/// and counted for all that time it kept the node from dialling the peers it can reach. A
/// handshake that has not completed in this long is over a link far slower than any the
/// node is built for; it goes on, and another dial may take the slot meanwhile (trimming
/// removes any surplus). Re-dials of lost peers hold no slot at all (see
/// [`connections::Dialing`]).
const DIAL_SLOT_HOLD: Duration = Duration::from_secs(2);
/// Outgoing dials whose start is remembered (a bound: the swarm's pending-dial limit is
/// `max_connections`, so this is only reached if dials never end); a dial beyond it holds
/// no slot.
const MAX_TRACKED_DIALS: usize = 1024;
/// How often the re-dial schedule is looked at (only while some peer is being re-dialled).
const REDIAL_TICK: Duration = Duration::from_millis(50);
/// A helper probing a target for someone else answers "no answer" (nack) after this long,
/// well inside the asker's indirect timeout (`DetectorConfig::indirect_timeout_ms`, 300 ms):
/// a nack that arrives in time tells the asker that the *target* is silent, not that the
/// asker itself is slow (Lifeguard's local health counts missing nacks).
const RELAY_NACK_AFTER: Duration = Duration::from_millis(150);
/// Probes (ours, and those we relay for others) in flight; beyond this new ones are dropped
/// and counted (the detector then judges by silence, which is what it does anyway).
const MAX_PENDING_PROBES: usize = 256;
/// Connections are trimmed back to the target degree once they exceed it by this fraction
/// of it (see [`trim_above`]): a quarter, at least two.
const TRIM_MARGIN_DIVISOR: usize = 4;
/// Smallest margin above the target before trimming starts (small targets, e.g. in tests).
const TRIM_MARGIN_MIN: usize = 2;
/// A peer we trimmed, or that trimmed us (it said goodbye), is not dialled again by
/// discovery or re-dialled for this long (unless the node is left with fewer than half its
/// target degree): without it, the two ends of a trimmed connection found each other again
/// through Kademlia within seconds and the trim was undone (measured before: 3,300
/// reconnects in 27 s among 40 idle nodes).
pub const RELEASE_COOLDOWN: Duration = Duration::from_secs(10 * 60);
/// Most peers remembered as released (a bound, not a target; the oldest release is
/// forgotten first beyond it).
const MAX_RELEASED: usize = 1024;
/// Kademlia bootstraps started by the maintenance tick are at least this far apart once the
/// routing table holds as many peers as the target degree (each bootstrap dials peers of its
/// own, which come on top of the degree and are trimmed after their grace period).
const KAD_BOOTSTRAP_MIN_GAP: Duration = Duration::from_secs(60);
/// A connection is never trimmed in its first seconds: a newcomer that bootstrapped through
/// us needs the time to learn other peers from Kademlia.
const TRIM_GRACE: Duration = Duration::from_secs(10);
/// The discovery tick slows down, doubling up to this, while the node holds its target
/// degree and nothing changes (and returns to `discovery_interval` when a peer is lost).
const DISCOVERY_MAX_INTERVAL: Duration = Duration::from_secs(30);
/// Kademlia's own periodic bootstrap (a backstop: the discovery tick bootstraps while the
/// node is below its target degree). Each one dials the closest peers it asks, whose
/// connections are then trimmed back to the degree: at libp2p's default of 5 minutes, 40 idle
/// nodes made 6.0 new connections per node per minute and 1,210 trims in 10 minutes (issue
/// 16), so it runs hourly.
const KAD_PERIODIC_BOOTSTRAP: Duration = Duration::from_secs(3600);
/// Most peers banned at once; past it the ban that would end soonest is dropped (and counted)
/// to make room, so rotating peer ids cannot grow the table without bound.
pub const MAX_BANS: usize = 1024;
/// Longest ban: a longer request is shortened to this.
pub const MAX_BAN: Duration = Duration::from_secs(24 * 3600);
/// How long a peer whose gossip score fell below the graylist threshold is banned.
pub const GRAYLIST_BAN: Duration = Duration::from_secs(15 * 60);
/// How long a message rejected by our own validation marks its sender as the cause of its
/// graylisting: the P4 count decays 10 % a second, so 30 s later a rejection is down to 4 %
/// and no longer explains a score at the graylist.
const REJECTION_MEMORY: Duration = Duration::from_secs(30);
/// Peers whose last rejection is remembered (the oldest is forgotten beyond this).
const MAX_REJECTING_PEERS: usize = 1024;
/// How often expired bans are lifted and gossip scores are checked against the graylist.
const BAN_TICK: Duration = Duration::from_secs(1);
/// Concurrent inbound anti-entropy requests per connection: beyond this a new inbound
/// request is refused before anything is read, and counted. Anti-entropy runs a few requests
/// per peer at a time; 256 (the old bound) let one connection hold 1 GiB of buffers.
pub const MAX_INBOUND_PER_CONNECTION: usize = 8;
/// Concurrent streams (inbound + outbound) libp2p lets one connection run for the sync
/// protocol. Above [`MAX_INBOUND_PER_CONNECTION`] so our own outbound requests still fit.
const MAX_SYNC_STREAMS_PER_CONNECTION: usize = 32;
/// Bytes of inbound requests buffered at once, across every connection, from the first byte
/// read until the node answers (or drops) the request. A request that would go beyond it is
/// refused and counted; eight requests of the largest size fit.
pub const MAX_INBOUND_BUFFERED_BYTES: usize = 32 * 1024 * 1024;
/// Read granularity of inbound requests (the budget is taken chunk by chunk, so a request
/// that is refused midway has held at most this much beyond the budget).
const READ_CHUNK: usize = 64 * 1024;

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration is unusable.
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    /// Building the transport or a behaviour failed.
    #[error("failed to build the swarm: {0}")]
    Build(String),
    /// Listening on an address failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// Address that failed.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// No listener produced an address in time, or all listeners closed.
    #[error("no listen address became available: {0}")]
    NoListenAddr(String),
    /// Dialing failed immediately.
    #[error("dial failed: {0}")]
    Dial(String),
    /// The peer has no established connection; requests never dial implicitly.
    #[error("peer {0} is not connected")]
    NotConnected(PeerId),
    /// A payload exceeds `max_message_bytes`.
    #[error("payload of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// Configured limit.
        max: usize,
    },
    /// The request timed out.
    #[error("request timed out")]
    Timeout,
    /// The connection closed before the response arrived.
    #[error("connection closed before the response arrived")]
    ConnectionClosed,
    /// The request failed for another reason (unsupported protocol, I/O, oversize response).
    #[error("request failed: {0}")]
    RequestFailed(String),
    /// Too many outbound requests are pending.
    #[error("too many pending requests")]
    Busy,
    /// The response could not be sent: the requester is gone or the request timed out.
    #[error("response channel closed")]
    ResponseChannelClosed,
    /// Gossipsub could not queue the message for any peer (all send queues full).
    #[error("all peer send queues are full ({0} peers)")]
    QueuesFull(usize),
    /// Publishing failed (signing or encoding).
    #[error("publish failed: {0}")]
    Publish(String),
    /// The event loop has stopped.
    #[error("network event loop has shut down")]
    Shutdown,
}

/// Outcome of [`NetHandle::publish`] when nothing went wrong locally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishStatus {
    /// Handed to at least one subscribed peer.
    Sent,
    /// No subscribed peer known yet: *not* sent. Anti-entropy must carry the record.
    NoPeers,
    /// The same payload (same content hash) was already published or received recently; the
    /// network already has it, so this is as good as `Sent`.
    Duplicate,
}

/// The node's verdict on a gossip message: decided by the protocol's ingest policy
/// ([`dpin_protocol::ingest::verdict`]), carried to gossipsub here.
pub use dpin_protocol::ingest::Verdict;

fn acceptance(v: Verdict) -> MessageAcceptance {
    match v {
        Verdict::Accept => MessageAcceptance::Accept,
        Verdict::Reject => MessageAcceptance::Reject,
        Verdict::Ignore => MessageAcceptance::Ignore,
    }
}

/// Where to send the answer to an inbound request; pass it to [`NetHandle::respond`].
/// Dropping it makes the requester fail promptly. While it exists, the request's bytes count
/// against [`MAX_INBOUND_BUFFERED_BYTES`] and its slot against
/// [`MAX_INBOUND_PER_CONNECTION`]: answer or drop it promptly.
#[derive(Debug)]
pub struct ResponseChannel {
    inner: request_response::ResponseChannel<Vec<u8>>,
    _guard: Option<InboundGuard>,
}

/// Events delivered to the node.
#[derive(Debug)]
pub enum NetEvent {
    /// A gossip message that must be validated; the node MUST answer with
    /// [`NetHandle::report_validation`] (unanswered messages expire from gossipsub's cache
    /// after about five seconds and are then never forwarded).
    Gossip {
        /// Peer that propagated the message to us (not necessarily its author).
        source: PeerId,
        /// Content-addressed message id (blake3 of `data`).
        message_id: gossipsub::MessageId,
        /// The payload.
        data: Vec<u8>,
    },
    /// An inbound anti-entropy request; answer with [`NetHandle::respond`].
    Request {
        /// Requesting peer.
        peer: PeerId,
        /// Request payload.
        data: Vec<u8>,
        /// Reply channel.
        channel: ResponseChannel,
    },
    /// First connection to a peer established.
    PeerConnected(PeerId),
    /// Last connection to a peer closed.
    PeerDisconnected(PeerId),
    /// A peer probed us (directly or for someone else): evidence that it is alive.
    Heard(PeerId),
    /// A peer probed us as one it watches (`dpin_protocol::liveness`): evidence that it is
    /// alive, and we watch it back.
    WatchedBy(PeerId),
    /// An answer to our probe `nonce` of `peer`, directly or relayed by a helper.
    ProbeAck {
        /// The probed peer.
        peer: PeerId,
        /// The probe's nonce.
        nonce: u64,
    },
    /// A helper could not get an answer from `target` for our round `nonce`.
    ProbeNack {
        /// The probed peer.
        target: PeerId,
        /// The round's nonce.
        nonce: u64,
    },
    /// A new local listen address.
    ListenAddr(Multiaddr),
    /// A peer's identify info arrived (on every connection and every push of it).
    Identified {
        /// The peer.
        peer: PeerId,
        /// Whether it takes budgeted sync chunks ([`takes_budgeted_chunks`]).
        budgeted_sync: bool,
    },
}

/// Why a peer is banned ([`NetHandle::ban`]); bans are counted by reason on [`NetStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BanReason {
    /// Its gossipsub score fell below the graylist threshold and our validation rejected
    /// its messages recently: banned by the network layer itself (a graylist without
    /// rejections, e.g. broken IWANT promises, is left to gossipsub: [`GraylistDecision`]).
    Graylisted,
    /// It went over its ingest budget (rate of records, requests or chunks).
    OverBudget,
    /// It sent invalid data outside gossip (bad sync answers, bad records in sync, bad blobs).
    Invalid,
}

impl BanReason {
    /// Every reason, in the order they are rendered.
    pub const ALL: [BanReason; 3] = [
        BanReason::Graylisted,
        BanReason::OverBudget,
        BanReason::Invalid,
    ];

    /// Label used on /metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BanReason::Graylisted => "graylisted",
            BanReason::OverBudget => "over_budget",
            BanReason::Invalid => "invalid",
        }
    }

    fn index(self) -> usize {
        match self {
            BanReason::Graylisted => 0,
            BanReason::OverBudget => 1,
            BanReason::Invalid => 2,
        }
    }
}

/// Counters of the network layer: events it had to drop because the node did not keep up,
/// connections trimmed, bans, and inbound requests refused by the buffering bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Gossip messages dropped (and reported `Ignore`) because the event channel was full.
    pub dropped_gossip: u64,
    /// Other events dropped because the event channel was full or closed.
    pub dropped_events: u64,
    /// Probes not sent (too many in flight, or the command queue was full) or whose probe
    /// stream failed before the answer came.
    pub dropped_probes: u64,
    /// Probe streams closed because the peer probed us faster than
    /// [`probe_stream::MAX_ECHOES_PER_S`].
    pub probe_floods: u64,
    /// Direct probes sent on a probe stream.
    pub probes_on_stream: u64,
    /// Direct probes sent as `/dpin/probe/1` requests (peers without the probe stream).
    pub probes_as_requests: u64,
    /// Connections closed to keep the node at its target degree.
    pub trimmed: u64,
    /// Connections peers closed to keep *their* degree (they said goodbye first).
    pub released_by_peer: u64,
    /// Connections established (first connection to a peer), for measuring churn.
    pub connected: u64,
    /// Dials to a released peer skipped because of [`RELEASE_COOLDOWN`].
    pub dials_skipped_released: u64,
    /// Peers whose every connection was closed and re-dialled because gossipsub never heard
    /// their subscription after they connected: at their first gossip
    /// (`EventLoop::gossip_from`) or after a grace (`connections::SubscribeChecks`).
    pub unsubscribed_resets: u64,
    /// Peers reconnected afresh because one re-dialled us while we held an older connection
    /// to it, left half-open by a cut.
    pub half_open_resets: u64,
    /// Bans started, by reason (indexed like [`BanReason::ALL`]).
    pub bans: [u64; 3],
    /// Peers banned right now.
    pub banned_now: u64,
    /// Bans dropped before their end to stay within [`MAX_BANS`].
    pub bans_evicted: u64,
    /// Connections (inbound or dialled) refused because the peer is banned.
    pub ban_refused: u64,
    /// Ban commands not delivered (the command queue was full; only `ban_nowait`).
    pub dropped_bans: u64,
    /// Peers found graylisted by gossipsub with no recent message rejected by our
    /// validation, so not banned ([`GraylistDecision::LeaveToGossipsub`]; once per graylist
    /// episode). The other decision is `bans_for(BanReason::Graylisted)`.
    pub graylisted_not_banned: u64,
    /// Inbound requests refused: the connection already had
    /// [`MAX_INBOUND_PER_CONNECTION`] in progress.
    pub inbound_over_connection_limit: u64,
    /// Inbound requests refused: [`MAX_INBOUND_BUFFERED_BYTES`] were buffered already.
    pub inbound_over_byte_budget: u64,
    /// Bytes of inbound requests buffered right now (read, not yet answered).
    pub inbound_buffered_bytes: u64,
    /// Gossip messages (publishes, forwards, IHAVE/IWANT) not queued for a peer because its
    /// connection's bounded send queue ([`GOSSIP_QUEUE_LEN`]) was full.
    pub gossip_queue_full: u64,
    /// Gossip messages dropped because they waited in a peer's queue past their deadline.
    pub gossip_timed_out: u64,
    /// TCP connections whose retransmission backoff was capped ([`transport::RETRANSMIT_BACKOFF_CAP_MS`]).
    pub tcp_backoff_capped: u64,
    /// TCP connections that keep the system's backoff (the kernel lacks the option).
    pub tcp_backoff_uncapped: u64,
}

impl NetStats {
    /// Bans started for `reason`.
    pub fn bans_for(&self, reason: BanReason) -> u64 {
        self.bans[reason.index()]
    }

    /// The counters as JSON (for status).
    pub fn to_json(&self) -> serde_json::Value {
        let bans: serde_json::Map<String, serde_json::Value> = BanReason::ALL
            .iter()
            .map(|r| (r.as_str().to_owned(), self.bans_for(*r).into()))
            .collect();
        serde_json::json!({
            "dropped_gossip": self.dropped_gossip,
            "dropped_events": self.dropped_events,
            "dropped_probes": self.dropped_probes,
            "probe_floods": self.probe_floods,
            "probes_on_stream": self.probes_on_stream,
            "probes_as_requests": self.probes_as_requests,
            "trimmed": self.trimmed,
            "released_by_peer": self.released_by_peer,
            "connected": self.connected,
            "dials_skipped_released": self.dials_skipped_released,
            "unsubscribed_resets": self.unsubscribed_resets,
            "half_open_resets": self.half_open_resets,
            "bans": bans,
            "banned_now": self.banned_now,
            "bans_evicted": self.bans_evicted,
            "ban_refused": self.ban_refused,
            "dropped_bans": self.dropped_bans,
            "graylisted_not_banned": self.graylisted_not_banned,
            "inbound_over_connection_limit": self.inbound_over_connection_limit,
            "inbound_over_byte_budget": self.inbound_over_byte_budget,
            "inbound_buffered_bytes": self.inbound_buffered_bytes,
            "gossip_queue_full": self.gossip_queue_full,
            "gossip_timed_out": self.gossip_timed_out,
            "tcp_backoff_capped": self.tcp_backoff_capped,
            "tcp_backoff_uncapped": self.tcp_backoff_uncapped,
        })
    }
}

#[derive(Debug, Default)]
struct Counters {
    dropped_gossip: AtomicU64,
    unsubscribed_resets: AtomicU64,
    half_open_resets: AtomicU64,
    dropped_events: AtomicU64,
    dropped_probes: AtomicU64,
    probe_floods: AtomicU64,
    probes_on_stream: AtomicU64,
    probes_as_requests: AtomicU64,
    trimmed: AtomicU64,
    released_by_peer: AtomicU64,
    connected: AtomicU64,
    dials_skipped_released: AtomicU64,
    bans: [AtomicU64; 3],
    banned_now: AtomicU64,
    bans_evicted: AtomicU64,
    ban_refused: AtomicU64,
    dropped_bans: AtomicU64,
    graylisted_not_banned: AtomicU64,
    gossip_queue_full: AtomicU64,
    gossip_timed_out: AtomicU64,
}

enum Command {
    Publish {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<PublishStatus, NetError>>,
    },
    ReportValidation {
        message_id: gossipsub::MessageId,
        source: PeerId,
        verdict: Verdict,
    },
    Request {
        peer: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
    },
    Respond {
        channel: ResponseChannel,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Reconnect {
        peer: PeerId,
        reply: oneshot::Sender<()>,
    },
    Ban {
        peer: PeerId,
        duration: Duration,
        reason: BanReason,
        reply: Option<oneshot::Sender<()>>,
    },
    Probe {
        peer: PeerId,
        nonce: u64,
        watch: bool,
    },
    ProbeVia {
        helper: PeerId,
        target: PeerId,
        nonce: u64,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// Trim the connection to `peer` now, as `trim` would (tests only: the trim choice is
    /// tested apart, this drives a release on demand).
    #[cfg(test)]
    Trim {
        peer: PeerId,
        reply: oneshot::Sender<()>,
    },
}

/// Cloneable handle to the network event loop.
#[derive(Clone, Debug)]
pub struct NetHandle {
    commands: mpsc::Sender<Command>,
    local_peer_id: PeerId,
    max_message_bytes: usize,
    max_request_bytes: usize,
    counters: Arc<Counters>,
    inbound: Arc<InboundBudget>,
    backoff: Arc<transport::Backoff>,
    released: Arc<Released>,
    nat: Arc<nat::NatCounters>,
}

/// Peers whose last connection closed because one side trimmed it to keep its degree (see
/// [`NetHandle::take_released`]); written by the event loop *before* it emits the
/// [`NetEvent::PeerDisconnected`], so the node always finds the peer here when it handles
/// that event. Bounded by [`MAX_RELEASED`].
#[derive(Debug, Default)]
struct Released(std::sync::Mutex<HashSet<PeerId>>);

impl Released {
    fn insert(&self, peer: PeerId) {
        let mut set = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if set.len() >= MAX_RELEASED {
            // Nobody took them: the node does not use this; keep the bound.
            set.clear();
        }
        set.insert(peer);
    }

    fn take(&self, peer: &PeerId) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(peer)
    }
}

impl NetHandle {
    /// Whether the [`NetEvent::PeerDisconnected`] of `peer` being handled was a *release*: a
    /// connection closed on purpose to keep a degree (ours or the peer's), not a lost peer.
    /// Such a peer is not down and should be forgotten by the failure detector
    /// (`Detector::released`), not counted as a known-but-down peer for ten minutes (which
    /// would make a node that trimmed many connections judge itself cut off). Call it once
    /// per `PeerDisconnected`; it consumes the mark.
    pub fn take_released(&self, peer: &PeerId) -> bool {
        self.released.take(peer)
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Discovery and NAT state: AutoNAT's verdict, relay reservations and circuits, hole
    /// punches, mDNS ([`nat`]).
    pub fn nat_stats(&self) -> NatStats {
        self.nat.snapshot()
    }

    /// Counters of dropped events.
    pub fn stats(&self) -> NetStats {
        NetStats {
            dropped_gossip: self.counters.dropped_gossip.load(Ordering::Relaxed),
            dropped_events: self.counters.dropped_events.load(Ordering::Relaxed),
            dropped_probes: self.counters.dropped_probes.load(Ordering::Relaxed),
            probe_floods: self.counters.probe_floods.load(Ordering::Relaxed),
            probes_on_stream: self.counters.probes_on_stream.load(Ordering::Relaxed),
            probes_as_requests: self.counters.probes_as_requests.load(Ordering::Relaxed),
            trimmed: self.counters.trimmed.load(Ordering::Relaxed),
            released_by_peer: self.counters.released_by_peer.load(Ordering::Relaxed),
            connected: self.counters.connected.load(Ordering::Relaxed),
            dials_skipped_released: self.counters.dials_skipped_released.load(Ordering::Relaxed),
            unsubscribed_resets: self.counters.unsubscribed_resets.load(Ordering::Relaxed),
            half_open_resets: self.counters.half_open_resets.load(Ordering::Relaxed),
            bans: [0, 1, 2].map(|i| self.counters.bans[i].load(Ordering::Relaxed)),
            banned_now: self.counters.banned_now.load(Ordering::Relaxed),
            bans_evicted: self.counters.bans_evicted.load(Ordering::Relaxed),
            ban_refused: self.counters.ban_refused.load(Ordering::Relaxed),
            dropped_bans: self.counters.dropped_bans.load(Ordering::Relaxed),
            graylisted_not_banned: self.counters.graylisted_not_banned.load(Ordering::Relaxed),
            inbound_over_connection_limit: self
                .inbound
                .over_connection_limit
                .load(Ordering::Relaxed),
            inbound_over_byte_budget: self.inbound.over_byte_budget.load(Ordering::Relaxed),
            inbound_buffered_bytes: self.inbound.buffered.load(Ordering::Relaxed) as u64,
            gossip_queue_full: self.counters.gossip_queue_full.load(Ordering::Relaxed),
            gossip_timed_out: self.counters.gossip_timed_out.load(Ordering::Relaxed),
            tcp_backoff_capped: self.backoff.capped.load(Ordering::Relaxed),
            tcp_backoff_uncapped: self.backoff.uncapped.load(Ordering::Relaxed),
        }
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetError::Shutdown)?;
        rx.await.map_err(|_| NetError::Shutdown)
    }

    fn check_size(data: &[u8], max: usize) -> Result<(), NetError> {
        if data.len() > max {
            return Err(NetError::TooLarge {
                size: data.len(),
                max,
            });
        }
        Ok(())
    }

    /// Publishes `data` on the gossip topic. `NoPeers` is not an error (see [`PublishStatus`]).
    pub async fn publish(&self, data: Vec<u8>) -> Result<PublishStatus, NetError> {
        Self::check_size(&data, self.max_message_bytes)?;
        self.call(|reply| Command::Publish { data, reply }).await?
    }

    /// Reports the node's verdict on a [`NetEvent::Gossip`]; `Accept` forwards it. Returns
    /// once the verdict is queued for the event loop (which applies it in order with every
    /// other command). Succeeds even if the message already expired from the cache (it is
    /// then not forwarded).
    pub async fn report_validation(
        &self,
        message_id: gossipsub::MessageId,
        source: PeerId,
        verdict: Verdict,
    ) -> Result<(), NetError> {
        // Queued, not awaited: the forward happens when the event loop takes the command,
        // and the caller's next message need not wait for the loop's turn.
        self.commands
            .send(Command::ReportValidation {
                message_id,
                source,
                verdict,
            })
            .await
            .map_err(|_| NetError::Shutdown)
    }

    /// Sends a request to a connected peer and awaits its response. Fails fast (without
    /// dialing) if the peer is not connected; fails after `request_timeout` otherwise.
    pub async fn request(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, NetError> {
        Self::check_size(&data, self.max_request_bytes)?;
        self.call(|reply| Command::Request { peer, data, reply })
            .await?
    }

    /// Answers an inbound [`NetEvent::Request`].
    pub async fn respond(&self, channel: ResponseChannel, data: Vec<u8>) -> Result<(), NetError> {
        Self::check_size(&data, self.max_request_bytes)?;
        self.call(|reply| Command::Respond {
            channel,
            data,
            reply,
        })
        .await?
    }

    /// Peers with at least one established connection.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, NetError> {
        self.call(|reply| Command::ConnectedPeers { reply }).await
    }

    /// Current local listen addresses.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.call(|reply| Command::ListenAddrs { reply }).await
    }

    /// Starts dialing `addr` (with or without a `/p2p/` suffix). Returns once the dial is
    /// started; [`NetEvent::PeerConnected`] reports success.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    /// Closes every connection to `peer` and re-dials it on a short, bounded, jittered
    /// backoff until a connection is established again, while the node is below its target
    /// degree. The failure detector calls this when
    /// it marks a connected peer down: a connection that went silent (a cut link, a paused
    /// process) is stuck in TCP retransmission backoff — after a long cut the next
    /// retransmission may be seconds away — while a fresh connection works as soon as packets
    /// flow again.
    pub async fn reconnect(&self, peer: PeerId) -> Result<(), NetError> {
        self.call(|reply| Command::Reconnect { peer, reply }).await
    }

    /// Trims the connection to `peer` now (goodbye, release, close), whatever the degree.
    #[cfg(test)]
    async fn trim(&self, peer: PeerId) -> Result<(), NetError> {
        self.call(|reply| Command::Trim { peer, reply }).await
    }

    /// Sends the failure detector's probe `nonce` to `peer`; the answer comes back as
    /// [`NetEvent::ProbeAck`]. `watch`: our detector watches `peer`, which is told so (the
    /// probe carries [`probe_stream::WATCH_BIT`]) and watches us back. Never waits: if the loop
    /// is saturated the probe is dropped and counted (the detector judges by silence anyway).
    pub fn probe(&self, peer: PeerId, nonce: u64, watch: bool) {
        self.send_nowait(Command::Probe { peer, nonce, watch });
    }

    /// Asks `helper` to probe `target` for us (SWIM's ping-req); the outcome comes back as
    /// [`NetEvent::ProbeAck`] (for `target`) or [`NetEvent::ProbeNack`].
    pub fn probe_via(&self, helper: PeerId, target: PeerId, nonce: u64) {
        self.send_nowait(Command::ProbeVia {
            helper,
            target,
            nonce,
        });
    }

    /// Bans `peer` for `duration` (at most [`MAX_BAN`]): closes every connection to it at
    /// once, and refuses its connections, inbound and dialled, until the ban ends. Banning a
    /// banned peer again extends the ban if the new one ends later. At most [`MAX_BANS`]
    /// peers are banned at once. Counted by `reason` on [`NetStats`].
    pub async fn ban(
        &self,
        peer: PeerId,
        duration: Duration,
        reason: BanReason,
    ) -> Result<(), NetError> {
        self.call(|reply| Command::Ban {
            peer,
            duration,
            reason,
            reply: Some(reply),
        })
        .await
    }

    /// [`NetHandle::ban`] for callers that cannot wait (e.g. holding a lock): never blocks;
    /// if the command queue is full the ban is dropped and counted (`dropped_bans`).
    pub fn ban_nowait(&self, peer: PeerId, duration: Duration, reason: BanReason) {
        let command = Command::Ban {
            peer,
            duration,
            reason,
            reply: None,
        };
        if self.commands.try_send(command).is_err() {
            self.counters.dropped_bans.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn send_nowait(&self, command: Command) {
        if self.commands.try_send(command).is_err() {
            self.counters.dropped_probes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stops the event loop and closes all connections. Other handles then get
    /// [`NetError::Shutdown`]. (The loop also stops when every handle is dropped.)
    pub async fn shutdown(&self) -> Result<(), NetError> {
        self.call(|reply| Command::Shutdown { reply }).await
    }
}
