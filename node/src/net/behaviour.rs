//! Building the swarm: the composed libp2p [`Behaviour`] (gossipsub, Kademlia, identify,
//! probes, sync, NAT traversal, bans and connection limits), the transport, and [`spawn`],
//! which starts the event loop and returns the node's handle. Construction only: what the
//! swarm does at run time is in the event loop's modules.

use super::*;
/// The composed behaviour. `blocked` (bans) and `limits` come first so refused connections
/// are denied before any other behaviour sets up state for them.
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    pub(super) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(super) limits: connection_limits::Behaviour,
    pub(super) gossipsub:
        gossipsub::Behaviour<gossipsub::IdentityTransform, gossipsub::WhitelistSubscriptionFilter>,
    pub(super) kademlia: kad::Behaviour<kad::store::MemoryStore>,
    pub(super) identify: identify::Behaviour,
    pub(super) probe: request_response::Behaviour<SyncCodec>,
    /// Direct probes over one long-lived stream per connection (older peers: `probe`).
    pub(super) probe_stream: Toggle<probe_stream::Behaviour>,
    pub(super) sync: request_response::Behaviour<SyncCodec>,
    // Discovery and NAT ([`nat`]).
    pub(super) autonat: autonat::Behaviour,
    pub(super) relay_client: relay::client::Behaviour,
    pub(super) relay_server: Toggle<relay::Behaviour>,
    pub(super) dcutr: dcutr::Behaviour,
    pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
}

