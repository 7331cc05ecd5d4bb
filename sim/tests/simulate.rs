//! The deterministic simulator: replay, the scenarios' targets at test size, and each
//! invariant check catching a hand-made violation after the event that caused it.

use dpin_protocol::{Content, Entry, RecordBody, SignedRecord, Store, ZoneKey};
use dpin_sim::simulate::invariants::ViolationKind;
use dpin_sim::simulate::world::{Action, EPOCH_MS};
use dpin_sim::simulate::{run_one, Scenario, SimError, SimulateArgs, VerifyMode, World};
use rand_chacha::rand_core::SeedableRng;

fn args(scenario: Scenario, nodes: usize, seed: u64) -> SimulateArgs {
    let mut a = SimulateArgs::new(scenario, nodes, seed);
    a.verify = VerifyMode::Cached;
    a.idle_s = 2;
    a
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let mut a = args(Scenario::Race, 20, 7);
    a.loss = 2.0;
    a.clock_skew = 300;
    let one = run_one(&a, 7).expect("seed 7 holds the invariants");
    let two = run_one(&a, 7).expect("seed 7 holds the invariants");
    assert_eq!(one.event_log_digest, two.event_log_digest);
    assert_eq!(one.events, two.events);
    let other = run_one(&a, 8).expect("seed 8 holds the invariants");
    assert_ne!(one.event_log_digest, other.event_log_digest);
}

/// Speed work on the simulator must not change what a seed does: these event-log digests
/// (and the 40-seed race sweep digest) were taken before the verification cache kept prepared
/// records (commit c860052); an optimisation that changes any of them changed a run. The
/// convergence run was re-pinned once, on purpose, when the failure detector began watching
/// a few peers instead of every connection (issue 16: the detector runs in that scenario only).
/// The race and churn runs (and the sweep) were re-pinned once, on purpose, when compaction
/// ticks that find nothing due and IHAVEs that ask for nothing stopped being events (the
/// model change of `world::World::arm_compaction` and `world::World::ihave_is_moot`).
/// All four were re-pinned once more, on purpose, when the mesh model took gossipsub's
/// heartbeat rules (graft only below D_lo, keep D_out outbound: `world::World::maintain_mesh`)
/// and the node's D_hi beyond 7 nodes went from 12 to 8 (`MeshParams::for_cluster`).
#[test]
fn pinned_seeds_replay_the_event_logs_they_had_before_the_speed_work() {
    let cached = |scenario, nodes, seed| {
        let mut a = SimulateArgs::new(scenario, nodes, seed);
        a.verify = VerifyMode::Cached;
        a
    };
    let mut race = cached(Scenario::Race, 50, 3);
    race.loss = 2.0;
    race.clock_skew = 500;
    let runs = [
        (
            race.clone(),
            "17fb64368011413781769be08280caf74b4038c4b2d0b728d60a86eec81c6da9",
        ),
        (
            cached(Scenario::Churn, 30, 5),
            "5f0177172fb9402d87f378e38f3fa7f91e0bedf4e53c2ccd9faddd7e02c468f6",
        ),
        (
            cached(Scenario::Convergence, 200, 2),
            "430876ed7ee4f7d9aa5957cb31b7a112a818abb4d87d8a70fd1fb091cd0e71f4",
        ),
    ];
    for (a, digest) in runs {
        let r = run_one(&a, a.seed).unwrap_or_else(|(e, replay)| panic!("{e}\n{replay}"));
        assert_eq!(r.event_log_digest, digest, "{}", a.replay(a.seed));
    }
    let sweep = dpin_sim::simulate::sweep(&race, 0, 40, 2);
    assert_eq!(sweep.failures, 0);
    assert_eq!(
        sweep.sweep_digest,
        "93a2a7156849764fcc36f00d3aaa251336ee9e2931b81062207f315245c4698f"
    );
}

