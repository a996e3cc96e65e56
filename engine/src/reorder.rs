//! Per-stream reorder buffer: turns frames that arrive in any order, possibly twice, into the
//! stream's bytes exactly once and in order.
//!
//! Owns: the received-but-unread bytes of one stream direction, the bookkeeping of what has
//! arrived, and what its out-of-order pieces are charged ([`PIECE_OVERHEAD`]). Must not touch:
//! flow-control credit (the session checks a frame against the window, and the pieces' charge
//! against the session window and their count against `max_pending_ranges`, before and after
//! inserting it: that is what bounds this buffer) or the wire.
//!
//! In-order arrivals, the common case, go straight to the readable queue without touching the
//! map, kept as the `Bytes` the wire layer produced (nothing copied) when [`COPY_BELOW`] bytes
//! or more, else copied onto the queue's last chunk (`crate::chunks`), so small frames neither
//! pin receive buffers nor cost a chunk each. Out-of-order pieces
//! shorter than [`COPY_BELOW`] are copied (so a 1-byte piece cannot pin a whole receive buffer)
//! and merged with adjacent small pieces, so a run of small pieces costs one map entry.
//!
//! Memory bound: each out-of-order piece costs its map entry (key, `Bytes`, B-tree share) and,
//! when copied, one allocation: under [`PIECE_OVERHEAD`] plus its bytes, which is what it is
//! charged. A piece of [`COPY_BELOW`] bytes or more may share a receive buffer with other
//! frames; it then pins at most that buffer, so at most `1 + buffer / COPY_BELOW` times its
//! charge.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};

/// What each out-of-order piece is charged beyond its bytes: its map entry and allocation.
pub const PIECE_OVERHEAD: u64 = 128;

/// Out-of-order pieces shorter than this are copied out of the receive buffer (and merged with
/// adjacent copied pieces up to this size) instead of being held as slices of it.
pub const COPY_BELOW: usize = 4096;

/// Received bytes of one stream, ordered.
#[derive(Debug, Default)]
pub struct ReorderBuffer {
    /// Offset of the next byte the application will read.
    read_offset: u64,
    /// Every byte below this offset has arrived.
    contiguous_end: u64,
    /// In-order bytes not yet read, starting at `read_offset`.
    readable: VecDeque<Bytes>,
    readable_len: usize,
    /// Out-of-order pieces above `contiguous_end`, non-overlapping, keyed by offset.
    pending: BTreeMap<u64, Bytes>,
    pending_len: usize,
    /// Maximal runs of contiguous pending bytes (the holes before them, counted).
    pending_ranges: usize,
}

impl ReorderBuffer {
    /// An empty buffer at offset zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Offset of the next byte to be read.
    pub fn read_offset(&self) -> u64 {
        self.read_offset
    }

    /// Every byte below this offset has arrived.
    pub fn contiguous_end(&self) -> u64 {
        self.contiguous_end
    }

    /// Bytes held (readable plus out-of-order).
    pub fn buffered(&self) -> usize {
        self.readable_len + self.pending_len
    }

    /// Bytes ready to read in order.
    pub fn readable_len(&self) -> usize {
        self.readable_len
    }

    /// Out-of-order pieces held (map entries, after merging adjacent small ones).
    pub fn pending_pieces(&self) -> usize {
        self.pending.len()
    }

    /// The first hole, as (its start, its length up to the first byte held beyond it); `None`
    /// while no out-of-order piece is held.
    pub fn first_gap(&self) -> Option<(u64, u64)> {
        let (&start, _) = self.pending.first_key_value()?;
        Some((
            self.contiguous_end,
            start.saturating_sub(self.contiguous_end),
        ))
    }

    /// Separate ranges of out-of-order bytes (each behind its own hole); adjacent pieces are
    /// one range. What `max_pending_ranges` caps.
    pub fn pending_ranges(&self) -> usize {
        self.pending_ranges
    }

    /// What the out-of-order pieces are charged: their bytes plus [`PIECE_OVERHEAD`] each.
    pub fn pending_charge(&self) -> u64 {
        self.pending_len as u64 + self.pending_overhead()
    }

    /// The overhead part of the charge: [`PIECE_OVERHEAD`] per piece.
    pub fn pending_overhead(&self) -> u64 {
        self.pending.len() as u64 * PIECE_OVERHEAD
    }

