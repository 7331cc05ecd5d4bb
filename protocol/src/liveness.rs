//! Peer failure detection, much faster than libp2p ping's defaults and without flapping.
//!
//! The node pings every peer every 500 ms with a 1 s timeout (`dpin_node::net::NetConfig`).
//! A SIGKILLed peer closes its TCP connections and is marked down at once; a paused (SIGSTOP),
//! hung or cut-off peer keeps its connection open, so silence is the only signal. The
//! detector is SWIM/Lifeguard-flavoured but fully local:
//!
//! * **evidence of life** is any successful ping or any message from the peer (gossip it
//!   forwarded, a sync request): a busy peer that is slow to answer pings but still talks is
//!   not dead;
//! * **suspicion**: after [`DetectorConfig::suspect_after`] of silence the peer is `suspect`
//!   (still served, still synced);
//! * **confirmation**: it is marked `down` only if the silence lasts on to
//!   [`DetectorConfig::down_after`], i.e. through at least one more ping interval after the
//!   suspicion (libp2p's own ping failure reports cannot be used for this: the first timeout
//!   is silent and the next one waits for a 10 s stream negotiation timeout);
//! * **local health** (Lifeguard's insight): if the detector itself ran late (our process was
//!   starved or paused), the silence it measured is not the peers' fault, so every peer's
//!   silence clock is restarted instead of mass-declaring them dead.
//!
//! The detector is a sans-IO state machine: generic over the peer id (libp2p's `PeerId` in
//! the node, a plain index in the simulator) and driven with explicit monotonic milliseconds
//! (`now_ms`, from any clock that never steps back: the node uses the time since it started,
//! the simulator its virtual time), so it is tested deterministically and runs unchanged in
//! both. The node feeds it events and ticks it every 100 ms.
//!
//! A failed ping is not counted as evidence by itself: libp2p reports the first timeout late
//! and inconsistently, so silence measured from the last evidence of life is the one signal.

use std::collections::BTreeMap;
use std::time::Duration;

/// Liveness of a peer as others see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerStatus {
    /// Recently heard from.
    Alive,
    /// Silent for a while; not yet confirmed down.
    Suspect,
    /// Disconnected, or silent past the confirmation bound with a failed ping.
    Down,
}

impl PeerStatus {
    /// `alive`, `suspect` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerStatus::Alive => "alive",
            PeerStatus::Suspect => "suspect",
            PeerStatus::Down => "down",
        }
    }
}

/// Detector thresholds, in milliseconds of the monotonic clock the driver passes in.
#[derive(Clone, Copy, Debug)]
pub struct DetectorConfig {
    /// Silence after which a peer is suspect.
    pub suspect_after_ms: u64,
    /// Silence after which a suspect is confirmed down.
    pub down_after_ms: u64,
    /// A tick later than this means we were starved; restart silence clocks.
    pub max_tick_lateness_ms: u64,
    /// Most peers tracked (the oldest down peer is forgotten beyond this).
    pub max_peers: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            suspect_after_ms: 1000,
            down_after_ms: 1500,
            max_tick_lateness_ms: 400,
            max_peers: 1024,
        }
    }
}

/// What the detector knows about one peer.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Current status.
    pub status: PeerStatus,
    /// Monotonic time of the last status change (the driver converts it for display).
    pub since_ms: u64,
    /// Whether a connection is established.
    pub connected: bool,
    /// Last evidence of life (monotonic ms).
    pub last_heard_ms: u64,
    /// Last ping round trip.
    pub rtt: Option<Duration>,
}

/// The failure detector, generic over the peer id.
#[derive(Debug)]
pub struct Detector<P> {
    config: DetectorConfig,
    peers: BTreeMap<P, PeerInfo>,
    last_tick_ms: Option<u64>,
}

/// A status change to act on (e.g. sync with a peer that came back): peer, old, new.
pub type Transition<P> = (P, PeerStatus, PeerStatus);

impl<P: Ord + Copy> Detector<P> {
    /// A detector with `config`.
    pub fn new(config: DetectorConfig) -> Self {
        Self {
            config,
            peers: BTreeMap::new(),
            last_tick_ms: None,
        }
    }

    /// Every tracked peer.
    pub fn peers(&self) -> &BTreeMap<P, PeerInfo> {
        &self.peers
    }

    /// Status of one peer (`None` if never seen).
    pub fn status(&self, peer: &P) -> Option<PeerStatus> {
        self.peers.get(peer).map(|p| p.status)
    }

    fn set(&mut self, peer: P, status: PeerStatus, now_ms: u64) -> Option<Transition<P>> {
        let p = self.peers.get_mut(&peer)?;
        if p.status == status {
            return None;
        }
        let old = p.status;
        p.status = status;
        p.since_ms = now_ms;
        Some((peer, old, status))
    }

    fn entry(&mut self, peer: P, now_ms: u64) -> &mut PeerInfo {
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.config.max_peers {
            // Forget a down peer to stay bounded; if none is down, the oldest-heard one.
            let victim = self
                .peers
                .iter()
                .min_by_key(|(_, p)| (p.status != PeerStatus::Down, p.last_heard_ms))
                .map(|(id, _)| *id);
            if let Some(v) = victim {
                self.peers.remove(&v);
            }
        }
        self.peers.entry(peer).or_insert(PeerInfo {
            status: PeerStatus::Down,
            since_ms: now_ms,
            connected: false,
            last_heard_ms: now_ms,
            rtt: None,
        })
    }

