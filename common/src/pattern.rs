//! The deterministic byte pattern the tests send and `mtcp-perf bulk --verify` carries.
//!
//! Byte `i` of the stream with seed `seed` is byte `i % 8` (little-endian) of
//! `splitmix64(splitmix64(seed) ^ (i / 8))`. Any sender can produce, and any receiver check, an
//! arbitrary slice at an arbitrary offset, so a lost, duplicated, reordered or misdelivered
//! chunk shows as a mismatch at a known offset. Seeds are mixed before use, so streams with
//! nearby seeds (1, 2, 3, ...) share no run of bytes at any offset.
//!
//! Must not touch: anything but bytes (no sockets, no engine types).

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The 8 bytes at word `index` (offsets `8 * index ..`) of the stream whose mixed seed is `key`.
#[inline]
fn word(key: u64, index: u64) -> [u8; 8] {
    splitmix64(key ^ index).to_le_bytes()
}

/// Fills `buf` with the pattern bytes at offsets `offset .. offset + buf.len()` of stream `seed`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let key = splitmix64(seed);
    let mut at = offset;
    let mut rest = buf;
    // Up to the next word boundary, then whole words.
    let head = ((8 - at % 8) % 8).min(rest.len() as u64) as usize;
    if head > 0 {
        let w = word(key, at / 8);
        let start = (at % 8) as usize;
        rest[..head].copy_from_slice(&w[start..start + head]);
        rest = &mut rest[head..];
        at += head as u64;
    }
    let mut chunks = rest.chunks_exact_mut(8);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&word(key, at / 8));
        at += 8;
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let len = tail.len();
        tail.copy_from_slice(&word(key, at / 8)[..len]);
    }
}

/// `len` pattern bytes of stream `seed` from offset 0.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    bytes_at(seed, 0, len)
}

/// `len` pattern bytes of stream `seed` from `offset`.
pub fn bytes_at(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    fill(seed, offset, &mut out);
    out
}

/// The pattern byte at `offset` of stream `seed`.
pub fn byte(seed: u64, offset: u64) -> u8 {
    word(splitmix64(seed), offset / 8)[(offset % 8) as usize]
}

/// Checks `buf` against stream `seed` from `offset`; the offset of the first wrong byte, if any.
pub fn check(seed: u64, offset: u64, buf: &[u8]) -> Option<u64> {
    let key = splitmix64(seed);
    let mut at = offset;
    let mut pos = 0;
    while pos < buf.len() {
        let w = word(key, at / 8);
        let start = (at % 8) as usize;
        let n = (8 - start).min(buf.len() - pos);
        if buf[pos..pos + n] != w[start..start + n] {
            let k = (0..n).find(|&k| buf[pos + k] != w[start + k]).unwrap_or(0);
            return Some(at + k as u64);
        }
        pos += n;
        at += n as u64;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_slice_at_any_offset_agrees_with_the_whole() {
        let whole = bytes(42, 1000);
        for (offset, len) in [
            (0, 1000),
            (3, 5),
            (101, 37),
            (8, 8),
            (7, 1),
            (993, 7),
            (5, 0),
        ] {
            let piece = bytes_at(42, offset as u64, len);
            assert_eq!(piece, whole[offset..offset + len], "{offset}+{len}");
            for (k, b) in piece.iter().enumerate() {
                assert_eq!(*b, byte(42, (offset + k) as u64));
            }
        }
        assert_eq!(check(42, 0, &whole), None);
        assert_eq!(check(42, 104, &whole[104..500]), None);
    }

    #[test]
    fn check_names_the_first_wrong_offset() {
        let mut whole = bytes(7, 1000);
        whole[777] ^= 1;
        assert_eq!(check(7, 0, &whole), Some(777));
        assert_eq!(check(7, 700, &whole[700..]), Some(777));
        // The right bytes at the wrong offset, or from another stream, do not pass.
        assert!(check(7, 8, &whole[..64]).is_some());
        assert!(check(8, 0, &whole[..64]).is_some());
    }

    #[test]
    fn nearby_seeds_share_no_word() {
        let a = bytes(1, 4096);
        let b = bytes(2, 4096);
        let words = |v: &[u8]| {
            v.chunks(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect::<std::collections::HashSet<_>>()
        };
        assert!(words(&a).is_disjoint(&words(&b)));
    }
}
