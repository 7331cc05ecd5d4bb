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
//! 3. fetch what the peer holds newer (in chunks, see below), applying each answer before
//!    the next request, then push what the peer lacks;
//! 4. next round, until in sync, nothing left to do, or [`SessionConfig::max_rounds`].
//!
//! Fetch comes before push so that a record both sides changed is settled by the merge rule
//! locally first, and the push then carries only winners. The round cap bounds one session's
//! cost (rounds × one listing of at most [`crate::digest::MAX_SUMMARIES`] summaries); what is
//! left is found by the next session.
//!
//! Catching up (a fresh node, or one back from a long partition). Three rules let a driver
//! move a large difference at the speed of its CPU instead of one capped session per sync
//! interval:
//!
//! * **Continue while it pays.** A session that hit the round cap *and* changed the local
//!   store (records fetched and applied, or pushes the peer applied) is followed at once by
//!   another ([`SessionEnd::continue_at_once`]), resuming its listing where it stopped
//!   ([`Initiator::cursor`], [`Initiator::resume`]). A session that changed nothing waits for
//!   the next interval as before, so a peer that only advertises what it cannot deliver does
//!   not hold a session slot: every continuation was paid for by records that changed the
//!   store (bounded by its quota).
//! * **Spread the starts.** Concurrent sessions with different peers list buckets in
//!   ascending order from the bucket they start at ([`Initiator::starting_at`]); a driver
//!   picks that bucket at random, so sessions with five peers fetch five different parts of
//!   the store first instead of the same records five times. A bucket another session has
//!   completed no longer differs and is skipped by the responder's listing.
//!   Random starts still leave some parts of the store to two sessions at once, so a driver
//!   that runs several sessions picks each new one's start with [`spread_start`]: the middle
//!   of the widest arc between the starts of its sessions already running, so K sessions
//!   started together split the buckets into K near-equal parts.
//! * **Pipeline fetches.** While fetches are queued ([`Initiator::fetch_queued`]) the next
//!   fetch does not depend on the local store, so the driver may send it while the records of
//!   the previous answer are still being verified and applied. Anything else (a push, the
//!   next digest) reads the store and waits until every handed-over record is applied. At
//!   most one answer is being applied while one request is in flight: memory stays bounded
//!   by two chunks.
//! * **Pull, do not be pushed.** Peers that start sessions with a node far behind push it
//!   what it lacks, each on its own, while the node's own sessions fetch the same records
//!   from other peers: one catch-up from five peers received every record almost three
//!   times, and checked each copy's signature. So a node whose own session is catching up
//!   ([`Initiator::catching_up`]: it fetched at least [`CATCH_UP_FETCHED`] names) answers
//!   pushes with [`refuse_push_while_catching_up`] instead of applying them and pulls from
//!   the pusher itself, where its sessions spread their starts. Every release ends its
//!   session on an error answer (counted as a failed sync, never held against the
//!   responder), and what it held comes across in the node's own pull.
//! * **Held copies cost a lookup.** A received record whose bytes are exactly those of the
//!   winner the store holds ([`is_held_copy`]) is a duplicate: those bytes were checked
//!   when they were accepted, so its signature is not checked again.
//!
//! Chunks and mixed versions. A fetch asks for at most [`SessionConfig::max_records`] names
//! and a push carries at most that many records, cut by [`chunk_len`]: every record up to
//! [`MAX_RECORDS_PER_MESSAGE`], then more while the records stay within [`CHUNK_BYTES`]
//! (256 KiB, ~1,700 typical records). The responder answers a fetch by the same rule
//! ([`crate::digest::answer_fetch`]); when an answer may have been cut by the budget, the
//! initiator asks again for the names after the last record it got. The rule that keeps
//! older releases working (they refuse, as malformed and held against the sender, a fetch or
//! push of more than [`MAX_RECORDS_PER_MESSAGE`]):
//!
//! * an initiator sends more than [`MAX_RECORDS_PER_MESSAGE`] names or records only when its
//!   driver knows the peer takes budgeted chunks ([`SessionConfig::budgeted`]); the default
//!   ([`SessionConfig::default`]) is the old cap, so a driver that does not know the peer's
//!   version sends exactly what older releases accept;
//! * a responder never answers more records than names were asked for (the initiator
//!   refuses that, [`AnswerError::TooManyRecords`]) and always answers the first
//!   [`MAX_RECORDS_PER_MESSAGE`] of them whole, so an older initiator, which asks for at most
//!   that many, gets the same answers as from an older responder;
//! * a responder of this release takes fetches and pushes of up to [`MAX_RECORDS_PER_CHUNK`]
//!   (the rest is ignored); every message of either kind stays under
//!   [`crate::digest::MAX_SYNC_MESSAGE_BYTES`], the limit every release decodes under.
//!
//! Answers are untrusted. Before any planning, an answer is checked against what an honest
//! responder ([`respond`]) can send, and refused whole with a typed [`AnswerError`]
//! (ending the session; drivers count it as a failed sync) if it breaks any rule:
//!
//! * the bucket list is strictly ascending, starting at the cursor's bucket and wrapping past
//!   255 (so distinct, at most [`BUCKETS`]; a list naming bucket 0 a million times — a *sync
//!   bomb* — is refused at its second entry);
//! * at most [`MAX_SUMMARIES`] summaries, strictly ascending by (bucket in the same order,
//!   name), each in a listed bucket, after the cursor, with a name of at most
//!   [`MAX_NAME_BYTES`];
//! * a records answer carries at most as many records as names were asked for.
//!
//! Bounds per answer at the initiator: the planner walks each listed bucket of the local store
//! once (at most the whole local store per answer, one bucket's listing in memory at a time)
//! and keeps at most [`MAX_SUMMARIES`] names to fetch and [`MAX_PUSH_PER_ROUND`] to push;
//! what is left over is found by the next round or session. Every record still goes through
//! the merge rule, so a lying peer can at worst waste a round.
//!
//! Bounds per request at the responder: see [`crate::digest::answer_digest`] (one cached
//! digest, at most [`MAX_SUMMARIES`] + 1 entries listed per bucket, an answer of at most
//! [`MAX_SUMMARIES`] summaries), [`crate::digest::answer_fetch`] and pushes (at most
//! [`MAX_RECORDS_PER_CHUNK`] names or records, the rest of the request ignored). Requests
//! are decoded under [`crate::digest::MAX_SYNC_MESSAGE_BYTES`]. How many requests a peer may
//! send is the driver's per-peer budget.

