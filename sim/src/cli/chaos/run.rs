//! The chaos run on the async runtime: starts the cluster (loopback or namespaces), runs the
//! workload, the nemesis and the seed's race through the real CLI together while printing
//! progress, heals, lets the cluster converge, then runs the checker and writes the report,
//! the history and the SVG timeline.

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dpin_sim::checker::{self, CheckConfig};
use dpin_sim::cluster::{self, Cluster, ClusterOptions, Layout};
use dpin_sim::history::Proto;
use dpin_sim::nemesis::{Nemesis, NemesisConfig};
use dpin_sim::netns::Netns;
use dpin_sim::nodeapi::Api;
use dpin_sim::race::{self, RaceConfig};
use dpin_sim::report::{Report, RunMeta};
use dpin_sim::svg;
use dpin_sim::wan::Wan;
use dpin_sim::workload::{self, Ctx, Plan, Recorder, Target, WorkloadConfig};

use super::args::ChaosArgs;
use super::{node_supports, sibling, RunSetup};
use crate::cli::{new_base_dir, terminated};

pub(crate) async fn run_chaos(
    args: &ChaosArgs,
    seed: u64,
    duration: Duration,
    ns: Option<&Netns>,
    wan: Option<&Wan>,
    setup: RunSetup,
) -> Result<Report> {
    let dpin = match &args.dpin {
        Some(p) => p.clone(),
        None => cluster::default_dpin()?,
    };
    // Workload endpoints (127.x addresses) must never be contacted: no probing at all.
    let mut node_args = vec!["--no-probe".to_owned()];
    let compaction = if node_supports(&dpin, "--compaction-horizon-ms") {
        node_args.extend([
            "--compaction-horizon-ms".to_owned(),
            setup.horizon_ms.to_string(),
        ]);
        Some(setup.horizon_ms)
    } else {
        eprintln!(
            "dpin-sim: warning: {} has no --compaction-horizon-ms; records expire but are not compacted during the run",
            dpin.display()
        );
        None
    };
    // Mesh and discovery sized to the cluster (a node assumes 5 otherwise).
    if node_supports(&dpin, "--expected-nodes") {
        node_args.extend(["--expected-nodes".to_owned(), args.nodes.to_string()]);
    }
    let base_dir = args
        .base_dir
        .clone()
        .unwrap_or_else(|| new_base_dir("chaos"));
    std::fs::create_dir_all(&base_dir)
        .with_context(|| format!("cannot create {}", base_dir.display()))?;
    let layout = match ns {
        Some(n) => {
            std::fs::write(base_dir.join("netns.txt"), n.names().join("\n"))
                .context("cannot record namespace names")?;
            Layout::Netns {
                namespaces: (1..=args.nodes).map(|k| n.node_ns(k)).collect(),
                data: (1..=args.nodes).map(|k| n.data_addr(k)).collect(),
                mgmt: (1..=args.nodes).map(|k| n.mgmt_addr(k)).collect(),
            }
        }
        None => Layout::Loopback,
    };
    let dns_bind = match ns {
        Some(n) => IpAddr::V4(n.hub_addr()),
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    eprintln!(
        "dpin-sim: starting {} nodes ({}) in {} ({})",
        args.nodes,
        dpin.display(),
        base_dir.display(),
        if ns.is_some() {
            "network namespaces"
        } else {
            "loopback"
        }
    );
    let opts = ClusterOptions {
        dpin,
        base_dir: base_dir.clone(),
        nodes: args.nodes,
        dns: !args.no_dns,
        layout,
        node_args,
        faketime: setup.faketime.clone(),
    };
    // Listen for Ctrl-C/SIGTERM before the first node starts: from then on the default action
    // (dying at once) would leave the nodes behind.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signal_task = tokio::spawn(async move {
        terminated().await;
        eprintln!("\ndpin-sim: interrupted; healing and stopping the nodes ...");
        let _ = stop_tx.send(true);
    });
    let mut start_stop = stop_rx.clone();
    // Dropping a half-started cluster kills its nodes (kill_on_drop).
    let mut cluster = tokio::select! {
        c = Cluster::start(&opts) => c?,
        _ = start_stop.wait_for(|s| *s) => bail!("interrupted"),
    };
    let out = chaos_phases(
        args,
        seed,
        duration,
        wan,
        &mut cluster,
        stop_rx.clone(),
        dns_bind,
        setup,
        compaction,
        &base_dir,
    )
    .await;
    cluster.shutdown().await;
    signal_task.abort();
    if *stop_rx.borrow() {
        bail!("interrupted");
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn chaos_phases(
    args: &ChaosArgs,
    seed: u64,
    duration: Duration,
    wan: Option<&Wan>,
    cluster: &mut Cluster,
    stop: tokio::sync::watch::Receiver<bool>,
    dns_bind: IpAddr,
    setup: RunSetup,
    compaction: Option<u64>,
    base_dir: &Path,
) -> Result<Report> {
    let api = Api::new().context("cannot build the HTTP client")?;
    let n = cluster.nodes.len();
    let mut harness_errors = Vec::new();
    if !cluster
        .wait_connected(&api, n - 1, Duration::from_secs(30))
        .await
    {
        harness_errors.push("the mesh did not form within 30 s of start".to_owned());
    }
    let targets: Arc<Vec<Target>> = Arc::new(
        cluster
            .nodes
            .iter()
            .filter_map(|nd| {
                nd.info.as_ref().map(|i| Target {
                    node: nd.index,
                    api: i.api,
                    dns: i.dns,
                })
            })
            .collect(),
    );
    let wcfg = WorkloadConfig {
        seed,
        writers: 3,
        names_per_writer: 4,
        race_names: 2,
        write_rate: args.write_rate,
        read_rate: args.read_rate,
        dns_bind,
        record_ttl_ms: args.record_ttl_ms,
        // Ephemeral names stop early enough to expire and be compacted before the end.
        ephemeral_until: duration
            .saturating_sub(Duration::from_millis(
                args.record_ttl_ms + setup.horizon_ms + 5000,
            ))
            .max(duration / 4),
    };
    let plan = Arc::new(Plan::new(&wcfg));
    let rec = Arc::new(Recorder::new());
    let setup_ctx = Ctx {
        rec: rec.clone(),
        api: api.clone(),
        targets: targets.clone(),
        deadline: Instant::now() + Duration::from_secs(60),
        probe_tx: None,
        stop: stop.clone(),
    };
    let unacked = workload::setup(&setup_ctx, &plan).await;
    if !unacked.is_empty() {
        harness_errors.push(format!(
            "setup: first write not acknowledged for {unacked:?}"
        ));
    }
    if !workload::wait_replicated(&setup_ctx, &plan, Duration::from_secs(30)).await {
        harness_errors.push("setup: names not on every node within 30 s".to_owned());
    }

    // Workload + nemesis.
    let work_start_ms = rec.now_ms();
    let deadline = Instant::now() + duration;
    let (probe_tx, probe_rx) = tokio::sync::mpsc::channel(1);
    let ctx = Ctx {
        rec: rec.clone(),
        api: api.clone(),
        targets: targets.clone(),
        deadline,
        probe_tx: Some(probe_tx),
        stop: stop.clone(),
    };
    let dns = cluster.dns && targets.iter().all(|t| t.dns.is_some());
    eprintln!(
        "dpin-sim: {} names, {} writers + race, readers over HTTP{}; running {:.0} s with faults [{}]",
        plan.names.len(),
        wcfg.writers,
        if dns { " and DNS" } else { "" },
        duration.as_secs_f64(),
        args.faults.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(",")
    );
    let mut tasks = Vec::new();
    for w in 0..wcfg.writers {
        tasks.push(tokio::spawn(workload::writer(
            ctx.clone(),
            plan.clone(),
            w,
            wcfg.write_rate / wcfg.writers as f64,
            seed,
            wcfg.ephemeral_until,
        )));
    }
    let key_file = base_dir.join("race-zone.key");
    race::write_key_file(&key_file, &plan)
        .with_context(|| format!("cannot write {}", key_file.display()))?;
    tasks.push(tokio::spawn(race::race(
        ctx.clone(),
        plan.clone(),
        RaceConfig {
            dpin: cluster.dpin.clone(),
            key_file,
            plan_dir: base_dir.join("plans"),
            period: Duration::from_millis(1500),
            seed,
            paths: args.race_paths,
        },
    )));
    tasks.push(tokio::spawn(workload::reader(
        ctx.clone(),
        plan.clone(),
        0,
        Proto::Http,
        wcfg.read_rate,
        dns_bind,
    )));
    if dns {
        tasks.push(tokio::spawn(workload::reader(
            ctx.clone(),
            plan.clone(),
            1,
            Proto::Dns,
            wcfg.read_rate,
            dns_bind,
        )));
    }
    tasks.push(tokio::spawn(workload::prober(ctx.clone(), probe_rx)));
    let progress = tokio::spawn(progress(ctx.clone(), duration));
    drop(ctx);

    let mut nemesis = Nemesis::new(NemesisConfig {
        faults: args.faults.to_vec(),
        max_down: args.max_down,
        seed,
        fault_ms: (1000, 5000),
        gap_ms: (1000, 4000),
        skew_ms: i64::try_from(args.skew_ms).unwrap_or(i64::MAX / 2),
        // Long enough for records to expire and be compacted by the wrong clock.
        skew_fault_ms: (
            args.record_ttl_ms.max(5000),
            (args.record_ttl_ms + setup.horizon_ms).max(10_000),
        ),
    });
    // Faults end a little before the workload does, so the last seconds show the recovery.
    let quiet_tail = Duration::from_secs(2).min(duration / 4);
    nemesis
        .run(cluster, wan, &rec, deadline - quiet_tail, &stop)
        .await;
    nemesis.heal_all(cluster, wan, &rec).await;
    let mut stop_wait = stop.clone();
    tokio::select! {
        _ = tokio::time::sleep_until(deadline.into()) => {}
        _ = stop_wait.wait_for(|s| *s) => {}
    }
    let work_end_ms = rec.now_ms();
    // Every task loop ends at the deadline; the longest single step is a write failing over
    // across all nodes.
    let join_limit = workload::WRITE_TIMEOUT * (n as u32 + 2) + Duration::from_secs(5);
    for t in tasks {
        let abort = t.abort_handle();
        if tokio::time::timeout(join_limit, t).await.is_err() {
            abort.abort();
            harness_errors.push("a workload task did not stop in time".to_owned());
        }
    }
    let _ = progress.await;
    if *stop.borrow() {
        bail!("interrupted");
    }
    // Heal (already done), converge, final reads.
    nemesis.heal_all(cluster, wan, &rec).await;
    // Heal probes end within their window.
    tokio::time::sleep(Duration::from_millis(200)).await;
    harness_errors.extend(nemesis.errors.iter().cloned());
    eprintln!("dpin-sim: workload done; waiting for convergence (at most 30 s) ...");
    let convergence = workload::wait_converged(&api, &targets, Duration::from_secs(30))
        .await
        .map(|d| d.as_secs_f64());
    workload::final_reads(&rec, &api, &targets, &plan, Duration::from_secs(60)).await;

    let history = rec.history();
    let findings = checker::check(
        &history,
        &CheckConfig {
            stale_bound_ms: args.stale_bound_ms,
            ..CheckConfig::default()
        },
    );
    let history_path = sibling(&args.report, "history.jsonl");
    history
        .write_jsonl(&history_path)
        .with_context(|| format!("cannot write {}", history_path.display()))?;
    let report = Report::new(
        RunMeta {
            nodes: n,
            duration_s: (work_end_ms - work_start_ms) / 1000.0,
            seed,
            counts: nemesis.counts.clone(),
            convergence,
            partition_method: setup.partition_method,
            clock_skew: setup.clock_skew,
            record_ttl_ms: args.record_ttl_ms,
            compaction_horizon_ms: compaction,
            probing: "off: every node runs with --no-probe, so the workload's 127.x endpoints are never contacted".to_owned(),
            race_cli: format!(
                "{} (paths: {})",
                cluster.dpin.display(),
                args.race_paths.as_str()
            ),
            dns,
            dns_note: cluster
                .dns_note
                .clone()
                .or_else(|| args.no_dns.then(|| "--no-dns given".to_owned())),
            stale_bound_ms: args.stale_bound_ms,
            faults: args.faults.iter().map(|f| f.as_str().to_owned()).collect(),
            max_down: args.max_down,
            replay: setup.replay,
            history: history_path.display().to_string(),
            base_dir: base_dir.display().to_string(),
            dpin: cluster.dpin.display().to_string(),
            harness_errors,
            link_model: wan.map(Wan::model),
            wan: wan.map(Wan::counts),
            partition_groups: dpin_sim::report::partition_groups(&history),
        },
        &findings,
    );
    let json = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
    std::fs::write(&args.report, json + "\n")
        .with_context(|| format!("cannot write {}", args.report.display()))?;
    let title = format!(
        "dpin chaos: {} nodes, seed {}, {} — {}\nlinks: {}; max down {}; {} group partitions",
        n,
        seed,
        args.faults
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(","),
        if report.pass { "PASS" } else { "FAIL" },
        wan.map_or("loopback".to_owned(), |w| w.model().describe()),
        args.max_down,
        report.partition_groups.len()
    );
    let picture = svg::render(&history, &findings, n, work_end_ms / 1000.0, &title);
    std::fs::write(&args.svg, picture)
        .with_context(|| format!("cannot write {}", args.svg.display()))?;
    eprintln!(
        "dpin-sim: report {}, timeline {}",
        args.report.display(),
        args.svg.display()
    );
    Ok(report)
}

/// Prints one progress line per second on stderr until the workload ends.
async fn progress(ctx: Ctx, duration: Duration) {
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while ctx.running() {
        tick.tick().await;
        let c = &ctx.rec.counters;
        let active = ctx.rec.active.lock().map(|a| a.clone()).unwrap_or_default();
        let now_ms = ctx.rec.now_ms();
        let faults = if active.is_empty() {
            "none".to_owned()
        } else {
            let left = |f: &workload::ActiveFault| ((f.until_ms - now_ms) / 1000.0).max(0.0);
            // A group partition is one fault: its side A, then the count of side B.
            let side_a: Vec<String> = active
                .iter()
                .filter(|f| f.group == Some(0))
                .map(|f| format!("n{}", f.node))
                .collect();
            let side_b = active.iter().filter(|f| f.group == Some(1)).count();
            let mut parts: Vec<String> = active
                .iter()
                .filter(|f| f.group.is_none())
                .map(|f| format!("{} n{} ({:.1}s left)", f.kind.as_str(), f.node, left(f)))
                .collect();
            if let Some(f) = active.iter().find(|f| f.group.is_some()) {
                parts.push(format!(
                    "{} A [{}] | B {side_b} nodes ({:.1}s left)",
                    f.kind.as_str(),
                    side_a.join(" "),
                    left(f)
                ));
            }
            parts.join(", ")
        };
        let line = format!(
            "[{:>5.1}/{:.0}s] ops {} | reads ok {} no-answer {} | failed {} no endpoints {} | acked writes {} stale refused {} | fault: {}",
            start.elapsed().as_secs_f64(),
            duration.as_secs_f64(),
            c.ops.load(Ordering::Relaxed),
            c.reads_ok.load(Ordering::Relaxed),
            c.unanswered.load(Ordering::Relaxed),
            c.failed_rounds.load(Ordering::Relaxed),
            c.empty.load(Ordering::Relaxed),
            c.acked.load(Ordering::Relaxed),
            c.refused_stale.load(Ordering::Relaxed),
            faults
        );
        if tty {
            eprint!("\r\x1b[K{line}");
        } else {
            eprintln!("{line}");
        }
    }
    if tty {
        eprintln!();
    }
}
