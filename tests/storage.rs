//! Offers and replicated blobs with real processes: a 5-node cluster, 4 offering storage;
//! put with K=3, lose a holder, read from a non-holder, watch repair restore K copies, corrupt a
//! chunk and watch it be detected and repaired, offers lapse, compute filters.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use dpin_tests::{cli, ok, wait_connected, wait_until, NodeProc};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_dpin-e2e");
const BOUND: Duration = Duration::from_secs(30);

fn bin() -> &'static Path {
    Path::new(BIN)
}

fn json(out: std::process::Output) -> Result<Value> {
    Ok(serde_json::from_str(&ok(out)?)?)
}

/// The live offers `dpin offers --api API FILTERS... --json` lists.
fn offers(api: &str, filters: &[&str]) -> Result<Vec<Value>> {
    let mut args = vec!["offers", "--api", api];
    args.extend_from_slice(filters);
    args.push("--json");
    Ok(json(cli(bin(), &args)?)?["offers"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Complete copies and holder peer ids of `hash` as seen through `api`.
fn holders(api: &str, hash: &str) -> Option<(u64, Vec<String>)> {
    let v = json(cli(bin(), &["blob", "--api", api, hash, "--json"]).ok()?).ok()?;
    let ids = v["holders"]
        .as_array()?
        .iter()
        .filter(|h| h["chunks"] == h["total"])
        .filter_map(|h| h["peer_id"].as_str().map(str::to_owned))
        .collect();
    Some((v["complete_copies"].as_u64()?, ids))
}

#[test]
fn blobs_survive_a_holder_loss_and_corruption_and_offers_lapse() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let fast = [
        "--no-probe",
        "--offer-refresh-ms",
        "500",
        "--repair-interval-ms",
        "500",
        "--scrub-interval-ms",
        "1000",
    ];
    let mut storage = fast.to_vec();
    storage.extend_from_slice(&["--offer-storage", "64M", "--region", "eu", "--price", "0.1"]);
    let mut compute = fast.to_vec();
    compute.extend_from_slice(&[
        "--offer-compute",
        "16",
        "--memory",
        "64G",
        "--gpus",
        "2",
        "--region",
        "us",
        "--price",
        "2.5",
    ]);
    // Node 0 offers compute only; nodes 1-4 offer storage.
    let n0 = NodeProc::start(bin(), &dir.path().join("n0"), &[], &compute)?;
    let boot = vec![n0.bootstrap_addr()];
    let mut nodes = vec![n0];
    for i in 1..5 {
        nodes.push(NodeProc::start(
            bin(),
            &dir.path().join(format!("n{i}")),
            &boot,
            &storage,
        )?);
    }
    wait_connected(&nodes, BOUND)?;
    let api0 = nodes[0].api.clone();
    wait_until(BOUND, "4 storage offers", || {
        (offers(&api0, &["--kind", "storage"]).ok()?.len() == 4).then_some(())
    })?;
    // Compute filters return the right node and nothing else.
    let found = offers(
        &nodes[3].api,
        &["--kind", "compute", "--min-gpus", "2", "--min-cores", "8"],
    )?;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["peer_id"], nodes[0].peer_id.as_str());
    assert_eq!(found[0]["memory_bytes"], 64u64 << 30);
    for filter in [
        ["--min-gpus", "3"],
        ["--max-price", "1"],
        ["--region", "eu"],
    ] {
        let found = offers(&nodes[3].api, &["--kind", "compute", filter[0], filter[1]])?;
        assert!(found.is_empty(), "{filter:?}: {found:?}");
    }

    // Put 8 MiB with K=3 through the compute node.
    let data: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let file = dir.path().join("file.bin");
    std::fs::write(&file, &data)?;
    let put = json(cli(
        bin(),
        &[
            "put",
            "--api",
            &api0,
            file.to_str().unwrap_or_default(),
            "--replicas",
            "3",
            "--json",
        ],
    )?)?;
    let hash = put["hash"].as_str().unwrap_or_default().to_owned();
    assert_eq!(put["size"], 8u64 << 20);
    assert_eq!(put["holders"].as_array().map(Vec::len), Some(3));
    let (copies, before) = holders(&api0, &hash).unwrap_or_default();
    assert_eq!(copies, 3);
    // A put larger than any node can hold fails with a clear error.
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![1u8; 70 << 20])?;
    let out = cli(
        bin(),
        &["put", "--api", &api0, big.to_str().unwrap_or_default()],
    )?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("insufficient_storage"));

    // SIGKILL one holder.
    let victim = nodes
        .iter()
        .position(|n| before.contains(&n.peer_id))
        .unwrap_or(1);
    let victim_peer = nodes[victim].peer_id.clone();
    nodes[victim].kill();
    let killed = Instant::now();
    // Read from the node that is not a holder (the compute node): identical bytes.
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
    assert!(
        std::fs::read(&out_file)? == data,
        "bytes differ after a holder died"
    );
    // Its offers lapse, and K=3 live copies are back.
    wait_until(BOUND, "the killed node's offer to lapse", || {
        let gone = offers(&api0, &[])
            .ok()?
            .iter()
            .all(|o| o["peer_id"] != victim_peer.as_str());
        gone.then_some(())
    })?;
    wait_until(BOUND, "3 complete copies again", || {
        let (copies, ids) = holders(&api0, &hash)?;
        (copies == 3 && !ids.contains(&victim_peer)).then_some(())
    })?;
    eprintln!(
        "K restored {:?} after the holder was killed",
        killed.elapsed()
    );

    // Corrupt a chunk on a surviving holder: the scrub finds it, deletes it, repair refetches.
    let (_, now_holders) = holders(&api0, &hash).unwrap_or_default();
    let h = nodes
        .iter()
        .find(|n| now_holders.contains(&n.peer_id))
        .map(|n| n.data_dir.join("blobs").join(&hash).join("3"))
        .unwrap_or_default();
    let mut bytes = std::fs::read(&h)?;
    bytes[100] ^= 0xff;
    std::fs::write(&h, &bytes)?;
    wait_until(
        BOUND,
        "the corrupt chunk to be detected and repaired",
        || {
            let fixed = std::fs::read(&h).ok()?;
            (fixed.len() == bytes.len() && fixed[100] == bytes[100] ^ 0xff).then_some(())
        },
    )?;
    ok(cli(
        bin(),
        &[
            "get",
            "--api",
            &nodes[4 - usize::from(victim == 4)].api,
            &hash,
            "--out",
            out_file.to_str().unwrap_or_default(),
        ],
    )?)?;
    assert!(
        std::fs::read(&out_file)? == data,
        "bytes differ after repair"
    );
    Ok(())
}
