//! DNS front-end end to end: real `dpin node --dns` processes on loopback, names published with
//! the real CLI, and queries made by real DNS client libraries (hickory-client for exact
//! UDP-vs-TCP control, hickory-resolver as a standard stub resolver) plus a raw UDP socket for
//! garbage. Waits poll against deadlines; nothing asserts after a fixed sleep.
//!
//! Endpoint addresses inside published records are data that DNS hands back; no test ever
//! connects to them. The IPv6 ones come from the documentation prefix 2001:db8::/32.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dpin_tests::{cluster, keygen, ok, wait_connected, wait_until, NodeProc};
use hickory_client::client::{Client, ClientHandle};
use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use hickory_proto::runtime::TokioRuntimeProvider;
use hickory_proto::tcp::TcpClientStream;
use hickory_proto::udp::UdpClientStream;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::Resolver;

const BIN: &str = env!("CARGO_BIN_EXE_dpin-e2e");
/// Deadline for a published record to reach a peer and show up in its DNS answers.
const SPREAD: Duration = Duration::from_secs(20);

fn bin() -> &'static Path {
    Path::new(BIN)
}

fn publish(key: &Path, api: &str, label: &str, extra: &[&str]) -> Result<()> {
    ok(dpin_tests::publish(bin(), key, api, label, extra)?).map(drop)
}

