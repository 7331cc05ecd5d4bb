//! The chaos workload: writers, readers and propagation probes — every operation recorded in
//! the history with its start and end time. The seed's race runs beside it, through the real
//! CLI ([`crate::race`]).
//!
//! * **Writers** each own some names and publish a new seq for one of them continuously. The
//!   harness signs these records itself (with `dpin_protocol`) so it controls seq exactly; it
//!   posts to a random node and fails over to the next on timeout or error, re-sending the
//!   *same* signed record (a retry can only duplicate, never fork, a write).
//! * **Expiry and compaction happen during the run.** Records live `record_ttl_ms` (seconds,
//!   not hours), so a writer refreshes every live name well within its TTL (a name not written
//!   for a third of the TTL is written next). Each writer also owns one *ephemeral* name that
//!   it stops refreshing part-way through, so it expires and, once the nodes' compaction
//!   horizon has passed, is compacted while the run goes on; the checker knows from each
//!   write's expiry that such a name is gone by design, not empty.
//! * **Readers** resolve every name from every node, over HTTP and (if the nodes serve it) DNS,
//!   in rounds: one name, all nodes at once, short timeouts. A round nobody answered is a
//!   failed query. An answer that says its node is cut off from the network (HTTP `cut_off`,
//!   or a DNS TTL of at most 1 s, see [`crate::dnsq::DnsReply::says_cut_off`]) may be stale,
//!   so the reader asks up to [`MAX_FAILOVER_TRIES`] other nodes in turn instead, as the CLI
//!   does, and takes the first answer that does not say so; when none does, it keeps the
//!   flagged answer (never fail closed). The failover reads are recorded with
//!   [`Op::failover_from`], a kept flagged answer with [`Op::fallback`].
//! * **Probes** poll every other node right after a write is acknowledged, so propagation
//!   latency is measured, not inferred from the readers' sampling rate.
//!
//! **Content.** Every record gets fresh endpoint addresses: `127.A.B.C` encodes a content id
//! unique in the run, and the ports (1000 + tag, 2000 + tag) name the writer. So any answer —
//! a DNS answer carries no seq and no port — tells exactly which write it came from, and the
//! checker can compare content, not only seq. (The id is not the seq: the CLI's one-step
//! publish picks its seq itself, after the endpoints are chosen.) These addresses are never
//! contacted: the harness starts every node with `--no-probe`.
//!
//! All randomness comes from ChaCha RNGs derived from the run's seed, one stream per task, so a
//! seed replays the same decisions (timing on a real machine still varies).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dpin_protocol::{Content, Endpoint, Host, RecordBody, SignedRecord, Transport, ZoneKey};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dnsq::{self, DnsAnswer};
use crate::history::{content_of, FaultKind, FaultSpan, History, Op, OpKind, OpOutcome, Proto};
use crate::nodeapi::Api;

/// Per-request timeout of reads (a paused node never answers; do not wait for it).
pub const READ_TIMEOUT: Duration = Duration::from_millis(500);
/// Timeout of the second attempt of a read round in which no node answered the first.
pub const READ_RETRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Per-attempt timeout of writes (a write fsyncs; allow more).
pub const WRITE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a probe polls one node for a write.
pub const PROBE_WINDOW: Duration = Duration::from_secs(3);
/// Default lifetime of the records the workload writes: short, so records expire (and the
/// ephemeral names are compacted) within a one-minute run.
pub const DEFAULT_RECORD_TTL_MS: u64 = 15_000;
/// A live name not written for this fraction of the TTL is refreshed next.
pub const REFRESH_FRACTION: f64 = 1.0 / 3.0;

/// Live counters for the progress line.
#[derive(Debug, Default)]
pub struct Counters {
    /// Operations recorded.
    pub ops: AtomicU64,
    /// Reads answered with endpoints.
    pub reads_ok: AtomicU64,
    /// Reads without an answer.
    pub unanswered: AtomicU64,
    /// Read rounds nobody answered.
    pub failed_rounds: AtomicU64,
    /// Answers without endpoints, whatever the reason: the progress line's `no endpoints`.
    /// Most are by design (a name deleted, expired, or not written yet where it was read,
    /// a clock running ahead); the checker's `empty` at the end counts only those that were
    /// outages.
    pub empty: AtomicU64,
    /// Acknowledged writes.
    pub acked: AtomicU64,
    /// Stale plans / old tombstones refused.
    pub refused_stale: AtomicU64,
    /// Answers that said their node was cut off, which readers failed over from.
    pub failovers: AtomicU64,
    /// Reads made failing over.
    pub failover_reads: AtomicU64,
    /// Flagged answers kept: no node failed over to answered without the flag.
    pub fallbacks: AtomicU64,
}

/// A fault in progress, for the progress line.
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveFault {
    /// Kind.
    pub kind: FaultKind,
    /// Node (1-based).
    pub node: usize,
    /// Planned heal time, ms since start.
    pub until_ms: f64,
    /// For a group partition: which group the node is in (0: the first — the smaller half of a
    /// split, the side that cannot hear in a one-way cut; 1: the other).
    pub group: Option<usize>,
}

