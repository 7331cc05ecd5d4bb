//! The event loop: the one task that owns the libp2p swarm ([`EventLoop`]), its `run` loop
//! (swarm events, handle commands, timers), command handling and the dispatch of behaviour
//! events (gossipsub, Kademlia, identify, sync). It translates between the network and the
//! node and takes no protocol decisions; connection management, bans, probes and NAT are
//! `impl EventLoop` blocks in their own modules.

use super::*;
pub(super) struct EventLoop {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) events: mpsc::Sender<NetEvent>,
    pub(super) topic: gossipsub::TopicHash,
    pub(super) max_message_bytes: usize,
    /// Stop dialing discovered peers at this many established connections.
    pub(super) dial_target: usize,
    /// [`NetConfig::trim_grace`].
    pub(super) trim_grace: Duration,
    /// Peers we expect in the cluster; bootstrap eagerly while we see fewer.
    pub(super) cluster_peers: usize,
    pub(super) bootstrap: Vec<Multiaddr>,
    pub(super) pending_requests:
        HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, NetError>>>,
    pub(super) counters: Arc<Counters>,
    /// Listeners still open (used at start-up to fail if all of them die).
    pub(super) listeners: HashSet<ListenerId>,
    /// Outgoing dials in flight, for the slots they hold ([`Dialing`]).
    pub(super) dialing: connections::Dialing,
    /// Peers lost (connection closed, or cut by [`NetHandle::reconnect`]) and being re-dialled.
    pub(super) redial: HashMap<PeerId, Redial>,
    /// Dialable addresses of peers (identify's listen addresses, addresses we dialled), so a
    /// lost peer can be re-dialled even after Kademlia dropped its failed addresses.
    pub(super) addr_book: HashMap<PeerId, Vec<Multiaddr>>,
    /// Probe requests in flight (bounded by [`MAX_PENDING_PROBES`]).
    pub(super) probes: HashMap<OutboundRequestId, PendingProbe>,
    /// Direct probes in flight on probe streams, by their sequence number (bounded by
    /// [`MAX_PENDING_PROBES`]; dropped after [`STREAM_PING_FORGET`] if no answer comes).
    pub(super) stream_pings: HashMap<u64, StreamPing>,
    /// The next probe-stream sequence number.
    pub(super) next_seq: u64,
    /// How many of `probes` and `stream_pings` are relays for others (their nack timer runs
    /// while > 0).
    pub(super) relays: usize,
    /// When each connected peer's first connection was established (for the trim grace).
    pub(super) connected_at: HashMap<PeerId, tokio::time::Instant>,
    /// Subscription checks after first connections ([`connections::SubscribeChecks`]).
    pub(super) subscribe_checks: connections::SubscribeChecks,
    /// Connected peers gossipsub has heard subscribe to our topic (its `Subscribed` events;
    /// forgotten on `Unsubscribed` and when the peer's last connection closes).
    pub(super) subscribed: HashSet<PeerId>,
    /// Peers whose connections we are closing to keep the target degree (goodbye sent,
    /// connection not closed yet).
    pub(super) trimming: HashSet<PeerId>,
    /// Connected peers that told us they are closing our connection to keep their degree
    /// (goodbye): their disconnection is a release. At most one per connected peer (removed
    /// when the peer disconnects), so bounded by the connection limit.
    pub(super) releasing: HashSet<PeerId>,
    /// Peers released (we trimmed them, or they trimmed us) and until when they are not
    /// dialled again ([`RELEASE_COOLDOWN`]; bounded by [`MAX_RELEASED`]). Whether a
    /// *disconnection* is a release is decided per connection (`trimming`, `releasing`),
    /// not by this map.
    pub(super) cooldown: HashMap<PeerId, tokio::time::Instant>,
    /// Shared with the handle: releases the node has not looked at yet.
    pub(super) released: Arc<Released>,
    /// When the maintenance tick last started a Kademlia bootstrap.
    pub(super) last_kad_bootstrap: Option<tokio::time::Instant>,
    /// A peer was lost and the node is now below its target degree: the run loop brings the
    /// next maintenance tick forward (its period may have backed off to
    /// [`DISCOVERY_MAX_INTERVAL`] while the node was stable).
    pub(super) maintain_soon: bool,
    /// Banned peers and when their ban ends (bounded by [`MAX_BANS`]); mirrored in the
    /// `blocked` behaviour, which refuses their connections.
    pub(super) bans: HashMap<PeerId, tokio::time::Instant>,
    /// When our validation last rejected a message from each peer (kept for
    /// [`REJECTION_MEMORY`], at most [`MAX_REJECTING_PEERS`]): what makes a graylist a ban.
    pub(super) rejected: HashMap<PeerId, tokio::time::Instant>,
    /// Connected peers graylisted by gossipsub and left to it (not banned), so each graylist
    /// episode is counted and logged once; bounded by the connections.
    pub(super) graylisted_kept: HashSet<PeerId>,
    /// libp2p's metrics ([`NetConfig::metrics`]).
    pub(super) metrics: Option<swarm_metrics::SwarmMetrics>,
    /// Discovery and NAT state ([`nat`]).
    pub(super) nat: nat::NatState,
}

