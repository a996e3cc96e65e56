//! Queues that give their memory back once drained.
//!
//! Owns: the rule for when an empty queue's capacity is released ([`release_if_drained`]).
//! Must not touch: what any queue holds, or when it is drained (its owner decides; this only
//! runs when it is empty).
//!
//! A burst of a million stream opens fills a session's event, control and ready queues to a
//! million entries; a `VecDeque` keeps that capacity forever, so idle streams would pay for
//! their own opening until the session ends. An empty queue above [`KEEP`] slots is released
//! instead; below it the capacity is kept, so a steady small load does not allocate on every
//! turn.

use std::collections::VecDeque;

/// Slots an empty queue may keep.
pub(crate) const KEEP: usize = 1024;

/// Frees `q`'s memory when it is empty and holds more than [`KEEP`] slots.
pub(crate) fn release_if_drained<T>(q: &mut VecDeque<T>) {
    if q.is_empty() && q.capacity() > KEEP {
        *q = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_large_queue_is_released_a_small_one_kept() {
        let mut q: VecDeque<u64> = (0..10_000).collect();
        release_if_drained(&mut q);
        assert!(q.capacity() >= 10_000, "a queue with entries is kept");
        q.clear();
        release_if_drained(&mut q);
        assert_eq!(q.capacity(), 0);
        let mut small: VecDeque<u64> = (0..100).collect();
        small.clear();
        let cap = small.capacity();
        release_if_drained(&mut small);
        assert_eq!(small.capacity(), cap);
    }
}