#[test]
fn full_and_cached_verification_give_the_same_run() {
    let mut a = args(Scenario::Churn, 15, 3);
    let cached = run_one(&a, 3).expect("churn holds");
    a.verify = VerifyMode::Full;
    let full = run_one(&a, 3).expect("churn holds");
    assert_eq!(cached.event_log_digest, full.event_log_digest);
    assert!(cached.stats.verifications < full.stats.verifications);
}

/// Every node got the updates by gossip (none by anti-entropy), the last within
/// 2 × log_{D−1}(N) hops.
fn gossip_alone_reached_everyone_within_the_hop_bound(r: &dpin_sim::simulate::Report) {
    assert_eq!(
        r.delivered_by_sync,
        Some(0),
        "gossip alone reached everyone"
    );
    let (max, bound) = (r.hops_max.expect("hops"), r.hops_bound.expect("bound"));
    assert!(f64::from(max) <= bound, "hops {max} > bound {bound}");
}

#[test]
fn an_update_reaches_every_node_within_the_hop_bound() {
    let mut a = args(Scenario::Convergence, 300, 1);
    a.degree = Some(12);
    a.updates = 3;
    let r = run_one(&a, 1).expect("convergence holds");
    assert_eq!(r.live_nodes, 300);
    gossip_alone_reached_everyone_within_the_hop_bound(&r);
}

/// Issue 11's per-node cost target: at 1,000 nodes, with the mesh the node configures for a
/// network that size (D = 6, D_lo = 4, D_hi = 8, D_out = 2) upkept by gossipsub's heartbeat
/// rules, a node sends at most 6 full copies of an update, and the update still reaches
/// every node by gossip within the hop bound. (With D_hi = 12 meshes averaged 7.05 peers and
/// this was 6.08 for seed 1.)
#[test]
fn a_large_network_sends_at_most_six_copies_per_node_per_update() {
    let mut a = args(Scenario::Convergence, 1_000, 1);
    a.updates = 3;
    a.idle_s = 1;
    let r = run_one(&a, 1).expect("convergence holds");
    assert_eq!((r.mesh.n, r.mesh.n_low, r.mesh.n_high), (6, 4, 8));
    let sends = r.sends_per_node_per_update.expect("sends");
    assert!(
        sends <= 6.0,
        "{sends} full-message sends per node per update"
    );
    gossip_alone_reached_everyone_within_the_hop_bound(&r);
}

#[test]
fn two_diverged_halves_converge_after_the_heal() {
    let mut a = args(Scenario::PartitionHeal, 4, 1);
    a.records = 600;
    let r = run_one(&a, 1).expect("partition-heal converges");
    assert!(r.converge_ms.expect("time") > 0);
    let ratio = r.bytes_ratio.expect("ratio");
    assert!(ratio > 1.0 && ratio < 10.0, "bytes ratio {ratio}");
}

/// Issue 11's partition-heal target at full size: two nodes, 10,000 differing records, 20 ms
/// links (target: bytes <= 3x the differing records, <= 2 s). Each differing record crosses
/// once (one catch-up session, not one from each side) in byte-budgeted chunks (a handful of
/// round trips, not ~160). Before both fixes this run sent 3.06x the differing records' bytes
/// and took 6.6 s of simulated time; after, 1.67x and 0.65 s.
///
/// The bound is 1.7x, not lower, because of the wire format: a record the initiator fetches
/// crosses with its name three times (the peer's summary, ~108 bytes; the fetch, ~68; the
/// record, ~155 with its name inside), so with half the records fetched and half pushed the
/// floor is (339 + 163) / 310 = 1.62x. Going lower needs a new fetch request (e.g. by position
/// in the last listing), which older releases cannot decode.
#[test]
fn a_healed_10k_record_divergence_crosses_once_within_two_simulated_seconds() {
    let mut a = args(Scenario::PartitionHeal, 2, 1);
    a.records = 10_000;
    let r = run_one(&a, 1).expect("partition-heal converges");
    let ratio = r.bytes_ratio.expect("ratio");
    let ms = r.converge_ms.expect("time");
    assert!(
        ratio <= 1.7,
        "bytes {} for {} bytes of differing records: ratio {ratio:.2} > 1.7",
        r.bytes_after_heal.expect("bytes"),
        r.needed_bytes.expect("needed")
    );
    assert!(
        ms <= 2_000,
        "converged {ms} ms after the heal, target 2,000"
    );
}