pub(super) fn build_swarm(
    config: &NetConfig,
    inbound: Arc<InboundBudget>,
    backoff: Arc<transport::Backoff>,
) -> Result<Swarm<Behaviour>, NetError> {
    let local_peer_id = config.keypair.public().to_peer_id();
    let topic = gossipsub::IdentTopic::new(config.topic.clone());

    // The mesh can be no wider than the connections the node keeps.
    let gs_config = gossipsub_config(
        &topic.hash(),
        config.max_message_bytes,
        config
            .expected_cluster_size
            .min(config.target_peers.saturating_add(1)),
    )?;
    // Track only our topic's subscriptions: a peer cannot make us store unbounded topic lists.
    let filter = gossipsub::WhitelistSubscriptionFilter(HashSet::from([topic.hash()]));
    let mut gossipsub = gossipsub::Behaviour::new_with_subscription_filter(
        MessageAuthenticity::Anonymous,
        gs_config,
        filter,
    )
    .map_err(|e| NetError::Build(format!("gossipsub: {e}")))?;
    gossipsub
        .subscribe(&topic)
        .map_err(|e| NetError::Build(format!("subscribe: {e:?}")))?;
    let (score_params, score_thresholds) = peer_score_config(&topic.hash());
    gossipsub
        .with_peer_score(score_params, score_thresholds)
        .map_err(|e| NetError::Build(format!("gossipsub peer score: {e}")))?;

    let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    // Periodic refresh is a backstop; the maintenance tick bootstraps more eagerly while the
    // cluster looks incomplete.
    kad_config.set_periodic_bootstrap_interval(Some(KAD_PERIODIC_BOOTSTRAP));
    kad_config.set_query_timeout(Duration::from_secs(10));
    // Kademlia is used for peer discovery only. Inbound PUT_RECORD/ADD_PROVIDER requests are
    // surfaced as events that we ignore instead of being stored, so a peer cannot fill our
    // memory through the DHT (the store limits below are a second fence).
    kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
    let mut kademlia = kad::Behaviour::with_config(
        local_peer_id,
        kad::store::MemoryStore::with_config(
            local_peer_id,
            kad::store::MemoryStoreConfig {
                max_records: 16,
                max_value_bytes: 1024,
                max_providers_per_key: 4,
                max_provided_keys: 16,
            },
        ),
        kad_config,
    );
    // Server mode explicitly: otherwise kad waits for a confirmed external address, which
    // never comes on a LAN/loopback cluster, and nobody would answer our queries.
    kademlia.set_mode(Some(kad::Mode::Server));

    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), config.keypair.public())
            .with_push_listen_addr_updates(true),
    );
    // The failure detector's probes replace libp2p ping (which pinged every connection every
    // 500 ms): the detector decides whom to probe and when (protocol::liveness).
    let probe = request_response::Behaviour::with_codec(
        SyncCodec {
            max_bytes: MAX_PROBE_BYTES,
            inbound: None,
        },
        [(StreamProtocol::new(PROBE_PROTOCOL), ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(config.probe_request_timeout)
            .with_max_concurrent_streams(64),
    );
    let sync = request_response::Behaviour::with_codec(
        SyncCodec {
            max_bytes: config.max_request_bytes,
            inbound: Some(InboundLimits {
                budget: inbound,
                per_connection: MAX_INBOUND_PER_CONNECTION,
                connection: None,
            }),
        },
        [(StreamProtocol::new(SYNC_PROTOCOL), ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(config.request_timeout)
            .with_max_concurrent_streams(MAX_SYNC_STREAMS_PER_CONNECTION),
    );
    let limits = connection_limits::Behaviour::new(
        ConnectionLimits::default()
            .with_max_established(Some(config.max_connections))
            .with_max_established_per_peer(Some(config.max_connections_per_peer))
            .with_max_pending_incoming(Some(config.max_connections))
            .with_max_pending_outgoing(Some(config.max_connections)),
    );
    let mdns = nat::mdns_behaviour(config.nat.mdns, local_peer_id)?;
    let relay_server = config
        .nat
        .relay_server
        .then(|| relay::Behaviour::new(local_peer_id, nat::relay_server_config()));
    let behaviour = |relay_client| Behaviour {
        blocked: allow_block_list::Behaviour::default(),
        limits,
        gossipsub,
        kademlia,
        identify,
        probe,
        probe_stream: Toggle::from(config.probe_stream.then(probe_stream::Behaviour::default)),
        sync,
        autonat: autonat::Behaviour::new(local_peer_id, nat::autonat_config()),
        relay_client,
        relay_server: Toggle::from(relay_server),
        dcutr: dcutr::Behaviour::new(local_peer_id),
        mdns: Toggle::from(mdns),
    };

    let idle = config.idle_connection_timeout;
    let swarm = SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        // TCP as `with_tcp` builds it, plus the retransmission backoff cap ([`transport`]);
        // then QUIC as `with_quic` builds it. TCP stays first: its listen address is the
        // one reported first, which start-up prints and tests bootstrap from.
        .with_other_transport(|key| {
            transport::transport(key, tcp::Config::default().nodelay(true), backoff)
        })
        .map_err(|e| NetError::Build(format!("tcp: {e}")))?
        .with_other_transport(|key| {
            libp2p::quic::tokio::Transport::new(libp2p::quic::Config::new(key))
        })
        .map_err(|e| NetError::Build(format!("quic: {e}")))?
        .with_dns()
        .map_err(|e| NetError::Build(format!("dns: {e}")))?
        // Every node can dial `/p2p-circuit` addresses; `--relay` also listens through one.
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| NetError::Build(format!("relay client: {e}")))?
        .with_behaviour(|_, relay_client| behaviour(relay_client))
        .map_err(|e| NetError::Build(format!("behaviour: {e}")))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build();
    Ok(swarm)
}

/// Splits a trailing `/p2p/<peer id>` off an address.
pub(super) fn split_peer_id(addr: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut base = addr.clone();
    match base.pop() {
        Some(Protocol::P2p(peer)) => (base, Some(peer)),
        _ => (addr.clone(), None),
    }
}

/// Builds the swarm, listens, waits for the first listen address, dials the bootstrap peers
/// and spawns the event loop. Returns the handle and the event receiver.
pub async fn spawn(config: NetConfig) -> Result<(NetHandle, mpsc::Receiver<NetEvent>), NetError> {
    config.check()?;
    let inbound = Arc::new(InboundBudget::new(MAX_INBOUND_BUFFERED_BYTES));
    let backoff = Arc::new(transport::Backoff::default());
    let mut swarm = build_swarm(&config, inbound.clone(), backoff.clone())?;
    let local_peer_id = *swarm.local_peer_id();

    let mut listeners = HashSet::new();
    for addr in &config.listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        listeners.insert(id);
    }

    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
    let counters = Arc::new(Counters::default());
    let released = Arc::new(Released::default());
    let max_conns = config.max_connections as usize;
    let mut event_loop = EventLoop {
        swarm,
        commands: cmd_rx,
        events: ev_tx,
        topic: gossipsub::IdentTopic::new(config.topic.clone()).hash(),
        max_message_bytes: config.max_message_bytes,
        // Keep a quarter of the slots for inbound connections, so newcomers can still join
        // a network where everyone has dialled out to the limit.
        dial_target: config.target_peers.min((max_conns - max_conns / 4).max(1)),
        trim_grace: config.trim_grace,
        cluster_peers: config.expected_cluster_size.saturating_sub(1).max(1),
        bootstrap: config.bootstrap.clone(),
        pending_requests: HashMap::new(),
        counters: counters.clone(),
        listeners,
        dialing: connections::Dialing::default(),
        redial: HashMap::new(),
        addr_book: HashMap::new(),
        probes: HashMap::new(),
        stream_pings: HashMap::new(),
        next_seq: 0,
        relays: 0,
        connected_at: HashMap::new(),
        subscribed: HashSet::new(),
        subscribe_checks: connections::SubscribeChecks::default(),
        trimming: HashSet::new(),
        releasing: HashSet::new(),
        cooldown: HashMap::new(),
        released: released.clone(),
        last_kad_bootstrap: None,
        maintain_soon: false,
        bans: HashMap::new(),
        rejected: HashMap::new(),
        graylisted_kept: HashSet::new(),
        metrics: config.metrics.clone(),
        nat: nat::NatState::new(&config.nat)?,
    };
    let nat_counters = event_loop.nat.counters.clone();

    event_loop.wait_for_listen_addr().await?;
    event_loop.dial_bootstrap();
    event_loop.listen_on_relays();

    let handle = NetHandle {
        commands: cmd_tx,
        local_peer_id,
        max_message_bytes: config.max_message_bytes,
        max_request_bytes: config.max_request_bytes,
        counters,
        inbound,
        backoff,
        released,
        nat: nat_counters,
    };
    let discovery_interval = config.discovery_interval;
    tokio::spawn(event_loop.run(discovery_interval));
    Ok((handle, ev_rx))
}
