//! Coupled pacing (`Config::coupled_pacing`): N tunnels behind one bottleneck behave like one
//! well-behaved flow while its queue builds, and like N independent windows when random loss,
//! not queueing, limits the rate.
//!
//! Owns: the queue-or-random-loss decision ([`Session::update_queue_building`], from the
//! kernel's RTTs and retransmission counts the driver reports) and the session's cap on
//! unacknowledged stream data ([`Session::coupled_cap`]). Must not touch: which tunnel a frame
//! goes on (`transmit`), ACK bookkeeping (`retransmit` only asks
//! [`Session::coupled_cap_engaged`] and the cap).
//!
//! The decision. The cap engages with the first TCP_INFO report: N slow starts overrun a queue within one RTT, faster
//! than any RTT signal can react. Losses (a tunnel's retransmission count grew) while the
//! bottleneck queue is nearly empty are random loss: once a quarter of the tunnels (at least
//! two) lost a segment so, the cap comes off and the tunnels are N independent windows, each
//! recovering on its own. (One tunnel's early loss is not enough: released during slow start,
//! the others would still overrun the queue.) A queue that builds (RTT inflation above
//! [`ENGAGE_ABOVE`]) engages it again, so the windows cannot stack in that queue and the losses
//! that follow are the queue's. Between the two thresholds the state is kept (hysteresis).
//!
//! Why the kernel's RTT and not the frame-level one: a frame's send → ACK time also holds the
//! wait in the socket's unsent queue and TCP's head-of-line wait behind a lost segment. Random
//! loss makes the latter about one RTT on the frames behind every loss, so the frame-level RTT
//! rises without any queue, and a cap keyed to it (or always on, as this was first) throttles
//! exactly the lossy paths where N windows help. The kernel's smoothed RTT excludes
//! retransmitted segments (Karn), so above its minimum it is the bottleneck queue. The queue is
//! shared: the inflation is the median over the tunnels, which one idle tunnel's stale sample
//! cannot move.
//!
//! On a short path (minimum RTT under [`SHORT_PATH`], a LAN or loopback) with no queue to speak
//! of ([`QUEUE_FLOOR`]) the cap is off: there are no losses to release it, and its floor would
//! then cap loopback throughput (measured 0.89× of uncoupled before this rule).
//!
//! Limits: on a path whose queue is shallower than [`RELEASE_BELOW`] of its RTT, queue drops
//! look like random loss and the tunnels run uncoupled (as without this).

use std::time::{Duration, Instant};

use super::Session;

/// How often a driver reads a sending tunnel's TCP_INFO for [`Session::set_tunnel_tcp_info`]
/// (one `getsockopt` per tunnel per interval, only while the session transmits; the kernel's
/// smoothed RTT itself moves on the scale of an RTT).
const TCP_INFO_INTERVAL: Duration = Duration::from_millis(10);

/// Gain over the measured bandwidth-delay product of [`Session::coupled_cap`].
const COUPLED_GAIN: f64 = 1.25;
/// Least the coupled cap allows per active tunnel, bytes.
const COUPLED_FLOOR: u64 = 64 * 1024;
/// The queue is building once the median tunnel's kernel RTT is this fraction above the
/// smallest minimum RTT (a queue of a fifth of the path's RTT).
const ENGAGE_ABOVE: f64 = 0.2;
/// A loss while the inflation is under this fraction is random loss (hysteresis with
/// [`ENGAGE_ABOVE`], so the cap does not flap with every smoothed-RTT wobble).
const RELEASE_BELOW: f64 = 0.1;
/// Less queueing than this is no queue, whatever its fraction of the RTT: on a LAN or loopback
/// path (microseconds of RTT) scheduling noise alone is a large fraction.
const QUEUE_FLOOR: Duration = Duration::from_millis(1);
/// A path whose minimum RTT is under this is short: a queue on it drains within a few
/// milliseconds and slow start overshoots little, so the cap starts off there (it would
/// otherwise stay on for lack of any loss to release it).
const SHORT_PATH: Duration = Duration::from_millis(2);

