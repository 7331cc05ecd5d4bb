//! A hostile peer against real processes (issue 12): the attacker of `dpin-sim attack`
//! ([`dpin_sim::attack`]) joins the cluster as an ordinary libp2p peer and floods.
//!
//! * Under a flood of invalid signatures and valid junk records under fresh zones, the honest
//!   node keeps answering resolves, bans the attacker, and no honest record is lost.
//! * A sync bomb (as requester and as responder), a blob-chunk flood, 100+ fake offers and
//!   foreign manifests change neither where an honest blob lives nor how many copies it has.
//! * An attacker rotating through fresh peer ids keeps no honest resolve from being answered,
//!   loses no honest record, and leaves the node's bans and memory bounded.
//! * An HTTP client flooding the API gets 429 past its per-client rate (counted on
//!   `/metrics`), while another client keeps being answered.
//!
//! Short versions (seconds); the measured flood of the target (10k invalid/s plus 1k
//! junk records/s against a release cluster) is the ignored test
//! `flood_target_measured_side_by_side_with_an_idle_run`, or `deploy/hostile-bench.py`.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};
use dpin_protocol::{Content, Endpoint, Host, RecordBody, SignedRecord, Transport, ZoneKey};
use dpin_sim::attack::{self, AttackConfig, AttackReport, Kind, Stream};
use dpin_tests::{cli, cluster, http, ok, wait_connected, wait_until, NodeProc};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_dpin-e2e");
const BOUND: Duration = Duration::from_secs(30);
const CLI_TIMEOUT_MS: &str = "10000";

fn bin() -> &'static Path {
    Path::new(BIN)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A series' value from a node's `/metrics` (0 when absent).
fn metric(node: &NodeProc, series: &str) -> Result<u64> {
    // Counters: integral, never negative.
    Ok(dpin_tests::metric(&node.api, series)?.map_or(0, |v| v as u64))
}

/// Publishes a signed record through a node's API.
fn publish(api: &str, record: &SignedRecord) -> Result<()> {
    let body = serde_json::json!({ "record": hex::encode(record.encode()) }).to_string();
    let (status, v) = http(api, "POST", "/v1/publish", Some(&body))?;
    if status != 200 {
        return Err(anyhow!("publish answered {status}: {v}"));
    }
    Ok(())
}

/// Runs the attacker against `target` (a `/p2p/` multiaddr) on its own thread and runtime.
fn spawn_attack(
    target: &str,
    streams: Vec<Stream>,
    duration: Duration,
    blob_root: Option<[u8; 32]>,
) -> Result<std::thread::JoinHandle<Result<AttackReport>>> {
    let config = AttackConfig {
        target: target.parse()?,
        streams,
        default_rate_per_s: 100.0,
        duration,
        rotate_every: None,
        blob_root,
        seed: 7,
    };
    Ok(spawn_config(config))
}

/// Runs the attacker with `config` on its own thread and runtime.
fn spawn_config(config: AttackConfig) -> std::thread::JoinHandle<Result<AttackReport>> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(attack::run(config))
    })
}

/// Resolves every honest name on `node` until the attacker finishes, asserting each answer
/// holds its seq (`during` names the attack in the failure); the attacker's report and the
/// number of resolves.
fn resolve_during(
    node: &NodeProc,
    honest: &[(String, u64)],
    attacker: std::thread::JoinHandle<Result<AttackReport>>,
    during: &str,
) -> Result<(AttackReport, u64)> {
    let mut resolves = 0u64;
    while !attacker.is_finished() {
        for (name, seq) in honest {
            assert_eq!(
                node.resolved_seq(name),
                Some(*seq),
                "resolve of {name} failed during {during}"
            );
            resolves += 1;
        }
    }
    let report = attacker
        .join()
        .map_err(|_| anyhow!("attacker panicked"))??;
    Ok((report, resolves))
}

fn stream(kind: Kind, rate: f64) -> Stream {
    Stream {
        kind,
        rate_per_s: Some(rate),
    }
}

