//! Seeded randomness, split per purpose.
//!
//! Every random choice of a run comes from one seed. Each purpose (topology, network,
//! gossip, sync, scenario) gets its own ChaCha8 stream derived as
//! `blake3("dpin-sim/v1" || seed || purpose)`, so adding a draw for one purpose does not shift
//! every other purpose's draws, and two runs of one seed make identical choices.

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The RNG type used everywhere in the simulator.
pub type SimRng = ChaCha8Rng;

/// The stream for `purpose` under `seed`.
pub fn stream(seed: u64, purpose: &str) -> SimRng {
    let mut h = blake3::Hasher::new();
    h.update(b"dpin-sim/v1");
    h.update(&seed.to_le_bytes());
    h.update(purpose.as_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}