use std::collections::VecDeque;

use crate::digest::{
    answer_digest, answer_fetch, bucket_of, chunk_len, digest_request_from, plan_sync_bounded,
    BUCKETS, CHUNK_BYTES, MAX_NAME_BYTES, MAX_RECORDS_PER_CHUNK, MAX_RECORDS_PER_MESSAGE,
    MAX_SUMMARIES,
};
use crate::store::Store;
use crate::{SignedRecord, Summary, SyncRequest, SyncResponse, MAX_RECORD_BYTES};

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

/// The bucket a new session should start listing at, given the buckets the driver's other
/// running sessions started at (module docs, "Spread the starts"): the middle of the widest
/// arc between them (going up from one start to the next, wrapping past 255; the first
/// widest arc on a tie), or `random` when no other session runs. Sessions that start
/// together then cover near-equal parts of the store before one reaches buckets another has
/// completed (which the responder's listing skips, as they no longer differ).
pub fn spread_start(others: &[u8], random: u8) -> u8 {
    let mut starts: Vec<u16> = others.iter().map(|&b| u16::from(b)).collect();
    starts.sort_unstable();
    starts.dedup();
    let Some(&first) = starts.first() else {
        return random;
    };
    let mut widest = (0u16, first);
    for (i, &from) in starts.iter().enumerate() {
        let to = starts.get(i + 1).copied().unwrap_or(first + BUCKETS as u16);
        if to - from > widest.0 {
            widest = (to - from, from);
        }
    }
    let (arc, from) = widest;
    // Below 256 + 256 / 2: fits u16, and the remainder fits u8.
    u8::try_from((from + arc / 2) % BUCKETS as u16).unwrap_or(random)
}

/// Names a session must have fetched to count as catching up ([`Initiator::catching_up`]):
/// one full listing's worth, so a session that only mends a few differences never does.
pub const CATCH_UP_FETCHED: usize = MAX_SUMMARIES;

