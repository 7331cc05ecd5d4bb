//! Probe load that does not grow with the network, with real processes on loopback: each
//! endpoint is probed by k = 3 live nodes chosen by rendezvous hashing, and the other nodes
//! learn its health from the probers' signed observation records. Loopback endpoints are
//! probed only because every node here runs with `--probe-allow 127.0.0.0/8`.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use dpin_tests::{keygen, ok, publish, wait_connected, wait_until, CountingListener, NodeProc};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_dpin-e2e");
const SPREAD: Duration = Duration::from_secs(30);
const PROBES: [&str; 6] = [
    "--probe-interval-ms",
    "300",
    "--probe-timeout-ms",
    "200",
    "--probe-allow",
    "127.0.0.0/8",
];

fn bin() -> &'static Path {
    Path::new(BIN)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A counter or gauge from `/metrics` (exact series name).
fn metric(node: &NodeProc, series: &str) -> Option<u64> {
    let text = get_text(&node.api, "/metrics").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn get_text(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    raw.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .ok_or_else(|| anyhow!("no HTTP header end"))
}

/// (port, health) of each endpoint of `name` in `node`'s answer.
fn health(node: &NodeProc, name: &str) -> Option<Vec<(u64, String)>> {
    let (status, v) = node.get(&format!("/v1/resolve/{name}")).ok()?;
    (status == 200).then_some(())?;
    let mut out: Vec<(u64, String)> = v["endpoints"]
        .as_array()?
        .iter()
        .map(|e: &Value| {
            (
                e["port"].as_u64().unwrap_or(0),
                e["health"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    out.sort();
    Some(out)
}

/// Starts `n` nodes (the first alone, the rest bootstrapping from it) with `env`.
fn cluster_env(dir: &Path, n: usize, env: &[(String, String)]) -> Result<Vec<NodeProc>> {
    cluster_args(dir, n, env, &PROBES)
}

/// Starts `n` nodes with `env` and node arguments `args`.
fn cluster_args(
    dir: &Path,
    n: usize,
    env: &[(String, String)],
    args: &[&str],
) -> Result<Vec<NodeProc>> {
    let first = NodeProc::start_with_env(bin(), &dir.join("n0"), &[], args, env.to_vec())?;
    let boot = vec![first.bootstrap_addr()];
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(NodeProc::start_with_env(
            bin(),
            &dir.join(format!("n{i}")),
            &boot,
            args,
            env.to_vec(),
        )?);
    }
    Ok(nodes)
}

/// Five nodes, six live endpoints and one dead one: every endpoint is tracked by exactly three
/// nodes (15 of 35 node-endpoint pairs instead of all 35), yet every node — prober or not —
/// reports the live endpoints healthy and leaves the dead one out, from the probers' shared
/// observations.
#[test]
fn each_endpoint_is_probed_by_three_nodes_and_every_node_knows_its_health() -> Result<()> {
    const NODES: usize = 5;
    let dir = dpin_tests::test_dir()?;
    let nodes = cluster_env(dir.path(), NODES, &[])?;
    wait_connected(&nodes, SPREAD)?;
    // The failure detector and the network layer report on /metrics: peers by state, and
    // the detector's probes (it has been probing peers it did not hear from).
    for node in &nodes {
        assert!(metric(node, r#"dpin_peers{state="alive"}"#).unwrap_or(0) >= 1);
        assert!(metric(node, "dpin_detector_probes_total").is_some());
        assert!(metric(node, "dpin_net_dropped_gossip_total").is_some());
    }
    let listeners: Vec<CountingListener> = (0..6)
        .map(|_| CountingListener::start())
        .collect::<Result<_>>()?;
    let dead = free_port()?;
    let mut eps: Vec<String> = listeners
        .iter()
        .map(|l| format!("127.0.0.1:{}", l.port))
        .collect();
    eps.push(format!("127.0.0.1:{dead}"));
    let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    let name = format!("svc.{zone}");
    ok(publish(bin(), &key, &nodes[0].api, "svc", &eps)?)?;

    let want: Vec<(u64, String)> = {
        let mut w: Vec<(u64, String)> = listeners
            .iter()
            .map(|l| (u64::from(l.port), "healthy".to_owned()))
            .collect();
        w.sort();
        w
    };
    for n in &nodes {
        wait_until(
            SPREAD,
            "every node: live endpoints healthy, dead one out",
            || (health(n, &name)? == want).then_some(()),
        )?;
    }
    // Steady state (every node sees the same five members): each endpoint tracked three
    // times, 21 in all, where every node probing everything would track 35.
    let want_tracked = 3 * eps.len() as u64;
    let tracked: Vec<u64> = wait_until(SPREAD, "each endpoint tracked by three nodes", || {
        let t: Vec<u64> = nodes
            .iter()
            .map(|n| metric(n, "dpin_probe_tracked"))
            .collect::<Option<_>>()?;
        (t.iter().sum::<u64>() == want_tracked).then_some(t)
    })?;
    let sharing: u64 = nodes
        .iter()
        .map(|n| metric(n, "dpin_probe_observations_accepted_total").unwrap_or(0))
        .sum();
    assert!(sharing > 0, "verdicts were shared");
    let probes: usize = listeners.iter().map(|l| l.accepted()).sum();
    eprintln!("{NODES} nodes: tracked per node {tracked:?}; {probes} probes of 6 listeners so far");
    Ok(())
}

/// Measurement (not run in CI): probes per endpoint per second on real processes, at N = 3
/// and N = 8 nodes, with rendezvous selection (k = 3) and with every node probing
/// (`DPIN_PROBERS=0`), side by side; the default 2 s probe interval, 8 endpoints, a 20 s
/// window after the cluster settled. Run with
/// `cargo test -p dpin-tests --test e2e probe_sharing::measure -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; prints figures"]
fn measure_probe_rate_per_endpoint() -> Result<()> {
    const WINDOW: Duration = Duration::from_secs(20);
    const DEFAULT_INTERVAL: [&str; 2] = ["--probe-allow", "127.0.0.0/8"];
    for n in [3usize, 8] {
        for (label, env) in [
            ("rendezvous k=3", vec![]),
            (
                "every node probes",
                vec![("DPIN_PROBERS".to_owned(), "0".to_owned())],
            ),
        ] {
            let dir = dpin_tests::test_dir()?;
            let nodes = cluster_args(dir.path(), n, &env, &DEFAULT_INTERVAL)?;
            wait_connected(&nodes, SPREAD)?;
            let listeners: Vec<CountingListener> = (0..8)
                .map(|_| CountingListener::start())
                .collect::<Result<_>>()?;
            let eps: Vec<String> = listeners
                .iter()
                .map(|l| format!("127.0.0.1:{}", l.port))
                .collect();
            let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
            let (key, zone) = keygen(bin(), dir.path(), "zone")?;
            ok(publish(bin(), &key, &nodes[0].api, "svc", &eps)?)?;
            let name = format!("svc.{zone}");
            for node in &nodes {
                wait_until(SPREAD, "healthy everywhere", || {
                    health(node, &name)?
                        .iter()
                        .all(|(_, h)| h == "healthy")
                        .then_some(())
                })?;
            }
            // Settle a few more seconds (rendezvous membership, first-probe spread), then count.
            std::thread::sleep(Duration::from_secs(4));
            let before: Vec<usize> = listeners.iter().map(|l| l.accepted()).collect();
            let t = Instant::now();
            std::thread::sleep(WINDOW);
            let secs = t.elapsed().as_secs_f64();
            let mut rates: Vec<f64> = listeners
                .iter()
                .zip(&before)
                .map(|(l, b)| (l.accepted() - b) as f64 / secs)
                .collect();
            rates.sort_by(f64::total_cmp);
            let median = rates[rates.len() / 2];
            eprintln!(
                "N={n} {label}: probes per endpoint per second median {median:.2}, min {:.2}, max {:.2} (interval 2 s)",
                rates[0],
                rates[rates.len() - 1]
            );
        }
    }
    Ok(())
}
