//! Per-tunnel path estimates: round-trip time and delivery rate, from acknowledgements and pings.
//!
//! Owns: the estimators and their filters. Must not touch: scheduling decisions (the scheduler
//! reads a [`crate::scheduler::PathView`] built from these) or frame bookkeeping.
//!
//! The RTT is a windowed minimum of frame-send → ACK times (what the path costs without our own
//! queueing); the smoothed RTT tracks the recent average. The rate is a windowed maximum of
//! BBR-style delivery-rate samples (bytes delivered between a frame's send and its ACK, over that
//! time). A tunnel the scheduler has barely used yields small samples that say nothing of its
//! capacity; believing them would make it look slow, so it would be used less and look slower
//! still. So samples taken while the tunnel was not kept full (app-limited) may only raise the
//! estimate, the assumed initial rate is optimistic (an optimistic tunnel gets traffic until it is
//! full, and is then measured for real), and the estimate never drops below one initial window per
//! RTT.
//! A driver that reads TCP_INFO can override both with [`PathEstimate::set_external`], and
//! reports the kernel's own view with [`PathEstimate::set_tcp_info`]: the kernel's smoothed
//! RTT above its minimum is the bottleneck queue this connection sees, free of what the
//! frame-level RTT also holds (the socket's unsent queue, and TCP's head-of-line wait behind a
//! lost segment, which random loss causes without any queue); until the tunnel's first rate
//! sample, its congestion window per RTT says what it can carry now
//! ([`PathEstimate::slow_start_view`]).

use std::time::{Duration, Instant};

/// How long a minimum-RTT sample stays valid.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// How long a maximum delivery-rate sample stays valid, at least.
const RATE_WINDOW_MIN: Duration = Duration::from_millis(200);
/// The RTT the scheduler assumes for a tunnel not yet measured (QUIC's initial RTT, RFC 9002
/// §6.2.2). Not zero: the server's side of a version 2 handshake has no RTT sample until its
/// first PONG, and a tunnel that looked instant would draw every frame, window updates included,
/// onto what may be the slowest path.
pub const UNMEASURED_RTT: Duration = Duration::from_millis(333);
/// The rate floor is this many bytes per RTT (about TCP's initial window, rounded up).
const FLOOR_BYTES_PER_RTT: f64 = 64.0 * 1024.0;

/// What a driver reads of a tunnel's connection from the kernel (TCP_INFO) and reports with
/// [`crate::Session::set_tunnel_tcp_info`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpReport {
    /// Smoothed RTT (`tcpi_rtt`); zero while not measured.
    pub srtt: Duration,
    /// Minimum RTT (`tcpi_min_rtt`); zero while not measured.
    pub min_rtt: Duration,
    /// Segments retransmitted over the connection's life (`tcpi_total_retrans`).
    pub retransmits: u64,
    /// Bytes of this tunnel that are on the path or waiting to enter it: in flight (not
    /// SACKed, not presumed lost), unsent in the socket, and queued in the driver. Not what
    /// the receiver holds beyond a hole, nor what waits for the peer's ACK frame.
    pub held_bytes: u64,
    /// The congestion window in bytes (`tcpi_snd_cwnd` × `tcpi_snd_mss`); zero: not known.
    pub cwnd_bytes: u64,
    /// Of `held_bytes`, those not sent yet: unsent in the socket (`tcpi_notsent_bytes`) and
    /// queued in the driver.
    pub unsent_bytes: u64,
    /// Bytes the peer's TCP received over the connection's life, counted as they arrive even
    /// beyond a hole (TCP_INFO's cumulatively and selectively acknowledged bytes), unlike the
    /// bytes mtcpd's own ACK frames acknowledge, which wait behind the hole; it may step back a
    /// little once a hole fills (the selectively acknowledged count is in whole segments).
    /// Zero: nothing delivered yet, or a driver that does not report it.
    pub delivered_bytes: u64,
}

/// Estimates for one tunnel.
#[derive(Debug, Clone)]
pub struct PathEstimate {
    min_rtt: Option<(Duration, Instant)>,
    srtt: Option<Duration>,
    rate: Option<(f64, Instant)>,
    initial_rate: f64,
    /// The kernel's smoothed and minimum RTT of the connection (TCP_INFO), when a driver
    /// reports them.
    tcp_rtt: Option<(Duration, Duration)>,
    /// The kernel's congestion window, bytes, last reported (zero: not reported).
    tcp_cwnd: u64,
    /// The kernel's count of retransmitted segments on the connection, last reported.
    tcp_retransmits: u64,
}

