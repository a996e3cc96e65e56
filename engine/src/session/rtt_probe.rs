//! The coupled cap's RTT probe (`coupled_pacing`): the path RTT the cap multiplies the
//! session's delivery rate by, measured with the bottleneck queue drained.
//!
//! Owns: when a probe runs, how far it lowers the cap ([`RttProbe::scale`]) and the RTT it
//! finds ([`Session::cap_rtt`]). Must not touch: the cap's rate, its gain or the queue-or-loss
//! judgement (`coupled`); it only reads the tunnels' kernel RTTs.
//!
//! Why. The cap keeps a standing queue of about a quarter of the RTT (its gain), so while it
//! binds no tunnel sees the path's own RTT. The frame-level minimum RTT (a 10 s window) then
//! took that queue in and the cap grew with it (on the emulator at 250 ms: 1.28× 13 s into
//! each run, the queue overflowing from then on). A connection's kernel minimum RTT cannot take
//! it in, but it stands for minutes (`tcp_min_rtt_wlen`): after a route change that lengthens
//! the path by a quarter or more, a cap of gain × rate × the old RTT holds less than the new
//! path's BDP, delivers less than the rate it was set from, and shrinks with it round after
//! round. So, as BBR's ProbeRTT does for one flow: every [`PROBE_INTERVAL`] while the cap
//! is engaged, it drops to [`PROBE_SCALE`] of itself (under the BDP) for [`PROBE_RTTS`] RTTs,
//! the queue empties, and the lowest kernel smoothed RTT a tunnel reports in the probe's last
//! [`PROBE_READ_RTTS`] is the cap's RTT until the next probe. The cap then climbs back over
//! one RTT: restored at once, the tunnels (bbr paces at up to 2.89× its estimate) put half a
//! BDP into the drained queue within a few tens of milliseconds and overflowed a queue of 0.4
//! RTT on the emulator at 250 ms. It costs about half an RTT of the link every 10 s (about 1 %
//! at 250 ms).

use std::time::{Duration, Instant};

use super::Session;

/// How long the cap stays engaged between two probes.
const PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// The cap during a probe, as a fraction of itself: with the cap's steady gain of 1.25, 0.75 of
/// the BDP, so the queue drains even when the RTT in use is a third too long.
const PROBE_SCALE: f64 = 0.6;
/// A probe lasts this many RTTs: about half an RTT for the bytes on the path to fall under the
/// lowered cap, one for what is sent after that to come back, and the reading.
const PROBE_RTTS: f64 = 2.0;
/// The probe reads the tunnels' smoothed RTTs in its last this many RTTs.
const PROBE_READ_RTTS: f64 = 0.5;

/// The state of the probe: when the next one starts, the one running, and what the last found.
#[derive(Debug)]
pub(super) struct RttProbe {
    /// When the next probe starts; set when the cap engages, cleared when it lets go.
    next_at: Option<Instant>,
    /// The probe under way.
    running: Option<Running>,
    /// When the last probe ended.
    ended_at: Option<Instant>,
    /// The factor on the cap now: [`PROBE_SCALE`] during a probe, climbing back to 1 over the
    /// RTT after it.
    scale: f64,
    /// The RTT the last probe found.
    found: Option<Duration>,
    /// Probes started over the session's life (for the metrics).
    probes: u64,
}

