//! A hostile peer speaking the real protocol (issue 12): `dpin-sim attack` and the test helper
//! behind it.
//!
//! It joins the target's network as an ordinary libp2p peer — the node's own network layer
//! ([`dpin_node::net`]: noise, yamux, gossipsub, the sync request protocol) with a fresh
//! identity — and then sends what an attacker would, at a paced rate per kind ([`Kind`]):
//!
//! * `invalid-signature`: well-formed records whose signature is random bytes (every one
//!   unique, so gossipsub's duplicate filter does not absorb them);
//! * `oversized`: gossip payloads of 256 KiB and requests of 4 MiB + 1 byte, over what the
//!   node accepts;
//! * `sync-bomb`: digest requests listing a million buckets, and — when the target starts a
//!   session with us — `Summaries` answers naming bucket 0 a million times;
//! * `whole-store-sync`: the digest of an empty store, in a loop (every answer lists the
//!   target's whole store, up to the protocol's cap);
//! * `blob-flood`: 1 MiB `PutChunk`s (and `PutIndex`es) for random roots;
//! * `fake-offers`: valid storage offers (1 PiB free, price 0) from fresh keys;
//! * `foreign-manifests`: valid manifests claiming 4 TiB and 16 replicas for `--blob-root`
//!   (or random roots), each from a fresh zone;
//! * `junk-zones`: valid name records, each under a fresh zone.
//!
//! With `--rotate-every K` it takes a new identity (a new keypair, a new connection) every K
//! messages. The report counts what was sent and refused locally, the answers, and when the
//! target first answered "banned" or dropped our connection — the defences' side is counted
//! on the target's `/metrics` (`dpin_ingest_*`, `dpin_peer_bans_total`).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dpin_node::net::{self, NetConfig, NetEvent, NetHandle, PublishStatus, Verdict};
use dpin_node::node::{KIND_BLOB, KIND_SYNC};
use dpin_protocol::blob::BlobRequest;
use dpin_protocol::digest::BUCKETS;
use dpin_protocol::record::{blob_label, STORAGE_OFFER_LABEL};
use dpin_protocol::{
    BlobManifest, Content, Endpoint, Host, RecordBody, StorageOffer, SyncRequest, SyncResponse,
    Transport, ZoneKey,
};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tokio::sync::{mpsc, Semaphore};

/// What the attacker sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Kind {
    /// Well-formed records with random signatures (gossip).
    InvalidSignature,
    /// Gossip and requests over the node's size limits.
    Oversized,
    /// Digest requests of a million buckets; bomb answers to the target's sessions.
    SyncBomb,
    /// Empty-store digests in a loop (each lists the target's whole store).
    WholeStoreSync,
    /// 1 MiB chunks and indexes for random roots.
    BlobFlood,
    /// Valid storage offers from fresh keys (gossip).
    FakeOffers,
    /// Valid foreign manifests (4 TiB, 16 replicas) from fresh zones (gossip).
    ForeignManifests,
    /// Valid name records under fresh zones (gossip).
    JunkZones,
}

impl Kind {
    /// The kind's command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::InvalidSignature => "invalid-signature",
            Kind::Oversized => "oversized",
            Kind::SyncBomb => "sync-bomb",
            Kind::WholeStoreSync => "whole-store-sync",
            Kind::BlobFlood => "blob-flood",
            Kind::FakeOffers => "fake-offers",
            Kind::ForeignManifests => "foreign-manifests",
            Kind::JunkZones => "junk-zones",
        }
    }
}

/// One kind at one rate: `KIND` or `KIND:RATE` on the command line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stream {
    /// What to send.
    pub kind: Kind,
    /// Messages per second (`None`: the run's default rate).
    pub rate_per_s: Option<f64>,
}

