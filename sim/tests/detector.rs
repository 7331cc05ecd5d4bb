//! The node's failure detector and degree in the simulator (issue 16): idle traffic per node
//! does not grow with the network, a paused node is found by its watchers within 2 s and by
//! every peer later, and nobody healthy is marked down. Simulated time only: no wall-clock assertion.

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
fn a_paused_node_is_marked_down_by_its_watchers_within_two_seconds_and_by_every_peer_later() {
    for seed in 1..=3 {
        let r = convergence(60, seed);
        assert_eq!(r.idle_false_downs, Some(0), "seed {seed}");
        let (wby, wof) = r.detected_by_watchers.expect("measured");
        assert!(wof >= 2, "seed {seed}: watched by {wof} peers");
        assert_eq!(
            wby, wof,
            "seed {seed}: every watcher marks the paused node down"
        );
        let max = r.detect_watchers_ms_max.expect("measured");
        // The detector's own bound (probe after 0.5 s, or 0.75 s for a watcher that watches
        // back, three timeouts, 0.1 s ticks) plus simulated link delays: inside the 2 s target.
        assert!(max <= 2_000, "seed {seed}: watchers took {max} ms");
        // The others find it in their round of unwatched peers (one probe per second).
        let (by, of) = r.detected_by.expect("measured");
        assert_eq!(by, of, "seed {seed}: every peer marks the paused node down");
        let all = r.detect_ms_max.expect("measured");
        assert!(all <= 25_000, "seed {seed}: the last peer took {all} ms");
    }
}
