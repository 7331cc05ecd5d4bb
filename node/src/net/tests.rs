//! Tests of the network layer: the pure decisions (trim choice, mesh sizes, graylist
//! decision, codec bounds) and in-process swarms on loopback (gossip, discovery, trimming,
//! probes, request-response, bans).

use super::bans::graylist_decision;
use super::connections::{
    choose_trim, subscription_lost, Dialing, SubscribeChecks, TrimCandidate, HALF_OPEN_MIN_AGE,
    MAX_SUBSCRIBE_CHECKS, SUBSCRIBE_EVIDENCE_AGE, SUBSCRIBE_GRACE, SUBSCRIBE_RESET_COOLDOWN,
};
use super::*;
use anyhow::{anyhow, bail, Context};
use std::future::Future;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(20);

type VerdictFn = Arc<dyn Fn(&[u8]) -> Verdict + Send + Sync>;

struct TestNode {
    handle: NetHandle,
    /// Payloads of gossip delivered to this node (after the verdict was reported).
    gossip: mpsc::UnboundedReceiver<Vec<u8>>,
    driver: tokio::task::JoinHandle<()>,
}

impl TestNode {
    fn id(&self) -> PeerId {
        self.handle.local_peer_id()
    }

    /// A TCP listen address with `/p2p/<id>`, for others to bootstrap from.
    async fn p2p_addr(&self) -> anyhow::Result<Multiaddr> {
        let addrs = self.handle.listen_addrs().await?;
        let tcp = addrs
            .into_iter()
            .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
            .context("no tcp listen address")?;
        Ok(tcp.with(Protocol::P2p(self.id())))
    }

    async fn connected_to(&self, peer: PeerId) -> bool {
        self.handle
            .connected_peers()
            .await
            .map(|p| p.contains(&peer))
            .unwrap_or(false)
    }
}

fn test_config(bootstrap: Vec<Multiaddr>) -> NetConfig {
    let mut config = NetConfig::new(
        Keypair::generate_ed25519(),
        vec![
            "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
            "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
        ],
        bootstrap,
    );
    config.expected_cluster_size = 3;
    config.discovery_interval = Duration::from_millis(500);
    config
}

/// Spawns a node plus a driver task that plays the role of the dpin node: it answers
/// every gossip with `verdict(data)` and every request with `b"re:" + data`.
async fn start(config: NetConfig, verdict: VerdictFn) -> anyhow::Result<TestNode> {
    let (handle, mut events) = spawn(config).await?;
    let (gossip_tx, gossip) = mpsc::unbounded_channel();
    let h = handle.clone();
    let driver = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                NetEvent::Gossip {
                    source,
                    message_id,
                    data,
                } => {
                    let v = verdict(&data);
                    if h.report_validation(message_id, source, v).await.is_err() {
                        return;
                    }
                    let _ = gossip_tx.send(data);
                }
                NetEvent::Request { data, channel, .. } => {
                    let mut reply = b"re:".to_vec();
                    reply.extend_from_slice(&data);
                    let _ = h.respond(channel, reply).await;
                }
                _ => {}
            }
        }
    });
    Ok(TestNode {
        handle,
        gossip,
        driver,
    })
}

fn accept_all() -> VerdictFn {
    Arc::new(|_| Verdict::Accept)
}

/// Polls `check` until it holds or the deadline passes (the poll period is not an
/// assertion; the deadline is).
async fn eventually<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        if Instant::now() > deadline {
            bail!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Publishes, retrying while no subscribed peer is known yet.
async fn publish_when_ready(node: &TestNode, data: &[u8]) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match node.handle.publish(data.to_vec()).await? {
            PublishStatus::Sent => return Ok(()),
            PublishStatus::Duplicate => bail!("unexpected duplicate"),
            PublishStatus::NoPeers if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            PublishStatus::NoPeers => bail!("no subscribed peers before the deadline"),
        }
    }
}

/// Waits until `node` has received every payload in `want` (in any order), returning
/// everything received meanwhile.
async fn receive_all(node: &mut TestNode, want: &[&[u8]]) -> anyhow::Result<Vec<Vec<u8>>> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen: Vec<Vec<u8>> = Vec::new();
    while !want.iter().all(|w| seen.iter().any(|s| s == w)) {
        let got = tokio::time::timeout_at(deadline, node.gossip.recv())
            .await
            .map_err(|_| anyhow!("{} did not receive all of {want:?}", node.id()))?
            .context("driver stopped")?;
        seen.push(got);
    }
    Ok(seen)
}

async fn receive(node: &mut TestNode, want: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    receive_all(node, &[want]).await
}

fn cand(peer: u32, bucket: u32, protected: bool) -> TrimCandidate<u32> {
    TrimCandidate {
        peer,
        bucket,
        protected,
    }
}

fn seeded(seed: u64) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    rand::rngs::StdRng::seed_from_u64(seed)
}

#[test]
fn trim_starts_a_small_margin_above_the_target_at_any_size() {
    assert_eq!(trim_above(DEFAULT_TARGET_PEERS), 15);
    assert_eq!(trim_above(1), 3);
    assert_eq!(trim_above(8), 10);
    assert_eq!(trim_above(40), 50);
    // The old rule trimmed only above three times the target.
    assert!(trim_above(DEFAULT_TARGET_PEERS) < 2 * DEFAULT_TARGET_PEERS);
}

#[test]
fn trim_comes_down_to_the_target_and_spares_protected_connections() {
    for seed in 0..50 {
        // 30 peers over 5 distance classes (the shape of a 40-node network); every
        // third one protected (gossip mesh or in its grace period).
        let cands: Vec<TrimCandidate<u32>> = (0..30)
            .map(|i| cand(i, 255 - (i % 5), i % 3 == 0))
            .collect();
        let trimmed = choose_trim(&cands, 12, &mut seeded(seed));
        assert_eq!(trimmed.len(), 18, "seed {seed}: down to the target");
        assert!(
            trimmed.iter().all(|p| p % 3 != 0),
            "seed {seed}: a protected connection was trimmed"
        );
        let unique: HashSet<u32> = trimmed.iter().copied().collect();
        assert_eq!(unique.len(), trimmed.len(), "seed {seed}: no peer twice");
    }
}

#[test]
fn trim_keeps_a_link_into_every_distance_class() {
    for seed in 0..50 {
        // Most peers close by (bucket 250..=252), one far link in each of 253..=255:
        // trimming to 4 keeps the far links (the ones that hold the graph together) and
        // one close peer per close class.
        let mut cands: Vec<TrimCandidate<u32>> =
            (0..20).map(|i| cand(i, 250 + i % 3, false)).collect();
        cands.extend([
            cand(100, 253, false),
            cand(101, 254, false),
            cand(102, 255, false),
        ]);
        let trimmed = choose_trim(&cands, 4, &mut seeded(seed));
        let kept: Vec<&TrimCandidate<u32>> = cands
            .iter()
            .filter(|c| !trimmed.contains(&c.peer))
            .collect();
        for b in 250..=255 {
            assert!(
                kept.iter().any(|c| c.bucket == b),
                "seed {seed}: class {b} lost its last link"
            );
        }
        // It cannot reach 4 without cutting a class: it stops at one per class.
        assert_eq!(kept.len(), 6, "seed {seed}");
    }
}

