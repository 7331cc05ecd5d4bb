//! Data-scale bench (issue 14): one node holding N records, for one or more `dpin` binaries
//! side by side on the same data. Not a test (it signs N records and runs each binary for
//! tens of seconds); run it with
//!
//! ```text
//! cargo run --release -p dpin-node --example scalebench -- \
//!     --records 100000 --bin before=/tmp/c-before-dpin --bin after=target/release/dpin
//! ```
//!
//! It writes a data dir holding N signed endpoint records (1,000 zones; endpoints on
//! loopback, which the default probe policy never probes, so the prober does its per-interval
//! work without sending anything) straight into `store.redb` through the node's own store,
//! then, for `--rounds` rounds, for each binary in turn on a fresh copy of that store:
//!
//! * **restart to serving**: from spawning `dpin node` to the first `200` of
//!   `GET /v1/resolve/{name}` for the last name written;
//! * **RSS** (VmRSS) after `--settle` seconds, and the peak (VmHWM);
//! * **idle CPU**: user + system time over the next `--idle` seconds, as a share of one core.
//!
//! * with `--catchup-peers K` (K ≥ 1), **catch-up**: K nodes each start on their own copy of
//!   the store and connect, and the bench waits until they are quiet (their start-up work
//!   done: under 10 % of a core together over a second); then a fresh node with an empty
//!   data dir bootstraps from all of them, and the bench polls its `GET /v1/status`
//!   (`records`) every 200 ms until it holds all N names (a status answer counts the health
//!   table's endpoints by state: at 50 ms that took a few percent of the joiner's CPU). The
//!   rate is N over the time from the joiner's start; its RSS at the end is shown. A joiner
//!   still short after 600 s is reported with the count it reached. Each run also prints the
//!   CPU time the joiner and the peers used (per record received: on a shared machine the
//!   rate follows the CPU share the nodes get, the CPU per record does not), the load
//!   average, the CPU the joiner used after it held every record until it was quiet (work it
//!   left for later, such as the prober's index), and the joiner's sync outcomes
//!   (`duplicate` counts records it received and checked although it held them already),
//!   failed sessions (one fails when a peer refuses one of its requests for budget; the next
//!   starts at a later sync tick) and pushes it refused while catching up.
//!
//! `--reuse` keeps the written store in `--dir` and uses it again on the next run with the
//! same `--records`.
//!
//! Prints each run and, per binary, the medians and the ratio to the first binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

struct Args {
    records: usize,
    bins: Vec<(String, PathBuf)>,
    rounds: usize,
    settle: u64,
    idle: u64,
    dir: PathBuf,
    catchup_peers: usize,
    reuse: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        records: 100_000,
        bins: Vec::new(),
        rounds: 3,
        settle: 5,
        idle: 20,
        dir: std::env::temp_dir().join("dpin-scalebench"),
        catchup_peers: 0,
        reuse: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--records" => a.records = val()?.parse()?,
            "--rounds" => a.rounds = val()?.parse()?,
            "--settle" => a.settle = val()?.parse()?,
            "--idle" => a.idle = val()?.parse()?,
            "--dir" => a.dir = val()?.into(),
            "--catchup-peers" => a.catchup_peers = val()?.parse()?,
            "--reuse" => a.reuse = true,
            "--bin" => {
                let v = val()?;
                let (name, path) = v.split_once('=').context("--bin NAME=PATH")?;
                a.bins.push((name.to_owned(), path.into()));
            }
            other => bail!("unknown flag {other}"),
        }
    }
    if a.bins.is_empty() {
        bail!("give at least one --bin NAME=PATH");
    }
    Ok(a)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes `n` records into `dir/store.redb` ([`dpin_node::benchdata`]); returns the last name