#[test]
fn race_and_churn_seeds_hold_every_invariant() {
    for seed in 0..6 {
        let mut a = args(Scenario::Race, 25, seed);
        a.loss = 3.0;
        a.clock_skew = 400;
        if let Err((e, replay)) = run_one(&a, seed) {
            panic!("{e}\n{replay}");
        }
        let a = args(Scenario::Churn, 25, seed);
        if let Err((e, replay)) = run_one(&a, seed) {
            panic!("{e}\n{replay}");
        }
    }
}

#[test]
fn a_failing_run_names_its_replay_command() {
    let mut a = args(Scenario::Race, 10, 42);
    a.loss = 1.5;
    assert_eq!(
        a.replay(42),
        "dpin-sim simulate --nodes 10 --seed 42 --scenario race --latency 20,5 --loss 1.5 \
         --clock-skew 0 --sync-peers 1 --verify cached"
    );
}

/// A compaction tick that would find nothing due is not an event: an idle node runs only its
/// sync ticks, as without compaction, and a node holding one short-lived record still drops
/// its body once the retention has passed.
#[test]
fn compaction_ticks_only_when_a_body_may_be_due() {
    let cfg = |compact: bool| {
        let mut c = args(Scenario::Race, 1, 9).world_config(9).expect("config");
        c.retention_ms = Some(1_000);
        c.compact_every_ms = compact.then_some(250);
        c
    };
    let mut plain = World::new(cfg(false)).expect("world");
    plain.run_until(20_000).expect("runs");
    let mut idle = World::new(cfg(true)).expect("world");
    idle.run_until(20_000).expect("runs");
    assert_eq!(idle.stats.events, plain.stats.events);

    let key = ZoneKey::generate(&mut rand_chacha::ChaCha8Rng::seed_from_u64(9));
    let mut short = record(&key, 1, 80);
    short.body.expires_at_ms = EPOCH_MS + 2_000;
    let short = short.body.sign(&key).expect("valid record");
    let run = |compact: bool| {
        let mut w = World::new(cfg(compact)).expect("world");
        let id = w.intern(short.clone());
        w.schedule(
            100,
            Action::Write {
                via: 0,
                rec: id,
                expected: None,
            },
        )
        .expect("scheduled");
        w.run_until(20_000).expect("runs");
        w
    };
    let (with, without) = (run(true), run(false));
    assert_eq!(with.stats.acked, 1);
    assert_eq!(
        with.stats.compacted, 1,
        "the body was dropped after its retention"
    );
    // One or two ticks around the body's due time, not one every 250 ms.
    assert!(
        with.stats.events <= without.stats.events + 2,
        "{} events against {} without compaction",
        with.stats.events,
        without.stats.events
    );
}

// ------------------------------------------------------------ hand-made violations

fn record(key: &ZoneKey, seq: u64, port: u16) -> SignedRecord {
    RecordBody {
        zone: key.zone(),
        label: "api".into(),
        seq,
        expires_at_ms: EPOCH_MS + 3_600_000,
        content: Content::Endpoints(vec![format!("10.0.0.1:{port}").parse().expect("endpoint")]),
    }
    .sign(key)
    .expect("valid record")
}

/// A 10-node world where node 0 wrote `api` at seq 2 and every node holds it.
fn world_with_write() -> (World, SignedRecord, SignedRecord, String) {
    let a = args(Scenario::Convergence, 10, 5);
    let mut w = World::new(a.world_config(5).expect("config")).expect("world");
    let key = ZoneKey::generate(&mut rand_chacha::ChaCha8Rng::seed_from_u64(5));
    let old = record(&key, 1, 80);
    let new = record(&key, 2, 81);
    let name = new.name();
    let id = w.intern(new.clone());
    w.schedule(
        10,
        Action::Write {
            via: 0,
            rec: id,
            expected: None,
        },
    )
    .expect("scheduled");
    w.run_until(2_000)
        .expect("a plain write holds the invariants");
    assert!(w.is_quiescent());
    (w, old, new, name)
}

