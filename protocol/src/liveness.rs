//! Peer failure detection in the SWIM style: constant work per node per interval, whatever
//! the size of the network or the number of connections, and no flapping.
//!
//! The node used to ping every connected peer every 500 ms, so its idle cost grew with its
//! connections (issue 16). Then every connected pair shared one probe exchange per 0.6 s,
//! still a cost per connection. Now a node **watches only a few peers** and checks the rest
//! in a slow round of constant cost.
//!
//! ## Who watches whom
//! * A node **chooses** [`DetectorConfig::watch`] peers (2): the first connected, alive peers
//!   after its own id in the id order, wrapping around ([`Detector::chosen`]). Ids are uniform,
//!   so each node is chosen by about as many as it chooses, whatever its degree.
//! * Its probes of them carry a **watch mark** (`watch` in [`Output::Probe`]; the node sets a bit
//!   on the wire). A peer that receives one ([`Detector::watched_by`]) **watches the prober
//!   back** for [`DetectorConfig::watched_by_hold_ms`], with a silence threshold half as long
//!   again, so the chooser's probe always comes first and one exchange per period serves both
//!   ends. Each node thus sits on about 2 × `watch` watched links (≥ `watch` of them), and a
//!   paused node is seen by every peer on them within 2 s.
//! * **Every other connected peer** is probed in a round: at most one probe per
//!   [`DetectorConfig::unwatched_probe_every_ms`] (1 s) for all of them together, to the one
//!   silent longest. A paused peer is found by each of its other neighbours within about
//!   (its unwatched peers) seconds.
//! * **A sweep**: when any peer turns suspect, every connected peer counts as watched for
//!   [`SWEEP_MS`]. Is it the peer, or us? A node cut off from the network learns it within
//!   seconds (the `reach` rule counts suspects as unheard), not at the round's pace.
//!
//! ## The probe
//! * **evidence of life** is anything from the peer — gossip it forwarded, a sync request, an
//!   answer to our probe, *and a probe it sent us*; a busy peer is never probed at all;
//! * **direct probe**: a watched peer silent for `probe_after_ms` is probed (the driver sends
//!   [`Output::Probe`]); an answer is evidence of life;
//! * **indirect probes** (SWIM's ping-req): if no answer comes within `probe_timeout_ms`, up to
//!   [`DetectorConfig::indirect_probes`] other live peers are asked to probe it for us
//!   ([`Output::ProbeVia`]), so one lossy link or a slow path between *us* and the peer does not
//!   make it look dead;
//! * **suspicion**: if no ack comes back that way within `indirect_timeout_ms` the peer is
//!   `suspect` (still served and synced), and **down** after `suspect_timeout_ms` more of
//!   silence. A paused peer is down at its watchers 1.3–1.9 s after the last thing it said
//!   (probed after 0.5 s of silence — 0.75 s by a watcher that watches back — on a 0.1 s
//!   tick, then 0.3 s + 0.3 s + 0.2 s of timeouts): within the 2 s target;
//! * **local health** (Lifeguard): every timeout is multiplied by `1 + health`, where `health`
//!   (0..=[`DetectorConfig::max_health`]) rises when our own probing misbehaves — an indirect
//!   round where helpers did not even answer "no" (nack), which says *we* are slow, not the
//!   target — and falls with every answered probe. A detector that ran late (our process was
//!   starved or paused) restarts every silence clock instead of declaring everyone dead.
//!
//! A closed connection is not a guess: the peer is down at once.
//!
//! The detector is a sans-IO state machine (the shape of quinn-proto and foca): generic over
//! the peer id (libp2p's `PeerId` in the node, an index in the simulator), driven with explicit
//! monotonic milliseconds (`now_ms`, from a clock that never steps back) and an injected RNG
//! (which helpers carry an indirect probe), returning what to send and which statuses changed
//! as [`Output`]s. The node ticks it every [`DetectorConfig::tick_ms`]; the simulator runs the
//! same code in virtual time.
//!
//! Cost, per node, idle: about 2 × `watch` watched links at one exchange per
//! `probe_after_ms` + one tick, plus one probe per `unwatched_probe_every_ms`, and at most
//! `max_probes_per_tick` probes per tick in a sweep — independent of the connection degree
//! and of the network's size.

use std::collections::BTreeMap;
use std::time::Duration;

use rand_core::RngCore;

/// How long every connected peer counts as watched after one turns suspect: long enough for
/// [`DetectorConfig::max_probes_per_tick`] probes per tick to reach 40 peers.
pub const SWEEP_MS: u64 = 1_000;

