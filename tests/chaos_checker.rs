//! Tests of the chaos checker (`dpin_sim::checker`) on hand-made histories.
//!
//! A checker that never finds anything is worse than none: it turns a broken cluster into a
//! green build. So each invariant gets a history that breaks exactly it — a lost write, an
//! empty answer, a stale read, a failed query, a stale plan applied over a newer seq or holding
//! after the heal, a read going backwards at one node, an answer with the wrong content — and
//! must be caught; a clean history with the same shape must come out with zeros. Expiry and
//! clock skew get the opposite test too: an expired name is not empty.

use dpin_sim::checker::{check, CheckConfig, Findings};
use dpin_sim::history::{
    hosts_of, FaultKind, FaultSpan, History, Op, OpKind, OpOutcome, Proto, TOMBSTONE,
};

const NAME: &str = "svc-0-0.zone";
const NODES: [usize; 3] = [1, 2, 3];

/// The content the test's writer sends at `seq` (each record its own address, as in the
/// workload).
fn content(seq: u64) -> String {
    format!("127.1.0.{seq}:1000,127.1.0.{seq}:2000")
}

/// Enactor A's stale content at `seq` (another writer: other address and ports).
fn stale_content(seq: u64) -> String {
    format!("127.2.0.{seq}:1010,127.2.0.{seq}:2010")
}

fn op(kind: OpKind, node: usize, start: f64, end: f64, outcome: OpOutcome, seq: Option<u64>) -> Op {
    let found = outcome == OpOutcome::Found;
    let write = matches!(kind, OpKind::Write);
    Op {
        kind,
        proto: Proto::Http,
        process: "test".to_owned(),
        node,
        name: NAME.to_owned(),
        start_ms: start,
        end_ms: end,
        outcome,
        seq,
        endpoints: found.then_some(2),
        content: seq.filter(|_| found || write).map(content),
        ..Op::default()
    }
}

fn write(node: usize, start: f64, end: f64, seq: u64) -> Op {
    op(
        OpKind::Write,
        node,
        start,
        end,
        OpOutcome::Applied,
        Some(seq),
    )
}

fn read(round: u64, node: usize, start: f64, outcome: OpOutcome, seq: Option<u64>) -> Op {
    Op {
        round: Some(round),
        ..op(OpKind::Read, node, start, start + 2.0, outcome, seq)
    }
}

fn final_read(node: usize, seq: u64) -> Op {
    op(
        OpKind::FinalRead,
        node,
        90_000.0,
        90_001.0,
        OpOutcome::Found,
        Some(seq),
    )
}

/// Two writes, reads that follow them on every node, a correctly refused stale plan and
/// clean-up tombstone, a paused node that does not answer one round, and a final state that
/// holds the newest write everywhere.
fn clean_history() -> History {
    let mut ops = vec![
        write(1, 0.0, 10.0, 1),
        write(2, 20_000.0, 20_010.0, 2),
        Op {
            content: Some(stale_content(1)),
            ..op(
                OpKind::StalePlan,
                2,
                20_100.0,
                20_105.0,
                OpOutcome::Stale,
                Some(1),
            )
        },
        Op {
            content: Some(TOMBSTONE.to_owned()),
            ..op(
                OpKind::Cleanup,
                2,
                20_110.0,
                20_115.0,
                OpOutcome::Stale,
                Some(1),
            )
        },
    ];
    // Round 1 at 1 s: everyone has seq 1.
    for n in NODES {
        ops.push(read(1, n, 1_000.0, OpOutcome::Found, Some(1)));
    }
    // Round 2 around 20 s: node 1 answers seq 1 (it sees seq 2 only at 20 014 ms), node 2
    // seq 2 — within the staleness bound of the seq-2 ack, so not stale; node 3 is paused (no
    // answer).
    ops.push(read(2, 1, 20_011.0, OpOutcome::Found, Some(1)));
    ops.push(read(2, 2, 20_011.0, OpOutcome::Found, Some(2)));
    ops.push(read(2, 3, 20_500.0, OpOutcome::Timeout, None));
    // Round 3 at 30 s: everyone has seq 2.
    for n in NODES {
        ops.push(read(3, n, 30_000.0, OpOutcome::Found, Some(2)));
    }
    // Probes: node 1 and 3 saw seq 2 a few ms after the ack.
    for (node, end) in [(1, 20_014.0), (3, 20_016.0)] {
        ops.push(Op {
            want_seq: Some(2),
            ..op(
                OpKind::Probe,
                node,
                20_010.0,
                end,
                OpOutcome::Found,
                Some(2),
            )
        });
    }
    for n in NODES {
        ops.push(final_read(n, 2));
    }
    History {
        ops,
        faults: vec![FaultSpan {
            kind: FaultKind::Pause,
            node: 3,
            start_ms: 20_400.0,
            end_ms: 21_500.0,
            offset_ms: None,
            groups: None,
            peers: None,
        }],
    }
}

fn run(h: &History) -> Findings {
    check(h, &CheckConfig::default())
}

