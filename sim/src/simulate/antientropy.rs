//! The ONE adapter between the simulator and the protocol's anti-entropy session.
//!
//! The core is moving the session (cursor, round cap, stop rule, fetch-before-push, chunking)
//! into `dpin_protocol::sync` as a sans-IO state machine with this shape:
//! `Initiator::new(SessionConfig)`, `poll(&store, now_ms) -> InitiatorStep`,
//! `handle_response(&store, SyncResponse, now_ms) -> Result<Vec<Vec<u8>>, _>` and
//! `respond(&store, SyncRequest) -> ResponderAction`. Until it lands, this module builds the
//! same machine from the protocol's existing pieces (`digest_request_from`, `answer_digest`,
//! `plan_sync`, `answer_fetch`, `records_for`), following the node's `sync_with` step by step
//! (rounds until in sync, an empty plan, or the round cap; fetch chunks, then push chunks,
//! one request in flight). When `dpin_protocol::sync` exists, this file becomes re-exports and
//! nothing else in the simulator changes.

use std::collections::VecDeque;

use dpin_protocol::digest::{
    answer_digest, answer_fetch, digest_request_from, records_for, MAX_RECORDS_PER_MESSAGE,
};
use dpin_protocol::{plan_sync, Store, SyncRequest, SyncResponse};

/// Most rounds in one session (the node's `MAX_SYNC_ROUNDS`).
pub const MAX_SYNC_ROUNDS: usize = 16;

/// Session limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Rounds (digest exchanges) before the session gives up until the next interval.
    pub max_rounds: usize,
    /// Names per fetch and records per push.
    pub chunk: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_rounds: MAX_SYNC_ROUNDS,
            chunk: MAX_RECORDS_PER_MESSAGE,
        }
    }
}

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The roots matched.
    InSync,
    /// The digests differ but there is nothing this side can fetch or push.
    NothingToDo,
    /// The round cap was reached.
    RoundCap,
}

/// What the initiator wants next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitiatorStep {
    /// Send this request and feed the answer to [`Initiator::handle_response`].
    Send(SyncRequest),
    /// The session is over.
    Done(SessionEnd),
}

/// What the responder does with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponderAction {
    /// Send this answer.
    Reply(SyncResponse),
    /// Apply these pushed records (batch, replicate freshness), then answer with
    /// [`SyncResponse::PushAck`] carrying how many changed the store.
    ApplyThenAck(Vec<Vec<u8>>),
}

/// Why a session stopped early.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    /// The peer answered with an error.
    #[error("peer refused: {0}")]
    Remote(String),
    /// The answer does not fit the request.
    #[error("unexpected answer: {0}")]
    Unexpected(&'static str),
}

#[derive(Debug)]
enum State {
    /// Next: a digest request (a new round).
    Start,
    /// Waiting for summaries; `after` is the cursor the request carried.
    AwaitSummaries { after: Option<(u8, String)> },
    /// Working through the plan of this round.
    Work(Work),
    /// Waiting for records answering a fetch.
    AwaitRecords(Work),
    /// Waiting for a push acknowledgement.
    AwaitAck(Work),
    /// Over.
    Finished(SessionEnd),
}

#[derive(Debug)]
struct Work {
    fetch: VecDeque<Vec<String>>,
    push: VecDeque<Vec<String>>,
    next: Option<(u8, String)>,
}

/// The initiating side of one anti-entropy session with one peer.
#[derive(Debug)]
pub struct Initiator {
    cfg: SessionConfig,
    round: usize,
    cursor: Option<(u8, String)>,
    state: State,
}

impl Initiator {
    /// A session that has sent nothing yet.
    pub fn new(cfg: SessionConfig) -> Self {
        Self {
            cfg,
            round: 0,
            cursor: None,
            state: State::Start,
        }
    }