/// Liveness of a peer as others see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerStatus {
    /// Recently heard from.
    Alive,
    /// Silent through a direct and an indirect probe; not yet confirmed down.
    Suspect,
    /// Disconnected, or silent past the suspicion timeout.
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

/// Detector parameters, in milliseconds of the monotonic clock the driver passes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetectorConfig {
    /// How often the driver calls [`Detector::tick`].
    pub tick_ms: u64,
    /// Silence after which a connected peer is probed.
    pub probe_after_ms: u64,
    /// How long a direct probe waits for its answer.
    pub probe_timeout_ms: u64,
    /// How long indirect probes wait for an answer relayed by a helper.
    pub indirect_timeout_ms: u64,
    /// Helpers asked to probe a peer that did not answer us directly (SWIM's k).
    pub indirect_probes: usize,
    /// Silence after suspicion before a peer is down.
    pub suspect_timeout_ms: u64,
    /// Most new direct probes per tick (the O(1) bound on background work).
    pub max_probes_per_tick: usize,
    /// Ceiling of the local-health multiplier (Lifeguard's LHM); timeouts scale by 1 + health.
    pub max_health: u32,
    /// A tick later than this means we were starved; restart silence clocks.
    pub max_tick_lateness_ms: u64,
    /// Most peers tracked (a down peer is forgotten first beyond this).
    pub max_peers: usize,
    /// Peers this node watches of its own choice (SWIM's k): the `watch` connected, alive
    /// peers that follow it in the peer-id order, wrapping around. See "Who watches whom".
    pub watch: usize,
    /// A peer whose last *watching* probe of us is this recent is watched back.
    pub watched_by_hold_ms: u64,
    /// Unwatched connected peers get one probe per this interval between them all (to the
    /// one silent longest), whatever their number: the O(1) cost of checking the rest.
    pub unwatched_probe_every_ms: u64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            tick_ms: 100,
            probe_after_ms: 500,
            probe_timeout_ms: 300,
            indirect_timeout_ms: 300,
            indirect_probes: 3,
            suspect_timeout_ms: 200,
            max_probes_per_tick: 4,
            max_health: 2,
            max_tick_lateness_ms: 400,
            max_peers: 1024,
            watch: 2,
            watched_by_hold_ms: 2_000,
            unwatched_probe_every_ms: 1_000,
        }
    }
}

/// Where a peer's current probe stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Not being probed.
    Idle,
    /// A direct probe with this nonce is out since `sent_ms`.
    Direct {
        /// Nonce of the probe.
        nonce: u64,
        /// When it was sent.
        sent_ms: u64,
    },
    /// Helpers were asked to probe the peer (nonce of the round) since `sent_ms`.
    Indirect {
        /// Nonce of the round (the direct probe's).
        nonce: u64,
        /// When the helpers were asked.
        sent_ms: u64,
        /// How many helpers were asked.
        asked: u32,
        /// How many answered "no answer from the target" (nack).
        nacks: u32,
    },
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
    /// Last probe round trip.
    pub rtt: Option<Duration>,
    /// The probe in progress.
    pub probe: Probe,
    /// When the peer last sent us a *watching* probe (it watches us, so we watch it back).
    pub watched_by_ms: Option<u64>,
}

/// A status change to act on (e.g. sync with a peer that came back): peer, old, new.
pub type Transition<P> = (P, PeerStatus, PeerStatus);

/// What the driver must do after a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<P> {
    /// Send a probe with `nonce` to `peer`; report its answer with [`Detector::ack`].
    Probe {
        /// Whom to probe.
        peer: P,
        /// Echoed in the answer.
        nonce: u64,
        /// Whether this is a watching probe: the driver tells the peer (the node marks it on
        /// the wire), whose detector then watches us back ([`Detector::watched_by`]).
        watch: bool,
    },
    /// Ask `helper` to probe `target` for us; report a relayed answer with
    /// [`Detector::ack`] (from `target`) and a "no answer" with [`Detector::nack`].
    ProbeVia {
        /// Who probes for us.
        helper: P,
        /// Whom it probes.
        target: P,
        /// Nonce of the round.
        nonce: u64,
    },
    /// A peer's status changed.
    Transition(Transition<P>),
}

/// Counters of the detector's own work (exposed by the driver).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DetectorStats {
    /// Direct probes asked for.
    pub probes: u64,
    /// Indirect probe rounds started (each asks up to `indirect_probes` helpers).
    pub indirect_rounds: u64,
    /// Peers found suspect.
    pub suspected: u64,
    /// Peers confirmed down by silence (not by a closed connection).
    pub downs_by_silence: u64,
    /// Ticks that came too late to judge (our process was starved).
    pub late_ticks: u64,
    /// Direct probes of peers we do not watch (the round of the rest).
    pub unwatched_probes: u64,
    /// Sweeps: a watched peer turned suspect, so every connected peer was checked.
    pub sweeps: u64,
}

