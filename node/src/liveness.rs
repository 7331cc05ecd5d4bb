//! Peer failure detection, much faster than libp2p ping's defaults and without flapping.
//!
//! libp2p pings every peer every 500 ms with a 1 s timeout (see [`crate::net::NetConfig`]).
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
//! The detector is a pure state machine driven with explicit `Instant`s, so it is tested
//! deterministically; the node feeds it events and ticks it every 100 ms.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use libp2p::PeerId;

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

/// Detector thresholds.
#[derive(Clone, Copy, Debug)]
pub struct DetectorConfig {
    /// Silence after which a peer is suspect.
    pub suspect_after: Duration,
    /// Silence after which a suspect is confirmed down.
    pub down_after: Duration,
    /// A tick later than this means we were starved; restart silence clocks.
    pub max_tick_lateness: Duration,
    /// Most peers tracked (the oldest down peer is forgotten beyond this).
    pub max_peers: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            suspect_after: Duration::from_millis(1000),
            down_after: Duration::from_millis(1500),
            max_tick_lateness: Duration::from_millis(400),
            max_peers: 1024,
        }
    }
}

/// What the detector knows about one peer.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Current status.
    pub status: PeerStatus,
    /// Wall-clock time of the last status change (for `status` output).
    pub since: SystemTime,
    /// Whether a connection is established.
    pub connected: bool,
    /// Last evidence of life.
    pub last_heard: Instant,
    /// Pings that timed out since the last evidence.
    pub failed_pings: u32,
    /// Last ping round trip.
    pub rtt: Option<Duration>,
}

/// The failure detector.
#[derive(Debug)]
pub struct Detector {
    config: DetectorConfig,
    peers: BTreeMap<PeerId, PeerInfo>,
    last_tick: Option<Instant>,
}

/// A status change to act on (e.g. sync with a peer that came back).
pub type Transition = (PeerId, PeerStatus, PeerStatus);

impl Detector {
    /// A detector with `config`.
    pub fn new(config: DetectorConfig) -> Self {
        Self {
            config,
            peers: BTreeMap::new(),
            last_tick: None,
        }
    }

    /// Every tracked peer.
    pub fn peers(&self) -> &BTreeMap<PeerId, PeerInfo> {
        &self.peers
    }

    /// Status of one peer (`None` if never seen).
    pub fn status(&self, peer: &PeerId) -> Option<PeerStatus> {
        self.peers.get(peer).map(|p| p.status)
    }

    fn set(&mut self, peer: PeerId, status: PeerStatus) -> Option<Transition> {
        let p = self.peers.get_mut(&peer)?;
        if p.status == status {
            return None;
        }
        let old = p.status;
        p.status = status;
        p.since = SystemTime::now();
        Some((peer, old, status))
    }

    fn entry(&mut self, peer: PeerId, now: Instant) -> &mut PeerInfo {
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.config.max_peers {
            // Forget a down peer to stay bounded; if none is down, the oldest-heard one.
            let victim = self
                .peers
                .iter()
                .min_by_key(|(_, p)| (p.status != PeerStatus::Down, p.last_heard))
                .map(|(id, _)| *id);
            if let Some(v) = victim {
                self.peers.remove(&v);
            }
        }
        self.peers.entry(peer).or_insert(PeerInfo {
            status: PeerStatus::Down,
            since: SystemTime::now(),
            connected: false,
            last_heard: now,
            failed_pings: 0,
            rtt: None,
        })
    }

    /// Evidence of life (successful ping or any message).
    pub fn heard(&mut self, peer: PeerId, now: Instant) -> Option<Transition> {
        let p = self.entry(peer, now);
        p.last_heard = now;
        p.failed_pings = 0;
        if p.connected {
            self.set(peer, PeerStatus::Alive)
        } else {
            None
        }
    }

    /// A connection was established.
    pub fn connected(&mut self, peer: PeerId, now: Instant) -> Option<Transition> {
        self.entry(peer, now).connected = true;
        self.heard(peer, now)
    }

    /// The last connection closed: down at once (a closed connection is not a guess).
    pub fn disconnected(&mut self, peer: PeerId, now: Instant) -> Option<Transition> {
        self.entry(peer, now).connected = false;
        self.set(peer, PeerStatus::Down)
    }

    /// A ping result.
    pub fn ping(
        &mut self,
        peer: PeerId,
        rtt: Option<Duration>,
        now: Instant,
    ) -> Option<Transition> {
        match rtt {
            Some(rtt) => {
                self.entry(peer, now).rtt = Some(rtt);
                self.heard(peer, now)
            }
            None => {
                self.entry(peer, now).failed_pings += 1;
                None
            }
        }
    }