/// The recording side of a run, shared by every task.
#[derive(Debug)]
pub struct Recorder {
    t0: Instant,
    t0_unix_ms: u64,
    ops: Mutex<Vec<Op>>,
    faults: Mutex<Vec<FaultSpan>>,
    /// Faults in progress.
    pub active: Mutex<Vec<ActiveFault>>,
    /// Live counters.
    pub counters: Counters,
    round: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Self {
            t0: Instant::now(),
            t0_unix_ms: unix_ms(),
            ops: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            active: Mutex::new(Vec::new()),
            counters: Counters::default(),
            round: AtomicU64::new(0),
        }
    }

    /// When the run started.
    pub fn t0(&self) -> Instant {
        self.t0
    }

    /// Ms since the run started.
    pub fn now_ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1000.0
    }

    /// A Unix time in ms (a record's expiry) on the run's clock (ms since start).
    pub fn run_ms(&self, unix_ms: u64) -> f64 {
        unix_ms as f64 - self.t0_unix_ms as f64
    }

    /// Records an operation.
    pub fn op(&self, op: Op) {
        let c = &self.counters;
        c.ops.fetch_add(1, Ordering::Relaxed);
        match op.kind {
            OpKind::Read => {
                if !op.outcome.is_answer() {
                    c.unanswered.fetch_add(1, Ordering::Relaxed);
                } else if op.outcome == OpOutcome::Found && op.endpoints.unwrap_or(0) > 0 {
                    c.reads_ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    c.empty.fetch_add(1, Ordering::Relaxed);
                }
            }
            OpKind::Write if op.outcome.is_ack() => {
                c.acked.fetch_add(1, Ordering::Relaxed);
            }
            OpKind::StalePlan | OpKind::Cleanup
                if matches!(op.outcome, OpOutcome::Stale | OpOutcome::Conflict) =>
            {
                c.refused_stale.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        lock(&self.ops).push(op);
    }

    /// Records a finished fault interval.
    pub fn fault(&self, span: FaultSpan) {
        lock(&self.faults).push(span);
    }

    /// A new read-round id.
    pub fn next_round(&self) -> u64 {
        self.round.fetch_add(1, Ordering::Relaxed)
    }

    /// Snapshot of the history so far.
    pub fn history(&self) -> History {
        History {
            ops: lock(&self.ops).clone(),
            faults: lock(&self.faults).clone(),
        }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// One node as the clients see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// 1-based index.
    pub node: usize,
    /// HTTP API.
    pub api: SocketAddr,
    /// DNS, if served.
    pub dns: Option<SocketAddr>,
}

/// Who writes a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Writer `i` alone.
    Writer(usize),
    /// The race's writers A and B (B advances it, A replays stale plans, clean-up deletes).
    Race,
}

/// A name of the workload.
#[derive(Clone, Debug)]
pub struct NameSpec {
    /// Label inside the zone.
    pub label: String,
    /// `label.zone`.
    pub full: String,
    /// Who writes it.
    pub owner: Owner,
    /// Written only until [`WorkloadConfig::ephemeral_until`], then left to expire.
    pub ephemeral: bool,
}

/// Workload settings.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Seed of every RNG stream.
    pub seed: u64,
    /// Number of independent writers.
    pub writers: usize,
    /// Names per writer.
    pub names_per_writer: usize,
    /// Names shared by the race.
    pub race_names: usize,
    /// Writes per second, all writers together.
    pub write_rate: f64,
    /// Read rounds per second per protocol.
    pub read_rate: f64,
    /// Local address to send DNS queries from.
    pub dns_bind: IpAddr,
    /// Lifetime of every record written, ms.
    pub record_ttl_ms: u64,
    /// How long after the workload starts the ephemeral names are still written.
    pub ephemeral_until: Duration,
}

/// The names, the key that signs them, and the content ids handed out so far.
pub struct Plan {
    /// The zone key (derived from the seed).
    pub key: ZoneKey,
    /// All names.
    pub names: Vec<NameSpec>,
    /// Lifetime of every record written, ms.
    pub ttl_ms: u64,
    next_id: AtomicU32,
}

/// First content id: addresses start at 127.1.0.1, clear of the usual 127.0.0.x.
const FIRST_CONTENT_ID: u32 = 1 << 16;

/// Fresh endpoints for one record: the endpoints, the same as CLI arguments, and the content
/// text the history records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fresh {
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
    /// `HOST:PORT` arguments for `dpin sign` / `dpin publish`.
    pub args: Vec<String>,
    /// [`content_of`] text.
    pub content: String,
}

impl Plan {
    /// Derives the zone key and names from the config.
    pub fn new(cfg: &WorkloadConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(1);
        let key = ZoneKey::from_seed(rng.gen());
        let zone = key.zone();
        let mut names = Vec::new();
        for w in 0..cfg.writers {
            for j in 0..cfg.names_per_writer {
                let label = format!("svc-{w}-{j}");
                names.push(NameSpec {
                    full: format!("{label}.{zone}"),
                    label,
                    owner: Owner::Writer(w),
                    ephemeral: false,
                });
            }
            let label = format!("tmp-{w}");
            names.push(NameSpec {
                full: format!("{label}.{zone}"),
                label,
                owner: Owner::Writer(w),
                ephemeral: true,
            });
        }
        for r in 0..cfg.race_names {
            let label = format!("regional-{r}");
            names.push(NameSpec {
                full: format!("{label}.{zone}"),
                label,
                owner: Owner::Race,
                ephemeral: false,
            });
        }
        Self {
            key,
            names,
            ttl_ms: cfg.record_ttl_ms,
            next_id: AtomicU32::new(FIRST_CONTENT_ID),
        }
    }

