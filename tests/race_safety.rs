//! Race-safety through every path a user takes (issue 10), with real `dpin` processes.
//!
//! The merge rule was always right; these tests walk the paths that used to undo it: the
//! default `dpin publish`, plans enacted late, deletions, seqs and durations at their limits,
//! skewed clocks (libfaketime, wall clock only), damaged and wiped data dirs, and retried
//! compare-and-set writes. Each test is named for the behaviour it holds the product to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use dpin_tests::{cli, cluster, faketime, http, keygen, ok, wait_connected, wait_until, NodeProc};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_dpin-e2e");
const SPREAD: Duration = Duration::from_secs(20);

fn bin() -> &'static Path {
    Path::new(BIN)
}

fn publish(key: &Path, apis: &str, label: &str, extra: &[&str]) -> Result<std::process::Output> {
    dpin_tests::publish(bin(), key, apis, label, extra)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| anyhow!("path is not UTF-8"))
}

/// `dpin sign --key KEY --api APIS LABEL EXTRA... --out DIR/FILE`; returns the plan path.
fn sign(key: &Path, apis: &str, label: &str, extra: &[&str], out: PathBuf) -> Result<PathBuf> {
    let mut args = vec!["sign", "--key", path_str(key)?, "--api", apis, label];
    args.extend_from_slice(extra);
    let out_s = path_str(&out)?.to_owned();
    args.extend_from_slice(&["--out", &out_s]);
    ok(cli(bin(), &args)?)?;
    Ok(out)
}

fn enact(plan: &Path, apis: &str) -> Result<std::process::Output> {
    cli(
        bin(),
        &[
            "publish",
            "--record",
            path_str(plan)?,
            "--api",
            apis,
            "--json",
        ],
    )
}

fn plan_json(plan: &Path) -> Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(plan)?)?)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn resolved(node: &NodeProc, name: &str) -> Option<(u64, Vec<String>)> {
    match node.get(&format!("/v1/resolve/{name}")) {
        Ok((200, v)) => Some((
            v["seq"].as_u64()?,
            v["endpoints"]
                .as_array()?
                .iter()
                .map(|e| format!("{}:{}", e["host"].as_str().unwrap_or("?"), e["port"]))
                .collect(),
        )),
        _ => None,
    }
}

fn wait_resolves(node: &NodeProc, name: &str, seq: u64) -> Result<()> {
    wait_until(
        SPREAD,
        &format!("{name} at seq {seq} on {}", node.api),
        || (node.resolved_seq(name) == Some(seq)).then_some(()),
    )
}