/// The failure detector, generic over the peer id.
#[derive(Debug)]
pub struct Detector<P> {
    config: DetectorConfig,
    /// Our own position on the watch ring.
    me_key: u64,
    /// A peer's position on the watch ring: uniform, and unrelated to how peers pick their
    /// connections (Kademlia's XOR distance), or a node would mostly choose peers that choose
    /// it back.
    key: fn(&P) -> u64,
    peers: BTreeMap<P, PeerInfo>,
    /// When the next probe of an unwatched peer may go out.
    next_unwatched_ms: u64,
    /// Until when every connected peer is treated as watched (a sweep).
    sweep_until_ms: u64,
    last_tick_ms: Option<u64>,
    next_nonce: u64,
    health: u32,
    stats: DetectorStats,
}

impl<P: Ord + Copy> Detector<P> {
    /// A detector with `config`, run by the node whose id is `me`; `key` places a peer on the
    /// watch ring (see [`Detector::chosen`]): it must spread ids uniformly over `u64`.
    pub fn new(config: DetectorConfig, me: P, key: fn(&P) -> u64) -> Self {
        Self {
            config,
            me_key: key(&me),
            key,
            peers: BTreeMap::new(),
            next_unwatched_ms: 0,
            sweep_until_ms: 0,
            last_tick_ms: None,
            next_nonce: 1,
            health: 0,
            stats: DetectorStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Every tracked peer.
    pub fn peers(&self) -> &BTreeMap<P, PeerInfo> {
        &self.peers
    }

    /// Status of one peer (`None` if never seen).
    pub fn status(&self, peer: &P) -> Option<PeerStatus> {
        self.peers.get(peer).map(|p| p.status)
    }

    /// Lifeguard's local health score (0 = healthy).
    pub fn health(&self) -> u32 {
        self.health
    }

    /// Work counters.
    pub fn stats(&self) -> DetectorStats {
        self.stats
    }

    fn scaled(&self, ms: u64) -> u64 {
        ms.saturating_mul(1 + u64::from(self.health))
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
            probe: Probe::Idle,
            watched_by_ms: None,
        })
    }

    /// Evidence of life: any message from the peer, including a probe it sent us.
    pub fn heard(&mut self, peer: P, now_ms: u64) -> Option<Transition<P>> {
        let p = self.entry(peer, now_ms);
        p.last_heard_ms = p.last_heard_ms.max(now_ms);
        p.probe = Probe::Idle;
        if p.connected {
            self.set(peer, PeerStatus::Alive, now_ms)
        } else {
            None
        }
    }

    /// `peer` sent us a *watching* probe (its [`Output::Probe`] had `watch`): evidence of
    /// life, and we watch it back for [`DetectorConfig::watched_by_hold_ms`], so the two ends
    /// of a watched link share one probe exchange per `probe_after_ms` and each sees the
    /// other pause.
    pub fn watched_by(&mut self, peer: P, now_ms: u64) -> Option<Transition<P>> {
        self.entry(peer, now_ms).watched_by_ms = Some(now_ms);
        self.heard(peer, now_ms)
    }

    /// A connection was established.
    pub fn connected(&mut self, peer: P, now_ms: u64) -> Option<Transition<P>> {
        self.entry(peer, now_ms).connected = true;
        self.heard(peer, now_ms)
    }

    /// The last connection closed: down at once (a closed connection is not a guess).
    pub fn disconnected(&mut self, peer: P, now_ms: u64) -> Option<Transition<P>> {
        let p = self.entry(peer, now_ms);
        p.connected = false;
        p.probe = Probe::Idle;
        self.set(peer, PeerStatus::Down, now_ms)
    }

    /// The last connection closed *on purpose* to keep a degree (one side trimmed it, see
    /// the node's `net` module): the peer is not down, only no longer a neighbour, so it is
    /// forgotten rather than marked down. A down peer is remembered as known for minutes
    /// (`reach`), and a node that trimmed many connections would otherwise judge itself cut
    /// off. Nothing to act on, so no transition.
    pub fn released(&mut self, peer: &P) {
        self.peers.remove(peer);
    }