/// and the encoded bytes.
fn generate(dir: &Path, n: usize) -> Result<(String, usize)> {
    let started = Instant::now();
    let expires = now_ms() + 20 * 24 * 3600 * 1000;
    let w = dpin_node::benchdata::write_store(dir, n, expires, |_, _| Ok(()))?;
    eprintln!(
        "wrote {n} records ({:.1} B encoded each) in {:.1} s",
        w.encoded as f64 / n as f64,
        started.elapsed().as_secs_f64()
    );
    Ok((w.last, w.encoded))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The body of a `200` answer to `GET path`, or `None`.
fn http_body(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut all = String::new();
    s.read_to_string(&mut all).ok()?;
    let (head, body) = all.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1)? == "200").then(|| body.to_owned())
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).ok()?;
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn proc_field(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Waits until the processes whose CPU clock ticks `ticks` sums use under 10 % of a core over
/// one second, or `limit` passes; returns the seconds waited (the quiet second included).
fn wait_quiet(ticks: impl Fn() -> u64, limit: Duration) -> f64 {
    let started = Instant::now();
    loop {
        let before = ticks();
        std::thread::sleep(Duration::from_secs(1));
        // Clock ticks are 100 Hz: 10 ticks in a second is 10 % of a core.
        if ticks().saturating_sub(before) < 10 || started.elapsed() > limit {
            return started.elapsed().as_secs_f64();
        }
    }
}

struct Run {
    serving_s: f64,
    rss_kb: u64,
    hwm_kb: u64,
    idle_cpu: f64,
}

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_one(a: &Args, bin: &Path, template: &Path, last: &str) -> Result<Run> {
    let dir = a.dir.join("run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(template.join("store.redb"), dir.join("store.redb"))?;
    let (api, p2p) = (free_port()?, free_port()?);
    let started = Instant::now();
    let child = Command::new(bin)
        .args(["node", "--data-dir"])
        .arg(&dir)
        .args(["--listen", &format!("/ip4/127.0.0.1/tcp/{p2p}")])
        .args(["--api", &format!("127.0.0.1:{api}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let child = Guard(child);
    let pid = child.0.id();
    let path = format!("/v1/resolve/{last}");
    loop {
        if http_status(api, &path) == Some(200) {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("{} not serving after 300 s", bin.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let serving_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(a.settle));
    let t0 = cpu_ticks(pid).context("cpu")?;
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(a.idle));
    let t1 = cpu_ticks(pid).context("cpu")?;
    // Clock ticks are 100 Hz on Linux.
    let idle_cpu = (t1 - t0) as f64 / 100.0 / w0.elapsed().as_secs_f64();
    let rss_kb = proc_field(pid, "VmRSS:").context("rss")?;
    let hwm_kb = proc_field(pid, "VmHWM:").context("hwm")?;
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Run {
        serving_s,
        rss_kb,
        hwm_kb,
        idle_cpu,
    })
}

struct Catchup {
    secs: f64,
    rate: f64,
    rss_kb: u64,
    /// Records the joiner held at the end (all N, unless it ran out of time).
    reached: u64,
    /// CPU seconds the joiner used (user + system), from its start to the end.
    joiner_cpu_s: f64,
    /// CPU seconds all peers used over the same time.
    peers_cpu_s: f64,
    /// The joiner's sync record outcomes (`dpin_records_total{path="sync"}`) and its ingest
    /// drops on the sync push path, as `outcome=count` pairs.
    outcomes: String,
    /// Seconds from the joiner's start until it first held a record, and until it held a
    /// quarter, half and three quarters of them (status polled every 200 ms): where a
    /// catch-up spends its time, start-up or transfer.
    marks: [Option<f64>; 4],
    /// Seconds the peers took to go quiet after the last one started (see [`catch_up`]).
    settled_s: f64,
    /// CPU seconds the joiner used after it held every record, until it was quiet, and how
    /// long that took (the quiet second included).
    after_cpu_s: f64,
    after_s: f64,
}

/// The joiner's sync outcomes from its `/metrics`: how many records it received per outcome
/// (duplicates show the work spent on records it already held), and pushes it refused.
fn sync_outcomes(api: u16) -> String {
    let Some(text) = http_body(api, "/metrics") else {
        return "metrics unavailable".to_owned();
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((key, val)) = line.rsplit_once(' ') else {
            continue;
        };
        if val == "0" {
            continue;
        }
        if let Some(rest) = key.strip_prefix("dpin_records_total{path=\"sync\",outcome=\"") {
            out.push(format!("{}={val}", rest.trim_end_matches("\"}")));
        } else if let Some(name) = ["dpin_sync_failures_total", "dpin_sync_pushes_refused_total"]
            .into_iter()
            .find(|n| key == *n)
        {
            // Sessions that failed, and pushes refused while catching up.
            out.push(format!("{}={val}", &name["dpin_".len()..]));
        } else if key.starts_with("dpin_ingest_dropped_total{path=\"sync") {
            out.push(format!(
                "{}={val}",
                &key["dpin_ingest_dropped_total".len()..]
            ));
        }
    }
    out.join(" ")
}

/// Starts `dpin node` on `dir` (which may hold a store already); returns the child and its
/// API port.
///
/// With `SCALEBENCH_LOGS=DIR` in the environment, the node's stderr goes to
/// `DIR/<data dir's name>.log` (set `RUST_LOG` too to choose what it logs).
fn spawn_node(bin: &Path, dir: &Path, bootstrap: &[String]) -> Result<(Guard, u16, u16)> {
    let (api, p2p) = (free_port()?, free_port()?);
    let mut cmd = Command::new(bin);
    let stderr = match std::env::var_os("SCALEBENCH_LOGS") {
        Some(logs) => {
            let name = dir
                .file_name()
                .map_or("node".into(), |n| n.to_string_lossy());
            let path = Path::new(&logs).join(format!("{name}.log"));
            Stdio::from(
                std::fs::File::create(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?,
            )
        }
        None => Stdio::null(),
    };
    cmd.args(["node", "--data-dir"])
        .arg(dir)
        .args(["--listen", &format!("/ip4/127.0.0.1/tcp/{p2p}")])
        .args(["--api", &format!("127.0.0.1:{api}")])
        .args(["--expected-nodes", "6"])
        .stdout(Stdio::null())
        .stderr(stderr);
    for b in bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    Ok((Guard(child), api, p2p))
}

/// The `records` count and peer id in a node's status.
fn status(api: u16) -> Option<(u64, String)> {
    let v: serde_json::Value = serde_json::from_str(&http_body(api, "/v1/status")?).ok()?;
    Some((v["records"].as_u64()?, v["peer_id"].as_str()?.to_owned()))
}

fn catch_up(a: &Args, bin: &Path, template: &Path, last: &str) -> Result<Catchup> {
    let root = a.dir.join("catchup");
    let _ = std::fs::remove_dir_all(&root);
    let mut peers = Vec::new();
    let mut addrs: Vec<String> = Vec::new();
    for i in 0..a.catchup_peers {
        let dir = root.join(format!("peer{i}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(template.join("store.redb"), dir.join("store.redb"))?;
        let (g, api, p2p) = spawn_node(bin, &dir, &addrs)?;
        let started = Instant::now();
        let id = loop {
            if http_status(api, &format!("/v1/resolve/{last}")) == Some(200) {
                if let Some((_, id)) = status(api) {
                    break id;
                }
            }
            if started.elapsed() > Duration::from_secs(300) {
                bail!("peer {i} not serving after 300 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        addrs.push(format!("/ip4/127.0.0.1/tcp/{p2p}/p2p/{id}"));
        peers.push(g);
    }
    let peer_ticks =
        |peers: &[Guard]| -> u64 { peers.iter().filter_map(|g| cpu_ticks(g.0.id())).sum() };
    // A joiner joins a network that is running, not one still starting: after a restart a
    // node spends seconds of CPU on its own start-up work (the prober's endpoint index and
    // selection, the digest), and with K peers started one after the other that work would
    // run during the catch-up and take its CPU. Wait until the peers together use under 10 %
    // of a core over one second (at most 120 s).
    let settled_s = wait_quiet(|| peer_ticks(&peers), Duration::from_secs(120));
    let peers_before = peer_ticks(&peers);
    let dir = root.join("joiner");
    std::fs::create_dir_all(&dir)?;
    let started = Instant::now();
    let (joiner, api, _) = spawn_node(bin, &dir, &addrs)?;
    // A joiner that has not caught up after 600 s is reported with what it reached (the
    // rate is then that count over 600 s), so a slow binary still gives a figure.
    let mut reached = 0;
    let mut marks = [None; 4];
    loop {
        if let Some((n, _)) = status(api) {
            reached = n;
        }
        let at = started.elapsed().as_secs_f64();
        for (mark, share) in marks.iter_mut().zip([0.0, 0.25, 0.5, 0.75]) {
            if mark.is_none() && reached > 0 && reached as f64 >= share * a.records as f64 {
                *mark = Some(at);
            }
        }
        if reached as usize >= a.records || started.elapsed() > Duration::from_secs(600) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let secs = started.elapsed().as_secs_f64();
    let rss_kb = proc_field(joiner.0.id(), "VmRSS:").context("rss")?;
    // Clock ticks are 100 Hz on Linux.
    let joiner_now = || cpu_ticks(joiner.0.id()).unwrap_or(0);
    let joiner_ticks = joiner_now();
    let joiner_cpu_s = joiner_ticks as f64 / 100.0;
    let peers_cpu_s = peer_ticks(&peers).saturating_sub(peers_before) as f64 / 100.0;
    // Work the joiner left for after it held every record (a joining node's prober indexes
    // the store once it has caught up): its CPU until it is quiet (under 10 % of a core
    // over a second, at most 60 s), counted apart from the catch-up.
    let after_s = wait_quiet(joiner_now, Duration::from_secs(60));
    let after_cpu_s = joiner_now().saturating_sub(joiner_ticks) as f64 / 100.0;
    let outcomes = sync_outcomes(api);
    drop(joiner);
    drop(peers);
    let _ = std::fs::remove_dir_all(&root);
    Ok(Catchup {
        secs,
        rate: reached as f64 / secs,
        rss_kb,
        reached,
        joiner_cpu_s,
        peers_cpu_s,
        outcomes,
        marks,
        settled_s,
        after_cpu_s,
        after_s,
    })
}

/// The 1-minute load average, as the kernel prints it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let a = parse_args()?;
    let template = a.dir.join("template");
    // `--reuse`: keep the written store (and its last name and size, in `template/written`)
    // for later runs with the same `--records` instead of signing N records again.
    let written = template.join("written");
    let kept = std::fs::read_to_string(&written).ok().and_then(|s| {
        let mut l = s.lines();
        let n: usize = l.next()?.parse().ok()?;
        let last = l.next()?.to_owned();
        let encoded: usize = l.next()?.parse().ok()?;
        (n == a.records).then_some((last, encoded))
    });
    let (last, encoded) = match kept.filter(|_| a.reuse) {
        Some(k) => k,
        None => {
            let _ = std::fs::remove_file(&written);
            let (last, encoded) = generate(&template, a.records)?;
            std::fs::write(&written, format!("{}\n{last}\n{encoded}\n", a.records))?;
            (last, encoded)
        }
    };
    let mut runs: Vec<Vec<Run>> = a.bins.iter().map(|_| Vec::new()).collect();
    for round in 0..a.rounds {
        for (i, (name, bin)) in a.bins.iter().enumerate() {
            let r = run_one(&a, bin, &template, &last)?;
            println!(
                "round {round} {name:>8}: serving {:.2} s, RSS {:.1} MB (peak {:.1}), idle CPU {:.2}% of a core",
                r.serving_s,
                r.rss_kb as f64 / 1024.0,
                r.hwm_kb as f64 / 1024.0,
                r.idle_cpu * 100.0
            );
            runs[i].push(r);
        }
    }
    println!(
        "\n{} records, {:.1} MB encoded; medians of {} rounds:",
        a.records,
        encoded as f64 / 1048576.0,
        a.rounds
    );
    let med = |rs: &[Run], f: fn(&Run) -> f64| median(rs.iter().map(f).collect());
    let base = (
        med(&runs[0], |r| r.serving_s),
        med(&runs[0], |r| r.rss_kb as f64),
        med(&runs[0], |r| r.idle_cpu),
    );
    for ((name, _), rs) in a.bins.iter().zip(&runs) {
        let (s, rss, hwm, cpu) = (
            med(rs, |r| r.serving_s),
            med(rs, |r| r.rss_kb as f64),
            med(rs, |r| r.hwm_kb as f64),
            med(rs, |r| r.idle_cpu),
        );
        println!(
            "{name:>8}: serving {s:.2} s ({:.2}x), RSS {:.1} MB ({:.2}x; peak {:.1} MB), idle CPU {:.2}% ({:.2}x)",
            s / base.0,
            rss / 1024.0,
            rss / base.1,
            hwm / 1024.0,
            cpu * 100.0,
            if base.2 > 0.0 { cpu / base.2 } else { f64::NAN },
        );
    }
    if a.catchup_peers > 0 {
        let mut rates: Vec<Vec<f64>> = a.bins.iter().map(|_| Vec::new()).collect();
        for round in 0..a.rounds {
            for (i, (name, bin)) in a.bins.iter().enumerate() {
                let c = catch_up(&a, bin, &template, &last)?;
                println!(
                    "catch-up round {round} {name:>8}: {} of {} records from {} peers in {:.2} s = {:.0} records/s, joiner RSS {:.1} MB, CPU joiner {:.1} s / peers {:.1} s ({:.1} / {:.1} µs per record), load {}, peers quiet {:.1} s before the start\n    joiner after it held them all: {:.1} s of CPU until quiet ({:.1} s); {:.1} µs per record with it\n    joiner held its first record / 25 / 50 / 75 % at {} s\n    joiner sync outcomes: {}",
                    c.reached,
                    a.records,
                    a.catchup_peers,
                    c.secs,
                    c.rate,
                    c.rss_kb as f64 / 1024.0,
                    c.joiner_cpu_s,
                    c.peers_cpu_s,
                    c.joiner_cpu_s * 1e6 / c.reached.max(1) as f64,
                    c.peers_cpu_s * 1e6 / c.reached.max(1) as f64,
                    load_average(),
                    c.settled_s,
                    c.after_cpu_s,
                    c.after_s,
                    (c.joiner_cpu_s + c.after_cpu_s) * 1e6 / c.reached.max(1) as f64,
                    c.marks
                        .iter()
                        .map(|m| m.map_or("-".to_owned(), |m| format!("{m:.1}")))
                        .collect::<Vec<_>>()
                        .join(" / "),
                    c.outcomes,
                );
                rates[i].push(c.rate);
            }
        }
        let base = median(rates[0].clone());
        for ((name, _), rs) in a.bins.iter().zip(rates) {
            let r = median(rs);
            println!(
                "{name:>8}: catch-up median {r:.0} records/s ({:.2}x)",
                r / base
            );
        }
    }
    if !a.reuse {
        let _ = std::fs::remove_dir_all(&a.dir);
    }
    Ok(())
}