fn counter(node: &NodeProc, name: &str) -> u64 {
    match node.get("/v1/status") {
        Ok((200, v)) => v["counters"][name].as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn all_apis(nodes: &[NodeProc]) -> String {
    nodes
        .iter()
        .map(|n| n.api.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The seed's race in plans: the planner makes plan A, then plan B; B's enactor applies B;
/// A's enactor, delayed, applies A afterwards — at a node that was cut off while B was
/// applied; the clean-up then deletes "the old plan". A must never hold after the heal, the
/// clean-up must not empty the name, and every refusal must say why.
#[test]
fn a_late_plan_is_refused_as_stale_and_never_holds_after_a_partition_heals() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let mut nodes = cluster(bin(), dir.path(), 3, &["--no-probe"])?;
    wait_connected(&nodes, SPREAD)?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    let name = format!("web.{zone}");
    let apis = all_apis(&nodes);
    ok(publish(&key, &apis, "web", &["127.0.0.1:1000"])?)?;
    for n in &nodes {
        wait_resolves(n, &name, 1)?;
    }
    // The planner numbers two plans and signs both before either is enacted.
    let plan_a = sign(
        &key,
        &apis,
        "web",
        &["127.0.0.1:1111", "--seq", "2"],
        dir.path().join("a.plan"),
    )?;
    let plan_b = sign(
        &key,
        &apis,
        "web",
        &["127.0.0.1:2222", "--seq", "3"],
        dir.path().join("b.plan"),
    )?;
    let (seq_a, seq_b) = (
        plan_json(&plan_a)?["seq"].as_u64().ok_or(anyhow!("seq"))?,
        plan_json(&plan_b)?["seq"].as_u64().ok_or(anyhow!("seq"))?,
    );
    assert!(seq_b > seq_a, "a later plan must carry a higher seq");

    // Node 2 is cut off (restarted alone, knowing no peer) while B is enacted elsewhere.
    nodes[2].restart(&[], false)?;
    ok(enact(&plan_b, &nodes[0].api)?)?;
    wait_resolves(&nodes[1], &name, seq_b)?;

    // The delayed enactor A: refused wherever B is held, with the reason...
    for n in &nodes[..2] {
        let out = enact(&plan_a, &n.api)?;
        assert!(!out.status.success(), "stale plan accepted at {}", n.api);
        assert!(stderr(&out).contains("stale"), "{}", stderr(&out));
    }
    // ...and through the node API itself, 409 with the newer seq held.
    let hex = plan_json(&plan_a)?["record"].clone();
    let (status, body) = http(
        &nodes[0].api,
        "POST",
        "/v1/publish",
        Some(&json!({ "record": hex }).to_string()),
    )?;
    assert_eq!((status, body["error"].as_str()), (409, Some("stale")));
    assert_eq!(body["held_seq"].as_u64(), Some(seq_b));
    // The cut-off node knows nothing newer and takes A (AP: it cannot know).
    ok(enact(&plan_a, &nodes[2].api)?)?;
    assert_eq!(nodes[2].resolved_seq(&name), Some(seq_a));
    // Clean-up deletes "the old plan" by naming it: the name has moved on, so it is refused.
    let out = publish(
        &key,
        &nodes[0].api,
        "web",
        &["--tombstone", "--if-seq", &seq_a.to_string()],
    )?;
    assert!(!out.status.success(), "clean-up deleted a newer plan");
    assert!(stderr(&out).contains("raced"), "{}", stderr(&out));

    // Heal: node 2 rejoins. B holds everywhere, A nowhere, and nothing is empty.
    let boot = vec![nodes[0].bootstrap_addr()];
    nodes[2].restart(&boot, false)?;
    for n in &nodes {
        wait_resolves(n, &name, seq_b)?;
        let (_, eps) = resolved(n, &name).ok_or(anyhow!("no answer"))?;
        assert_eq!(eps, vec!["127.0.0.1:2222".to_owned()], "at {}", n.api);
    }
    // Re-enacting B (a retry) is a harmless duplicate.
    let out = ok(enact(&plan_b, &nodes[1].api)?)?;
    assert!(out.contains("\"duplicate\""), "{out}");
    Ok(())
}

/// The one-step publish compares-and-sets against what it read. A writer whose read is older
/// than the held seq is told it raced instead of overwriting; two writers racing through the
/// same peers are never both acknowledged at one seq, and the last acknowledged write holds.
#[test]
fn the_default_publish_never_overwrites_a_write_it_did_not_see() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let nodes = cluster(bin(), dir.path(), 3, &["--no-probe"])?;
    wait_connected(&nodes, SPREAD)?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    let name = format!("web.{zone}");
    let apis = all_apis(&nodes);
    ok(publish(&key, &apis, "web", &["127.0.0.1:2222"])?)?;
    ok(publish(&key, &apis, "web", &["127.0.0.1:2223"])?)?;
    // Writer A read seq 1 long ago and only now writes: refused, nothing overwritten.
    let out = publish(&key, &apis, "web", &["127.0.0.1:1111", "--if-seq", "1"])?;
    assert!(
        !out.status.success(),
        "a write over an unseen seq was accepted"
    );
    assert!(stderr(&out).contains("raced"), "{}", stderr(&out));
    assert_eq!(nodes[0].resolved_seq(&name), Some(2));

    for round in 0..6 {
        let (k1, a1) = (key.clone(), apis.clone());
        let port_a = format!("127.0.0.1:{}", 3000 + round);
        let port_b = format!("127.0.0.1:{}", 4000 + round);
        let pa = port_a.clone();
        let w1 = std::thread::spawn(move || {
            dpin_tests::publish(bin(), &k1, &a1, "web", &[&pa, "--json"])
        });
        let w2 = publish(&key, &apis, "web", &[&port_b, "--json"])?;
        let w1 = w1.join().map_err(|_| anyhow!("writer thread panicked"))??;
        let mut acked: Vec<(u64, String)> = Vec::new();
        for (out, port) in [(&w1, &port_a), (&w2, &port_b)] {
            if out.status.success() {
                let v: Value = serde_json::from_slice(&out.stdout)?;
                acked.push((v["seq"].as_u64().ok_or(anyhow!("seq"))?, port.clone()));
            } else {
                let err = stderr(out);
                assert!(err.contains("raced"), "round {round}: {err}");
            }
        }
        assert!(!acked.is_empty(), "round {round}: both writers refused");
        if acked.len() == 2 {
            assert_ne!(
                acked[0].0, acked[1].0,
                "round {round}: both acknowledged at one seq"
            );
        }
        let (top_seq, top_port) = acked.iter().max().cloned().ok_or(anyhow!("none"))?;
        for n in &nodes {
            wait_resolves(n, &name, top_seq)?;
            let (_, eps) = resolved(n, &name).ok_or(anyhow!("no answer"))?;
            assert_eq!(eps, vec![top_port.clone()], "round {round} at {}", n.api);
        }
    }
    Ok(())
}

/// Deleting must name what it deletes, and a tombstone outlives what it deletes.
#[test]
fn a_deletion_must_name_the_seq_it_deletes_and_outlives_it() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let nodes = cluster(bin(), dir.path(), 2, &["--no-probe"])?;
    wait_connected(&nodes, SPREAD)?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    let name = format!("db.{zone}");
    let apis = all_apis(&nodes);
    ok(publish(
        &key,
        &apis,
        "db",
        &["127.0.0.1:5432", "--ttl", "30d"],
    )?)?;
    let out = publish(&key, &apis, "db", &["--tombstone"])?;
    assert!(!out.status.success(), "a bare --tombstone deleted the name");
    assert!(stderr(&out).contains("--if-seq"), "{}", stderr(&out));
    assert_eq!(nodes[1].resolved_seq(&name), Some(1));
    // A planned deletion lives as long as any record can (30 d), so it outlives the record.
    let plan = sign(
        &key,
        &apis,
        "db",
        &["--tombstone"],
        dir.path().join("del.plan"),
    )?;
    let p = plan_json(&plan)?;
    let record_expiry = nodes[0].get(&format!("/v1/resolve/{name}"))?.1["expires_at_ms"]
        .as_u64()
        .ok_or(anyhow!("expiry"))?;
    assert!(p["expires_at_ms"].as_u64() >= Some(record_expiry), "{p}");
    // Naming the seq deletes it.
    ok(publish(
        &key,
        &apis,
        "db",
        &["--tombstone", "--if-seq", "1"],
    )?)?;
    for n in &nodes {
        wait_until(SPREAD, "the name is deleted", || {
            matches!(n.get(&format!("/v1/resolve/{name}")), Ok((404, _))).then_some(())
        })?;
    }
    Ok(())
}

/// No seq or duration can wrap or freeze a name: the last seq is refused by the CLI and the
/// node alike, an overflowing TTL is an error, and the name stays writable.
#[test]
fn seqs_and_durations_at_their_limits_are_refused_and_the_name_stays_writable() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let nodes = cluster(bin(), dir.path(), 1, &["--no-probe"])?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    let name = format!("web.{zone}");
    let api = nodes[0].api.clone();
    let max = u64::MAX.to_string();
    let out = publish(&key, &api, "web", &["127.0.0.1:80", "--seq", &max])?;
    assert!(!out.status.success(), "seq u64::MAX accepted");
    assert!(stderr(&out).contains("ceiling"), "{}", stderr(&out));
    // A record signed outside the CLI with the last seq is refused by the node.
    let text = std::fs::read_to_string(&key)?;
    let zk = dpin_protocol::ZoneKey::from_key_file(&text)?;
    let forged = dpin_protocol::RecordBody {
        zone: zk.zone(),
        label: "web".into(),
        seq: u64::MAX,
        expires_at_ms: dpin_node::node::now_ms() + 60_000,
        content: dpin_protocol::Content::Endpoints(vec!["127.0.0.1:80".parse()?]),
    }
    .sign(&zk)?;
    let (status, body) = http(
        &api,
        "POST",
        "/v1/publish",
        Some(&json!({"record": hex::encode(forged.encode())}).to_string()),
    )?;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains("ceiling"),
        "{body}"
    );
    for ttl in ["999999999999999999d", "31d", "0s"] {
        let out = publish(&key, &api, "web", &["127.0.0.1:80", "--ttl", ttl])?;
        assert!(!out.status.success(), "--ttl {ttl} accepted");
    }
    ok(publish(&key, &api, "web", &["127.0.0.1:80"])?)?;
    ok(publish(&key, &api, "web", &["127.0.0.1:81"])?)?;
    assert_eq!(nodes[0].resolved_seq(&name), Some(2));
    Ok(())
}