fn dns_addr(node: &NodeProc) -> Result<SocketAddr> {
    let addr: SocketAddr = node
        .dns
        .as_deref()
        .ok_or_else(|| anyhow!("node printed no dns address"))?
        .parse()?;
    assert!(addr.ip().is_loopback(), "tests only talk to loopback");
    Ok(addr)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Via {
    Udp,
    Tcp,
}

/// One query with hickory-client over exactly the given transport (no fallback).
fn query(addr: SocketAddr, name: &str, qtype: RecordType, via: Via) -> Result<Message> {
    runtime()?.block_on(async {
        let provider = TokioRuntimeProvider::new();
        let timeout = Duration::from_secs(3);
        let client = match via {
            Via::Udp => {
                let conn = UdpClientStream::builder(addr, provider)
                    .with_timeout(Some(timeout))
                    .build();
                let (client, bg) = Client::connect(conn).await?;
                tokio::spawn(bg);
                client
            }
            Via::Tcp => {
                let (stream, sender) = TcpClientStream::new(addr, None, Some(timeout), provider);
                let (client, bg) = Client::new(stream, sender, None).await?;
                tokio::spawn(bg);
                client
            }
        };
        client_query(client, name, qtype).await
    })
}

async fn client_query(mut client: Client, name: &str, qtype: RecordType) -> Result<Message> {
    let resp = client
        .query(Name::from_str(name)?, DNSClass::IN, qtype)
        .await?;
    Ok(resp.into_message())
}

fn ips(m: &Message) -> BTreeSet<IpAddr> {
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn ip_set(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter()
        .map(|s| s.parse().expect("ip literal"))
        .collect()
}

fn dns_node(dir: &Path, extra: &[&str]) -> Result<NodeProc> {
    let mut args = vec!["--dns", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    NodeProc::start(bin(), &dir.join("n0"), &[], &args)
}

/// Polls until `name` answers `want` (A or AAAA) at `addr` over UDP.
fn wait_ips(addr: SocketAddr, name: &str, qtype: RecordType, want: &[&str]) -> Result<()> {
    let want = ip_set(want);
    wait_until(SPREAD, &format!("{name} {qtype} = {want:?}"), || {
        query(addr, name, qtype, Via::Udp)
            .ok()
            .filter(|m| ips(m) == want)
            .map(|_| ())
    })
}

#[test]
fn a_aaaa_srv_nxdomain_refused_aliases_and_case_over_udp_and_tcp() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    let node = dns_node(dir.path(), &["--alias", &format!("shop={zone}")])?;
    let dns = dns_addr(&node)?;
    publish(
        &key,
        &node.api,
        "web",
        &["127.0.0.1:8080", "127.0.0.2:8081/udp@5", "[::1]:9090"],
    )?;
    let name = format!("web.{zone}.dpin.");
    wait_ips(dns, &name, RecordType::A, &["127.0.0.1", "127.0.0.2"])?;

    for via in [Via::Udp, Via::Tcp] {
        let m = query(dns, &name, RecordType::A, via)?;
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.authoritative(), "AA bit over {via:?}");
        assert_eq!(ips(&m), ip_set(&["127.0.0.1", "127.0.0.2"]), "{via:?}");
        // Record lifetime is 24 h, so the TTL is the cap.
        assert!(m.answers().iter().all(|r| r.ttl() == 60), "{via:?}");

        let m = query(dns, &name, RecordType::AAAA, via)?;
        assert_eq!(ips(&m), ip_set(&["::1"]), "{via:?}");
    }

    // SRV: one per endpoint with port and weight; literal targets resolve to their address.
    let m = query(dns, &name, RecordType::SRV, Via::Udp)?;
    let mut srv: Vec<(u16, u16, u16, String)> = m
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::SRV(s) => Some((s.priority(), s.weight(), s.port(), s.target().to_ascii())),
            _ => None,
        })
        .collect();
    srv.sort();
    // Loopback endpoints are not probed by default, so their health is unknown: priority 5.
    assert_eq!(
        srv,
        vec![
            (5, 1, 8080, "7f000001.addr.dpin.".to_owned()),
            (5, 1, 9090, format!("{}1.addr.dpin.", "0".repeat(31))),
            (5, 5, 8081, "7f000002.addr.dpin.".to_owned()),
        ]
    );
    assert_eq!(m.additionals().len(), 3, "target addresses as glue");
    let m = query(dns, "7f000002.addr.dpin.", RecordType::A, Via::Udp)?;
    assert_eq!(ips(&m), ip_set(&["127.0.0.2"]));
    let m = query(
        dns,
        &format!("_udp.web.{zone}.dpin."),
        RecordType::SRV,
        Via::Udp,
    )?;
    assert_eq!(m.answers().len(), 1, "transport-scoped SRV");

    // Case-insensitive, and through the alias.
    let shouted = format!("WEB.{}.DPIN.", zone.to_ascii_uppercase());
    for n in [shouted.as_str(), "web.shop.dpin.", "Web.Shop.Dpin."] {
        let m = query(dns, n, RecordType::A, Via::Udp)?;
        assert_eq!(ips(&m), ip_set(&["127.0.0.1", "127.0.0.2"]), "{n}");
    }

    // NXDOMAIN for unknown names (with the SOA for negative caching), NODATA for other types.
    for via in [Via::Udp, Via::Tcp] {
        let m = query(dns, &format!("nope.{zone}.dpin."), RecordType::A, via)?;
        assert_eq!(m.response_code(), ResponseCode::NXDomain, "{via:?}");
        assert!(m.authoritative());
        assert_eq!(m.name_servers().len(), 1);
    }
    let m = query(dns, &name, RecordType::MX, Via::Udp)?;
    assert_eq!(
        (m.response_code(), m.answers().len()),
        (ResponseCode::NoError, 0)
    );

    // REFUSED outside dpin.: this is not a recursive resolver.
    for outside in ["example.com.", "localhost.", "dpin.example.org."] {
        let m = query(dns, outside, RecordType::A, Via::Udp)?;
        assert_eq!(m.response_code(), ResponseCode::Refused, "{outside}");
        assert!(!m.authoritative());
    }

    // Tombstoned → NXDOMAIN.
    // Deleting names the seq it deletes.
    let held = node.get(&format!("/v1/seq/{name}"))?.1["seq"].to_string();
    publish(&key, &node.api, "web", &["--tombstone", "--if-seq", &held])?;
    wait_until(SPREAD, "tombstoned name to answer NXDOMAIN", || {
        query(dns, &name, RecordType::A, Via::Udp)
            .ok()
            .filter(|m| m.response_code() == ResponseCode::NXDomain)
    })?;
    Ok(())
}

