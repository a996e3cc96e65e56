//! Tunnel scheduler: which tunnel carries the next frame.
//!
//! Owns: the choice of tunnel, behind the [`Scheduler`] trait so strategies can be compared.
//! Must not touch: frame bookkeeping or estimation — it sees only a [`PathView`] per tunnel.
//!
//! The session asks late: only when a tunnel can take bytes now does it ask the scheduler whether
//! that tunnel is the one to use. [`EarliestDelivery`] answers with the tunnel expected to deliver
//! the frame first — bytes already queued and unacknowledged on it, plus this frame, over its
//! delivery rate, plus half its RTT — so a long or slow tunnel is used only when the short ones
//! are backed up by more than the difference. [`RoundRobin`] is the blind baseline the seeds use.

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
}

/// A tunnel-selection strategy.
pub trait Scheduler: Send + std::fmt::Debug {
    /// The tunnel that should carry a frame of `frame_len` bytes now, among `paths`; `None` when
    /// no tunnel is usable.
    fn pick(&mut self, paths: &[PathView], frame_len: usize) -> Option<usize>;
    /// A frame went out on `tunnel` (round-robin advances on this).
    fn on_sent(&mut self, _tunnel: usize) {}
    /// A short name for logs and benchmarks.
    fn name(&self) -> &'static str;
}

/// Sends each frame on the tunnel expected to deliver it first.
#[derive(Debug, Default, Clone)]
pub struct EarliestDelivery;

impl EarliestDelivery {
    /// Expected time until a frame of `frame_len` bytes sent on `p` is delivered, in seconds.
    pub fn expected_delivery(p: &PathView, frame_len: usize) -> f64 {
        (p.unacked_bytes as f64 + frame_len as f64) / p.rate.max(1.0) + p.rtt.as_secs_f64() / 2.0
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
        }
    }

    #[test]
    fn prefers_the_short_path_until_it_backs_up() {
        let mut s = EarliestDelivery;
        let fast_idle = view(0, 10e6, 10);
        let slow_idle = view(0, 10e6, 200);
        assert_eq!(s.pick(&[fast_idle, slow_idle], 16384), Some(0));
        // 2 MB queued on the short path = 200 ms at 10 MB/s: now the long one wins.
        let fast_backed_up = view(2_000_000, 10e6, 10);
        assert_eq!(s.pick(&[fast_backed_up, slow_idle], 16384), Some(1));
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
