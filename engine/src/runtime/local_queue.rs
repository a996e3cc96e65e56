//! The queue that carries one direction of an in-process stream's bytes between an application
//! thread and the event loop: a bounded FIFO of [`Bytes`] chunks that holds no heap memory while
//! it is empty.
//!
//! Owns: the chunks in flight in one direction and their count bound ([`RING_SLOTS`]). Must not
//! touch: byte accounting, flags or wake-ups (`runtime::local` does those around each call).
//!
//! # Why not a preallocated ring
//! A million idle streams each holding two fixed rings cost 2 KiB per stream end (an `rtrb` ring
//! is a 512-byte cache-padded header and a 512-byte slot array). Here the first chunk waits in an
//! inline slot, so a stream that carries one chunk at a time (requests, replies, ping-pong)
//! never allocates; only a burst of several chunks allocates the overflow deque, and it is
//! released the moment the queue drains. One producer and one consumer take a short uncontended
//! lock per call; no caller holds it across anything else.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;

/// Chunks one queue holds at most (a frame's payload is one chunk; a write is one chunk).
pub(super) const RING_SLOTS: usize = 16;

/// A bounded, lazily allocated FIFO of chunks (see the module docs).
#[derive(Debug, Default)]
pub(super) struct ChunkQueue {
    slots: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    /// The oldest chunk, when the queue holds any: set only while `rest` is empty, so it is
    /// always ahead of everything in `rest`.
    first: Option<Bytes>,
    /// The chunks behind `first`; no allocation while empty.
    rest: VecDeque<Bytes>,
}

impl Slots {
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }
}

impl ChunkQueue {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `chunk`, or gives it back when the queue holds [`RING_SLOTS`] chunks already.
    pub(super) fn push(&self, chunk: Bytes) -> Result<(), Bytes> {
        let mut s = self.slots();
        if s.first.is_none() && s.rest.is_empty() {
            s.first = Some(chunk);
            return Ok(());
        }
        if s.len() >= RING_SLOTS {
            return Err(chunk);
        }
        if s.rest.capacity() == 0 {
            // One allocation for the whole burst instead of growing 4 → 8 → 16.
            s.rest.reserve_exact(RING_SLOTS - 1);
        }
        s.rest.push_back(chunk);
        Ok(())
    }

    /// Takes the oldest chunk.
    pub(super) fn pop(&self) -> Option<Bytes> {
        let mut s = self.slots();
        if let Some(chunk) = s.first.take() {
            return Some(chunk);
        }
        let chunk = s.rest.pop_front();
        if s.rest.is_empty() && s.rest.capacity() > 0 {
            // Drained: give the memory back (an idle stream holds none).
            s.rest = VecDeque::new();
        }
        chunk
    }

    /// No chunk waits.
    pub(super) fn is_empty(&self) -> bool {
        self.slots().len() == 0
    }

    /// A push would be refused.
    pub(super) fn is_full(&self) -> bool {
        self.slots().len() >= RING_SLOTS
    }

    /// Heap bytes the queue holds now (for the memory tests).
    #[cfg(test)]
    pub(super) fn heap_bytes(&self) -> usize {
        self.slots().rest.capacity() * size_of::<Bytes>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_order_bound_and_release_when_drained() {
        let q = ChunkQueue::default();
        assert!(q.is_empty());
        assert_eq!(q.heap_bytes(), 0);
        // One chunk at a time never allocates.
        for i in 0..100u8 {
            q.push(Bytes::from(vec![i])).unwrap();
            assert_eq!(q.heap_bytes(), 0);
            assert_eq!(q.pop().unwrap()[0], i);
        }
        // A burst fills to the bound, in order, and is refused beyond it.
        for i in 0..RING_SLOTS as u8 {
            q.push(Bytes::from(vec![i])).unwrap();
        }
        assert!(q.is_full());
        assert_eq!(q.push(Bytes::from_static(b"x")).unwrap_err(), &b"x"[..]);
        assert!(q.heap_bytes() > 0);
        // Interleaved pushes after the inline slot emptied keep their order.
        assert_eq!(q.pop().unwrap()[0], 0);
        q.push(Bytes::from(vec![200])).unwrap();
        for i in 1..RING_SLOTS as u8 {
            assert_eq!(q.pop().unwrap()[0], i);
        }
        assert_eq!(q.pop().unwrap()[0], 200);
        assert!(q.pop().is_none());
        assert!(q.is_empty());
        // Drained: the burst's memory went back.
        assert_eq!(q.heap_bytes(), 0);
    }
}