#[test]
fn ttl_follows_expiry_and_expired_names_answer_nxdomain() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    let node = dns_node(dir.path(), &[])?;
    let dns = dns_addr(&node)?;
    let published = Instant::now();
    publish(&key, &node.api, "brief", &["127.0.0.1:1", "--ttl", "4s"])?;
    let name = format!("brief.{zone}.dpin.");
    let m = query(dns, &name, RecordType::A, Via::Udp)?;
    if published.elapsed() < Duration::from_secs(3) {
        let ttl = m
            .answers()
            .first()
            .map(|r| r.ttl())
            .ok_or_else(|| anyhow!("no answer"))?;
        assert!((1..=4).contains(&ttl), "TTL {ttl} follows the 4 s expiry");
    }
    wait_until(
        Duration::from_secs(15),
        "expired name to answer NXDOMAIN",
        || {
            query(dns, &name, RecordType::A, Via::Udp)
                .ok()
                .filter(|m| m.response_code() == ResponseCode::NXDomain)
        },
    )?;
    assert!(
        published.elapsed() >= Duration::from_secs(3),
        "not before it expired"
    );
    Ok(())
}

#[test]
fn large_endpoint_set_is_truncated_on_udp_and_complete_over_tcp() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    let node = dns_node(dir.path(), &[])?;
    let dns = dns_addr(&node)?;
    let eps: Vec<String> = (1..=60).map(|i| format!("[2001:db8::{i:x}]:443")).collect();
    let mut args: Vec<&str> = eps.iter().map(String::as_str).collect();
    args.push("--ttl");
    args.push("1h");
    publish(&key, &node.api, "big", &args)?;
    let name = format!("big.{zone}.dpin.");
    let all: BTreeSet<IpAddr> = (1..=60)
        .map(|i| format!("2001:db8::{i:x}").parse().expect("ip"))
        .collect();

    let m = wait_until(SPREAD, "big name answered over TCP", || {
        query(dns, &name, RecordType::AAAA, Via::Tcp)
            .ok()
            .filter(|m| !m.answers().is_empty())
    })?;
    assert!(!m.truncated());
    assert_eq!(ips(&m), all, "TCP carries all 60");

    let m = query(dns, &name, RecordType::AAAA, Via::Udp)?;
    assert!(m.truncated(), "TC over UDP");
    let n = m.answers().len();
    assert!(n > 0 && n < 60, "partial UDP answer ({n}), never empty");
    assert!(m.to_vec()?.len() <= 1232, "EDNS(0) limit");

    // A standard stub resolver follows TC to TCP by itself.
    let got = runtime()?.block_on(async {
        let group = NameServerConfigGroup::from_ips_clear(&[dns.ip()], dns.port(), true);
        let config = ResolverConfig::from_parts(None, vec![], group);
        let mut opts = ResolverOpts::default();
        opts.cache_size = 0;
        opts.timeout = Duration::from_secs(3);
        let resolver = Resolver::builder_with_config(config, TokioConnectionProvider::default())
            .with_options(opts)
            .build();
        let lookup = resolver.ipv6_lookup(name.as_str()).await?;
        Ok::<_, anyhow::Error>(
            lookup
                .iter()
                .map(|a| IpAddr::V6(a.0))
                .collect::<BTreeSet<_>>(),
        )
    })?;
    assert_eq!(got, all, "resolver fell back to TCP and got every address");
    Ok(())
}

#[test]
fn name_updated_on_another_peer_shows_up_in_this_peers_dns() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let nodes = cluster(bin(), dir.path(), 2, &["--dns", "127.0.0.1:0"])?;
    wait_connected(&nodes, SPREAD)?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    let name = format!("api.{zone}.dpin.");
    let here = dns_addr(&nodes[1])?;

    let m = query(here, &name, RecordType::A, Via::Udp)?;
    assert_eq!(
        m.response_code(),
        ResponseCode::NXDomain,
        "not published yet"
    );

    publish(&key, &nodes[0].api, "api", &["127.0.0.1:7000"])?;
    wait_ips(here, &name, RecordType::A, &["127.0.0.1"])?;
    publish(
        &key,
        &nodes[0].api,
        "api",
        &["127.0.0.9:7000", "[::1]:7000"],
    )?;
    wait_ips(here, &name, RecordType::A, &["127.0.0.9"])?;
    let m = query(here, &name, RecordType::AAAA, Via::Tcp)?;
    assert_eq!(ips(&m), ip_set(&["::1"]));
    Ok(())
}

