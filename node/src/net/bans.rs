//! Peer bans and the graylist decision (issues 12 and 15): banning and unbanning through
//! `allow_block_list`, lifting ended bans, and [`graylist_decision`], which bans a peer
//! gossipsub scores at the graylist only when our own validation rejected its messages
//! recently. A pure decision plus the few event-loop methods that apply it, so the rule can
//! be tested without a network.

use super::*;
/// What this layer does about a peer gossipsub scores at or below the graylist (issue 15).
///
/// Gossipsub graylists for more than invalid messages: every IWANT it sends is a promise,
/// and a broken one is a P7 penalty, −(n − 4)² over its threshold of 4, so about 13 broken
/// promises within a decay window reach −80. A one-way cut (we still hear a peer's IHAVE,
/// its IWANT answers never arrive) does that to an honest peer, and a 15-minute ban then
/// kept it out long after the cut healed. So only a peer whose messages our own validation
/// rejected within [`REJECTION_MEMORY`] (the hostile case of issue 12) is banned; any other
/// graylist is gossipsub's own, which ignores the peer only while its score, decaying, stays
/// below the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GraylistDecision {
    /// Ban it for [`GRAYLIST_BAN`].
    Ban,
    /// Leave it to gossipsub's own graylisting (short-lived: the score decays back).
    LeaveToGossipsub,
}

/// The graylist decision for a peer scored `score`, whose last message rejected by our own
/// validation came `since_rejection` ago (`None`: none remembered). `None` if the peer is
/// not graylisted.
pub(super) fn graylist_decision(
    score: Option<f64>,
    since_rejection: Option<Duration>,
) -> Option<GraylistDecision> {
    if !score.is_some_and(|s| s <= GRAYLIST_THRESHOLD) {
        return None;
    }
    Some(match since_rejection {
        Some(ago) if ago <= REJECTION_MEMORY => GraylistDecision::Ban,
        _ => GraylistDecision::LeaveToGossipsub,
    })
}

impl EventLoop {
    /// Bans `peer` until `now + duration` (see [`NetHandle::ban`]).
    pub(super) fn ban(&mut self, peer: PeerId, duration: Duration, reason: BanReason) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        let until = tokio::time::Instant::now() + duration.min(MAX_BAN);
        if let Some(end) = self.bans.get_mut(&peer) {
            *end = (*end).max(until);
            return;
        }
        if self.bans.len() >= MAX_BANS {
            let soonest = self
                .bans
                .iter()
                .min_by_key(|(_, end)| **end)
                .map(|(p, _)| *p);
            if let Some(p) = soonest {
                self.unban(p);
                self.counters.bans_evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        info!(%peer, reason = reason.as_str(), ?duration, "banning peer");
        self.bans.insert(peer, until);
        // Closes every connection to it now and refuses new ones, both directions.
        self.swarm.behaviour_mut().blocked.block_peer(peer);
        self.redial.remove(&peer);
        self.swarm.behaviour_mut().kademlia.remove_peer(&peer);
        self.counters.bans[reason.index()].fetch_add(1, Ordering::Relaxed);
        self.counters
            .banned_now
            .store(self.bans.len() as u64, Ordering::Relaxed);
    }

    pub(super) fn unban(&mut self, peer: PeerId) {
        if self.bans.remove(&peer).is_some() {
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            debug!(%peer, "ban lifted");
        }
        self.counters
            .banned_now
            .store(self.bans.len() as u64, Ordering::Relaxed);
    }

    /// Lifts bans that ended, and bans connected peers whose gossip score fell to the
    /// graylist after we rejected their messages (gossipsub then ignores them already; the
    /// ban also frees their connection and stops their requests and probes). Other graylisted
    /// peers are left to gossipsub ([`graylist_decision`]).
    pub(super) fn check_bans(&mut self) {
        let now = tokio::time::Instant::now();
        let ended: Vec<PeerId> = self
            .bans
            .iter()
            .filter(|(_, end)| **end <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in ended {
            self.unban(peer);
        }
        self.rejected
            .retain(|_, at| now.duration_since(*at) <= REJECTION_MEMORY);
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        let mut kept = HashSet::new();
        for peer in connected {
            match self.graylist_decision(&peer) {
                Some(GraylistDecision::Ban) => self.ban(peer, GRAYLIST_BAN, BanReason::Graylisted),
                Some(GraylistDecision::LeaveToGossipsub) => {
                    if !self.graylisted_kept.contains(&peer) {
                        self.counters
                            .graylisted_not_banned
                            .fetch_add(1, Ordering::Relaxed);
                        info!(
                            %peer,
                            score = ?self.swarm.behaviour().gossipsub.peer_score(&peer),
                            "peer graylisted by gossipsub without rejected messages: not banned"
                        );
                    }
                    kept.insert(peer);
                }
                None => {}
            }
        }
        self.graylisted_kept = kept;
    }

    /// Whether to ban `peer` now that gossipsub may score it at the graylist (see
    /// [`graylist_decision`]).
    pub(super) fn graylist_decision(&self, peer: &PeerId) -> Option<GraylistDecision> {
        let now = tokio::time::Instant::now();
        graylist_decision(
            self.swarm.behaviour().gossipsub.peer_score(peer),
            self.rejected.get(peer).map(|at| now.duration_since(*at)),
        )
    }

    /// Remembers that our validation rejected a message `peer` sent us.
    pub(super) fn note_rejection(&mut self, peer: PeerId) {
        if !self.rejected.contains_key(&peer) && self.rejected.len() >= MAX_REJECTING_PEERS {
            let oldest = self
                .rejected
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(p, _)| *p);
            if let Some(p) = oldest {
                self.rejected.remove(&p);
            }
        }
        self.rejected.insert(peer, tokio::time::Instant::now());
    }

    /// Counts a connection refused because its peer is banned.
    pub(super) fn count_refusal(&self, denied: &libp2p::swarm::ConnectionDenied) {
        if denied.downcast_ref::<allow_block_list::Blocked>().is_some() {
            self.counters.ban_refused.fetch_add(1, Ordering::Relaxed);
        }
    }
}