/// Clocks 10 minutes behind and ahead (libfaketime, wall clock only) take a 30-day record
/// from replication, and every store ends identical.
#[test]
fn nodes_ten_minutes_behind_or_ahead_take_thirty_day_records_and_converge() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let first = NodeProc::start(bin(), &dir.path().join("n0"), &[], &["--no-probe"])?;
    let boot = vec![first.bootstrap_addr()];
    let behind = NodeProc::start_with_env(
        bin(),
        &dir.path().join("n1"),
        &boot,
        &["--no-probe"],
        faketime("-10m")?,
    )?;
    let ahead = NodeProc::start_with_env(
        bin(),
        &dir.path().join("n2"),
        &boot,
        &["--no-probe"],
        faketime("+10m")?,
    )?;
    let nodes = vec![first, behind, ahead];
    wait_connected(&nodes, SPREAD)?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    // Published at the correct node, and at the node running ahead, with the longest TTL.
    for (label, at) in [("web", 0usize), ("api", 2)] {
        ok(publish(
            &key,
            &nodes[at].api,
            label,
            &["127.0.0.1:80", "--ttl", "30d"],
        )?)?;
        for n in &nodes {
            wait_resolves(n, &format!("{label}.{zone}"), 1)?;
        }
    }
    wait_until(SPREAD, "identical digests", || {
        let d: Vec<_> = nodes.iter().map(NodeProc::digest).collect();
        (d[0].is_some() && d.iter().all(|x| x == &d[0])).then_some(())
    })?;
    assert_eq!(counter(&nodes[1], "gossip_rejected"), 0);
    Ok(())
}

