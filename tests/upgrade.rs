//! Upgrades: a newer `dpin` opens a data dir written by an older one and serves what it held,
//! or refuses clearly; nothing it held is lost.
//!
//! `tests/fixtures/datadir-v1/` is a real node's data dir made by the binary of 2026-12-02
//! (before data dirs carried a FORMAT file; `tests/fixtures/make-datadir-v1.sh` shows how),
//! `tests/fixtures/datadir-v2/` one made by the binary of 2026-12-04 (data format 2, the
//! store keyed by digest bucket; `make-datadir-v2.sh`; today's format 3 only adds the replica
//! log's files, so a format-2 dir is upgraded without a move), each with the records listed in its
//! `.json`: `alpha` (seq 1), `beta`
//! (three writes, seq 3 wins, two endpoints), and `gamma`, deleted by a tombstone (seq 2; its
//! kind survives, so a live gamma at seq 2 beats it under the merge rule). Records live
//! at most 30 days, so the node runs with its wall clock at the fixture's date (libfaketime,
//! installed by deploy/install-test-deps.sh); only the wall clock is moved.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dpin_tests::{faketime, NodeProc};
use serde_json::Value;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dpin-e2e"))
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Copies the fixture data dir into `to` (the fixture itself is never opened).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

fn expected(version: &str) -> Result<Value> {
    let text = std::fs::read_to_string(fixture().join(format!("datadir-{version}.json")))?;
    Ok(serde_json::from_str(&text)?)
}

/// The fixture's date as libfaketime's absolute start time.
fn at_fixture_date(exp: &Value) -> Result<Vec<(String, String)>> {
    let created = exp["created_utc"]
        .as_str()
        .ok_or_else(|| anyhow!("fixture json lacks created_utc"))?;
    // libfaketime reads the time in the process's time zone: pin it to UTC.
    let mut env = faketime(&format!("@{created}"))?;
    env.push(("TZ".into(), "UTC".into()));
    Ok(env)
}

fn endpoints(v: &Value) -> Vec<(String, u64, String)> {
    v["endpoints"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["host"].as_str().unwrap_or_default().to_owned(),
                        e["port"].as_u64().unwrap_or_default(),
                        e["transport"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Format 2 (the store in bucket order, no replica log yet): marked format 3 on the way
/// (nothing to move), nothing lost.
#[test]
fn a_format_2_data_dir_is_upgraded_and_serves_its_records() -> Result<()> {
    serves_the_fixture("v2", Some("2"))
}

/// Format 1 (no FORMAT file yet): upgraded to today's format on the way, nothing lost.
#[test]
fn a_format_1_data_dir_is_upgraded_and_serves_its_records() -> Result<()> {
    serves_the_fixture("v1", None)
}

/// Opens a copy of `tests/fixtures/datadir-{version}` (whose FORMAT file holds `format`, or
/// is absent) with this binary and checks every record and remembered seq it held.
fn serves_the_fixture(version: &str, format: Option<&str>) -> Result<()> {
    let exp = expected(version)?;
    let zone = exp["zone"].as_str().ok_or_else(|| anyhow!("zone"))?;
    let tmp = dpin_tests::test_dir()?;
    let dir = tmp.path().join("data");
    copy_dir(&fixture().join(format!("datadir-{version}")), &dir)?;
    let found = std::fs::read_to_string(dir.join("FORMAT")).ok();
    assert_eq!(
        found.as_deref().map(str::trim),
        format,
        "the fixture's format"
    );
    let env = at_fixture_date(&exp)?;
    let node = NodeProc::start_with_env(&bin(), &dir, &[], &["--no-probe"], env.clone())?;
    for label in ["alpha", "beta"] {
        let name = format!("{label}.{zone}");
        let (code, got) = node.get(&format!("/v1/resolve/{name}"))?;
        assert_eq!(code, 200, "{name}: {got}");
        assert_eq!(got["seq"], exp[label]["seq"], "{name}");
        assert_eq!(endpoints(&got), endpoints(&exp[label]), "{name}");
    }
    let (code, _) = node.get(&format!("/v1/resolve/gamma.{zone}"))?;
    assert_eq!(code, 404, "the deletion holds");
    // The dir is now marked with the current format (from format 1, the store was moved to
    // bucket order on the way, and every record above came through it).
    let format = std::fs::read_to_string(dir.join("FORMAT"))?;
    assert_eq!(format.trim(), "3");
    // The highest seq survived too: an older seq of beta is refused as stale.
    let key = fixture().join(format!("datadir-{version}.zone.key"));
    let out = Command::new(bin())
        .args(["publish", "--key"])
        .arg(&key)
        .args(["--api", &node.api, "beta", "192.0.2.9:443", "--seq", "2"])
        .envs(env.clone())
        .stdin(Stdio::null())
        .output()?;
    assert!(!out.status.success(), "seq 2 must not replace seq 3");
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("stale"), "{err}");
    // gamma's deletion (seq 2) kept its kind, which the merge rule now ranks by: gamma's seq 1
    // stays deleted, and a live gamma at the tombstone's own seq beats it (at equal seq a live
    // record beats a tombstone) — so the floor was read as a tombstone, not a live record.
    let at = |seq: &str, file: &str| -> Result<Value> {
        let plan = tmp.path().join(file);
        let out = Command::new(bin())
            .args(["sign", "--key"])
            .arg(&key)
            .args(["--seq", seq, "gamma", "192.0.2.7:53/udp", "--out"])
            .arg(&plan)
            .envs(env.clone())
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("sign: {}", String::from_utf8_lossy(&out.stderr));
        }
        let plan: Value = serde_json::from_str(&std::fs::read_to_string(&plan)?)?;
        let body = serde_json::json!({"record": plan["record"]}).to_string();
        let (code, v) = dpin_tests::http(&node.api, "POST", "/v1/publish", Some(&body))?;
        Ok(serde_json::json!({"code": code, "body": v}))
    };
    let replay = at("1", "gamma1.plan")?;
    assert_eq!(replay["code"], 409, "{replay}");
    assert_eq!(replay["body"]["error"], "stale", "{replay}");
    let revived = at("2", "gamma2.plan")?;
    assert_eq!(revived["code"], 200, "{revived}");
    assert_eq!(revived["body"]["outcome"], "conflict_won", "{revived}");
    Ok(())
}

/// Runs `dpin node` on `dir` and returns its exit code and stderr, failing if it is still
/// running after 20 s (a refused dir must stop it at once).
fn node_exit(dir: &Path) -> Result<(i32, String)> {
    let mut child = Command::new(bin())
        .arg("node")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"])
        .args(["--no-probe"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn dpin node")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err)?;
            }
            return Ok((status.code().unwrap_or(-1), err));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("dpin node kept running on {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_data_dir_from_a_newer_dpin_is_refused_untouched() -> Result<()> {
    let tmp = dpin_tests::test_dir()?;
    let dir = tmp.path().join("data");
    copy_dir(&fixture().join("datadir-v1"), &dir)?;
    std::fs::write(dir.join("FORMAT"), "4\n")?;
    let before = std::fs::read(dir.join("store.redb"))?;
    let (code, err) = node_exit(&dir)?;
    assert_ne!(code, 0);
    assert!(err.contains("newer than this dpin reads"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.join("FORMAT"))?, "4\n");
    assert!(
        std::fs::read(dir.join("store.redb"))? == before,
        "the store was not touched"
    );
    Ok(())
}
