//! Hostile offers and manifests against real processes (issue 12, items 3 and 4): 100 fake
//! storage offers (1 PiB free, price 0) from keys that are not live members, and a foreign
//! manifest claiming 4 TiB and `replicas = 16` for an honest blob, change neither where the
//! blob lives nor how many copies it gets, and a non-holder still serves it.
//!
//! Before the offer view counted only live members' offers and holders bound blobs to the
//! manifest they were written under, the foreign manifest made every storage node pull a copy
//! (16 wanted) and the 4 TiB claim emptied the candidate list, so a non-holder's GET failed.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};
use dpin_protocol::record::{blob_label, STORAGE_OFFER_LABEL};
use dpin_protocol::{BlobManifest, Content, RecordBody, SignedRecord, StorageOffer, ZoneKey};
use dpin_tests::{cli, http, ok, wait_connected, wait_until, NodeProc};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_dpin-e2e");
const BOUND: Duration = Duration::from_secs(30);
const CLI_TIMEOUT_MS: &str = "10000";

fn bin() -> &'static Path {
    Path::new(BIN)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn json(out: std::process::Output) -> Result<Value> {
    Ok(serde_json::from_str(&ok(out)?)?)
}

/// Publishes a signed record through a node's API.
fn publish(api: &str, record: &SignedRecord) -> Result<()> {
    let body = serde_json::json!({ "record": hex::encode(record.encode()) }).to_string();
    let (status, v) = http(api, "POST", "/v1/publish", Some(&body))?;
    if status != 200 {
        return Err(anyhow!("publish answered {status}: {v}"));
    }
    Ok(())
}

/// The floor seq a node holds for `name` (0 if none).
fn held_seq(node: &NodeProc, name: &str) -> u64 {
    match node.get(&format!("/v1/seq/{name}")) {
        Ok((200, v)) => v["seq"].as_u64().unwrap_or(0),
        _ => 0,
    }
}