    /// Re-evaluates every peer at `now`; returns the status changes.
    pub fn tick(&mut self, now: Instant) -> Vec<Transition> {
        let late = self
            .last_tick
            .is_some_and(|t| now.saturating_duration_since(t) > self.config.max_tick_lateness);
        self.last_tick = Some(now);
        if late {
            // We were not running; nobody's silence can be judged. Restart the clocks.
            for p in self.peers.values_mut() {
                p.last_heard = now;
                p.failed_pings = 0;
            }
            return Vec::new();
        }
        let cfg = self.config;
        let mut changes = Vec::new();
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            let Some(p) = self.peers.get(&id) else {
                continue;
            };
            if !p.connected {
                continue;
            }
            let silence = now.saturating_duration_since(p.last_heard);
            let next = if silence >= cfg.down_after {
                PeerStatus::Down
            } else if silence >= cfg.suspect_after {
                if p.status == PeerStatus::Down {
                    PeerStatus::Down
                } else {
                    PeerStatus::Suspect
                }
            } else {
                PeerStatus::Alive
            };
            if let Some(t) = self.set(id, next) {
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

    /// Drives a detector with 100 ms ticks from `from` to `to` (ms offsets).
    fn run(d: &mut Detector, t0: Instant, from: u64, to: u64) {
        let mut t = from;
        while t <= to {
            d.tick(t0 + ms(t));
            t += 100;
        }
    }

    #[test]
    fn paused_peer_is_suspected_then_marked_down_within_two_seconds() {
        let mut d = Detector::new(DetectorConfig::default());
        let p = PeerId::random();
        let t0 = Instant::now();
        d.connected(p, t0);
        run(&mut d, t0, 0, 900);
        assert_eq!(d.status(&p), Some(PeerStatus::Alive));
        run(&mut d, t0, 1000, 1400);
        assert_eq!(d.status(&p), Some(PeerStatus::Suspect));
        d.ping(p, None, t0 + ms(1450));
        run(&mut d, t0, 1500, 1600);
        assert_eq!(d.status(&p), Some(PeerStatus::Down));
    }

    #[test]
    fn a_slow_but_answering_peer_is_never_marked_down() {
        let mut d = Detector::new(DetectorConfig::default());
        let p = PeerId::random();
        let t0 = Instant::now();
        d.connected(p, t0);
        // Pings answered every 900 ms (slow machine): suspicion never turns into "down".
        let mut t = 0;
        while t <= 10_000 {
            if t % 900 == 0 {
                d.ping(p, Some(ms(400)), t0 + ms(t));
            }
            d.tick(t0 + ms(t));
            assert_ne!(d.status(&p), Some(PeerStatus::Down), "at {t} ms");
            t += 100;
        }
    }

    #[test]
    fn a_starved_detector_does_not_declare_peers_dead() {
        let mut d = Detector::new(DetectorConfig::default());
        let p = PeerId::random();
        let t0 = Instant::now();
        d.connected(p, t0);
        d.tick(t0);
        d.ping(p, None, t0 + ms(100));
        // Our own process stalls for 3 s (e.g. paused or starved): one very late tick.
        assert!(d.tick(t0 + ms(3000)).is_empty());
        assert_eq!(d.status(&p), Some(PeerStatus::Alive));
    }

    #[test]
    fn recovered_peer_is_alive_again_and_disconnect_is_immediately_down() {
        let mut d = Detector::new(DetectorConfig::default());
        let p = PeerId::random();
        let t0 = Instant::now();
        d.connected(p, t0);
        d.ping(p, None, t0 + ms(1200));
        run(&mut d, t0, 0, 1600);
        assert_eq!(d.status(&p), Some(PeerStatus::Down));
        let t = d.ping(p, Some(ms(1)), t0 + ms(1650));
        assert_eq!(t, Some((p, PeerStatus::Down, PeerStatus::Alive)));
        let t = d.disconnected(p, t0 + ms(1700));
        assert_eq!(t, Some((p, PeerStatus::Alive, PeerStatus::Down)));
    }

    #[test]
    fn tracked_peers_are_bounded() {
        let mut d = Detector::new(DetectorConfig {
            max_peers: 4,
            ..DetectorConfig::default()
        });
        let t0 = Instant::now();
        for _ in 0..10 {
            d.connected(PeerId::random(), t0);
        }
        assert_eq!(d.peers().len(), 4);
    }
}
