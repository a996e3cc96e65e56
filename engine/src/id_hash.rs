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
        Self::with_keys(rs.hash_one(0x5eed_u64), rs.hash_one(0xfeed_u64))
    }
}

impl IdBuildHasher {
    fn with_keys(k0: u64, k1: u64) -> Self {
        // Odd, so the multiply loses no bit of the id.
        Self { k0, k1: k1 | 1 }
    }
}

/// The finishing multiplier (the fractional digits of pi, odd): a fixed, well-spread constant.
const FINISH: u64 = 0x243f_6a88_85a3_08d3;

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
        // One multiply by a random key leaves the top bits (hashbrown's 7-bit tag) poorly spread
        // over runs of consecutive ids for some keys (k1 near a fraction with a small
        // denominator: 1 key in ~6); a second fold by a fixed constant spreads them.
        folded_multiply(self.state, FINISH)
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
        // Stream ids go up by 2 or 4 (parity says who opened them): the top 7 bits (hashbrown's
        // tag) and the low bits (its bucket) must both vary, whatever the random keys are (so
        // many keys, drawn from a fixed seed: a failure reproduces).
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            folded_multiply(seed, FINISH)
        };
        for _ in 0..200 {
            let b = IdBuildHasher::with_keys(next(), next());
            spreads_with(&b);
        }
        spreads_with(&IdBuildHasher::default());
    }

    fn spreads_with(b: &IdBuildHasher) {
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
                "stride {stride}, {b:?}: {} low buckets",
                low.len()
            );
            assert_eq!(top.len(), 128, "stride {stride}, {b:?}");
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