impl Session {
    /// Whether the driver should read tunnel `t`'s TCP_INFO now and report it with
    /// [`Session::set_tunnel_tcp_info`]: `coupled_pacing` is on, stream data waits to be framed
    /// (only then can the cap matter: an idle session costs no system call), and the last
    /// report is older than [`TCP_INFO_INTERVAL`].
    pub fn wants_tcp_info(&self, t: usize, now: Instant) -> bool {
        self.config.coupled_pacing
            && !self.ready.is_empty()
            && self.tunnels.get(t).is_some_and(|x| {
                x.is_active()
                    && x.tcp_info_at
                        .is_none_or(|at| now.saturating_duration_since(at) >= TCP_INFO_INTERVAL)
            })
    }

    /// Re-reads the decision after tunnel `t`'s kernel figures changed; `lost`: it
    /// retransmitted since its last report.
    pub(super) fn update_queue_building(&mut self, t: usize, lost: bool) {
        let Some((queue, base)) = self.queue_inflation() else {
            return;
        };
        let inflation = queue.as_secs_f64() / base.as_secs_f64();
        // The first report engages it (see the module doc: slow start).
        let building = *self.queue_building.get_or_insert(true);
        if base < SHORT_PATH && queue < QUEUE_FLOOR {
            self.queue_building = Some(false);
        } else if inflation > ENGAGE_ABOVE && queue >= QUEUE_FLOOR {
            if !building {
                self.queue_building = Some(true);
                for tun in &mut self.tunnels {
                    tun.quiet_loss = false;
                }
            }
        } else if lost && (inflation < RELEASE_BELOW || queue < QUEUE_FLOOR) && building {
            if let Some(tun) = self.tunnels.get_mut(t) {
                tun.quiet_loss = true;
            }
            let active = self.tunnels.iter().filter(|x| x.is_active()).count();
            let quiet = self
                .tunnels
                .iter()
                .filter(|x| x.is_active() && x.quiet_loss)
                .count();
            if quiet >= (active / 4).max(2).min(active) {
                self.queue_building = Some(false);
            }
        }
    }

    /// The bottleneck queue and the path's RTT: the median over the active tunnels of the
    /// kernel's smoothed RTT above the smallest minimum RTT, and that minimum; `None` before any
    /// tunnel reported one.
    fn queue_inflation(&self) -> Option<(Duration, Duration)> {
        let mut base = Duration::MAX;
        let mut srtts = Vec::with_capacity(self.tunnels.len());
        for tun in self.tunnels.iter().filter(|t| t.is_active()) {
            if let Some((q, m)) = tun.path.tcp_queueing() {
                base = base.min(m);
                srtts.push(q + m);
            }
        }
        if srtts.is_empty() || base.is_zero() {
            return None;
        }
        let mid = (srtts.len() - 1) / 2;
        let (_, median, _) = srtts.select_nth_unstable(mid);
        Some((median.saturating_sub(base), base))
    }

    /// The most the whole session keeps unacknowledged while the coupled cap is engaged: its
    /// measured bandwidth-delay product (the tunnels' delivery rates summed, times the shortest
    /// path RTT) with a gain of [`COUPLED_GAIN`], so that N tunnels together hold about what
    /// one well-behaved flow would and cannot stack N windows in the bottleneck queue. The gain
    /// lets the rate estimate grow while the queue is empty; [`COUPLED_FLOOR`] per tunnel keeps
    /// an idle session from starving its own estimates.
    pub(super) fn coupled_cap(&self) -> u64 {
        let (mut rate, mut rtt, mut active) = (0.0f64, f64::INFINITY, 0u64);
        for tun in self.tunnels.iter().filter(|t| t.is_active()) {
            rate += tun.path.rate();
            let r = tun.path.min_rtt().as_secs_f64();
            if r > 0.0 {
                rtt = rtt.min(r);
            }
            active += 1;
        }
        if !rtt.is_finite() {
            return u64::MAX;
        }
        ((rate * rtt * COUPLED_GAIN) as u64).max(COUPLED_FLOOR * active.max(1))
    }
}
