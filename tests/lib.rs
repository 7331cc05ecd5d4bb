//! Helpers for end-to-end tests: real `dpin` processes on loopback with ephemeral ports.
//!
//! Tests get the binary path from `env!("CARGO_BIN_EXE_dpin-e2e")` (this crate builds the same
//! CLI as `dpin`) and pass it to [`NodeProc::start`]. Every child is killed when its guard drops,
//! so a failing test leaves no process behind. Waiting is always polling against a deadline
//! ([`wait_until`]), never a fixed sleep.
//!
//! Each test's nodes live under one [`test_dir`]: run with `DPIN_KEEP_TEST_DIRS=1` to keep it
//! (its path is printed) and read every node's `node.log` after a failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// A running (or stopped) `dpin node` child process.
pub struct NodeProc {
    bin: PathBuf,
    child: Option<Child>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// HTTP API address (`127.0.0.1:PORT`).
    pub api: String,
    /// DNS address, when started with `--dns`.
    pub dns: Option<String>,
    /// Listen multiaddrs including `/p2p/PEER_ID`.
    pub listen: Vec<String>,
    /// Peer id.
    pub peer_id: String,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    /// Whether the running child was started under libfaketime (its `env` may have been
    /// replaced since, [`NodeProc::set_env`]).
    child_faketime: bool,
}

/// How long a node may take to print its addresses.
const START_TIMEOUT: Duration = Duration::from_secs(20);

impl NodeProc {
    /// Starts `bin node` with a data dir, bootstrap addresses and extra arguments, listening on
    /// loopback with ephemeral ports, and waits until it printed its API address.
    pub fn start(
        bin: &Path,
        data_dir: &Path,
        bootstrap: &[String],
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_with_env(bin, data_dir, bootstrap, extra, Vec::new())
    }