/// A minimal query packet built by hand (no EDNS).
fn raw_query(id: u16, name: &str, qtype: RecordType) -> Result<Vec<u8>> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .add_query(Query::query(Name::from_str(name)?, qtype));
    Ok(m.to_vec()?)
}

#[test]
fn garbage_floods_and_idle_tcp_connections_do_not_stop_the_server() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    let node = dns_node(dir.path(), &[])?;
    let dns = dns_addr(&node)?;
    publish(&key, &node.api, "web", &["127.0.0.1:80"])?;
    let name = format!("web.{zone}.dpin.");
    wait_ips(dns, &name, RecordType::A, &["127.0.0.1"])?;

    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let valid = raw_query(7, &name, RecordType::A)?;
    let mut header_only = valid.clone();
    header_only.truncate(12);
    let mut cut_name = valid.clone();
    cut_name.truncate(20);
    let mut response = valid.clone();
    response[2] |= 0x80; // QR: a response, must never be answered (no reflection)
                         // Compression pointer to itself: a classic decoder loop.
    let mut pointer_loop = valid[..12].to_vec();
    pointer_loop.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut random = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed.to_le_bytes()[0]
            })
            .collect()
    };
    let mut garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0xff; 11],
        header_only,
        cut_name.clone(),
        response,
        pointer_loop,
        vec![0xff; 9000], // oversized
    ];
    for len in [1, 5, 12, 13, 40, 512, 1500, 4096] {
        garbage.push(random(len));
    }
    for g in &garbage {
        sock.send_to(g, dns)?;
    }
    // A flood of 20k packets, half garbage, sent without waiting.
    for i in 0..20_000u32 {
        let p = if i % 2 == 0 {
            &valid
        } else {
            &garbage[(i as usize / 2) % garbage.len()]
        };
        // The kernel may drop some under load; that is the point of a flood.
        let _ = sock.send_to(p, dns);
    }

    // Still answers, over UDP and TCP.
    wait_until(SPREAD, "an answer after the garbage", || {
        query(dns, &name, RecordType::A, Via::Udp)
            .ok()
            .filter(|m| ips(m) == ip_set(&["127.0.0.1"]))
    })?;
    let m = query(dns, &name, RecordType::A, Via::Tcp)?;
    assert_eq!(ips(&m), ip_set(&["127.0.0.1"]));

    // A question cut mid-name gets FORMERR with the query's id, not silence.
    let fresh = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    fresh.set_read_timeout(Some(Duration::from_secs(3)))?;
    fresh.send_to(&cut_name, dns)?;
    let mut buf = [0u8; 2048];
    let (n, _) = fresh.recv_from(&mut buf)?;
    let m = Message::from_vec(buf.get(..n).context("reply")?)?;
    assert_eq!((m.id(), m.response_code()), (7, ResponseCode::FormErr));

    // TCP garbage: a length prefix promising more than is sent, then silence; and junk.
    let mut hang = TcpStream::connect(dns)?;
    hang.write_all(&[0xff, 0xff, 1, 2, 3])?;
    let mut junk = TcpStream::connect(dns)?;
    junk.write_all(&[0, 3, 1, 2, 3])?;
    junk.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut b = [0u8; 16];
    assert!(
        matches!(junk.read(&mut b), Ok(0) | Err(_)),
        "a connection that sends garbage is closed"
    );

    // Connection limit: idle connections beyond 256 are closed at once; the server survives.
    let mut idle = Vec::new();
    for _ in 0..270 {
        idle.push(TcpStream::connect(dns)?);
    }
    let mut closed = 0;
    for s in idle.iter_mut().rev().take(10) {
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        if matches!(s.read(&mut b), Ok(0)) {
            closed += 1;
        }
    }
    assert!(closed > 0, "connections over the limit are closed");
    let m = query(dns, &name, RecordType::A, Via::Udp)?;
    assert_eq!(
        ips(&m),
        ip_set(&["127.0.0.1"]),
        "UDP unaffected by TCP exhaustion"
    );
    drop(idle);
    drop(hang);
    wait_until(SPREAD, "TCP answers again once connections close", || {
        query(dns, &name, RecordType::A, Via::Tcp)
            .ok()
            .filter(|m| ips(m) == ip_set(&["127.0.0.1"]))
    })?;
    Ok(())
}

