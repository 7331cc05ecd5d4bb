//! Supervises real `dpin node` processes: start, SIGKILL + restart, SIGSTOP + SIGCONT, stop.
//!
//! Why real processes: the failures dpin must survive (a crash mid-write, a hung process whose
//! TCP connections stay open, a restart from the on-disk store) only happen to real processes
//! with real sockets and real fsyncs.
//!
//! Each node gets `<base>/node-K/` as its data dir, `<base>/node-K.log` for its logs (appended
//! across restarts) and `<base>/node-K.pid`, so `dpin-sim stop --base-dir <base>` can clean up
//! after a harness that was itself killed. Children run in their own process group, so a
//! terminal's Ctrl-C reaches only the harness, which then stops them in order (SIGCONT, SIGTERM,
//! then SIGKILL after a grace period) and waits for each; `kill_on_drop` is the last resort.
//!
//! Extra node flags (the chaos harness passes `--no-probe` and `--compaction-horizon-ms`) are
//! given once in [`ClusterOptions::node_args`] and used on every start and restart. With
//! [`ClusterOptions::faketime`] every node runs under libfaketime with its own offset file, so
//! the nemesis can skew one node's wall clock while it runs (see [`crate::clock`]).
//!
//! Ports: a node first starts on port 0 (the kernel picks); the harness reads the addresses it
//! prints and restarts it later on exactly those ports, so peers that remember its address find
//! it again. A restarted node bootstraps from every other node (the first node has no bootstrap
//! at first start, but after a restart it must rejoin a running cluster).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::nodeapi::Api;

/// How long a node may take to print its addresses.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Grace period between SIGTERM and SIGKILL on shutdown.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where the nodes' sockets live.
#[derive(Clone, Debug)]
pub enum Layout {
    /// Everything on 127.0.0.1, ports picked by the kernel.
    Loopback,
    /// One network namespace per node (see [`crate::netns`]): peer traffic on `data`, API and
    /// DNS on `mgmt`.
    Netns {
        /// Namespace of each node, index 0 = node 1.
        namespaces: Vec<String>,
        /// Peer-traffic address of each node.
        data: Vec<Ipv4Addr>,
        /// API/DNS address of each node.
        mgmt: Vec<Ipv4Addr>,
    },
}

/// What a running node told us on stdout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// libp2p peer id.
    pub peer_id: String,
    /// First listen address, with `/p2p/<peer id>`.
    pub listen: String,
    /// HTTP API address.
    pub api: SocketAddr,
    /// DNS address, if serving DNS.
    pub dns: Option<SocketAddr>,
}

/// One supervised node.
#[derive(Debug)]
pub struct NodeProc {
    /// 1-based index.
    pub index: usize,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Log file (stderr of the node).
    pub log: PathBuf,
    /// `--listen` argument.
    listen_arg: String,
    /// `--api` argument.
    api_arg: SocketAddr,
    /// `--dns` argument.
    dns_arg: Option<SocketAddr>,
    /// Namespace to run in.
    netns: Option<String>,
    /// libfaketime offset file, if the node runs under libfaketime.
    pub clock_file: Option<PathBuf>,
    /// Addresses from the last start.
    pub info: Option<NodeInfo>,
    child: Option<Child>,
    /// The running child's pid when it runs under libfaketime: what to clean up after it is
    /// reaped ([`NodeProc::reap`]).
    faketime_pid: Option<u32>,
    /// Whether we SIGSTOPped it.
    pub paused: bool,
}

impl NodeProc {
    /// Waits up to `within` (`None`: as long as it takes) for `child`, this node's process,
    /// to exit; `None` if it has not by then. Once it is reaped, removes what libfaketime
    /// leaves behind for a SIGKILLed process (`crate::clock::remove_leftovers`). Every wait
    /// for a node's exit goes through here.
    async fn reap(
        &mut self,
        child: &mut Child,
        within: Option<Duration>,
    ) -> Option<std::io::Result<std::process::ExitStatus>> {
        let status = match within {
            Some(d) => tokio::time::timeout(d, child.wait()).await.ok()?,
            None => child.wait().await,
        };
        if status.is_ok() {
            if let Some(pid) = self.faketime_pid.take() {
                crate::clock::remove_leftovers(Path::new(crate::clock::SHM_DIR), pid);
            }
        }
        Some(status)
    }

