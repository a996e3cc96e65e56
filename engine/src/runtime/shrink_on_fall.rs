//! Shrinking what a peak grew once the load has fallen.
//!
//! Owns: [`ShrinkOnFall`] (when a worker shrinks its empty containers: after its live entries
//! have fallen to half of their high-water mark, at most once per [`COOLDOWN`]). Must not
//! touch: what is shrunk (`event_loop::EventLoop::give_back_memory`) or the allocator (the
//! `mtcpd` binary's trimmer, `cli/src/memory_trim.rs`, returns freed pages to the system).
//!
//! Why: a buffer emptied by the end of a burst keeps its capacity (`BytesMut`, `VecDeque` and
//! hash maps never shrink by themselves). After a peak of a thousand connections a server's
//! tunnels kept ~6 MiB of empty receive buffers and its backend-connect queue 1.3 MiB, so the
//! daemon sat above its steady level once the load was gone (io_uring: 22–28 MiB quiet against
//! 23 MiB steady; after this, 18–22 MiB). Shrinking on every turn would allocate the buffers
//! again at once; shrinking on a fall in load costs one pass over the worker's entries at most
//! once per [`COOLDOWN`].

use std::time::{Duration, Instant};

/// Below this many live entries a worker's memory is small and not worth a pass.
const MIN_PEAK: usize = 64;

/// The least time between two shrinking passes of one worker.
pub(super) const COOLDOWN: Duration = Duration::from_secs(1);

/// Watches a worker's live entries and says when they have fallen enough to shrink.
#[derive(Debug, Default)]
pub(super) struct ShrinkOnFall {
    /// The most entries seen since the last pass.
    peak: usize,
    /// When the last pass ran.
    last: Option<Instant>,
    /// A pass is wanted but waits for the cooldown: when it may run.
    due: Option<Instant>,
}

impl ShrinkOnFall {
    /// Sees `live` entries at `now`; true when the fall since the peak calls for a pass now.
    pub(super) fn observe(&mut self, now: Instant, live: usize) -> bool {
        self.peak = self.peak.max(live);
        if self.peak < MIN_PEAK || live > self.peak / 2 {
            self.due = None;
            return false;
        }
        if let Some(last) = self.last
            && now < last + COOLDOWN
        {
            self.due = Some(last + COOLDOWN);
            return false;
        }
        self.last = Some(now);
        self.due = None;
        self.peak = live;
        true
    }

    /// When the loop must look again for a pass held back by the cooldown (it may have no
    /// other reason to wake once the load is gone).
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fall_to_half_the_peak_shrinks_once_and_resets_the_peak() {
        let t = Instant::now();
        let mut m = ShrinkOnFall::default();
        assert!(!m.observe(t, 1_000));
        assert!(!m.observe(t, 501), "not yet half");
        assert!(m.observe(t, 500));
        // The peak is now 500: the next pass waits for 250.
        let later = t + COOLDOWN * 2;
        assert!(!m.observe(later, 300));
        assert!(m.observe(later, 250));
    }

    #[test]
    fn small_loads_never_shrink() {
        let t = Instant::now();
        let mut m = ShrinkOnFall::default();
        assert!(!m.observe(t, MIN_PEAK - 1));
        assert!(!m.observe(t, 0));
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn a_pass_within_the_cooldown_waits_and_names_when() {
        let t = Instant::now();
        let mut m = ShrinkOnFall::default();
        m.observe(t, 1_000);
        assert!(m.observe(t, 400));
        m.observe(t, 1_000);
        let soon = t + COOLDOWN / 2;
        assert!(!m.observe(soon, 0), "held back by the cooldown");
        assert_eq!(m.deadline(), Some(t + COOLDOWN));
        assert!(m.observe(t + COOLDOWN, 0), "runs once the cooldown is over");
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn a_load_that_comes_back_cancels_a_waiting_pass() {
        let t = Instant::now();
        let mut m = ShrinkOnFall::default();
        m.observe(t, 1_000);
        assert!(m.observe(t, 400));
        m.observe(t, 1_000);
        assert!(!m.observe(t, 100));
        assert!(m.deadline().is_some());
        assert!(!m.observe(t, 900));
        assert_eq!(m.deadline(), None);
    }
}