#[test]
fn trim_evens_out_the_distance_classes() {
    // 10 peers in class 255, 2 in 254, 2 in 253: trimming to 8 takes from 255 only.
    let mut cands: Vec<TrimCandidate<u32>> = (0..10).map(|i| cand(i, 255, false)).collect();
    cands.extend((10..12).map(|i| cand(i, 254, false)));
    cands.extend((12..14).map(|i| cand(i, 253, false)));
    for seed in 0..20 {
        let trimmed = choose_trim(&cands, 8, &mut seeded(seed));
        assert_eq!(trimmed.len(), 6);
        assert!(trimmed.iter().all(|p| *p < 10), "seed {seed}: {trimmed:?}");
    }
}

#[test]
fn nothing_is_trimmed_at_or_below_the_target_or_when_all_are_protected() {
    let cands: Vec<TrimCandidate<u32>> = (0..12).map(|i| cand(i, 255, false)).collect();
    assert!(choose_trim(&cands, 12, &mut seeded(1)).is_empty());
    let cands: Vec<TrimCandidate<u32>> = (0..20).map(|i| cand(i, 255, true)).collect();
    assert!(choose_trim(&cands, 12, &mut seeded(1)).is_empty());
    assert!(choose_trim::<u32>(&[], 0, &mut seeded(1)).is_empty());
}

#[test]
fn a_subscription_check_comes_due_after_the_grace_and_a_peer_is_reset_at_most_once_a_cooldown() {
    let t0 = Instant::now();
    let (a, b) = (PeerId::random(), PeerId::random());
    let mut checks = SubscribeChecks::default();
    let a_again = t0 + Duration::from_millis(200);
    let since = |p: &PeerId| Some(if *p == a { a_again } else { t0 });
    checks.connected(a, t0);
    checks.connected(b, t0 + Duration::from_millis(100));
    checks.connected(a, a_again);
    assert!(checks
        .due(t0 + SUBSCRIBE_GRACE - Duration::from_millis(1), since)
        .is_empty());
    // Due in the order the connections came; a peer that reconnected is checked once, for
    // its current connection.
    assert_eq!(
        checks.due(t0 + SUBSCRIBE_GRACE + Duration::from_millis(200), since),
        vec![b, a]
    );
    assert!(checks.is_empty());
    // Reset once, then not again within the cooldown, then again after it.
    let t1 = t0 + SUBSCRIBE_GRACE;
    assert!(checks.may_reset(a, t1));
    assert!(!checks.may_reset(a, t1 + SUBSCRIBE_RESET_COOLDOWN - Duration::from_millis(1)));
    assert!(checks.may_reset(b, t1));
    assert!(checks.may_reset(a, t1 + SUBSCRIBE_RESET_COOLDOWN));
    // Bounded: pending checks beyond the bound are not kept.
    let mut full = SubscribeChecks::default();
    for _ in 0..MAX_SUBSCRIBE_CHECKS + 10 {
        full.connected(PeerId::random(), t0);
    }
    assert_eq!(
        full.due(t0 + SUBSCRIBE_GRACE, |_| Some(t0)).len(),
        MAX_SUBSCRIBE_CHECKS
    );
}

/// A check is for one connection. A peer that reconnected shortly before an earlier
/// connection's check came due is not judged on its new connection, whose subscription has
/// not had time to arrive: seen in an N = 25 chaos run, where such a reset of a 36 ms old
/// connection lost the link (both ends at their degree) and left a node without a path to
/// the only holder of a write in the next cut.
#[test]
fn a_subscription_check_for_an_earlier_connection_does_not_judge_a_newer_one() {
    let t0 = Instant::now();
    let a = PeerId::random();
    let mut checks = SubscribeChecks::default();
    checks.connected(a, t0);
    let again = t0 + SUBSCRIBE_GRACE - Duration::from_millis(36);
    checks.connected(a, again);
    let since = |_: &PeerId| Some(again);
    assert!(
        checks.due(t0 + SUBSCRIBE_GRACE, since).is_empty(),
        "the first connection's check judged the second"
    );
    assert_eq!(checks.due(again + SUBSCRIBE_GRACE, since), vec![a]);
    // A peer no longer connected is not checked.
    checks.connected(a, again + SUBSCRIBE_GRACE);
    assert!(checks.due(again + SUBSCRIBE_GRACE * 3, |_| None).is_empty());
}

/// Gossip from a peer gossipsub never heard subscribe shows its subscription was lost, once
/// its connection is old enough for the subscription to have arrived on any connection.
#[test]
fn gossip_from_a_peer_never_heard_subscribing_shows_a_lost_subscription_once_it_had_time() {
    let old = Some(SUBSCRIBE_EVIDENCE_AGE);
    assert!(subscription_lost(false, old));
    assert!(subscription_lost(false, Some(SUBSCRIBE_EVIDENCE_AGE * 10)));
    assert!(!subscription_lost(true, old), "heard subscribing");
    assert!(
        !subscription_lost(
            false,
            Some(SUBSCRIBE_EVIDENCE_AGE - Duration::from_millis(1))
        ),
        "the subscription may still be on its way"
    );
    assert!(!subscription_lost(false, None), "not connected");
    assert!(SUBSCRIBE_EVIDENCE_AGE < SUBSCRIBE_GRACE);
}

#[test]
fn redial_delays_grow_to_a_bound_then_slow_down() {
    let t0 = tokio::time::Instant::now();
    let mut r = Redial::new(t0, Duration::ZERO, false);
    let mut delays = Vec::new();
    for _ in 0..10 {
        delays.push(r.delay(t0));
        r.attempt += 1;
    }
    assert!(delays[0] <= REDIAL_MIN.mul_f64(1.25));
    assert!(delays.iter().all(|d| *d <= REDIAL_MAX.mul_f64(1.25)));
    assert!(delays[9] >= REDIAL_MAX.mul_f64(0.75));
    let late = t0 + REDIAL_FAST_FOR;
    assert!(r.delay(late) >= REDIAL_SLOW.mul_f64(0.75));
}

