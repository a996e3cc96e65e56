//! Small-write coalescing for queues of byte chunks: what keeps a window of many small
//! writes (or frames) costing about its bytes, not an allocation and a queue slot each.
//!
//! Owns: [`append_small`], the one rule both a stream's send queue (`session::streams::send`)
//! and its in-order receive queue ([`crate::reorder`]) use. Must not touch: what the queues
//! mean (offsets, credit, framing).
//!
//! A piece shorter than [`COALESCE_BELOW`] is copied onto the queue's last chunk when that
//! chunk is small and owned by the queue alone (no frame, reader or retransmission shares
//! it); otherwise it starts a new owned chunk. A chunk grows by doubling up to
//! [`COALESCE_BELOW`], so the capacity behind a full queue is its bytes plus at most one
//! half-empty tail; and a few bytes never pin a large buffer they arrived in.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Pieces shorter than this are copied and merged; chunks grow to at most this size.
pub const COALESCE_BELOW: usize = 4096;

/// Appends `data` to `queue`, copying it onto the tail chunk when it is small (see the
/// module docs); a large piece is queued as it is, without a copy.
pub fn append_small(queue: &mut VecDeque<Bytes>, data: Bytes) {
    if data.len() >= COALESCE_BELOW || data.is_empty() {
        if !data.is_empty() {
            queue.push_back(data);
        }
        return;
    }
    if let Some(tail) = queue.back_mut()
        && tail.len() + data.len() <= COALESCE_BELOW
    {
        // Unique: nothing else holds any part of the tail's buffer, so it may grow in place.
        match std::mem::take(tail).try_into_mut() {
            Ok(mut owned) if owned.capacity() <= 2 * COALESCE_BELOW => {
                owned.extend_from_slice(&data);
                *tail = owned.freeze();
                return;
            }
            Ok(owned) => *tail = owned.freeze(),
            Err(shared) => *tail = shared,
        }
    }
    queue.push_back(copy(&data));
}

/// `data` in a buffer of its own, exactly its size.
fn copy(data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len());
    b.extend_from_slice(data);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(q: &VecDeque<Bytes>) -> Vec<u8> {
        q.iter().flat_map(|b| b.iter().copied()).collect()
    }

    #[test]
    fn small_pieces_share_chunks_and_keep_their_order() {
        let mut q = VecDeque::new();
        let mut want = Vec::new();
        for i in 0..1000u32 {
            let piece: Vec<u8> = (0..64).map(|k| (i * 7 + k) as u8).collect();
            want.extend_from_slice(&piece);
            append_small(&mut q, Bytes::from(piece));
        }
        assert_eq!(flat(&q), want);
        // 64,000 bytes in 4 KiB chunks.
        assert_eq!(q.len(), 64_000usize.div_ceil(COALESCE_BELOW));
    }

    #[test]
    fn a_shared_tail_is_not_touched() {
        let mut q = VecDeque::new();
        append_small(&mut q, Bytes::from_static(b"abc"));
        let held = q.back().unwrap().clone();
        append_small(&mut q, Bytes::from_static(b"def"));
        assert_eq!(q.len(), 2);
        assert_eq!(&held[..], b"abc");
        drop(held);
        append_small(&mut q, Bytes::from_static(b"ghi"));
        assert_eq!(q.len(), 2);
        assert_eq!(flat(&q), b"abcdefghi");
    }

    #[test]
    fn a_small_piece_does_not_pin_its_buffer() {
        let big = Bytes::from(vec![7u8; 1 << 20]);
        let mut q = VecDeque::new();
        append_small(&mut q, big.slice(10..74));
        drop(big);
        // The queue's chunk is a copy of 64 bytes, not a view of the 1 MiB buffer.
        let owned = q.pop_back().unwrap().try_into_mut().unwrap();
        assert!(owned.capacity() < 1024);
    }

    #[test]
    fn large_pieces_are_not_copied() {
        let big = Bytes::from(vec![1u8; COALESCE_BELOW]);
        let ptr = big.as_ptr();
        let mut q = VecDeque::new();
        append_small(&mut q, Bytes::from_static(b"x"));
        append_small(&mut q, big);
        assert_eq!(q.len(), 2);
        assert_eq!(q.back().unwrap().as_ptr(), ptr);
    }
}