impl PathEstimate {
    /// No samples yet; `initial_rate` (bytes/s) is assumed until the first rate sample.
    pub fn new(initial_rate: f64) -> Self {
        Self {
            min_rtt: None,
            srtt: None,
            rate: None,
            initial_rate,
            tcp_rtt: None,
            tcp_cwnd: 0,
            tcp_retransmits: 0,
        }
    }

    /// What the kernel reports of the tunnel's connection (TCP_INFO): its smoothed and minimum
    /// RTT, retransmitted segments and congestion window; zero RTTs (not measured yet) are
    /// ignored. Returns whether the connection retransmitted since the last report (a count
    /// that went down is a new connection, not a loss).
    pub fn set_tcp_info(&mut self, report: &TcpReport) -> bool {
        let TcpReport {
            srtt,
            min_rtt,
            retransmits,
            cwnd_bytes,
            ..
        } = *report;
        if !srtt.is_zero() && !min_rtt.is_zero() {
            self.tcp_rtt = Some((srtt, min_rtt.min(srtt)));
        }
        self.tcp_cwnd = cwnd_bytes;
        let lost = retransmits > self.tcp_retransmits;
        self.tcp_retransmits = retransmits;
        lost
    }

    /// The congestion window the kernel last reported, bytes (zero: none reported).
    pub fn tcp_cwnd(&self) -> u64 {
        self.tcp_cwnd
    }

    /// The queueing delay the kernel sees on the connection (smoothed RTT above its minimum)
    /// and that minimum; `None` until a driver reported them.
    pub fn tcp_queueing(&self) -> Option<(Duration, Duration)> {
        self.tcp_rtt.map(|(s, m)| (s - m, m))
    }

    /// Feeds an RTT sample.
    pub fn on_rtt_sample(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.max(Duration::from_micros(1));
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
        match self.min_rtt {
            Some((m, at)) if rtt > m && now.saturating_duration_since(at) < MIN_RTT_WINDOW => {}
            _ => self.min_rtt = Some((rtt, now)),
        }
    }

    /// Feeds a delivery-rate sample in bytes/s. `app_limited` says the tunnel was not kept
    /// full while the sample was taken (the scheduler gave it less than it could carry): such a
    /// sample measures our use, not the path, so it may raise the estimate but never lower it.
    pub fn on_rate_sample(&mut self, rate: f64, app_limited: bool, now: Instant) {
        if !(rate.is_finite() && rate > 0.0) {
            return;
        }
        let window = self.rate_window();
        match self.rate {
            Some((r, at))
                if rate < r && (app_limited || now.saturating_duration_since(at) < window) => {}
            None if app_limited && rate < self.initial_rate => {}
            _ => self.rate = Some((rate, now)),
        }
    }

    /// Overrides both estimates (e.g. from TCP_INFO: min_rtt and delivery_rate).
    pub fn set_external(&mut self, rtt: Duration, rate: f64, now: Instant) {
        self.min_rtt = Some((rtt, now));
        self.srtt = Some(rtt);
        if rate.is_finite() && rate > 0.0 {
            self.rate = Some((rate, now));
        }
    }

    fn rate_window(&self) -> Duration {
        (self.srtt.unwrap_or_default() * 8).max(RATE_WINDOW_MIN)
    }

    /// Path RTT (windowed minimum); zero before any sample.
    pub fn min_rtt(&self) -> Duration {
        self.min_rtt.map(|(m, _)| m).unwrap_or_default()
    }

    /// The path's RTT without a queue: the kernel's minimum RTT of the connection when a driver
    /// reports it, else [`PathEstimate::min_rtt`]; zero before any sample. The kernel keeps its
    /// minimum for minutes (`tcp_min_rtt_wlen`, 300 s by default), so a standing queue cannot
    /// move it, where `min_rtt` takes one in after [`MIN_RTT_WINDOW`] (the coupled cap's
    /// probe, `session::rtt_probe`, follows a path that lengthens).
    pub fn base_rtt(&self) -> Duration {
        match self.tcp_rtt {
            Some((_, kernel)) if !kernel.is_zero() => kernel,
            _ => self.min_rtt(),
        }
    }

    /// The RTT to schedule by: the path RTT, or [`UNMEASURED_RTT`] before any sample.
    pub fn scheduling_rtt(&self) -> Duration {
        self.min_rtt.map_or(UNMEASURED_RTT, |(m, _)| m)
    }

    /// Whether the tunnel has its own delivery-rate sample ([`PathEstimate::rate`] is no longer
    /// the assumption).
    pub fn is_measured(&self) -> bool {
        self.rate.is_some()
    }