impl FromStr for Stream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, rate) = match s.split_once(':') {
            Some((k, r)) => (k, Some(parse_rate(r)?)),
            None => (s, None),
        };
        let kind = <Kind as clap::ValueEnum>::from_str(kind, true)?;
        Ok(Stream {
            kind,
            rate_per_s: rate,
        })
    }
}

/// `N` or `N/s`, positive and finite.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let n: f64 = s
        .trim_end_matches("/s")
        .parse()
        .map_err(|_| format!("bad rate {s:?}; use N or N/s"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("rate must be positive, got {s:?}"));
    }
    Ok(n)
}

/// An attack run.
#[derive(Clone, Debug)]
pub struct AttackConfig {
    /// The target's multiaddr, with `/p2p/PEER_ID`.
    pub target: Multiaddr,
    /// What to send and how fast.
    pub streams: Vec<Stream>,
    /// Rate of streams without their own.
    pub default_rate_per_s: f64,
    /// How long.
    pub duration: Duration,
    /// A new identity every this many messages (all kinds together).
    pub rotate_every: Option<u64>,
    /// Root of an honest blob for `foreign-manifests` (random roots otherwise).
    pub blob_root: Option<[u8; 32]>,
    /// RNG seed for the junk (keys, payloads).
    pub seed: u64,
}

/// What an attack run did, as the attacker saw it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AttackReport {
    /// Messages sent, by kind.
    pub sent: BTreeMap<String, u64>,
    /// Messages not sent: our own layer refused (no peers yet, queue full, too large).
    pub not_sent: u64,
    /// Requests answered with an error, by the answer's message (first 60 characters).
    pub error_answers: BTreeMap<String, u64>,
    /// Requests that failed (timeout, connection closed, refused).
    pub failed_requests: u64,
    /// Identities used (1 + rotations).
    pub identities: u64,
    /// Milliseconds from the first message until the target first answered "banned".
    pub banned_answer_after_ms: Option<u64>,
    /// Milliseconds from the first message until the target first dropped our connection.
    pub disconnected_after_ms: Option<u64>,
    /// Sync sessions the target started with us that we answered with a bomb.
    pub bombs_answered: u64,
    /// Run time in milliseconds.
    pub elapsed_ms: u64,
}