    /// The next request, or the end of the session. Call once at the start and once after
    /// each [`Initiator::handle_response`] (after applying the records it returned).
    pub fn poll<S: Store + ?Sized>(&mut self, store: &S, _now_ms: u64) -> InitiatorStep {
        // Bounded: at most one pass through `Work` and one through `Start` per call.
        for _ in 0..3 {
            match std::mem::replace(&mut self.state, State::Start) {
                State::Start => {
                    if self.round >= self.cfg.max_rounds {
                        self.state = State::Finished(SessionEnd::RoundCap);
                        return InitiatorStep::Done(SessionEnd::RoundCap);
                    }
                    self.round += 1;
                    let req = digest_request_from(store, self.cursor.as_ref());
                    self.state = State::AwaitSummaries {
                        after: self.cursor.clone(),
                    };
                    return InitiatorStep::Send(req);
                }
                State::Work(mut w) => {
                    if let Some(names) = w.fetch.pop_front() {
                        self.state = State::AwaitRecords(w);
                        return InitiatorStep::Send(SyncRequest::Fetch { names });
                    }
                    if let Some(names) = w.push.pop_front() {
                        let records = records_for(store, &names);
                        self.state = State::AwaitAck(w);
                        return InitiatorStep::Send(SyncRequest::Push { records });
                    }
                    self.cursor = w.next;
                    self.state = State::Start;
                }
                State::Finished(end) => {
                    self.state = State::Finished(end);
                    return InitiatorStep::Done(end);
                }
                waiting => {
                    // Polled while a request is in flight: nothing new to send.
                    self.state = waiting;
                    return InitiatorStep::Done(SessionEnd::NothingToDo);
                }
            }
        }
        InitiatorStep::Done(SessionEnd::NothingToDo)
    }

    /// Takes the peer's answer. Returns records to apply (batch, replicate freshness) before
    /// the next [`Initiator::poll`].
    pub fn handle_response<S: Store + ?Sized>(
        &mut self,
        store: &S,
        resp: SyncResponse,
        now_ms: u64,
    ) -> Result<Vec<Vec<u8>>, SessionError> {
        if let SyncResponse::Error { message } = resp {
            self.state = State::Finished(SessionEnd::NothingToDo);
            return Err(SessionError::Remote(message));
        }
        match (std::mem::replace(&mut self.state, State::Start), resp) {
            (State::AwaitSummaries { .. }, SyncResponse::InSync) => {
                self.state = State::Finished(SessionEnd::InSync);
                Ok(Vec::new())
            }
            (
                State::AwaitSummaries { after },
                SyncResponse::Summaries {
                    buckets,
                    summaries,
                    truncated,
                },
            ) => {
                let after_ref = after.as_ref().map(|(b, n)| (*b, n.as_str()));
                let plan = plan_sync(store, &buckets, &summaries, truncated, after_ref, now_ms);
                if plan.fetch.is_empty() && plan.push.is_empty() && plan.next.is_none() {
                    self.state = State::Finished(SessionEnd::NothingToDo);
                    return Ok(Vec::new());
                }
                let chunk = self.cfg.chunk.max(1);
                self.state = State::Work(Work {
                    fetch: plan.fetch.chunks(chunk).map(<[String]>::to_vec).collect(),
                    push: plan.push.chunks(chunk).map(<[String]>::to_vec).collect(),
                    next: plan.next,
                });
                Ok(Vec::new())
            }
            (State::AwaitRecords(w), SyncResponse::Records { records }) => {
                self.state = State::Work(w);
                Ok(records)
            }
            (State::AwaitAck(w), SyncResponse::PushAck { .. }) => {
                self.state = State::Work(w);
                Ok(Vec::new())
            }
            (_, _) => {
                self.state = State::Finished(SessionEnd::NothingToDo);
                Err(SessionError::Unexpected(
                    "answer does not match the request in flight",
                ))
            }
        }
    }
}

/// The responder's side: answers digests and fetches from `store`; pushes are returned for
/// the caller to apply.
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
        SyncRequest::Push { records } => ResponderAction::ApplyThenAck(records),
    }
}
