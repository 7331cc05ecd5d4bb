//! `MemStore::live_count` keeps a window that writes adjust instead of walking the store at
//! every call; these properties check it against the walk it replaces, over random writes,
//! replacements, tombstones, compacted bodies, clocks that jump forward and back, and windows
//! cut short by `LIVE_WINDOW_EXPIRIES`.

use dpin_protocol::store::{Entry, LIVE_WINDOW_EXPIRIES};
use dpin_protocol::{Floor, MemStore};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    /// Put an entry under name `name` (replacing what it held).
    Put {
        name: u16,
        expires: u64,
        tombstone: bool,
        body: bool,
    },
    /// Count at a time `delta` ms from the last count's (it may go back).
    Count { delta: i64 },
}

fn step(names: u16, span: u64) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..names, 0..span, any::<bool>(), prop::bool::weighted(0.9)).prop_map(
            |(name, expires, tombstone, body)| Step::Put { name, expires, tombstone, body }
        ),
        1 => (-(span as i64) / 8..(span as i64) / 4).prop_map(|delta| Step::Count { delta }),
    ]
}

fn entry(expires: u64, tombstone: bool, body: bool) -> Entry {
    Entry {
        floor: Floor {
            seq: 1,
            hash: [0; 32],
        },
        expires_at_ms: expires,
        tombstone,
        // Not a record's bytes: the index keeps such an entry under its name as text.
        bytes: body.then(|| vec![0xee; 8].into_boxed_slice()),
    }
}

/// Runs `steps`, checking every count against the walk. `cut` first fills the store with
/// more distinct expiry times than a window keeps, so windows end early and walks repeat.
fn check(steps: Vec<Step>, start: u64, cut: bool) {
    let mut store = MemStore::new();
    if cut {
        for i in 0..(LIVE_WINDOW_EXPIRIES as u64 + 500) {
            store.insert(&format!("filler{i}.z"), entry(start + 1 + i, false, true));
        }
    }
    let mut now = start;
    assert_eq!(store.live_count(now), store.live_count_walked(now));
    for s in steps {
        match s {
            Step::Put {
                name,
                expires,
                tombstone,
                body,
            } => store.insert(
                &format!("n{name}.z"),
                entry(start + expires, tombstone, body),
            ),
            Step::Count { delta } => {
                now = now.saturating_add_signed(delta);
                assert_eq!(
                    store.live_count(now),
                    store.live_count_walked(now),
                    "at {now}"
                );
            }
        }
    }
    // Past every expiry: nothing is live.
    let end = start + 1_000_000_000;
    assert_eq!(store.live_count(end), 0);
    assert_eq!(store.live_count_walked(end), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_live_count_equals_a_walk_of_the_store(
        steps in prop::collection::vec(step(60, 2_000), 1..400),
    ) {
        check(steps, 1_000_000, false);
    }
}

proptest! {
    // Each case first inserts 16,884 fillers.
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn the_live_count_equals_a_walk_when_the_window_ends_early(
        steps in prop::collection::vec(step(60, 40_000), 1..200),
    ) {
        check(steps, 1_000_000, true);
    }
}

#[test]
fn a_store_cloned_mid_window_counts_on_its_own() {
    let mut a = MemStore::new();
    for i in 0..10u64 {
        a.insert(&format!("n{i}.z"), entry(100 + i * 10, false, true));
    }
    assert_eq!(a.live_count(50), 10);
    let mut b = a.clone();
    // n5 (expiring at 150) deleted in the clone only.
    b.insert("n5.z", entry(1_000, true, true));
    // Expired at 120: the names expiring at 100, 110 and 120.
    assert_eq!(a.live_count(120), 7);
    assert_eq!(b.live_count(120), 6);
    assert_eq!(b.live_count(120), b.live_count_walked(120));
}