impl Default for RttProbe {
    fn default() -> Self {
        Self {
            next_at: None,
            running: None,
            ended_at: None,
            found: None,
            scale: 1.0,
            probes: 0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Running {
    /// Smoothed RTTs reported from here on count.
    read_from: Instant,
    until: Instant,
    lowest: Option<Duration>,
}

impl RttProbe {
    /// A tunnel's kernel reported smoothed RTT `srtt` (zero: none yet) at `now`, while the cap
    /// is `engaged` and uses `rtt`: starts, reads or ends a probe.
    pub(super) fn on_report(&mut self, engaged: bool, rtt: Duration, srtt: Duration, now: Instant) {
        if !engaged || rtt.is_zero() {
            self.next_at = None;
            self.running = None;
            self.scale = 1.0;
            return;
        }
        match self.running.as_mut() {
            Some(r) if now >= r.until => {
                self.found = r.lowest.or(self.found);
                self.running = None;
                self.ended_at = Some(now);
                self.next_at = Some(now + PROBE_INTERVAL);
            }
            Some(r) => {
                if now >= r.read_from && !srtt.is_zero() {
                    r.lowest = Some(r.lowest.map_or(srtt, |l| l.min(srtt)));
                }
            }
            None => {
                let since = self
                    .ended_at
                    .map_or(rtt, |at| now.saturating_duration_since(at));
                self.scale = PROBE_SCALE
                    + (1.0 - PROBE_SCALE) * (since.as_secs_f64() / rtt.as_secs_f64()).min(1.0);
                let next = *self.next_at.get_or_insert(now + PROBE_INTERVAL);
                if now >= next {
                    self.running = Some(Running {
                        read_from: now + rtt.mul_f64(PROBE_RTTS - PROBE_READ_RTTS),
                        until: now + rtt.mul_f64(PROBE_RTTS),
                        lowest: None,
                    });
                    self.scale = PROBE_SCALE;
                    self.probes += 1;
                }
            }
        }
    }

    /// The factor the cap is multiplied by now (as of the last report).
    pub(super) fn scale(&self) -> f64 {
        self.scale
    }

    /// Whether deliveries measured at `now` on a path of RTT `rtt` left while a probe held the
    /// cap down: they measure the probe, not the path.
    pub(super) fn holds_back(&self, rtt: Duration, now: Instant) -> bool {
        self.running.is_some() || self.ended_at.is_some_and(|at| now < at + rtt)
    }

    /// The RTT the last probe found.
    pub(super) fn found(&self) -> Option<Duration> {
        self.found
    }

    /// Probes started over the session's life.
    pub(super) fn probes(&self) -> u64 {
        self.probes
    }
}

impl Session {
    /// Tunnel `t` reported its TCP_INFO at `now`: moves the probe on.
    pub(super) fn update_rtt_probe(&mut self, t: usize, now: Instant) {
        let srtt = self
            .tunnels
            .get(t)
            .and_then(|x| x.path.tcp_queueing())
            .map_or(Duration::ZERO, |(q, m)| q + m);
        let (engaged, rtt) = (self.coupled_cap_engaged(), self.cap_rtt());
        self.rtt_probe.on_report(engaged, rtt, srtt, now);
    }

    /// The RTT the coupled cap multiplies the session's delivery rate by: what the last probe
    /// found, and before any probe the smallest of the active tunnels'
    /// [`crate::path::PathEstimate::base_rtt`]; zero before any sample.
    pub(super) fn cap_rtt(&self) -> Duration {
        self.rtt_probe.found().unwrap_or_else(|| {
            self.tunnels
                .iter()
                .filter(|t| t.is_active())
                .map(|t| t.path.base_rtt())
                .filter(|r| !r.is_zero())
                .min()
                .unwrap_or_default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Reports every 10 ms from `from` for `span`, each showing `srtt`; returns the end and the
    /// scales seen.
    fn reports(
        p: &mut RttProbe,
        from: Instant,
        span: Duration,
        srtt: Duration,
    ) -> (Instant, Vec<f64>) {
        let mut now = from;
        let mut scales = Vec::new();
        while now < from + span {
            now += MS * 10;
            p.on_report(true, p.found().unwrap_or(MS * 100), srtt, now);
            scales.push(p.scale());
        }
        (now, scales)
    }

    #[test]
    fn every_ten_seconds_the_cap_drops_for_two_rtts_and_the_lowest_late_rtt_is_kept() {
        let mut p = RttProbe::default();
        let t0 = Instant::now();
        // A standing queue of a quarter of the 100 ms path: no probe for 10 s.
        let (now, scales) = reports(&mut p, t0, MS * 9_990, MS * 125);
        assert!(scales.iter().all(|&s| s == 1.0));
        assert_eq!(p.found(), None);
        // The probe: the cap at 0.6 for 2 RTTs; the queue drains, the RTTs fall.
        let (now, scales) = reports(&mut p, now, MS * 100, MS * 125);
        assert!(scales.contains(&PROBE_SCALE));
        let (now, _) = reports(&mut p, now, MS * 150, MS * 101);
        assert_eq!(p.found(), Some(MS * 101), "{p:?}");
        // The cap climbs back over one RTT, then the next probe is 10 s later, not before.
        let (now, scales) = reports(&mut p, now, MS * 100, MS * 125);
        assert!(scales.windows(2).all(|w| w[0] <= w[1]), "{scales:?}");
        assert!(scales[0] > PROBE_SCALE && scales[0] < 0.9, "{scales:?}");
        assert_eq!(scales.last(), Some(&1.0));
        let (_, scales) = reports(&mut p, now, MS * 9_800, MS * 125);
        assert!(scales.iter().all(|&s| s == 1.0));
    }

    #[test]
    fn a_longer_path_is_found_by_the_next_probe() {
        let mut p = RttProbe::default();
        let t0 = Instant::now();
        let (now, _) = reports(&mut p, t0, MS * 10_300, MS * 100);
        assert_eq!(p.found(), Some(MS * 100));
        // The route changed to 140 ms: no queue, and every RTT reads 140.
        let (_, _) = reports(&mut p, now, MS * 10_400, MS * 140);
        assert_eq!(p.found(), Some(MS * 140));
    }

    #[test]
    fn no_probe_while_the_cap_is_not_engaged_and_the_clock_restarts_when_it_engages() {
        let mut p = RttProbe::default();
        let mut now = Instant::now();
        for _ in 0..2_000 {
            now += MS * 10;
            p.on_report(false, MS * 100, MS * 125, now);
            assert_eq!(p.scale(), 1.0);
        }
        let (_, scales) = reports(&mut p, now, MS * 9_990, MS * 125);
        assert!(scales.iter().all(|&s| s == 1.0), "10 s from engaging");
        assert!(!p.holds_back(MS * 100, now));
    }

    #[test]
    fn deliveries_during_and_just_after_a_probe_are_held_back() {
        let mut p = RttProbe::default();
        let t0 = Instant::now();
        let (now, _) = reports(&mut p, t0, MS * 10_010, MS * 125);
        assert!(p.scale() < 1.0 && p.holds_back(MS * 100, now));
        let (now, _) = reports(&mut p, now, MS * 200, MS * 100);
        assert!(p.scale() < 1.0);
        assert!(p.holds_back(MS * 100, now));
        assert!(!p.holds_back(MS * 100, now + MS * 100));
    }
}
