//! Per-stream reorder buffer: turns frames that arrive in any order, possibly twice, into the
//! stream's bytes exactly once and in order.
//!
//! Owns: the received-but-unread bytes of one stream direction and the bookkeeping of what has
//! arrived. Must not touch: flow-control credit (the session checks a frame against the window
//! before inserting it, which is what bounds this buffer) or the wire.
//!
//! In-order arrivals, the common case, go straight to the readable queue without touching the
//! map. Payloads are kept as the `Bytes` the wire layer produced, so nothing is copied.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

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
        self.readable.push_back(data);
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
                self.pending_len += gap.len();
                self.pending.insert(cursor, gap);
            }
            cursor = cursor.max(piece_end);
        }
        if cursor < end {
            let rest = data.slice((cursor - offset) as usize..);
            self.pending_len += rest.len();
            self.pending.insert(cursor, rest);
        }
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
                if state % 3 == 0 { out.extend(read_all(&mut b)); }
            }
            out.extend(read_all(&mut b));
            prop_assert_eq!(out, data);
            prop_assert_eq!(b.buffered(), 0);
        }
    }
}