/// Endpoint health reaches DNS: only the endpoint with a listener is answered, the answer
/// follows a moved listener, and with no listener at all every endpoint comes back (fail open,
/// never an empty answer). Prints how long the move took to show up (two probe intervals is
/// the target).
#[test]
fn dns_answers_follow_endpoint_health_and_fail_open() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let node = dns_node(
        dir.path(),
        &[
            "--probe-interval-ms",
            "300",
            "--probe-timeout-ms",
            "200",
            // Loopback endpoints are probed only when the operator allows it.
            "--probe-allow",
            "127.0.0.0/8",
        ],
    )?;
    let addr = dns_addr(&node)?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let eps: Vec<String> = (1..=3).map(|i| format!("127.0.0.{i}:{port}")).collect();
    let listener = std::net::TcpListener::bind(("127.0.0.2", port))?;
    let mut args: Vec<&str> = eps.iter().map(String::as_str).collect();
    args.push("--ttl");
    args.push("1h");
    publish(&key, &node.api, "svc", &args)?;
    let name = format!("svc.{zone}.dpin.");
    wait_ips(addr, &name, RecordType::A, &["127.0.0.2"])?;
    drop(listener);
    let moved = std::net::TcpListener::bind(("127.0.0.3", port))?;
    let t = Instant::now();
    wait_ips(addr, &name, RecordType::A, &["127.0.0.3"])?;
    eprintln!(
        "endpoint move visible in DNS after {:?} (probe interval 300 ms)",
        t.elapsed()
    );
    drop(moved);
    wait_ips(
        addr,
        &name,
        RecordType::A,
        &["127.0.0.1", "127.0.0.2", "127.0.0.3"],
    )?;
    Ok(())
}

/// Queries sent from `src` in one burst: (full answers, truncated answers) received back.
fn udp_burst(src: &str, dns: SocketAddr, name: &str, n: u16) -> Result<(usize, usize)> {
    let sock = UdpSocket::bind((src, 0))?;
    for id in 0..n {
        let mut m = Message::new();
        m.set_id(id).set_recursion_desired(false);
        m.add_query(Query::query(Name::from_str(name)?, RecordType::A));
        sock.send_to(&m.to_vec()?, dns)?;
    }
    // Collect until the node has been quiet for a while (the answers are already queued).
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let (mut full, mut truncated) = (0, 0);
    let mut buf = [0u8; 2048];
    while let Ok(len) = sock.recv(&mut buf) {
        let m = Message::from_vec(&buf[..len])?;
        if m.truncated() && m.answers().is_empty() {
            truncated += 1;
        } else {
            full += 1;
        }
    }
    Ok((full, truncated))
}

/// A counter from `/metrics`.
fn dns_metric(node: &NodeProc, series: &str) -> Result<u64> {
    dpin_tests::metric(&node.api, series)?
        .map(|v| v as u64)
        .ok_or_else(|| anyhow!("{series} missing from /metrics"))
}

/// Response rate limiting: a burst from one source prefix gets at most the rate's worth of full
/// answers, the rest dropped or slipped as empty TC answers (counted); a source in another
/// prefix is answered in full meanwhile; with RRL off (`--dns-rrl-rate 0`) the burst is
/// answered in full. 127.0.0.1 itself is exempt (see the README), so the bursts come from
/// other loopback addresses.
#[test]
fn a_udp_burst_from_one_prefix_is_rate_limited_and_other_prefixes_are_not() -> Result<()> {
    const BURST: u16 = 200;
    let dir = dpin_tests::test_dir()?;
    let node = dns_node(dir.path(), &["--dns-rrl-rate", "20", "--dns-rrl-slip", "2"])?;
    let addr = dns_addr(&node)?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    publish(&key, &node.api, "svc", &["127.0.0.9:80", "--ttl", "1h"])?;
    let name = format!("svc.{zone}.dpin.");
    wait_ips(addr, &name, RecordType::A, &["127.0.0.9"])?;

    let (full, truncated) = udp_burst("127.0.1.1", addr, &name, BURST)?;
    eprintln!("RRL on (20/s, slip 2): {BURST} queries -> {full} full, {truncated} TC answers");
    assert!(full < usize::from(BURST) / 2, "{full} full answers");
    assert!(truncated > 0, "slip sends TC answers");
    assert!(dns_metric(&node, "dpin_dns_rrl_dropped_total")? > 0);
    assert!(dns_metric(&node, "dpin_dns_rrl_slipped_total")? > 0);
    // Another /24 is not affected by the first one's limit.
    let (other_full, other_tc) = udp_burst("127.0.2.1", addr, &name, 1)?;
    assert_eq!((other_full, other_tc), (1, 0));

    // The same burst with RRL off: every query that arrives is answered in full.
    let off = NodeProc::start(
        bin(),
        &dir.path().join("off"),
        &[],
        &["--dns", "127.0.0.1:0", "--dns-rrl-rate", "0"],
    )?;
    let off_addr = dns_addr(&off)?;
    publish(&key, &off.api, "svc", &["127.0.0.9:80", "--ttl", "1h"])?;
    wait_ips(off_addr, &name, RecordType::A, &["127.0.0.9"])?;
    let (full_off, tc_off) = udp_burst("127.0.1.1", off_addr, &name, BURST)?;
    eprintln!("RRL off: {BURST} queries -> {full_off} full, {tc_off} TC answers");
    assert_eq!(tc_off, 0);
    assert_eq!(dns_metric(&off, "dpin_dns_rrl_dropped_total")?, 0);
    Ok(())
}

