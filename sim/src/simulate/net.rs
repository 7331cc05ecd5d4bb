//! The network model: who can talk to whom, how long a message takes, and what is lost.
//!
//! * Latency: every message takes `latency_ms` plus a uniform draw in `[0, jitter_ms]`. There
//!   is no per-link FIFO: a later message may overtake an earlier one, as on two connections.
//! * Loss: each message is dropped with probability `loss`. Gossip and IHAVE/IWANT simply
//!   vanish; a lost sync request or answer ends that session at the request timeout, as a
//!   reset connection would.
//! * Partitions: every node has a side; messages between sides are dropped when sent and when
//!   they arrive (a cut also eats what is in flight).
//! * Bytes: sync messages are charged their real encoded size (`SyncRequest::encode` /
//!   `SyncResponse::encode`); a gossip message is the record's encoded size plus
//!   [`GOSSIP_FRAME_BYTES`]; IHAVE/IWANT are [`CONTROL_FRAME_BYTES`] plus 32 bytes per id.

use rand::Rng;

use super::rng::SimRng;
use super::NodeId;

/// Estimated gossipsub framing of one published message: protobuf RPC envelope, topic,
/// `from` peer id (38 B), seqno (8 B), ed25519 message signature (64 B).
pub const GOSSIP_FRAME_BYTES: u64 = 140;
/// Estimated framing of one IHAVE or IWANT control message (RPC envelope and topic).
pub const CONTROL_FRAME_BYTES: u64 = 24;
/// Bytes per message id in IHAVE/IWANT (the node uses blake3 of the payload as the id).
pub const MESSAGE_ID_BYTES: u64 = 32;

/// Latency, loss and partitions.
pub struct NetModel {
    /// Fixed part of every message's delay.
    pub latency_ms: u64,
    /// Uniform jitter added on top, `[0, jitter_ms]`.
    pub jitter_ms: u64,
    /// Probability that one message is lost.
    pub loss: f64,
    side: Option<Vec<u8>>,
    rng: SimRng,
}

impl NetModel {
    /// A fully connected network.
    pub fn new(latency_ms: u64, jitter_ms: u64, loss: f64, rng: SimRng) -> Self {
        Self {
            latency_ms,
            jitter_ms,
            loss: loss.clamp(0.0, 1.0),
            side: None,
            rng,
        }
    }

    /// Cuts the network: nodes talk only within their side (nodes beyond `sides` are side 0).
    pub fn partition(&mut self, sides: Vec<u8>) {
        self.side = Some(sides);
    }

    /// Removes every cut.
    pub fn heal(&mut self) {
        self.side = None;
    }

    /// Whether a partition is in force.
    pub fn is_partitioned(&self) -> bool {
        self.side.is_some()
    }

    /// Whether `a` and `b` are on the same side.
    pub fn can_talk(&self, a: NodeId, b: NodeId) -> bool {
        match &self.side {
            None => true,
            Some(s) => {
                let side = |n: NodeId| s.get(n as usize).copied().unwrap_or(0);
                side(a) == side(b)
            }
        }
    }

    /// Delay of one message.
    pub fn delay(&mut self) -> u64 {
        let jitter = if self.jitter_ms > 0 {
            self.rng.gen_range(0..=self.jitter_ms)
        } else {
            0
        };
        self.latency_ms + jitter
    }

    /// Whether one message is lost.
    pub fn lost(&mut self) -> bool {
        self.loss > 0.0 && self.rng.gen::<f64>() < self.loss
    }
}
