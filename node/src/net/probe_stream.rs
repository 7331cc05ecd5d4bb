//! The failure detector's direct probes over one long-lived stream per connection.
//!
//! **Why (issue 16).** Idle cost is per connection, and at idle almost all of a connection's
//! traffic is the detector's probes. Sent as request-response (`/dpin/probe/1`), every probe
//! opened a fresh yamux stream, negotiated multistream-select and closed the stream again:
//! four to six encrypted frames each way, each a TCP segment and a wake-up on both ends, for 8
//! bytes of news. Here a probe is one 8-byte frame on a stream that stays open, and its answer
//! is the same 8 bytes echoed back: one segment each way. The schedule (whom to probe, when,
//! and what silence means) stays in `dpin_protocol::liveness`; this is only the carrier.
//!
//! **Wire format** of [`PROTOCOL`]: the dialler writes a sequence number (8 bytes, big
//! endian) and reads the same 8 bytes back before it sends the next; the listener echoes every
//! 8 bytes it reads. Nothing else crosses the stream.
//!
//! **Bounds.** One outbound and one inbound probe stream per connection (a second inbound
//! stream replaces the first); at most [`MAX_QUEUED`] probes wait behind the one in flight
//! (more are reported [`Event::NotSent`]); an answer not back within [`PONG_TIMEOUT`] drops the
//! stream (the next probe opens a fresh one); evidence of life from inbound probes is reported
//! at most once per [`PINGED_EVERY`]; a peer sending more than [`MAX_ECHOES_PER_S`] probes in a
//! second has its probe stream closed and is reported ([`Event::Flooded`]). The streams never
//! keep a connection alive by themselves.
//!
//! **Older peers.** A peer that does not speak [`PROTOCOL`] is reported with the probes that
//! were waiting for it ([`Event::NotSent`] with `unsupported`), and the behaviour refuses
//! further probes to it ([`Behaviour::ping`] returns `false`) until it disconnects, so the
//! caller sends those over `/dpin/probe/1` instead.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt};
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::Endpoint;
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, Stream, StreamProtocol, StreamUpgradeError, SubstreamProtocol,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Protocol name of the probe stream.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/dpin/probe-stream/1");

/// Probes that may wait on a connection behind the one in flight.
pub const MAX_QUEUED: usize = 8;

/// How long a probe's echo may take before the stream is given up (the detector's own
/// timeouts are far shorter; this only frees a stream whose peer went away).
pub const PONG_TIMEOUT: Duration = Duration::from_secs(5);

/// Inbound probes are reported as evidence of life at most this often per connection (the
/// detector ticks every 100 ms; more often says nothing new).
pub const PINGED_EVERY: Duration = Duration::from_millis(100);

/// Set in a probe's 8 bytes when the prober's failure detector watches us (it chose us; see
/// `dpin_protocol::liveness`): we then watch it back. Older nodes never set it and echo it
/// unchanged, so it needs no new protocol version. The same bit marks a `/dpin/probe/1` ping's
/// nonce.
pub const WATCH_BIT: u64 = 1 << 63;

/// Most probes a peer may send us in one second on one connection (an honest peer sends about
/// two); beyond that its probe stream is closed.
pub const MAX_ECHOES_PER_S: u32 = 64;

/// What the behaviour reports to the event loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `peer` echoed our probe `seq`.
    Pong { peer: PeerId, seq: u64 },
    /// `peer` probed us: evidence that it is alive. `watch`: the probe carried
    /// [`WATCH_BIT`] (the peer's detector chose to watch us).
    Pinged { peer: PeerId, watch: bool },
    /// These probes to `peer` were not answered and never will be on this stream: the stream
    /// could not be opened or failed, the queue was full, or (`unsupported`) the peer does
    /// not speak [`PROTOCOL`].
    NotSent {
        peer: PeerId,
        seqs: Vec<u64>,
        unsupported: bool,
    },
    /// `peer` sent probes faster than [`MAX_ECHOES_PER_S`]; its probe stream was closed.
    Flooded { peer: PeerId },
}

/// The probe-stream behaviour: hands probes to a connection's handler and reports answers.
#[derive(Default)]
pub struct Behaviour {
    /// Peers that said they do not speak [`PROTOCOL`] (until they disconnect).
    unsupported: HashSet<PeerId>,
    /// Established connections per peer.
    connections: HashMap<PeerId, usize>,
    pending: VecDeque<ToSwarm<Event, u64>>,
    waker: Option<Waker>,
}