#[test]
fn an_honest_node_keeps_resolving_bans_a_flooding_peer_and_loses_no_record() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let nodes = cluster(bin(), dir.path(), 3, &["--no-probe"])?;
    wait_connected(&nodes, BOUND)?;

    // 20 honest names, written through node 1, on every node before the attack.
    let honest = publish_honest(&nodes[1].api, 0x42, 20)?;
    let all_hold = |nodes: &[NodeProc]| {
        nodes.iter().all(|n| {
            honest
                .iter()
                .all(|(name, seq)| n.resolved_seq(name) == Some(*seq))
        })
    };
    wait_until(BOUND, "the honest names everywhere", || {
        all_hold(&nodes).then_some(())
    })?;

    // The attacker: 2,000 invalid signatures/s and 200 valid junk records/s under fresh
    // zones, all at node 0.
    let attacker = spawn_attack(
        &nodes[0].bootstrap_addr(),
        vec![
            stream(Kind::InvalidSignature, 2000.0),
            stream(Kind::JunkZones, 200.0),
        ],
        Duration::from_secs(5),
        None,
    )?;
    // Meanwhile node 0 answers every resolve of every honest name.
    let (report, resolves) = resolve_during(&nodes[0], &honest, attacker, "the flood")?;
    eprintln!("attacker: {report:?}; {resolves} honest resolves during the flood");
    assert!(report.sent.get("invalid-signature").copied().unwrap_or(0) > 0);

    // Node 0 banned the attacker — gossipsub's score graylisted it, or the ingest policy
    // counted its invalid messages past the threshold — and dropped its connection.
    let bans = metric(&nodes[0], "dpin_peer_bans_total")?
        + metric(&nodes[0], "dpin_net_bans_total{reason=\"graylisted\"}")?
        + metric(&nodes[0], "dpin_net_bans_total{reason=\"invalid\"}")?;
    assert!(bans >= 1, "no ban");
    assert!(
        report.disconnected_after_ms.is_some(),
        "the attacker was never disconnected"
    );
    // No honest record lost or evicted, anywhere.
    assert!(all_hold(&nodes), "an honest record was lost");
    Ok(())
}