/// A lost peer's re-dial ends once the peer is back or the node is at its degree through
/// others; a repair re-dial (the node closed the connection itself) ends only with a new
/// connection, whatever the degree, and not while the closed one still counts.
#[test]
fn a_repair_redial_is_not_ended_by_the_degree_or_the_closing_connection() {
    let t0 = tokio::time::Instant::now();
    let lost = Redial::new(t0, Duration::ZERO, false);
    assert!(lost.done(true, 5, 12), "the peer is connected again");
    assert!(lost.done(false, 12, 12), "back at the target degree");
    assert!(!lost.done(false, 11, 12), "still short of the degree");
    let repair = Redial::new(t0, Duration::ZERO, true);
    assert!(!repair.done(false, 12, 12), "at the degree");
    assert!(!repair.done(false, 20, 12), "above the degree");
    assert!(
        !repair.done(true, 12, 12),
        "the closed connection is still shutting down"
    );
}

#[test]
fn an_echo_of_our_own_anonymous_publish_is_not_held_against_the_forwarder() {
    // With anonymous envelopes a peer cannot tell a message came from us; gossipsub's
    // default would reject our own publish coming back as "self origin" and penalise the
    // honest peer that forwarded it (graylisted and banned in chaos runs).
    let topic = gossipsub::IdentTopic::new("t").hash();
    let config = gossipsub_config(&topic, 100, 12).expect("config builds");
    assert!(config.allow_self_origin());
    assert!(matches!(
        config.validation_mode(),
        ValidationMode::Anonymous
    ));
}

#[test]
fn gossip_send_queue_is_bounded_below_the_default() {
    // gossipsub preallocates half the queue per connection; the default (5000) cost
    // ~580 KB resident per connection (issue 16).
    let topic = gossipsub::IdentTopic::new("t").hash();
    let config = gossipsub_config(&topic, 100, 12).expect("config builds");
    assert_eq!(config.connection_handler_queue_len(), GOSSIP_QUEUE_LEN);
    const { assert!(GOSSIP_QUEUE_LEN <= 1024) };
}

/// The duplicate cache outlasts every way a copy of a message can still arrive (the message
/// cache's history, a publish's wait in a send queue) with room to spare, and stays well
/// below gossipsub's 60 s default, which held about 46 MB at 2,500 messages a second.
#[test]
fn the_duplicate_cache_outlasts_every_way_a_copy_comes_back_and_no_more() {
    let topic = gossipsub::IdentTopic::new("t").hash();
    let config = gossipsub_config(&topic, 100, 12).expect("config builds");
    let history = config.heartbeat_interval() * u32::try_from(config.history_length()).unwrap();
    let latest_copy = history + config.publish_queue_duration();
    assert_eq!(config.duplicate_cache_time(), DUPLICATE_CACHE_TIME);
    assert!(
        config.duplicate_cache_time() >= latest_copy * 2,
        "{:?} against copies up to {latest_copy:?}",
        config.duplicate_cache_time()
    );
    assert!(config.duplicate_cache_time() <= Duration::from_secs(30));
}

#[test]
fn mesh_params_valid_for_all_sizes() {
    for cluster in 0..=500 {
        let m = MeshParams::for_cluster(cluster);
        assert!(m.outbound_min <= m.n_low, "{cluster}: {m:?}");
        assert!(m.n_low <= m.n && m.n <= m.n_high, "{cluster}: {m:?}");
        assert!(2 * m.outbound_min <= m.n, "{cluster}: {m:?}");
        assert!(m.n_low >= 1);
        if (2..=7).contains(&cluster) {
            // Small clusters: full mesh, never pruned, never permanently under D_lo.
            assert!(m.n_high >= cluster - 1, "{cluster}: {m:?}");
            assert!(m.n_low < cluster, "{cluster}: {m:?}");
        }
        let topic = gossipsub::IdentTopic::new("t").hash();
        gossipsub_config(&topic, 100, cluster).expect("config builds");
    }
    // Beyond a full mesh: the values the simulator picked for 1k and 10k nodes.
    for cluster in [8, 1_000, 10_000] {
        assert_eq!(
            MeshParams::for_cluster(cluster),
            MeshParams {
                n: 6,
                n_low: 4,
                n_high: 8,
                outbound_min: 2
            }
        );
    }
    assert_eq!(
        MeshParams::for_cluster(3),
        MeshParams {
            n: 2,
            n_low: 1,
            n_high: 4,
            outbound_min: 1
        }
    );
}

#[tokio::test]
async fn gossip_reaches_all_and_kademlia_connects_bootstrap_siblings() -> anyhow::Result<()> {
    let mut a = start(test_config(vec![]), accept_all()).await?;
    let a_addr = a.p2p_addr().await?;
    let mut b = start(test_config(vec![a_addr.clone()]), accept_all()).await?;
    let mut c = start(test_config(vec![a_addr]), accept_all()).await?;

    // C was only told about A: it can only reach B through Kademlia discovery.
    eventually("C connected to B", || c.connected_to(b.id())).await?;

    let payload = b"record from B".to_vec();
    publish_when_ready(&b, &payload).await?;
    receive(&mut a, &payload).await?;
    receive(&mut c, &payload).await?;
    // B published it: it must not come back to B as a gossip to validate.
    assert!(b.gossip.try_recv().is_err());

    // Republishing identical bytes is content-deduplicated, not an error.
    assert_eq!(b.handle.publish(payload).await?, PublishStatus::Duplicate);
    // Nothing dropped, trimmed or banned; two peers connected.
    let stats = a.handle.stats();
    assert_eq!(stats.connected, 2);
    // Both TCP connections went through the backoff cap (set, or refused by an old kernel).
    assert_eq!(stats.tcp_backoff_capped + stats.tcp_backoff_uncapped, 2);
    assert_eq!(
        NetStats {
            connected: 0,
            tcp_backoff_capped: 0,
            tcp_backoff_uncapped: 0,
            ..stats
        },
        NetStats::default()
    );
    Ok(())
}