/// Most requests in flight at once (each waits up to the request timeout).
const MAX_IN_FLIGHT: usize = 64;
/// Pacing tick.
const TICK: Duration = Duration::from_millis(10);
/// How long to wait for a connection to the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The peer id in a multiaddr's `/p2p/` suffix.
pub fn target_peer(addr: &Multiaddr) -> Result<PeerId> {
    addr.iter()
        .find_map(|p| match p {
            Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .ok_or_else(|| anyhow!("target {addr} has no /p2p/PEER_ID suffix"))
}

/// What the sessions' event tasks note for the report.
#[derive(Default)]
pub(crate) struct Shared {
    disconnected_at: AtomicU64,
    banned_at: AtomicU64,
    bombs_answered: AtomicU64,
    failed_requests: AtomicU64,
    error_answers: std::sync::Mutex<BTreeMap<String, u64>>,
}

/// One identity: a swarm connected to the target.
pub(crate) struct Session {
    pub(crate) net: NetHandle,
}

impl Session {
    /// A fresh identity on loopback, connected to `target` (whose peer id is `peer`) within
    /// [`CONNECT_TIMEOUT`]; its events are drained in the background (gossip ignored, the
    /// target's sync sessions answered in sync, or with a bomb when `bomb`).
    pub(crate) async fn start(
        target: &Multiaddr,
        peer: PeerId,
        bomb: bool,
        shared: Arc<Shared>,
        started: Instant,
    ) -> Result<Self> {
        let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse()?;
        let mut config = NetConfig::new(Keypair::generate_ed25519(), vec![listen], vec![]);
        // Room to send what the target must refuse.
        config.max_message_bytes = 1024 * 1024;
        config.max_request_bytes = 8 * 1024 * 1024;
        config.request_timeout = Duration::from_secs(5);
        let (net, events) = net::spawn(config)
            .await
            .map_err(|e| anyhow!("attacker network: {e}"))?;
        let (connected_tx, mut connected_rx) = mpsc::channel(1);
        tokio::spawn(drain_events(
            net.clone(),
            events,
            peer,
            bomb,
            shared,
            started,
            connected_tx,
        ));
        net.dial(target.clone())
            .await
            .map_err(|e| anyhow!("dial {target}: {e}"))?;
        tokio::time::timeout(CONNECT_TIMEOUT, connected_rx.recv())
            .await
            .context("no connection to the target")?;
        Ok(Session { net })
    }
}

/// Consumes the attacker's network events: notes connection changes, answers the target's
/// sync sessions (with a bomb, when asked to), ignores gossip.
async fn drain_events(
    net: NetHandle,
    mut events: mpsc::Receiver<NetEvent>,
    target: PeerId,
    bomb: bool,
    shared: Arc<Shared>,
    started: Instant,
    connected: mpsc::Sender<()>,
) {
    while let Some(ev) = events.recv().await {
        match ev {
            NetEvent::PeerConnected(p) if p == target => {
                let _ = connected.try_send(());
            }
            NetEvent::PeerDisconnected(p) if p == target => {
                let ms = started.elapsed().as_millis().max(1) as u64;
                let _ = shared.disconnected_at.compare_exchange(
                    0,
                    ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            NetEvent::Gossip {
                source, message_id, ..
            } => {
                let _ = net
                    .report_validation(message_id, source, Verdict::Ignore)
                    .await;
            }
            NetEvent::Request { data, channel, .. } => {
                let answer = if bomb && data.first() == Some(&KIND_SYNC) {
                    shared.bombs_answered.fetch_add(1, Ordering::Relaxed);
                    sync_bomb_answer()
                } else {
                    SyncResponse::InSync.encode()
                };
                let _ = net.respond(channel, answer).await;
            }
            _ => {}
        }
    }
}

/// A `Summaries` answer naming bucket 0 a million times (just under the 1 MiB message cap).
pub fn sync_bomb_answer() -> Vec<u8> {
    SyncResponse::Summaries {
        buckets: vec![0; 1_000_000],
        summaries: Vec::new(),
        truncated: false,
    }
    .encode()
}

/// Builds the attacker's messages.
struct Junk {
    rng: ChaCha20Rng,
    counter: u64,
    invalid_key: ZoneKey,
    blob_root: Option<[u8; 32]>,
}

/// A message: gossip bytes, or a request (already framed with its kind byte).
enum Message {
    Gossip(Vec<u8>),
    Request(Vec<u8>),
}

impl Junk {
    fn key(&mut self) -> ZoneKey {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        ZoneKey::from_seed(seed)
    }

    fn body(&mut self, key: &ZoneKey, label: String, content: Content) -> RecordBody {
        self.counter += 1;
        let now = now_ms();
        RecordBody {
            zone: key.zone(),
            label,
            seq: now.saturating_add(self.counter % 1000),
            expires_at_ms: now + 3_600_000,
            content,
        }
    }

    fn endpoints(&mut self) -> Content {
        Content::Endpoints(vec![Endpoint {
            host: Host::V4([192, 0, 2, self.rng.gen()]),
            port: 443,
            transport: Transport::Tcp,
            weight: 1,
        }])
    }

    fn signed(&mut self, body: RecordBody, key: &ZoneKey) -> Option<Vec<u8>> {
        body.sign(key).ok().map(|r| r.encode())
    }

    fn next(&mut self, kind: Kind) -> Option<Message> {
        Some(match kind {
            Kind::InvalidSignature => {
                let key = self.invalid_key.clone();
                let label = format!("bad{}", self.counter);
                let content = self.endpoints();
                let body = self.body(&key, label, content);
                let mut rec = body.sign(&key).ok()?;
                self.rng.fill_bytes(&mut rec.signature);
                Message::Gossip(rec.encode())
            }
            Kind::Oversized => {
                self.counter += 1;
                // Unique (a random head), cheap to build (the rest is zeros).
                let mut b = vec![
                    0u8;
                    if self.counter % 2 == 0 {
                        256 << 10
                    } else {
                        (4 << 20) + 1
                    }
                ];
                self.rng.fill_bytes(&mut b[..32]);
                if self.counter % 2 == 0 {
                    Message::Gossip(b)
                } else {
                    b[0] = KIND_SYNC;
                    Message::Request(b)
                }
            }
            Kind::SyncBomb => {
                let mut root = [0u8; 32];
                self.rng.fill_bytes(&mut root);
                let req = SyncRequest::Digest {
                    root,
                    buckets: vec![self.rng.gen(); 100_000],
                };
                Message::Request([&[KIND_SYNC][..], &req.encode()].concat())
            }
            Kind::WholeStoreSync => {
                let req = SyncRequest::Digest {
                    root: [0; 32],
                    buckets: vec![0; BUCKETS],
                };
                Message::Request([&[KIND_SYNC][..], &req.encode()].concat())
            }
            Kind::BlobFlood => {
                let mut root = [0u8; 32];
                self.rng.fill_bytes(&mut root);
                self.counter += 1;
                let req = if self.counter % 8 == 0 {
                    BlobRequest::PutIndex {
                        root,
                        size: 1 << 40,
                        chunk_size: 1 << 20,
                        index: vec![0; 32 * 1024],
                        manifest: Vec::new(),
                    }
                } else {
                    let mut data = vec![0u8; 1024 * 1024];
                    self.rng.fill_bytes(&mut data[..32]);
                    BlobRequest::PutChunk { root, i: 0, data }
                };
                Message::Request([&[KIND_BLOB][..], &req.encode()].concat())
            }
            Kind::FakeOffers => {
                let key = self.key();
                let content = Content::StorageOffer(StorageOffer {
                    capacity_bytes: 1 << 50,
                    free_bytes: 1 << 50,
                    price_milli: 0,
                    region: "eu".into(),
                });
                let body = self.body(&key, STORAGE_OFFER_LABEL.into(), content);
                Message::Gossip(self.signed(body, &key)?)
            }
            Kind::ForeignManifests => {
                let key = self.key();
                let root = match self.blob_root {
                    Some(r) => r,
                    None => {
                        let mut r = [0u8; 32];
                        self.rng.fill_bytes(&mut r);
                        r
                    }
                };
                let content = Content::BlobManifest(BlobManifest {
                    root,
                    size: 4 << 40,
                    chunk_size: 1 << 20,
                    chunks: 4 << 20,
                    replicas: 16,
                });
                let body = self.body(&key, blob_label(&root), content);
                Message::Gossip(self.signed(body, &key)?)
            }
            Kind::JunkZones => {
                let key = self.key();
                let label = format!("junk{}", self.counter);
                let content = self.endpoints();
                let body = self.body(&key, label, content);
                Message::Gossip(self.signed(body, &key)?)
            }
        })
    }
}

/// Runs an attack to its end and reports what happened.
pub async fn run(config: AttackConfig) -> Result<AttackReport> {
    if config.streams.is_empty() {
        bail!("no --kind given");
    }
    let peer = target_peer(&config.target)?;
    let bomb = config.streams.iter().any(|s| s.kind == Kind::SyncBomb);
    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    let mut session = Session::start(&config.target, peer, bomb, shared.clone(), started).await?;
    let mut report = AttackReport {
        identities: 1,
        ..AttackReport::default()
    };
    let mut junk = Junk {
        rng: ChaCha20Rng::seed_from_u64(config.seed),
        counter: 0,
        invalid_key: ZoneKey::from_seed([0x66; 32]),
        blob_root: config.blob_root,
    };
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let rates: Vec<(Kind, f64)> = config
        .streams
        .iter()
        .map(|s| (s.kind, s.rate_per_s.unwrap_or(config.default_rate_per_s)))
        .collect();
    let mut sent_by_kind = vec![0u64; rates.len()];
    let mut since_rotation = 0u64;
    let begin = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while begin.elapsed() < config.duration {
        tick.tick().await;
        let elapsed = begin.elapsed().as_secs_f64();
        for (i, (kind, rate)) in rates.iter().enumerate() {
            // Paced: catch up to rate × elapsed, at most a tenth of a second's worth per tick.
            let due = (rate * elapsed) as u64;
            let n = due
                .saturating_sub(sent_by_kind[i])
                .min((rate / 10.0).ceil() as u64 + 1);
            for _ in 0..n {
                sent_by_kind[i] += 1;
                let Some(msg) = junk.next(*kind) else {
                    report.not_sent += 1;
                    continue;
                };
                match msg {
                    Message::Gossip(data) => match session.net.publish(data).await {
                        Ok(PublishStatus::NoPeers) | Err(_) => report.not_sent += 1,
                        Ok(_) => *report.sent.entry(kind.as_str().into()).or_default() += 1,
                    },
                    Message::Request(data) => {
                        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                            report.not_sent += 1;
                            continue;
                        };
                        *report.sent.entry(kind.as_str().into()).or_default() += 1;
                        let (net, shared) = (session.net.clone(), shared.clone());
                        tokio::spawn(async move {
                            let answer = net.request(peer, data).await;
                            drop(permit);
                            note_answer(&shared, answer, started);
                        });
                    }
                }
                since_rotation += 1;
                if config.rotate_every.is_some_and(|k| since_rotation >= k) {
                    since_rotation = 0;
                    let old = session.net.clone();
                    session =
                        Session::start(&config.target, peer, bomb, shared.clone(), started).await?;
                    report.identities += 1;
                    let _ = old.shutdown().await;
                }
            }
        }
    }
    // Let requests in flight finish (or time out).
    let _ = tokio::time::timeout(
        Duration::from_secs(6),
        in_flight.acquire_many(MAX_IN_FLIGHT as u32),
    )
    .await;
    let _ = session.net.shutdown().await;
    let at = |v: u64| (v > 0).then_some(v);
    report.disconnected_after_ms = at(shared.disconnected_at.load(Ordering::Relaxed));
    report.banned_answer_after_ms = at(shared.banned_at.load(Ordering::Relaxed));
    report.bombs_answered = shared.bombs_answered.load(Ordering::Relaxed);
    report.failed_requests = shared.failed_requests.load(Ordering::Relaxed);
    report.error_answers = shared
        .error_answers
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

fn note_answer(shared: &Shared, answer: Result<Vec<u8>, net::NetError>, started: Instant) {
    let Ok(bytes) = answer else {
        shared.failed_requests.fetch_add(1, Ordering::Relaxed);
        return;
    };
    // Both sync and blob errors carry a message; find it by decoding either.
    let message = match SyncResponse::decode(&bytes) {
        Ok(SyncResponse::Error { message }) => Some(message),
        Ok(_) => None,
        Err(_) => match dpin_protocol::blob::BlobResponse::decode(&bytes) {
            Ok(dpin_protocol::blob::BlobResponse::Error { message }) => Some(message),
            _ => None,
        },
    };
    let Some(message) = message else { return };
    if message == dpin_protocol::ingest::Refusal::Banned.message() {
        let ms = started.elapsed().as_millis().max(1) as u64;
        let _ = shared
            .banned_at
            .compare_exchange(0, ms, Ordering::Relaxed, Ordering::Relaxed);
    }
    if let Ok(mut m) = shared.error_answers.lock() {
        let key: String = message.chars().take(60).collect();
        *m.entry(key).or_default() += 1;
    }
}