/// The answer a node gives a push while one of its own sessions is catching up (module
/// docs, "Pull, do not be pushed"). An error answer: the pusher's session ends there, on
/// every release, without an offence on either side.
pub fn refuse_push_while_catching_up() -> SyncResponse {
    SyncResponse::Error {
        message: "catching up: pulling instead of taking pushes".to_owned(),
    }
}

/// Whether `wire`, a received record named `name`, is byte for byte the winner `store`
/// holds for that name. Such a copy is a duplicate with nothing to check: the held bytes
/// were checked (fields, signature) when they were accepted, and a record is its bytes. A
/// copy that differs in any byte — another signature over the same body included — is not
/// one, and goes through every check as before.
pub fn is_held_copy<S: Store + ?Sized>(store: &S, name: &str, wire: &[u8]) -> bool {
    store
        .entry(name)
        .and_then(|e| e.bytes.as_deref())
        .is_some_and(|held| held == wire)
}

/// Most names one digest answer can make the initiator plan to push (the rest wait for the
/// next round). An honest peer that lacks a large part of the store still gets all of it, at
/// this many records per round ([`MAX_SYNC_ROUNDS`] rounds per session).
pub const MAX_PUSH_PER_ROUND: usize = MAX_SUMMARIES;

/// Session limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Most digest rounds per session.
    pub max_rounds: usize,
    /// Most names one fetch asks for and most records one push carries: the peer's limit,
    /// [`MAX_RECORDS_PER_MESSAGE`] for a peer that may run an older release (the default),
    /// up to [`MAX_RECORDS_PER_CHUNK`] for one known to take budgeted chunks (see the module
    /// docs). Values outside `1..=MAX_RECORDS_PER_CHUNK` are clamped into it.
    pub max_records: usize,
}

impl SessionConfig {
    /// The limits for a peer known to take budgeted chunks (this release or later).
    pub fn budgeted() -> Self {
        Self {
            max_records: MAX_RECORDS_PER_CHUNK,
            ..Self::default()
        }
    }

    fn records_cap(&self) -> usize {
        self.max_records.clamp(1, MAX_RECORDS_PER_CHUNK)
    }
}

