//! Isolation awareness: does a node hear from enough of the peers it knows to answer as a
//! member of the network, or is it cut off?
//!
//! A partitioned node keeps answering from its store, and must: failing closed would turn a
//! partition into an outage, which is what dpin exists to prevent. But its answers may be
//! stale, and the client cannot tell. So a node that can see it is cut off says so, and the
//! readers act on it (the HTTP answer carries `cut_off`, the CLI and the harness's readers
//! fail over to another peer, DNS answers get a 1-second TTL so resolvers ask again soon,
//! possibly elsewhere). The stale answer is still served when nothing better is reachable.
//!
//! # The rule
//!
//! A node is cut off when it expects peers and hears from fewer than half of those it knows:
//! `2 × alive < known`, or it was given peers to join (bootstrap) and knows none yet.
//!
//! * *Known* peers are those the failure detector tracks, except peers down for longer than
//!   [`FORGET_DOWN_AFTER_MS`]: a node that left for good must not make every survivor think it
//!   is cut off forever.
//! * *Alive* means the detector's `Alive`; a suspect peer has already missed a direct and an
//!   indirect probe, so it does not count as heard.
//! * Why half: in a split brain the smaller side sees fewer than half of its known peers and
//!   says so, while the larger side does not; with at most a minority of peers killed or
//!   paused (the chaos harness's `--max-down`), no healthy node calls itself cut off.
//!   A two-node network whose one peer died cannot tell death from a cut and says cut off,
//!   which costs only a failover attempt: nothing is refused.
//!
//! The judgement is a pure function of the detector's table and monotonic `now`, so the
//! node and the simulator compute the same thing.

use crate::liveness::{PeerInfo, PeerStatus};

/// Down peers older than this (monotonic ms) are no longer counted as known: 10 minutes,
/// the same horizon after which the node stops re-dialling them.
pub const FORGET_DOWN_AFTER_MS: u64 = 10 * 60 * 1000;

/// TTL (seconds) of DNS answers from a node that is cut off: short, so resolvers ask again
/// soon (and, with several servers configured, elsewhere).
pub const CUT_OFF_DNS_TTL_SECS: u32 = 1;

/// A node's view of its own reachability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    /// Peers known (tracked by the failure detector, recent downs included).
    pub known: u32,
    /// Of those, peers heard from recently (detector status `Alive`).
    pub alive: u32,
    /// Whether the node should tell readers its answers may be stale (see the module docs).
    pub cut_off: bool,
}

/// Judges reachability from the failure detector's table at monotonic `now_ms`.
/// `expects_peers`: the node was given peers to join (a node started alone is never cut off).
pub fn judge<'a>(
    peers: impl IntoIterator<Item = &'a PeerInfo>,
    now_ms: u64,
    expects_peers: bool,
) -> Reach {
    let mut known = 0u32;
    let mut alive = 0u32;
    for p in peers {
        match p.status {
            PeerStatus::Alive => {
                known = known.saturating_add(1);
                alive = alive.saturating_add(1);
            }
            PeerStatus::Suspect => known = known.saturating_add(1),
            PeerStatus::Down if now_ms.saturating_sub(p.since_ms) <= FORGET_DOWN_AFTER_MS => {
                known = known.saturating_add(1);
            }
            PeerStatus::Down => {}
        }
    }
    let cut_off = if known == 0 {
        expects_peers
    } else {
        u64::from(alive) * 2 < u64::from(known)
    };
    Reach {
        known,
        alive,
        cut_off,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::Probe;

    fn peer(status: PeerStatus, since_ms: u64) -> PeerInfo {
        PeerInfo {
            status,
            since_ms,
            connected: status == PeerStatus::Alive,
            last_heard_ms: since_ms,
            rtt: None,
            probe: Probe::Idle,
            watched_by_ms: None,
        }
    }

    fn table(alive: usize, suspect: usize, down: usize, down_since: u64) -> Vec<PeerInfo> {
        let mut v = Vec::new();
        v.extend((0..alive).map(|_| peer(PeerStatus::Alive, 0)));
        v.extend((0..suspect).map(|_| peer(PeerStatus::Suspect, 0)));
        v.extend((0..down).map(|_| peer(PeerStatus::Down, down_since)));
        v
    }

    #[test]
    fn the_smaller_side_of_a_split_brain_is_cut_off_and_the_larger_is_not() {
        // 7 nodes split 3 | 4: a node on the small side hears 2 of its 6 peers, one on the
        // large side 3 of 6.
        let small = judge(&table(2, 0, 4, 1_000), 2_000, true);
        let large = judge(&table(3, 0, 3, 1_000), 2_000, true);
        assert_eq!((small.known, small.alive, small.cut_off), (6, 2, true));
        assert_eq!((large.known, large.alive, large.cut_off), (6, 3, false));
    }

    #[test]
    fn a_node_that_hears_nobody_is_cut_off() {
        assert!(judge(&table(0, 1, 5, 0), 1_000, true).cut_off);
    }

    #[test]
    fn a_minority_of_dead_peers_does_not_cut_a_node_off() {
        // --max-down 2 of 7: six peers known, two down, one suspect, three alive.
        assert!(!judge(&table(3, 1, 2, 0), 1_000, true).cut_off);
    }

    #[test]
    fn suspects_do_not_count_as_heard() {
        assert!(judge(&table(1, 2, 0, 0), 1_000, true).cut_off);
    }

    #[test]
    fn peers_down_for_longer_than_the_horizon_are_forgotten() {
        // Five peers left the network for good a while ago; the two that remain are alive.
        let now = FORGET_DOWN_AFTER_MS + 10_000;
        let r = judge(&table(2, 0, 5, 1_000), now, true);
        assert_eq!((r.known, r.alive, r.cut_off), (2, 2, false));
        // Just inside the horizon they still count.
        let r = judge(&table(2, 0, 5, 1_000), FORGET_DOWN_AFTER_MS + 1_000, true);
        assert_eq!((r.known, r.cut_off), (7, true));
    }

    #[test]
    fn a_node_given_bootstrap_peers_that_knows_none_is_cut_off_and_a_lone_node_is_not() {
        assert!(judge(&[], 0, true).cut_off);
        assert!(!judge(&[], 0, false).cut_off);
    }
}