    /// An answer to our probe `nonce`, directly from `peer` or relayed by a helper. Any
    /// answer is evidence of life (a late or stale nonce too: the peer did talk).
    pub fn ack(&mut self, peer: P, nonce: u64, now_ms: u64) -> Option<Transition<P>> {
        if let Some(p) = self.peers.get_mut(&peer) {
            if let Probe::Direct { nonce: n, sent_ms } = p.probe {
                if n == nonce {
                    p.rtt = Some(Duration::from_millis(now_ms.saturating_sub(sent_ms)));
                    self.health = self.health.saturating_sub(1);
                }
            }
        }
        self.heard(peer, now_ms)
    }

    /// A helper reports that `target` did not answer it for round `nonce`.
    pub fn nack(&mut self, target: P, nonce: u64) {
        if let Some(p) = self.peers.get_mut(&target) {
            if let Probe::Indirect {
                nonce: n, nacks, ..
            } = &mut p.probe
            {
                if *n == nonce {
                    *nacks = nacks.saturating_add(1);
                }
            }
        }
    }

    /// Advances time to `now_ms`: starts probes, escalates unanswered ones, and judges
    /// silence. `rng` picks indirect-probe helpers.
    pub fn tick(&mut self, now_ms: u64, rng: &mut impl RngCore) -> Vec<Output<P>> {
        let late = self
            .last_tick_ms
            .is_some_and(|t| now_ms.saturating_sub(t) > self.config.max_tick_lateness_ms);
        self.last_tick_ms = Some(now_ms);
        if late {
            // We were not running; nobody's silence can be judged. Restart the clocks, and
            // forget probes whose answers we may have missed while stalled.
            self.stats.late_ticks += 1;
            for p in self.peers.values_mut() {
                p.last_heard_ms = now_ms;
                p.probe = Probe::Idle;
            }
            return Vec::new();
        }
        let cfg = self.config;
        let mut out = Vec::new();
        // 1. Escalate probes that timed out; judge suspects.
        let ids: Vec<P> = self.peers.keys().copied().collect();
        for id in &ids {
            let Some(p) = self.peers.get(id) else {
                continue;
            };
            if !p.connected {
                continue;
            }
            match p.probe {
                Probe::Direct { nonce, sent_ms }
                    if now_ms.saturating_sub(sent_ms) >= self.scaled(cfg.probe_timeout_ms) =>
                {
                    let helpers = self.helpers(*id, cfg.indirect_probes, rng);
                    self.stats.indirect_rounds += 1;
                    for h in &helpers {
                        out.push(Output::ProbeVia {
                            helper: *h,
                            target: *id,
                            nonce,
                        });
                    }
                    if let Some(p) = self.peers.get_mut(id) {
                        p.probe = Probe::Indirect {
                            nonce,
                            sent_ms: now_ms,
                            asked: helpers.len() as u32,
                            nacks: 0,
                        };
                    }
                }
                Probe::Indirect {
                    sent_ms,
                    asked,
                    nacks,
                    ..
                } if now_ms.saturating_sub(sent_ms) >= self.scaled(cfg.indirect_timeout_ms) => {
                    // Helpers that did not even say "no answer" point at us (Lifeguard).
                    if nacks < asked {
                        self.health = (self.health + 1).min(cfg.max_health);
                    }
                    if let Some(p) = self.peers.get_mut(id) {
                        p.probe = Probe::Idle;
                    }
                    if self.status(id) == Some(PeerStatus::Alive) {
                        self.stats.suspected += 1;
                        // Is it the peer, or us? Check every link now, not at the slow
                        // round's pace: a node cut off from the network finds out in one
                        // sweep (the reach rule counts suspects as unheard).
                        if now_ms >= self.sweep_until_ms {
                            self.stats.sweeps += 1;
                        }
                        self.sweep_until_ms = now_ms.saturating_add(SWEEP_MS);
                        if let Some(t) = self.set(*id, PeerStatus::Suspect, now_ms) {
                            out.push(Output::Transition(t));
                        }
                    }
                }
                Probe::Idle
                    if p.status == PeerStatus::Suspect
                        && now_ms.saturating_sub(p.since_ms)
                            >= self.scaled(cfg.suspect_timeout_ms) =>
                {
                    self.stats.downs_by_silence += 1;
                    if let Some(t) = self.set(*id, PeerStatus::Down, now_ms) {
                        out.push(Output::Transition(t));
                    }
                }
                _ => {}
            }
        }
        // 2. Probe the watched peers silent longest, a bounded number per tick; then, at
        //    most once per `unwatched_probe_every_ms`, the unwatched one silent longest.
        let chosen = self.chosen();
        let sweeping = now_ms < self.sweep_until_ms;
        let mut watched_due: Vec<(u64, P)> = Vec::new();
        let mut unwatched_due: Option<(u64, P)> = None;
        for (id, p) in &self.peers {
            if !(p.connected && p.status == PeerStatus::Alive && p.probe == Probe::Idle) {
                continue;
            }
            let silence = now_ms.saturating_sub(p.last_heard_ms);
            if sweeping || chosen.contains(id) {
                if silence >= cfg.probe_after_ms {
                    watched_due.push((p.last_heard_ms, *id));
                }
            } else if self.watched_by_recently(p, now_ms) {
                // Watched back: the peer that chose us probes first (our threshold is half
                // as long again), so one exchange per period serves both ends, and its
                // watching probes keep coming while it is alive.
                if silence >= cfg.probe_after_ms + cfg.probe_after_ms / 2 {
                    watched_due.push((p.last_heard_ms, *id));
                }
            } else if silence >= cfg.probe_after_ms
                && unwatched_due.is_none_or(|(t, _)| p.last_heard_ms < t)
            {
                unwatched_due = Some((p.last_heard_ms, *id));
            }
        }
        watched_due.sort();
        watched_due.truncate(cfg.max_probes_per_tick);
        let mut probes: Vec<(P, bool)> = watched_due
            .into_iter()
            .map(|(_, id)| (id, chosen.contains(&id)))
            .collect();
        if probes.len() < cfg.max_probes_per_tick && now_ms >= self.next_unwatched_ms {
            if let Some((_, id)) = unwatched_due {
                self.next_unwatched_ms = now_ms.saturating_add(cfg.unwatched_probe_every_ms);
                self.stats.unwatched_probes += 1;
                probes.push((id, false));
            }
        }
        for (id, watch) in probes {
            let nonce = self.next_nonce;
            self.next_nonce += 1;
            self.stats.probes += 1;
            if let Some(p) = self.peers.get_mut(&id) {
                p.probe = Probe::Direct {
                    nonce,
                    sent_ms: now_ms,
                };
            }
            out.push(Output::Probe {
                peer: id,
                nonce,
                watch,
            });
        }
        out
    }

