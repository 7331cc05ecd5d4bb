//! A cheap hasher for the simulator's lookup tables, whose keys are small integers (node and
//! record ids) or already uniformly random bytes (blake3 hashes, signatures).
//!
//! The standard SipHash spends most of a sweep's lookups hashing 96-byte keys nobody can
//! choose (the keys come from the run itself, so flooding is not a concern). Tables built on
//! this hasher are used only for membership and lookup, never iterated where order shows
//! (see the determinism note in the module map), so the hasher changes no run's result.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Folds each write into one word (FxHash's multiply-rotate). Byte slices contribute their
/// first 16 bytes: enough for keys that are random bytes.
#[derive(Clone, Copy, Default)]
pub struct FastHasher(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl FastHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8).take(2) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

/// A `HashMap` on [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
/// A `HashSet` on [`FastHasher`].
pub type FastSet<T> = HashSet<T, BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_small_ids_and_random_keys_stay_distinct_entries() {
        let mut ids = FastSet::default();
        for i in 0..10_000u32 {
            assert!(ids.insert(i));
        }
        assert_eq!(ids.len(), 10_000);
        let mut keys = FastMap::default();
        for i in 0..1_000u32 {
            keys.insert(*blake3::hash(&i.to_le_bytes()).as_bytes(), i);
        }
        for i in 0..1_000u32 {
            assert_eq!(
                keys.get(blake3::hash(&i.to_le_bytes()).as_bytes()),
                Some(&i)
            );
        }
    }
}
