//! Issue 10's remaining gap, reproduced: a deletion and a write made concurrently from the
//! same read carry the same seq, and the content hash decides between them, so the deletion
//! can win and a name that a writer had just replaced goes empty on every replica.
//!
//! The chaos harness found it under WAN delays: a clean-up tombstone (plan A's seq + 1) tied
//! with enactor B's one-step write at that seq and won on hash at a node that had already
//! shown B's write. The rule this test asks for: at equal seq a live record beats a tombstone
//! (both replace the record they read; the write satisfies the deletion's intent too), in
//! either arrival order. It failed while the merge rule ranked by `(seq, hash)` only; the rank
//! is now `(seq, live, hash)` (`dpin_protocol::merge::Rank`).

mod common;

use common::*;
use dpin_protocol::{Freshness, MemStore, Store};

const NOW: u64 = T0;

#[test]
fn at_equal_seq_a_write_beats_a_concurrent_deletion_in_either_order() {
    let key = zone_key(7);
    let seq = 278;
    let deletion = tombstone(&key, "web", seq, NOW + HOUR_MS);
    // A write whose hash is below the tombstone's: today's tie-break hands the name to the
    // deletion.
    let write = (1u16..2000)
        .map(|port| signed(&key, "web", seq, NOW + HOUR_MS, vec![v4(1, 1, port)]))
        .find(|w| w.content_hash() < deletion.content_hash())
        .expect("some port gives a smaller hash");
    for order in [[&write, &deletion], [&deletion, &write]] {
        let mut store = MemStore::new();
        for r in order {
            ok(store.apply(r, NOW, Freshness::Replicate, None));
        }
        assert_eq!(
            store.resolve(&write.name(), NOW).map(|r| r.content_hash()),
            Some(write.content_hash()),
            "the write must survive a concurrent deletion at its seq (arrival order: {})",
            if std::ptr::eq(order[0], &write) {
                "write first"
            } else {
                "deletion first"
            }
        );
    }
}
