//! `dpin-sim cluster`: starts N real `dpin node` processes on loopback (`dpin_sim::cluster`),
//! publishes a demo name, prints each node's addresses and ready-to-paste `dpin` and `dig`
//! lines, and keeps the nodes running until Ctrl-C.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use dpin_protocol::{Content, Endpoint, RecordBody, ZoneKey};
use dpin_sim::cluster::{self, Cluster, ClusterOptions, Layout};
use dpin_sim::nodeapi::Api;

use super::{new_base_dir, terminated};

pub(crate) async fn cluster_main(
    nodes: usize,
    base_dir: Option<PathBuf>,
    dns: bool,
    dpin: Option<PathBuf>,
) -> Result<()> {
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let dpin = match dpin {
        Some(p) => p,
        None => cluster::default_dpin()?,
    };
    let base_dir = base_dir.unwrap_or_else(|| new_base_dir("cluster"));
    let opts = ClusterOptions {
        dpin: dpin.clone(),
        base_dir: base_dir.clone(),
        nodes,
        dns,
        layout: Layout::Loopback,
        node_args: Vec::new(),
        faketime: None,
    };
    println!(
        "starting {nodes} dpin nodes; data, logs and pidfiles in {}",
        base_dir.display()
    );
    let mut cluster = tokio::select! {
        c = Cluster::start(&opts) => c?,
        _ = terminated() => bail!("interrupted during start"),
    };
    let result = serve_cluster(&mut cluster, &dpin).await;
    println!("stopping {} nodes ...", cluster.nodes.len());
    cluster.shutdown().await;
    println!("stopped; data kept in {}", base_dir.display());
    result
}

async fn serve_cluster(cluster: &mut Cluster, dpin: &Path) -> Result<()> {
    let api = Api::new().context("cannot build the HTTP client")?;
    let n = cluster.nodes.len();
    if !cluster
        .wait_connected(&api, n.saturating_sub(1), Duration::from_secs(30))
        .await
    {
        eprintln!("dpin-sim: warning: not every node sees every peer yet");
    }
    // A demo name, so the printed commands work right away.
    let key = ZoneKey::from_seed(rand::random());
    let key_path = cluster.base_dir.join("demo.key");
    write_key(&key_path, &key.to_key_file())?;
    let demo_ep: Endpoint = "127.0.0.1:8080"
        .parse()
        .map_err(|e| anyhow!("demo endpoint: {e}"))?;
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        + 24 * 3600 * 1000;
    let record = RecordBody {
        zone: key.zone(),
        label: "demo".to_owned(),
        seq: 1,
        expires_at_ms: expires,
        content: Content::Endpoints(vec![demo_ep]),
    }
    .sign(&key)
    .map_err(|e| anyhow!("demo record: {e}"))?;
    let mut published = false;
    for addr in cluster.apis() {
        if api
            .publish(addr, &record, Duration::from_secs(2))
            .await
            .outcome
            .is_ack()
        {
            published = true;
            break;
        }
    }
    let name = format!("demo.{}", key.zone());
    // The CLI lines need the real `dpin` (the embedded one only runs nodes).
    let embedded = std::env::current_exe().is_ok_and(|e| e == dpin);
    let dpin_cli = if embedded {
        PathBuf::from("dpin")
    } else {
        dpin.to_path_buf()
    };
    let dpin = dpin_cli.as_path();
    let apis: Vec<String> = cluster.apis().iter().map(ToString::to_string).collect();
    println!();
    for node in &cluster.nodes {
        let Some(info) = &node.info else { continue };
        println!(
            "node {}: pid {:<7} api {:<21} dns {:<21} peer {}",
            node.index,
            node.pid().unwrap_or(0),
            info.api,
            info.dns.map_or("-".to_owned(), |d| d.to_string()),
            info.peer_id
        );
    }
    if let Some(note) = &cluster.dns_note {
        println!("DNS is off: {note}");
    }
    println!();
    if published {
        println!(
            "demo name published: {name} -> 127.0.0.1:8080 (key {})",
            key_path.display()
        );
    } else {
        println!("warning: could not publish the demo name");
    }
    if embedded {
        println!("(nodes run from dpin-sim itself; build the CLI with: cargo build --release -p dpin-node)");
    }
    println!("try:");
    println!(
        "  {} resolve --api {} {name}",
        dpin.display(),
        apis.join(",")
    );
    for node in &cluster.nodes {
        if let Some(d) = node.info.as_ref().and_then(|i| i.dns) {
            println!("  dig @{} -p {} {name}.dpin A", d.ip(), d.port());
        }
    }
    println!(
        "  {} publish --key {} --api {} demo 127.0.0.1:9090",
        dpin.display(),
        key_path.display(),
        apis.join(",")
    );
    println!(
        "  {} status --api {}",
        dpin.display(),
        apis.first().cloned().unwrap_or_default()
    );
    println!(
        "stop with Ctrl-C here, or: dpin-sim stop --base-dir {}",
        cluster.base_dir.display()
    );
    terminated().await;
    Ok(())
}

fn write_key(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