impl EventLoop {
    pub(super) async fn wait_for_listen_addr(&mut self) -> Result<(), NetError> {
        let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
        let mut last_error = String::from("timed out");
        while self.swarm.listeners().next().is_none() {
            if self.listeners.is_empty() {
                return Err(NetError::NoListenAddr(last_error));
            }
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(event) => {
                    if let SwarmEvent::ListenerClosed {
                        reason: Err(ref e), ..
                    } = event
                    {
                        last_error = e.to_string();
                    }
                    self.handle_swarm_event(event);
                }
                Err(_) => return Err(NetError::NoListenAddr(last_error)),
            }
        }
        Ok(())
    }

    pub(super) fn dial_bootstrap(&mut self) {
        for addr in self.bootstrap.clone() {
            let (base, peer) = split_peer_id(&addr);
            let result = match peer {
                Some(peer) if peer == *self.swarm.local_peer_id() => continue,
                Some(peer) => {
                    self.swarm
                        .behaviour_mut()
                        .kademlia
                        .add_address(&peer, base.clone());
                    self.dial(
                        DialOpts::peer_id(peer)
                            .addresses(vec![base])
                            .condition(PeerCondition::DisconnectedAndNotDialing)
                            .allocate_new_port()
                            .build(),
                    )
                }
                // Bare address: identify tells us who it is once connected, and kad then
                // inserts the peer (we are the dialer, so its address is known).
                None => self.dial(
                    DialOpts::unknown_peer_id()
                        .address(addr.clone())
                        .allocate_new_port()
                        .build(),
                ),
            };
            match result {
                Ok(()) => debug!(%addr, "dialing bootstrap peer"),
                // Already connected (or dialing) is the normal case after a restart that
                // lists every peer as bootstrap: not worth a warning.
                Err(DialError::DialPeerConditionFalse(_)) => {
                    debug!(%addr, "bootstrap peer already connected or being dialed")
                }
                Err(e) => warn!(%addr, error = %e, "cannot dial bootstrap peer"),
            }
        }
        // Fails with NoKnownPeers if only bare addresses were given; the maintenance tick
        // retries once a connection exists.
        if let Err(e) = self.swarm.behaviour_mut().kademlia.bootstrap() {
            debug!(error = %e, "kademlia bootstrap not started yet");
        }
    }

    pub(super) async fn run(mut self, discovery_interval: Duration) {
        // The discovery tick backs off while the node is stable (see `maintain`).
        let mut discovery_delay = discovery_interval;
        let discovery = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(discovery);
        let mut redial_tick = tokio::time::interval(REDIAL_TICK);
        redial_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut relay_tick = tokio::time::interval(RELAY_NACK_AFTER / 4);
        relay_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ban_tick = tokio::time::interval(BAN_TICK);
        ban_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => {
                    self.handle_swarm_event(event);
                    // A node the last of its peers released (trimmed) has no re-dial and no
                    // dial-back (both wait for maintenance); with the tick backed off it sat
                    // alone for up to DISCOVERY_MAX_INTERVAL. Maintenance runs at the base
                    // period instead, as it would after any tick that saw a loss.
                    if std::mem::take(&mut self.maintain_soon) {
                        discovery_delay = discovery_interval;
                        let soon = tokio::time::Instant::now() + jitter(discovery_interval);
                        if soon < discovery.deadline() {
                            discovery.as_mut().reset(soon);
                        }
                    }
                }
                // Armed only while some peer is being re-dialled: an idle node never wakes
                // for it.
                _ = redial_tick.tick(), if !self.redial.is_empty() => self.redial_due(),
                _ = relay_tick.tick(), if self.relays > 0 => self.expire_relays(),
                _ = ban_tick.tick() => {
                    self.check_bans();
                    if !self.subscribe_checks.is_empty() {
                        self.check_subscriptions();
                    }
                    self.forget_stale_stream_pings();
                    if self.relay_retry_pending() {
                        self.listen_on_relays();
                    }
                    if self.direct_dials_pending() {
                        self.dial_direct_due();
                    }
                }
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        let _ = reply.send(());
                        break;
                    }
                    Some(command) => self.handle_command(command),
                    // Every handle dropped: nobody can use the network any more.
                    None => break,
                },
                () = &mut discovery => {
                    let stable = self.maintain();
                    discovery_delay = if stable {
                        discovery_delay.saturating_mul(2).min(DISCOVERY_MAX_INTERVAL)
                    } else {
                        discovery_interval
                    };
                    discovery.as_mut().reset(tokio::time::Instant::now() + jitter(discovery_delay));
                }
            }
        }
        info!(peer = %self.swarm.local_peer_id(), "network event loop stopped");
        // Dropping `self` fails pending requests (their senders drop: NetError::Shutdown)
        // and closes all connections.
    }

    /// Dials in flight that count towards the target degree (ours and the behaviours', not
    /// re-dials; [`connections::Dialing`]), or one discovery pass would dial every peer in
    /// the routing table at once.
    pub(super) fn dials_holding_slots(&self) -> usize {
        self.dialing.holding_slots(tokio::time::Instant::now())
    }

    /// Starts a dial of the node's own that holds a degree slot ([`connections::Dialing`]).
    /// The swarm reports `SwarmEvent::Dialing` only for dials its behaviours ask for, so the
    /// node records its own here. Re-dials call the swarm directly: they hold no slot.
    pub(super) fn dial(&mut self, opts: DialOpts) -> Result<(), DialError> {
        let id = opts.connection_id();
        self.swarm.dial(opts)?;
        self.dialing.started(id, tokio::time::Instant::now());
        Ok(())
    }

    pub(super) fn num_established(&self) -> usize {
        self.swarm
            .network_info()
            .connection_counters()
            .num_established() as usize
    }

    /// Sends an event without ever waiting; returns false (and counts) if it was dropped.
    pub(super) fn emit(&self, event: NetEvent) -> bool {
        match self.events.try_send(event) {
            Ok(()) => true,
            Err(e) => {
                let n = self.counters.dropped_events.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    warn!(dropped = n, reason = %e, "event channel unavailable, dropping events");
                }
                false
            }
        }
    }

    pub(super) fn handle_command(&mut self, command: Command) {
        match command {
            Command::Publish { data, reply } => {
                let result = match self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(self.topic.clone(), data)
                {
                    Ok(id) => {
                        debug!(message_id = %id, "published");
                        Ok(PublishStatus::Sent)
                    }
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                        debug!("publish: no subscribed peers yet");
                        Ok(PublishStatus::NoPeers)
                    }
                    Err(gossipsub::PublishError::Duplicate) => Ok(PublishStatus::Duplicate),
                    Err(gossipsub::PublishError::AllQueuesFull(n)) => Err(NetError::QueuesFull(n)),
                    Err(e) => Err(NetError::Publish(e.to_string())),
                };
                let _ = reply.send(result);
            }
            Command::ReportValidation {
                message_id,
                source,
                verdict,
            } => {
                let known = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &source, acceptance(verdict));
                if !known {
                    debug!(%message_id, "validation result for a message no longer cached");
                }
                // A rejection is what drives a peer's score down: check it now, not only on the
                // ban tick. Gossipsub ignores a graylisted peer's messages, so its score stops
                // falling and decays back above the threshold within a decay interval (1 s);
                // a tick with the same period could miss every such window, and a flooding
                // peer was then never banned (the net test flaked that way).
                if verdict == Verdict::Reject {
                    self.note_rejection(source);
                    if self.graylist_decision(&source) == Some(GraylistDecision::Ban) {
                        self.ban(source, GRAYLIST_BAN, BanReason::Graylisted);
                    }
                }
            }
            Command::Request { peer, data, reply } => {
                let result = if !self.swarm.is_connected(&peer) {
                    // request-response would dial on its own; we fail fast instead so the
                    // anti-entropy loop picks another peer.
                    Err(NetError::NotConnected(peer))
                } else if self.pending_requests.len() >= MAX_PENDING_REQUESTS {
                    Err(NetError::Busy)
                } else {
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .sync
                        .send_request(&peer, Payload::outbound(data));
                    self.pending_requests.insert(id, reply);
                    return;
                };
                let _ = reply.send(result);
            }
            Command::Respond {
                channel,
                data,
                reply,
            } => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel.inner, data)
                    .map_err(|_| NetError::ResponseChannelClosed);
                let _ = reply.send(result);
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Dial { addr, reply } => {
                let (base, peer) = split_peer_id(&addr);
                let result = match peer {
                    Some(peer) => {
                        self.swarm
                            .behaviour_mut()
                            .kademlia
                            .add_address(&peer, base.clone());
                        self.dial(
                            DialOpts::peer_id(peer)
                                .addresses(vec![base])
                                .allocate_new_port()
                                .build(),
                        )
                    }
                    None => self.dial(
                        DialOpts::unknown_peer_id()
                            .address(addr)
                            .allocate_new_port()
                            .build(),
                    ),
                };
                let _ = reply.send(result.map_err(|e| NetError::Dial(e.to_string())));
            }
            Command::Reconnect { peer, reply } => {
                self.reconnect(peer, false);
                let _ = reply.send(());
            }
            Command::Ban {
                peer,
                duration,
                reason,
                reply,
            } => {
                self.ban(peer, duration, reason);
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            Command::Probe { peer, nonce, watch } => {
                self.send_ping(peer, nonce, PingFor::Us { watch })
            }
            Command::ProbeVia {
                helper,
                target,
                nonce,
            } => {
                self.send_probe(
                    helper,
                    probe_ping_req(nonce, &target),
                    PendingProbe::Via { target, nonce },
                );
            }
            // Handled in `run` because it ends the loop.
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            }
            #[cfg(test)]
            Command::Trim { peer, reply } => {
                self.trim_peer(peer);
                let _ = reply.send(());
            }
        }
    }

    pub(super) fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if let Some(m) = &self.metrics {
            m.record(&event);
        }
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => self.on_gossipsub(e),
            SwarmEvent::Behaviour(BehaviourEvent::Kademlia(e)) => self.on_kademlia(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.on_identify(e),
            SwarmEvent::Behaviour(BehaviourEvent::Probe(e)) => self.on_probe(e),
            SwarmEvent::Behaviour(BehaviourEvent::ProbeStream(e)) => self.on_probe_stream(e),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(e)) => self.on_sync(e),
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(e)) => self.on_autonat(e),
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(e)) => self.on_relay_client(e),
            SwarmEvent::Behaviour(BehaviourEvent::RelayServer(e)) => self.on_relay_server(e),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => self.on_dcutr(e),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(e)) => self.on_mdns(e),
            SwarmEvent::Behaviour(BehaviourEvent::Limits(never)) => match never {},
            SwarmEvent::Behaviour(BehaviourEvent::Blocked(never)) => match never {},
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                num_established,
                endpoint,
                ..
            } => {
                self.dialing.ended(connection_id);
                self.nat_connection_established(peer_id, connection_id, &endpoint);
                self.redial.remove(&peer_id);
                let now = tokio::time::Instant::now();
                self.connected_at.entry(peer_id).or_insert(now);
                if endpoint.is_dialer() {
                    let (base, _) = split_peer_id(endpoint.get_remote_address());
                    self.remember_addr(peer_id, base);
                }
                if num_established.get() == 1 {
                    // A release covers the connection it closed; this one is new (e.g. a
                    // Kademlia query's, or the peer needed us again): it is lost or
                    // released on its own terms.
                    self.cooldown.remove(&peer_id);
                    self.subscribe_checks.connected(peer_id, now);
                    self.counters.connected.fetch_add(1, Ordering::Relaxed);
                    info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "peer connected");
                    self.emit(NetEvent::PeerConnected(peer_id));
                } else {
                    self.check_half_open(peer_id, connection_id, &endpoint);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                self.nat_connection_closed(peer_id, connection_id);
                if num_established == 0 {
                    info!(peer = %peer_id, cause = ?cause, "peer disconnected");
                    // Released (trimmed by either side): told to the node before the event,
                    // so it forgets the peer instead of counting it down.
                    let ours = self.trimming.remove(&peer_id);
                    let theirs = self.releasing.remove(&peer_id);
                    let released = ours || theirs;
                    if released {
                        self.released.insert(peer_id);
                    }
                    self.emit(NetEvent::PeerDisconnected(peer_id));
                    self.connected_at.remove(&peer_id);
                    self.subscribed.remove(&peer_id);
                    if self.num_established() < self.dial_target {
                        self.maintain_soon = true;
                    }
                    // A lost peer (crashed and restarting, or behind a cut) is re-dialled
                    // while we are below the target degree; one we closed on purpose
                    // already is (`reconnect`), a released one is not.
                    if !released
                        && !self.bans.contains_key(&peer_id)
                        && self.num_established() < self.dial_target
                    {
                        self.start_redial(peer_id, jitter(REDIAL_MIN), false);
                    }
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                self.emit(NetEvent::ListenAddr(address));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                info!(%address, "listen address expired");
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                self.listeners.remove(&listener_id);
                if self.nat.is_relay_listener(&listener_id) {
                    let why = match &reason {
                        Ok(()) => "closed".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    self.on_relay_listener_closed(listener_id, why);
                    return;
                }
                match reason {
                    Ok(()) => info!(?listener_id, "listener closed"),
                    Err(e) => warn!(?listener_id, error = %e, "listener failed"),
                }
            }
            // A behaviour's dial (Kademlia's, the relay client's); the node's own are
            // recorded where it starts them (`EventLoop::dial`).
            SwarmEvent::Dialing { connection_id, .. } => {
                self.dialing
                    .started(connection_id, tokio::time::Instant::now());
            }
            SwarmEvent::ListenerError { error, .. } => warn!(%error, "listener error"),
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                error,
                connection_id,
            } => {
                self.dialing.ended(connection_id);
                if let Some(r) = peer_id.and_then(|p| self.redial.get_mut(&p)) {
                    r.pending.retain(|c| *c != connection_id);
                }
                if let DialError::Denied { cause } = &error {
                    self.count_refusal(cause);
                }
                debug!(peer = ?peer_id, %error, "outgoing connection failed");
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                if let libp2p::swarm::ListenError::Denied { cause } = &error {
                    self.count_refusal(cause);
                }
                debug!(%error, "incoming connection failed");
            }
            other => trace!(event = ?other, "swarm event"),
        }
    }

    pub(super) fn on_gossipsub(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                // Gossipsub already capped the envelope; this enforces the exact payload
                // contract. A compliant node never publishes more, so it is a violation.
                let verdict = if message.topic != self.topic
                    || message.data.len() > self.max_message_bytes
                {
                    Some(MessageAcceptance::Reject)
                } else {
                    let event = NetEvent::Gossip {
                        source: propagation_source,
                        message_id: message_id.clone(),
                        data: message.data,
                    };
                    self.gossip_from(propagation_source);
                    match self.events.try_send(event) {
                        Ok(()) => None,
                        Err(_) => {
                            let n =
                                self.counters.dropped_gossip.fetch_add(1, Ordering::Relaxed) + 1;
                            if n.is_power_of_two() {
                                warn!(dropped = n, "node not keeping up, ignoring gossip");
                            }
                            // Ignore, not Reject: the sender did nothing wrong.
                            Some(MessageAcceptance::Ignore)
                        }
                    }
                };
                if let Some(acceptance) = verdict {
                    let rejected = matches!(acceptance, MessageAcceptance::Reject);
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            acceptance,
                        );
                    if rejected {
                        self.note_rejection(propagation_source);
                        if self.graylist_decision(&propagation_source)
                            == Some(GraylistDecision::Ban)
                        {
                            self.ban(propagation_source, GRAYLIST_BAN, BanReason::Graylisted);
                        }
                    }
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                debug!(peer = %peer_id, %topic, "peer subscribed");
                if topic == self.topic && self.swarm.is_connected(&peer_id) {
                    self.subscribed.insert(peer_id);
                }
            }
            gossipsub::Event::Unsubscribed { peer_id, topic } => {
                debug!(peer = %peer_id, %topic, "peer unsubscribed");
                if topic == self.topic {
                    self.subscribed.remove(&peer_id);
                }
            }
            gossipsub::Event::GossipsubNotSupported { peer_id } => {
                debug!(peer = %peer_id, "peer does not support gossipsub");
            }
            gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            } => {
                // Messages gossipsub could not hand to this peer's connection in the last
                // heartbeat: its bounded queue was full (the peer stopped reading), or they
                // waited past their send deadline. Anti-entropy repairs what it missed.
                let c = &self.counters;
                c.gossip_queue_full
                    .fetch_add(failed_messages.total_queue_full() as u64, Ordering::Relaxed);
                c.gossip_timed_out
                    .fetch_add(failed_messages.timeout as u64, Ordering::Relaxed);
                debug!(peer = %peer_id, ?failed_messages, "slow gossipsub peer");
            }
        }
    }

    pub(super) fn on_kademlia(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutingUpdated {
                peer, is_new_peer, ..
            } => {
                if is_new_peer {
                    debug!(%peer, "kademlia: new peer in routing table");
                }
                self.maybe_dial(peer);
            }
            kad::Event::OutboundQueryProgressed { result, .. } => match result {
                kad::QueryResult::Bootstrap(Ok(ok)) => {
                    debug!(peer = %ok.peer, remaining = ok.num_remaining, "kademlia bootstrap step");
                }
                kad::QueryResult::Bootstrap(Err(e)) => debug!(error = %e, "kademlia bootstrap"),
                other => trace!(result = ?other, "kademlia query"),
            },
            other => trace!(event = ?other, "kademlia event"),
        }
    }

    pub(super) fn on_identify(&mut self, event: identify::Event) {
        if let identify::Event::Received { peer_id, info, .. } = event {
            debug!(peer = %peer_id, addrs = ?info.listen_addrs, "identified peer");
            self.emit(NetEvent::Identified {
                peer: peer_id,
                budgeted_sync: super::takes_budgeted_chunks(&info.protocol_version),
            });
            // Reached only through a relay so far: try its direct addresses ([`nat`]).
            self.nat_identified(peer_id, &info.listen_addrs);
            // Only kad-capable peers belong in the routing table; their *listen* addresses
            // (not the ephemeral port they dialled us from) make them reachable for others.
            let kad_protocol = StreamProtocol::new(KAD_PROTOCOL);
            for addr in info.listen_addrs.iter().take(MAX_ADDRS_PER_PEER) {
                self.remember_addr(peer_id, addr.clone());
            }
            if info.protocols.contains(&kad_protocol) {
                for addr in info.listen_addrs.into_iter().take(MAX_ADDRS_PER_PEER) {
                    self.swarm
                        .behaviour_mut()
                        .kademlia
                        .add_address(&peer_id, addr);
                }
            }
        }
    }

    pub(super) fn on_sync(&mut self, event: request_response::Event<Payload, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    // If dropped, `channel` is dropped with it and the requester fails fast.
                    // The guard travels with the channel: the request's bytes stay counted
                    // until the node answers or drops it.
                    self.emit(NetEvent::Request {
                        peer,
                        data: request.data,
                        channel: ResponseChannel {
                            inner: channel,
                            _guard: request.guard,
                        },
                    });
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.pending_requests.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                debug!(%peer, %error, "sync request failed");
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let err = match error {
                        request_response::OutboundFailure::Timeout => NetError::Timeout,
                        request_response::OutboundFailure::ConnectionClosed => {
                            NetError::ConnectionClosed
                        }
                        request_response::OutboundFailure::DialFailure => {
                            NetError::NotConnected(peer)
                        }
                        other => NetError::RequestFailed(other.to_string()),
                    };
                    let _ = reply.send(Err(err));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "inbound sync request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}
