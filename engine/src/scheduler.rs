//! Tunnel scheduler: which tunnel carries the next frame.
//!
//! Owns: the choice of tunnel, behind the [`Scheduler`] trait so strategies can be compared.
//! Must not touch: frame bookkeeping or estimation — it sees only a [`PathView`] per tunnel.
//!
//! The session asks late: only when a tunnel can take bytes now does it ask the scheduler whether
//! that tunnel is the one to use. [`EarliestDelivery`] answers with the tunnel expected to deliver
//! the frame first: the bytes queued ahead of it on that tunnel, plus the frame itself, over the
//! tunnel's delivery rate, plus its one-way delay (half the RTT). The bytes ahead are the
//! unacknowledged bytes less one bandwidth-delay product, since that much is already on the wire
//! or delivered with its ACK on the way back and no longer delays a new frame. A tunnel that is
//! full right now (the driver could not take more) also makes the frame wait behind the session's
//! whole backlog, as in the ECF scheduler for MPTCP: with a small backlog it is still better to
//! wait for the short tunnel, with a bulk backlog the long tunnels are worth filling too. So a long
//! or slow tunnel is used exactly when waiting for the short ones would take longer than its extra
//! delay. [`RoundRobin`] is the blind baseline the seeds use.

use std::time::Duration;

/// What the scheduler knows of one tunnel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathView {
    /// The tunnel can carry frames (established and not stalled).
    pub usable: bool,
    /// Bytes handed to the tunnel and not yet acknowledged by the peer.
    pub unacked_bytes: u64,
    /// Estimated delivery rate, bytes per second.
    pub rate: f64,
    /// Estimated path round-trip time.
    pub rtt: Duration,
    /// Bytes that would wait ahead of a new frame before this tunnel could even take it: the
    /// session's own backlog when the tunnel is full right now, zero when it can take bytes.
    pub waiting_bytes: u64,
}

/// A tunnel-selection strategy.
pub trait Scheduler: Send + std::fmt::Debug {
    /// The tunnel that should carry a frame of `frame_len` bytes now, among `paths`; `None` when
    /// no tunnel is usable.
    fn pick(&mut self, paths: &[PathView], frame_len: usize) -> Option<usize>;
    /// Whether `candidate`, which can take bytes now, should carry the frame. By default only the
    /// pick; a strategy may accept a near-tie so one transmit carries several frames.
    fn accept(&mut self, candidate: usize, paths: &[PathView], frame_len: usize) -> bool {
        self.pick(paths, frame_len) == Some(candidate)
    }
    /// A frame went out on `tunnel` (round-robin advances on this).
    fn on_sent(&mut self, _tunnel: usize) {}
    /// A short name for logs and benchmarks.
    fn name(&self) -> &'static str;
}

/// Sends each frame on the tunnel expected to deliver it first.
#[derive(Debug, Default, Clone)]
pub struct EarliestDelivery;

/// How much later than the best a tunnel's expected delivery may be and still be accepted:
/// small against any WAN RTT, large enough that a transmit carries a batch of frames.
const ACCEPT_SLACK_SECS: f64 = 250e-6;

impl EarliestDelivery {
    /// Expected time until a frame of `frame_len` bytes sent on `p` is delivered, in seconds.
    pub fn expected_delivery(p: &PathView, frame_len: usize) -> f64 {
        let rate = p.rate.max(1.0);
        let rtt = p.rtt.as_secs_f64();
        let ahead = (p.unacked_bytes as f64 - rate * rtt).max(0.0) + p.waiting_bytes as f64;
        (ahead + frame_len as f64) / rate + rtt / 2.0
    }
}

impl Scheduler for EarliestDelivery {
    fn pick(&mut self, paths: &[PathView], frame_len: usize) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, p) in paths.iter().enumerate().filter(|(_, p)| p.usable) {
            let t = Self::expected_delivery(p, frame_len);
            if best.is_none_or(|(_, bt)| t < bt) {
                best = Some((i, t));
            }
        }
        best.map(|(i, _)| i)
    }

    fn accept(&mut self, candidate: usize, paths: &[PathView], frame_len: usize) -> bool {
        let Some(c) = paths.get(candidate).filter(|p| p.usable) else {
            return false;
        };
        let mine = Self::expected_delivery(c, frame_len);
        paths
            .iter()
            .filter(|p| p.usable)
            .all(|p| mine <= Self::expected_delivery(p, frame_len) + ACCEPT_SLACK_SECS)
    }

    fn name(&self) -> &'static str {
        "earliest-delivery"
    }
}