    /// The peers this node watches of its own choice: the first [`DetectorConfig::watch`]
    /// connected, alive peers after us on the watch ring (by `key`, wrapping around). Keys are
    /// uniform (public-key bytes in the node, mixed indexes in the simulator), so a node is
    /// chosen by about `watch` others whatever its degree, and two nodes rarely choose each
    /// other: each node ends up on about 2 × `watch` watched links. O(peers) per call.
    pub fn chosen(&self) -> Vec<P> {
        let mut best: Vec<(u64, P)> = Vec::with_capacity(self.config.watch + 1);
        for (id, p) in &self.peers {
            if !(p.connected && p.status == PeerStatus::Alive) {
                continue;
            }
            let d = (self.key)(id).wrapping_sub(self.me_key);
            if best.len() < self.config.watch || best.last().is_some_and(|(b, _)| d < *b) {
                let at = best.partition_point(|(b, _)| *b <= d);
                best.insert(at, (d, *id));
                best.truncate(self.config.watch);
            }
        }
        best.into_iter().map(|(_, id)| id).collect()
    }

    /// Whether this node watches `peer` now: it chose it, or `peer` watches us (so we watch
    /// it back), or a sweep is on.
    pub fn watches(&self, peer: &P, now_ms: u64) -> bool {
        let Some(p) = self.peers.get(peer) else {
            return false;
        };
        p.connected
            && (now_ms < self.sweep_until_ms
                || self.watched_by_recently(p, now_ms)
                || self.chosen().contains(peer))
    }

    /// Every peer this node watches now ([`Detector::watches`] for all of them, with the
    /// ring's choice made once: O(peers)).
    pub fn watched(&self, now_ms: u64) -> Vec<P> {
        let chosen = self.chosen();
        let sweeping = now_ms < self.sweep_until_ms;
        self.peers
            .iter()
            .filter(|(id, p)| {
                p.connected
                    && (sweeping || self.watched_by_recently(p, now_ms) || chosen.contains(id))
            })
            .map(|(id, _)| *id)
            .collect()
    }