/// A node whose clock ran two months ahead compacted a body its peers still serve. Once its
/// clock is corrected it gets the body back from them by itself and answers again.
#[test]
fn a_node_whose_clock_ran_far_ahead_recovers_compacted_bodies_once_corrected() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let first = NodeProc::start(bin(), &dir.path().join("n0"), &[], &["--no-probe"])?;
    let boot = vec![first.bootstrap_addr()];
    let mut skewed = NodeProc::start_with_env(
        bin(),
        &dir.path().join("n1"),
        &boot,
        &["--no-probe"],
        faketime("+60d")?,
    )?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    let name = format!("web.{zone}");
    ok(publish(
        &key,
        &first.api,
        "web",
        &["127.0.0.1:80", "--ttl", "1d"],
    )?)?;
    wait_resolves(&first, &name, 1)?;
    wait_until(SPREAD, "the skewed node compacts the body", || {
        (counter(&skewed, "bodies_compacted") >= 1).then_some(())
    })?;
    skewed.set_env(Vec::new());
    skewed.restart(&boot, false)?;
    wait_resolves(&skewed, &name, 1)?;
    // Counted once the restored body is durable, which can be just after it is served.
    wait_until(SPREAD, "the restore to be counted", || {
        (counter(&skewed, "bodies_restored") >= 1).then_some(())
    })?;
    Ok(())
}

/// Three days after a short-lived deletion expired, a node whose data dir was wiped still
/// learns it from its peers (the tombstone keeps travelling until every record it deleted has
/// expired), and refuses the deleted — still unexpired — record when it is replayed at it.
/// Both nodes run three days ahead (libfaketime), so the tombstone is long past its expiry.
#[test]
fn a_wiped_node_learns_an_expired_deletion_and_refuses_a_replay_of_the_deleted_record() -> Result<()>
{
    let dir = dpin_tests::test_dir()?;
    let mut nodes = cluster(bin(), dir.path(), 2, &["--no-probe"])?;
    wait_connected(&nodes, SPREAD)?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    let name = format!("old.{zone}");
    let apis = all_apis(&nodes);
    let plan = sign(
        &key,
        &apis,
        "old",
        &["127.0.0.1:80", "--ttl", "30d", "--seq", "1"],
        dir.path().join("old.plan"),
    )?;
    ok(enact(&plan, &apis)?)?;
    ok(publish(
        &key,
        &apis,
        "old",
        &["--tombstone", "--if-seq", "1", "--ttl", "1m"],
    )?)?;
    wait_until(SPREAD, "deleted on node 1", || {
        matches!(nodes[1].get(&format!("/v1/seq/{name}")), Ok((200, v)) if v["seq"] == 2)
            .then_some(())
    })?;
    // Three days later: node 0 still holds the deletion; node 1's data dir is replaced.
    nodes[0].set_env(faketime("+3d")?);
    nodes[0].restart(&[], false)?;
    nodes[1].kill();
    std::fs::remove_file(nodes[1].data_dir.join("store.redb"))?;
    nodes[1].set_env(faketime("+3d")?);
    let boot = vec![nodes[0].bootstrap_addr()];
    nodes[1].restart(&boot, false)?;
    wait_until(SPREAD, "the wiped node relearns the deletion", || {
        matches!(nodes[1].get(&format!("/v1/seq/{name}")), Ok((200, v)) if v["seq"] == 2)
            .then_some(())
    })?;
    let hex = plan_json(&plan)?["record"].clone();
    let (status, body) = http(
        &nodes[1].api,
        "POST",
        "/v1/publish",
        Some(&json!({ "record": hex }).to_string()),
    )?;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("stale")),
        "{body}"
    );
    assert!(matches!(
        nodes[1].get(&format!("/v1/resolve/{name}")),
        Ok((404, _))
    ));
    Ok(())
}

