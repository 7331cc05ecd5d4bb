//! Offers and replicated blobs with real processes: a 5-node cluster, 4 offering storage;
//! put with K=3, lose a holder, read from a non-holder, watch repair restore K copies, corrupt a
//! chunk and watch it be detected and repaired, offers lapse, compute filters. A second cluster
//! checks that put and repair agree on the holders when a candidate has no room (a K=3 blob
//! once got a 4th copy that way). A node restarted under a clock 10 minutes behind (libfaketime)
//! keeps refreshing its offers and can re-put a blob: its own seqs stay above its held floors.
//! A 4-node cluster checks the replication gauge: one watcher per blob, full, then under with
//! the missing copy counted once a holder dies and no storage node is left to take its place.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use dpin_tests::{cli, faketime, ok, wait_connected, wait_until, NodeProc};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_dpin-e2e");
const BOUND: Duration = Duration::from_secs(30);
/// API timeout for the CLI calls here: the CLI's default (500 ms) is for interactive use, and a
/// debug-build node on a loaded 2-core machine can take longer to answer while it moves blobs.
const CLI_TIMEOUT_MS: &str = "10000";

/// The tests here each run a cluster that moves tens of MiB through debug builds; one cluster
/// at a time keeps them from starving each other on a small machine.
static ONE_CLUSTER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_cluster_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A test that panicked while holding the lock says nothing about the next one.
    ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn bin() -> &'static Path {
    Path::new(BIN)
}

/// `len` bytes of a pattern that differs for each `seed`.
fn pattern(len: u32, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i.wrapping_add(seed.wrapping_mul(7919))
                .wrapping_mul(2654435761)
                >> 13) as u8
        })
        .collect()
}

/// `dpin put --api API FILE --replicas K --json`.
fn put(api: &str, file: &Path, replicas: &str) -> Result<Value> {
    let file = file.to_str().unwrap_or_default();
    json(cli(
        bin(),
        &["put", "--api", api, file, "--replicas", replicas, "--json"],
    )?)
}

fn json(out: std::process::Output) -> Result<Value> {
    Ok(serde_json::from_str(&ok(out)?)?)
}