/// Opens `per_addr` TCP connections to `dns` from each of `addrs` loopback source addresses
/// (`127.0.{third}.1..`), each sending one byte of a length prefix and then nothing: slow
/// clients holding connections. The connections stay open while the returned value lives.
fn hold_slow_tcp(
    rt: &tokio::runtime::Runtime,
    dns: SocketAddr,
    third: u8,
    addrs: u8,
    per_addr: usize,
) -> Result<Vec<tokio::net::TcpStream>> {
    rt.block_on(async {
        let mut held = Vec::new();
        for a in 1..=addrs {
            for _ in 0..per_addr {
                let s = tokio::net::TcpSocket::new_v4()?;
                s.bind(SocketAddr::from(([127, 0, third, a], 0)))?;
                let c = s.connect(dns).await?;
                let _ = c.try_write(&[0]);
                held.push(c);
            }
        }
        Ok(held)
    })
}

/// Slow TCP clients from many addresses (8 connections each, the per-address cap, from 40
/// addresses: more than the 256 in total) cannot lock out the TCP fallback that large and
/// slipped answers need: at the cap, the connection that has waited longest for its query is
/// closed to admit the newcomer, and that is counted.
#[test]
fn slow_tcp_connections_from_many_addresses_are_evicted_for_new_clients() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    let node = dns_node(dir.path(), &[])?;
    let dns = dns_addr(&node)?;
    publish(&key, &node.api, "web", &["127.0.0.1:80"])?;
    let name = format!("web.{zone}.dpin.");
    wait_ips(dns, &name, RecordType::A, &["127.0.0.1"])?;
    let rt = runtime()?;
    let held = hold_slow_tcp(&rt, dns, 4, 40, dpin_node::dns::MAX_TCP_CONNECTIONS_PER_IP)?;
    // Let them become eligible: eviction spares connections younger than TCP_EVICT_AFTER.
    std::thread::sleep(dpin_node::dns::TCP_EVICT_AFTER + Duration::from_millis(200));
    let m = query(dns, &name, RecordType::A, Via::Tcp)?;
    assert_eq!(
        ips(&m),
        ip_set(&["127.0.0.1"]),
        "answered over TCP at the cap"
    );
    assert!(dns_metric(&node, "dpin_dns_tcp_evicted_total")? >= 1);
    drop(held);
    Ok(())
}

