//! The deterministic pseudo-random byte pattern carried by `bulk --verify`: byte `i` of a stream
//! is byte `i % 8` of `splitmix64(seed ^ (i / 8))`. Any sender can produce, and any receiver check,
//! an arbitrary slice at an arbitrary stream offset, so loss, duplication, reordering or corruption
//! anywhere in a tunnel shows up as a mismatch at a known offset.

use crate::rng::splitmix64;

#[inline]
fn word(seed: u64, idx: u64) -> [u8; 8] {
    splitmix64(seed ^ idx.wrapping_mul(0xD1B5_4A32_D192_ED03)).to_le_bytes()
}

/// Fill `buf` with the pattern bytes for stream offsets `off .. off + buf.len()`.
pub fn fill(seed: u64, off: u64, buf: &mut [u8]) {
    let mut pos = 0usize;
    let mut o = off;
    while pos < buf.len() {
        let w = word(seed, o / 8);
        let start = (o % 8) as usize;
        let n = (8 - start).min(buf.len() - pos);
        buf[pos..pos + n].copy_from_slice(&w[start..start + n]);
        pos += n;
        o += n as u64;
    }
}

/// Check `buf` against the pattern at stream offset `off`; returns the offset of the first
/// mismatching byte, if any.
pub fn check(seed: u64, off: u64, buf: &[u8]) -> Option<u64> {
    let mut pos = 0usize;
    let mut o = off;
    while pos < buf.len() {
        let w = word(seed, o / 8);
        let start = (o % 8) as usize;
        let n = (8 - start).min(buf.len() - pos);
        if buf[pos..pos + n] != w[start..start + n] {
            let k = (0..n).find(|&k| buf[pos + k] != w[start + k]).unwrap_or(0);
            return Some(o + k as u64);
        }
        pos += n;
        o += n as u64;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_check_roundtrip_unaligned() {
        let mut whole = vec![0u8; 1000];
        fill(42, 3, &mut whole);
        // Pieces at odd offsets agree with the whole.
        let mut piece = vec![0u8; 37];
        fill(42, 3 + 101, &mut piece);
        assert_eq!(&piece[..], &whole[101..138]);
        assert_eq!(check(42, 3, &whole), None);
        assert_eq!(check(42, 104, &whole[101..500]), None);
        whole[777] ^= 1;
        assert_eq!(check(42, 3, &whole), Some(780));
        assert!(check(43, 3, &whole[..100]).is_some());
    }
}