    /// Stores `data` received at `offset`. Bytes already received are ignored, so duplicates and
    /// overlaps are harmless. Returns how many new in-order bytes became readable.
    pub fn insert(&mut self, offset: u64, data: Bytes) -> usize {
        let end = offset + data.len() as u64;
        if end <= self.contiguous_end || data.is_empty() {
            return 0;
        }
        let (mut offset, mut data) = (offset, data);
        if offset < self.contiguous_end {
            data = data.slice((self.contiguous_end - offset) as usize..);
            offset = self.contiguous_end;
        }
        if offset == self.contiguous_end && self.pending.is_empty() {
            return self.push_readable(data);
        }
        self.insert_pending(offset, data);
        self.drain_pending()
    }

    fn push_readable(&mut self, data: Bytes) -> usize {
        let n = data.len();
        self.contiguous_end += n as u64;
        self.readable_len += n;
        // A small in-order piece is copied onto the last readable chunk: a frame's few bytes
        // never pin the receive buffer they arrived in, and a run of them is one chunk.
        crate::chunks::append_small(&mut self.readable, data);
        n
    }

    /// Inserts into the gaps between existing pending pieces only.
    fn insert_pending(&mut self, mut offset: u64, mut data: Bytes) {
        // Trim against the piece starting at or before `offset`.
        if let Some((&prev_off, prev)) = self.pending.range(..=offset).next_back() {
            let prev_end = prev_off + prev.len() as u64;
            if prev_end >= offset + data.len() as u64 {
                return;
            }
            if prev_end > offset {
                data = data.slice((prev_end - offset) as usize..);
                offset = prev_end;
            }
        }
        // Walk the pieces starting inside [offset, end) and fill the gaps before each.
        let end = offset + data.len() as u64;
        let inside: Vec<(u64, u64)> = self
            .pending
            .range(offset..end)
            .map(|(&o, b)| (o, o + b.len() as u64))
            .collect();
        let mut cursor = offset;
        for (piece_start, piece_end) in inside {
            if piece_start > cursor {
                let gap = data.slice((cursor - offset) as usize..(piece_start - offset) as usize);
                self.store_pending(cursor, gap);
            }
            cursor = cursor.max(piece_end);
        }
        if cursor < end {
            let rest = data.slice((cursor - offset) as usize..);
            self.store_pending(cursor, rest);
        }
    }

    /// Stores one piece that overlaps nothing pending. A small piece is copied, and merged with
    /// a small neighbour that touches it (left, then right) while the result stays small.
    fn store_pending(&mut self, offset: u64, data: Bytes) {
        let end = offset + data.len() as u64;
        let touches_left = self
            .pending
            .range(..offset)
            .next_back()
            .is_some_and(|(&o, b)| o + b.len() as u64 == offset);
        let touches_right = self.pending.contains_key(&end);
        // A piece alone opens a range; one touching a range extends it; one between two joins
        // them.
        self.pending_ranges =
            self.pending_ranges + 1 - usize::from(touches_left) - usize::from(touches_right);
        self.pending_len += data.len();
        if data.len() >= COPY_BELOW {
            self.pending.insert(offset, data);
            return;
        }
        let mut start = offset;
        let mut merged = BytesMut::with_capacity(data.len());
        if let Some((&left_off, left)) = self.pending.range(..offset).next_back()
            && left_off + left.len() as u64 == offset
            && left.len() < COPY_BELOW
            && left.len() + data.len() <= COPY_BELOW
            && let Some(left) = self.pending.remove(&left_off)
        {
            start = left_off;
            merged.reserve(left.len());
            merged.extend_from_slice(&left);
        }
        merged.extend_from_slice(&data);
        let end = start + merged.len() as u64;
        if let Some(right) = self.pending.get(&end)
            && right.len() < COPY_BELOW
            && right.len() + merged.len() <= COPY_BELOW
            && let Some(right) = self.pending.remove(&end)
        {
            merged.extend_from_slice(&right);
        }
        self.pending.insert(start, merged.freeze());
    }

