//! The anti-entropy session as a sans-IO state machine: one initiator, one responder.
//!
//! [`crate::digest`] holds the building blocks (digests, summaries, the planner); this module
//! holds the *session* that strings them together — the cursor over truncated listings, the
//! round cap, the stop rule, fetch-before-push and chunking — so that the node (over libp2p
//! request-response, under tokio) and the deterministic simulator (over a modelled network, in
//! virtual time) run exactly the same decisions. The shape follows quinn-proto: the driver
//! asks [`Initiator::poll`] what to send, delivers the answer to
//! [`Initiator::handle_response`], applies the records it is handed, and polls again. Nothing
//! here does I/O or reads a clock; `now_ms` comes in with every call.
//!
//! One session with one peer:
//! 1. send a digest (continuing after the cursor, if the last listing was truncated);
//! 2. `InSync` ends the session; `Summaries` are planned against the local store;
//! 3. fetch what the peer holds newer (in chunks of [`MAX_RECORDS_PER_MESSAGE`]), applying
//!    each answer before the next request, then push what the peer lacks;
//! 4. next round, until in sync, nothing left to do, or [`SessionConfig::max_rounds`].
//!
//! Fetch comes before push so that a record both sides changed is settled by the merge rule
//! locally first, and the push then carries only winners. The round cap bounds one session's
//! cost (rounds × one listing of at most [`crate::digest::MAX_SUMMARIES`] summaries); what is
//! left is found by the next session.
//!
//! Answers are untrusted: a responder's bucket list is deduplicated and capped at
//! [`BUCKETS`] before planning, summaries outside the listed buckets are ignored, and every
//! record still goes through the merge rule, so a lying peer can at worst waste a round.

use std::collections::VecDeque;

use crate::digest::{
    answer_digest, answer_fetch, bucket_of, digest_request_from, plan_sync, records_for, BUCKETS,
    MAX_RECORDS_PER_MESSAGE,
};
use crate::store::Store;
use crate::{Summary, SyncRequest, SyncResponse};

/// Most rounds one session runs back to back before it ends (the next session continues).
pub const MAX_SYNC_ROUNDS: usize = 16;
/// Peers a node starts a periodic session with per sync interval. Constant, not a share of
/// the peers: the background cost of anti-entropy per node stays the same however large the
/// network grows (gossip carries changes; anti-entropy is the backstop), and every connected
/// peer still comes up within `peers / SYNC_PEERS_PER_INTERVAL` intervals. A peer that
/// (re)connects or comes back alive is synced with at once, outside this schedule.
pub const SYNC_PEERS_PER_INTERVAL: usize = 2;

/// The peers to sync with in periodic round `round`: a rotation over `peers` (in their
/// order, which the caller keeps stable, e.g. sorted), [`SYNC_PEERS_PER_INTERVAL`] at a time.
/// Drivers start `round` at a random value so that nodes do not all pick the same peer.
pub fn peers_for_round<P: Clone>(peers: &[P], round: u64) -> Vec<P> {
    if peers.is_empty() {
        return Vec::new();
    }
    let n = peers.len();
    let take = SYNC_PEERS_PER_INTERVAL.min(n);
    // Reduce first so the multiplication cannot overflow.
    let per = SYNC_PEERS_PER_INTERVAL as u64;
    let start = ((round % n as u64) * per % n as u64) as usize;
    (0..take).map(|i| peers[(start + i) % n].clone()).collect()
}

/// Session limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Most digest rounds per session.
    pub max_rounds: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_rounds: MAX_SYNC_ROUNDS,
        }
    }
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The stores' digests are equal.
    InSync,
    /// Digests differ only in ways this side cannot fix (e.g. compaction timing): nothing to
    /// fetch or push, and no listing to continue.
    NothingToDo,
    /// [`SessionConfig::max_rounds`] reached; the next session continues.
    RoundCap,
}

/// What the initiator's driver should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitiatorStep {
    /// Send this request to the peer and hand its answer to [`Initiator::handle_response`].
    Send(SyncRequest),
    /// The session is over.
    Done(SessionEnd),
}

/// An answer the initiator cannot use; the session is over and should be counted as failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The answer's kind does not fit the request (e.g. `Records` to a digest).
    #[error("unexpected answer to {request}: {answer}")]
    Unexpected {
        /// What was asked.
        request: &'static str,
        /// What came back (its kind).
        answer: &'static str,
    },
    /// The peer answered with an error message.
    #[error("peer refused: {0}")]
    Refused(String),
    /// A response arrived while no request was outstanding.
    #[error("answer without a request")]
    NoRequest,
}

/// Counts of one session, for metrics and the simulator's reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Digest rounds started.
    pub rounds: usize,
    /// Names asked for.
    pub fetched: usize,
    /// Records pushed.
    pub pushed: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pending {
    Digest { cursor: Option<(u8, String)> },
    Fetch,
    Push,
}