    /// Endpoints no other record of the run has: a fresh content id in the address, `tag`
    /// (which writer) in the ports.
    pub fn fresh(&self, tag: u16) -> Fresh {
        let mut id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Skip .0 and .255 host parts: valid, but they look like network/broadcast addresses.
        while matches!(id & 0xff, 0 | 0xff) {
            id = self.next_id.fetch_add(1, Ordering::Relaxed);
        }
        let addr = content_addr(id);
        let host = Host::V4(addr.octets());
        let endpoints: Vec<Endpoint> = [1000, 2000]
            .into_iter()
            .map(|base| Endpoint {
                host: host.clone(),
                port: base + tag,
                transport: Transport::Tcp,
                weight: 1,
            })
            .collect();
        let args: Vec<String> = endpoints
            .iter()
            .map(|e| format!("{addr}:{}", e.port))
            .collect();
        let a = addr.to_string();
        let content = content_of(endpoints.iter().map(|e| (a.as_str(), e.port)));
        Fresh {
            endpoints,
            args,
            content,
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The address of content id `id` (low 24 bits).
pub fn content_addr(id: u32) -> Ipv4Addr {
    Ipv4Addr::new(127, (id >> 16) as u8, (id >> 8) as u8, id as u8)
}

/// Signs a record for `label` at `seq` with `endpoints`, living `ttl_ms` from now.
pub fn make_record(
    key: &ZoneKey,
    label: &str,
    seq: u64,
    endpoints: Vec<Endpoint>,
    ttl_ms: u64,
) -> Result<SignedRecord, dpin_protocol::ValidationError> {
    RecordBody {
        zone: key.zone(),
        label: label.to_owned(),
        seq,
        expires_at_ms: unix_ms().saturating_add(ttl_ms),
        content: Content::Endpoints(endpoints),
    }
    .sign(key)
}

/// The history's content text of a signed record.
pub fn record_content(record: &SignedRecord) -> String {
    match record.endpoints() {
        Some(eps) => {
            let hosts: Vec<String> = eps.iter().map(|e| e.host.to_string()).collect();
            content_of(
                hosts
                    .iter()
                    .map(String::as_str)
                    .zip(eps.iter().map(|e| e.port)),
            )
        }
        None => crate::history::TOMBSTONE.to_owned(),
    }
}

/// Everything a task needs.
#[derive(Clone)]
pub struct Ctx {
    /// Recorder.
    pub rec: Arc<Recorder>,
    /// HTTP client.
    pub api: Api,
    /// Nodes.
    pub targets: Arc<Vec<Target>>,
    /// When to stop (every loop checks it).
    pub deadline: Instant,
    /// Where acknowledged writes go to be probed.
    pub probe_tx: Option<tokio::sync::mpsc::Sender<Probe>>,
    /// Set to `true` to stop early (Ctrl-C).
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// A write to measure propagation of.
#[derive(Clone, Debug)]
pub struct Probe {
    /// Name.
    pub name: String,
    /// Seq acknowledged.
    pub seq: u64,
    /// Node that acknowledged it (1-based).
    pub node: usize,
}

impl Ctx {
    /// Whether tasks should keep going: before the deadline and not stopped.
    pub fn running(&self) -> bool {
        Instant::now() < self.deadline && !*self.stop.borrow()
    }

    async fn sleep_until_or_deadline(&self, d: Duration) {
        let until = (Instant::now() + d).min(self.deadline);
        tokio::time::sleep_until(until.into()).await;
    }

    /// Publishes `record` at one node and records the op.
    async fn publish_at(
        &self,
        t: &Target,
        record: &SignedRecord,
        kind: OpKind,
        process: &str,
    ) -> OpOutcome {
        let start = self.rec.now_ms();
        let r = self.api.publish(t.api, record, WRITE_TIMEOUT).await;
        self.rec.op(Op {
            kind,
            proto: Proto::Http,
            process: process.to_owned(),
            node: t.node,
            name: record.name(),
            start_ms: start,
            end_ms: self.rec.now_ms(),
            outcome: r.outcome,
            seq: Some(record.body.seq),
            detail: r.detail,
            content: Some(record_content(record)),
            expires_ms: Some(self.rec.run_ms(record.body.expires_at_ms)),
            ..Op::default()
        });
        r.outcome
    }

    /// Publishes `record` starting at node index `first` (0-based), failing over to the next
    /// node on timeout or error; stops at the first answer (ack or refusal). Returns the node
    /// (1-based) and outcome of the last attempt.
    pub async fn publish_failover(
        &self,
        first: usize,
        record: &SignedRecord,
        process: &str,
    ) -> Option<(usize, OpOutcome)> {
        let n = self.targets.len();
        let mut last = None;
        for k in 0..n {
            if !self.running() && k > 0 {
                break;
            }
            let t = &self.targets[(first + k) % n];
            let o = self.publish_at(t, record, OpKind::Write, process).await;
            last = Some((t.node, o));
            if !matches!(o, OpOutcome::Timeout | OpOutcome::Error) {
                break;
            }
        }
        if let (Some((node, o)), Some(tx)) = (last, &self.probe_tx) {
            if o == OpOutcome::Applied {
                let _ = tx.try_send(Probe {
                    name: record.name(),
                    seq: record.body.seq,
                    node,
                });
            }
        }
        last
    }
}

/// Tag (port offset) of the records written by setup.
pub const SETUP_TAG: u16 = 99;

/// Publishes seq 1 of every name (through node 1 first, failing over), recording the ops.
/// Returns the names whose first write was not acknowledged.
pub async fn setup(ctx: &Ctx, plan: &Plan) -> Vec<String> {
    let mut failed = Vec::new();
    for (i, n) in plan.names.iter().enumerate() {
        let fresh = plan.fresh(SETUP_TAG);
        let Ok(rec) = make_record(&plan.key, &n.label, 1, fresh.endpoints, plan.ttl_ms) else {
            failed.push(n.full.clone());
            continue;
        };
        match ctx.publish_failover(i, &rec, "setup").await {
            Some((_, o)) if o.is_ack() => {}
            _ => failed.push(n.full.clone()),
        }
    }
    failed
}

/// Waits until every node resolves every name with endpoints (bounded by `timeout`).
pub async fn wait_replicated(ctx: &Ctx, plan: &Plan, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let mut all = true;
        'outer: for t in ctx.targets.iter() {
            for n in &plan.names {
                let r = ctx.api.resolve(t.api, &n.full, READ_TIMEOUT).await;
                if r.outcome != OpOutcome::Found || r.endpoints.unwrap_or(0) == 0 {
                    all = false;
                    break 'outer;
                }
            }
        }
        if all {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

fn pace(rate: f64) -> Duration {
    if rate <= 0.0 {
        Duration::from_secs(1)
    } else {
        Duration::from_secs_f64(1.0 / rate)
    }
}

/// A writer: publishes a new seq of one of its names, at `rate` writes per second. A name not
/// written for [`REFRESH_FRACTION`] of the TTL is written next, so live names never expire;
/// the ephemeral name is written only until `ephemeral_until` after the writer starts.
pub async fn writer(
    ctx: Ctx,
    plan: Arc<Plan>,
    w: usize,
    rate: f64,
    seed: u64,
    ephemeral_until: Duration,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(100 + w as u64);
    let own: Vec<&NameSpec> = plan
        .names
        .iter()
        .filter(|n| n.owner == Owner::Writer(w))
        .collect();
    if own.is_empty() {
        return;
    }
    let started = Instant::now();
    let refresh_after = Duration::from_millis(plan.ttl_ms).mul_f64(REFRESH_FRACTION);
    let mut next: BTreeMap<&str, u64> = own.iter().map(|n| (n.label.as_str(), 1)).collect();
    let mut last_write: BTreeMap<&str, Instant> =
        own.iter().map(|n| (n.label.as_str(), started)).collect();
    let process = format!("writer-{w}");
    let tag = u16::try_from(w).unwrap_or(0);
    while ctx.running() {
        let jitter: f64 = rng.gen_range(0.5..1.5);
        ctx.sleep_until_or_deadline(pace(rate).mul_f64(jitter))
            .await;
        if !ctx.running() {
            break;
        }
        let writable: Vec<&NameSpec> = own
            .iter()
            .copied()
            .filter(|n| !n.ephemeral || started.elapsed() < ephemeral_until)
            .collect();
        if writable.is_empty() {
            continue;
        }
        // The name written longest ago, if it is due; else a random one.
        let due = writable
            .iter()
            .copied()
            .filter(|n| {
                last_write
                    .get(n.label.as_str())
                    .is_some_and(|t| t.elapsed() >= refresh_after)
            })
            .min_by_key(|n| last_write.get(n.label.as_str()).copied());
        let n = match due {
            Some(n) => n,
            None => writable[rng.gen_range(0..writable.len())],
        };
        let first = rng.gen_range(0..ctx.targets.len());
        let Some(seq) = next.get_mut(n.label.as_str()) else {
            continue;
        };
        // A new seq for every attempt: an unacknowledged seq is never reused with other content.
        *seq += 1;
        let fresh = plan.fresh(tag);
        let Ok(rec) = make_record(&plan.key, &n.label, *seq, fresh.endpoints, plan.ttl_ms) else {
            continue;
        };
        last_write.insert(n.label.as_str(), Instant::now());
        ctx.publish_failover(first, &rec, &process).await;
    }
}

/// Resolves `name` at one node over `proto` (HTTP or DNS; anything else is an error).
async fn read_one(
    ctx: &Ctx,
    t: &Target,
    name: &str,
    proto: Proto,
    dns_bind: IpAddr,
    id: u16,
    timeout: Duration,
) -> crate::nodeapi::ReadResult {
    use crate::nodeapi::ReadResult;
    let not_found = |detail: &str| ReadResult {
        outcome: OpOutcome::NotFound,
        seq: None,
        endpoints: Some(0),
        content: None,
        detail: Some(detail.to_owned()),
        cut_off: None,
    };
    match proto {
        Proto::Http => ctx.api.resolve(t.api, name, timeout).await,
        Proto::Cli => ReadResult::failure(OpOutcome::Error, "reads use HTTP or DNS".to_owned()),
        Proto::Dns => {
            let Some(server) = t.dns else {
                return ReadResult::failure(OpOutcome::Error, "no dns address".to_owned());
            };
            let qname = format!("{name}.dpin.");
            let bind = SocketAddr::new(dns_bind, 0);
            let reply = dnsq::query(bind, server, &qname, id, timeout).await;
            let cut_off = reply.as_ref().ok().map(dnsq::DnsReply::says_cut_off);
            match reply.map(|r| r.answer) {
                // A DNS answer has no seq: the checker finds it from the addresses.
                Ok(DnsAnswer::Addrs(a)) if !a.is_empty() => {
                    let hosts: Vec<String> = a.iter().map(ToString::to_string).collect();
                    ReadResult {
                        outcome: OpOutcome::Found,
                        seq: None,
                        endpoints: Some(a.len()),
                        content: Some(crate::history::hosts_of(&hosts.join(","))),
                        detail: None,
                        cut_off,
                    }
                }
                Ok(DnsAnswer::Addrs(_)) => not_found("NOERROR without A records"),
                Ok(DnsAnswer::NxDomain) => not_found("NXDOMAIN"),
                // query_a retries a truncated answer over TCP; it never hands one back.
                Ok(DnsAnswer::Truncated) => {
                    ReadResult::failure(OpOutcome::Error, "truncated answer".to_owned())
                }
                Ok(DnsAnswer::Rcode(r)) => {
                    ReadResult::failure(OpOutcome::Error, format!("rcode {r}"))
                }
                Err(dnsq::DnsError::Timeout) => ReadResult {
                    detail: None,
                    ..ReadResult::failure(OpOutcome::Timeout, String::new())
                },
                Err(e) => ReadResult::failure(OpOutcome::Error, e.to_string()),
            }
        }
    }
}

/// Most read rounds of one reader in flight at once. A round waits for its slowest node (a
/// paused node costs the full [`READ_TIMEOUT`]), so rounds overlap to keep the rate steady.
pub const MAX_ROUNDS_IN_FLIGHT: usize = 16;

/// A reader: read rounds (one name from every node at once) at `rate` rounds per second.
pub async fn reader(
    ctx: Ctx,
    plan: Arc<Plan>,
    r: usize,
    proto: Proto,
    rate: f64,
    dns_bind: IpAddr,
) {
    let mut idx = r * 7;
    let process: Arc<str> = Arc::from(format!(
        "reader-{}-{r}",
        match proto {
            Proto::Http => "http",
            Proto::Dns => "dns",
            Proto::Cli => "cli",
        }
    ));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ROUNDS_IN_FLIGHT));
    let mut rounds = tokio::task::JoinSet::new();
    let mut next = Instant::now();
    while ctx.running() {
        next += pace(rate);
        let now = Instant::now();
        if next > now {
            ctx.sleep_until_or_deadline(next - now).await;
        } else {
            next = now; // behind schedule: do not burst to catch up
        }
        if !ctx.running() {
            break;
        }
        let remaining = ctx.deadline.saturating_duration_since(Instant::now());
        let Ok(Ok(permit)) = tokio::time::timeout(remaining, slots.clone().acquire_owned()).await
        else {
            break;
        };
        while rounds.try_join_next().is_some() {}
        let name = plan.names[idx % plan.names.len()].full.clone();
        idx += 1;
        let ctx = ctx.clone();
        let process = process.clone();
        rounds.spawn(async move {
            read_round(&ctx, &name, proto, dns_bind, &process).await;
            drop(permit);
        });
    }
    // Every round ends within READ_TIMEOUT + READ_RETRY_TIMEOUT (plus scheduling).
    while rounds.join_next().await.is_some() {}
}

/// Most other nodes a reader asks in place of one whose answer said it is cut off. Three
/// reach the connected side of any split of 7 nodes, with one more node down, in the worst
/// order (two more nodes of the cut-off side, then one down); each try costs at most
/// [`READ_TIMEOUT`] (or the retry's timeout).
pub const MAX_FAILOVER_TRIES: usize = 3;

/// One read of a round, as the history records it.
struct ReadAt<'a> {
    ctx: &'a Ctx,
    name: &'a str,
    proto: Proto,
    dns_bind: IpAddr,
    process: &'a str,
    round: u64,
    id: u16,
    timeout: Duration,
}

impl ReadAt<'_> {
    async fn read(&self, t: &Target, failover_from: Option<usize>) -> Op {
        let ctx = self.ctx;
        let start = ctx.rec.now_ms();
        let res = read_one(
            ctx,
            t,
            self.name,
            self.proto,
            self.dns_bind,
            self.id,
            self.timeout,
        )
        .await;
        Op {
            kind: OpKind::Read,
            proto: self.proto,
            process: self.process.to_owned(),
            node: t.node,
            name: self.name.to_owned(),
            round: Some(self.round),
            start_ms: start,
            end_ms: ctx.rec.now_ms(),
            outcome: res.outcome,
            seq: res.seq,
            endpoints: res.endpoints,
            detail: res.detail,
            content: res.content,
            cut_off: res.cut_off,
            failover_from,
            ..Op::default()
        }
    }

    /// Asks the nodes after `from` (in target order, at most [`MAX_FAILOVER_TRIES`]) in turn
    /// until one answers without saying it is cut off. Returns the reads made and whether one
    /// did.
    async fn fail_over(&self, from: usize) -> (Vec<Op>, bool) {
        let targets = &self.ctx.targets;
        let n = targets.len();
        let pos = targets.iter().position(|t| t.node == from).unwrap_or(0);
        let mut ops = Vec::new();
        for k in 1..=MAX_FAILOVER_TRIES.min(n.saturating_sub(1)) {
            let op = self.read(&targets[(pos + k) % n], Some(from)).await;
            let better = op.outcome.is_answer() && op.cut_off != Some(true);
            ops.push(op);
            if better {
                return (ops, true);
            }
        }
        (ops, false)
    }
}

/// One read round: the name from every node at once. Like a client that fails over and
/// retries, a round in which no node answered within [`READ_TIMEOUT`] is tried once more with
/// [`READ_RETRY_TIMEOUT`] (so a harness descheduled for half a second on a busy machine does
/// not report an outage); both attempts are recorded under the same round. Every answer that
/// says its node is cut off is failed over from ([`ReadAt::fail_over`]); those reads belong
/// to the round too.
async fn read_round(ctx: &Ctx, name: &str, proto: Proto, dns_bind: IpAddr, process: &str) {
    let round = ctx.rec.next_round();
    let mut answered = false;
    for (attempt, timeout) in [READ_TIMEOUT, READ_RETRY_TIMEOUT].into_iter().enumerate() {
        let at = ReadAt {
            ctx,
            name,
            proto,
            dns_bind,
            process,
            round,
            id: (round as u16).wrapping_add(attempt as u16 * 0x8000),
            timeout,
        };
        let at = &at;
        let mut ops = futures::future::join_all(ctx.targets.iter().map(|t| at.read(t, None))).await;
        answered = ops.iter().any(|o| o.outcome.is_answer());
        let flagged: Vec<(usize, usize)> = ops
            .iter()
            .enumerate()
            .filter(|(_, o)| o.outcome.is_answer() && o.cut_off == Some(true))
            .map(|(i, o)| (i, o.node))
            .collect();
        let failovers = futures::future::join_all(
            flagged
                .iter()
                .map(|&(i, node)| async move { (i, at.fail_over(node).await) }),
        )
        .await;
        let c = &ctx.rec.counters;
        for (i, (reads, better)) in failovers {
            c.failovers.fetch_add(1, Ordering::Relaxed);
            c.failover_reads
                .fetch_add(reads.len() as u64, Ordering::Relaxed);
            if !better {
                c.fallbacks.fetch_add(1, Ordering::Relaxed);
                if let Some(op) = ops.get_mut(i) {
                    op.fallback = true;
                }
            }
            ops.extend(reads);
        }
        for op in ops {
            ctx.rec.op(op);
        }
        if answered {
            break;
        }
    }
    if !answered {
        ctx.rec
            .counters
            .failed_rounds
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Most writes whose probes run at once (each for at most [`PROBE_WINDOW`]); further probe
/// requests wait in the channel.
pub const MAX_PROBE_SETS: usize = 128;

/// The propagation prober: for each acknowledged write it receives, polls every other node
/// until it holds that seq (or [`PROBE_WINDOW`] passes) and records one probe op per node.
///
/// Each write's probes run concurrently with every other write's (up to [`MAX_PROBE_SETS`]):
/// the checker measures from the write's acknowledgement, so a write whose probing waited for
/// the previous write's (one of which may poll a node killed mid-probe until the window ends)
/// would be charged the wait. Probed one write at a time, that wait made up the seconds-long
/// "propagation" maxima of chaos runs right after a kill: every healthy node's probe of the
/// next write ended the moment the killed node came back.
pub async fn prober(ctx: Ctx, mut rx: tokio::sync::mpsc::Receiver<Probe>) {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut sets = FuturesUnordered::new();
    let mut open = true;
    while open || !sets.is_empty() {
        let remaining = ctx.deadline.saturating_duration_since(Instant::now());
        let accept = open && sets.len() < MAX_PROBE_SETS && ctx.running();
        tokio::select! {
            Some(()) = sets.next(), if !sets.is_empty() => {}
            r = tokio::time::timeout(remaining, rx.recv()), if accept => match r {
                Ok(Some(p)) => sets.push(probe_write(&ctx, p)),
                _ => open = false,
            },
            else => open = false,
        }
    }
}

/// Polls every other node not under a fault for one acknowledged write (see [`prober`]).
async fn probe_write(ctx: &Ctx, p: Probe) {
    let ack_ms = ctx.rec.now_ms();
    // Nodes under a fault are not probed: their lag is recovery, not propagation.
    let faulted: Vec<usize> = lock(&ctx.rec.active).iter().map(|f| f.node).collect();
    if faulted.contains(&p.node) {
        return;
    }
    let polls = ctx
        .targets
        .iter()
        .filter(|t| t.node != p.node && !faulted.contains(&t.node))
        .map(|t| {
            let p = &p;
            async move {
                let until = Instant::now() + PROBE_WINDOW;
                let mut last;
                loop {
                    let r = ctx.api.resolve(t.api, &p.name, READ_TIMEOUT).await;
                    last = r;
                    let seen =
                        last.outcome == OpOutcome::Found && last.seq.is_some_and(|s| s >= p.seq);
                    if seen || Instant::now() >= until {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                ctx.rec.op(Op {
                    kind: OpKind::Probe,
                    proto: Proto::Http,
                    process: "prober".to_owned(),
                    node: t.node,
                    name: p.name.clone(),
                    start_ms: ack_ms,
                    end_ms: ctx.rec.now_ms(),
                    outcome: last.outcome,
                    seq: last.seq,
                    endpoints: last.endpoints,
                    detail: last.detail,
                    want_seq: Some(p.seq),
                    content: last.content,
                    ..Op::default()
                });
            }
        });
    futures::future::join_all(polls).await;
}

/// How long after a group partition heals the heal probe waits for every node to catch up.
pub const HEAL_PROBE_WINDOW: Duration = Duration::from_secs(10);
/// Blocking reads one heal probe keeps open at one node at a time: well under the node's
/// per-client bound on requests in flight (32), which the workload's readers share.
pub const HEAL_PROBE_WAITS_PER_NODE: usize = 8;
/// The process name of heal probes in the history.
pub const HEAL_PROBE: &str = "heal-probe";

/// For every name, the seq every node must reach after a heal: the highest acknowledged
/// write-like seq, unless that record is a tombstone or expires within `live_for_ms` of `t_ms`
/// (then nodes may rightly show nothing).
pub fn heal_targets(ops: &[Op], t_ms: f64, live_for_ms: f64) -> BTreeMap<String, u64> {
    let mut top: BTreeMap<&str, &Op> = BTreeMap::new();
    for op in ops {
        let write_like = matches!(op.kind, OpKind::Write | OpKind::StalePlan | OpKind::Cleanup);
        if !write_like || !op.outcome.is_ack() || op.end_ms > t_ms || op.seq.is_none() {
            continue;
        }
        let e = top.entry(op.name.as_str()).or_insert(op);
        if op.seq > e.seq {
            *e = op;
        }
    }
    top.into_iter()
        .filter(|(_, w)| {
            let tomb = w.content.as_deref() == Some(crate::history::TOMBSTONE)
                || (w.kind == OpKind::Cleanup && w.content.is_none());
            !tomb && w.expires_ms.is_none_or(|e| e > t_ms + live_for_ms)
        })
        .filter_map(|(n, w)| w.seq.map(|s| (n.to_owned(), s)))
        .collect()
}

/// After group partition `heal_id` healed at `heal_ms`: asks every node for every name until
/// it shows at least the seq acknowledged anywhere by then ([`heal_targets`]), for at most
/// [`HEAL_PROBE_WINDOW`], and records one probe per node and name (process
/// [`HEAL_PROBE`], round `heal_id`, start = the heal). The checker turns them into the time
/// from heal to convergence.
///
/// The asks are blocking reads (`wait_seq`, answered when the record arrives), at most
/// [`HEAL_PROBE_WAITS_PER_NODE`] open per node. Polling every node for every name every
/// 20 ms took thousands of requests a second from the cores the nodes were catching up on,
/// in exactly the window it measured; a blocking read also times the arrival itself instead
/// of the next poll after it.
pub async fn heal_probe(rec: Arc<Recorder>, targets: Vec<Target>, heal_id: u64, heal_ms: f64) {
    let api = match Api::new() {
        Ok(a) => a,
        Err(_) => return,
    };
    let wants = {
        let ops = lock(&rec.ops);
        heal_targets(&ops, heal_ms, HEAL_PROBE_WINDOW.as_secs_f64() * 1000.0)
    };
    let until = Instant::now() + HEAL_PROBE_WINDOW;
    let per_node = targets.iter().map(|t| {
        let asks = wants.iter().map(|(name, want)| {
            let probe = HealProbe {
                rec: rec.clone(),
                api: api.clone(),
                node: t.node,
                addr: t.api,
                heal_id,
                heal_ms,
                until,
            };
            probe.ask(name.clone(), *want)
        });
        // Collected first: with a lazy map's closure inside the spawned future, rustc cannot
        // show the future is `Send` for every lifetime ("FnOnce is not general enough").
        let asks: Vec<_> = asks.collect();
        futures::StreamExt::collect::<Vec<()>>(futures::StreamExt::buffer_unordered(
            futures::stream::iter(asks),
            HEAL_PROBE_WAITS_PER_NODE,
        ))
    });
    futures::future::join_all(per_node).await;
}

/// One node's side of a heal probe.
struct HealProbe {
    rec: Arc<Recorder>,
    api: Api,
    node: usize,
    addr: SocketAddr,
    heal_id: u64,
    heal_ms: f64,
    until: Instant,
}

impl HealProbe {
    /// Asks the node for `name` until it shows `want` or later, or the window ends; records
    /// the probe (with the last answer if it never did).
    async fn ask(self, name: String, want: u64) {
        let mut last = None;
        loop {
            let left = self.until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                if let Some(r) = last {
                    self.record(&name, want, r);
                }
                return;
            }
            let r = self.api.resolve_wait(self.addr, &name, want, left).await;
            if r.outcome == OpOutcome::Found && r.seq.is_some_and(|s| s >= want) {
                self.record(&name, want, r);
                return;
            }
            last = Some(r);
            // Answered without the seq before the wait ran out (an error, a node restarting,
            // every waiter slot taken): ask again shortly, not in a hot loop.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn record(&self, name: &str, want: u64, r: crate::nodeapi::ReadResult) {
        let end_ms = self.rec.now_ms();
        self.rec.op(heal_op(
            self.node,
            name,
            want,
            self.heal_id,
            self.heal_ms,
            end_ms,
            r,
        ));
    }
}

fn heal_op(
    node: usize,
    name: &str,
    want: u64,
    heal_id: u64,
    heal_ms: f64,
    end_ms: f64,
    r: crate::nodeapi::ReadResult,
) -> Op {
    Op {
        kind: OpKind::Probe,
        proto: Proto::Http,
        process: HEAL_PROBE.to_owned(),
        node,
        name: name.to_owned(),
        round: Some(heal_id),
        start_ms: heal_ms,
        end_ms,
        outcome: r.outcome,
        seq: r.seq,
        endpoints: r.endpoints,
        detail: r.detail,
        want_seq: Some(want),
        content: r.content,
        ..Op::default()
    }
}

/// After the run: resolves every name at every node (nodes in parallel; up to 3 tries per
/// name, 2 s timeout each, no retry once `budget` is spent) and records the answers as final
/// reads.
pub async fn final_reads(
    rec: &Recorder,
    api: &Api,
    targets: &[Target],
    plan: &Plan,
    budget: Duration,
) {
    let deadline = Instant::now() + budget;
    let per_node = targets.iter().map(|t| async move {
        for n in &plan.names {
            for attempt in 0..3 {
                let start = rec.now_ms();
                let r = api.resolve(t.api, &n.full, Duration::from_secs(2)).await;
                let done = r.outcome.is_answer();
                rec.op(Op {
                    kind: OpKind::FinalRead,
                    proto: Proto::Http,
                    process: "final".to_owned(),
                    node: t.node,
                    name: n.full.clone(),
                    start_ms: start,
                    end_ms: rec.now_ms(),
                    outcome: r.outcome,
                    seq: r.seq,
                    endpoints: r.endpoints,
                    detail: r.detail,
                    content: r.content,
                    ..Op::default()
                });
                if done || attempt == 2 || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    futures::future::join_all(per_node).await;
}

/// Polls every node's status until all digests are equal (bounded by `timeout`). Returns the
/// time it took, or `None` if they never agreed.
pub async fn wait_converged(api: &Api, targets: &[Target], timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let mut digests = Vec::new();
        for t in targets {
            if let Some(s) = api.status(t.api, Duration::from_secs(1)).await {
                digests.push(s.digest);
            }
        }
        if digests.len() == targets.len() && digests.windows(2).all(|w| w[0] == w[1]) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_gets_endpoints_no_other_record_has() {
        let plan = Plan::new(&WorkloadConfig {
            seed: 1,
            writers: 1,
            names_per_writer: 1,
            race_names: 1,
            write_rate: 1.0,
            read_rate: 1.0,
            dns_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            record_ttl_ms: DEFAULT_RECORD_TTL_MS,
            ephemeral_until: Duration::from_secs(1),
        });
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..600 {
            let f = plan.fresh(3);
            assert_eq!(f.args.len(), 2);
            assert!(f.content.contains(":1003") && f.content.contains(":2003"));
            assert!(!f.content.contains(".0:") && !f.content.contains(".255:"));
            assert!(seen.insert(crate::history::hosts_of(&f.content)));
        }
        // Writer names, one ephemeral name per writer, race names.
        assert_eq!(plan.names.len(), 3);
        assert_eq!(plan.names.iter().filter(|n| n.ephemeral).count(), 1);
    }

    #[test]
    fn records_sign_with_the_content_the_history_records(
    ) -> Result<(), dpin_protocol::ValidationError> {
        let key = ZoneKey::from_seed([3; 32]);
        let ep = Endpoint {
            host: Host::V4([127, 1, 0, 9]),
            port: 1004,
            transport: Transport::Tcp,
            weight: 1,
        };
        let r = make_record(&key, "svc-0-0", 5, vec![ep], 15_000)?;
        assert_eq!(record_content(&r), "127.1.0.9:1004");
        Ok(())
    }
}