    fn watched_by_recently(&self, p: &PeerInfo, now_ms: u64) -> bool {
        p.watched_by_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < self.config.watched_by_hold_ms)
    }

    /// Up to `k` random connected, alive peers other than `target`.
    fn helpers(&self, target: P, k: usize, rng: &mut impl RngCore) -> Vec<P> {
        let mut pool: Vec<P> = self
            .peers
            .iter()
            .filter(|(id, p)| **id != target && p.connected && p.status == PeerStatus::Alive)
            .map(|(id, _)| *id)
            .collect();
        // Partial Fisher-Yates: the first k are a uniform sample.
        let k = k.min(pool.len());
        for i in 0..k {
            let span = (pool.len() - i) as u64;
            let j = i + (rng.next_u64() % span) as usize;
            pool.swap(i, j);
        }
        pool.truncate(k);
        pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    type D = Detector<u32>;

    /// The test detector's own id: the last in the order, so it watches peers 0 and 1 (or
    /// the first two connected).
    const ME: u32 = u32::MAX;

    /// Ring positions in id order, `ME` first: the detector watches the lowest ids.
    fn key(p: &u32) -> u64 {
        u64::from(*p).wrapping_add(1) % (u64::from(u32::MAX) + 1)
    }

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(7)
    }

    /// Ticks every `tick_ms` from `from` to `to` (inclusive), answering every probe of a peer
    /// in `answering` at once; returns every output.
    fn run(d: &mut D, from: u64, to: u64, answering: &[u32]) -> Vec<Output<u32>> {
        let mut r = rng();
        let mut all = Vec::new();
        let mut t = from;
        while t <= to {
            let outs = d.tick(t, &mut r);
            for o in &outs {
                match *o {
                    Output::Probe { peer, nonce, .. } if answering.contains(&peer) => {
                        d.ack(peer, nonce, t);
                    }
                    Output::ProbeVia { target, nonce, .. } if answering.contains(&target) => {
                        d.ack(target, nonce, t);
                    }
                    Output::ProbeVia { target, nonce, .. } => d.nack(target, nonce),
                    _ => {}
                }
            }
            all.extend(outs);
            t += d.config().tick_ms;
        }
        all
    }

    fn down_at(outs: &[Output<u32>], peer: u32) -> bool {
        outs.iter()
            .any(|o| matches!(o, Output::Transition((p, _, PeerStatus::Down)) if *p == peer))
    }

    #[test]
    fn paused_peer_is_probed_directly_then_indirectly_then_suspected_then_down_within_two_seconds()
    {
        let mut d = D::new(DetectorConfig::default(), ME, key);
        for p in 1..=4 {
            d.connected(p, 0);
        }
        // Peer 1 goes silent at 0 (paused); the others answer.
        let outs = run(&mut d, 0, 1_600, &[2, 3, 4]);
        assert!(outs
            .iter()
            .any(|o| matches!(o, Output::Probe { peer: 1, .. })));
        let via: Vec<u32> = outs
            .iter()
            .filter_map(|o| match o {
                Output::ProbeVia {
                    helper, target: 1, ..
                } => Some(*helper),
                _ => None,
            })
            .collect();
        assert_eq!(via.len(), 3, "three helpers asked");
        assert!(!via.contains(&1));
        assert!(outs.iter().any(|o| matches!(
            o,
            Output::Transition((1, PeerStatus::Alive, PeerStatus::Suspect))
        )));
        assert!(down_at(&outs, 1), "down by 1.6 s of silence");
        assert_eq!(d.status(&2), Some(PeerStatus::Alive));
        assert_eq!(
            d.health(),
            0,
            "every helper answered: our own health is fine"
        );
    }

    #[test]
    fn an_answer_relayed_by_a_helper_keeps_the_peer_alive() {
        let mut d = D::new(DetectorConfig::default(), ME, key);
        d.connected(1, 0);
        d.connected(2, 0);
        let mut r = rng();
        let mut t = 0;
        // 1 never answers us directly, but every indirect round gets its answer.
        while t <= 10_000 {
            for o in d.tick(t, &mut r) {
                match o {
                    Output::Probe { peer: 2, nonce, .. } => {
                        d.ack(2, nonce, t);
                    }
                    Output::ProbeVia {
                        target: 1, nonce, ..
                    } => {
                        d.ack(1, nonce, t);
                    }
                    _ => {}
                }
            }
            assert_eq!(d.status(&1), Some(PeerStatus::Alive), "at {t} ms");
            t += 200;
        }
    }

    #[test]
    fn a_busy_peer_is_never_probed_and_probes_we_receive_count_as_evidence() {
        let mut d = D::new(DetectorConfig::default(), ME, key);
        d.connected(1, 0);
        let mut r = rng();
        let mut t = 0;
        while t <= 10_000 {
            // The peer sends something (gossip, or its own probe of us) every 500 ms.
            if t % 500 == 0 {
                d.heard(1, t);
            }
            let outs = d.tick(t, &mut r);
            assert!(outs.is_empty(), "at {t}: {outs:?}");
            t += 100;
        }
        assert_eq!(d.stats().probes, 0);
    }

    #[test]
    fn probes_per_tick_are_bounded_whatever_the_number_of_peers() {
        let cfg = DetectorConfig::default();
        let mut d = D::new(cfg, ME, key);
        for p in 0..500 {
            d.connected(p, 0);
        }
        let mut r = rng();
        let mut t = 0;
        while t <= 5_000 {
            let outs = d.tick(t, &mut r);
            let probes = outs
                .iter()
                .filter(|o| matches!(o, Output::Probe { .. }))
                .count();
            assert!(probes <= cfg.max_probes_per_tick, "{probes} at {t}");
            for o in outs {
                if let Output::Probe { peer, nonce, .. } = o {
                    d.ack(peer, nonce, t);
                }
            }
            t += cfg.tick_ms;
        }
        assert!((0..500).all(|p| d.status(&p) == Some(PeerStatus::Alive)));
    }

    #[test]
    fn a_starved_detector_does_not_declare_peers_dead() {
        let mut d = D::new(DetectorConfig::default(), ME, key);
        d.connected(1, 0);
        let mut r = rng();
        d.tick(0, &mut r);
        // Our own process stalls for 3 s: one very late tick.
        assert!(d.tick(3_000, &mut r).is_empty());
        assert_eq!(d.status(&1), Some(PeerStatus::Alive));
        assert_eq!(d.stats().late_ticks, 1);
    }

    #[test]
    fn helpers_that_do_not_even_nack_raise_local_health_and_stretch_timeouts() {
        let mut d = D::new(DetectorConfig::default(), ME, key);
        d.connected(1, 0);
        d.connected(2, 0);
        let mut r = rng();
        let mut t = 0;
        let mut down = None;
        // Nobody answers anything: our own side looks sick, timeouts stretch.
        while t <= 10_000 && down.is_none() {
            for o in d.tick(t, &mut r) {
                if let Output::Transition((1, _, PeerStatus::Down)) = o {
                    down = Some(t);
                }
            }
            t += 200;
        }
        assert!(d.health() >= 1);
        let stretched = down.expect("down eventually");
        // A healthy detector takes at most 1.6 s (the first test).
        assert!(
            stretched > 1_600,
            "local health stretched detection: {stretched} ms"
        );
    }

    #[test]
    fn recovered_peer_is_alive_again_and_disconnect_is_immediately_down() {
        let mut d = D::new(DetectorConfig::default(), ME, key);
        d.connected(1, 0);
        d.connected(2, 0);
        let outs = run(&mut d, 0, 2_000, &[2]);
        assert!(down_at(&outs, 1));
        let t = d.heard(1, 2_100);
        assert_eq!(t, Some((1, PeerStatus::Down, PeerStatus::Alive)));
        let t = d.disconnected(1, 2_200);
        assert_eq!(t, Some((1, PeerStatus::Alive, PeerStatus::Down)));
    }

    #[test]
    fn tracked_peers_are_bounded() {
        let mut d = D::new(
            DetectorConfig {
                max_peers: 4,
                ..DetectorConfig::default()
            },
            ME,
            key,
        );
        for p in 0..10u32 {
            d.connected(p, 0);
        }
        assert_eq!(d.peers().len(), 4);
    }

    #[test]
    fn a_released_peer_is_forgotten_not_down() {
        let mut d = D::new(DetectorConfig::default(), ME, key);
        d.connected(1, 0);
        d.connected(2, 0);
        d.released(&1);
        assert_eq!(d.status(&1), None, "released: forgotten");
        assert_eq!(d.status(&2), Some(PeerStatus::Alive));
        // Nothing is probed for a forgotten peer; it comes back like a new one.
        let outs = run(&mut d, 100, 3_000, &[2]);
        assert!(!outs
            .iter()
            .any(|o| matches!(o, Output::Probe { peer: 1, .. })));
        assert_eq!(
            d.connected(1, 3_100),
            Some((1, PeerStatus::Down, PeerStatus::Alive))
        );
    }

    fn probes_of(outs: &[Output<u32>]) -> Vec<(u32, bool)> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Probe { peer, watch, .. } => Some((*peer, *watch)),
                _ => None,
            })
            .collect()
    }

    fn first_down(outs: &[(u64, Output<u32>)], peer: u32) -> Option<u64> {
        outs.iter()
            .find(|(_, o)| matches!(o, Output::Transition((p, _, PeerStatus::Down)) if *p == peer))
            .map(|(t, _)| *t)
    }

    #[test]
    fn probes_per_second_do_not_grow_with_the_number_of_connected_peers() {
        let count = |n: u32| {
            let mut d = D::new(DetectorConfig::default(), ME, key);
            for p in 0..n {
                d.connected(p, 0);
            }
            let all: Vec<u32> = (0..n).collect();
            run(&mut d, 0, 10_000, &all);
            let before = d.stats().probes;
            let outs = run(&mut d, 10_100, 30_000, &all);
            assert!(all.iter().all(|p| d.status(p) == Some(PeerStatus::Alive)));
            // Only the chosen two are probed as watchers.
            let watched: Vec<u32> = probes_of(&outs)
                .into_iter()
                .filter(|(_, w)| *w)
                .map(|(p, _)| p)
                .collect();
            assert!(watched.iter().all(|p| *p < 2), "{watched:?}");
            d.stats().probes - before
        };
        let (few, many) = (count(8), count(40));
        assert!(few > 0);
        assert!(
            many <= few + 1,
            "20 s of idle probing: {few} probes with 8 peers, {many} with 40"
        );
    }

    #[test]
    fn a_peer_that_watches_us_is_watched_back_and_its_pause_is_seen_within_two_seconds() {
        let mut d = D::new(DetectorConfig::default(), ME, key);
        for p in 1..=10 {
            d.connected(p, 0);
        }
        let answering: Vec<u32> = (1..=10).filter(|p| *p != 7).collect();
        let mut r = rng();
        let mut outs = Vec::new();
        let mut t = 0;
        while t <= 6_000 {
            // Peer 7 chose us: it probes us every 600 ms until it pauses at 3 s.
            if t < 3_000 && t % 600 == 0 {
                d.watched_by(7, t);
            }
            for o in d.tick(t, &mut r) {
                match o {
                    Output::Probe { peer, nonce, .. } if answering.contains(&peer) => {
                        d.ack(peer, nonce, t);
                    }
                    Output::ProbeVia { target, nonce, .. } if answering.contains(&target) => {
                        d.ack(target, nonce, t);
                    }
                    Output::ProbeVia { target, nonce, .. } => d.nack(target, nonce),
                    _ => {}
                }
                outs.push((t, o));
            }
            t += d.config().tick_ms;
        }
        let probed_7_before_pause = outs
            .iter()
            .any(|(t, o)| *t < 3_000 && matches!(o, Output::Probe { peer: 7, .. }));
        assert!(
            !probed_7_before_pause,
            "its own probes kept our clock fresh"
        );
        let down = first_down(&outs, 7).expect("the watcher's pause is seen");
        assert!(
            down - 2_400 <= 2_000,
            "down {} ms after its last probe",
            down - 2_400
        );
        assert!(answering
            .iter()
            .all(|p| d.status(p) == Some(PeerStatus::Alive)));
    }

    #[test]
    fn an_unwatched_paused_peer_is_still_found_down_by_the_slow_round() {
        let mut d = D::new(DetectorConfig::default(), ME, key);
        for p in 1..=10 {
            d.connected(p, 0);
        }
        assert!(!d.watches(&9, 0), "9 is neither chosen nor watching us");
        assert_eq!(d.watched(0), vec![1, 2], "the two chosen, nobody else");
        let answering: Vec<u32> = (1..=10).filter(|p| *p != 9).collect();
        let outs = run(&mut d, 0, 20_000, &answering);
        assert!(down_at(&outs, 9));
        // One unwatched probe per second, to the one silent longest: 9 peers unwatched, so
        // its turn comes within about 9 s, then 0.8 s of timeouts.
        assert!(d.stats().unwatched_probes <= 21, "{:?}", d.stats());
        assert!(answering
            .iter()
            .all(|p| d.status(p) == Some(PeerStatus::Alive)));
    }

    #[test]
    fn a_node_cut_off_from_every_peer_sweeps_and_finds_them_all_down_in_seconds() {
        let mut d = D::new(DetectorConfig::default(), ME, key);
        for p in 1..=20 {
            d.connected(p, 0);
        }
        // Nobody answers anything: we are cut off. The chosen two turn suspect first; the
        // sweep then checks every other link at once instead of one per second (20 s).
        let mut r = rng();
        let mut t = 0;
        let mut all_down = None;
        while t <= 20_000 && all_down.is_none() {
            d.tick(t, &mut r);
            if (1..=20).all(|p| d.status(&p) == Some(PeerStatus::Down)) {
                all_down = Some(t);
            }
            t += 100;
        }
        let at = all_down.expect("every peer down");
        assert!(d.stats().sweeps >= 1);
        assert!(at <= 6_000, "all down after {at} ms");
    }
}