/// The initiating side of one anti-entropy session.
#[derive(Clone, Debug)]
pub struct Initiator {
    config: SessionConfig,
    /// Cursor of the next digest round (after a truncated listing).
    cursor: Option<(u8, String)>,
    fetch: VecDeque<Vec<String>>,
    push: VecDeque<Vec<String>>,
    pending: Option<Pending>,
    /// Whether the last plan asked for another round (work done or a listing to continue).
    more: bool,
    done: Option<SessionEnd>,
    stats: SessionStats,
}

impl Initiator {
    /// A fresh session.
    pub fn new(config: SessionConfig) -> Self {
        Self {
            config,
            cursor: None,
            fetch: VecDeque::new(),
            push: VecDeque::new(),
            pending: None,
            more: true,
            done: None,
            stats: SessionStats::default(),
        }
    }

    /// Counts so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// What to do next, given the local store now. Call it first, and again after every
    /// answer (once the records the answer handed over are applied).
    pub fn poll<S: Store + ?Sized>(&mut self, store: &S, _now_ms: u64) -> InitiatorStep {
        if let Some(end) = self.done {
            return InitiatorStep::Done(end);
        }
        if let Some(names) = self.fetch.pop_front() {
            self.stats.fetched += names.len();
            self.pending = Some(Pending::Fetch);
            return InitiatorStep::Send(SyncRequest::Fetch { names });
        }
        if let Some(names) = self.push.pop_front() {
            let records = records_for(store, &names);
            self.stats.pushed += records.len();
            self.pending = Some(Pending::Push);
            return InitiatorStep::Send(SyncRequest::Push { records });
        }
        if !self.more {
            return self.finish(SessionEnd::NothingToDo);
        }
        if self.stats.rounds >= self.config.max_rounds {
            return self.finish(SessionEnd::RoundCap);
        }
        self.stats.rounds += 1;
        let cursor = self.cursor.take();
        let req = digest_request_from(store, cursor.as_ref());
        self.pending = Some(Pending::Digest { cursor });
        InitiatorStep::Send(req)
    }

    fn finish(&mut self, end: SessionEnd) -> InitiatorStep {
        self.done = Some(end);
        self.pending = None;
        InitiatorStep::Done(end)
    }

    /// Takes the peer's answer to the last request. Returns the records (wire bytes) the
    /// driver must apply to the local store — through the merge rule, with replication
    /// freshness — before the next [`Initiator::poll`]. An error ends the session.
    pub fn handle_response<S: Store + ?Sized>(
        &mut self,
        store: &S,
        resp: SyncResponse,
        now_ms: u64,
    ) -> Result<Vec<Vec<u8>>, SessionError> {
        let Some(pending) = self.pending.take() else {
            return Err(SessionError::NoRequest);
        };
        let result = self.dispatch(store, pending, resp, now_ms);
        if result.is_err() {
            self.done = Some(SessionEnd::NothingToDo);
        }
        result
    }

    fn dispatch<S: Store + ?Sized>(
        &mut self,
        store: &S,
        pending: Pending,
        resp: SyncResponse,
        now_ms: u64,
    ) -> Result<Vec<Vec<u8>>, SessionError> {
        let unexpected = |request: &'static str, resp: &SyncResponse| match resp {
            SyncResponse::Error { message } => SessionError::Refused(message.clone()),
            other => SessionError::Unexpected {
                request,
                answer: kind(other),
            },
        };
        match (pending, resp) {
            (Pending::Digest { .. }, SyncResponse::InSync) => {
                self.done = Some(SessionEnd::InSync);
                Ok(Vec::new())
            }
            (
                Pending::Digest { cursor },
                SyncResponse::Summaries {
                    buckets,
                    summaries,
                    truncated,
                },
            ) => {
                let buckets = sanitize_buckets(buckets);
                let summaries = within(&buckets, summaries);
                let after = cursor.as_ref().map(|(b, n)| (*b, n.as_str()));
                let plan = plan_sync(store, &buckets, &summaries, truncated, after, now_ms);
                self.more = !(plan.fetch.is_empty() && plan.push.is_empty() && plan.next.is_none());
                self.fetch = chunks(plan.fetch);
                self.push = chunks(plan.push);
                self.cursor = plan.next;
                Ok(Vec::new())
            }
            (Pending::Fetch, SyncResponse::Records { records }) => {
                Ok(records.into_iter().take(MAX_RECORDS_PER_MESSAGE).collect())
            }
            (Pending::Push, SyncResponse::PushAck { .. }) => Ok(Vec::new()),
            (Pending::Digest { .. }, other) => Err(unexpected("digest", &other)),
            (Pending::Fetch, other) => Err(unexpected("fetch", &other)),
            (Pending::Push, other) => Err(unexpected("push", &other)),
        }
    }
}

fn kind(resp: &SyncResponse) -> &'static str {
    match resp {
        SyncResponse::InSync => "in_sync",
        SyncResponse::Summaries { .. } => "summaries",
        SyncResponse::Records { .. } => "records",
        SyncResponse::PushAck { .. } => "push_ack",
        SyncResponse::Error { .. } => "error",
    }
}

