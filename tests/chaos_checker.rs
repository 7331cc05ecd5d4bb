//! Tests of the chaos checker (`dpin_sim::checker`) on hand-made histories.
//!
//! A checker that never finds anything is worse than none: it turns a broken cluster into a
//! green build. So each invariant gets a history that breaks exactly it — a lost write, an
//! empty answer, a stale read, a failed query, a stale plan that was applied — and must be
//! caught; a clean history with the same shape must come out with zeros.

use dpin_sim::checker::{check, CheckConfig, Findings};
use dpin_sim::history::{FaultKind, FaultSpan, History, Op, OpKind, OpOutcome, Proto};

const NAME: &str = "svc-0-0.zone";
const NODES: [usize; 3] = [1, 2, 3];

fn op(kind: OpKind, node: usize, start: f64, end: f64, outcome: OpOutcome, seq: Option<u64>) -> Op {
    let found = outcome == OpOutcome::Found;
    Op {
        kind,
        proto: Proto::Http,
        process: "test".to_owned(),
        node,
        name: NAME.to_owned(),
        round: None,
        start_ms: start,
        end_ms: end,
        outcome,
        seq,
        endpoints: found.then_some(2),
        detail: None,
        want_seq: None,
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
        op(
            OpKind::StalePlan,
            2,
            20_100.0,
            20_105.0,
            OpOutcome::Stale,
            Some(1),
        ),
        op(
            OpKind::Cleanup,
            2,
            20_110.0,
            20_115.0,
            OpOutcome::Stale,
            Some(1),
        ),
    ];
    // Round 1 at 1 s: everyone has seq 1.
    for n in NODES {
        ops.push(read(1, n, 1_000.0, OpOutcome::Found, Some(1)));
    }
    // Round 2 at 20.5 s: node 3 is paused (no answer), the others answer seq 1 or 2 — within
    // the staleness bound of the seq-2 ack, so not stale.
    ops.push(read(2, 1, 20_500.0, OpOutcome::Found, Some(1)));
    ops.push(read(2, 2, 20_500.0, OpOutcome::Found, Some(2)));
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
    // 40 s: 20 s after seq 2 was acknowledged, node 3 still answers seq 1.
    h.ops.push(read(4, 3, 40_000.0, OpOutcome::Found, Some(1)));
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
fn an_applied_stale_plan_is_caught() {
    let mut h = clean_history();
    for o in &mut h.ops {
        if o.kind == OpKind::Cleanup {
            o.outcome = OpOutcome::Applied;
        }
    }
    let f = run(&h);
    assert_eq!(f.writes.stale_applied, 1);
    assert_eq!(f.writes.refused_stale, 1);
    assert_eq!(
        f.writes.acknowledged, 2,
        "a stale write is never counted as acknowledged"
    );
    assert!(!f.invariants_hold());
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
    });
    assert_eq!(run(&h).propagation.samples, 1);
}

#[test]
fn histories_round_trip_through_jsonl() -> Result<(), Box<dyn std::error::Error>> {
    let h = clean_history();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("h.jsonl");
    h.write_jsonl(&path)?;
    let back = History::read_jsonl(&path)?;
    assert_eq!(back.faults, h.faults);
    assert_eq!(back.ops.len(), h.ops.len());
    assert_eq!(run(&back), run(&h));
    Ok(())
}