impl Default for SessionConfig {
    /// [`MAX_SYNC_ROUNDS`] rounds and the per-message cap every release accepts.
    fn default() -> Self {
        Self {
            max_rounds: MAX_SYNC_ROUNDS,
            max_records: MAX_RECORDS_PER_MESSAGE,
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

impl SessionEnd {
    /// Whether the driver should start the next session with the same peer at once
    /// (resuming at [`Initiator::cursor`]) instead of at the next interval: only after the
    /// round cap, and only if the session changed a store (`changed`: records it fetched that
    /// changed the local store plus pushed records the peer reported applied). See the module
    /// docs ("Catching up").
    pub fn continue_at_once(self, changed: usize) -> bool {
        self == SessionEnd::RoundCap && changed > 0
    }
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
    /// The answer breaks a bound or ordering rule no honest responder breaks; it was refused
    /// whole before any planning (see the module docs).
    #[error("invalid answer: {0}")]
    InvalidAnswer(AnswerError),
}

/// Why an answer was refused as invalid (see the module docs for the rules).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// The bucket list is not strictly ascending from the cursor's bucket (a repeated or
    /// out-of-order bucket at `index`).
    #[error("bucket list not strictly ascending at entry {index}")]
    BucketsNotAscending {
        /// Position of the first offending entry.
        index: usize,
    },
    /// More summaries than [`MAX_SUMMARIES`].
    #[error("{got} summaries, at most {limit}")]
    TooManySummaries {
        /// Summaries in the answer.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// A summary's name does not hash into any listed bucket.
    #[error("summary {index} is outside the listed buckets")]
    SummaryOutsideBuckets {
        /// Position of the summary.
        index: usize,
    },
    /// Summaries are not strictly ascending by (bucket, name): a duplicate or out of order.
    #[error("summaries not strictly ascending at entry {index}")]
    SummariesNotAscending {
        /// Position of the first offending summary.
        index: usize,
    },
    /// A summary in the cursor's bucket at or before the cursor's name.
    #[error("summary {index} lies before the cursor")]
    SummaryBeforeCursor {
        /// Position of the summary.
        index: usize,
    },
    /// A summary's name is longer than any valid record name.
    #[error("summary {index} has a {len}-byte name, at most {limit}")]
    NameTooLong {
        /// Position of the summary.
        index: usize,
        /// Its name's length.
        len: usize,
        /// [`MAX_NAME_BYTES`].
        limit: usize,
    },
    /// A records answer with more records than names were asked for.
    #[error("{got} records for {limit} names asked")]
    TooManyRecords {
        /// Records in the answer.
        got: usize,
        /// Names asked for.
        limit: usize,
    },
}

impl AnswerError {
    /// A short stable name for counters (`reason` label).
    pub fn reason(&self) -> &'static str {
        match self {
            AnswerError::BucketsNotAscending { .. } => "buckets_not_ascending",
            AnswerError::TooManySummaries { .. } => "too_many_summaries",
            AnswerError::SummaryOutsideBuckets { .. } => "summary_outside_buckets",
            AnswerError::SummariesNotAscending { .. } => "summaries_not_ascending",
            AnswerError::SummaryBeforeCursor { .. } => "summary_before_cursor",
            AnswerError::NameTooLong { .. } => "name_too_long",
            AnswerError::TooManyRecords { .. } => "too_many_records",
        }
    }
}

/// Counts of one session, for metrics and the simulator's reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Digest rounds started.
    pub rounds: usize,
    /// Names asked for (a name asked again after a cut answer counts once).
    pub fetched: usize,
    /// Records pushed.
    pub pushed: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pending {
    Digest { cursor: Option<(u8, String)> },
    Fetch { names: Vec<String> },
    Push,
}

/// The initiating side of one anti-entropy session.
#[derive(Clone, Debug)]
pub struct Initiator {
    config: SessionConfig,
    /// Cursor of the next digest round (after a truncated listing).
    cursor: Option<(u8, String)>,
    fetch: VecDeque<String>,
    push: VecDeque<String>,
    pending: Option<Pending>,
    /// Whether the last plan asked for another round (work done or a listing to continue).
    more: bool,
    done: Option<SessionEnd>,
    stats: SessionStats,
}

impl Initiator {
    /// A fresh session, listing from bucket 0.
    pub fn new(config: SessionConfig) -> Self {
        Self::resume(config, None)
    }

    /// A fresh session whose first listing starts at `bucket` (and wraps past 255, so every
    /// bucket is still covered). Drivers pick `bucket` at random so that concurrent sessions
    /// with different peers start on different parts of the store (module docs, "Catching
    /// up").
    pub fn starting_at(config: SessionConfig, bucket: u8) -> Self {
        let cursor = (bucket != 0).then(|| (bucket, String::new()));
        Self::resume(config, cursor)
    }

    /// A fresh session whose first listing continues after `cursor`: what
    /// [`Initiator::cursor`] returned at the end of the previous session with the same peer
    /// (`None`: from bucket 0).
    pub fn resume(config: SessionConfig, cursor: Option<(u8, String)>) -> Self {
        Self {
            config,
            cursor,
            fetch: VecDeque::new(),
            push: VecDeque::new(),
            pending: None,
            more: true,
            done: None,
            stats: SessionStats::default(),
        }
    }

    /// Replaces the session's limits from the next request on: what the driver learned of
    /// the peer after the session started. A node dials a peer and starts its first session
    /// at once, usually before the peer's identify info says it takes budgeted chunks; left
    /// at the default, that session fetched 64 names a request for all of its rounds (a
    /// joiner's first session spent its whole new-peer budget at the peer in 5 requests,
    /// 320 records). The request in flight keeps the limits it was sent with.
    pub fn set_config(&mut self, config: SessionConfig) {
        self.config = config;
    }

    /// Counts so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Where the next listing continues (after a truncated answer), for
    /// [`Initiator::resume`]; `None` once a listing ran to its end.
    pub fn cursor(&self) -> Option<(u8, String)> {
        self.cursor.clone()
    }

    /// Whether this session is moving a large difference into the local store: it has
    /// fetched at least [`CATCH_UP_FETCHED`] names. While any session of a node is, the node
    /// refuses pushes and pulls instead (module docs, "Pull, do not be pushed").
    pub fn catching_up(&self) -> bool {
        self.stats.fetched >= CATCH_UP_FETCHED
    }

    /// Whether the next [`Initiator::poll`] sends a fetch of names already planned: it does
    /// not read the store, so the driver may send it before the records of the last answer
    /// are applied (module docs, "Pipeline fetches"). When this is false, apply every record
    /// handed over first.
    pub fn fetch_queued(&self) -> bool {
        self.done.is_none() && self.pending.is_none() && !self.fetch.is_empty()
    }

    /// What to do next, given the local store now. Call it first, and again after every
    /// answer (once the records the answer handed over are applied).
    pub fn poll<S: Store + ?Sized>(&mut self, store: &S, _now_ms: u64) -> InitiatorStep {
        if let Some(end) = self.done {
            return InitiatorStep::Done(end);
        }
        let cap = self.config.records_cap();
        if !self.fetch.is_empty() {
            let take = cap.min(self.fetch.len());
            let names: Vec<String> = self.fetch.drain(..take).collect();
            self.stats.fetched += names.len();
            self.pending = Some(Pending::Fetch {
                names: names.clone(),
            });
            return InitiatorStep::Send(SyncRequest::Fetch { names });
        }
        if !self.push.is_empty() {
            let records = self.next_push(store, cap);
            if !records.is_empty() {
                self.stats.pushed += records.len();
                self.pending = Some(Pending::Push);
                return InitiatorStep::Send(SyncRequest::Push { records });
            }
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

    /// The next push: records of the queued names still held, in order, cut by [`chunk_len`]
    /// (names without a body any more are dropped, names that did not fit stay queued).
    fn next_push<S: Store + ?Sized>(&mut self, store: &S, cap: usize) -> Vec<Vec<u8>> {
        let mut records: Vec<Vec<u8>> = Vec::new();
        while let Some(name) = self.push.front() {
            let Some(bytes) = store.entry(name).and_then(|e| e.bytes.as_deref()) else {
                self.push.pop_front();
                continue;
            };
            let fits =
                chunk_len(records.iter().map(Vec::len).chain([bytes.len()]), cap) > records.len();
            if !fits {
                break;
            }
            records.push(bytes.to_vec());
            self.push.pop_front();
        }
        records
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
                let after = cursor.as_ref().map(|(b, n)| (*b, n.as_str()));
                check_summaries(after, &buckets, &summaries)
                    .map_err(SessionError::InvalidAnswer)?;
                let plan = plan_sync_bounded(
                    store,
                    &buckets,
                    &summaries,
                    truncated,
                    after,
                    now_ms,
                    MAX_PUSH_PER_ROUND,
                );
                self.more = !(plan.fetch.is_empty() && plan.push.is_empty() && plan.next.is_none());
                self.fetch = plan.fetch.into();
                self.push = plan.push.into();
                self.cursor = plan.next;
                Ok(Vec::new())
            }
            (Pending::Fetch { names }, SyncResponse::Records { records }) => {
                if records.len() > names.len() {
                    return Err(SessionError::InvalidAnswer(AnswerError::TooManyRecords {
                        got: records.len(),
                        limit: names.len(),
                    }));
                }
                let rest = unanswered(&names, &records);
                self.stats.fetched -= rest.len();
                for name in rest.iter().rev() {
                    self.fetch.push_front(name.clone());
                }
                Ok(records)
            }
            (Pending::Push, SyncResponse::PushAck { .. }) => Ok(Vec::new()),
            (Pending::Digest { .. }, other) => Err(unexpected("digest", &other)),
            (Pending::Fetch { .. }, other) => Err(unexpected("fetch", &other)),
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

/// The names of a fetch that an answer cut by the byte budget left out: those after the
/// last record's name. An answer that cannot have been cut (at most
/// [`MAX_RECORDS_PER_MESSAGE`] records, or room left for one more record of any size) left
/// nothing out: names without a record are absent at the peer. A last record that does not
/// decode or names nothing asked for leaves nothing either (the next round finds the rest),
/// so a lying peer cannot make the session ask again forever: every repeat asks for fewer
/// names.
fn unanswered<'a>(names: &'a [String], records: &[Vec<u8>]) -> &'a [String] {
    let total: usize = records.iter().map(Vec::len).sum();
    if records.len() < MAX_RECORDS_PER_MESSAGE
        || total.saturating_add(MAX_RECORD_BYTES) <= CHUNK_BYTES
    {
        return &[];
    }
    let Some(last) = records.last().and_then(|b| SignedRecord::decode(b).ok()) else {
        return &[];
    };
    let last = last.name();
    match names.iter().position(|n| *n == last) {
        Some(i) => &names[i + 1..],
        None => &[],
    }
}

/// Position of bucket `b` in the listing order of an answer whose request carried a cursor
/// in bucket `start`: ascending from `start`, wrapping past 255 (see
/// [`crate::digest::answer_digest`]).
fn listing_rank(b: u8, start: u8) -> u8 {
    b.wrapping_sub(start)
}

/// Checks a summaries answer against the rules of the module docs. Costs one blake3 of each
/// summary's name (at most [`MAX_SUMMARIES`]); allocates one 256-entry table.
fn check_summaries(
    after: Option<(u8, &str)>,
    buckets: &[u8],
    summaries: &[Summary],
) -> Result<(), AnswerError> {
    let start = after.map_or(0, |(b, _)| b);
    let mut listed = [false; BUCKETS];
    let mut last: Option<u8> = None;
    for (index, &b) in buckets.iter().enumerate() {
        let rank = listing_rank(b, start);
        if last.is_some_and(|l| rank <= l) {
            return Err(AnswerError::BucketsNotAscending { index });
        }
        last = Some(rank);
        listed[usize::from(b)] = true;
    }
    if summaries.len() > MAX_SUMMARIES {
        return Err(AnswerError::TooManySummaries {
            got: summaries.len(),
            limit: MAX_SUMMARIES,
        });
    }
    let mut prev: Option<(u8, &str)> = None;
    for (index, s) in summaries.iter().enumerate() {
        if s.name.len() > MAX_NAME_BYTES {
            return Err(AnswerError::NameTooLong {
                index,
                len: s.name.len(),
                limit: MAX_NAME_BYTES,
            });
        }
        let b = bucket_of(&s.name);
        if !listed[usize::from(b)] {
            return Err(AnswerError::SummaryOutsideBuckets { index });
        }
        if matches!(after, Some((ab, an)) if ab == b && s.name.as_str() <= an) {
            return Err(AnswerError::SummaryBeforeCursor { index });
        }
        let key = (listing_rank(b, start), s.name.as_str());
        if prev.is_some_and(|p| key <= p) {
            return Err(AnswerError::SummariesNotAscending { index });
        }
        prev = Some(key);
    }
    Ok(())
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
        SyncRequest::Push { records } => {
            ResponderAction::ApplyThenAck(records.into_iter().take(MAX_RECORDS_PER_CHUNK).collect())
        }
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
    fn a_new_session_starts_in_the_middle_of_the_widest_arc_between_running_ones() {
        assert_eq!(spread_start(&[], 17), 17, "alone: the random start");
        assert_eq!(spread_start(&[10], 0), 138, "opposite the only other");
        assert_eq!(spread_start(&[10, 138], 0), 74, "first widest arc on a tie");
        assert_eq!(spread_start(&[10, 74, 138], 0), 202, "the arc that wraps");
        assert_eq!(spread_start(&[200, 10, 200], 0), 105, "unordered, repeated");
        assert_eq!(spread_start(&[255, 0], 3), 127);
        // Four sessions started one after another split the buckets evenly.
        let mut starts = vec![spread_start(&[], 5)];
        for _ in 0..3 {
            starts.push(spread_start(&starts, 0));
        }
        starts.sort_unstable();
        assert_eq!(starts, vec![5, 69, 133, 197]);
    }

    #[test]
    fn bucket_lists_ascend_from_the_cursor_bucket_and_wrap() {
        assert_eq!(check_summaries(None, &[0, 1, 255], &[]), Ok(()));
        assert_eq!(
            check_summaries(Some((200, "x")), &[200, 255, 0, 199], &[]),
            Ok(())
        );
        assert_eq!(
            check_summaries(Some((200, "x")), &[0, 200], &[]),
            Err(AnswerError::BucketsNotAscending { index: 1 })
        );
        assert_eq!(
            check_summaries(None, &[0; 1_000_000], &[]),
            Err(AnswerError::BucketsNotAscending { index: 1 })
        );
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
        let mut s = Initiator::new(SessionConfig {
            max_rounds: 2,
            ..SessionConfig::default()
        });
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