fn kind_of(e: SimError) -> ViolationKind {
    match e {
        SimError::Invariant(v) => v.kind,
        other => panic!("expected an invariant violation, got {other}"),
    }
}

#[test]
fn a_seq_regression_is_caught_after_the_event_that_caused_it() {
    let (mut w, old, _, name) = world_with_write();
    w.tamper(3, &name, Entry::from_record(&old), false);
    let e = w.run_until(2_100).expect_err("regression caught");
    assert_eq!(kind_of(e), ViolationKind::SeqRegression);
}

#[test]
fn a_live_name_without_a_winner_is_caught() {
    let (mut w, _, new, name) = world_with_write();
    let mut entry = Entry::from_record(&new);
    entry.bytes = None;
    w.tamper(4, &name, entry, false);
    let e = w.run_until(2_100).expect_err("lost body caught");
    assert_eq!(kind_of(e), ViolationKind::LiveNameWithoutWinner);
}

#[test]
fn an_acknowledged_write_lost_by_the_disk_is_caught_at_restart() {
    let (mut w, old, _, name) = world_with_write();
    // Node 0 acknowledged seq 2; its disk comes back holding seq 1.
    w.tamper(0, &name, Entry::from_record(&old), true);
    w.crash(0);
    w.schedule(2_050, Action::Restart(0)).expect("scheduled");
    let e = w.run_until(2_100).expect_err("lost ack caught");
    assert_eq!(kind_of(e), ViolationKind::AckedWriteLost);
}

#[test]
fn an_acknowledged_write_superseded_at_its_node_is_caught() {
    let (mut w, old, _, name) = world_with_write();
    w.tamper(0, &name, Entry::from_record(&old), false);
    let e = w.run_until(2_100).expect_err("lost ack caught");
    assert_eq!(kind_of(e), ViolationKind::AckedWriteLost);
}

#[test]
fn diverged_winners_are_caught_at_quiescence() {
    let (mut w, _, new, _) = world_with_write();
    let other = ZoneKey::generate(&mut rand_chacha::ChaCha8Rng::seed_from_u64(6));
    let mut body = new.body.clone();
    body.zone = other.zone();
    let stray = body.sign(&other).expect("valid");
    w.tamper(2, &stray.name(), Entry::from_record(&stray), false);
    let v = w.check_quiescent().expect_err("divergence caught");
    assert_eq!(v.kind, ViolationKind::Diverged);
}

// ------------------------------------------------------------ the merge rule's rank

fn tombstone(key: &ZoneKey, seq: u64) -> SignedRecord {
    RecordBody {
        zone: key.zone(),
        label: "api".into(),
        seq,
        expires_at_ms: EPOCH_MS + 3_600_000,
        content: Content::Tombstone,
    }
    .sign(key)
    .expect("valid tombstone")
}

/// A tombstone at seq 2 written through node 0 and held everywhere, and a live record of the
/// same seq whose content hash is *lower*: the merge rule `(seq, live, hash)` ranks the live
/// one higher, a `(seq, hash)` comparison ranks it lower. The two disagree on exactly this.
fn world_with_tombstone_and_lower_hashed_live_twin() -> (World, SignedRecord, SignedRecord) {
    let a = args(Scenario::Convergence, 10, 9);
    let mut w = World::new(a.world_config(9).expect("config")).expect("world");
    let key = ZoneKey::generate(&mut rand_chacha::ChaCha8Rng::seed_from_u64(9));
    let tomb = tombstone(&key, 2);
    let live = (1..u16::MAX)
        .map(|port| record(&key, 2, port))
        .find(|r| r.content_hash() < tomb.content_hash())
        .expect("a live twin hashing below the tombstone");
    let id = w.intern(tomb.clone());
    w.schedule(
        10,
        Action::Write {
            via: 0,
            rec: id,
            expected: None,
        },
    )
    .expect("scheduled");
    w.run_until(2_000).expect("the tombstone holds");
    assert!(w.is_quiescent());
    (w, tomb, live)
}