fn chunks(names: Vec<String>) -> VecDeque<Vec<String>> {
    names
        .chunks(MAX_RECORDS_PER_MESSAGE)
        .map(<[String]>::to_vec)
        .collect()
}

/// The responder's bucket list, untrusted: each bucket once, in the order given, at most
/// [`BUCKETS`]. (A listing that repeats bucket 0 a million times would otherwise make the
/// planner walk the local bucket a million times.)
fn sanitize_buckets(buckets: Vec<u8>) -> Vec<u8> {
    let mut seen = [false; BUCKETS];
    buckets
        .into_iter()
        .filter(|&b| !std::mem::replace(&mut seen[usize::from(b)], true))
        .collect()
}

/// Summaries of names outside the listed buckets are ignored: the planner treats the listed
/// buckets as the responder's whole truth, and a name from elsewhere proves nothing.
fn within(buckets: &[u8], summaries: Vec<Summary>) -> Vec<Summary> {
    let mut listed = [false; BUCKETS];
    for &b in buckets {
        listed[usize::from(b)] = true;
    }
    summaries
        .into_iter()
        .filter(|s| listed[usize::from(bucket_of(&s.name))])
        .collect()
}

/// What the responder's driver should do with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponderAction {
    /// Send this answer.
    Reply(SyncResponse),
    /// Apply these pushed records to the local store (merge rule, replication freshness),
    /// then answer with [`push_ack`] of how many changed it.
    ApplyThenAck(Vec<Vec<u8>>),
}

/// The responding side: answers one request from the local store. Reads only; pushes are
/// handed back to the driver to apply (it owns durability).
pub fn respond<S: Store + ?Sized>(store: &S, req: SyncRequest) -> ResponderAction {
    match req {
        SyncRequest::Digest { root, buckets } => {
            ResponderAction::Reply(answer_digest(store, &root, &buckets, None))
        }
        SyncRequest::DigestFrom {
            root,
            buckets,
            bucket,
            after,
        } => ResponderAction::Reply(answer_digest(
            store,
            &root,
            &buckets,
            Some((bucket, &after)),
        )),
        SyncRequest::Fetch { names } => ResponderAction::Reply(answer_fetch(store, &names)),
        SyncRequest::Push { records } => ResponderAction::ApplyThenAck(
            records.into_iter().take(MAX_RECORDS_PER_MESSAGE).collect(),
        ),
    }
}

/// The answer to a push once `applied` records changed the store.
pub fn push_ack(applied: usize) -> SyncResponse {
    SyncResponse::PushAck {
        applied: u32::try_from(applied).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_sync_visits_every_peer_at_a_constant_cost_per_interval() {
        let peers: Vec<u32> = (0..7).collect();
        let mut seen = std::collections::BTreeSet::new();
        for round in 40..44 {
            let picked = peers_for_round(&peers, round);
            assert_eq!(picked.len(), SYNC_PEERS_PER_INTERVAL);
            seen.extend(picked);
        }
        assert_eq!(seen.len(), 7, "every peer within ceil(7 / 2) intervals");
        assert_eq!(peers_for_round(&[9u32], u64::MAX), vec![9]);
        assert!(peers_for_round::<u32>(&[], 3).is_empty());
    }

    #[test]
    fn a_bucket_listed_many_times_is_planned_once() {
        let listed = sanitize_buckets(vec![0; 1_000_000]);
        assert_eq!(listed, vec![0]);
        assert_eq!(sanitize_buckets(vec![3, 1, 3, 2, 1]), vec![3, 1, 2]);
    }

    #[test]
    fn an_answer_without_a_request_or_of_the_wrong_kind_ends_the_session() {
        let store = crate::MemStore::new();
        let mut s = Initiator::new(SessionConfig::default());
        assert_eq!(
            s.handle_response(&store, SyncResponse::InSync, 0),
            Err(SessionError::NoRequest)
        );
        assert!(matches!(
            s.poll(&store, 0),
            InitiatorStep::Send(SyncRequest::Digest { .. })
        ));
        assert!(matches!(
            s.handle_response(&store, SyncResponse::PushAck { applied: 1 }, 0),
            Err(SessionError::Unexpected { .. })
        ));
        assert!(matches!(s.poll(&store, 0), InitiatorStep::Done(_)));
    }

    #[test]
    fn the_session_stops_at_the_round_cap() {
        let store = crate::MemStore::new();
        let mut s = Initiator::new(SessionConfig { max_rounds: 2 });
        for _ in 0..2 {
            assert!(matches!(s.poll(&store, 0), InitiatorStep::Send(_)));
            // A peer that keeps listing an empty, truncated answer: always "more to come".
            let more = SyncResponse::Summaries {
                buckets: vec![0],
                summaries: vec![],
                truncated: true,
            };
            s.handle_response(&store, more, 0)
                .expect("summaries fit a digest");
            s.more = true;
        }
        assert_eq!(s.poll(&store, 0), InitiatorStep::Done(SessionEnd::RoundCap));
    }
}
