//! The gossip model against real gossipsub (issue 11 item 3): N rust-libp2p gossipsub swarms
//! in this process, connected along the model's own connection graph, with the node's mesh
//! parameters, at N = 3, 5, 20, 40. Ignored by default (about three minutes of real time, real
//! sockets on loopback); run it with
//! `cargo test -p dpin-sim --release --test simulate_calibrate -- --ignored --nocapture`.
//! The tolerance is stated in `dpin_sim::simulate::calibrate`.

use dpin_sim::simulate::calibrate;

/// Messages per size: enough that one message's timing luck does not move the means.
const MESSAGES: usize = 60;

#[test]
#[ignore = "about three minutes of real gossipsub swarms; run by hand (see the file's docs)"]
fn calibrate_model_against_real_gossipsub() {
    let rows = calibrate::calibrate(&[3, 5, 20, 40], MESSAGES, 1).expect("calibration ran");
    for r in &rows {
        println!("{}", r.text());
    }
    for r in &rows {
        assert_eq!(
            r.real.delivered, MESSAGES,
            "real gossipsub delivered every message at N={}",
            r.nodes
        );
        assert!(r.within, "model outside the stated tolerance: {}", r.text());
    }
}
