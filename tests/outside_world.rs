//! Safe toward the outside world, with real processes: records signed by strangers must not
//! steer a node's probes at its own loopback or private network unless the operator allows it;
//! every HTTP error is JSON; slow clients cannot hold the API.
//! Everything here talks only to loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use dpin_tests::{http, keygen, ok, publish, wait_until, CountingListener, NodeProc};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_dpin-e2e");
const SPREAD: Duration = Duration::from_secs(15);
/// Short probe rounds so the refused rounds below add up quickly.
const FAST_PROBES: [&str; 4] = ["--probe-interval-ms", "200", "--probe-timeout-ms", "200"];

fn bin() -> &'static Path {
    Path::new(BIN)
}

/// The body of `GET path` as text (for `/metrics`).
fn get_text(addr: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
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

/// A counter from `/metrics` (exact series name, labels included).
fn metric(node: &NodeProc, series: &str) -> Option<u64> {
    let text = get_text(&node.api, "/metrics").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// The `health` of each endpoint of `name` at `node`, by port.
fn health(node: &NodeProc, name: &str) -> Option<Vec<(u64, String, bool)>> {
    let (status, v) = node.get(&format!("/v1/resolve/{name}")).ok()?;
    (status == 200).then_some(())?;
    v["endpoints"].as_array().map(|eps| {
        eps.iter()
            .map(|e| {
                (
                    e["port"].as_u64().unwrap_or(0),
                    e["health"].as_str().unwrap_or("").to_owned(),
                    e["healthy"] == Value::Bool(true),
                )
            })
            .collect()
    })
}

#[test]
fn loopback_endpoints_are_never_probed_by_default_and_are_once_allowed() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    let name = format!("svc.{zone}");

    // Default policy: the record names a live loopback listener; the node must not touch it.
    let target = CountingListener::start()?;
    let node = NodeProc::start(bin(), &dir.path().join("default"), &[], &FAST_PROBES)?;
    let ep = format!("127.0.0.1:{}", target.port);
    ok(publish(bin(), &key, &node.api, "svc", &[&ep])?)?;
    // Wait for proof that probe rounds came due and were refused (not for a fixed time).
    let refused = r#"dpin_probe_refused_total{reason="loopback"}"#;
    wait_until(SPREAD, "three refused loopback probe rounds", || {
        metric(&node, refused).filter(|n| *n >= 3)
    })?;
    assert_eq!(
        target.accepted(),
        0,
        "no probe reached the loopback listener"
    );
    assert_eq!(metric(&node, "dpin_probes_total"), Some(0));
    assert_eq!(
        health(&node, &name),
        Some(vec![(u64::from(target.port), "unknown".to_owned(), false)]),
        "an endpoint the policy forbids is unknown, not healthy"
    );

    // The operator allows loopback: the same record is now probed and reported healthy.
    let allowed_target = CountingListener::start()?;
    let allowed = NodeProc::start(
        bin(),
        &dir.path().join("allowed"),
        &[],
        &[&FAST_PROBES[..], &["--probe-allow", "127.0.0.0/8"]].concat(),
    )?;
    let ep = format!("127.0.0.1:{}", allowed_target.port);
    ok(publish(bin(), &key, &allowed.api, "svc", &[&ep])?)?;
    wait_until(SPREAD, "probes of the allowed loopback listener", || {
        (allowed_target.accepted() > 0).then_some(())
    })?;
    wait_until(SPREAD, "the allowed endpoint reported healthy", || {
        (health(&allowed, &name)?
            == vec![(u64::from(allowed_target.port), "healthy".to_owned(), true)])
        .then_some(())
    })?;
    assert_eq!(metric(&allowed, refused), Some(0));
    assert_eq!(
        target.accepted(),
        0,
        "still nothing at the default node's target"
    );
    Ok(())
}

/// Every error the API gives, whatever produced it (unknown path, wrong method, rejected
/// query, bad body, oversized body), is the JSON `{"error", "message"}` of SPEC §5.
#[test]
fn every_api_error_has_a_json_body() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let node = NodeProc::start(bin(), &dir.path().join("n"), &[], &["--no-probe"])?;
    let cases: [(&str, &str, Option<&str>, u16, &str); 6] = [
        ("GET", "/no/such/path", None, 404, "not_found"),
        ("DELETE", "/v1/status", None, 405, "method_not_allowed"),
        (
            "POST",
            "/v1/blobs?replicas=300",
            Some("x"),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/blobs?replicas=0",
            Some("x"),
            400,
            "bad_replicas",
        ),
        ("POST", "/v1/publish", Some("{not json"), 400, "bad_json"),
        ("GET", "/v1/resolve/nodots", None, 400, "bad_name"),
    ];
    for (method, path, body, status, kind) in cases {
        let (got, v) = http(&node.api, method, path, body)?;
        assert_eq!(got, status, "{method} {path}: {v}");
        assert_eq!(v["error"], kind, "{method} {path}: {v}");
        assert!(v["message"].is_string(), "{method} {path}: {v}");
    }
    Ok(())
}

