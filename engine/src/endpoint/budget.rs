//! The session budget: how many server sessions may exist at once, shared by every worker of a
//! runtime.
//!
//! Owns: the limit (`max_sessions`) and the count of places taken against it. Must not touch:
//! sessions or handshakes themselves — an [`super::Endpoint`] takes a place when it admits the
//! ClientHello of a new session and gives it back when that handshake fails or the session is
//! removed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Places for sessions, shared by the endpoints of all workers (clone it to share).
///
/// A place is taken with a compare-and-swap, so two workers admitting new sessions at the same
/// moment cannot both take the last place.
#[derive(Debug, Clone)]
pub struct SessionBudget {
    limit: usize,
    taken: Arc<AtomicUsize>,
}

impl SessionBudget {
    /// A budget of `limit` sessions, none taken.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            taken: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// No limit (a client endpoint, or a harness that never refuses).
    pub fn unlimited() -> Self {
        Self::new(usize::MAX)
    }

    /// The most sessions at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Places taken now (sessions, plus new sessions whose handshakes are in progress).
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }

    /// Takes a place; false when all are taken.
    pub(super) fn try_take(&self) -> bool {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a place back.
    pub(super) fn give_back(&self) {
        // Never below zero, even if a caller gave back twice: the count must not wrap.
        let _ = self
            .taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_shared_between_clones_and_never_overshoot() {
        let a = SessionBudget::new(2);
        let b = a.clone();
        assert!(a.try_take());
        assert!(b.try_take());
        assert!(!a.try_take());
        assert_eq!(b.taken(), 2);
        a.give_back();
        assert!(b.try_take());
        a.give_back();
        a.give_back();
        a.give_back();
        assert_eq!(a.taken(), 0);
    }

    #[test]
    fn concurrent_takers_get_exactly_the_limit() {
        let budget = SessionBudget::new(100);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = budget.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.try_take()).count())
            })
            .collect();
        let won: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(won, 100);
        assert_eq!(budget.taken(), 100);
    }
}