/// Blind round-robin over usable tunnels, the baseline.
#[derive(Debug, Default, Clone)]
pub struct RoundRobin {
    next: usize,
}

impl Scheduler for RoundRobin {
    fn pick(&mut self, paths: &[PathView], _frame_len: usize) -> Option<usize> {
        let n = paths.len();
        (0..n)
            .map(|k| (self.next + k) % n)
            .find(|&i| paths[i].usable)
    }

    fn on_sent(&mut self, tunnel: usize) {
        self.next = tunnel + 1;
    }

    fn name(&self) -> &'static str {
        "round-robin"
    }
}

/// Which scheduler a session uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchedulerKind {
    /// [`EarliestDelivery`] (default).
    #[default]
    EarliestDelivery,
    /// [`RoundRobin`].
    RoundRobin,
}

impl SchedulerKind {
    /// Builds the strategy.
    pub fn build(self) -> Box<dyn Scheduler> {
        match self {
            Self::EarliestDelivery => Box::new(EarliestDelivery),
            Self::RoundRobin => Box::new(RoundRobin::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(unacked: u64, rate: f64, rtt_ms: u64) -> PathView {
        PathView {
            usable: true,
            unacked_bytes: unacked,
            rate,
            rtt: Duration::from_millis(rtt_ms),
            waiting_bytes: 0,
        }
    }

    #[test]
    fn prefers_the_short_path_until_it_backs_up() {
        let mut s = EarliestDelivery;
        let fast_idle = view(0, 10e6, 10);
        let slow_idle = view(0, 10e6, 200);
        assert_eq!(s.pick(&[fast_idle, slow_idle], 16384), Some(0));
        // In flight up to the bandwidth-delay product (100 kB) costs nothing extra.
        let fast_full = view(100_000, 10e6, 10);
        assert_eq!(s.pick(&[fast_full, slow_idle], 16384), Some(0));
        // 2 MB queued beyond that = 200 ms at 10 MB/s: now the long one wins.
        let fast_backed_up = view(2_100_000, 10e6, 10);
        assert_eq!(s.pick(&[fast_backed_up, slow_idle], 16384), Some(1));
        assert!(s.accept(1, &[fast_backed_up, slow_idle], 16384));
        assert!(!s.accept(0, &[fast_backed_up, slow_idle], 16384));
        // The short path is full now: a small backlog still waits for it, a bulk one does not.
        let fast_full_small_backlog = PathView {
            waiting_bytes: 100_000,
            ..fast_full
        };
        assert_eq!(
            s.pick(&[fast_full_small_backlog, slow_idle], 16384),
            Some(0)
        );
        let fast_full_bulk_backlog = PathView {
            waiting_bytes: 4_000_000,
            ..fast_full
        };
        assert_eq!(s.pick(&[fast_full_bulk_backlog, slow_idle], 16384), Some(1));
    }

    #[test]
    fn skips_unusable_tunnels() {
        let mut s = EarliestDelivery;
        let mut dead = view(0, 1e9, 1);
        dead.usable = false;
        assert_eq!(s.pick(&[dead, view(0, 1.0, 500)], 1), Some(1));
        assert_eq!(s.pick(&[dead], 1), None);
        let mut rr = RoundRobin::default();
        assert_eq!(
            rr.pick(&[dead, view(0, 1.0, 5), view(0, 1.0, 5)], 1),
            Some(1)
        );
        rr.on_sent(1);
        assert_eq!(
            rr.pick(&[dead, view(0, 1.0, 5), view(0, 1.0, 5)], 1),
            Some(2)
        );
        rr.on_sent(2);
        assert_eq!(
            rr.pick(&[dead, view(0, 1.0, 5), view(0, 1.0, 5)], 1),
            Some(1)
        );
    }
}