    /// Process id of the running child.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether a child process is running (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("node {} is not running", self.index))?;
        kill(Pid::from_raw(pid as i32), sig)
            .with_context(|| format!("cannot send {sig} to node {} (pid {pid})", self.index))
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The node binary cannot serve DNS (`--dns` refused).
    #[error("this dpin build cannot serve DNS: {0}")]
    DnsUnavailable(String),
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Options for [`Cluster::start`].
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The `dpin` binary.
    pub dpin: PathBuf,
    /// Folder for data dirs, logs and pidfiles.
    pub base_dir: PathBuf,
    /// Number of nodes.
    pub nodes: usize,
    /// Try to serve DNS on every node (falls back to no DNS if the build cannot).
    pub dns: bool,
    /// Socket layout.
    pub layout: Layout,
    /// Extra arguments for every `dpin node` start (e.g. `--no-probe`).
    pub node_args: Vec<String>,
    /// Run every node under this libfaketime library (clock-skew faults).
    pub faketime: Option<PathBuf>,
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    /// The `dpin` binary.
    pub dpin: PathBuf,
    /// Base folder.
    pub base_dir: PathBuf,
    /// The nodes, index 0 = node 1.
    pub nodes: Vec<NodeProc>,
    /// Whether nodes serve DNS.
    pub dns: bool,
    /// Why DNS is off, if it was asked for and is off.
    pub dns_note: Option<String>,
    node_args: Vec<String>,
    faketime: Option<PathBuf>,
}

/// The default node binary: `dpin` next to the running executable (a release build of the
/// workspace puts both there); if there is none, this executable itself, whose hidden `node`
/// subcommand runs the very same node code (so `cargo run -p dpin-sim -- chaos` works from a
/// clean clone). Beware: `cargo run -p dpin-sim` does not rebuild a `dpin` that is already
/// there. Nodes always start as `<binary> node ...`.
pub fn default_dpin() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent folder", exe.display()))?;
    let sibling = dir.join("dpin");
    Ok(if sibling.is_file() { sibling } else { exe })
}