    fn drain_pending(&mut self) -> usize {
        let mut moved = 0;
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.contiguous_end {
                break;
            }
            let piece = entry.remove();
            self.pending_len -= piece.len();
            moved += self.push_readable(piece);
        }
        if moved > 0 {
            // The first range, all of it: it is contiguous.
            self.pending_ranges -= 1;
        }
        moved
    }

    /// Takes up to `max` in-order bytes (zero-copy). `None` when nothing is readable.
    pub fn read(&mut self, max: usize) -> Option<Bytes> {
        let front = self.readable.front_mut()?;
        let chunk = if front.len() <= max {
            self.readable.pop_front()?
        } else {
            front.split_to(max)
        };
        self.readable_len -= chunk.len();
        self.read_offset += chunk.len() as u64;
        Some(chunk)
    }

    /// Drops everything held (stream reset); returns the bytes dropped.
    pub fn discard(&mut self) -> usize {
        let n = self.buffered();
        self.readable.clear();
        self.pending.clear();
        self.readable_len = 0;
        self.pending_len = 0;
        self.pending_ranges = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_all(buf: &mut ReorderBuffer) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = buf.read(7) {
            out.extend_from_slice(&b);
        }
        out
    }

    #[test]
    fn out_of_order_and_duplicates() {
        let mut b = ReorderBuffer::new();
        assert_eq!(b.insert(5, Bytes::from_static(b"fghij")), 0);
        assert_eq!(b.insert(5, Bytes::from_static(b"fghij")), 0);
        assert_eq!(b.buffered(), 5);
        assert_eq!(b.insert(0, Bytes::from_static(b"abcdefg")), 10);
        assert_eq!(read_all(&mut b), b"abcdefghij");
        assert_eq!(b.insert(3, Bytes::from_static(b"xxxxxxx")), 0);
        assert_eq!(b.buffered(), 0);
    }

    #[test]
    fn small_pieces_are_copied_merged_and_charged() {
        let mut b = ReorderBuffer::new();
        let big = Bytes::from(vec![7u8; 64 * 1024]);
        // 1-byte slices of one big buffer, at scattered offsets: each is a copy, not a slice.
        for i in 0..10u64 {
            b.insert(100 + i * 10, big.slice(0..1));
        }
        assert_eq!(b.pending_pieces(), 10);
        assert_eq!(b.pending_charge(), 10 + 10 * PIECE_OVERHEAD);
        // Adjacent small pieces merge into one entry.
        let mut run = ReorderBuffer::new();
        for i in (1..50u64).rev() {
            run.insert(i, big.slice(0..1));
        }
        run.insert(60, big.slice(0..1));
        assert_eq!(run.pending_pieces(), 2);
        assert_eq!(run.pending_charge(), 50 + 2 * PIECE_OVERHEAD);
        // A big piece is kept as it came; small neighbours do not merge into it.
        run.insert(200, big.slice(0..COPY_BELOW));
        run.insert(199, big.slice(0..1));
        assert_eq!(run.pending_pieces(), 4);
        assert_eq!(run.pending_ranges(), 3);
        run.insert(0, Bytes::from_static(b"x"));
        assert_eq!(run.pending_ranges(), 2);
        assert_eq!(run.readable_len(), 50);
        assert_eq!(run.pending_pieces(), 3);
        assert_eq!(
            run.pending_charge(),
            2 + COPY_BELOW as u64 + 3 * PIECE_OVERHEAD
        );
    }

    proptest! {
        /// Any set of (possibly overlapping, duplicated) pieces of a byte string, inserted in any
        /// order, reads back as the string exactly once; memory never exceeds the string.
        #[test]
        fn reassembles_any_arrival_order(
            len in 1usize..2000,
            cuts in proptest::collection::vec((0usize..2000, 1usize..300), 1..60),
            seed in any::<u64>(),
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let mut pieces: Vec<(usize, usize)> = cuts
                .into_iter()
                .map(|(s, l)| (s % len, l))
                .map(|(s, l)| (s, (s + l).min(len)))
                .collect();
            // Always cover everything once in some chunking.
            let mut o = 0;
            while o < len { let e = (o + 97).min(len); pieces.push((o, e)); o = e; }
            // Deterministic shuffle.
            let mut state = seed | 1;
            for i in (1..pieces.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                pieces.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let bytes = Bytes::from(data.clone());
            let mut b = ReorderBuffer::new();
            let mut out = Vec::new();
            for (s, e) in pieces {
                b.insert(s as u64, bytes.slice(s..e));
                prop_assert!(b.buffered() <= len);
                let mut ranges = 0;
                let mut last_end = None;
                for (&o, piece) in &b.pending {
                    if last_end != Some(o) { ranges += 1; }
                    last_end = Some(o + piece.len() as u64);
                }
                prop_assert_eq!(b.pending_ranges(), ranges);
                prop_assert_eq!(
                    b.pending_charge(),
                    (b.buffered() - b.readable_len()) as u64 + b.pending_pieces() as u64 * PIECE_OVERHEAD
                );
                if state % 3 == 0 { out.extend(read_all(&mut b)); }
            }
            out.extend(read_all(&mut b));
            prop_assert_eq!(out, data);
            prop_assert_eq!(b.buffered(), 0);
        }
    }
}
