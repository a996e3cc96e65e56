//! A fast, randomly keyed hasher for maps keyed by integer ids (stream ids): the per-message
//! lookups of a session's streams.
//!
//! Owns: [`IdBuildHasher`] and the [`IdMap`] alias. Must not touch: what the maps hold.
//!
//! Why: std's SipHash-1-3 costs tens of nanoseconds per `u64`, and a 64 B message looks its
//! stream up several times in each worker (the session's stream table, the loop's stream → entry
//! map): a tenth of a worker's time at 10,000 streams (perf, issue 10). Here one 64×64 → 128-bit
//! multiply of the id xored with a per-map random key, folded, does it. Stream ids are chosen by
//! an authenticated peer and their number is bounded by `max_streams`; the random key (from
//! std's `RandomState`, so per map) keeps a peer from choosing ids that collide on purpose.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

/// A `HashMap` keyed by an integer id, with [`IdBuildHasher`].
pub type IdMap<K, V> = HashMap<K, V, IdBuildHasher>;

/// Builds [`IdHasher`]s with a key drawn once per map.
#[derive(Debug, Clone, Copy)]
pub struct IdBuildHasher {
    k0: u64,
    k1: u64,
}

impl Default for IdBuildHasher {
    fn default() -> Self {
        let rs = std::collections::hash_map::RandomState::new();
        Self {
            k0: rs.hash_one(0x5eed_u64),
            // Odd, so the multiply loses no bit of the id.
            k1: rs.hash_one(0xfeed_u64) | 1,
        }
    }
}

impl BuildHasher for IdBuildHasher {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            k1: self.k1,
            state: self.k0,
        }
    }
}

/// The hasher [`IdBuildHasher`] builds (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct IdHasher {
    k1: u64,
    state: u64,
}

fn folded_multiply(x: u64, y: u64) -> u64 {
    let full = u128::from(x) * u128::from(y);
    (full as u64) ^ ((full >> 64) as u64)
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.state
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not the ids' path (they hash with `write_u64`); correct for anything else.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.state = folded_multiply(self.state ^ n, self.k1);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_sequential_and_strided_ids() {
        let b = IdBuildHasher::default();
        // Stream ids go up by 2 or 4 (parity says who opened them): the top 7 bits (hashbrown's
        // tag) and the low bits (its bucket) must both vary.
        for stride in [1u64, 2, 4, 1 << 20] {
            let mut low = std::collections::HashSet::new();
            let mut top = std::collections::HashSet::new();
            for i in 0..4096u64 {
                let h = b.hash_one(i * stride);
                low.insert(h & 0xfff);
                top.insert(h >> 57);
            }
            assert!(
                low.len() > 2000,
                "stride {stride}: {} low buckets",
                low.len()
            );
            assert_eq!(top.len(), 128, "stride {stride}");
        }
    }

    #[test]
    fn keys_differ_between_maps() {
        let (a, b) = (IdBuildHasher::default(), IdBuildHasher::default());
        assert_ne!(a.hash_one(7u64), b.hash_one(7u64));
    }

    #[test]
    fn a_map_works() {
        let mut m: IdMap<u64, u64> = IdMap::default();
        for i in 0..10_000u64 {
            m.insert(i * 2 + 1, i);
        }
        assert!((0..10_000u64).all(|i| m.get(&(i * 2 + 1)) == Some(&i)));
        assert_eq!(m.get(&2), None);
    }
}