/// Measurement (not run in CI): an honest client's DNS latency, over TCP and UDP, while 2,000
/// slow TCP connections (8 from each of 250 addresses) are held open, with eviction on and
/// off (`DPIN_DNS_TCP_EVICT=0`), side by side. Run with
/// `cargo test -p dpin-tests --test e2e dns::measure_dns_under_slow_tcp -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; prints figures"]
fn measure_dns_under_slow_tcp_connections() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    let name = format!("web.{zone}.dpin.");
    for (label, env) in [
        ("eviction on", vec![]),
        (
            "eviction off",
            vec![("DPIN_DNS_TCP_EVICT".to_owned(), "0".to_owned())],
        ),
    ] {
        let node = NodeProc::start_with_env(
            bin(),
            &dir.path().join(label.replace(' ', "-")),
            &[],
            &["--dns", "127.0.0.1:0", "--no-probe"],
            env,
        )?;
        let dns = dns_addr(&node)?;
        publish(&key, &node.api, "web", &["127.0.0.1:80"])?;
        wait_ips(dns, &name, RecordType::A, &["127.0.0.1"])?;
        let rt = runtime()?;
        let mut held = Vec::new();
        for third in 10..15u8 {
            held.extend(hold_slow_tcp(&rt, dns, third, 50, 8)?);
        }
        std::thread::sleep(dpin_node::dns::TCP_EVICT_AFTER + Duration::from_millis(200));
        for via in [Via::Tcp, Via::Udp] {
            let mut lat = Vec::new();
            let mut answered = 0;
            for _ in 0..200 {
                let t = Instant::now();
                if query(dns, &name, RecordType::A, via).is_ok_and(|m| !m.answers().is_empty()) {
                    answered += 1;
                    lat.push(t.elapsed());
                }
            }
            lat.sort();
            let pct = |p: usize| lat.get(lat.len() * p / 100).copied();
            eprintln!(
                "{label}, {} slow TCP connections attempted, honest {via:?}: {answered}/200 answered, p50 {:?}, p99 {:?}",
                held.len(),
                pct(50),
                pct(99)
            );
        }
        drop(held);
    }
    Ok(())
}

/// Bytes sent and received by one source sending `qps` queries a second for `secs` seconds.
fn paced_flood(
    src: &str,
    dns: SocketAddr,
    query: &[u8],
    qps: u32,
    secs: u32,
) -> Result<(u64, u64, u64)> {
    let sock = UdpSocket::bind((src, 0))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let rx = sock.try_clone()?;
    let reader = std::thread::spawn(move || {
        let (mut bytes, mut answers) = (0u64, 0u64);
        let mut buf = [0u8; 4096];
        let mut quiet = 0;
        while quiet < 5 {
            match rx.recv(&mut buf) {
                Ok(n) => {
                    bytes += n as u64;
                    answers += 1;
                    quiet = 0;
                }
                Err(_) => quiet += 1,
            }
        }
        (bytes, answers)
    });
    let start = Instant::now();
    let total = qps * secs;
    let mut sent = 0u64;
    for i in 0..total {
        let due = start + Duration::from_secs_f64(f64::from(i) / f64::from(qps));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        sock.send_to(query, dns)?;
        sent += query.len() as u64;
    }
    let (received, answers) = reader.join().map_err(|_| anyhow!("reader panicked"))?;
    Ok((sent, received, answers))
}

/// Measurement (not run in CI): amplification of a 64-endpoint name's `SRV` answer to one
/// source sending 1,000 queries a second for 5 s, with RRL on (defaults: 20/s, slip 2) and off,
/// side by side. Run with
/// `cargo test -p dpin-tests --test e2e dns::measure_rrl_amplification -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; prints figures"]
fn measure_rrl_amplification() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    let eps: Vec<String> = (1..=64).map(|i| format!("198.51.100.{i}:443")).collect();
    let mut args: Vec<&str> = eps.iter().map(String::as_str).collect();
    args.extend(["--ttl", "1h"]);
    let name = format!("big.{zone}.dpin.");
    for (label, extra) in [
        ("RRL on (default)", vec![]),
        ("RRL off", vec!["--dns-rrl-rate", "0"]),
    ] {
        let mut node_args = vec!["--dns", "127.0.0.1:0", "--no-probe"];
        node_args.extend(extra);
        let node = NodeProc::start(
            bin(),
            &dir.path().join(label.replace(' ', "-")),
            &[],
            &node_args,
        )?;
        let dns = dns_addr(&node)?;
        publish(&key, &node.api, "big", &args)?;
        wait_until(SPREAD, "big name answered", || {
            query(dns, &name, RecordType::A, Via::Tcp)
                .ok()
                .filter(|m| !m.answers().is_empty())
        })?;
        let mut m = Message::new();
        m.set_id(1).set_recursion_desired(false);
        m.add_query(Query::query(Name::from_str(&name)?, RecordType::SRV));
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(4096);
        m.set_edns(edns);
        let q = m.to_vec()?;
        let (sent, received, answers) = paced_flood("127.0.1.1", dns, &q, 1000, 5)?;
        eprintln!(
            "{label}: 5000 queries at 1000 qps, {sent} bytes in, {answers} answers, {received} bytes out: amplification {:.2}x, {:.0} bytes/s to the victim",
            received as f64 / sent as f64,
            received as f64 / 5.0
        );
    }
    Ok(())
}