/// A damaged record body on disk keeps its floor across a restart (the record it replaced
/// cannot be replayed), is counted, and comes back from a peer.
#[test]
fn a_damaged_body_on_disk_keeps_its_floor_and_is_restored_from_a_peer() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let mut nodes = cluster(bin(), dir.path(), 2, &["--no-probe"])?;
    wait_connected(&nodes, SPREAD)?;
    let (key, zone) = keygen(bin(), dir.path(), "zone")?;
    let name = format!("web.{zone}");
    let apis = all_apis(&nodes);
    let v1 = sign(
        &key,
        &apis,
        "web",
        &["127.0.0.1:80", "--seq", "1"],
        dir.path().join("v1"),
    )?;
    ok(enact(&v1, &apis)?)?;
    ok(publish(&key, &apis, "web", &["127.0.0.1:81"])?)?;
    wait_resolves(&nodes[1], &name, 2)?;
    // A clean stop: node 1 got seq 2 by gossip, and a replicated record reaches the disk a
    // moment after it is served. A SIGKILL here (as this test did) sometimes left seq 1 on
    // disk, so seq 1's body was damaged and the seq-1 replay below was taken as its repair.
    nodes[1].stop()?;
    damage_body(&nodes[1].data_dir.join("store.redb"), &name)?;
    let boot = vec![nodes[0].bootstrap_addr()];
    nodes[1].restart(&boot, false)?;
    let (_, status) = nodes[1].get("/v1/status")?;
    assert_eq!(status["corrupt_entries"].as_u64(), Some(1), "{status}");
    let (code, _) = nodes[1].get(&format!("/v1/seq/{name}"))?;
    assert_eq!(code, 200);
    let hex = plan_json(&v1)?["record"].clone();
    let (code, body) = http(
        &nodes[1].api,
        "POST",
        "/v1/publish",
        Some(&json!({ "record": hex }).to_string()),
    )?;
    assert_eq!((code, body["held_seq"].as_u64()), (409, Some(2)), "{body}");
    wait_resolves(&nodes[1], &name, 2)?;
    Ok(())
}

/// Flips one byte of the stored record body of `name` (just before its 64-byte signature).
/// The store's table of data format 2: keyed by the name's digest bucket, then the name.
fn damage_body(db: &Path, name: &str) -> Result<()> {
    use redb::ReadableTable as _;
    const ENTRIES: redb::TableDefinition<&[u8], &[u8]> =
        redb::TableDefinition::new("entries.by-bucket");
    let key: Vec<u8> = std::iter::once(dpin_protocol::digest::bucket_of(name))
        .chain(name.bytes())
        .collect();
    let db = redb::Database::open(db)?;
    let w = db.begin_write()?;
    {
        let mut table = w.open_table(ENTRIES)?;
        let mut bytes = match table.get(key.as_slice())? {
            Some(v) => v.value().to_vec(),
            None => bail!("{name} is not in the store"),
        };
        let at = bytes
            .len()
            .checked_sub(65)
            .ok_or(anyhow!("entry too short"))?;
        bytes[at] ^= 0xff;
        table.insert(key.as_slice(), bytes.as_slice())?;
    }
    w.commit()?;
    Ok(())
}