/// The live offers `dpin offers --api API FILTERS... --json` lists.
fn offers(api: &str, filters: &[&str]) -> Result<Vec<Value>> {
    let mut args = vec!["offers", "--api", api, "--timeout-ms", CLI_TIMEOUT_MS];
    args.extend_from_slice(filters);
    args.push("--json");
    Ok(json(cli(bin(), &args)?)?["offers"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Complete copies and holder peer ids of `hash` as seen through `api`.
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
    let v = json(cli(bin(), &args).ok()?).ok()?;
    // A storage node that did not answer (a loaded machine) may hold a copy: this answer is
    // no count at all, so it is not read as one.
    if !v["unanswered"].as_array()?.is_empty() {
        return None;
    }
    let ids = v["holders"]
        .as_array()?
        .iter()
        .filter(|h| h["chunks"] == h["total"])
        .filter_map(|h| h["peer_id"].as_str().map(str::to_owned))
        .collect();
    Some((v["complete_copies"].as_u64()?, ids))
}

/// [`holders`], asked again until every storage node answered.
fn census(api: &str, hash: &str) -> Result<(u64, Vec<String>)> {
    wait_until(BOUND, "every storage node to answer a census", || {
        holders(api, hash)
    })
}

#[test]
fn blobs_survive_a_holder_loss_and_corruption_and_offers_lapse() -> Result<()> {
    let _cluster = one_cluster_at_a_time();
    let dir = dpin_tests::test_dir()?;
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
    let mut nodes = dpin_tests::cluster_with(bin(), dir.path(), &compute, 4, &storage)?;
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
    let (copies, before) = census(&api0, &hash)?;
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
    let (_, now_holders) = census(&api0, &hash)?;
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

/// Put skips a node whose capacity could hold a blob but whose free room cannot; repair must
/// agree with put (one placement rule) and never add a copy there. Before the shared rule,
/// repair ranked candidates by capacity alone, so that node pulled a 4th copy of a K=3 blob,
/// past what it offered.
#[test]
fn repair_adds_no_copy_on_a_node_that_put_skipped_for_lack_of_room() -> Result<()> {
    let _cluster = one_cluster_at_a_time();
    let dir = dpin_tests::test_dir()?;
    let fast = [
        "--no-probe",
        "--offer-refresh-ms",
        "300",
        "--repair-interval-ms",
        "200",
        "--scrub-interval-ms",
        "10000",
    ];
    let with_storage = |bytes: &'static str| {
        let mut args = fast.to_vec();
        args.extend_from_slice(&["--offer-storage", bytes]);
        args
    };
    // Three roomy nodes and a small one (8 MiB), last.
    let n0 = NodeProc::start(bin(), &dir.path().join("n0"), &[], &with_storage("64M"))?;
    let boot = vec![n0.bootstrap_addr()];
    let mut nodes = vec![n0];
    for (i, size) in [(1, "64M"), (2, "64M"), (3, "8M")] {
        let data_dir = dir.path().join(format!("n{i}"));
        nodes.push(NodeProc::start(
            bin(),
            &data_dir,
            &boot,
            &with_storage(size),
        )?);
    }
    wait_connected(&nodes, BOUND)?;
    let api = nodes[0].api.clone();
    let small = nodes[3].peer_id.clone();
    wait_until(BOUND, "4 storage offers on every node", || {
        nodes
            .iter()
            .all(|n| offers(&n.api, &["--kind", "storage"]).is_ok_and(|o| o.len() == 4))
            .then_some(())
    })?;

    // A 5 MiB blob on all four nodes leaves the small one 3 MiB free.
    let fill = dir.path().join("fill.bin");
    std::fs::write(&fill, pattern(5 << 20, 0))?;
    let put_fill = put(&api, &fill, "4")?;
    assert_eq!(put_fill["holders"].as_array().map(Vec::len), Some(4));
    wait_until(
        BOUND,
        "the small node to offer 3 MiB free everywhere",
        || {
            nodes
                .iter()
                .all(|n| {
                    offers(&n.api, &["--kind", "storage"]).is_ok_and(|o| {
                        o.iter().any(|o| {
                            o["peer_id"] == small.as_str() && o["free_bytes"] == 3u64 << 20
                        })
                    })
                })
                .then_some(())
        },
    )?;

    // A 4 MiB blob whose rendezvous order ranks the small node among the first three: it
    // could hold 4 MiB (capacity 8 MiB), but has no room now.
    let file = dir.path().join("file.bin");
    let ids: Vec<&str> = nodes.iter().map(|n| n.peer_id.as_str()).collect();
    let mut hash = String::new();
    for seed in 1..200 {
        std::fs::write(&file, pattern(4 << 20, seed))?;
        let index = dpin_node::blobs::index_file(&file, dpin_protocol::blob::DEFAULT_CHUNK_BYTES)?;
        let root = dpin_protocol::blob::root_of(&index.hashes);
        if dpin_node::blobs::rank_ids(&root, &ids)[..3].contains(&small) {
            hash = hex::encode(root);
            break;
        }
    }
    assert!(
        !hash.is_empty(),
        "no seed ranks the small node in the first three"
    );
    let put_file = put(&api, &file, "3")?;
    assert_eq!(put_file["hash"], hash.as_str());
    let put_holders: Vec<&str> = put_file["holders"]
        .as_array()
        .map(|h| h.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(put_holders.len(), 3);
    assert!(
        !put_holders.contains(&small.as_str()),
        "put used a node without room"
    );

    // Absence needs a window: 3 s is 15 repair rounds on every node, and the old rule copied
    // within one or two.
    let held_by_small = nodes[3].data_dir.join("blobs").join(&hash);
    let window = Instant::now() + Duration::from_secs(3);
    while Instant::now() < window {
        assert!(
            !held_by_small.exists(),
            "repair copied a K=3 blob onto the node put skipped for lack of room"
        );
        let (copies, _) = census(&api, &hash)?;
        assert_eq!(copies, 3, "a K=3 blob must have exactly 3 copies");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Expiry of the storage offer of `peer` as `api` lists it, if live there.
fn offer_expiry(api: &str, peer: &str) -> Option<u64> {
    offers(api, &["--kind", "storage"])
        .ok()?
        .iter()
        .find(|o| o["peer_id"] == peer)?["expires_at_ms"]
        .as_u64()
}

/// A node's own offers and manifests use the wall clock (ms) as seq. Restarted on the same data
/// dir with its clock 10 minutes behind, its refreshes used to carry seqs below the floors it
/// held, so every one was refused as stale: its offer froze (old free room; had it died, it
/// would have looked alive for 10 minutes) and re-putting a blob failed. Now each seq is at
/// least one above the held floor.
#[test]
fn own_offers_and_manifests_stay_monotonic_after_the_clock_steps_back() -> Result<()> {
    let ten_minutes_behind = faketime("-10m")?;
    let _cluster = one_cluster_at_a_time();
    let dir = dpin_tests::test_dir()?;
    let args = [
        "--no-probe",
        "--offer-refresh-ms",
        "300",
        "--repair-interval-ms",
        "200",
        "--scrub-interval-ms",
        "10000",
        "--offer-storage",
        "64M",
    ];
    let mut node = NodeProc::start(bin(), &dir.path().join("n0"), &[], &args)?;
    let peer = node.peer_id.clone();
    wait_until(BOUND, "the node's storage offer", || {
        offer_expiry(&node.api, &peer)
    })?;
    let file = dir.path().join("file.bin");
    std::fs::write(&file, pattern(2 << 20, 0))?;
    let first = put(&node.api, &file, "1")?;
    let before = offer_expiry(&node.api, &peer).unwrap_or_default();

    node.set_env(ten_minutes_behind);
    node.restart(&[], false)?;
    let api = node.api.clone();
    // A refresh signed by the skewed clock expires about 10 minutes before the held offer; it
    // can only be listed if it won over the held offer (a higher seq).
    let refreshed = wait_until(BOUND, "a refresh by the skewed clock to win", || {
        offer_expiry(&api, &peer).filter(|e| e.saturating_add(9 * 60_000) < before)
    })?;
    // It keeps being refreshed and never lapses: 10 refresh intervals, always live, expiry
    // never going back.
    let mut last = refreshed;
    let window = Instant::now() + Duration::from_secs(3);
    while Instant::now() < window {
        let now = offer_expiry(&api, &peer);
        assert!(now.is_some(), "the node's own offer lapsed while it runs");
        let now = now.unwrap_or_default();
        assert!(now >= last, "offer expiry went back: {now} < {last}");
        last = now;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(last > refreshed, "refreshes stopped after the first");
    // Re-putting the blob publishes its manifest again, above the held floor.
    let again = put(&api, &file, "1")?;
    assert_eq!(again["hash"], first["hash"]);
    Ok(())
}

/// A read through a node that holds no copy survives every holder pausing in the middle of
/// the download (a stalled host, a GC pause, a congested link): the reading node asks again
/// for the chunks that timed out, with fewer in flight, until the holders answer, and gives
/// up only after `GET_STALL` without progress. It used to give each chunk one pass over the
/// holders (one 2 s request timeout each) and then end the body early, so a stall longer than
/// that cut the download short: the "error decoding response body" flake of the test above
/// under load.
#[test]
fn a_read_survives_every_holder_pausing_in_the_middle_of_the_download() -> Result<()> {
    use std::io::{Read, Write};
    let _cluster = one_cluster_at_a_time();
    let dir = dpin_tests::test_dir()?;
    let fast = ["--no-probe", "--offer-refresh-ms", "500"];
    let mut storage = fast.to_vec();
    storage.extend_from_slice(&["--offer-storage", "64M"]);
    // Node 0 reads and holds nothing; nodes 1-3 hold the three copies.
    let nodes = dpin_tests::cluster_with(bin(), dir.path(), &fast, 3, &storage)?;
    wait_connected(&nodes, BOUND)?;
    let api0 = nodes[0].api.clone();
    wait_until(BOUND, "3 storage offers", || {
        (offers(&api0, &["--kind", "storage"]).ok()?.len() == 3).then_some(())
    })?;
    // 32 chunks: more than the reader fetches ahead and the sockets buffer, so most chunks
    // are asked for while the holders are stopped.
    let data = pattern(32 << 20, 3);
    let file = dir.path().join("file.bin");
    std::fs::write(&file, &data)?;
    let hash = put(&api0, &file, "3")?["hash"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // HTTP/1.0, so the body is the raw bytes up to the close (no chunked encoding).
    let mut conn = std::net::TcpStream::connect(&api0)?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(conn, "GET /v1/blobs/{hash} HTTP/1.0\r\nHost: dpin\r\n\r\n")?;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < (1 << 20) {
        let n = conn.read(&mut buf)?;
        anyhow::ensure!(n > 0, "the body ended after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    // Every holder stops for 8 s: longer than one pass over the three holders' timeouts.
    for n in &nodes[1..] {
        n.signal(libc::SIGSTOP)?;
    }
    let stopped = Instant::now();
    let resume = std::thread::scope(|s| -> Result<Vec<u8>> {
        let waker = s.spawn(|| -> Result<()> {
            std::thread::sleep(Duration::from_secs(8));
            for n in &nodes[1..] {
                n.signal(libc::SIGCONT)?;
            }
            Ok(())
        });
        let mut rest = Vec::new();
        let read = conn.read_to_end(&mut rest);
        waker
            .join()
            .map_err(|_| anyhow::anyhow!("the resuming thread panicked"))??;
        read?;
        Ok(rest)
    });
    got.extend_from_slice(&resume?);
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP header in the answer"))?;
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    let body = &got[head_end + 4..];
    assert_eq!(
        body.len(),
        data.len(),
        "the download ended early, {:?} after the holders stopped",
        stopped.elapsed()
    );
    assert!(
        body == data.as_slice(),
        "bytes differ after the holders paused"
    );
    Ok(())
}

/// A series summed over the nodes that are running; `None` when a running node did not answer.
fn summed(nodes: &[NodeProc], series: &str) -> Option<f64> {
    nodes
        .iter()
        .filter(|n| n.pid().is_some())
        .map(|n| {
            dpin_tests::metric(&n.api, series)
                .ok()
                .map(|v| v.unwrap_or(0.0))
        })
        .sum()
}

/// The blob replication gauge: each blob is watched by one node (its first intended holder),
/// which reports it `full` while its K intended holders hold complete copies, and `under`, with
/// the copies it lacks, once a holder is gone and no other storage node is left to take it.
#[test]
fn a_blob_short_of_its_copies_shows_as_under_replicated_on_its_watcher() -> Result<()> {
    let _cluster = one_cluster_at_a_time();
    let dir = dpin_tests::test_dir()?;
    let fast = [
        "--no-probe",
        "--offer-refresh-ms",
        "500",
        "--repair-interval-ms",
        "500",
    ];
    let mut storage = fast.to_vec();
    storage.extend_from_slice(&["--offer-storage", "64M"]);
    // Node 0 offers nothing; nodes 1-3 offer storage, so a K=3 blob lives on all three.
    let mut nodes = dpin_tests::cluster_with(bin(), dir.path(), &fast, 3, &storage)?;
    wait_connected(&nodes, BOUND)?;
    let api0 = nodes[0].api.clone();
    wait_until(BOUND, "3 storage offers", || {
        (offers(&api0, &["--kind", "storage"]).ok()?.len() == 3).then_some(())
    })?;
    let file = dir.path().join("file.bin");
    std::fs::write(&file, pattern(3 << 20, 1))?;
    let put = put(&api0, &file, "3")?;
    assert_eq!(put["holders"].as_array().map(Vec::len), Some(3), "{put}");
    let gauge = |nodes: &[NodeProc]| {
        Some((
            summed(nodes, "dpin_blob_replication{state=\"full\"}")?,
            summed(nodes, "dpin_blob_replication{state=\"under\"}")?,
            summed(nodes, "dpin_blob_replication_missing_copies")?,
        ))
    };
    // Exactly one node watches the blob, and sees it full.
    wait_until(BOUND, "one watcher to report the blob full", || {
        (gauge(&nodes)? == (1.0, 0.0, 0.0)).then_some(())
    })?;
    // Lose a holder: two storage nodes are left for three copies.
    nodes[1].kill();
    let seen = wait_until(BOUND, "the blob to show as under-replicated", || {
        let g = gauge(&nodes)?;
        (g == (0.0, 1.0, 1.0)).then_some(g)
    })?;
    assert_eq!(seen, (0.0, 1.0, 1.0));
    // The watcher's status says the same.
    let under: f64 = nodes
        .iter()
        .filter(|n| n.pid().is_some())
        .filter_map(|n| n.get("/v1/status").ok())
        .filter_map(|(_, s)| s["blobs"]["replication"]["under"].as_f64())
        .sum();
    assert_eq!(under, 1.0);
    Ok(())
}