    fn spawn(&mut self, listen: &str, api: &str, bootstrap: &[String]) -> Result<()> {
        std::fs::create_dir_all(&self.data_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("node.log"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("node")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", listen, "--api", api]);
        for b in bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        cmd.args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let wants_dns = self.extra.iter().any(|a| a == "--dns");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.child = Some(child);
        self.child_faketime = self.env.iter().any(|(k, _)| k == "LD_PRELOAD");
        self.listen.clear();
        self.dns = None;
        self.api.clear();
        let deadline = Instant::now() + START_TIMEOUT;
        while self.api.is_empty() || (wants_dns && self.dns.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).map_err(|_| {
                anyhow!(
                    "node in {} did not print its addresses; see node.log",
                    self.data_dir.display()
                )
            })?;
            let mut parts = line.splitn(2, ' ');
            match (parts.next(), parts.next()) {
                (Some("peer_id"), Some(v)) => self.peer_id = v.to_owned(),
                (Some("listen"), Some(v)) => self.listen.push(v.to_owned()),
                (Some("api"), Some(v)) => self.api = v.to_owned(),
                (Some("dns"), Some(v)) => self.dns = Some(v.to_owned()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Starts like [`NodeProc::start`], with extra environment variables (e.g. [`faketime`]).
    pub fn start_with_env(
        bin: &Path,
        data_dir: &Path,
        bootstrap: &[String],
        extra: &[&str],
        env: Vec<(String, String)>,
    ) -> Result<Self> {
        let mut node = NodeProc {
            bin: bin.to_owned(),
            child: None,
            child_faketime: false,
            data_dir: data_dir.to_owned(),
            api: String::new(),
            dns: None,
            listen: Vec::new(),
            peer_id: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env,
        };
        node.spawn("/ip4/127.0.0.1/tcp/0", "127.0.0.1:0", bootstrap)?;
        Ok(node)
    }

    /// Replaces the environment used from the next (re)start on, e.g. to correct a clock.
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.env = env;
    }

    /// The first TCP listen address (with `/p2p/`), for others to bootstrap from.
    pub fn bootstrap_addr(&self) -> String {
        self.listen
            .iter()
            .find(|a| a.contains("/tcp/"))
            .or(self.listen.first())
            .cloned()
            .unwrap_or_default()
    }

    /// Process id of the running child.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Stops cleanly: SIGTERM, then waits up to 15 s for the node to flush its store and
    /// exit (SIGKILL after that). Use it where a test needs what the node holds on disk,
    /// not a crash: replicated records are made durable a moment after they arrive, so a
    /// SIGKILL right after one arrived can lose it (peers resend it later).
    pub fn stop(&mut self) -> Result<()> {
        self.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while let Some(c) = self.child.as_mut() {
            if c.try_wait()?.is_some() {
                self.child = None;
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!("node did not stop within 15 s of SIGTERM; killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL and reap. Under libfaketime, also removes the semaphore and segment it
    /// leaves in /dev/shm for a SIGKILLed process (`dpin_sim::clock::remove_leftovers`).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id();
            let _ = c.kill();
            let reaped = c.wait().is_ok();
            if reaped && self.child_faketime {
                dpin_sim::clock::remove_leftovers(Path::new(dpin_sim::clock::SHM_DIR), pid);
            }
        }
    }

    /// Restarts on the same data dir. With `same_addresses`, it listens on the same TCP port and
    /// API address as before (so peers that knew it reconnect); otherwise on fresh ports.
    pub fn restart(&mut self, bootstrap: &[String], same_addresses: bool) -> Result<()> {
        self.kill();
        if same_addresses {
            let listen = self
                .bootstrap_addr()
                .split("/p2p/")
                .next()
                .unwrap_or_default()
                .to_owned();
            let api = self.api.clone();
            self.spawn(&listen, &api, bootstrap)
        } else {
            self.spawn("/ip4/127.0.0.1/tcp/0", "127.0.0.1:0", bootstrap)
        }
    }

    /// Sends a signal (SIGSTOP, SIGCONT, ...) to the process.
    pub fn signal(&self, sig: libc::c_int) -> Result<()> {
        let Some(c) = &self.child else {
            bail!("node not running");
        };
        let pid = libc::pid_t::try_from(c.id())?;
        // SAFETY-free: libc::kill is a plain syscall wrapper; the workspace forbids unsafe code,
        // so go through the `kill` command instead.
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{sig} {pid} failed");
        }
        Ok(())
    }

    /// GET a JSON path on this node's API.
    pub fn get(&self, path: &str) -> Result<(u16, Value)> {
        http(&self.api, "GET", path, None)
    }

    /// The record seq this node serves for `name`, if any.
    pub fn resolved_seq(&self, name: &str) -> Option<u64> {
        match self.get(&format!("/v1/resolve/{name}")) {
            Ok((200, v)) => v["seq"].as_u64(),
            _ => None,
        }
    }

    /// The store digest from `/v1/status`.
    pub fn digest(&self) -> Option<String> {
        match self.get("/v1/status") {
            Ok((200, v)) => v["digest"].as_str().map(str::to_owned),
            _ => None,
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Minimal HTTP/1.1 client over std (one request per connection), 5 s timeouts.
pub fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> Result<(u16, Value)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header end"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("no status"))?
        .parse()?;
    let json = serde_json::from_str(rest.trim()).unwrap_or(Value::Null);
    Ok((status, json))
}

/// The value of one series (the text before the value, labels included) in a node's
/// `/metrics` text, or `None` when the node does not expose it.
pub fn metric(api: &str, series: &str) -> Result<Option<f64>> {
    let mut s = TcpStream::connect(api)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        // `series` must be the whole name: `dpin_x` is not a prefix match for `dpin_x_total`.
        rest.starts_with(' ').then(|| rest.trim().parse().ok())?
    }))
}

/// Polls `f` every 20 ms until it returns `Some`, or fails after `timeout` with `what`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where Debian's `faketime` package puts libfaketime.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Environment that shifts a process's wall clock by `offset` (libfaketime syntax: `-10m`,
/// `+40d`) and leaves its monotonic clock alone, so tokio's timers run in real time while
/// `SystemTime::now()` is skewed — the way a badly set machine clock looks to dpin.
/// Fails with the install command when libfaketime is missing (`.ci/run` installs it).
pub fn faketime(offset: &str) -> Result<Vec<(String, String)>> {
    if !Path::new(LIBFAKETIME).exists() {
        bail!(
            "{LIBFAKETIME} is missing: clock-skew tests need libfaketime \
             (`apt-get install -y faketime`; .ci/run installs it)"
        );
    }
    Ok(vec![
        ("LD_PRELOAD".into(), LIBFAKETIME.into()),
        ("FAKETIME".into(), offset.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ])
}

/// Runs the CLI with `args` and returns its output.
pub fn cli(bin: &Path, args: &[&str]) -> Result<Output> {
    Ok(Command::new(bin).args(args).stdin(Stdio::null()).output()?)
}

/// Runs `publish --key KEY --api APIS LABEL EXTRA...` (endpoints and flags in `extra`).
pub fn publish(bin: &Path, key: &Path, apis: &str, label: &str, extra: &[&str]) -> Result<Output> {
    let key = key
        .to_str()
        .ok_or_else(|| anyhow!("key path is not UTF-8"))?;
    let mut args = vec!["publish", "--key", key, "--api", apis, label];
    args.extend_from_slice(extra);
    cli(bin, &args)
}

/// A fresh temporary directory for one test's data dirs and logs (each node writes
/// `node.log` into its data dir). With `DPIN_KEEP_TEST_DIRS=1` in the environment it is
/// kept after the test and its path printed, so the node logs of a failed (or flaky) run can
/// be read afterwards; otherwise it is removed when dropped, as `tempfile::tempdir()` does.
pub fn test_dir() -> Result<tempfile::TempDir> {
    let mut dir = tempfile::tempdir()?;
    if std::env::var_os("DPIN_KEEP_TEST_DIRS").is_some_and(|v| !v.is_empty() && v != "0") {
        dir.disable_cleanup(true);
        eprintln!("test dir kept: {}", dir.path().display());
    }
    Ok(dir)
}

/// The stdout of a successful command, or its stderr as the error.
pub fn ok(out: Output) -> Result<String> {
    if !out.status.success() {
        bail!("command failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs `keygen` into `dir/name.key` and returns (key path, zone id).
pub fn keygen(bin: &Path, dir: &Path, name: &str) -> Result<(PathBuf, String)> {
    let path = dir.join(format!("{name}.key"));
    let out = cli(
        bin,
        &[
            "keygen",
            "--out",
            path.to_str().ok_or_else(|| anyhow!("path"))?,
        ],
    )?;
    if !out.status.success() {
        bail!("keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((path, String::from_utf8(out.stdout)?.trim().to_owned()))
}

/// Starts `n` nodes: the first alone, the rest bootstrapping from it.
pub fn cluster(bin: &Path, dir: &Path, n: usize, extra: &[&str]) -> Result<Vec<NodeProc>> {
    cluster_with(bin, dir, extra, n - 1, extra)
}

/// Starts a first node with `first` arguments, then `rest` nodes bootstrapping from it with
/// `others` (e.g. a node offering nothing and `rest` storage nodes).
pub fn cluster_with(
    bin: &Path,
    dir: &Path,
    first: &[&str],
    rest: usize,
    others: &[&str],
) -> Result<Vec<NodeProc>> {
    let n0 = NodeProc::start(bin, &dir.join("n0"), &[], first)?;
    let boot = vec![n0.bootstrap_addr()];
    let mut nodes = vec![n0];
    for i in 1..=rest {
        nodes.push(NodeProc::start(
            bin,
            &dir.join(format!("n{i}")),
            &boot,
            others,
        )?);
    }
    Ok(nodes)
}

/// Waits until every node in `nodes` is connected to all others.
pub fn wait_connected(nodes: &[NodeProc], timeout: Duration) -> Result<()> {
    let want = nodes.len() - 1;
    // The peers a node's status lists, and how many of them it judges alive.
    let status_peers = |n: &NodeProc| match n.get("/v1/status") {
        Ok((200, v)) => v["peers"].as_array().cloned(),
        _ => None,
    };
    let alive = |peers: &[Value]| peers.iter().filter(|p| p["alive"] == true).count();
    wait_until(timeout, "full mesh of connections", || {
        nodes
            .iter()
            .all(|n| status_peers(n).map_or(0, |ps| alive(&ps)) >= want)
            .then_some(())
    })
    .map_err(|e| {
        // The test's directory (and the nodes' logs) goes with the failure: say here what
        // each node saw, so a rare miss can be read afterwards.
        // A peer id by its node's index in `nodes` (`?` for one outside the cluster).
        let index_of = |id: &str| {
            nodes
                .iter()
                .position(|n| n.peer_id == id)
                .map_or("?".to_owned(), |i| i.to_string())
        };
        let seen: Vec<String> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                // One status read for both figures, so they describe the same moment.
                let status = status_peers(n);
                let alive = status
                    .as_ref()
                    .map_or("no status".to_owned(), |ps| format!("{} alive", alive(ps)));
                // Every peer it knows: node index, detector state, connected or not.
                let peers = status
                    .iter()
                    .flatten()
                    .map(|p| {
                        format!(
                            "n{}:{}{}",
                            index_of(p["peer_id"].as_str().unwrap_or_default()),
                            p["state"].as_str().unwrap_or("?"),
                            if p["connected"] == true { "+conn" } else { "" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                let log = std::fs::read_to_string(n.data_dir.join("node.log")).unwrap_or_default();
                let events: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        ["connected", "liveness", "dial", "WARN", "ERROR"]
                            .iter()
                            .any(|w| l.contains(w))
                    })
                    .collect();
                let tail: Vec<String> = events[events.len().saturating_sub(12)..]
                    .iter()
                    .map(|l| strip_ansi(l))
                    .collect();
                let tail = tail.join("\n    ");
                format!(
                    "node {i} ({}): {alive} of {want}; peers [{peers}]\n    {tail}",
                    n.peer_id
                )
            })
            .collect();
        e.context(seen.join("\n"))
    })
}

/// `line` without its terminal colour codes (`ESC [ … m`: the nodes' logs are coloured).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip to the end of the escape sequence (its final letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A loopback TCP listener that counts the connections it accepts (each endpoint probe is
/// one), for tests of who probes what.
pub struct CountingListener {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingListener {
    /// Binds 127.0.0.1 on a free port and counts accepted connections in a thread that ends
    /// with the test process.
    pub fn start() -> anyhow::Result<Self> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if conn.is_ok() {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        Ok(Self { port, accepted })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_lines_lose_their_colour_codes_and_nothing_else() {
        let coloured = "\u{1b}[2m2026-12-05T00:36:16Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m peer=a [b]";
        assert_eq!(
            super::strip_ansi(coloured),
            "2026-12-05T00:36:16Z  INFO peer=a [b]"
        );
        assert_eq!(super::strip_ansi("plain"), "plain");
    }
}