#[test]
fn a_live_record_beating_an_acknowledged_tombstone_of_its_seq_is_no_violation() {
    let (mut w, tomb, live) = world_with_tombstone_and_lower_hashed_live_twin();
    let id = w.intern(live.clone());
    w.schedule(
        2_010,
        Action::Write {
            via: 1,
            rec: id,
            expected: None,
        },
    )
    .expect("scheduled");
    // By (seq, hash) node 0 would have lost its acknowledged tombstone and every node would
    // have regressed; by the protocol's rank the live twin is the legitimate winner.
    w.run_until(4_000)
        .expect("the live twin replaces the tombstone everywhere without a violation");
    assert!(w.is_quiescent());
    for n in 0..10 {
        let e = w.nodes[n].store.entry(&live.name()).expect("held");
        assert_eq!(
            e.floor.hash,
            live.content_hash(),
            "node {n} holds the live twin"
        );
        assert!(!e.tombstone);
    }
    assert!(tomb.content_hash() > live.content_hash());
}

#[test]
fn a_tombstone_replacing_a_live_winner_of_its_seq_is_a_regression() {
    let (mut w, tomb, live) = world_with_tombstone_and_lower_hashed_live_twin();
    let id = w.intern(live.clone());
    w.schedule(
        2_010,
        Action::Write {
            via: 1,
            rec: id,
            expected: None,
        },
    )
    .expect("scheduled");
    w.run_until(4_000).expect("the live twin wins");
    // A bug putting the tombstone back over the live winner: higher by hash, lower by rank.
    w.tamper(3, &tomb.name(), Entry::from_record(&tomb), false);
    let e = w.run_until(4_100).expect_err("the regression is caught");
    assert_eq!(kind_of(e), ViolationKind::SeqRegression);
}

// ------------------------------------------------------------ acknowledged writes at quiescence

fn bodiless(r: &SignedRecord) -> Entry {
    let mut e = Entry::from_record(r);
    e.bytes = None;
    e
}

#[test]
fn an_acknowledged_write_gone_from_every_node_is_caught_at_quiescence() {
    let (mut w, old, _, name) = world_with_write();
    for n in 0..10 {
        w.tamper(n, &name, Entry::from_record(&old), false);
    }
    let v = w.check_quiescent().expect_err("lost write caught");
    assert_eq!(v.kind, ViolationKind::AckedWriteLost);
    assert!(v.detail.contains("no live node holds it"), "{}", v.detail);
}

#[test]
fn an_acknowledged_write_gone_from_every_node_is_caught_after_compaction_too() {
    let (mut w, old, _, name) = world_with_write();
    for n in 0..10 {
        w.tamper(n, &name, bodiless(&old), false);
    }
    let v = w.check_quiescent().expect_err("lost write caught");
    assert_eq!(v.kind, ViolationKind::AckedWriteLost);
}

/// Seed 2873's race (and the sweep's other failures): one node missed an acknowledged write
/// and every holder compacted its body before anti-entropy reached the node. The write
/// survives, nothing can carry it any more, and the node serves nothing for the name.
#[test]
fn a_write_missed_until_every_holder_compacted_it_is_excused_and_counted() {
    let (mut w, old, new, name) = world_with_write();
    for n in 0..10 {
        w.tamper(n, &name, bodiless(&new), false);
    }
    w.tamper(7, &name, bodiless(&old), false);
    w.check_quiescent()
        .expect("excused: no body left to carry it");
    assert_eq!(w.acked_missed_compacted(), 1);
    // The same node still holding its older body is not excused (its roots differ first).
    w.tamper(7, &name, Entry::from_record(&old), false);
    assert!(w.check_quiescent().is_err());
    assert_eq!(w.acked_missed_compacted(), 0);
}