/// A slow-loris client (request heads trickled a byte at a time) neither blocks other clients
/// nor keeps its connections: the whole-head deadline closes them although bytes keep coming.
#[test]
fn slow_loris_connections_do_not_block_requests_and_are_closed_by_the_head_deadline() -> Result<()>
{
    const SLOW: usize = 40;
    let dir = dpin_tests::test_dir()?;
    let node = NodeProc::start(bin(), &dir.path().join("n"), &[], &["--no-probe"])?;
    let closed = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    for _ in 0..SLOW {
        let mut s = TcpStream::connect(&node.api)?;
        s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let (closed, open) = (closed.clone(), open.clone());
        open.fetch_add(1, Ordering::SeqCst);
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            // One header byte every 500 ms, forever: only the server can end this.
            loop {
                if s.write_all(b"X").is_err() {
                    break;
                }
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            closed.fetch_add(1, Ordering::SeqCst);
        });
    }
    // While they trickle, an honest client is answered.
    let (status, v) = node.get("/v1/status")?;
    assert_eq!(status, 200, "{v}");
    assert!(
        closed.load(Ordering::SeqCst) < SLOW,
        "the slow connections were still open while the honest requests were answered"
    );
    wait_until(
        SPREAD * 2,
        "the head deadline to close every slow connection",
        || (closed.load(Ordering::SeqCst) == open.load(Ordering::SeqCst)).then_some(()),
    )?;
    let timeouts = metric(&node, "dpin_http_head_timeouts_total").unwrap_or(0);
    assert!(timeouts >= SLOW as u64, "{timeouts} head timeouts counted");
    Ok(())
}

/// With `DPIN_API_TOKEN` set on the node, writes without the token get a JSON 401 (counted),
/// reads stay public, and the CLI, given the same variable, publishes.
#[test]
fn writes_need_the_api_token_when_the_node_has_one() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let token = [("DPIN_API_TOKEN".to_owned(), "s3cret-token".to_owned())];
    let node = NodeProc::start_with_env(
        bin(),
        &dir.path().join("n"),
        &[],
        &["--no-probe"],
        token.to_vec(),
    )?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    let (status, v) = http(&node.api, "POST", "/v1/publish", Some("{}"))?;
    assert_eq!(
        (status, v["error"].as_str()),
        (401, Some("unauthorized")),
        "{v}"
    );
    let (status, v) = http(&node.api, "POST", "/v1/blobs", Some("x"))?;
    assert_eq!(
        (status, v["error"].as_str()),
        (401, Some("unauthorized")),
        "{v}"
    );
    let (status, _) = http(&node.api, "GET", "/v1/status", None)?;
    assert_eq!(status, 200, "reads need no token");
    // The CLI without the token is refused; with it, the publish goes through.
    let refused = publish(bin(), &key, &node.api, "web", &["8.8.8.8:80"])?;
    assert!(!refused.status.success(), "publish without the token");
    let key_s = key.to_str().ok_or_else(|| anyhow!("path"))?;
    let out = std::process::Command::new(bin())
        .args([
            "publish",
            "--key",
            key_s,
            "--api",
            &node.api,
            "web",
            "8.8.8.8:80",
        ])
        .envs(token.iter().cloned())
        .output()?;
    ok(out)?;
    let (status, _) = node.get(&format!("/v1/resolve/web.{zone}"))?;
    assert_eq!(status, 200);
    let unauthorized = r#"dpin_http_refused_total{reason="unauthorized"}"#;
    assert!(metric(&node, unauthorized).unwrap_or(0) >= 3);
    assert!(metric(&node, r#"dpin_http_errors_total{status="401"}"#).unwrap_or(0) >= 3);
    Ok(())
}

/// An upload body trickled a byte at a time cannot hold one of the two upload slots: it is
/// cut off (408 `too_slow`, counted) once it falls behind the minimum rate after the grace
/// period, while the bytes keep coming. Takes about `UPLOAD_GRACE` (10 s).
#[test]
fn an_upload_trickled_byte_by_byte_is_cut_off() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let node = NodeProc::start(bin(), &dir.path().join("n"), &[], &["--no-probe"])?;
    let mut s = TcpStream::connect(&node.api)?;
    write!(
        s,
        "POST /v1/blobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n"
    )?;
    s.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    // One body byte every 300 ms until the server answers; only the server can end this.
    let answer = wait_until(SPREAD * 2, "the trickled upload to be cut off", || {
        let _ = s.write_all(b"x");
        match s.read(&mut buf) {
            Ok(0) => Some(()),
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                raw.windows(4).any(|w| w == b"\r\n\r\n").then_some(())
            }
            Err(_) => None,
        }
    });
    answer?;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let refused = r#"dpin_http_uploads_refused_total{reason="too_slow"}"#;
    assert_eq!(metric(&node, refused), Some(1));
    Ok(())
}
