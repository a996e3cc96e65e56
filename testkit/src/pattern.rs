//! The byte pattern every test sends (the generator lives in `mtcpd_common::pattern`, which
//! `mtcp-perf bulk --verify` uses too) and its SHA-256 checksums.
//!
//! Must not touch: anything but bytes (no sockets, no engine types).

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

pub use mtcpd_common::pattern::{byte, bytes, bytes_at, check, fill};

/// The SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A running SHA-256 and byte count of a stream.
#[derive(Debug, Clone, Default)]
pub struct Checksum {
    hasher: Sha256,
    len: u64,
}

impl Checksum {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `data` to the stream.
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.len += data.len() as u64;
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True before the first byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The SHA-256 of everything seen.
    pub fn digest(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }
}

/// Writes `total` pattern bytes of stream `seed` to `out` (without closing it); returns their
/// SHA-256.
pub fn write_pattern(out: &mut impl Write, seed: u64, total: u64) -> io::Result<[u8; 32]> {
    let mut sum = Checksum::new();
    let mut buf = vec![0; 256 * 1024];
    while sum.len() < total {
        let n = ((total - sum.len()) as usize).min(buf.len());
        fill(seed, sum.len(), &mut buf[..n]);
        out.write_all(&buf[..n])?;
        sum.update(&buf[..n]);
    }
    Ok(sum.digest())
}

/// Reads `input` to its end; returns how many bytes came and their SHA-256.
pub fn read_to_end_checksum(input: &mut impl Read) -> io::Result<Checksum> {
    let mut sum = Checksum::new();
    let mut buf = vec![0; 256 * 1024];
    loop {
        match input.read(&mut buf) {
            Ok(0) => return Ok(sum),
            Ok(n) => sum.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_of_a_written_and_a_read_stream_agree() {
        let mut sent = Vec::new();
        let digest = write_pattern(&mut sent, 9, 600_001).unwrap();
        assert_eq!(sent.len(), 600_001);
        assert_eq!(digest, sha256(&sent));
        assert_eq!(check(9, 0, &sent), None);
        let read = read_to_end_checksum(&mut &sent[..]).unwrap();
        assert_eq!((read.len(), read.digest()), (600_001, digest));
        let mut sum = Checksum::new();
        assert!(sum.is_empty());
        sum.update(&sent[..10]);
        sum.update(&sent[10..]);
        assert_eq!(sum.digest(), digest);
    }
}
