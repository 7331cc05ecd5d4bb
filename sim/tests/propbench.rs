//! The propagation bench's one-process-per-swarm side (issue 14): `dpin-bench raw-peer`
//! children, driven over their stdin and stdout, form a mesh and deliver every message, each
//! timed from the origin's publish to the last receipt on the host's monotonic clock. No
//! figure is asserted, only that every message is measured and none lost.

use std::path::Path;

use dpin_sim::propbench::{raw_procs_side, Observe, PropagationArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_per_swarm_delivers_and_times_every_message() {
    let args = PropagationArgs {
        nodes: vec![3],
        messages: 6,
        interval_ms: 5,
        payload_bytes: 200,
        observe: vec![Observe::Wait],
        poll_us: 500,
        timeout_ms: 5_000,
        dpin: None,
        base_dir: None,
        no_raw_procs: false,
    };
    let exe = Path::new(env!("CARGO_BIN_EXE_dpin-bench"));
    let side = raw_procs_side(3, &args, exe)
        .await
        .expect("the raw-peer processes ran");
    assert_eq!(side.lost, 0, "{side:?}");
    assert_eq!(side.delivered, 6, "{side:?}");
    // Times from the clock the children read: a receipt after its publish, and not absurd.
    assert!(side.p50_ms >= 0.0 && side.max_ms < 5_000.0, "{side:?}");
}