impl Behaviour {
    /// Queues probe `seq` to `peer` on its probe stream. `false`: not connected, or the peer
    /// does not speak [`PROTOCOL`] — send it another way.
    pub fn ping(&mut self, peer: PeerId, seq: u64) -> bool {
        if !self.connections.contains_key(&peer) || self.unsupported.contains(&peer) {
            return false;
        }
        self.pending.push_back(ToSwarm::NotifyHandler {
            peer_id: peer,
            handler: NotifyHandler::Any,
            event: seq,
        });
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        true
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::default())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::default())
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                *self.connections.entry(e.peer_id).or_default() += 1;
            }
            FromSwarm::ConnectionClosed(e) => {
                if e.remaining_established == 0 {
                    self.connections.remove(&e.peer_id);
                    self.unsupported.remove(&e.peer_id);
                } else if let Some(n) = self.connections.get_mut(&e.peer_id) {
                    *n = e.remaining_established;
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        let event = match event {
            HandlerEvent::Pong(seq) => Event::Pong { peer, seq },
            HandlerEvent::Pinged { watch } => Event::Pinged { peer, watch },
            HandlerEvent::NotSent { seqs, unsupported } => {
                if unsupported {
                    self.unsupported.insert(peer);
                }
                Event::NotSent {
                    peer,
                    seqs,
                    unsupported,
                }
            }
            HandlerEvent::Flooded => Event::Flooded { peer },
        };
        self.pending.push_back(ToSwarm::GenerateEvent(event));
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.pending.pop_front() {
            Some(e) => Poll::Ready(e),
            None => {
                self.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// What a connection's handler reports to the behaviour.
#[derive(Debug)]
pub enum HandlerEvent {
    Pong(u64),
    Pinged { watch: bool },
    NotSent { seqs: Vec<u64>, unsupported: bool },
    Flooded,
}

type PingFuture = BoxFuture<'static, (u64, io::Result<Stream>)>;
type EchoFuture = BoxFuture<'static, io::Result<(Stream, u64)>>;

enum Outbound {
    /// No stream (none yet, or the last one failed).
    None,
    /// A stream was requested.
    Opening,
    Idle(Stream),
    Busy(PingFuture),
}

/// One connection's probe streams.
pub struct Handler {
    outbound: Outbound,
    queue: VecDeque<u64>,
    inbound: Option<EchoFuture>,
    unsupported: bool,
    events: VecDeque<HandlerEvent>,
    /// When an inbound probe was last reported as evidence.
    last_pinged: Option<Instant>,
    last_watch_pinged: Option<Instant>,
    /// Start of the current one-second window of inbound probes, and how many came in it.
    echo_window: (Instant, u32),
}

impl Default for Handler {
    fn default() -> Self {
        Self {
            outbound: Outbound::None,
            queue: VecDeque::new(),
            inbound: None,
            unsupported: false,
            events: VecDeque::new(),
            last_pinged: None,
            last_watch_pinged: None,
            echo_window: (Instant::now(), 0),
        }
    }
}

/// Writes `seq` and waits for it to come back.
async fn ping(mut stream: Stream, seq: u64) -> (u64, io::Result<Stream>) {
    let exchange = async {
        stream.write_all(&seq.to_be_bytes()).await?;
        stream.flush().await?;
        let mut echo = [0u8; 8];
        stream.read_exact(&mut echo).await?;
        if echo != seq.to_be_bytes() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "probe echo does not match",
            ));
        }
        Ok(())
    };
    match tokio::time::timeout(PONG_TIMEOUT, exchange).await {
        Ok(Ok(())) => (seq, Ok(stream)),
        Ok(Err(e)) => (seq, Err(e)),
        Err(_) => (
            seq,
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "probe echo timed out",
            )),
        ),
    }
}

/// Echoes one probe.
async fn echo(mut stream: Stream) -> io::Result<(Stream, u64)> {
    let mut buf = [0u8; 8];
    stream.read_exact(&mut buf).await?;
    stream.write_all(&buf).await?;
    stream.flush().await?;
    Ok((stream, u64::from_be_bytes(buf)))
}

impl Handler {
    /// Hands every waiting probe back as not sent.
    fn give_up_queue(&mut self) {
        if !self.queue.is_empty() {
            self.events.push_back(HandlerEvent::NotSent {
                seqs: self.queue.drain(..).collect(),
                unsupported: self.unsupported,
            });
        }
    }