/// Issue 16: eight nodes that all bootstrap through the first, with a target degree of 2
/// (trimmed above 4). In a network this small Kademlia's bootstrap queries connect every
/// node to every other, so nodes trim; the trimmed peers are told (goodbye), the trimmed
/// graph still carries gossip from every node to every node, and the trimming stops: the
/// network settles (no trim and no new connection for `QUIET`, longer than the trim
/// grace, so a trimmed pair that dialled back would be seen) with no node cut off.
///
/// It was ignored while it failed with 72 to 104 trims among the 8 nodes: a node merely
/// under its target with nobody left to dial bootstrapped Kademlia (at most once a
/// minute), and the query dialled every peer in its table, the ones it had just released
/// too; they were trimmed again. Now only a thin table or a node under half its degree
/// bootstraps (`maintain`).
///
/// It failed once more under load (a full `--lib` run, load ~3; not reproduced in 24
/// loaded repeats, where degree-1 nodes were seen 89 times): a node released by the last
/// of its peers has no re-dial and no dial-back, and waits for its maintenance tick,
/// which had backed off (up to `DISCOVERY_MAX_INTERVAL`) while the node was stable, so it
/// could sit alone through the whole quiet window. A loss that leaves a node below its
/// target now brings the tick forward (`EventLoop::maintain_soon`;
/// `a_node_released_by_its_last_peer_reconnects_at_once` isolates the case).
#[tokio::test]
async fn a_trimmed_network_stays_connected_and_trimmed_peers_stay_away() -> anyhow::Result<()> {
    /// No trim and no new connection anywhere for this long: settled.
    const QUIET: Duration = Duration::from_secs(5);
    /// Bound on the time to settle (a runaway churn never settles).
    const SETTLE_WITHIN: Duration = Duration::from_secs(60);
    let config = |bootstrap: Vec<Multiaddr>| {
        let mut c = test_config(bootstrap);
        c.target_peers = 2;
        // Long enough for a newcomer to find peers through Kademlia before the first
        // node trims it (the default is 10 s).
        c.trim_grace = Duration::from_secs(2);
        c.discovery_interval = Duration::from_millis(200);
        c.expected_cluster_size = 8;
        c
    };
    let first = start(config(vec![]), accept_all()).await?;
    let addr = first.p2p_addr().await?;
    let mut nodes = vec![first];
    for _ in 1..8 {
        nodes.push(start(config(vec![addr.clone()]), accept_all()).await?);
    }
    let totals = |nodes: &[TestNode]| -> (u64, u64) {
        nodes.iter().fold((0, 0), |(t, c), n| {
            let s = n.handle.stats();
            (t + s.trimmed, c + s.connected)
        })
    };
    eventually("someone trimmed", || {
        let (t, _) = totals(&nodes);
        async move { t > 0 }
    })
    .await?;
    // The trims stop: a quiet window (trims and first connections unchanged).
    let deadline = Instant::now() + SETTLE_WITHIN;
    let mut last = totals(&nodes);
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < QUIET {
        assert!(
            Instant::now() < deadline,
            "not settled within {SETTLE_WITHIN:?}: (trims, connections) now {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = totals(&nodes);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    let released: u64 = nodes
        .iter()
        .map(|n| n.handle.stats().released_by_peer)
        .sum();
    assert!(released > 0, "trimmed peers were told");
    // Every node publishes; every other node receives it over the trimmed graph. Only once
    // settled: gossipsub sends a message once, to the peers connected when it is published
    // (and IHAVE only to peers connected within its few heartbeats of history), so a node
    // that a trim had just disconnected and that reconnected later never gets it — the
    // node's anti-entropy is what covers that, and this test has none. Publishing while
    // trims still ran was this test's other flake ("did not receive all").
    for i in 0..nodes.len() {
        let payload = format!("from node {i}").into_bytes();
        publish_when_ready(&nodes[i], &payload).await?;
        for (j, node) in nodes.iter_mut().enumerate() {
            if j != i {
                receive(node, &payload).await?;
            }
        }
    }
    // Settled, nobody cut off. (Degrees may stay above the trim bound here: with 8 nodes
    // a node's few links are often each the last into their distance class, or gossip
    // mesh members, which `choose_trim` keeps.)
    for (i, n) in nodes.iter().enumerate() {
        let degree = n.handle.connected_peers().await?.len();
        assert!(
            degree >= 1,
            "node {i} settled with no connection (trims, connections: {last:?})"
        );
    }
    for n in nodes {
        n.driver.abort();
    }
    Ok(())
}

/// A node released by the last of its peers reconnects at once, even when its maintenance
/// tick has backed off: with nothing to re-dial (a release is not a loss) only that tick
/// reconnects it, and it waited for the backed-off period (the trimmed-network test's flake:
/// a node alone through the whole quiet window).
#[tokio::test]
async fn a_node_released_by_its_last_peer_reconnects_at_once() -> anyhow::Result<()> {
    /// Stable this long, the tick's period has doubled from 100 ms to at least 3.2 s.
    const STABLE_FOR: Duration = Duration::from_secs(8);
    /// Far below the backed-off period, far above the base period (100 ms) and a dial.
    const RECONNECT_WITHIN: Duration = Duration::from_secs(2);
    let a = start(test_config(vec![]), accept_all()).await?;
    let mut config = test_config(vec![a.p2p_addr().await?]);
    config.target_peers = 1;
    config.discovery_interval = Duration::from_millis(100);
    let x = start(config, accept_all()).await?;
    eventually("X connected to A", || x.connected_to(a.id())).await?;
    tokio::time::sleep(STABLE_FOR).await;
    assert_eq!(x.handle.connected_peers().await?, vec![a.id()]);

    // X's connections established so far (each first connection to a peer counts one).
    let established = x.handle.stats().connected;
    a.handle.trim(x.id()).await?;
    eventually("A released X", || {
        let released = x.handle.stats().released_by_peer;
        async move { released == 1 }
    })
    .await?;
    let released_at = Instant::now();
    // Reconnected: a new first connection to A since the release, which X can make only
    // after the released one closed. The gap between the two is a loopback dial, tens of
    // milliseconds, and can fall between two polls, so it is not waited for: this test once
    // timed out waiting to see X alone although X had reconnected.
    let deadline = released_at + RECONNECT_WITHIN;
    while !(x.handle.stats().connected > established && x.connected_to(a.id()).await) {
        assert!(
            Instant::now() < deadline,
            "X was still alone {RECONNECT_WITHIN:?} after its last peer released it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.driver.abort();
    x.driver.abort();
    Ok(())
}

/// Waits for `want` on a raw event stream, skipping other events.
async fn next_matching(
    events: &mut mpsc::Receiver<NetEvent>,
    what: &str,
    want: impl Fn(&NetEvent) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| anyhow!("timed out waiting for: {what}"))?
            .context("event stream ended")?;
        if want(&event) {
            return Ok(());
        }
    }
}

/// Waits for `peer`'s acknowledgement of probe `nonce`.
async fn expect_ack(
    events: &mut mpsc::Receiver<NetEvent>,
    peer: PeerId,
    nonce: u64,
) -> anyhow::Result<()> {
    let what = format!("{peer}'s ack of probe {nonce}");
    next_matching(
        events,
        &what,
        |e| matches!(e, NetEvent::ProbeAck { peer: p, nonce: n } if *p == peer && *n == nonce),
    )
    .await
}

/// Waits until the node hears `peer` (it probed us).
async fn expect_heard(events: &mut mpsc::Receiver<NetEvent>, peer: PeerId) -> anyhow::Result<()> {
    let what = format!("hearing {peer}");
    next_matching(
        events,
        &what,
        |e| matches!(e, NetEvent::Heard(p) if *p == peer),
    )
    .await
}

/// Waits until `peer` probes the node as one it watches.
async fn expect_watched_by(
    events: &mut mpsc::Receiver<NetEvent>,
    peer: PeerId,
) -> anyhow::Result<()> {
    let what = format!("{peer} watching us");
    next_matching(
        events,
        &what,
        |e| matches!(e, NetEvent::WatchedBy(p) if *p == peer),
    )
    .await
}

/// A TCP listen address of `h` with `/p2p/<id>`.
async fn tcp_p2p_addr(h: &NetHandle) -> anyhow::Result<Multiaddr> {
    let tcp = h
        .listen_addrs()
        .await?
        .into_iter()
        .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
        .context("no tcp listen address")?;
    Ok(tcp.with(Protocol::P2p(h.local_peer_id())))
}

/// Issue 16: a direct probe rides the connection's long-lived probe stream (one 8-byte
/// frame each way) and is acknowledged; the probed peer hears the prober; a peer without
/// the stream protocol (a node from before it) is probed, and relays, with
/// `/dpin/probe/1` requests instead; and an indirect probe works through either kind of
/// helper. A watching probe (the detector chose the peer) is reported to the probed peer
/// as `WatchedBy` on either carrier, so it watches the prober back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_probes_ride_a_stream_and_older_peers_get_requests() -> anyhow::Result<()> {
    let (b, mut b_events) = spawn(test_config(vec![])).await?;
    let mut old_config = test_config(vec![]);
    old_config.probe_stream = false;
    let (c, mut c_events) = spawn(old_config).await?;
    let bootstrap = vec![tcp_p2p_addr(&b).await?, tcp_p2p_addr(&c).await?];
    let (a, mut a_events) = spawn(test_config(bootstrap)).await?;
    let (a_id, b_id, c_id) = (a.local_peer_id(), b.local_peer_id(), c.local_peer_id());
    eventually("A connected to B and C, and B to C", || async {
        let a_peers = a.connected_peers().await.unwrap_or_default();
        let b_peers = b.connected_peers().await.unwrap_or_default();
        a_peers.contains(&b_id) && a_peers.contains(&c_id) && b_peers.contains(&c_id)
    })
    .await?;

    // A probes B on the stream, many times over the same stream.
    for nonce in 1..=20u64 {
        a.probe(b_id, nonce, false);
        expect_ack(&mut a_events, b_id, nonce).await?;
    }
    expect_heard(&mut b_events, a_id).await?;
    let stats = a.stats();
    assert_eq!(stats.probes_on_stream, 20, "{stats:?}");
    assert_eq!(stats.probes_as_requests, 0, "{stats:?}");
    // A watching probe: acknowledged like any other, and B learns that A watches it.
    a.probe(b_id, 21, true);
    expect_ack(&mut a_events, b_id, 21).await?;
    expect_watched_by(&mut b_events, a_id).await?;

    // A probes the older C: the stream is refused, the same probe goes as a request.
    a.probe(c_id, 100, false);
    expect_ack(&mut a_events, c_id, 100).await?;
    expect_heard(&mut c_events, a_id).await?;
    a.probe(c_id, 101, true);
    expect_ack(&mut a_events, c_id, 101).await?;
    expect_watched_by(&mut c_events, a_id).await?;
    let stats = a.stats();
    assert_eq!(stats.probes_as_requests, 2, "{stats:?}");

    // Indirect probes: B (new) probes the older C for A, and C probes B for A.
    a.probe_via(b_id, c_id, 200);
    expect_ack(&mut a_events, c_id, 200).await?;
    a.probe_via(c_id, b_id, 201);
    expect_ack(&mut a_events, b_id, 201).await?;
    Ok(())
}

#[tokio::test]
async fn request_response_round_trip_and_fail_fast() -> anyhow::Result<()> {
    let a = start(test_config(vec![]), accept_all()).await?;
    // Bare bootstrap address (no /p2p/ suffix): B learns A's identity from the handshake.
    let (a_bare, _) = split_peer_id(&a.p2p_addr().await?);
    let mut b_config = test_config(vec![a_bare]);
    // Long timeout: a fast failure below cannot be the timeout firing.
    b_config.request_timeout = Duration::from_secs(10);
    b_config.max_request_bytes = 1000;
    let b = start(b_config, accept_all()).await?;
    eventually("B connected to A", || b.connected_to(a.id())).await?;

    let reply = b.handle.request(a.id(), b"digest?".to_vec()).await?;
    assert_eq!(reply, b"re:digest?");
    let reply = a.handle.request(b.id(), Vec::new()).await?;
    assert_eq!(reply, b"re:");

    match b.handle.request(a.id(), vec![0; 1001]).await {
        Err(NetError::TooLarge {
            size: 1001,
            max: 1000,
        }) => {}
        other => bail!("expected TooLarge, got {other:?}"),
    }

    let started = Instant::now();
    let unknown = PeerId::random();
    match b.handle.request(unknown, b"x".to_vec()).await {
        Err(NetError::NotConnected(p)) if p == unknown => {}
        other => bail!("expected NotConnected, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(1));

    // Stop A; once B has noticed, a request to A must fail fast too.
    a.handle.shutdown().await?;
    assert!(matches!(
        a.handle.connected_peers().await,
        Err(NetError::Shutdown)
    ));
    eventually("B notices A is gone", || async {
        !b.connected_to(a.id()).await
    })
    .await?;
    let started = Instant::now();
    match b.handle.request(a.id(), b"x".to_vec()).await {
        Err(NetError::NotConnected(_)) => {}
        other => bail!("expected NotConnected, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    a.driver.abort();
    Ok(())
}

/// Issue 15: a graylist that no rejection of ours explains (broken IWANT promises behind
/// a one-way cut: P7 alone reaches the graylist) is gossipsub's to handle, short-lived;
/// only a peer that also sent messages we rejected recently is banned for 15 minutes.
#[test]
fn only_a_graylisted_peer_with_recent_rejections_is_banned() {
    let graylisted = Some(GRAYLIST_THRESHOLD - 1.0);
    assert_eq!(
        graylist_decision(graylisted, None),
        Some(GraylistDecision::LeaveToGossipsub),
        "P7-only graylist: no ban"
    );
    assert_eq!(
        graylist_decision(graylisted, Some(REJECTION_MEMORY + Duration::from_secs(1))),
        Some(GraylistDecision::LeaveToGossipsub),
        "rejections long ago do not explain today's score"
    );
    for since in [Duration::ZERO, REJECTION_MEMORY] {
        assert_eq!(
            graylist_decision(graylisted, Some(since)),
            Some(GraylistDecision::Ban),
            "rejected {since:?} ago"
        );
    }
    assert_eq!(
        graylist_decision(Some(GRAYLIST_THRESHOLD), Some(Duration::ZERO)),
        Some(GraylistDecision::Ban),
        "at the threshold is graylisted"
    );
    for score in [None, Some(GRAYLIST_THRESHOLD + 1.0), Some(0.0)] {
        assert_eq!(graylist_decision(score, Some(Duration::ZERO)), None);
        assert_eq!(graylist_decision(score, None), None);
    }
}

#[test]
fn peer_score_config_is_valid_and_an_idle_honest_peer_is_not_penalised() {
    let topic = gossipsub::IdentTopic::new("t").hash();
    let (params, thresholds) = peer_score_config(&topic);
    params.validate().expect("score params valid");
    thresholds.validate().expect("thresholds valid");
    // An honest cluster on one host is never penalised for sharing an address.
    assert_eq!(params.ip_colocation_factor_weight, 0.0);
    let t = &params.topics[&topic];
    // A quiet topic (no deliveries at all) costs a mesh peer nothing.
    assert_eq!(t.mesh_message_deliveries_weight, 0.0);
    assert_eq!(t.mesh_failure_penalty_weight, 0.0);
    // Good behaviour cannot buy more than a few invalid messages' worth of credit.
    let credit = t.time_in_mesh_weight * t.time_in_mesh_cap
        + t.first_message_deliveries_weight * t.first_message_deliveries_cap;
    assert!(credit <= 3.0, "{credit}");
    let invalid_to_graylist =
        ((credit - thresholds.graylist_threshold) / -t.invalid_message_deliveries_weight).sqrt();
    assert!(invalid_to_graylist <= 10.0, "{invalid_to_graylist}");
}

fn budget_codec(max_bytes: usize, budget_bytes: usize) -> (SyncCodec, Arc<InboundBudget>) {
    let budget = Arc::new(InboundBudget::new(budget_bytes));
    let codec = SyncCodec {
        max_bytes,
        inbound: Some(InboundLimits {
            budget: budget.clone(),
            per_connection: MAX_INBOUND_PER_CONNECTION,
            connection: None,
        }),
    };
    (codec, budget)
}

async fn read_one(codec: &mut SyncCodec, bytes: usize) -> io::Result<Payload> {
    use request_response::Codec as _;
    let protocol = StreamProtocol::new(SYNC_PROTOCOL);
    let mut io = futures::io::Cursor::new(vec![7u8; bytes]);
    codec.read_request(&protocol, &mut io).await
}

#[tokio::test]
async fn inbound_requests_are_bounded_in_total_bytes_until_answered() {
    let (template, budget) = budget_codec(4 * READ_CHUNK, 3 * READ_CHUNK);
    // As request-response does: one clone per connection, one per stream.
    let mut conn_a = template.clone();
    let mut conn_b = template.clone();
    let first = read_one(&mut conn_a.clone(), 2 * READ_CHUNK)
        .await
        .expect("fits the budget");
    assert_eq!(first.data.len(), 2 * READ_CHUNK);
    assert_eq!(budget.buffered.load(Ordering::Relaxed), 2 * READ_CHUNK);
    // Another connection's request of the same size does not fit beside it: refused,
    // counted, and what it had taken is given back.
    let refused = read_one(&mut conn_b, 2 * READ_CHUNK).await;
    assert!(refused.is_err());
    assert_eq!(budget.over_byte_budget.load(Ordering::Relaxed), 1);
    assert_eq!(budget.buffered.load(Ordering::Relaxed), 2 * READ_CHUNK);
    // Answering (dropping the guard with the response channel) frees the room.
    drop(first);
    assert_eq!(budget.buffered.load(Ordering::Relaxed), 0);
    let second = read_one(&mut conn_b, 2 * READ_CHUNK)
        .await
        .expect("fits once the first request was answered");
    assert_eq!(second.data.len(), 2 * READ_CHUNK);
    // Oversize is refused as before, without holding budget.
    drop(second);
    assert!(read_one(&mut conn_a, 4 * READ_CHUNK + 1).await.is_err());
    assert_eq!(budget.buffered.load(Ordering::Relaxed), 0);
}

/// A stream that hands out at most `step` bytes per read, as a yamux stream does with what
/// it has buffered.
struct Trickle {
    data: Vec<u8>,
    at: usize,
    step: usize,
}

impl futures::AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let n = self.step.min(buf.len()).min(self.data.len() - self.at);
        let at = self.at;
        buf[..n].copy_from_slice(&self.data[at..at + n]);
        self.at += n;
        std::task::Poll::Ready(Ok(n))
    }
}

/// A request arriving a few KiB per read is read whole and in order, and holds exactly its
/// own bytes of the budget once read (the room taken ahead of the reads goes back).
#[tokio::test]
async fn a_request_read_in_small_pieces_is_whole_and_holds_only_its_bytes() {
    let (codec, budget) = budget_codec(4 * READ_CHUNK, 8 * READ_CHUNK);
    let data: Vec<u8> = (0..3 * READ_CHUNK + 17)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    for step in [1, 5_000, READ_CHUNK - 1, READ_CHUNK, 2 * READ_CHUNK] {
        let mut io = Trickle {
            data: data.clone(),
            at: 0,
            step,
        };
        let inbound = codec.inbound.as_ref().expect("bounded");
        let read = super::codec::read_bounded(
            &mut io,
            codec.max_bytes,
            inbound.budget.clone(),
            Arc::new(AtomicUsize::new(0)),
            MAX_INBOUND_PER_CONNECTION,
        )
        .await
        .expect("within the bounds");
        assert!(read.data == data, "step {step}");
        assert_eq!(
            budget.buffered.load(Ordering::Relaxed),
            data.len(),
            "step {step}"
        );
        drop(read);
        assert_eq!(budget.buffered.load(Ordering::Relaxed), 0, "step {step}");
    }
}

#[tokio::test]
async fn inbound_requests_are_bounded_per_connection() {
    let (template, budget) = budget_codec(1024, MAX_INBOUND_BUFFERED_BYTES);
    let conn = template.clone();
    let mut held = Vec::new();
    for _ in 0..MAX_INBOUND_PER_CONNECTION {
        held.push(
            read_one(&mut conn.clone(), 10)
                .await
                .expect("within the bound"),
        );
    }
    assert!(read_one(&mut conn.clone(), 10).await.is_err());
    assert_eq!(budget.over_connection_limit.load(Ordering::Relaxed), 1);
    // Other connections are unaffected, and an answered request frees its slot.
    read_one(&mut template.clone(), 10)
        .await
        .expect("another connection has its own slots");
    held.pop();
    read_one(&mut conn.clone(), 10)
        .await
        .expect("a slot was freed");
}

#[tokio::test]
async fn ban_disconnects_and_refuses_reconnects_until_it_ends() -> anyhow::Result<()> {
    let a = start(test_config(vec![]), accept_all()).await?;
    let a_addr = a.p2p_addr().await?;
    let b = start(test_config(vec![a_addr.clone()]), accept_all()).await?;
    let c = start(test_config(vec![a_addr.clone()]), accept_all()).await?;
    eventually("A connected to B", || a.connected_to(b.id())).await?;
    eventually("A connected to C", || a.connected_to(c.id())).await?;

    // A long ban: B is cut off, and its re-dials are refused by A.
    a.handle
        .ban(b.id(), Duration::from_secs(600), BanReason::Invalid)
        .await?;
    eventually("A disconnected from B", || async {
        !a.connected_to(b.id()).await
    })
    .await?;
    // B re-dials A by itself (it lost a peer); this dial may find one in progress.
    let _ = b.handle.dial(a_addr.clone()).await;
    eventually("A refused a connection from B", || async {
        a.handle.stats().ban_refused >= 1
    })
    .await?;
    assert!(!a.connected_to(b.id()).await);
    let stats = a.handle.stats();
    assert_eq!(stats.bans_for(BanReason::Invalid), 1);
    assert_eq!(stats.bans_for(BanReason::Graylisted), 0);
    assert_eq!(stats.banned_now, 1);

    // A short ban ends by itself: C is let in again (it re-dials A).
    a.handle
        .ban(c.id(), Duration::from_millis(300), BanReason::OverBudget)
        .await?;
    eventually("A disconnected from C", || async {
        !a.connected_to(c.id()).await
    })
    .await?;
    eventually("C reconnected after its ban", || async {
        let _ = c.handle.dial(a_addr.clone()).await;
        a.connected_to(c.id()).await
    })
    .await?;
    assert_eq!(a.handle.stats().banned_now, 1);
    assert!(!a.connected_to(b.id()).await);
    Ok(())
}

#[tokio::test]
async fn a_peer_flooding_invalid_gossip_is_graylisted_and_banned() -> anyhow::Result<()> {
    let a = start(test_config(vec![]), accept_all()).await?;
    let b = start(
        test_config(vec![a.p2p_addr().await?]),
        Arc::new(|d: &[u8]| {
            if d.starts_with(b"bad") {
                Verdict::Reject
            } else {
                Verdict::Accept
            }
        }),
    )
    .await?;
    eventually("B connected to A", || b.connected_to(a.id())).await?;
    publish_when_ready(&a, b"bad-0").await?;
    // A keeps sending messages B rejects until B cuts it off (its publishes then find
    // no subscribed peer, which is fine).
    let mut i = 1;
    eventually("B banned A for its gossip score", || {
        i += 1;
        let a = &a.handle;
        let b = &b.handle;
        let bad = format!("bad-{i}").into_bytes();
        async move {
            let _ = a.publish(bad).await;
            b.stats().bans_for(BanReason::Graylisted) == 1
        }
    })
    .await?;
    eventually("B disconnected from A", || async {
        !b.connected_to(a.id()).await
    })
    .await?;
    assert_eq!(b.handle.stats().banned_now, 1);
    // A honest peer that sent nothing invalid is never scored down: A bans nobody.
    assert_eq!(a.handle.stats().bans_for(BanReason::Graylisted), 0);
    Ok(())
}

#[tokio::test]
async fn rejected_gossip_is_not_forwarded() -> anyhow::Result<()> {
    // Line topology A - B - C: C accepts a single connection, so everything C gets must
    // have been forwarded by B, and B rejects payloads starting with "bad".
    let mut a = start(test_config(vec![]), accept_all()).await?;
    let mut b = start(
        test_config(vec![a.p2p_addr().await?]),
        Arc::new(|d: &[u8]| {
            if d.starts_with(b"bad") {
                Verdict::Reject
            } else {
                Verdict::Accept
            }
        }),
    )
    .await?;
    let mut c_config = test_config(vec![b.p2p_addr().await?]);
    c_config.max_connections = 1;
    c_config.max_connections_per_peer = 1;
    let mut c = start(c_config, accept_all()).await?;
    eventually("B connected to A", || b.connected_to(a.id())).await?;
    eventually("C connected to B", || c.connected_to(b.id())).await?;

    // Warm up until the A -> B -> C path demonstrably forwards accepted messages.
    let deadline = Instant::now() + DEADLINE;
    let mut i = 0;
    loop {
        let warm = format!("warm-{i}").into_bytes();
        publish_when_ready(&a, &warm).await?;
        if tokio::time::timeout(Duration::from_secs(2), receive(&mut c, &warm))
            .await
            .is_ok()
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("path A-B-C never forwarded");
        }
        i += 1;
    }

    publish_when_ready(&a, b"bad-1").await?;
    publish_when_ready(&a, b"good-1").await?;
    publish_when_ready(&a, b"good-2").await?;
    // B saw (and rejected) the bad one; A also delivered the good ones to B.
    receive_all(&mut b, &[b"bad-1", b"good-1", b"good-2"]).await?;
    let at_c = receive_all(&mut c, &[b"good-1", b"good-2"]).await?;
    assert!(
        !at_c.iter().any(|d| d == b"bad-1"),
        "rejected message was forwarded to C"
    );
    assert_eq!(c.handle.connected_peers().await?, vec![b.id()]);
    while a.gossip.try_recv().is_ok() {}
    Ok(())
}

/// A dial holds a slot of the target degree for [`DIAL_SLOT_HOLD`] at most: a dial into a
/// cut link hangs in SYN retransmissions for about 20 s. (Re-dials of lost peers hold none:
/// they are never recorded, see `EventLoop::dial`.)
#[test]
fn a_dial_holds_a_degree_slot_only_while_it_is_fresh() {
    use libp2p::swarm::ConnectionId;
    let t0 = Instant::now();
    let mut dialing = Dialing::default();
    let (hung, also_hung, fresh) = (
        ConnectionId::new_unchecked(1),
        ConnectionId::new_unchecked(2),
        ConnectionId::new_unchecked(3),
    );
    dialing.started(hung, t0);
    dialing.started(also_hung, t0);
    assert_eq!(dialing.holding_slots(t0), 2);
    dialing.started(fresh, t0 + DIAL_SLOT_HOLD / 2);
    assert_eq!(dialing.holding_slots(t0 + DIAL_SLOT_HOLD / 2), 3);
    // The hung ones stop counting; the fresh one still counts until its own hold is over.
    assert_eq!(dialing.holding_slots(t0 + DIAL_SLOT_HOLD), 1);
    assert_eq!(dialing.holding_slots(t0 + DIAL_SLOT_HOLD * 3 / 2), 0);
    // A dial that connected or failed frees its slot at once.
    dialing.ended(fresh);
    assert_eq!(dialing.holding_slots(t0 + DIAL_SLOT_HOLD / 2), 2);
    // Bounded: dials beyond the bound hold no slot.
    let mut full = Dialing::default();
    for i in 0..MAX_TRACKED_DIALS + 10 {
        full.started(ConnectionId::new_unchecked(i), t0);
    }
    assert_eq!(full.holding_slots(t0), MAX_TRACKED_DIALS);
}

/// A loopback TCP relay between a dialler and a listener whose connections so far can be
/// frozen: from then on it forwards nothing either way and passes no close on, as a link
/// cut mid-connection does (a FIN or data sent into it is lost, and the other end never
/// hears of it). Connections made after the freeze are relayed normally.
struct FreezableRelay {
    addr: std::net::SocketAddr,
    pairs: Arc<std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicBool>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl FreezableRelay {
    async fn start(upstream: std::net::SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let pairs: Arc<std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicBool>>>> = Arc::default();
        let list = pairs.clone();
        let accept = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
                list.lock().unwrap().push(frozen.clone());
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(Self::one_way(dr, uw, frozen.clone()));
                tokio::spawn(Self::one_way(ur, dw, frozen));
            }
        });
        Ok(Self {
            addr,
            pairs,
            accept,
        })
    }

    async fn one_way(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        frozen: Arc<std::sync::atomic::AtomicBool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            let cut = frozen.load(Ordering::Relaxed);
            if n == 0 {
                if cut {
                    // The close is lost in the cut: hold the other end open.
                    std::future::pending::<()>().await;
                }
                let _ = to.shutdown().await;
                return;
            }
            if !cut && to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    /// A relay to `node`'s TCP listen address.
    async fn to(node: &TestNode) -> anyhow::Result<Self> {
        let port = node
            .p2p_addr()
            .await?
            .iter()
            .find_map(|p| match p {
                Protocol::Tcp(port) => Some(port),
                _ => None,
            })
            .context("no tcp port")?;
        Self::start(([127, 0, 0, 1], port).into()).await
    }

    /// Cuts every connection relayed so far.
    fn freeze(&self) {
        for p in self.pairs.lock().unwrap().iter() {
            p.store(true, Ordering::Relaxed);
        }
    }
}

/// A node that resets a live peer's connection to mend it (here: half-open) dials the peer
/// again even when both are at their target degree through other peers. A node does not
/// re-dial a peer it lost at its degree, so the link used to be lost (issue 15's 3.5 s heal,
/// 2026-12-05: a reset between two nodes at their degree, no dial for 22 s). Three nodes with
/// a target degree of 1 in a triangle, every one above its target; B reaches A through a
/// relay that is then frozen, gives that connection up and dials A directly, so A holds a
/// half-open end and resets B. Neither B (at its degree) nor anyone else dials again: only
/// A's repair re-dial restores the link.
#[tokio::test]
async fn a_node_at_its_degree_redials_a_peer_it_reset() -> anyhow::Result<()> {
    let config = |bootstrap: Vec<Multiaddr>| {
        let mut c = test_config(bootstrap);
        c.target_peers = 1;
        c
    };
    let a = start(config(vec![]), accept_all()).await?;
    let a_addr = a.p2p_addr().await?;
    let relay = FreezableRelay::to(&a).await?;
    let c = start(config(vec![a_addr.clone()]), accept_all()).await?;
    let via_relay: Multiaddr =
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", relay.addr.port(), a.id()).parse()?;
    let b = start(config(vec![via_relay, c.p2p_addr().await?]), accept_all()).await?;
    eventually("B connected to A and C", || async {
        b.connected_to(a.id()).await && b.connected_to(c.id()).await
    })
    .await?;
    eventually("A connected to C", || a.connected_to(c.id())).await?;
    // Past Kademlia's automatic bootstrap (500 ms after the routing tables last grew), whose
    // queries would dial the peers again on their own, and A's connection is old enough to
    // be taken for a half-open end.
    tokio::time::sleep(Duration::from_millis(1500).max(HALF_OPEN_MIN_AGE)).await;

    relay.freeze();
    // B gives its connection up (its close never reaches A) and, at its degree through C,
    // does not re-dial; its own dial then reaches A directly.
    b.handle.reconnect(a.id()).await?;
    eventually("B no longer connected to A", || async {
        !b.connected_to(a.id()).await
    })
    .await?;
    let before = b.handle.stats().connected;
    b.handle.dial(a_addr).await?;
    eventually("A reset B as half-open", || {
        let reset = a.handle.stats().half_open_resets >= 1;
        async move { reset }
    })
    .await?;
    eventually("A connected to B again after its reset", || async {
        b.handle.stats().connected > before + 1 && a.connected_to(b.id()).await
    })
    .await?;
    relay.accept.abort();
    for n in [a, b, c] {
        n.driver.abort();
    }
    Ok(())
}

/// Issue 14's fresh-fault propagation, the half-open case. B reaches A through a link that
/// is then cut mid-connection; B gives the silent connection up (as its failure detector
/// does, `NetHandle::reconnect`) and re-dials, but its close never reaches A, which keeps
/// its old end. B's re-dial is then A's *second* connection to B, and gossipsub sends its
/// subscriptions only on a peer's first connection: B would never learn that A is
/// subscribed and would gossip nothing to it. A takes an inbound connection from a peer it
/// holds an older direct connection to for such a re-dial and reconnects afresh, so both
/// ends see a first connection again and B's gossip reaches A.
#[tokio::test]
async fn a_redial_across_a_half_open_connection_is_a_first_connection_at_both_ends(
) -> anyhow::Result<()> {
    let mut a = start(test_config(vec![]), accept_all()).await?;
    let relay = FreezableRelay::to(&a).await?;
    // B bootstraps from A through the relay. Its re-dial may go through the relay again or
    // straight to A's own addresses (identify's): either way A's second connection to B.
    let config = test_config(vec![format!(
        "/ip4/127.0.0.1/tcp/{}/p2p/{}",
        relay.addr.port(),
        a.id()
    )
    .parse()?]);
    let b = start(config, accept_all()).await?;
    eventually("B connected to A", || b.connected_to(a.id())).await?;
    publish_when_ready(&b, b"before the cut").await?;
    receive(&mut a, b"before the cut").await?;
    // The connection has been up for a while, as any connection a cut finds is.
    tokio::time::sleep(HALF_OPEN_MIN_AGE).await;

    relay.freeze();
    let before = b.handle.stats().connected;
    b.handle.reconnect(a.id()).await?;
    eventually("B re-dialled A", || {
        let again = b.handle.stats().connected > before;
        async move { again }
    })
    .await?;
    publish_when_ready(&b, b"after the cut").await?;
    receive(&mut a, b"after the cut").await?;
    assert!(
        a.handle.stats().half_open_resets >= 1,
        "A reset the half-open connection"
    );
    relay.accept.abort();
    a.driver.abort();
    b.driver.abort();
    Ok(())
}