fn tcp_port(multiaddr: &str) -> Option<u16> {
    let mut parts = multiaddr.split('/');
    while let Some(p) = parts.next() {
        if p == "tcp" {
            return parts.next()?.parse().ok();
        }
    }
    None
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Cluster {
    /// Starts `opts.nodes` nodes: node 1 first, the others bootstrapping from it. Does not wait
    /// for the mesh; see [`Cluster::wait_connected`].
    pub async fn start(opts: &ClusterOptions) -> Result<Self> {
        if !opts.dpin.is_file() {
            bail!(
                "no dpin binary at {}; build it (cargo build --release -p dpin-node) or pass --dpin PATH",
                opts.dpin.display()
            );
        }
        std::fs::create_dir_all(&opts.base_dir)
            .with_context(|| format!("cannot create {}", opts.base_dir.display()))?;
        let mut nodes = Vec::with_capacity(opts.nodes);
        for k in 1..=opts.nodes {
            let (listen_arg, api_arg, dns_arg, netns) = match &opts.layout {
                Layout::Loopback => (
                    "/ip4/127.0.0.1/tcp/0".to_owned(),
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
                    opts.dns
                        .then_some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)),
                    None,
                ),
                Layout::Netns {
                    namespaces,
                    data,
                    mgmt,
                } => {
                    let (Some(ns), Some(d), Some(m)) =
                        (namespaces.get(k - 1), data.get(k - 1), mgmt.get(k - 1))
                    else {
                        bail!("namespace layout has no entry for node {k}");
                    };
                    (
                        format!("/ip4/{d}/tcp/7001"),
                        SocketAddr::new(IpAddr::V4(*m), 7080),
                        opts.dns.then_some(SocketAddr::new(IpAddr::V4(*m), 5353)),
                        Some(ns.clone()),
                    )
                }
            };
            let clock_file = match &opts.faketime {
                Some(_) => {
                    let f = opts.base_dir.join(format!("node-{k}.faketime"));
                    crate::clock::write_offset(&f, 0)
                        .with_context(|| format!("cannot write {}", f.display()))?;
                    Some(f)
                }
                None => None,
            };
            nodes.push(NodeProc {
                index: k,
                data_dir: opts.base_dir.join(format!("node-{k}")),
                log: opts.base_dir.join(format!("node-{k}.log")),
                listen_arg,
                api_arg,
                dns_arg,
                netns,
                clock_file,
                info: None,
                child: None,
                faketime_pid: None,
                paused: false,
            });
        }
        let mut cluster = Cluster {
            dpin: opts.dpin.clone(),
            base_dir: opts.base_dir.clone(),
            nodes,
            dns: opts.dns,
            dns_note: None,
            node_args: opts.node_args.clone(),
            faketime: opts.faketime.clone(),
        };
        std::fs::write(
            cluster.base_dir.join("dpin-sim.pid"),
            format!("{}\n", std::process::id()),
        )
        .context("cannot write the harness pidfile")?;
        for i in 0..cluster.nodes.len() {
            let bootstrap: Vec<String> = if i == 0 {
                Vec::new()
            } else {
                cluster.nodes[0]
                    .info
                    .iter()
                    .map(|n| n.listen.clone())
                    .collect()
            };
            match cluster.spawn(i, &bootstrap).await {
                Ok(()) => {}
                Err(StartError::DnsUnavailable(msg)) => {
                    cluster.dns = false;
                    cluster.dns_note = Some(msg);
                    for n in &mut cluster.nodes {
                        n.dns_arg = None;
                    }
                    if let Err(e) = cluster.spawn(i, &bootstrap).await {
                        cluster.shutdown().await;
                        return Err(e.into());
                    }
                }
                Err(StartError::Other(e)) => {
                    cluster.shutdown().await;
                    return Err(e);
                }
            }
        }
        Ok(cluster)
    }

    /// Spawns node `i` (0-based) and waits for its address lines.
    async fn spawn(&mut self, i: usize, bootstrap: &[String]) -> Result<(), StartError> {
        let dpin = self.dpin.clone();
        let node = &mut self.nodes[i];
        std::fs::create_dir_all(&node.data_dir)
            .with_context(|| format!("cannot create {}", node.data_dir.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("cannot open {}", node.log.display()))?;
        let mut cmd = match &node.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&dpin);
                c
            }
            None => Command::new(&dpin),
        };
        cmd.arg("node")
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--listen")
            .arg(&node.listen_arg)
            .arg("--api")
            .arg(node.api_arg.to_string());
        if let Some(d) = node.dns_arg {
            cmd.arg("--dns").arg(d.to_string());
        }
        for b in bootstrap {
            cmd.arg("--bootstrap").arg(b);
        }
        cmd.args(&self.node_args);
        if let (Some(lib), Some(file)) = (&self.faketime, &node.clock_file) {
            cmd.envs(crate::clock::node_env(lib, file));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .env("RUST_LOG", node_log_filter())
            .env("NO_COLOR", "1")
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", dpin.display()))?;
        let pid = child.id().unwrap_or(0);
        node.faketime_pid = (self.faketime.is_some() && node.clock_file.is_some()).then_some(pid);
        std::fs::write(
            self.base_dir.join(format!("node-{}.pid", i + 1)),
            format!("{pid}\n"),
        )
        .context("cannot write pidfile")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("node stdout not captured"))?;
        let mut lines = BufReader::new(stdout).lines();
        let want_dns = node.dns_arg.is_some();
        let (mut peer_id, mut listen, mut api, mut dns) = (None, None, None, None);
        let deadline = Instant::now() + START_TIMEOUT;
        let read = async {
            while let Some(line) = lines.next_line().await? {
                let mut it = line.splitn(2, ' ');
                match (it.next(), it.next()) {
                    (Some("peer_id"), Some(v)) => peer_id = Some(v.trim().to_owned()),
                    (Some("listen"), Some(v)) if listen.is_none() && v.contains("/tcp/") => {
                        listen = Some(v.trim().to_owned())
                    }
                    (Some("api"), Some(v)) => api = v.trim().parse::<SocketAddr>().ok(),
                    (Some("dns"), Some(v)) => dns = v.trim().parse::<SocketAddr>().ok(),
                    _ => {}
                }
                if api.is_some() && (!want_dns || dns.is_some()) {
                    return Ok::<bool, std::io::Error>(true);
                }
            }
            Ok(false)
        };
        let complete = match tokio::time::timeout_at(deadline.into(), read).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                let _ = child.start_kill();
                return Err(anyhow!("reading node {} output: {e}", i + 1).into());
            }
            Err(_) => {
                let _ = child.start_kill();
                let _ = node.reap(&mut child, None).await;
                return Err(anyhow!(
                    "node {} printed no addresses within {START_TIMEOUT:?}; log {}:\n{}",
                    i + 1,
                    node.log.display(),
                    log_tail(&node.log, 10)
                )
                .into());
            }
        };
        if !complete {
            // stdout closed: the node exited. Why?
            let status = node.reap(&mut child, Some(Duration::from_secs(5))).await;
            let tail = log_tail(&node.log, 5);
            if want_dns && api.is_some() && tail.contains("DNS") {
                return Err(StartError::DnsUnavailable(
                    tail.lines().last().unwrap_or("").to_owned(),
                ));
            }
            return Err(anyhow!(
                "node {} exited during start ({status:?}); log {}:\n{tail}",
                i + 1,
                node.log.display()
            )
            .into());
        }
        let (Some(peer_id), Some(listen), Some(api)) = (peer_id, listen, api) else {
            let _ = child.start_kill();
            return Err(anyhow!("node {} did not print peer_id/listen/api", i + 1).into());
        };
        // Keep draining stdout so the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        // Pin the ports for restarts.
        if let Some(port) = tcp_port(&listen) {
            node.listen_arg = match node.listen_arg.rsplit_once("/tcp/") {
                Some((host, _)) => format!("{host}/tcp/{port}"),
                None => node.listen_arg.clone(),
            };
        }
        node.api_arg = api;
        if let Some(d) = dns {
            node.dns_arg = Some(d);
        }
        node.info = Some(NodeInfo {
            peer_id,
            listen,
            api,
            dns,
        });
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// API addresses of all nodes (as last started).
    pub fn apis(&self) -> Vec<SocketAddr> {
        self.nodes
            .iter()
            .filter_map(|n| n.info.as_ref().map(|i| i.api))
            .collect()
    }

    /// Waits until every running node sees at least `min(want, nodes-1)` live peers. Returns
    /// whether that happened before `timeout`.
    pub async fn wait_connected(&self, api: &Api, want: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let want = want.min(self.nodes.len().saturating_sub(1));
        while Instant::now() < deadline {
            let mut all = true;
            for n in &self.nodes {
                let Some(info) = &n.info else { continue };
                if !n.is_running() || n.paused {
                    continue;
                }
                match api.status(info.api, Duration::from_millis(500)).await {
                    Some(s) if s.peers_alive >= want => {}
                    _ => all = false,
                }
            }
            if all {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Waits until running node `i` (0-based) sees at least `want` live peers. Returns whether
    /// that happened before `timeout`.
    pub async fn wait_node_connected(
        &self,
        api: &Api,
        i: usize,
        want: usize,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let Some(info) = self.nodes.get(i).and_then(|n| n.info.clone()) else {
            return false;
        };
        while Instant::now() < deadline {
            if api
                .status(info.api, Duration::from_millis(500))
                .await
                .is_some_and(|s| s.peers_alive >= want)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Stops node `i` (0-based) cleanly: SIGTERM, then waits up to [`STOP_GRACE`] for it to
    /// exit (SIGKILL after that, reported as an error: a clean stop must not need it).
    pub async fn stop_node(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        node.signal(Signal::SIGTERM)?;
        let Some(mut child) = node.child.take() else {
            return Ok(());
        };
        node.paused = false;
        match node.reap(&mut child, Some(STOP_GRACE)).await {
            Some(Ok(status)) if status.success() => Ok(()),
            Some(Ok(status)) => bail!("node {} exited with {status} after SIGTERM", i + 1),
            Some(Err(e)) => bail!("waiting for node {}: {e}", i + 1),
            None => {
                let _ = child.start_kill();
                let _ = node.reap(&mut child, Some(Duration::from_secs(5))).await;
                bail!(
                    "node {} did not exit within {} s of SIGTERM (killed)",
                    i + 1,
                    STOP_GRACE.as_secs()
                )
            }
        }
    }

    /// SIGKILLs node `i` (0-based) and reaps it.
    pub async fn kill(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        node.signal(Signal::SIGKILL)?;
        if let Some(mut child) = node.child.take() {
            match node.reap(&mut child, Some(Duration::from_secs(5))).await {
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("waiting for node {}: {e}", i + 1),
                None => bail!("node {} did not die within 5 s of SIGKILL", i + 1),
            }
        }
        node.paused = false;
        Ok(())
    }

    /// Restarts killed node `i` with the same data dir and ports, bootstrapping from every
    /// other node. Retries a few times (a port may be briefly unavailable).
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        if self.nodes[i].is_running() {
            bail!("node {} is still running", i + 1);
        }
        let bootstrap: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .filter_map(|(_, n)| n.info.as_ref().map(|x| x.listen.clone()))
            .collect();
        let mut last = None;
        for attempt in 0..5u32 {
            match self.spawn(i, &bootstrap).await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
        }
        Err(anyhow!(
            "node {} did not restart: {}",
            i + 1,
            last.map(|e| e.to_string()).unwrap_or_default()
        ))
    }

    /// Sets node `i`'s wall-clock offset (libfaketime; applies within a second). Fails if
    /// the cluster does not run under libfaketime.
    pub fn set_clock_offset(&self, i: usize, offset_ms: i64) -> Result<()> {
        let node = &self.nodes[i];
        let file = node
            .clock_file
            .as_ref()
            .ok_or_else(|| anyhow!("node {} does not run under libfaketime", i + 1))?;
        crate::clock::write_offset(file, offset_ms)
            .with_context(|| format!("cannot write {}", file.display()))
    }

    /// Whether the nodes run under libfaketime.
    pub fn clock_skew_possible(&self) -> bool {
        self.faketime.is_some()
    }

    /// SIGSTOPs node `i`.
    pub fn pause(&mut self, i: usize) -> Result<()> {
        self.nodes[i].signal(Signal::SIGSTOP)?;
        self.nodes[i].paused = true;
        Ok(())
    }

    /// SIGCONTs node `i`.
    pub fn resume(&mut self, i: usize) -> Result<()> {
        self.nodes[i].signal(Signal::SIGCONT)?;
        self.nodes[i].paused = false;
        Ok(())
    }

    /// Stops every node: SIGCONT, SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL; reaps all
    /// and removes the pidfiles. Never fails; problems are printed.
    pub async fn shutdown(&mut self) {
        for n in &mut self.nodes {
            if n.child.is_some() {
                let _ = n.signal(Signal::SIGCONT);
                let _ = n.signal(Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for n in &mut self.nodes {
            let Some(mut child) = n.child.take() else {
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if n.reap(&mut child, Some(left)).await.is_none() {
                eprintln!(
                    "dpin-sim: node {} ignored SIGTERM; sending SIGKILL",
                    n.index
                );
                let _ = child.start_kill();
                if n.reap(&mut child, Some(Duration::from_secs(5)))
                    .await
                    .is_none()
                {
                    eprintln!("dpin-sim: node {} did not exit after SIGKILL", n.index);
                }
            }
            n.paused = false;
        }
        for n in &self.nodes {
            let _ = std::fs::remove_file(self.base_dir.join(format!("node-{}.pid", n.index)));
        }
        let _ = std::fs::remove_file(self.base_dir.join("dpin-sim.pid"));
    }
}

/// `dpin-sim stop`: stops the processes named by the pidfiles in `base_dir` (nodes first, then
/// the harness), waiting for each, and removes namespaces listed in `netns.txt`. Returns how
/// many processes were signalled.
pub fn stop_from_pidfiles(base_dir: &Path) -> Result<usize> {
    let entries = std::fs::read_dir(base_dir)
        .with_context(|| format!("cannot read {}", base_dir.display()))?;
    let mut pidfiles: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pid"))
        .collect();
    // The harness first: it stops its own nodes in order and removes its namespaces. Whatever
    // it leaves (or all of it, if the harness was killed) is stopped next.
    pidfiles.sort_by_key(|p| p.file_name().is_none_or(|n| n != "dpin-sim.pid"));
    let mut signalled = 0;
    for path in pidfiles {
        if !path.exists() {
            continue; // removed by the harness while it shut down
        }
        let grace = if path.file_name().is_some_and(|n| n == "dpin-sim.pid") {
            STOP_GRACE * 4
        } else {
            STOP_GRACE
        };
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let Ok(raw) = text.trim().parse::<i32>() else {
            continue;
        };
        if raw <= 1 || raw == std::process::id() as i32 {
            continue;
        }
        let pid = Pid::from_raw(raw);
        // A stale pidfile may name a reused pid: only signal dpin processes.
        let cmdline = std::fs::read(format!("/proc/{raw}/cmdline")).unwrap_or_default();
        if kill(pid, None).is_err() || !String::from_utf8_lossy(&cmdline).contains("dpin") {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let _ = kill(pid, Signal::SIGCONT);
        let _ = kill(pid, Signal::SIGTERM);
        signalled += 1;
        let deadline = Instant::now() + grace;
        while kill(pid, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if kill(pid, None).is_ok() {
            let _ = kill(pid, Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(2);
            while kill(pid, None).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    if let Ok(text) = std::fs::read_to_string(base_dir.join("netns.txt")) {
        let names: Vec<String> = text.lines().map(str::to_owned).collect();
        crate::netns::remove_named(&names);
        let _ = std::fs::remove_file(base_dir.join("netns.txt"));
    }
    Ok(signalled)
}

/// What a node's network layer logs when a ban takes effect (`dpin_node::net`, once per
/// ban, whatever decided it). The node's own ban decisions (over budget, invalid sync data)
/// log "banning peer" under `dpin_node::node` first and then ask the network layer, so only
/// this target is counted: counting both would count those bans twice.
pub const BAN_LOG_LINE: &str = "dpin_node::net: banning peer";

/// The ban reason of a node log line, if the line is a ban ([`BAN_LOG_LINE`]); `"?"` if the
/// line has no `reason=` field.
pub fn ban_reason(line: &str) -> Option<String> {
    let rest = &line[line.find(BAN_LOG_LINE)? + BAN_LOG_LINE.len()..];
    let Some(at) = rest.find(" reason=") else {
        return Some("?".to_owned());
    };
    let value = rest[at + " reason=".len()..]
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .trim_matches('"');
    Some(value.to_owned())
}

/// Bans recorded in the logs of every node under `base_dir` (`node-K.log`, appended across
/// restarts, so a restarted node's earlier bans count too). Every node the chaos harness
/// starts is honest, and so is every peer it has: any ban is one of an honest peer
/// (issue 15).
pub fn scan_bans(base_dir: &Path) -> Result<crate::report::PeerBans> {
    /// Ban lines kept as examples in the report.
    const EXAMPLES: usize = 5;
    let mut logs: Vec<PathBuf> = std::fs::read_dir(base_dir)
        .with_context(|| format!("cannot list {}", base_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("node-") && n.ends_with(".log"))
        })
        .collect();
    logs.sort();
    let mut bans = crate::report::PeerBans::default();
    for log in logs {
        let bytes =
            std::fs::read(&log).with_context(|| format!("cannot read {}", log.display()))?;
        let name = log.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        for line in String::from_utf8_lossy(&bytes).lines() {
            if let Some(reason) = ban_reason(line) {
                bans.total += 1;
                *bans.by_reason.entry(reason).or_default() += 1;
                if bans.examples.len() < EXAMPLES {
                    bans.examples.push(format!("{name}: {line}"));
                }
            }
        }
    }
    Ok(bans)
}

/// The nodes' log filter: `DPIN_NODE_RUST_LOG` if set (e.g. to add
/// `libp2p_gossipsub::peer_score=debug` when a run shows peers being graylisted), else info with
/// gossipsub's and the swarm's chatter at warn.
pub fn node_log_filter() -> String {
    std::env::var("DPIN_NODE_RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "info,libp2p_gossipsub=warn,libp2p_swarm=warn".to_owned())
}

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`, 100 if unknown).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of a process, in ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bans_are_read_from_the_network_layers_log_line_only() {
        let net = "2026-12-03T01:16:55.957145Z  INFO dpin_node::net: banning peer peer=12D3KooWGj9x reason=\"graylisted\" duration=900s";
        assert_eq!(ban_reason(net).as_deref(), Some("graylisted"));
        // The node's own decision, logged before it asks the network layer (counted there).
        let node = "2026-12-03T01:16:55.957145Z  WARN dpin_node::node: banning peer peer=12D3KooWGj9x reason=\"invalid\" score=9 for_ms=60000";
        assert_eq!(ban_reason(node), None);
        assert_eq!(
            ban_reason("x INFO dpin_node::net: banning peer peer=p").as_deref(),
            Some("?")
        );
        assert_eq!(ban_reason("INFO dpin_node::net: peer connected"), None);

        let dir = std::env::temp_dir().join(format!("dpin-scan-bans-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("node-1.log"),
            format!("a line\n{net}\n{node}\n{net}\n"),
        )
        .unwrap();
        std::fs::write(dir.join("node-2.log"), "nothing\n").unwrap();
        std::fs::write(dir.join("history.jsonl"), format!("{net}\n")).unwrap();
        let bans = scan_bans(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let bans = bans.unwrap();
        assert_eq!(bans.total, 2);
        assert_eq!(bans.by_reason.get("graylisted"), Some(&2));
        assert_eq!(bans.examples.len(), 2);
        assert!(bans.examples[0].starts_with("node-1.log: "));
    }

    #[test]
    fn tcp_port_is_read_from_a_multiaddr() {
        assert_eq!(tcp_port("/ip4/127.0.0.1/tcp/4242/p2p/12D3Koo"), Some(4242));
        assert_eq!(tcp_port("/ip4/127.0.0.1/udp/1/quic-v1"), None);
    }
}