/// Nice value per thread name of process `pid` (`/proc/PID/task/*/stat`, field 19), from a
/// listing known to be whole. Linux walks `/proc/PID/task` thread by thread and stops at a
/// thread that ended meanwhile (`next_tid` in `fs/proc/base.c`), leaving out every thread
/// after it, and the node's runtime ends idle blocking threads when it likes: a listing
/// counts only when it has as many threads as the process had just before and just after it
/// (`Threads:` in `/proc/PID/status`; `dpin_node::priority`'s test of named threads has the
/// failure this avoids).
#[cfg(target_os = "linux")]
fn thread_nice(pid: u32) -> Result<Vec<(String, i32)>> {
    let threads = || -> Result<usize> {
        std::fs::read_to_string(format!("/proc/{pid}/status"))?
            .lines()
            .find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok())
            .ok_or_else(|| anyhow!("no thread count for {pid}"))
    };
    for _ in 0..1_000 {
        let before = threads()?;
        let mut out = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let path = task?.path();
            // A thread that ended since the listing has no files left: skip it (the
            // listing then falls short of the count, and is taken again).
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(path.join("comm")),
                std::fs::read_to_string(path.join("stat")),
            ) else {
                continue;
            };
            out.push((comm.trim().to_owned(), stat_nice(&stat)?));
        }
        if out.len() == before && threads()? == before {
            return Ok(out);
        }
    }
    bail!("no whole listing of process {pid}'s threads in 1,000 tries")
}

/// The nice value (field 19) of a `/proc/.../stat` line.
#[cfg(target_os = "linux")]
fn stat_nice(stat: &str) -> Result<i32> {
    // The fields after the command (which may hold spaces) start after its last ')'; they
    // begin with field 3 (state).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected stat line {stat:?}"))?;
    Ok(rest
        .split_whitespace()
        .nth(16)
        .ok_or_else(|| anyhow!("stat line too short: {stat:?}"))?
        .parse()?)
}

#[cfg(target_os = "linux")]
#[test]
fn dns_answer_threads_run_above_the_nodes_background_threads() -> Result<()> {
    // This process's priority, which the node inherits as its base.
    let base = stat_nice(&std::fs::read_to_string("/proc/thread-self/stat")?)?;
    for (flag, lowered) in [(None, (base + 10).min(19)), (Some("0"), base)] {
        let dir = dpin_tests::test_dir()?;
        let extra: Vec<&str> = flag.map_or(vec![], |v| vec!["--background-nice", v]);
        let node = dns_node(dir.path(), &extra)?;
        let pid = node.pid().ok_or_else(|| anyhow!("node not running"))?;
        let threads = thread_nice(pid)?;
        let answer: Vec<i32> = threads
            .iter()
            .filter(|(n, _)| n.starts_with("dpin-dns-udp"))
            .map(|(_, v)| *v)
            .collect();
        let runtime: Vec<i32> = threads
            .iter()
            .filter(|(n, _)| n == "tokio-rt-worker")
            .map(|(_, v)| *v)
            .collect();
        assert!(!answer.is_empty() && !runtime.is_empty(), "{threads:?}");
        assert!(
            answer.iter().all(|&v| v == base),
            "answer threads at the base priority ({flag:?}): {threads:?}"
        );
        assert!(
            runtime.iter().all(|&v| v == lowered),
            "runtime threads at nice {lowered} ({flag:?}): {threads:?}"
        );
        // And the node answers.
        let m = query(dns_addr(&node)?, "dpin.", RecordType::SOA, Via::Udp)?;
        assert_eq!(m.response_code(), ResponseCode::NoError);
    }
    Ok(())
}