    /// For a tunnel not measured yet whose driver reported TCP_INFO: the rate its congestion
    /// window sends (the window over the kernel's smoothed RTT, at most the assumed initial
    /// rate) and the kernel's minimum RTT (the handshake's). What the scheduler counts on for
    /// a tunnel that joins a session in full flight (`session::transmit`).
    pub fn slow_start_view(&self) -> Option<(f64, Duration)> {
        let (srtt, min_rtt) = self.tcp_rtt?;
        (self.rate.is_none() && self.tcp_cwnd > 0).then(|| {
            let rate = (self.tcp_cwnd as f64 / srtt.as_secs_f64()).min(self.initial_rate);
            (rate, min_rtt)
        })
    }

    /// Smoothed RTT; zero before any sample.
    pub fn srtt(&self) -> Duration {
        self.srtt.unwrap_or_default()
    }

    /// The delivery rate measured so far, bytes/s: no floor, no assumption; `None` before the
    /// first sample.
    pub fn measured_rate(&self) -> Option<f64> {
        self.rate.map(|(r, _)| r)
    }

    /// Delivery rate in bytes/s.
    pub fn rate(&self) -> f64 {
        let Some((r, _)) = self.rate else {
            return self.initial_rate;
        };
        let rtt = self.min_rtt().as_secs_f64();
        if rtt > 0.0 {
            r.max(FLOOR_BYTES_PER_RTT / rtt)
        } else {
            r
        }
    }

    /// Bandwidth-delay product in bytes (how much must be in flight to keep the tunnel busy).
    pub fn bdp(&self) -> f64 {
        self.rate() * self.min_rtt().as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_a_windowed_max_with_a_floor_of_one_window_per_rtt() {
        let t0 = Instant::now();
        let mut p = PathEstimate::new(1e9);
        assert_eq!(p.rate(), 1e9, "assumed until measured");
        p.on_rtt_sample(Duration::from_millis(100), t0);
        p.on_rate_sample(8e5, true, t0);
        assert_eq!(
            p.rate(),
            1e9,
            "an app-limited first sample does not replace the assumption"
        );
        p.on_rate_sample(5e6, false, t0);
        assert_eq!(p.rate(), 5e6);
        p.on_rate_sample(1e6, false, t0 + Duration::from_millis(10));
        assert_eq!(p.rate(), 5e6, "a dip inside the window is ignored");
        p.on_rate_sample(1e6, true, t0 + Duration::from_secs(5));
        assert_eq!(p.rate(), 5e6, "an app-limited sample never lowers it");
        p.on_rate_sample(2e6, false, t0 + Duration::from_secs(5));
        assert_eq!(p.rate(), 2e6, "a stale max gives way to a real sample");
        p.on_rate_sample(9e6, true, t0 + Duration::from_secs(5));
        assert_eq!(p.rate(), 9e6, "app-limited samples may raise it");
        // A lone 40-byte frame per RTT would say 400 B/s; the floor says one window per RTT.
        p.on_rate_sample(400.0, false, t0 + Duration::from_secs(10));
        assert_eq!(p.rate(), FLOOR_BYTES_PER_RTT / 0.1);
    }

    #[test]
    fn an_unmeasured_tunnel_reads_its_congestion_window_per_rtt() {
        let t0 = Instant::now();
        let mut p = PathEstimate::new(125e6);
        assert_eq!(p.slow_start_view(), None, "nothing reported");
        let report = |cwnd_bytes| TcpReport {
            srtt: Duration::from_millis(250),
            min_rtt: Duration::from_millis(240),
            retransmits: 0,
            held_bytes: 0,
            cwnd_bytes,
            unsent_bytes: 0,
            delivered_bytes: 0,
        };
        // A fresh connection on a 250 ms path: ten segments per RTT.
        p.set_tcp_info(&report(14_480));
        assert_eq!(
            p.slow_start_view(),
            Some((14_480.0 / 0.25, Duration::from_millis(240)))
        );
        assert_eq!(p.rate(), 125e6, "the estimate itself is unchanged");
        p.set_tcp_info(&report(1 << 40));
        assert_eq!(
            p.slow_start_view().map(|(r, _)| r),
            Some(125e6),
            "never above the assumption"
        );
        p.set_tcp_info(&report(0));
        assert_eq!(p.slow_start_view(), None, "a window not reported");
        // Once measured, its own estimate rules.
        p.set_tcp_info(&report(14_480));
        p.on_rtt_sample(Duration::from_millis(260), t0);
        p.on_rate_sample(3e6, false, t0);
        assert!(p.is_measured());
        assert_eq!(p.slow_start_view(), None);
    }

    #[test]
    fn min_rtt_filters_queueing() {
        let t0 = Instant::now();
        let mut p = PathEstimate::new(1e9);
        p.on_rtt_sample(Duration::from_millis(50), t0);
        p.on_rtt_sample(Duration::from_millis(300), t0);
        assert_eq!(p.min_rtt(), Duration::from_millis(50));
        assert!(p.srtt() > Duration::from_millis(50));
    }
}