/// Complete copies and complete holders of `hash` as seen through `api`.
fn holders(api: &str, hash: &str) -> Option<(u64, Vec<String>)> {
    let args = [
        "blob",
        "--api",
        api,
        hash,
        "--timeout-ms",
        CLI_TIMEOUT_MS,
        "--json",
    ];
    let v: Value = serde_json::from_str(&ok(cli(bin(), &args).ok()?).ok()?).ok()?;
    let mut ids: Vec<String> = v["holders"]
        .as_array()?
        .iter()
        .filter(|h| h["chunks"] == h["total"])
        .filter_map(|h| h["peer_id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    Some((v["complete_copies"].as_u64()?, ids))
}

/// The nodes with a directory for `hash` in their blob store (copies, complete or not).
fn dirs_holding(nodes: &[NodeProc], hash: &str) -> Vec<String> {
    let mut out: Vec<String> = nodes
        .iter()
        .filter(|n| n.data_dir.join("blobs").join(hash).exists())
        .map(|n| n.peer_id.clone())
        .collect();
    out.sort();
    out
}

fn storage_offers(api: &str) -> Option<usize> {
    let args = [
        "offers",
        "--api",
        api,
        "--kind",
        "storage",
        "--timeout-ms",
        CLI_TIMEOUT_MS,
        "--json",
    ];
    let v: Value = serde_json::from_str(&ok(cli(bin(), &args).ok()?).ok()?).ok()?;
    Some(v["offers"].as_array()?.len())
}

#[test]
fn a_sync_bomb_a_chunk_flood_and_fake_offers_change_no_honest_blob_placement() -> Result<()> {
    blob_attack(false)
}

/// With twenty foreign manifests for an honest root, a non-holder still describes and serves
/// the honest blob: `GET /v1/blobs/{hash}/info` answers from a manifest that fits the index
/// verified against the root (it used to take the first manifest by zone, a foreign one
/// claiming 4 TiB, and `dpin get` then failed with "got 2097152 bytes, expected
/// 4398046511104").
#[test]
fn a_non_holder_serves_an_honest_blob_despite_many_foreign_manifests() -> Result<()> {
    blob_attack(true)
}

fn blob_attack(get_through_non_holder: bool) -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let fast = [
        "--no-probe",
        "--offer-refresh-ms",
        "500",
        "--repair-interval-ms",
        "200",
        "--scrub-interval-ms",
        "1000",
    ];
    let mut storage = fast.to_vec();
    storage.extend_from_slice(&["--offer-storage", "64M", "--price", "0.5"]);
    // Node 0 offers nothing; nodes 1-3 offer storage.
    let nodes = dpin_tests::cluster_with(bin(), dir.path(), &fast, 3, &storage)?;
    wait_connected(&nodes, BOUND)?;
    wait_until(BOUND, "3 storage offers everywhere", || {
        nodes
            .iter()
            .all(|n| storage_offers(&n.api) == Some(3))
            .then_some(())
    })?;
    let api0 = nodes[0].api.clone();

    // An honest 2 MiB blob with K = 2.
    let data: Vec<u8> = (0..2u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let file = dir.path().join("honest.bin");
    std::fs::write(&file, &data)?;
    let file_arg = file.to_str().unwrap_or_default();
    let put: Value = serde_json::from_str(&ok(cli(
        bin(),
        &["put", "--api", &api0, file_arg, "--replicas", "2", "--json"],
    )?)?)?;
    let hash = put["hash"].as_str().unwrap_or_default().to_owned();
    let (copies, before) = holders(&api0, &hash).ok_or_else(|| anyhow!("no blob info"))?;
    assert_eq!(copies, 2);
    assert_eq!(dirs_holding(&nodes, &hash), before);
    let root: [u8; 32] = hex::decode(&hash)?
        .try_into()
        .map_err(|_| anyhow!("bad hash"))?;

    // The attack, at a holder: sync bombs both ways, whole-store listings, 1 MiB chunks for
    // random roots, 150 fake offers and foreign manifests for the honest blob.
    let holder = nodes
        .iter()
        .find(|n| before.contains(&n.peer_id))
        .ok_or_else(|| anyhow!("no holder"))?;
    // Two attackers at once (two identities): one lies, one floods. The liar is paced by
    // wall-clock time, which a loaded machine (two such tests run in parallel on 2 cores)
    // stretches, so it goes on in 2.5 s rounds until it has sent at least 100 fake offers and
    // some foreign manifests, rather than the test asserting what one round achieved.
    let liar_round = || {
        spawn_attack(
            &holder.bootstrap_addr(),
            vec![
                stream(Kind::FakeOffers, 60.0),
                stream(Kind::ForeignManifests, 10.0),
            ],
            Duration::from_millis(2500),
            Some(root),
        )
    };
    let liar = liar_round()?;
    let flooder = spawn_attack(
        &holder.bootstrap_addr(),
        vec![
            stream(Kind::SyncBomb, 20.0),
            stream(Kind::WholeStoreSync, 50.0),
            stream(Kind::BlobFlood, 20.0),
        ],
        Duration::from_secs(3),
        None,
    )?;
    let mut lies = liar.join().map_err(|_| anyhow!("attacker panicked"))??;
    let floods = flooder.join().map_err(|_| anyhow!("attacker panicked"))??;
    let sent = |r: &AttackReport, kind: &str| r.sent.get(kind).copied().unwrap_or(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sent(&lies, "fake-offers") < 100 || sent(&lies, "foreign-manifests") == 0 {
        if std::time::Instant::now() > deadline {
            return Err(anyhow!(
                "the liar could not send its lies within 60 s: {lies:?}"
            ));
        }
        let more = liar_round()?
            .join()
            .map_err(|_| anyhow!("attacker panicked"))??;
        for (kind, n) in more.sent {
            *lies.sent.entry(kind).or_default() += n;
        }
    }
    eprintln!("liar: {lies:?}\nflooder: {floods:?}");
    assert!(floods.sent.get("blob-flood").copied().unwrap_or(0) > 0);
    // Malformed digests were refused and held against the attacker. Under load most of the
    // flooder's requests can fail before the holder reads them (its per-connection and byte
    // bounds, timeouts), so further rounds of sync bombs go out until one is judged.
    let offences = || metric(holder, "dpin_ingest_offences_total{path=\"sync_request\"}");
    while offences()? == 0 {
        if std::time::Instant::now() > deadline {
            return Err(anyhow!("no malformed digest was held against the attacker"));
        }
        spawn_attack(
            &holder.bootstrap_addr(),
            vec![stream(Kind::SyncBomb, 20.0)],
            Duration::from_secs(2),
            None,
        )?
        .join()
        .map_err(|_| anyhow!("attacker panicked"))??;
    }

    // Give repair many rounds (200 ms each) to act on the lies; it must not.
    std::thread::sleep(Duration::from_secs(3));
    for n in &nodes {
        assert_eq!(
            storage_offers(&n.api),
            Some(3),
            "fake offers listed at {}",
            n.peer_id
        );
    }
    assert_eq!(
        holders(&api0, &hash),
        Some((2, before.clone())),
        "copies or holders changed"
    );
    assert_eq!(
        dirs_holding(&nodes, &hash),
        before,
        "a node other than the holders stored part of the blob"
    );
    if !get_through_non_holder {
        return Ok(());
    }
    let out_file = dir.path().join("copy.bin");
    ok(cli(
        bin(),
        &[
            "get",
            "--api",
            &api0,
            &hash,
            "--out",
            out_file.to_str().unwrap_or_default(),
        ],
    )?)?;
    assert!(std::fs::read(&out_file)? == data, "bytes differ");
    Ok(())
}

/// Latencies of one phase: honest resolves over HTTP and DNS, paced at 50/s each.
#[derive(Debug, Default)]
struct Phase {
    http_ms: Vec<f64>,
    dns_ms: Vec<f64>,
    failures: u64,
}

impl Phase {
    fn pct(v: &[f64], p: f64) -> f64 {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s.get(((s.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    }

    fn line(&self, what: &str) -> String {
        format!(
            "{what}: http p50 {:.2} ms p99 {:.2} ms ({} resolves); dns p50 {:.2} ms p99 {:.2} ms ({} queries); {} failures",
            Self::pct(&self.http_ms, 0.5),
            Self::pct(&self.http_ms, 0.99),
            self.http_ms.len(),
            Self::pct(&self.dns_ms, 0.5),
            Self::pct(&self.dns_ms, 0.99),
            self.dns_ms.len(),
            self.failures
        )
    }
}

/// Resolves honest names at `node` over HTTP and DNS until `done` says stop.
fn measure(
    node: &NodeProc,
    honest: &[(String, u64)],
    mut done: impl FnMut() -> bool,
) -> Result<Phase> {
    let dns: std::net::SocketAddr = node
        .dns
        .as_deref()
        .ok_or_else(|| anyhow!("node has no DNS"))?
        .parse()?;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut phase = Phase::default();
    let mut buf = [0u8; 1500];
    let mut i = 0usize;
    while !done() {
        let tick = std::time::Instant::now();
        let (name, seq) = &honest[i % honest.len()];
        i += 1;
        let t = std::time::Instant::now();
        if node.resolved_seq(name) == Some(*seq) {
            phase.http_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        } else {
            phase.failures += 1;
        }
        let id = i as u16;
        let q = dpin_sim::dnsq::build_query(id, &format!("{name}.dpin."))?;
        let t = std::time::Instant::now();
        sock.send_to(&q, dns)?;
        match sock.recv(&mut buf) {
            Ok(n) => match dpin_sim::dnsq::parse_answer(id, &buf[..n]) {
                Ok(dpin_sim::dnsq::DnsAnswer::Addrs(a)) if !a.is_empty() => {
                    phase.dns_ms.push(t.elapsed().as_secs_f64() * 1000.0)
                }
                _ => phase.failures += 1,
            },
            Err(_) => phase.failures += 1,
        }
        std::thread::sleep(Duration::from_millis(20).saturating_sub(tick.elapsed()));
    }
    Ok(phase)
}

/// The flood target, measured side by side with an idle run on one 3-node cluster:
/// 10k invalid messages/s plus 1k valid junk records/s under fresh zones from one peer at
/// node 0; node 0's resolve latency over HTTP and DNS, its RSS growth, when the attacker was
/// disconnected, and honest records lost. A measurement, not a pass/fail timing test; run
/// with release binaries:
///
/// `cargo test --release -p dpin-tests --test hostile_peer flood_target -- --ignored --nocapture`
#[test]
#[ignore = "measurement (about 40 s); run with --release, see the doc comment"]
fn flood_target_measured_side_by_side_with_an_idle_run() -> Result<()> {
    let secs: u64 = std::env::var("DPIN_FLOOD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let dir = dpin_tests::test_dir()?;
    let nodes = cluster(bin(), dir.path(), 3, &["--no-probe", "--dns"])?;
    wait_connected(&nodes, BOUND)?;
    let key = ZoneKey::from_seed([0x43; 32]);
    let now = now_ms();
    let mut honest = Vec::new();
    for i in 0..20u8 {
        let rec = RecordBody {
            zone: key.zone(),
            label: format!("svc{i}"),
            seq: now + u64::from(i),
            expires_at_ms: now + 3_600_000,
            content: Content::Endpoints(vec![Endpoint {
                host: Host::V4([10, 0, 0, i + 1]),
                port: 443,
                transport: Transport::Tcp,
                weight: 1,
            }]),
        }
        .sign(&key)?;
        publish(&nodes[1].api, &rec)?;
        honest.push((rec.name(), rec.body.seq));
    }
    wait_until(BOUND, "the honest names everywhere", || {
        nodes
            .iter()
            .all(|n| {
                honest
                    .iter()
                    .all(|(name, seq)| n.resolved_seq(name) == Some(*seq))
            })
            .then_some(())
    })?;

    let rss0 = nodes[0].rss_kib().unwrap_or(0);
    let start = std::time::Instant::now();
    let idle = measure(&nodes[0], &honest, || {
        start.elapsed() >= Duration::from_secs(secs)
    })?;
    let rss_idle = nodes[0].rss_kib().unwrap_or(0);

    let attacker = spawn_attack(
        &nodes[0].bootstrap_addr(),
        vec![
            stream(Kind::InvalidSignature, 10_000.0),
            stream(Kind::JunkZones, 1_000.0),
        ],
        Duration::from_secs(secs),
        None,
    )?;
    let flood = measure(&nodes[0], &honest, || attacker.is_finished())?;
    let report = attacker
        .join()
        .map_err(|_| anyhow!("attacker panicked"))??;
    let rss_flood = nodes[0].rss_kib().unwrap_or(0);
    let lost = nodes
        .iter()
        .map(|n| {
            honest
                .iter()
                .filter(|(name, seq)| n.resolved_seq(name) != Some(*seq))
                .count()
        })
        .sum::<usize>();
    println!("{}", idle.line("idle "));
    println!("{}", flood.line("flood"));
    println!(
        "node 0 RSS: start {rss0} KiB, after idle {rss_idle} KiB (+{}), after flood {rss_flood} KiB (+{} over idle)",
        rss_idle as i64 - rss0 as i64,
        rss_flood as i64 - rss_idle as i64
    );
    println!(
        "attacker: sent {:?}, not sent {}, disconnected after {:?} ms; node 0 bans: ingest {}, graylisted {}; junk accepted by node 0: {}; honest records lost (3 nodes x 20): {lost}",
        report.sent,
        report.not_sent,
        report.disconnected_after_ms,
        metric(&nodes[0], "dpin_peer_bans_total")?,
        metric(&nodes[0], "dpin_net_bans_total{reason=\"graylisted\"}")?,
        metric(&nodes[0], "dpin_gossip_accepted_total")?,
    );
    assert_eq!(lost, 0, "honest records lost");
    Ok(())
}

/// Honest names published through `api` (one zone, `n` names), with their seqs.
fn publish_honest(api: &str, seed: u8, n: u8) -> Result<Vec<(String, u64)>> {
    let key = ZoneKey::from_seed([seed; 32]);
    let now = now_ms();
    let mut honest = Vec::new();
    for i in 0..n {
        let rec = RecordBody {
            zone: key.zone(),
            label: format!("svc{i}"),
            seq: now + u64::from(i),
            expires_at_ms: now + 3_600_000,
            content: Content::Endpoints(vec![Endpoint {
                host: Host::V4([10, 0, 1, i]),
                port: 443,
                transport: Transport::Tcp,
                weight: 1,
            }]),
        }
        .sign(&key)?;
        publish(api, &rec)?;
        honest.push((rec.name(), rec.body.seq));
    }
    Ok(honest)
}

/// One HTTP/1.1 GET from the source address `from` (any of 127.0.0.0/8: each is its own client
/// to the node's per-client limits): the status, the `Retry-After` header and the JSON body.
fn get_from(from: &str, api: &str, path: &str) -> Result<(u16, Option<String>, Value)> {
    use std::io::{Read, Write};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let std_stream = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(format!("{from}:0").parse()?)?;
        let s = tokio::time::timeout(Duration::from_secs(5), sock.connect(api.parse()?))
            .await
            .map_err(|_| anyhow!("connect to {api} timed out"))??;
        anyhow::Ok(s.into_std()?)
    })?;
    let mut s = std_stream;
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header end"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("no status"))?
        .parse()?;
    let retry_after = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("retry-after")
            .then(|| v.trim().to_owned())
    });
    Ok((
        status,
        retry_after,
        serde_json::from_str(body.trim()).unwrap_or(Value::Null),
    ))
}

/// An HTTP client flooding the API is answered 429 (`rate_limited`, with `Retry-After`) once
/// past its rate, counted on `/metrics` by reason, while another client keeps getting its
/// answers. The node limits loopback clients here (`DPIN_API_LIMIT_LOOPBACK=1`) at 2 requests
/// a second with bursts of 10, so the bound is far from anything the test's pace decides: the
/// flooder's 300 requests would need over two minutes to all be admitted.
#[test]
fn an_http_flood_from_one_client_gets_429_while_another_client_is_served() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let node = NodeProc::start_with_env(
        bin(),
        &dir.path().join("n0"),
        &[],
        &["--no-probe"],
        vec![
            ("DPIN_API_RATE".into(), "2/10".into()),
            ("DPIN_API_LIMIT_LOOPBACK".into(), "1".into()),
        ],
    )?;
    // The honest client at 127.0.0.3: one publish (4 tokens) and a few resolves.
    let honest = {
        let key = ZoneKey::from_seed([0x44; 32]);
        let rec = RecordBody {
            zone: key.zone(),
            label: "web".into(),
            seq: now_ms(),
            expires_at_ms: now_ms() + 3_600_000,
            content: Content::Endpoints(vec![Endpoint {
                host: Host::V4([10, 0, 2, 1]),
                port: 443,
                transport: Transport::Tcp,
                weight: 1,
            }]),
        }
        .sign(&key)?;
        // Published from 127.0.0.1 (the harness's own client), one request.
        publish(&node.api, &rec)?;
        rec.name()
    };
    let path = format!("/v1/resolve/{honest}");
    let (mut refused, mut answered) = (0u32, 0u32);
    let mut honest_statuses = Vec::new();
    for i in 0..300u32 {
        let (status, retry_after, body) = get_from("127.0.0.2", &node.api, &path)?;
        match status {
            200 => answered += 1,
            429 => {
                refused += 1;
                assert_eq!(body["error"], "rate_limited", "429 body: {body}");
                let secs: u64 = retry_after
                    .as_deref()
                    .ok_or_else(|| anyhow!("429 without Retry-After"))?
                    .parse()?;
                assert!(secs >= 1, "Retry-After {secs}");
            }
            other => return Err(anyhow!("flood request answered {other}: {body}")),
        }
        // Every 50th flood request, the other client asks too.
        if i % 50 == 0 {
            honest_statuses.push(get_from("127.0.0.3", &node.api, &path)?.0);
        }
    }
    eprintln!("flooder: {answered} answered, {refused} refused; other client: {honest_statuses:?}");
    assert!(
        honest_statuses.iter().all(|s| *s == 200),
        "the other client was refused: {honest_statuses:?}"
    );
    assert!(answered >= 10, "the flooder's burst was not served");
    assert!(
        refused >= 200,
        "only {refused} of 300 flood requests refused"
    );
    assert_eq!(
        metric(&node, "dpin_http_refused_total{reason=\"rate\"}")?,
        u64::from(refused)
    );
    assert_eq!(
        metric(&node, "dpin_http_refused_total{reason=\"concurrency\"}")?,
        0
    );
    Ok(())
}

/// An attacker that takes a fresh peer id every few messages (each a new keypair, a new
/// connection and handshake) and sends invalid signatures and junk records under fresh zones
/// with each: the honest node keeps answering every resolve, keeps every honest record, bans
/// what it can pin on an id, and its state stays bounded: bans within the network layer's
/// bound ([`dpin_node::net::MAX_BANS`]) and memory growth below the 50 MB. (The
/// ingest budget's peer table is bounded by `BudgetConfig::max_peers`, tested in
/// `protocol::ingest`; the node does not expose its size.)
#[test]
fn rotating_peer_ids_buy_no_unbounded_state_and_the_honest_node_keeps_serving() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let nodes = cluster(bin(), dir.path(), 2, &["--no-probe"])?;
    wait_connected(&nodes, BOUND)?;
    let honest = publish_honest(&nodes[1].api, 0x45, 10)?;
    wait_until(BOUND, "the honest names on node 0", || {
        honest
            .iter()
            .all(|(name, seq)| nodes[0].resolved_seq(name) == Some(*seq))
            .then_some(())
    })?;
    let rss_before = nodes[0].rss_kib().unwrap_or(0);
    let config = AttackConfig {
        target: nodes[0].bootstrap_addr().parse()?,
        streams: vec![
            stream(Kind::InvalidSignature, 1000.0),
            stream(Kind::JunkZones, 100.0),
        ],
        default_rate_per_s: 100.0,
        duration: Duration::from_secs(6),
        rotate_every: Some(25),
        blob_root: None,
        seed: 11,
    };
    let attacker = spawn_config(config);
    let (report, resolves) = resolve_during(&nodes[0], &honest, attacker, "the rotating flood")?;
    let rss_after = nodes[0].rss_kib().unwrap_or(0);
    let banned_now = metric(&nodes[0], "dpin_net_banned_peers")?;
    let offences = metric(&nodes[0], "dpin_ingest_offences_total{path=\"gossip\"}")?;
    let over_budget = metric(
        &nodes[0],
        "dpin_ingest_dropped_total{path=\"gossip\",reason=\"over_budget\"}",
    )?;
    eprintln!(
        "attacker: {} identities, sent {:?}; node 0: {resolves} honest resolves, RSS {rss_before} -> {rss_after} KiB, banned now {banned_now}, gossip offences {offences}, over budget {over_budget}",
        report.identities, report.sent
    );
    assert!(
        report.identities >= 5,
        "the attacker rotated only {} times",
        report.identities
    );
    // The junk was judged (invalid signatures held against their senders) or refused by the
    // budget before it was looked at; either way it was counted.
    assert!(offences + over_budget > 0, "no junk was judged or refused");
    assert!(banned_now <= dpin_node::net::MAX_BANS as u64);
    let growth_kib = rss_after.saturating_sub(rss_before);
    assert!(
        growth_kib < 50 * 1024,
        "node 0 grew by {growth_kib} KiB under rotating ids"
    );
    for n in &nodes {
        for (name, seq) in &honest {
            assert_eq!(n.resolved_seq(name), Some(*seq), "{name} lost");
        }
    }
    Ok(())
}
