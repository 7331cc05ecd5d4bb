//! Liveness glue: carrying the failure detector's probes (direct probes on the probe stream
//! or as `/dpin/probe/1` requests, indirect probes relayed for others with a nack after
//! `RELAY_NACK_AFTER`) and answering peers' probes and goodbyes. The detector itself, which
//! decides who is alive, is `dpin_protocol::liveness`, driven by the node.

use super::*;
/// What a probe request in flight is for.
#[derive(Debug)]
pub(super) enum PendingProbe {
    /// Our direct probe of `peer`.
    Direct { peer: PeerId, nonce: u64 },
    /// Our request that a helper probe `target`.
    Via { target: PeerId, nonce: u64 },
    /// A probe we send for another node's indirect round; the answer goes back on `reply`.
    Relay {
        reply: request_response::ResponseChannel<Vec<u8>>,
        deadline: tokio::time::Instant,
    },
    /// We told `peer` we are closing our connection to keep our degree; the connection is
    /// closed when it answers, or when the request fails or times out.
    Goodbye { peer: PeerId },
}

/// A direct probe in flight on a probe stream ([`probe_stream`]).
#[derive(Debug)]
pub(super) enum StreamPing {
    /// Our probe of `peer` for the detector's `nonce`.
    Direct {
        peer: PeerId,
        nonce: u64,
        watch: bool,
        sent: tokio::time::Instant,
    },
    /// A probe of `target` we send for another node's indirect round.
    Relay {
        target: PeerId,
        nonce: u64,
        reply: request_response::ResponseChannel<Vec<u8>>,
        deadline: tokio::time::Instant,
    },
}

/// Why a direct probe is sent: for our detector, or relayed for another node.
pub(super) enum PingFor {
    /// Our detector's probe; `watch` as in [`NetHandle::probe`].
    Us { watch: bool },
    Relay {
        reply: request_response::ResponseChannel<Vec<u8>>,
        deadline: tokio::time::Instant,
    },
}

/// The keys of `map` whose values satisfy `pred` (collected, so the caller can then remove
/// them): the expiry sweeps over pending probes.
pub(super) fn keys_where<K: Copy, V>(map: &HashMap<K, V>, pred: impl Fn(&V) -> bool) -> Vec<K> {
    map.iter()
        .filter(|(_, v)| pred(v))
        .map(|(k, _)| *k)
        .collect()
}

/// A probe-stream entry whose answer has not come within this is forgotten (the handler
/// reports a failed stream itself; this covers a connection closed under it).
pub(super) const STREAM_PING_FORGET: Duration = Duration::from_secs(10);

impl EventLoop {
    /// Sends a direct probe of `to` (the detector's `nonce`) on its probe stream, or as a
    /// `/dpin/probe/1` request to a peer that does not speak the stream protocol.
    pub(super) fn send_ping(&mut self, to: PeerId, nonce: u64, purpose: PingFor) {
        if self.stream_pings.len() >= MAX_PENDING_PROBES || !self.swarm.is_connected(&to) {
            self.counters.dropped_probes.fetch_add(1, Ordering::Relaxed);
            if let PingFor::Relay { reply, .. } = purpose {
                self.answer_relay(reply, PROBE_NACK);
            }
            return;
        }
        let watch_bit = match purpose {
            PingFor::Us { watch: true } => probe_stream::WATCH_BIT,
            _ => 0,
        };
        let seq = (self.next_seq & !probe_stream::WATCH_BIT) | watch_bit;
        let on_stream = self
            .swarm
            .behaviour_mut()
            .probe_stream
            .as_mut()
            .is_some_and(|b| b.ping(to, seq));
        if on_stream {
            self.counters
                .probes_on_stream
                .fetch_add(1, Ordering::Relaxed);
            self.next_seq = self.next_seq.wrapping_add(1);
            let entry = match purpose {
                PingFor::Us { watch } => StreamPing::Direct {
                    peer: to,
                    nonce,
                    watch,
                    sent: tokio::time::Instant::now(),
                },
                PingFor::Relay { reply, deadline } => {
                    self.relays += 1;
                    StreamPing::Relay {
                        target: to,
                        nonce,
                        reply,
                        deadline,
                    }
                }
            };
            self.stream_pings.insert(seq, entry);
            return;
        }
        let kind = match purpose {
            PingFor::Us { .. } => PendingProbe::Direct { peer: to, nonce },
            PingFor::Relay { reply, deadline } => PendingProbe::Relay { reply, deadline },
        };
        self.counters
            .probes_as_requests
            .fetch_add(1, Ordering::Relaxed);
        self.send_probe(to, probe_ping(nonce | watch_bit), kind);
    }

