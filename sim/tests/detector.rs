//! The node's failure detector and degree in the simulator (issue 16): idle traffic per node
//! does not grow with the network, a paused node is found by every peer, and nobody healthy
//! is marked down. Simulated time only: no wall-clock assertion.

use dpin_sim::simulate::{run_one, Report, Scenario, SimulateArgs, VerifyMode};

fn convergence(nodes: usize, seed: u64) -> Report {
    let mut a = SimulateArgs::new(Scenario::Convergence, nodes, seed);
    a.verify = VerifyMode::Cached;
    a.idle_s = 5;
    match run_one(&a, seed) {
        Ok(r) => r,
        Err((e, replay)) => panic!("{e}\n  replay: {replay}"),
    }
}

#[test]
fn idle_messages_per_node_do_not_grow_with_the_network() {
    let small = convergence(40, 3);
    let large = convergence(400, 3);
    let (s, l) = (
        small.idle_messages_per_node_per_s.expect("measured"),
        large.idle_messages_per_node_per_s.expect("measured"),
    );
    assert!(s > 0.0, "the detector does send probes while idle");
    // The degree is the node's target (12; at most 24 with inbound), whatever N.
    assert!(large.mean_degree <= 24.0, "{}", large.mean_degree);
    assert!(
        l <= s * 1.1,
        "idle msgs/node/s grew with N: {s:.2} at 40, {l:.2} at 400"
    );
}

#[test]
fn a_paused_node_is_marked_down_by_every_peer_and_no_healthy_node_is() {
    for seed in 1..=3 {
        let r = convergence(60, seed);
        assert_eq!(r.idle_false_downs, Some(0), "seed {seed}");
        let (by, of) = r.detected_by.expect("measured");
        assert_eq!(by, of, "seed {seed}: every peer marks the paused node down");
        let max = r.detect_ms_max.expect("measured");
        // The detector's own bound (probe after 0.5 s, three timeouts, 0.1 s ticks) plus
        // two simulated link delays: well inside the 2 s target.
        assert!(max <= 2_000, "seed {seed}: detected after {max} ms");
    }
}