    /// Counts one inbound probe; `false` if the peer is over [`MAX_ECHOES_PER_S`].
    fn admit_echo(&mut self, now: Instant) -> bool {
        let (start, n) = &mut self.echo_window;
        if now.duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *n = 0;
        }
        *n += 1;
        *n <= MAX_ECHOES_PER_S
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = u64;
    type ToBehaviour = HandlerEvent;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
    }

    fn on_behaviour_event(&mut self, seq: u64) {
        if self.unsupported || self.queue.len() >= MAX_QUEUED {
            self.events.push_back(HandlerEvent::NotSent {
                seqs: vec![seq],
                unsupported: self.unsupported,
            });
        } else {
            self.queue.push_back(seq);
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        if let Some(fut) = self.inbound.as_mut() {
            match fut.poll_unpin(cx) {
                Poll::Pending => {}
                Poll::Ready(Err(_)) => self.inbound = None,
                Poll::Ready(Ok((stream, seq))) => {
                    let now = Instant::now();
                    if self.admit_echo(now) {
                        self.inbound = Some(echo(stream).boxed());
                        let watch = seq & WATCH_BIT != 0;
                        // A watching probe has its own limiter, so unwatched ones (relays
                        // for a third peer) never hide it.
                        let last = if watch {
                            &mut self.last_watch_pinged
                        } else {
                            &mut self.last_pinged
                        };
                        if last.is_none_or(|t| now.duration_since(t) >= PINGED_EVERY) {
                            *last = Some(now);
                            self.events.push_back(HandlerEvent::Pinged { watch });
                        }
                    } else {
                        // Dropping the stream resets it.
                        self.inbound = None;
                        self.events.push_back(HandlerEvent::Flooded);
                    }
                }
            }
        }
        loop {
            match std::mem::replace(&mut self.outbound, Outbound::None) {
                Outbound::Busy(mut fut) => match fut.poll_unpin(cx) {
                    Poll::Pending => {
                        self.outbound = Outbound::Busy(fut);
                        break;
                    }
                    Poll::Ready((seq, Ok(stream))) => {
                        self.outbound = Outbound::Idle(stream);
                        self.events.push_back(HandlerEvent::Pong(seq));
                    }
                    Poll::Ready((seq, Err(_))) => {
                        // The stream is dropped; the next probe opens a fresh one.
                        self.events.push_back(HandlerEvent::NotSent {
                            seqs: vec![seq],
                            unsupported: false,
                        });
                    }
                },
                Outbound::Idle(stream) => match self.queue.pop_front() {
                    Some(seq) => self.outbound = Outbound::Busy(ping(stream, seq).boxed()),
                    None => {
                        self.outbound = Outbound::Idle(stream);
                        break;
                    }
                },
                Outbound::Opening => {
                    self.outbound = Outbound::Opening;
                    break;
                }
                Outbound::None => {
                    if self.queue.is_empty() || self.unsupported {
                        break;
                    }
                    self.outbound = Outbound::Opening;
                    return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                        protocol: SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ()),
                    });
                }
            }
        }
        match self.events.pop_front() {
            Some(e) => Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(e)),
            None => Poll::Pending,
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: mut stream,
                ..
            }) => {
                stream.ignore_for_keep_alive();
                // One inbound probe stream per connection: a new one replaces the old.
                self.inbound = Some(echo(stream).boxed());
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: mut stream,
                ..
            }) => {
                stream.ignore_for_keep_alive();
                self.outbound = Outbound::Idle(stream);
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                self.outbound = Outbound::None;
                if matches!(error, StreamUpgradeError::NegotiationFailed) {
                    self.unsupported = true;
                }
                self.give_up_queue();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer gets [`MAX_ECHOES_PER_S`] probes answered per second on a connection, and no
    /// more; the count starts again in the next second.
    #[test]
    fn inbound_probes_are_bounded_per_second() {
        let mut h = Handler::default();
        let t0 = h.echo_window.0;
        for i in 0..MAX_ECHOES_PER_S {
            assert!(
                h.admit_echo(t0 + Duration::from_millis(u64::from(i))),
                "probe {i}"
            );
        }
        assert!(!h.admit_echo(t0 + Duration::from_millis(900)));
        assert!(h.admit_echo(t0 + Duration::from_millis(1000)));
    }

    /// Probes beyond [`MAX_QUEUED`] waiting on one connection are handed back, not held.
    #[test]
    fn a_full_queue_hands_probes_back() {
        let mut h = Handler::default();
        for seq in 0..MAX_QUEUED as u64 + 2 {
            h.on_behaviour_event(seq);
        }
        assert_eq!(h.queue.len(), MAX_QUEUED);
        let handed_back: Vec<u64> = h
            .events
            .iter()
            .flat_map(|e| match e {
                HandlerEvent::NotSent { seqs, .. } => seqs.clone(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(handed_back, vec![MAX_QUEUED as u64, MAX_QUEUED as u64 + 1]);
    }
}
