//! libp2p's own metrics (`libp2p-metrics`): the event loop hands every swarm event to
//! [`SwarmMetrics::record`], which feeds the swarm, gossipsub, Kademlia and identify recorders
//! registered in the node's one registry ([`crate::metrics::Builder::libp2p`]).
//!
//! dpin runs no libp2p ping behaviour (liveness is its own probes, `dpin_detector_*` and
//! `dpin_net_probes_*`), so the `libp2p_ping_*` families are registered but stay empty.
//!
//! Bounds: libp2p-metrics labels address-related families by the address's protocol stack
//! (`/ip4/tcp/p2p`). Addresses a peer reports about itself or us (identify listen and observed
//! addresses, and the external-address candidates identify derives from them) could carry any
//! stack, so they are reduced to the stacks this node can speak first (IP or DNS, then TCP or
//! QUIC v1, then an optional `/p2p`: at most 20 label values): other listen addresses are left
//! out, another observed address is recorded as the empty address, and external-address
//! candidates (peer-reported) are not recorded at all.

use std::fmt;
use std::sync::Arc;

use libp2p::metrics::{Metrics, Recorder};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, Multiaddr};
use prometheus_client::registry::Registry;

use super::BehaviourEvent;

/// The libp2p recorders, shared by the event loop and whoever built the registry.
#[derive(Clone)]
pub struct SwarmMetrics(Arc<Metrics>);

impl fmt::Debug for SwarmMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SwarmMetrics")
    }
}

impl SwarmMetrics {
    /// Registers libp2p's families (prefix `libp2p_`) in `registry`.
    pub(crate) fn new(registry: &mut Registry) -> Self {
        Self(Arc::new(Metrics::new(registry)))
    }

    /// Records one swarm event (and the behaviour event inside it).
    pub(super) fn record(&self, event: &SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => self.0.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Kademlia(e)) => self.0.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.record_identify(e),
            SwarmEvent::Behaviour(BehaviourEvent::RelayServer(e)) => self.0.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => self.0.record(e),
            SwarmEvent::Behaviour(_) => {}
            // The candidate is an address a peer says it saw us at: see the module docs.
            SwarmEvent::NewExternalAddrCandidate { .. } => {}
            other => self.0.record(other),
        }
    }

    fn record_identify(&self, event: &identify::Event) {
        match event {
            identify::Event::Received {
                connection_id,
                peer_id,
                info,
            } => {
                let mut info = info.clone();
                info.listen_addrs.retain(speakable);
                if !speakable(&info.observed_addr) {
                    info.observed_addr = Multiaddr::empty();
                }
                self.0.record(&identify::Event::Received {
                    connection_id: *connection_id,
                    peer_id: *peer_id,
                    info,
                });
            }
            other => self.0.record(other),
        }
    }
}

/// Whether `a`'s protocol stack is one this node's transports speak: IP or DNS, then TCP or
/// UDP + QUIC v1, then an optional `/p2p`.
fn speakable(a: &Multiaddr) -> bool {
    let mut it = a.iter();
    let host = matches!(
        it.next(),
        Some(
            Protocol::Ip4(_)
                | Protocol::Ip6(_)
                | Protocol::Dns(_)
                | Protocol::Dns4(_)
                | Protocol::Dns6(_)
        )
    );
    let transport = match it.next() {
        Some(Protocol::Tcp(_)) => true,
        Some(Protocol::Udp(_)) => matches!(it.next(), Some(Protocol::QuicV1)),
        _ => false,
    };
    let tail = match it.next() {
        None => true,
        Some(Protocol::P2p(_)) => it.next().is_none(),
        Some(_) => false,
    };
    host && transport && tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stacks_this_node_speaks_are_kept_as_labels() {
        let ok = |s: &str| speakable(&s.parse::<Multiaddr>().expect("multiaddr"));
        assert!(ok("/ip4/10.0.0.1/tcp/7001"));
        assert!(ok("/ip6/::1/udp/7001/quic-v1"));
        assert!(ok(
            "/dns4/a.example/tcp/7001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
        ));
        assert!(!ok("/ip4/10.0.0.1/tcp/7001/ws"));
        assert!(!ok("/ip4/10.0.0.1/tcp/7001/tls/ws/tls/ws"));
        assert!(!ok("/ip4/10.0.0.1/udp/7001"));
        assert!(!ok(""));
    }
}