/// A compare-and-set write retried after a lost acknowledgement is reported as a duplicate,
/// not as a lost race.
#[test]
fn retrying_a_compare_and_set_write_that_won_is_a_duplicate() -> Result<()> {
    let dir = dpin_tests::test_dir()?;
    let nodes = cluster(bin(), dir.path(), 1, &["--no-probe"])?;
    let (key, _zone) = keygen(bin(), dir.path(), "zone")?;
    let api = nodes[0].api.clone();
    ok(publish(&key, &api, "web", &["127.0.0.1:80"])?)?;
    let plan = sign(
        &key,
        &api,
        "web",
        &["127.0.0.1:81", "--seq", "2"],
        dir.path().join("p"),
    )?;
    let req = json!({"record": plan_json(&plan)?["record"], "if_seq": 1}).to_string();
    let (first, body) = http(&api, "POST", "/v1/publish", Some(&req))?;
    assert_eq!(
        (first, body["outcome"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    let (again, body) = http(&api, "POST", "/v1/publish", Some(&req))?;
    assert_eq!(
        (again, body["outcome"].as_str()),
        (200, Some("duplicate")),
        "{body}"
    );
    Ok(())
}

/// The seed's race with the deletion at the write's seq: the clean-up meant for plan A and
/// enactor B's newer write both replace A, one at a node cut off from the other, so both take
/// A's seq + 1. In either order, after the heal the write holds everywhere (at equal seq a
/// live record beats a tombstone, whatever the hashes) and the name is never left empty. The
/// clean-up names A by its content hash (`--if-hash`, as `dpin resolve` prints it); run again
/// once B holds, it deletes nothing and says the record was replaced.
#[test]
fn a_clean_up_racing_a_write_at_its_seq_never_empties_the_name_and_a_stale_one_deletes_nothing(
) -> Result<()> {
    for cleanup_first in [true, false] {
        let dir = dpin_tests::test_dir()?;
        let mut nodes = cluster(bin(), dir.path(), 2, &["--no-probe"])?;
        wait_connected(&nodes, SPREAD)?;
        let (key, zone) = keygen(bin(), dir.path(), "zone")?;
        let name = format!("web.{zone}");
        let apis = all_apis(&nodes);
        // Plan A holds everywhere.
        ok(publish(&key, &apis, "web", &["127.0.0.1:1111"])?)?;
        for n in &nodes {
            wait_resolves(n, &name, 1)?;
        }
        let (_, a) = nodes[0].get(&format!("/v1/resolve/{name}"))?;
        let hash_a = a["hash"]
            .as_str()
            .ok_or(anyhow!("resolve shows no hash: {a}"))?
            .to_owned();
        let shown = ok(cli(bin(), &["resolve", "--api", &nodes[0].api, &name])?)?;
        assert!(
            shown.contains(&hash_a),
            "dpin resolve prints the hash: {shown}"
        );

        // Node 1 is cut off; the clean-up runs there, B's write at node 0.
        nodes[1].restart(&[], false)?;
        let clean_up = |api: &str| {
            publish(
                &key,
                api,
                "web",
                &["--tombstone", "--if-hash", &hash_a, "--json"],
            )
        };
        let write_b = |api: &str| publish(&key, api, "web", &["127.0.0.1:2222", "--json"]);
        let (deleted, written) = if cleanup_first {
            let d = ok(clean_up(&nodes[1].api)?)?;
            (d, ok(write_b(&nodes[0].api)?)?)
        } else {
            let w = ok(write_b(&nodes[0].api)?)?;
            (ok(clean_up(&nodes[1].api)?)?, w)
        };
        for out in [&deleted, &written] {
            let v: Value = serde_json::from_str(out.trim())?;
            assert_eq!(v["seq"].as_u64(), Some(2), "both replace seq 1: {out}");
        }
        assert_eq!(
            nodes[1].resolved_seq(&name),
            None,
            "the deletion held at node 1"
        );

        // Heal: the write wins on both nodes; the name is never left empty.
        let boot = vec![nodes[0].bootstrap_addr()];
        nodes[1].restart(&boot, false)?;
        for n in &nodes {
            wait_resolves(n, &name, 2)?;
            let (_, eps) = resolved(n, &name).ok_or(anyhow!("no answer"))?;
            assert_eq!(
                eps,
                vec!["127.0.0.1:2222".to_owned()],
                "at {} (clean-up first: {cleanup_first})",
                n.api
            );
        }
        // The clean-up of plan A, retried now that B holds: refused, nothing deleted.
        let out = clean_up(&apis)?;
        assert!(!out.status.success(), "a stale clean-up deleted B's write");
        assert!(stderr(&out).contains("replaced"), "{}", stderr(&out));
        for n in &nodes {
            assert_eq!(n.resolved_seq(&name), Some(2), "at {}", n.api);
        }
    }
    Ok(())
}