#[test]
fn a_clean_history_yields_zeros() {
    let f = run(&clean_history());
    assert!(f.invariants_hold(), "{:?}", f.examples);
    assert_eq!(f.queries.total, 9);
    assert_eq!(f.queries.ok, 8);
    assert_eq!(f.queries.unanswered, 1);
    assert_eq!(f.queries.rounds, 3);
    assert_eq!(
        (
            f.queries.failed,
            f.queries.empty,
            f.queries.stale,
            f.queries.slow
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(f.writes.acknowledged, 2);
    assert_eq!(f.writes.lost, 0);
    assert_eq!(f.writes.refused_stale, 2);
    assert_eq!(f.writes.stale_applied, 0);
    assert_eq!((f.regressions, f.content_mismatches), (0, 0));
    assert_eq!(f.race.stale_held_after_heal, 0);
    assert!(f.examples.is_empty(), "{:?}", f.examples);
    // Propagation from the probes: 4 ms and 6 ms after the ack at 20 010 ms.
    assert_eq!(f.propagation.samples, 2);
    assert_eq!(f.propagation.max, 6.0);
    assert_eq!(f.propagation.p50, 4.0);
}

#[test]
fn a_lost_write_is_caught() {
    let mut h = clean_history();
    // Node 3 ends up with seq 1 although seq 2 was acknowledged.
    h.ops
        .retain(|o| !(o.kind == OpKind::FinalRead && o.node == 3));
    h.ops.push(final_read(3, 1));
    let f = run(&h);
    assert_eq!(f.writes.lost, 1);
    assert!(!f.invariants_hold());
    assert!(f
        .examples
        .iter()
        .any(|v| v.kind == "lost" && v.detail.contains("node 3")));
}

#[test]
fn a_write_missing_everywhere_at_the_end_is_lost() {
    let mut h = clean_history();
    h.ops.retain(|o| o.kind != OpKind::FinalRead);
    for n in NODES {
        h.ops.push(op(
            OpKind::FinalRead,
            n,
            90_000.0,
            90_001.0,
            OpOutcome::NotFound,
            None,
        ));
    }
    let f = run(&h);
    assert_eq!(f.writes.lost, 2, "both acknowledged writes are gone");
}

#[test]
fn an_empty_answer_is_caught() {
    let mut h = clean_history();
    // 40 s: node 2 answers "not found" for a name with a live record.
    h.ops.push(read(4, 1, 40_000.0, OpOutcome::Found, Some(2)));
    h.ops.push(read(4, 2, 40_000.0, OpOutcome::NotFound, None));
    let f = run(&h);
    assert_eq!(f.queries.empty, 1);
    assert_eq!(
        f.queries.failed, 0,
        "node 1 answered, so the round did not fail"
    );
    assert!(!f.invariants_hold());
}

#[test]
fn an_answer_with_zero_endpoints_is_empty() {
    let mut h = clean_history();
    let mut r = read(4, 1, 40_000.0, OpOutcome::Found, Some(2));
    r.endpoints = Some(0);
    h.ops.push(r);
    assert_eq!(run(&h).queries.empty, 1);
}

#[test]
fn not_found_before_the_name_could_have_propagated_is_not_empty() {
    let mut h = clean_history();
    // 0.5 s after the first ack, before node 3 ever answered the name: within the bound.
    h.ops.push(read(4, 3, 500.0, OpOutcome::NotFound, None));
    assert_eq!(run(&h).queries.empty, 0);
}

#[test]
fn a_stale_read_is_caught() {
    let mut h = clean_history();
    // 40 s: 20 s after seq 2 was acknowledged, node 4 (cut off until now) still answers seq 1.
    h.ops.push(read(4, 4, 40_000.0, OpOutcome::Found, Some(1)));
    let f = run(&h);
    assert_eq!(f.queries.stale, 1);
    assert!(f.examples.iter().any(|v| v.kind == "stale"));
    // Stale is reported, but it is not one of the invariants that fail a run.
    assert!(f.invariants_hold());
    // With a bound longer than the lag, the same read is fine.
    let lenient = check(
        &h,
        &CheckConfig {
            stale_bound_ms: 30_000.0,
            ..CheckConfig::default()
        },
    );
    assert_eq!(lenient.queries.stale, 0);
}

#[test]
fn a_failed_query_is_caught() {
    let mut h = clean_history();
    // Round 4: no node answered at all.
    h.ops.push(read(4, 1, 40_000.0, OpOutcome::Timeout, None));
    h.ops.push(read(4, 2, 40_000.0, OpOutcome::Error, None));
    h.ops.push(read(4, 3, 40_000.0, OpOutcome::Timeout, None));
    let f = run(&h);
    assert_eq!(f.queries.failed, 1);
    assert_eq!(f.queries.rounds, 4);
    assert_eq!(f.queries.unanswered, 4);
    assert!(!f.invariants_hold());
}

#[test]
fn a_round_answered_only_on_retry_is_slow_not_failed() {
    let mut h = clean_history();
    for n in NODES {
        h.ops.push(read(4, n, 40_000.0, OpOutcome::Timeout, None));
    }
    h.ops.push(read(4, 1, 40_600.0, OpOutcome::Found, Some(2)));
    let f = run(&h);
    assert_eq!(f.queries.failed, 0);
    assert_eq!(f.queries.slow, 1);
    assert!(f.invariants_hold());
}

#[test]
fn unacknowledged_writes_are_not_required_at_the_end() {
    let mut h = clean_history();
    h.ops.push(op(
        OpKind::Write,
        3,
        50_000.0,
        51_000.0,
        OpOutcome::Timeout,
        Some(3),
    ));
    let f = run(&h);
    assert_eq!(f.writes.lost, 0);
    assert_eq!(f.writes.indeterminate, 1);
}

#[test]
fn propagation_to_a_faulted_node_is_left_out() {
    let mut h = clean_history();
    h.faults.push(FaultSpan {
        kind: FaultKind::Kill,
        node: 3,
        start_ms: 20_000.0,
        end_ms: 20_012.0,
        offset_ms: None,
        groups: None,
        peers: None,
    });
    assert_eq!(run(&h).propagation.samples, 1);
}

#[test]
fn propagation_seen_through_a_clock_skewed_past_the_expiry_is_left_out() {
    let with_skew = |offset_ms: i64| {
        let mut h = clean_history();
        for o in h.ops.iter_mut().filter(|o| o.kind == OpKind::Write) {
            o.expires_ms = Some(o.end_ms + 15_000.0);
        }
        h.faults.push(FaultSpan {
            kind: FaultKind::Skew,
            node: 3,
            start_ms: 10_000.0,
            end_ms: 19_900.0,
            offset_ms: Some(offset_ms),
            groups: None,
            peers: None,
        });
        run(&h).propagation.samples
    };
    let baseline = run(&clean_history()).propagation.samples;
    // Node 3's clock, 20 s ahead until just before the write, judged seq 2 (15 s TTL) expired:
    // what it showed then followed its clock.
    assert_eq!(with_skew(20_000), baseline - 1);
    // A small skew, or one behind, leaves every record live there: the sample stays.
    assert_eq!(with_skew(1_000), baseline);
    assert_eq!(with_skew(-20_000), baseline);
}

#[test]
fn histories_round_trip_through_jsonl() -> Result<(), Box<dyn std::error::Error>> {
    let h = clean_history();
    let dir = dpin_tests::test_dir()?;
    let path = dir.path().join("h.jsonl");
    h.write_jsonl(&path)?;
    let back = History::read_jsonl(&path)?;
    assert_eq!(back.faults, h.faults);
    assert_eq!(back.ops.len(), h.ops.len());
    assert_eq!(run(&back), run(&h));
    Ok(())
}

// ---------------------------------------------------------------- reads that go backwards

#[test]
fn a_node_whose_reads_go_backwards_is_a_regression() {
    let mut h = clean_history();
    // Node 1 showed seq 2 at 30 s; at 40 s it answers seq 1 again.
    h.ops.push(read(4, 1, 40_000.0, OpOutcome::Found, Some(1)));
    let f = run(&h);
    assert_eq!(f.regressions, 1);
    assert!(!f.invariants_hold());
    assert!(f
        .examples
        .iter()
        .any(|v| v.kind == "regression" && v.detail.contains("node 1")));
}

#[test]
fn different_nodes_at_different_seqs_are_not_a_regression() {
    let mut h = clean_history();
    // Node 4 never showed seq 2: seq 1 there is stale (reported), not backwards.
    h.ops.push(read(4, 4, 40_000.0, OpOutcome::Found, Some(1)));
    let f = run(&h);
    assert_eq!(f.regressions, 0);
    assert!(f.invariants_hold(), "{:?}", f.examples);
}

#[test]
fn overlapping_reads_at_one_node_are_not_a_regression() {
    let mut h = clean_history();
    // A seq-2 answer at node 1 that ended after the next read started: no order between them.
    h.ops.push(read(4, 1, 40_000.0, OpOutcome::Found, Some(2)));
    let mut slow = read(5, 1, 39_000.0, OpOutcome::Found, Some(1));
    slow.start_ms = 10_000.0; // started before seq 2 existed, answered late
    slow.end_ms = 41_000.0;
    h.ops.push(slow);
    assert_eq!(run(&h).regressions, 0);
}

#[test]
fn a_dns_answer_that_goes_backwards_is_traced_to_its_write_by_address() {
    let mut h = clean_history();
    // DNS carries no seq and no port: the addresses of seq 1's record, after node 1 showed 2.
    let mut dns = read(4, 1, 40_000.0, OpOutcome::Found, None);
    dns.proto = Proto::Dns;
    dns.content = Some(hosts_of(&content(1)));
    h.ops.push(dns);
    let f = run(&h);
    assert_eq!(f.regressions, 1);
    assert_eq!(f.content_mismatches, 0, "those addresses were written");
}

#[test]
fn a_read_after_a_restart_that_lost_a_seq_is_a_regression() {
    let mut h = clean_history();
    h.faults.push(FaultSpan {
        kind: FaultKind::Kill,
        node: 2,
        start_ms: 31_000.0,
        end_ms: 33_000.0,
        offset_ms: None,
        groups: None,
        peers: None,
    });
    h.ops.push(read(4, 2, 35_000.0, OpOutcome::Found, Some(1)));
    assert_eq!(run(&h).regressions, 1);
}

// ---------------------------------------------------------------- content

#[test]
fn an_answer_with_another_seqs_endpoints_is_a_content_mismatch() {
    let mut h = clean_history();
    // Seq 2 claimed, but the endpoints are seq 1's record.
    let mut r = read(4, 1, 40_000.0, OpOutcome::Found, Some(2));
    r.content = Some(content(1));
    h.ops.push(r);
    let f = run(&h);
    assert_eq!(f.content_mismatches, 1);
    assert!(!f.invariants_hold());
    assert!(f.examples.iter().any(|v| v.kind == "content"));
}

#[test]
fn an_answer_nobody_wrote_is_a_content_mismatch() {
    let mut h = clean_history();
    let mut r = read(4, 2, 40_000.0, OpOutcome::Found, Some(2));
    r.content = Some("127.1.0.2:1000".to_owned()); // half of seq 2's endpoints
    h.ops.push(r);
    let mut dns = read(5, 3, 40_000.0, OpOutcome::Found, None);
    dns.proto = Proto::Dns;
    dns.content = Some("127.7.7.7".to_owned());
    h.ops.push(dns);
    assert_eq!(run(&h).content_mismatches, 2);
}

#[test]
fn a_one_step_publish_that_timed_out_may_have_been_applied_at_a_seq_the_history_never_saw() {
    let mut h = clean_history();
    // Enactor A's one-step publish (the CLI picks the seq at the node) got no answer: the node
    // it asked was killed after applying it. Its content has no seq in the history.
    let mut plan = op(
        OpKind::StalePlan,
        4,
        31_000.0,
        31_010.0,
        OpOutcome::Timeout,
        None,
    );
    plan.content = Some(stale_content(51));
    h.ops.push(plan);
    // Every node then shows it, at the seq the dead node chose, over HTTP and DNS.
    let mut r = read(4, 1, 31_500.0, OpOutcome::Found, Some(3));
    r.content = Some(stale_content(51));
    h.ops.push(r);
    let mut dns = read(5, 2, 31_600.0, OpOutcome::Found, None);
    dns.proto = Proto::Dns;
    dns.content = Some(hosts_of(&stale_content(51)));
    h.ops.push(dns);
    assert_eq!(run(&h).content_mismatches, 0);
    // Content nobody sent is still caught.
    let mut junk = read(6, 3, 31_700.0, OpOutcome::Found, Some(3));
    junk.content = Some(stale_content(52));
    h.ops.push(junk);
    assert_eq!(run(&h).content_mismatches, 1);
}

#[test]
fn a_stale_plans_content_is_not_a_mismatch_but_is_stale() {
    let mut h = clean_history();
    // Enactor A's plan (seq 1, its own content) was sent, so a node may show it — a stale
    // answer 20 s after seq 2, but the content is a real record of seq 1.
    let mut r = read(4, 4, 40_000.0, OpOutcome::Found, Some(1));
    r.content = Some(stale_content(1));
    h.ops.push(r);
    let f = run(&h);
    assert_eq!(f.content_mismatches, 0);
    assert_eq!(f.queries.stale, 1);
}

// ---------------------------------------------------------------- expiry and clock skew

/// One write of seq 1 at 0 s living 15 s; node 1 answers it at 1 s.
fn expiring_history() -> History {
    let mut w = write(1, 0.0, 10.0, 1);
    w.expires_ms = Some(15_000.0);
    History {
        ops: vec![w, read(1, 1, 1_000.0, OpOutcome::Found, Some(1))],
        faults: Vec::new(),
    }
}

#[test]
fn an_expired_name_is_not_empty() {
    let mut h = expiring_history();
    for n in NODES {
        h.ops.push(read(2, n, 30_000.0, OpOutcome::NotFound, None));
    }
    let f = run(&h);
    assert_eq!(f.queries.empty, 0);
    assert_eq!(f.queries.expired, 3);
    assert!(f.invariants_hold(), "{:?}", f.examples);
}

#[test]
fn a_live_name_answered_without_endpoints_before_its_expiry_is_empty() {
    let mut h = expiring_history();
    h.ops.push(read(2, 1, 8_000.0, OpOutcome::NotFound, None));
    let f = run(&h);
    assert_eq!(f.queries.empty, 1);
    assert!(!f.invariants_hold());
}

#[test]
fn a_node_whose_clock_runs_ahead_sees_a_record_expire_early_and_that_is_not_empty() {
    let mut h = expiring_history();
    h.faults.push(FaultSpan {
        kind: FaultKind::Skew,
        node: 2,
        start_ms: 2_000.0,
        end_ms: 12_000.0,
        offset_ms: Some(600_000),
        groups: None,
        peers: None,
    });
    // At 8 s the record is live by real time; node 2's clock is 10 min ahead.
    h.ops.push(read(2, 2, 8_000.0, OpOutcome::NotFound, None));
    h.ops.push(read(2, 3, 8_000.0, OpOutcome::NotFound, None));
    let f = run(&h);
    assert_eq!(f.queries.expired_by_skew, 1, "node 2");
    assert_eq!(f.queries.empty, 1, "node 3 has a right clock");
}

#[test]
fn a_node_whose_clock_runs_behind_must_still_answer() {
    let mut h = expiring_history();
    h.faults.push(FaultSpan {
        kind: FaultKind::Skew,
        node: 2,
        start_ms: 2_000.0,
        end_ms: 12_000.0,
        offset_ms: Some(-600_000),
        groups: None,
        peers: None,
    });
    h.ops.push(read(2, 2, 8_000.0, OpOutcome::NotFound, None));
    assert_eq!(run(&h).queries.empty, 1);
}

#[test]
fn a_write_that_expired_by_the_end_is_not_lost() {
    let mut h = expiring_history();
    for n in NODES {
        h.ops.push(op(
            OpKind::FinalRead,
            n,
            90_000.0,
            90_001.0,
            OpOutcome::NotFound,
            None,
        ));
    }
    let f = run(&h);
    assert_eq!(f.writes.lost, 0);
    // The same write, still live at the end, is lost.
    h.ops[0].expires_ms = Some(200_000.0);
    assert_eq!(run(&h).writes.lost, 1);
}

// ---------------------------------------------------------------- the seed's race

/// The race on NAME: B's newer write (seq 5) acknowledged by the majority at 20 s; enactor A's
/// plan (seq 3, planned before) enacted at partitioned node 3 at 20.2 s; node 3 partitioned
/// from 19 s to 25 s. Final state: `final_at_3` at node 3, seq 5 elsewhere.
fn race_history(final_at_3: Op) -> History {
    let race = |o: Op| Op {
        race: Some(1),
        proto: Proto::Cli,
        ..o
    };
    let mut ops = vec![
        write(1, 0.0, 10.0, 2),
        race(Op {
            content: Some(stale_content(3)),
            ..op(
                OpKind::Sign,
                1,
                19_000.0,
                19_050.0,
                OpOutcome::Planned,
                Some(3),
            )
        }),
        race(write(1, 20_000.0, 20_050.0, 5)),
        race(Op {
            content: Some(stale_content(3)),
            ..op(
                OpKind::StalePlan,
                3,
                20_200.0,
                20_250.0,
                OpOutcome::Applied,
                Some(3),
            )
        }),
        race(Op {
            content: Some(TOMBSTONE.to_owned()),
            ..op(
                OpKind::Cleanup,
                2,
                20_300.0,
                20_350.0,
                OpOutcome::Conflict,
                Some(4),
            )
        }),
    ];
    for n in [1, 2] {
        ops.push(final_read(n, 5));
    }
    ops.push(final_at_3);
    History {
        ops,
        faults: vec![FaultSpan {
            kind: FaultKind::Partition,
            node: 3,
            start_ms: 19_000.0,
            end_ms: 25_000.0,
            offset_ms: None,
            groups: None,
            peers: None,
        }],
    }
}

#[test]
fn a_stale_plan_enacted_at_a_partitioned_node_and_overridden_after_the_heal_is_fine() {
    let f = run(&race_history(final_read(3, 5)));
    assert_eq!(f.race.rounds, 1);
    assert_eq!(f.race.plans_signed, 1);
    assert_eq!(f.race.newer_acknowledged, 1);
    assert_eq!(f.race.stale_enacted, 1);
    assert_eq!(f.race.enacted_then_overridden, 1);
    assert_eq!(f.race.stale_refused, 1, "the clean-up was refused");
    assert_eq!(f.race.stale_held_after_heal, 0);
    assert_eq!(f.writes.stale_applied, 0, "node 3 never showed seq 5 first");
    assert!(f.invariants_hold(), "{:?}", f.examples);
}

#[test]
fn a_stale_plan_that_holds_after_the_heal_is_caught() {
    let held = Op {
        content: Some(stale_content(3)),
        ..final_read(3, 3)
    };
    let f = run(&race_history(held));
    assert_eq!(f.race.stale_held_after_heal, 1);
    assert_eq!(f.race.enacted_then_overridden, 0);
    assert_eq!(f.writes.lost, 1, "B's seq 5 is missing at node 3");
    assert!(!f.invariants_hold());
    assert!(f.examples.iter().any(|v| v.kind == "stale_held"));
}

#[test]
fn a_clean_up_that_deleted_the_newer_write_is_caught() {
    let mut h = race_history(op(
        OpKind::FinalRead,
        3,
        90_000.0,
        90_001.0,
        OpOutcome::NotFound,
        None,
    ));
    for o in &mut h.ops {
        if o.kind == OpKind::Cleanup {
            o.node = 3;
            o.outcome = OpOutcome::Applied;
        }
    }
    let f = run(&h);
    assert_eq!(f.race.stale_held_after_heal, 1);
    assert!(!f.invariants_hold());
}

#[test]
fn a_stale_plan_applied_by_a_node_that_had_shown_the_newer_seq_is_caught() {
    let mut h = race_history(final_read(3, 5));
    // Node 3 was not cut off after all: it answered seq 5 before A's plan arrived, then
    // applied A's seq 3 — the apply-time check failed.
    h.faults.clear();
    h.ops.push(read(9, 3, 20_100.0, OpOutcome::Found, Some(5)));
    let f = run(&h);
    assert_eq!(f.writes.stale_applied, 1);
    assert!(!f.invariants_hold());
    assert!(f.examples.iter().any(|v| v.kind == "stale_applied"));
}

#[test]
fn two_writers_acknowledged_at_one_seq_across_a_partition_are_a_tie_not_a_failure() {
    let mut h = race_history(final_read(3, 5));
    for o in &mut h.ops {
        if o.kind == OpKind::StalePlan {
            o.seq = Some(5);
        }
    }
    let f = run(&h);
    assert_eq!(f.race.ties, 1);
    assert_eq!(f.race.stale_held_after_heal, 0);
    assert!(f.invariants_hold(), "{:?}", f.examples);
}

/// Plan A signed at 19 s with a time-based seq (1000); B's one-step writes, started at 20 s,
/// numbered from what they read (6): lower seqs, but newer writes.
fn plan_versus_later_one_step(final_content: String, final_seq: u64) -> History {
    let race = |o: Op| Op {
        race: Some(1),
        proto: Proto::Cli,
        ..o
    };
    let mut ops = vec![
        write(1, 0.0, 10.0, 5),
        race(Op {
            content: Some(stale_content(1000)),
            ..op(
                OpKind::Sign,
                1,
                19_000.0,
                19_050.0,
                OpOutcome::Planned,
                Some(1000),
            )
        }),
        race(write(1, 20_000.0, 20_050.0, 6)),
        race(Op {
            content: Some(stale_content(1000)),
            ..op(
                OpKind::StalePlan,
                3,
                20_200.0,
                20_250.0,
                OpOutcome::Applied,
                Some(1000),
            )
        }),
    ];
    for n in NODES {
        ops.push(Op {
            content: Some(final_content.clone()),
            ..final_read(n, final_seq)
        });
    }
    History {
        ops,
        faults: Vec::new(),
    }
}

#[test]
fn a_plan_signed_before_a_later_write_must_not_hold_over_it_whatever_its_seq() {
    let f = run(&plan_versus_later_one_step(stale_content(1000), 1000));
    assert_eq!(f.race.stale_held_after_heal, 1);
    assert_eq!(f.writes.lost, 0, "by seq, nothing was lost");
    assert!(!f.invariants_hold());
    // The later write holding at the end is what must happen.
    let f = run(&plan_versus_later_one_step(content(1001), 1001));
    assert_eq!(f.race.stale_held_after_heal, 0);
}

#[test]
fn a_clean_up_of_plan_a_must_not_delete_a_later_write_whatever_its_seq() {
    let mut h = plan_versus_later_one_step(String::new(), 0);
    h.ops.retain(|o| o.kind != OpKind::FinalRead);
    h.ops.push(Op {
        race: Some(1),
        proto: Proto::Cli,
        content: Some(TOMBSTONE.to_owned()),
        ..op(
            OpKind::Cleanup,
            3,
            20_300.0,
            20_350.0,
            OpOutcome::Applied,
            Some(1001),
        )
    });
    for n in NODES {
        h.ops.push(op(
            OpKind::FinalRead,
            n,
            90_000.0,
            90_001.0,
            OpOutcome::NotFound,
            None,
        ));
    }
    let f = run(&h);
    assert!(f.race.stale_held_after_heal >= 1, "{:?}", f.race);
    assert!(!f.invariants_hold());
}

#[test]
fn a_clean_up_applied_where_a_later_write_was_acknowledged_is_stale_applied() {
    // The clean-up of plan A (time-numbered, seq 1001) taken by node 1, which had acknowledged
    // B's later one-step write (seq 6): the name is deleted over a newer write.
    let mut h = plan_versus_later_one_step(content(6), 6);
    h.ops.push(Op {
        race: Some(1),
        proto: Proto::Cli,
        content: Some(TOMBSTONE.to_owned()),
        ..op(
            OpKind::Cleanup,
            1,
            20_300.0,
            20_350.0,
            OpOutcome::Applied,
            Some(1001),
        )
    });
    let f = run(&h);
    assert_eq!(f.writes.stale_applied, 1, "{:?}", f.examples);
    assert!(!f.invariants_hold());
}

#[test]
fn not_found_after_an_acknowledged_deletion_is_not_empty() {
    let mut h = clean_history();
    h.ops.push(Op {
        content: Some(TOMBSTONE.to_owned()),
        ..op(
            OpKind::Write,
            1,
            40_000.0,
            40_010.0,
            OpOutcome::Applied,
            Some(3),
        )
    });
    // A lagging node shows a write acknowledged after the deletion only at one node...
    h.ops.push(write(3, 41_000.0, 41_010.0, 4));
    // ...and node 1 answers "not found" 300 ms later: the deletion is what it knows.
    h.ops.push(read(9, 1, 41_300.0, OpOutcome::NotFound, None));
    h.ops.retain(|o| o.kind != OpKind::FinalRead);
    for n in NODES {
        h.ops.push(final_read(n, 4));
    }
    let f = run(&h);
    assert_eq!(f.queries.empty, 0, "{:?}", f.examples);
}

#[test]
fn a_node_whose_clock_was_set_right_gets_the_staleness_bound_to_recover_and_no_more() {
    let mut h = expiring_history();
    h.ops[0].expires_ms = Some(60_000.0);
    h.faults.push(FaultSpan {
        kind: FaultKind::Skew,
        node: 2,
        start_ms: 2_000.0,
        end_ms: 12_000.0,
        offset_ms: Some(600_000),
        groups: None,
        peers: None,
    });
    // 3 s after the clock was set right: recovering. 20 s after: empty.
    h.ops.push(read(2, 2, 15_000.0, OpOutcome::NotFound, None));
    h.ops.push(read(3, 2, 32_000.0, OpOutcome::NotFound, None));
    let f = run(&h);
    assert_eq!(f.queries.expired_by_skew, 1);
    assert_eq!(f.queries.empty, 1);
}

// ---------------------------------------------------------------- partitions of groups

fn split(start: f64, end: f64, a: &[usize], b: &[usize]) -> Vec<FaultSpan> {
    a.iter()
        .chain(b)
        .map(|&node| FaultSpan {
            kind: FaultKind::Split,
            node,
            start_ms: start,
            end_ms: end,
            offset_ms: None,
            groups: Some(vec![a.to_vec(), b.to_vec()]),
            peers: None,
        })
        .collect()
}

fn expiring_write(node: usize, start: f64, seq: u64, expires: f64) -> Op {
    Op {
        expires_ms: Some(expires),
        ..write(node, start, start + 10.0, seq)
    }
}

/// Seq 1 (expiring at 20 s) known everywhere; a split cuts node 1 off from 10 s to 40 s; seq
/// 2 is written on the other side at 12 s. Node 1's copy of seq 1 expires during the split.
fn split_history() -> History {
    let mut ops = vec![
        expiring_write(1, 0.0, 1, 20_000.0),
        expiring_write(2, 12_000.0, 2, 90_000.0),
    ];
    for n in NODES {
        ops.push(read(1, n, 1_000.0, OpOutcome::Found, Some(1)));
    }
    History {
        ops,
        faults: split(10_000.0, 40_000.0, &[1], &[2, 3]),
    }
}

#[test]
fn a_node_cut_off_before_a_write_was_made_is_not_empty_without_it() {
    let mut h = split_history();
    h.ops.push(read(2, 1, 30_000.0, OpOutcome::NotFound, None));
    h.ops.push(read(2, 2, 30_000.0, OpOutcome::Found, Some(2)));
    let f = run(&h);
    assert_eq!(f.queries.empty, 0);
    assert_eq!(f.queries.unreached_by_partition, 1);
    assert_eq!(f.queries.failed, 0);
}

#[test]
fn the_same_answer_long_after_the_heal_is_empty() {
    let mut h = split_history();
    for f in &mut h.faults {
        f.end_ms = 20_000.0;
    }
    // The heal was 10 s (twice the bound) before the read: node 1 should have seq 2 by now.
    h.ops.push(read(2, 1, 30_000.0, OpOutcome::NotFound, None));
    h.ops.push(read(2, 2, 30_000.0, OpOutcome::Found, Some(2)));
    let f = run(&h);
    assert_eq!(f.queries.empty, 1);
    assert_eq!(f.queries.unreached_by_partition, 0);
    assert!(!f.invariants_hold());
}

#[test]
fn a_write_made_before_the_split_started_is_no_excuse() {
    let mut h = split_history();
    // Seq 2 was acknowledged 5 s before the cut: node 1 had the bound to get it.
    h.ops[1] = expiring_write(2, 4_000.0, 2, 90_000.0);
    h.ops.push(read(2, 1, 30_000.0, OpOutcome::NotFound, None));
    h.ops.push(read(2, 2, 30_000.0, OpOutcome::Found, Some(2)));
    assert_eq!(run(&h).queries.empty, 1);
}

#[test]
fn a_node_that_showed_the_name_and_lost_it_during_a_split_is_empty() {
    let mut h = split_history();
    // Seq 1 lives on (no expiry), node 1 showed it, then answers without it during the split.
    h.ops[0] = write(1, 0.0, 10.0, 1);
    h.ops.push(read(2, 1, 30_000.0, OpOutcome::NotFound, None));
    h.ops.push(read(2, 2, 30_000.0, OpOutcome::Found, Some(2)));
    let f = run(&h);
    assert_eq!(f.queries.empty, 1);
    assert_eq!(f.queries.unreached_by_partition, 0);
}

#[test]
fn a_round_nobody_answers_during_a_split_is_still_failed() {
    let mut h = split_history();
    for n in NODES {
        h.ops.push(read(2, n, 30_000.0, OpOutcome::Timeout, None));
    }
    assert_eq!(run(&h).queries.failed, 1);
}

#[test]
fn stale_answers_across_a_partition_are_counted_apart() {
    let mut h = split_history();
    h.ops[0] = write(1, 0.0, 10.0, 1);
    // Node 1 (cut off from the writer) and node 3 (on the writer's side) both lag.
    h.ops.push(read(2, 1, 30_000.0, OpOutcome::Found, Some(1)));
    h.ops.push(read(2, 3, 30_000.0, OpOutcome::Found, Some(1)));
    let f = run(&h);
    assert_eq!(f.queries.stale, 2);
    assert_eq!(
        f.queries.stale_partitioned, 1,
        "only node 1's lag is the split's"
    );
    assert_eq!(f.stale_marks.len(), 2);
    assert_eq!(f.queries.empty + f.queries.failed, 0);
}

/// A read whose answer said (or did not say) that its node was cut off.
fn flagged(mut op: Op, cut_off: bool) -> Op {
    op.cut_off = Some(cut_off);
    op
}

/// A read made in round `round` in place of `from`'s flagged answer.
fn failover(round: u64, node: usize, from: usize, outcome: OpOutcome, seq: Option<u64>) -> Op {
    Op {
        failover_from: Some(from),
        ..flagged(read(round, node, 30_010.0, outcome, seq), false)
    }
}

#[test]
fn stale_answers_are_split_by_whether_their_node_said_it_was_cut_off() {
    let mut h = split_history();
    h.ops[0] = write(1, 0.0, 10.0, 1);
    // Node 1, alone on its side of the split, says it is cut off; the reader fails over to
    // node 2, which the round had asked already (not a retry: the round is not slow), and
    // takes its seq 2. Node 3 lags without saying anything.
    h.ops.push(flagged(
        read(2, 1, 30_000.0, OpOutcome::Found, Some(1)),
        true,
    ));
    h.ops.push(flagged(
        read(2, 2, 30_000.0, OpOutcome::Found, Some(2)),
        false,
    ));
    h.ops.push(flagged(
        read(2, 3, 30_000.0, OpOutcome::Found, Some(1)),
        false,
    ));
    h.ops.push(failover(2, 2, 1, OpOutcome::Found, Some(2)));
    let f = run(&h);
    let q = &f.queries;
    assert_eq!(q.stale, 2);
    assert_eq!(
        (q.stale_cut_off, q.stale_cut_off_kept, q.stale_connected),
        (1, 0, 1)
    );
    assert_eq!(
        (q.cut_off_answers, q.failover_reads, q.fallbacks),
        (1, 1, 0)
    );
    assert_eq!((q.slow, q.failed, q.empty), (0, 0, 0));
    let marks: Vec<(usize, bool)> = f.stale_marks.iter().map(|m| (m.node, m.cut_off)).collect();
    assert_eq!(marks, vec![(1, true), (3, false)]);
}

#[test]
fn a_flagged_stale_answer_kept_for_want_of_a_better_one_is_counted_kept_not_failed() {
    let mut h = split_history();
    h.ops[0] = write(1, 0.0, 10.0, 1);
    // Only node 1 answers, saying it is cut off; both nodes failed over to time out. The
    // reader keeps the flagged answer: the round is answered (never fail closed).
    h.ops.push(Op {
        fallback: true,
        ..flagged(read(2, 1, 30_000.0, OpOutcome::Found, Some(1)), true)
    });
    h.ops.push(read(2, 2, 30_000.0, OpOutcome::Timeout, None));
    h.ops.push(read(2, 3, 30_000.0, OpOutcome::Timeout, None));
    h.ops.push(failover(2, 2, 1, OpOutcome::Timeout, None));
    h.ops.push(failover(2, 3, 1, OpOutcome::Timeout, None));
    let q = run(&h).queries;
    assert_eq!((q.stale, q.stale_cut_off, q.stale_cut_off_kept), (1, 1, 1));
    assert_eq!(
        (q.cut_off_answers, q.failover_reads, q.fallbacks),
        (1, 2, 1)
    );
    assert_eq!((q.failed, q.slow), (0, 0));
}

#[test]
fn the_cut_off_fields_survive_the_history_file_and_old_histories_load_without_them(
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = dpin_tests::test_dir()?;
    let path = dir.path().join("h.jsonl");
    let h = History {
        ops: vec![
            Op {
                fallback: true,
                ..flagged(read(1, 1, 10.0, OpOutcome::Found, Some(1)), true)
            },
            failover(1, 2, 1, OpOutcome::Timeout, None),
        ],
        faults: Vec::new(),
    };
    h.write_jsonl(&path)?;
    assert_eq!(History::read_jsonl(&path)?, h);
    std::fs::write(
        &path,
        r#"{"type":"op","kind":"read","proto":"http","process":"r","node":1,"name":"a.b","start_ms":1.0,"end_ms":2.0,"outcome":"found","seq":1,"endpoints":1}"#,
    )?;
    let old = History::read_jsonl(&path)?;
    assert_eq!(
        (
            old.ops[0].cut_off,
            old.ops[0].failover_from,
            old.ops[0].fallback
        ),
        (None, None, false)
    );
    Ok(())
}

#[test]
fn a_read_concurrent_with_an_acknowledged_deletion_may_see_it() {
    let mut h = clean_history();
    // A tombstone at seq 3, under way from 40 000 to 40 300 ms; a read at 40 100 sees it.
    h.ops.push(Op {
        content: Some(TOMBSTONE.to_owned()),
        ..op(
            OpKind::Write,
            2,
            40_000.0,
            40_300.0,
            OpOutcome::Applied,
            Some(3),
        )
    });
    h.ops.push(read(4, 2, 40_100.0, OpOutcome::NotFound, None));
    h.ops.push(read(4, 1, 40_100.0, OpOutcome::Found, Some(2)));
    assert_eq!(run(&h).queries.empty, 0);
    // The same answer before the deletion started is empty.
    let mut early = clean_history();
    early
        .ops
        .push(read(4, 2, 39_000.0, OpOutcome::NotFound, None));
    assert_eq!(run(&early).queries.empty, 1);
}

#[test]
fn fault_spans_know_which_nodes_they_separate() {
    let one_way = FaultSpan {
        kind: FaultKind::OneWay,
        node: 1,
        start_ms: 0.0,
        end_ms: 1.0,
        offset_ms: None,
        groups: Some(vec![vec![1], vec![2, 3]]),
        peers: None,
    };
    assert!(one_way.separates(1, 2) && one_way.separates(3, 1));
    assert!(!one_way.separates(2, 3), "same side");
    assert!(!one_way.separates(1, 1));
    let alone = FaultSpan {
        kind: FaultKind::Partition,
        node: 2,
        groups: None,
        ..one_way.clone()
    };
    assert!(alone.separates(2, 3) && alone.separates(1, 2));
    assert!(!alone.separates(1, 3));
    let pause = FaultSpan {
        kind: FaultKind::Pause,
        ..alone
    };
    assert!(!pause.separates(2, 3), "a pause cuts nothing");
}

fn heal_probe(heal: u64, node: usize, at: f64, end: f64, seen: bool) -> Op {
    Op {
        process: dpin_sim::workload::HEAL_PROBE.to_owned(),
        round: Some(heal),
        want_seq: Some(5),
        ..op(
            OpKind::Probe,
            node,
            at,
            end,
            if seen {
                OpOutcome::Found
            } else {
                OpOutcome::NotFound
            },
            seen.then_some(5),
        )
    }
}

#[test]
fn heal_convergence_is_the_slowest_node_after_each_heal() {
    let mut h = clean_history();
    h.ops.push(heal_probe(1, 1, 50_000.0, 50_300.0, true));
    h.ops.push(heal_probe(1, 2, 50_000.0, 51_200.0, true));
    h.ops.push(heal_probe(2, 1, 60_000.0, 60_100.0, true));
    let f = run(&h);
    assert_eq!(f.heal.heals, 2);
    assert_eq!(f.heal.unconverged, 0);
    assert_eq!(f.heal.max, 1_200.0);
    // Each heal is reported with its own time and the node that came last.
    let each: Vec<(f64, Option<f64>, Option<usize>)> = f
        .heal
        .each
        .iter()
        .map(|d| (d.at_ms, d.converged_ms, d.last_node))
        .collect();
    assert_eq!(
        each,
        [
            (50_000.0, Some(1_200.0), Some(2)),
            (60_000.0, Some(100.0), Some(1))
        ]
    );
    assert_eq!(
        f.propagation.samples,
        run(&clean_history()).propagation.samples,
        "heal probes are not propagation samples"
    );
    // A node that never caught up (and was not faulted meanwhile) leaves the heal unconverged.
    h.ops.push(heal_probe(2, 3, 60_000.0, 70_000.0, false));
    let f = run(&h).heal;
    assert_eq!(f.unconverged, 1);
    assert_eq!(
        (f.each[1].converged_ms, f.each[1].last_node),
        (None, Some(3)),
        "the unconverged heal names the node that never showed it"
    );
    // Unless it was killed after the heal.
    h.faults.push(FaultSpan {
        kind: FaultKind::Kill,
        node: 3,
        start_ms: 61_000.0,
        end_ms: 64_000.0,
        offset_ms: None,
        groups: None,
        peers: None,
    });
    assert_eq!(run(&h).heal.unconverged, 0);
}

#[test]
fn a_heal_probe_cut_off_again_from_every_holder_is_left_out_of_the_heal_time() {
    // Seq 5 written at node 1 during a split of {1, 2} from {3, 4}, healed at 50 s.
    let mut h = clean_history();
    h.ops.push(write(1, 45_000.0, 45_010.0, 5));
    h.faults.extend(split(40_000.0, 50_000.0, &[1, 2], &[3, 4]));
    h.ops.push(heal_probe(1, 2, 50_000.0, 50_100.0, true));
    h.ops.push(heal_probe(1, 3, 50_000.0, 50_400.0, true));
    // At 50.5 s a new split puts node 4 alone with nobody holding seq 5 (1, 2 and 3 do):
    // it shows it only after that split heals at 56 s.
    h.faults.extend(split(50_500.0, 56_000.0, &[1, 2, 3], &[4]));
    h.ops.push(heal_probe(1, 4, 50_000.0, 56_300.0, true));
    let f = run(&h).heal;
    assert_eq!(f.interrupted_probes, 1, "{f:?}");
    assert_eq!(
        f.max, 400.0,
        "node 4's wait measures the second split, not the heal"
    );
    assert_eq!(f.unconverged, 0);

    // Node 3 on the writer's side of that split showing it late still counts: its holder
    // was within reach all along.
    let mut late = h.clone();
    late.ops
        .retain(|o| !(o.node == 3 && o.process == dpin_sim::workload::HEAL_PROBE));
    late.ops.push(heal_probe(1, 3, 50_000.0, 53_000.0, true));
    let f = run(&late).heal;
    assert_eq!(f.interrupted_probes, 1, "{f:?}");
    assert_eq!(
        f.max, 3_000.0,
        "a slow catch-up is not hidden behind a later fault"
    );

    // Had node 4 been on the holders' side, its late probe would count, and one that never
    // showed it would leave the heal unconverged.
    let mut same_side = clean_history();
    same_side.ops.push(write(1, 45_000.0, 45_010.0, 5));
    same_side
        .faults
        .extend(split(40_000.0, 50_000.0, &[1, 2], &[3, 4]));
    same_side
        .faults
        .extend(split(50_500.0, 56_000.0, &[1, 4], &[2, 3]));
    same_side
        .ops
        .push(heal_probe(1, 2, 50_000.0, 50_100.0, true));
    same_side
        .ops
        .push(heal_probe(1, 4, 50_000.0, 56_300.0, true));
    assert_eq!(run(&same_side).heal.max, 6_300.0);
    assert_eq!(run(&same_side).heal.interrupted_probes, 0);
    same_side
        .ops
        .push(heal_probe(1, 3, 50_000.0, 60_000.0, false));
    assert_eq!(run(&same_side).heal.unconverged, 1);
}

#[test]
fn a_heal_probe_whose_island_holds_a_holder_it_has_no_connection_to_is_left_out() {
    // Seq 5 written at node 1 while {1, 2} were split from {3, 4}; healed at 50 s. Node 3
    // shows it 200 ms later; at 50.5 s the same split comes back, so node 4's island is
    // {3, 4}, and node 4 shows seq 5 only after that heals.
    let history = |links: Option<&[(usize, &[usize])]>| {
        let mut h = clean_history();
        h.ops.push(write(1, 45_000.0, 45_010.0, 5));
        h.faults.extend(split(40_000.0, 50_000.0, &[1, 2], &[3, 4]));
        let mut again = split(50_500.0, 56_000.0, &[1, 2], &[3, 4]);
        if let Some(links) = links {
            for f in &mut again {
                f.peers = Some(
                    links
                        .iter()
                        .find(|(n, _)| *n == f.node)
                        .map(|(_, p)| p.to_vec())
                        .unwrap_or_default(),
                );
            }
        }
        h.faults.extend(again);
        h.ops.push(heal_probe(1, 2, 50_000.0, 50_100.0, true));
        h.ops.push(heal_probe(1, 3, 50_000.0, 50_200.0, true));
        h.ops.push(heal_probe(1, 4, 50_000.0, 56_300.0, true));
        run(&h).heal
    };
    // No connections recorded (an older history): node 3 is on its side, so it counts.
    let f = history(None);
    assert_eq!((f.max, f.interrupted_probes), (6_300.0, 0), "{f:?}");
    // Recorded: nodes 3 and 4 each connected only across the cut. Nothing could reach node 4.
    let f = history(Some(&[
        (1, &[3, 4]),
        (2, &[3, 4]),
        (3, &[1, 2]),
        (4, &[1, 2]),
    ]));
    assert_eq!((f.max, f.interrupted_probes), (200.0, 1), "{f:?}");
    // One end's report of the 3-4 connection is enough: node 4's late probe counts.
    let f = history(Some(&[(1, &[3]), (2, &[4]), (3, &[1, 4]), (4, &[2])]));
    assert_eq!((f.max, f.interrupted_probes), (6_300.0, 0), "{f:?}");
}

#[test]
fn heal_targets_skip_deleted_and_expiring_names() {
    let other = |name: &str, mut o: Op| {
        o.name = name.to_owned();
        o
    };
    let ops = vec![
        expiring_write(1, 0.0, 3, 1e9),
        other("gone.zone", write(1, 0.0, 10.0, 1)),
        other(
            "gone.zone",
            Op {
                content: Some(TOMBSTONE.to_owned()),
                ..write(1, 20.0, 30.0, 2)
            },
        ),
        other("soon.zone", expiring_write(1, 0.0, 4, 5_000.0)),
        // Acknowledged after the heal: not a target.
        other("late.zone", write(1, 2_000.0, 2_010.0, 9)),
    ];
    let t = dpin_sim::workload::heal_targets(&ops, 1_000.0, 10_000.0);
    assert_eq!(
        t.into_iter().collect::<Vec<_>>(),
        vec![(NAME.to_owned(), 3)]
    );
}

#[test]
fn the_report_lists_each_group_partition_once() {
    let mut faults = split(1_000.0, 2_000.0, &[1], &[2, 3]);
    faults.extend(split(5_000.0, 6_000.0, &[3], &[1, 2]));
    let h = History {
        ops: Vec::new(),
        faults,
    };
    let g = dpin_sim::report::partition_groups(&h);
    assert_eq!(g.len(), 2);
    assert_eq!((g[0].a.clone(), g[0].b.clone()), (vec![1], vec![2, 3]));
    assert_eq!(g[1].start_s, 5.0);
}

// ---------------------------------------------------------------- the nemesis and the links

mod wan_and_nemesis {
    use dpin_sim::history::FaultKind;
    use dpin_sim::nemesis::may_start;
    use dpin_sim::wan::{cut_matrix, node_of, CutKind, LinkModel, Partition};
    use rand::SeedableRng;

    #[test]
    fn a_split_cuts_both_ways_and_a_one_way_cut_only_one() {
        let split = Partition {
            kind: CutKind::Split,
            a: vec![1, 2],
            b: vec![3, 4, 5],
        };
        assert!(split.drops(1, 3) && split.drops(3, 1));
        assert!(!split.drops(1, 2) && !split.drops(4, 5));
        let one_way = Partition {
            kind: CutKind::OneWay,
            ..split.clone()
        };
        assert!(one_way.drops(3, 1), "a cannot hear b");
        assert!(!one_way.drops(1, 3), "b still hears a");
        assert!(one_way.separates(1, 3));
        let alone = Partition::isolate(2, 4);
        assert_eq!(alone.b, vec![1, 3, 4]);
        assert!(alone.drops(2, 4) && alone.drops(4, 2) && !alone.drops(1, 3));
        let m = cut_matrix(3, &[Partition::isolate(1, 3)]);
        assert_eq!(
            m,
            vec![false, true, true, true, false, false, true, false, false]
        );
        assert_eq!(cut_matrix(2, &[]), vec![false; 4]);
    }

    #[test]
    fn drawn_groups_cover_every_node_once() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for n in 2..=25 {
            for kind in [CutKind::Split, CutKind::OneWay, CutKind::Isolate] {
                let p = Partition::draw(kind, n, &mut rng);
                assert_eq!(p.nodes(), (1..=n).collect::<Vec<_>>());
                assert_eq!(p.a.len() + p.b.len(), n);
                match kind {
                    CutKind::Split => assert_eq!(p.a.len(), n / 2),
                    CutKind::OneWay => assert!((1..=n / 2).contains(&p.a.len())),
                    CutKind::Isolate => assert_eq!(p.a.len(), 1),
                }
            }
        }
    }

    #[test]
    fn link_models_are_checked_and_drawn_within_their_bounds() {
        let m = LinkModel {
            delay_ms: 20.0,
            jitter_ms: 5.0,
            loss_pct: 1.0,
        };
        assert!(m.validate().is_ok());
        for bad in [
            LinkModel {
                jitter_ms: 30.0,
                ..m
            },
            LinkModel {
                loss_pct: 100.0,
                ..m
            },
            LinkModel {
                delay_ms: f64::NAN,
                ..m
            },
            LinkModel {
                delay_ms: -1.0,
                ..m
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut lost = 0;
        for _ in 0..20_000 {
            match m.draw(&mut rng) {
                Some(d) => assert!((15.0..=25.0).contains(&d), "{d}"),
                None => lost += 1,
            }
        }
        // 1% of 20 000, give or take a generous margin (seeded, so exact every run).
        assert!((100..=300).contains(&lost), "{lost}");
        let ideal = LinkModel::default();
        assert!(ideal.is_ideal());
        assert_eq!(ideal.draw(&mut rng), Some(0.0));
    }

    #[test]
    fn only_node_addresses_are_switched() {
        assert_eq!(node_of([198, 18, 0, 7], 25), Some(7));
        assert_eq!(node_of([198, 18, 0, 26], 25), None);
        assert_eq!(node_of([198, 18, 0, 0], 25), None);
        assert_eq!(node_of([198, 19, 0, 7], 25), None);
    }

    #[test]
    fn max_down_and_group_partitions_exclude_each_other() {
        // --max-down 2: a second node may go down, a third may not.
        assert!(may_start(FaultKind::Kill, 1, false, 2));
        assert!(!may_start(FaultKind::Pause, 2, false, 2));
        // A split needs every node up, and holds off every other down-fault while it lasts.
        assert!(may_start(FaultKind::Split, 0, false, 2));
        assert!(!may_start(FaultKind::Split, 1, false, 2));
        assert!(!may_start(FaultKind::OneWay, 0, true, 2));
        assert!(!may_start(FaultKind::Kill, 0, true, 2));
        // Skew runs beside anything.
        assert!(may_start(FaultKind::Skew, 2, true, 2));
    }
}

/// A record refreshed while node 3 was down: node 3 comes back holding only the expired older
/// write. A "not found" from it just after it came back is `empty_while_isolated` (it could not
/// have heard the refresh, and gets the staleness bound to catch up, as any node does for any
/// write), never folded into `empty`; the same answer once the bound has passed is empty, and
/// so is one from a node that was up throughout.
#[test]
fn a_node_down_for_a_whole_refresh_gets_the_bound_to_catch_up_and_no_more() {
    let mut first = write(1, 0.0, 10.0, 1);
    first.expires_ms = Some(15_000.0);
    let mut refresh = write(1, 12_000.0, 12_010.0, 2);
    refresh.expires_ms = Some(120_000.0);
    let mut h = History {
        ops: vec![first, refresh],
        faults: vec![FaultSpan {
            kind: FaultKind::Kill,
            node: 3,
            start_ms: 11_000.0,
            end_ms: 30_000.0,
            offset_ms: None,
            groups: None,
            peers: None,
        }],
    };
    // 1 s after node 3 is back, within the bound.
    h.ops.push(read(1, 3, 31_000.0, OpOutcome::NotFound, None));
    let f = run(&h);
    assert_eq!(
        (f.queries.empty_while_isolated, f.queries.empty),
        (1, 0),
        "{:?}",
        f.examples
    );

    // 10 s after it came back: it has had the bound, and still answers nothing.
    h.ops.push(read(2, 3, 40_000.0, OpOutcome::NotFound, None));
    // Node 2 was up all along.
    h.ops.push(read(1, 2, 31_000.0, OpOutcome::NotFound, None));
    let f = run(&h);
    assert_eq!(f.queries.empty_while_isolated, 1);
    assert_eq!(f.queries.empty, 2, "{:?}", f.examples);
    assert!(!f.invariants_hold());
}