    /// Evidence of life (successful ping or any message).
    pub fn heard(&mut self, peer: P, now_ms: u64) -> Option<Transition<P>> {
        let p = self.entry(peer, now_ms);
        p.last_heard_ms = p.last_heard_ms.max(now_ms);
        if p.connected {
            self.set(peer, PeerStatus::Alive, now_ms)
        } else {
            None
        }
    }

    /// A connection was established.
    pub fn connected(&mut self, peer: P, now_ms: u64) -> Option<Transition<P>> {
        self.entry(peer, now_ms).connected = true;
        self.heard(peer, now_ms)
    }

    /// The last connection closed: down at once (a closed connection is not a guess).
    pub fn disconnected(&mut self, peer: P, now_ms: u64) -> Option<Transition<P>> {
        self.entry(peer, now_ms).connected = false;
        self.set(peer, PeerStatus::Down, now_ms)
    }

    /// A ping result: a round trip is evidence of life; a failure is not evidence of death
    /// (silence is judged by [`Detector::tick`]).
    pub fn ping(&mut self, peer: P, rtt: Option<Duration>, now_ms: u64) -> Option<Transition<P>> {
        let rtt = rtt?;
        self.entry(peer, now_ms).rtt = Some(rtt);
        self.heard(peer, now_ms)
    }

    /// Re-evaluates every peer at `now_ms`; returns the status changes.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Transition<P>> {
        let late = self
            .last_tick_ms
            .is_some_and(|t| now_ms.saturating_sub(t) > self.config.max_tick_lateness_ms);
        self.last_tick_ms = Some(now_ms);
        if late {
            // We were not running; nobody's silence can be judged. Restart the clocks.
            for p in self.peers.values_mut() {
                p.last_heard_ms = now_ms;
            }
            return Vec::new();
        }
        let cfg = self.config;
        let mut changes = Vec::new();
        let ids: Vec<P> = self.peers.keys().copied().collect();
        for id in ids {
            let Some(p) = self.peers.get(&id) else {
                continue;
            };
            if !p.connected {
                continue;
            }
            let silence = now_ms.saturating_sub(p.last_heard_ms);
            let next = if silence >= cfg.down_after_ms {
                PeerStatus::Down
            } else if silence >= cfg.suspect_after_ms {
                if p.status == PeerStatus::Down {
                    PeerStatus::Down
                } else {
                    PeerStatus::Suspect
                }
            } else {
                PeerStatus::Alive
            };
            if let Some(t) = self.set(id, next, now_ms) {
                changes.push(t);
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Drives a detector with 100 ms ticks from `from` to `to` (ms offsets from `t0`).
    fn run(d: &mut Detector<u32>, t0: u64, from: u64, to: u64) {
        let mut t = from;
        while t <= to {
            d.tick(t0 + t);
            t += 100;
        }
    }

    #[test]
    fn paused_peer_is_suspected_then_marked_down_within_two_seconds() {
        let mut d = Detector::new(DetectorConfig::default());
        let p = 7u32;
        let t0 = 5_000u64;
        d.connected(p, t0);
        run(&mut d, t0, 0, 900);
        assert_eq!(d.status(&p), Some(PeerStatus::Alive));
        run(&mut d, t0, 1000, 1400);
        assert_eq!(d.status(&p), Some(PeerStatus::Suspect));
        d.ping(p, None, t0 + 1450);
        run(&mut d, t0, 1500, 1600);
        assert_eq!(d.status(&p), Some(PeerStatus::Down));
    }

    #[test]
    fn a_slow_but_answering_peer_is_never_marked_down() {
        let mut d = Detector::new(DetectorConfig::default());
        let p = 7u32;
        let t0 = 5_000u64;
        d.connected(p, t0);
        // Pings answered every 900 ms (slow machine): suspicion never turns into "down".
        let mut t = 0;
        while t <= 10_000 {
            if t % 900 == 0 {
                d.ping(p, Some(ms(400)), t0 + t);
            }
            d.tick(t0 + t);
            assert_ne!(d.status(&p), Some(PeerStatus::Down), "at {t} ms");
            t += 100;
        }
    }

    #[test]
    fn a_starved_detector_does_not_declare_peers_dead() {
        let mut d = Detector::new(DetectorConfig::default());
        let p = 7u32;
        let t0 = 5_000u64;
        d.connected(p, t0);
        d.tick(t0);
        d.ping(p, None, t0 + 100);
        // Our own process stalls for 3 s (e.g. paused or starved): one very late tick.
        assert!(d.tick(t0 + 3000).is_empty());
        assert_eq!(d.status(&p), Some(PeerStatus::Alive));
    }

    #[test]
    fn recovered_peer_is_alive_again_and_disconnect_is_immediately_down() {
        let mut d = Detector::new(DetectorConfig::default());
        let p = 7u32;
        let t0 = 5_000u64;
        d.connected(p, t0);
        d.ping(p, None, t0 + 1200);
        run(&mut d, t0, 0, 1600);
        assert_eq!(d.status(&p), Some(PeerStatus::Down));
        let t = d.ping(p, Some(ms(1)), t0 + 1650);
        assert_eq!(t, Some((p, PeerStatus::Down, PeerStatus::Alive)));
        let t = d.disconnected(p, t0 + 1700);
        assert_eq!(t, Some((p, PeerStatus::Alive, PeerStatus::Down)));
    }

    #[test]
    fn tracked_peers_are_bounded() {
        let mut d = Detector::new(DetectorConfig {
            max_peers: 4,
            ..DetectorConfig::default()
        });
        let t0 = 5_000u64;
        for p in 0..10u32 {
            d.connected(p, t0);
        }
        assert_eq!(d.peers().len(), 4);
    }
}