/// Complete copies and complete holders of `hash` as seen through `api`.
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
    let mut ids: Vec<String> = v["holders"]
        .as_array()?
        .iter()
        .filter(|h| h["chunks"] == h["total"])
        .filter_map(|h| h["peer_id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    Some((v["complete_copies"].as_u64()?, ids))
}

/// [`holders`], asked again until every storage node answered.
fn census(api: &str, hash: &str) -> Result<(u64, Vec<String>)> {
    wait_until(BOUND, "every storage node to answer a census", || {
        holders(api, hash)
    })
}

/// The nodes with a directory for `hash` in their blob store (copies, complete or not).
fn dirs_holding(nodes: &[NodeProc], hash: &str) -> Vec<String> {
    let mut out: Vec<String> = nodes
        .iter()
        .filter(|n| n.data_dir.join("blobs").join(hash).exists())
        .map(|n| n.peer_id.clone())
        .collect();
    out.sort();
    out
}

#[test]
fn fake_offers_and_a_foreign_manifest_change_no_honest_blobs_placement_or_copy_count() -> Result<()>
{
    let dir = dpin_tests::test_dir()?;
    let fast = [
        "--no-probe",
        "--offer-refresh-ms",
        "500",
        "--repair-interval-ms",
        "200",
        "--scrub-interval-ms",
        "1000",
    ];
    let mut storage = fast.to_vec();
    storage.extend_from_slice(&["--offer-storage", "64M", "--price", "0.5"]);
    // Node 0 offers nothing (and so stores nothing); nodes 1-4 offer storage.
    let nodes = dpin_tests::cluster_with(bin(), dir.path(), &fast, 4, &storage)?;
    wait_connected(&nodes, BOUND)?;
    let api0 = nodes[0].api.clone();
    // The peers whose storage offers a node lists.
    let storage_offers = |api: &str| -> Option<std::collections::BTreeSet<String>> {
        let args = [
            "offers",
            "--api",
            api,
            "--kind",
            "storage",
            "--timeout-ms",
            CLI_TIMEOUT_MS,
            "--json",
        ];
        json(cli(bin(), &args).ok()?).ok()?["offers"]
            .as_array()?
            .iter()
            .map(|o| o["peer_id"].as_str().map(str::to_owned))
            .collect()
    };
    let real: std::collections::BTreeSet<String> =
        nodes[1..].iter().map(|n| n.peer_id.clone()).collect();
    wait_until(BOUND, "the 4 real storage offers everywhere", || {
        nodes
            .iter()
            .all(|n| storage_offers(&n.api).as_ref() == Some(&real))
            .then_some(())
    })?;

    // An honest 3 MiB blob with K = 2, put through the node that stores nothing.
    let data: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let file = dir.path().join("honest.bin");
    std::fs::write(&file, &data)?;
    let file_arg = file.to_str().unwrap_or_default();
    let put = json(cli(
        bin(),
        &["put", "--api", &api0, file_arg, "--replicas", "2", "--json"],
    )?)?;
    let hash = put["hash"].as_str().unwrap_or_default().to_owned();
    let (copies, before) = census(&api0, &hash)?;
    assert_eq!(copies, 2);
    assert_eq!(dirs_holding(&nodes, &hash), before);
    assert!(!before.contains(&nodes[0].peer_id));
    let root: [u8; 32] = hex::decode(&hash)?
        .try_into()
        .map_err(|_| anyhow!("bad hash"))?;

    // 100 fake storage offers from keys that never connected: 1 PiB free, price 0.
    let now = now_ms();
    let mut last_fake = String::new();
    for i in 0..100u64 {
        let mut seed = [0x5a; 32];
        seed[..8].copy_from_slice(&i.to_le_bytes());
        let key = ZoneKey::from_seed(seed);
        let offer = RecordBody {
            zone: key.zone(),
            label: STORAGE_OFFER_LABEL.into(),
            seq: now,
            expires_at_ms: now + 5 * 60 * 1000,
            content: Content::StorageOffer(StorageOffer {
                capacity_bytes: 1 << 50,
                free_bytes: 1 << 50,
                price_milli: 0,
                region: "eu".into(),
            }),
        }
        .sign(&key)?;
        last_fake = offer.name();
        publish(&api0, &offer)?;
    }
    // A foreign manifest for the honest blob: 4 TiB, 16 replicas, from a stranger's zone.
    let stranger = ZoneKey::from_seed([0xee; 32]);
    let foreign = RecordBody {
        zone: stranger.zone(),
        label: blob_label(&root),
        seq: now,
        expires_at_ms: now + 24 * 3600 * 1000,
        content: Content::BlobManifest(BlobManifest {
            root,
            size: 4 << 40,
            chunk_size: 1 << 20,
            chunks: 4 << 20,
            replicas: 16,
        }),
    }
    .sign(&stranger)?;
    publish(&nodes[1].api, &foreign)?;
    wait_until(
        BOUND,
        "the fake offers and the foreign manifest everywhere",
        || {
            nodes
                .iter()
                .all(|n| held_seq(n, &last_fake) == now && held_seq(n, &foreign.name()) == now)
                .then_some(())
        },
    )?;

    // Give repair many rounds (200 ms each) to act on them; it must not.
    std::thread::sleep(Duration::from_secs(4));
    // No fake offer is listed anywhere: every listed offer is a real node's. (A real node's
    // offer may be missing for a moment on a loaded machine: offers lapse after three late
    // refreshes. That says nothing about fakes, so it is waited out, not asserted away.)
    for n in &nodes {
        let listed = storage_offers(&n.api).unwrap_or_default();
        assert!(
            listed.is_subset(&real),
            "fake offers listed at {}: {:?}",
            n.peer_id,
            listed.difference(&real).collect::<Vec<_>>()
        );
    }
    wait_until(
        BOUND,
        "exactly the 4 real storage offers everywhere",
        || {
            nodes
                .iter()
                .all(|n| storage_offers(&n.api).as_ref() == Some(&real))
                .then_some(())
        },
    )?;
    assert_eq!(
        census(&api0, &hash).ok(),
        Some((2, before.clone())),
        "copies or holders changed"
    );
    assert_eq!(
        dirs_holding(&nodes, &hash),
        before,
        "a node other than the holders stored part of the blob"
    );
    // A non-holder still serves the blob (the 4 TiB claim does not hide the holders).
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
    assert!(std::fs::read(&out_file)? == data, "bytes differ");
    Ok(())
}