    pub(super) fn on_probe_stream(&mut self, event: probe_stream::Event) {
        match event {
            probe_stream::Event::Pinged { peer, watch } => {
                self.emit(if watch {
                    NetEvent::WatchedBy(peer)
                } else {
                    NetEvent::Heard(peer)
                });
            }
            probe_stream::Event::Pong { peer, seq } => match self.stream_pings.remove(&seq) {
                Some(StreamPing::Direct { peer: p, nonce, .. }) if p == peer => {
                    self.emit(NetEvent::ProbeAck { peer, nonce });
                }
                Some(StreamPing::Relay { target, reply, .. }) if target == peer => {
                    self.relays = self.relays.saturating_sub(1);
                    self.answer_relay(reply, PROBE_ACK);
                }
                Some(other) => {
                    // Not this peer's sequence number (cannot happen with honest handlers):
                    // keep the entry for its own peer.
                    self.stream_pings.insert(seq, other);
                }
                None => {}
            },
            probe_stream::Event::NotSent {
                peer,
                seqs,
                unsupported,
            } => {
                for seq in seqs {
                    let purpose = match self.stream_pings.remove(&seq) {
                        Some(StreamPing::Direct { nonce, watch, .. }) => {
                            (nonce, PingFor::Us { watch })
                        }
                        Some(StreamPing::Relay {
                            nonce,
                            reply,
                            deadline,
                            ..
                        }) => {
                            self.relays = self.relays.saturating_sub(1);
                            (nonce, PingFor::Relay { reply, deadline })
                        }
                        None => continue,
                    };
                    if unsupported {
                        // An older peer: the same probe as a `/dpin/probe/1` request (the
                        // behaviour now refuses stream probes to it, so this cannot loop).
                        self.send_ping(peer, purpose.0, purpose.1);
                    } else {
                        self.counters.dropped_probes.fetch_add(1, Ordering::Relaxed);
                        if let PingFor::Relay { reply, .. } = purpose.1 {
                            self.answer_relay(reply, PROBE_NACK);
                        }
                    }
                }
            }
            probe_stream::Event::Flooded { peer } => {
                debug!(%peer, "peer flooded our probe stream; stream closed");
                self.counters.probe_floods.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Forgets probe-stream entries whose answer will not come (their connection closed).
    pub(super) fn forget_stale_stream_pings(&mut self) {
        let now = tokio::time::Instant::now();
        let stale = keys_where(
            &self.stream_pings,
            |p| matches!(p, StreamPing::Direct { sent, .. } if now.duration_since(*sent) >= STREAM_PING_FORGET),
        );
        for seq in stale {
            self.stream_pings.remove(&seq);
        }
    }

    /// Sends our direct probe or ping-req, unless too many are in flight.
    pub(super) fn send_probe(&mut self, to: PeerId, data: Vec<u8>, kind: PendingProbe) {
        if self.probes.len() >= MAX_PENDING_PROBES || !self.swarm.is_connected(&to) {
            self.counters.dropped_probes.fetch_add(1, Ordering::Relaxed);
            if let PendingProbe::Relay { reply, .. } = kind {
                self.answer_relay(reply, PROBE_NACK);
            }
            return;
        }
        if matches!(kind, PendingProbe::Relay { .. }) {
            self.relays += 1;
        }
        let id = self
            .swarm
            .behaviour_mut()
            .probe
            .send_request(&to, Payload::outbound(data));
        self.probes.insert(id, kind);
    }

    /// Nacks every relayed probe whose target did not answer within [`RELAY_NACK_AFTER`].
    pub(super) fn expire_relays(&mut self) {
        let now = tokio::time::Instant::now();
        let expired = keys_where(
            &self.probes,
            |k| matches!(k, PendingProbe::Relay { deadline, .. } if *deadline <= now),
        );
        for id in expired {
            self.nack_relay(id);
        }
        let expired = keys_where(
            &self.stream_pings,
            |p| matches!(p, StreamPing::Relay { deadline, .. } if *deadline <= now),
        );
        for seq in expired {
            if let Some(StreamPing::Relay { reply, .. }) = self.stream_pings.remove(&seq) {
                self.relays = self.relays.saturating_sub(1);
                self.answer_relay(reply, PROBE_NACK);
            }
        }
    }

    /// Answers the node that asked us to relay a probe (`PROBE_ACK` or `PROBE_NACK`).
    pub(super) fn answer_relay(
        &mut self,
        reply: request_response::ResponseChannel<Vec<u8>>,
        answer: u8,
    ) {
        let _ = self
            .swarm
            .behaviour_mut()
            .probe
            .send_response(reply, vec![answer]);
    }

    /// Forgets the pending probe `id` (its target failed or timed out); if it was relayed for
    /// another node, answers that node "no answer".
    pub(super) fn nack_relay(&mut self, id: OutboundRequestId) {
        if let Some(PendingProbe::Relay { reply, .. }) = self.probes.remove(&id) {
            self.relays = self.relays.saturating_sub(1);
            self.answer_relay(reply, PROBE_NACK);
        }
    }

    pub(super) fn on_probe(&mut self, event: request_response::Event<Payload, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let decoded = decode_probe(&request.data);
                    match decoded {
                        Some(ProbeRequest::Goodbye) => {}
                        // Being probed is evidence that the prober is alive.
                        Some(ProbeRequest::Ping { watch: true }) => {
                            self.emit(NetEvent::WatchedBy(peer));
                        }
                        _ => {
                            self.emit(NetEvent::Heard(peer));
                        }
                    }
                    match decoded {
                        Some(ProbeRequest::Goodbye) => {
                            // The peer trims us to keep its degree: do not dial it back.
                            debug!(%peer, "peer is closing our connection to keep its degree");
                            self.release(peer);
                            self.releasing.insert(peer);
                            self.counters
                                .released_by_peer
                                .fetch_add(1, Ordering::Relaxed);
                            let _ = self
                                .swarm
                                .behaviour_mut()
                                .probe
                                .send_response(channel, vec![PROBE_ACK]);
                        }
                        Some(ProbeRequest::Ping { .. }) => {
                            let _ = self
                                .swarm
                                .behaviour_mut()
                                .probe
                                .send_response(channel, vec![PROBE_ACK]);
                        }
                        Some(ProbeRequest::PingReq { nonce, target }) => self.send_ping(
                            target,
                            nonce,
                            PingFor::Relay {
                                reply: channel,
                                deadline: tokio::time::Instant::now() + RELAY_NACK_AFTER,
                            },
                        ),
                        None => debug!(%peer, "undecodable probe"),
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    let ack = response.first() == Some(&PROBE_ACK);
                    match self.probes.remove(&request_id) {
                        Some(PendingProbe::Direct { peer, nonce }) => {
                            self.emit(NetEvent::ProbeAck { peer, nonce });
                        }
                        Some(PendingProbe::Via { target, nonce }) => {
                            self.emit(NetEvent::Heard(peer));
                            self.emit(if ack {
                                NetEvent::ProbeAck {
                                    peer: target,
                                    nonce,
                                }
                            } else {
                                NetEvent::ProbeNack { target, nonce }
                            });
                        }
                        Some(PendingProbe::Relay { reply, .. }) => {
                            self.relays = self.relays.saturating_sub(1);
                            self.answer_relay(reply, PROBE_ACK);
                        }
                        Some(PendingProbe::Goodbye { peer }) => self.close_trimmed(peer),
                        None => {}
                    }
                }
            },
            request_response::Event::OutboundFailure { request_id, .. } => {
                // A direct probe or a ping-req that failed says nothing by itself: the
                // detector judges by silence. A relay answers "no answer" (nack). A goodbye
                // that failed (an older peer drops it) still ends in the close.
                if let Some(PendingProbe::Goodbye { peer }) = self.probes.get(&request_id) {
                    let peer = *peer;
                    self.probes.remove(&request_id);
                    self.close_trimmed(peer);
                } else {
                    self.nack_relay(request_id);
                }
            }
            request_response::Event::InboundFailure { .. }
            | request_response::Event::ResponseSent { .. } => {}
        }
    }
}
