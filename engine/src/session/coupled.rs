//! Coupled pacing (`Config::coupled_pacing`): N tunnels behind one bottleneck behave like one
//! well-behaved flow while its queue builds, and like N independent windows when random loss,
//! not queueing, limits the rate.
//!
//! Owns: the queue-or-random-loss decision ([`Session::update_queue_building`], from the
//! kernel's RTTs and retransmission counts the driver reports), the session's cap
//! ([`Session::coupled_cap`]) and what it weighs: the bytes on the path
//! ([`Session::held_on_path`]), and its figures for the metrics ([`CoupledStats`]). Must not
//! touch: which tunnel a frame goes on (`transmit`), ACK bookkeeping (`retransmit` only asks
//! the cap that binds, [`Session::binding_cap`], and the count).
//!
//! The decision. The cap engages with the first TCP_INFO report (once two tunnels are active): N
//! slow starts overrun a queue within one RTT, faster than any RTT signal can react. Losses (a
//! tunnel's retransmission count grew) while the bottleneck queue is nearly empty are random loss:
//! once a quarter of the tunnels (at least two) lost a segment so, the cap comes off (growing by
//! [`RELEASE_GROWTH_PER_RTT`] per RTT until it is gone) and the tunnels are N independent windows,
//! each recovering on its own. (One tunnel's early loss is not enough: released during slow start,
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
//! What the cap weighs is the bytes on the path and about to enter it (the kernel's in-flight
//! and unsent bytes and the driver's queue, [`crate::path::TcpReport::held_bytes`]), not the
//! bytes mtcpd keeps for resend: under random loss those also hold about one RTT of data the
//! receiver's TCP keeps behind a hole and of ACK frames on their way back, none of it in the
//! bottleneck queue. Weighed against the cap, that lag throttled exactly the lossy paths (on
//! the emulator at 100 ms / 1 %: 684 / 656 Mbit/s capped, 806 / 768 uncoupled). Between two
//! reports the count goes up by what was framed since (and never exceeds the tunnel's
//! unacknowledged bytes); reads come every eighth of an RTT while the cap binds. The cap
//! allows each active tunnel's configured unsent bytes on top
//! ([`crate::Config::tunnel_unsent_bytes`], together at most [`UNSENT_ALLOWANCE_MAX_BDP`] of the
//! BDP; not a fast tunnel's raised [`Session::tunnel_unsent_limit`]: a capped tunnel's socket
//! is kept short anyway, and counting the raise only added headroom, which at 250 ms is a
//! quarter of a large BDP: mtcpd-8 731 and 744 Mbit/s with 56-62k queue drops on the clean
//! path, against 721-826 and 13-34k without it).
//!
//! With one active tunnel the cap does not apply ([`COUPLED_MIN_TUNNELS`]): there is nothing to
//! couple.
//!
//! The cap's rate is the session's own delivery rate ([`AggregateRate`]), not the sum of the
//! tunnels' estimates, which overstated a shared bottleneck twofold. It counts what the
//! kernel says each tunnel's peer received ([`crate::path::TcpReport::delivered_bytes`],
//! read with every report; TCP_INFO is read while a tunnel has anything unacknowledged, so
//! the count has no gaps), and ACK frames only where a driver does not report that. ACK
//! frames wait behind a TCP hole and then come at once: over a span of two RTTs those bursts
//! read up to 1.4× the link (250 ms on the emulator), and the cap let the tunnels overfill a
//! shallow queue with them.
//!
//! The cap's RTT is measured with the queue drained ([`Session::cap_rtt`], `rtt_probe`), not
//! the frame-level minimum, which took in the standing queue the cap keeps.
//!
//! The gain. In the session's start-up ([`StartUp`]: until its delivery rate stops growing or
//! a queue of [`StartUp::exit_queue`] stands) the cap carries [`STARTUP_GAIN`], so the bytes on
//! the path grow about as fast as slow start's; after it, [`COUPLED_GAIN`].
//!
//! Limits: on a path whose queue is shallower than [`RELEASE_BELOW`] of its RTT, queue drops
//! look like random loss and the tunnels run uncoupled (as without this). Before the kernel's
//! count fed the rate, holding its maximum while a queue stands was tried against the ACK
//! bursts: it locks the rate wherever it is whenever the RTT stands inflated for another
//! reason (another flow's queue, a busy host), measured once as 16 tunnels held at
//! 730 Mbit/s on a 965 Mbit/s path for the last 9 s of a run.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::Session;
use crate::path::TcpReport;

/// The session's delivery rate over all its tunnels, for [`Session::coupled_cap`]: the bytes
/// delivered on every tunnel (the kernel's count, [`Session::on_kernel_delivery`], or ACK
/// frames where a driver does not report it) over the last [`AGGREGATE_SPAN_RTTS`] path RTTs,
/// under a windowed maximum. Not the sum of the tunnels' own estimates: each is a maximum over its own
/// window, and tunnels sharing one bottleneck take turns at a high share, so that sum ran at
/// twice the link on the simulator (8 tunnels, 50 Mbit/s). Not per-frame send-to-ACK samples
/// either: ACKs of frames queued ahead on other tunnels arrive in bursts and those samples
/// overshot by 1.7×.
#[derive(Debug, Default)]
pub(super) struct AggregateRate {
    /// Bytes delivered on every tunnel, over the session's life.
    delivered: u64,
    /// (when, `delivered` by then), oldest first, a quarter span apart, spanning just over one
    /// span (at most [`AGGREGATE_MARKS`]).
    marks: VecDeque<(Instant, u64)>,
    /// When bytes were last counted. A mark for that moment is taken only once the count moves
    /// on to a later one, so it holds every tunnel the driver read at that moment: after a
    /// stall of the event loop, one pass reads every tunnel's bytes of the stall at once, and a
    /// mark taken after the first of them put the others' after it, as if delivered within
    /// the next span (1.1× the link in the samples one span later, on the emulator).
    counted_at: Option<Instant>,
    best: Option<(f64, Instant)>,
}

/// The most marks [`AggregateRate`] keeps (one span at a quarter span apart needs five).
const AGGREGATE_MARKS: usize = 8;
/// A sample spans this many path RTTs.
const AGGREGATE_SPAN_RTTS: u32 = 2;
/// How long an aggregate rate maximum stands, in path RTTs (as long as a tunnel's own
/// estimate stands, `path`), at least [`AGGREGATE_WINDOW_MIN`].
const AGGREGATE_WINDOW_RTTS: u32 = 8;
/// The least an aggregate rate maximum stands.
const AGGREGATE_WINDOW_MIN: Duration = Duration::from_millis(200);

impl AggregateRate {
    /// `bytes` were acknowledged at `now` on a path of minimum RTT `rtt`; `app_limited`: the
    /// session had nothing more to frame when the last of them was sent, so a sample ending
    /// here may raise the estimate but not lower it. A lower sample replaces the maximum once
    /// that is older than its window.
    pub(super) fn on_ack(&mut self, bytes: u64, rtt: Duration, app_limited: bool, now: Instant) {
        let span = rtt * AGGREGATE_SPAN_RTTS;
        if let Some(then) = self.counted_at.filter(|&at| at < now && !rtt.is_zero())
            && self
                .marks
                .back()
                .is_none_or(|&(at, _)| then.saturating_duration_since(at) >= span / 4)
        {
            if self.marks.len() == AGGREGATE_MARKS {
                self.marks.pop_front();
            }
            self.marks.push_back((then, self.delivered));
        }
        self.delivered += bytes;
        self.counted_at = Some(now);
        if rtt.is_zero() {
            return;
        }
        while self
            .marks
            .get(1)
            .is_some_and(|&(at, _)| now.saturating_duration_since(at) >= span)
        {
            self.marks.pop_front();
        }
        let Some(&(at, then)) = self.marks.front() else {
            return;
        };
        let elapsed = now.saturating_duration_since(at);
        if elapsed < span {
            return;
        }
        let rate = (self.delivered - then) as f64 / elapsed.as_secs_f64();
        let window = (rtt * AGGREGATE_WINDOW_RTTS).max(AGGREGATE_WINDOW_MIN);
        match self.best {
            Some((best, set))
                if rate < best && (app_limited || now.saturating_duration_since(set) < window) => {}
            None if app_limited || rate <= 0.0 => {}
            _ => self.best = Some((rate, now)),
        }
    }

    /// The estimate, bytes/s; `None` before the first sample taken while backlogged.
    pub(super) fn rate(&self) -> Option<f64> {
        self.best.map(|(r, _)| r)
    }
}

/// Whether the session is still in its start-up: its delivery rate still grows (by
/// [`STARTUP_GROWTH`] a round, as BBR's start-up judges a full pipe) and no queue has built
/// (over [`StartUp::exit_queue`]).
/// Until then the coupled cap carries [`STARTUP_GAIN`] rather than [`COUPLED_GAIN`]: the cap is
/// the delivery rate it measured times the RTT, and that rate trails what the tunnels send by
/// about one RTT (its samples span [`AGGREGATE_SPAN_RTTS`]), so with the steady gain the bytes on
/// the path could grow only 1.16× per RTT (at 250 ms the rate doubled once a second: 0.77× of
/// one TCP flow over 20 s on the emulator), where TCP's slow start doubles them every RTT.
#[derive(Debug, Default)]
pub(super) struct StartUp {
    /// The pipe is full or a queue built: the steady gain applies from now on.
    over: bool,
    /// When the current round began and the rate its growth is judged against.
    round: Option<(Instant, f64)>,
    /// Consecutive backlogged rounds whose rate did not grow by [`STARTUP_GROWTH`].
    flat_rounds: u32,
}

/// The delivery rate grows by at least this factor a round while the pipe is not full.
const STARTUP_GROWTH: f64 = 1.25;
/// This many rounds in a row without that growth: the pipe is full.
const STARTUP_FLAT_ROUNDS: u32 = 3;
/// The coupled cap's gain during the start-up (BBRv3's start-up window gain). With the rate
/// averaged over two RTTs and trailing by about one, the bytes on the path grow by g per RTT
/// where 2g² = gain·(g + 1): 1.62× here, 1.16× at the steady gain. BBR's 2.89 (g = 2.1) was
/// measured too: on the simulator at 250 ms it overshot the queue at the end of the start-up
/// (245 drops against none, 0.97× of this goodput), and with `hol_relief` on a clean 100 ms
/// path the relief copies for those holes cost 12 % of goodput.
const STARTUP_GAIN: f64 = 2.0;
/// [`StartUp::exit_queue`]: this fraction of the minimum RTT ...
const STARTUP_EXIT_QUEUE_DIVISOR: u32 = 8;
/// ... but at least this ...
const STARTUP_EXIT_QUEUE_MIN: Duration = Duration::from_millis(4);
/// ... and at most this.
const STARTUP_EXIT_QUEUE_MAX: Duration = Duration::from_millis(16);

impl StartUp {
    /// A rate estimate (`rate`, bytes/s) after an ACK at `now` on a path of minimum RTT `rtt`;
    /// `app_limited`: the session had nothing more to frame, which says nothing of the pipe.
    pub(super) fn on_rate(
        &mut self,
        rate: Option<f64>,
        rtt: Duration,
        app_limited: bool,
        now: Instant,
    ) {
        let Some(rate) = rate.filter(|_| !self.over && !rtt.is_zero()) else {
            return;
        };
        let Some((start, base)) = self.round else {
            self.round = Some((now, rate));
            return;
        };
        if now.saturating_duration_since(start) < rtt {
            return;
        }
        if rate >= base * STARTUP_GROWTH {
            self.round = Some((now, rate));
            self.flat_rounds = 0;
            return;
        }
        self.round = Some((now, base));
        if !app_limited {
            self.flat_rounds += 1;
            self.over = self.flat_rounds >= STARTUP_FLAT_ROUNDS;
        }
    }

    /// Whether the start-up is over (the pipe is full or a queue built).
    pub(super) fn is_over(&self) -> bool {
        self.over
    }

    /// A queue built at the bottleneck: the pipe is full.
    pub(super) fn end(&mut self) {
        self.over = true;
    }

    /// The queue that ends the start-up on a path of minimum RTT `base`: HyStart++'s delay
    /// threshold (RFC 9406 §4.2), an eighth of the RTT within 4 to 16 ms. Not the cap's own
    /// [`ENGAGE_ABOVE`] (a fifth of the RTT): the RTT that shows a queue comes a round trip
    /// after the bytes that built it, and at the start-up's gain the bytes on the path grow
    /// 1.6× in that round trip. At 250 ms the queue read 48 ms, just under a fifth, when the
    /// session held 1.5 BDP against a path that holds 1.4 (BDP and a 100 ms queue, on the
    /// emulator): 26-48k queue drops and the stream stalled behind them for four seconds,
    /// where one bbr flow, held by its receive window, dropped none.
    pub(super) fn exit_queue(base: Duration) -> Duration {
        (base / STARTUP_EXIT_QUEUE_DIVISOR).clamp(STARTUP_EXIT_QUEUE_MIN, STARTUP_EXIT_QUEUE_MAX)
    }

    /// The gain of the coupled cap now.
    pub(super) fn gain(&self) -> f64 {
        if self.over {
            COUPLED_GAIN
        } else {
            STARTUP_GAIN
        }
    }
}

/// How often a driver reads a sending tunnel's TCP_INFO for [`Session::set_tunnel_tcp_info`]
/// (one `getsockopt` per tunnel per interval, only while the session transmits; the kernel's
/// smoothed RTT itself moves on the scale of an RTT).
const TCP_INFO_INTERVAL: Duration = Duration::from_millis(10);
/// While the cap binds (engaged, or growing after a release), a tunnel is read every this
/// fraction of its path RTT (at least
/// every [`TCP_INFO_INTERVAL`], at most every [`TCP_INFO_INTERVAL_MIN`]): its count of bytes on
/// the path only grows between two reads, so a stale one holds back up to an interval's worth
/// of delivery (an eighth of the BDP at most).
const TCP_INFO_PER_RTT: u32 = 8;
/// The shortest interval between two reads of one tunnel's TCP_INFO.
const TCP_INFO_INTERVAL_MIN: Duration = Duration::from_millis(1);

/// Gain over the measured bandwidth-delay product of [`Session::coupled_cap`].
const COUPLED_GAIN: f64 = 1.25;
/// The cap applies only with at least this many active tunnels. One tunnel is one flow: its
/// own congestion control is already the well-behaved flow the cap imitates, and a cap at
/// 1.25 BDP is tighter than a bbr flow's window (2 BDP), which under random loss is what
/// keeps the pipe full through recoveries. One bbr tunnel also builds a queue by itself (its
/// probing), so the cap never released. On the emulator (100 ms, 0.1 % loss, 1 MiB unsent):
/// one tunnel got 672 Mbit/s capped against 870 uncapped (one direct flow: 862); on the
/// clean path 889 against 903.
const COUPLED_MIN_TUNNELS: usize = 2;
/// The coupled cap adds, per active tunnel, room for the bytes that wait in its socket for the
/// kernel to send them ([`crate::Config::tunnel_unsent_bytes`], the socket's configured
/// TCP_NOTSENT_LOWAT): they are counted on the path (they enter it at the tunnel's pacing, see
/// the module doc) but are not in the network. Without it, at a short RTT the sockets' unsent
/// bytes used the cap's whole headroom and the link ran short: at 20 ms eight sockets' 1 MiB
/// is 40 % of the 2.4 MB BDP and four times the cap's quarter-BDP margin (on the emulator,
/// mtcpd-8 at 20 ms / 1 % loss 0.89× of the same build uncoupled, and under one bbr flow);
/// but never more than this fraction of the measured BDP: on a slow path (50 Mbit/s at
/// 100 ms on the simulator, 8 tunnels: 1 MiB is 1.7 BDP) the whole allowance undid the cap
/// (the clean-bottleneck test: 401 queue drops against 719 uncoupled, where it asks for under
/// a quarter).
///
/// Half, not a quarter: the link stays full only while the sockets' unsent bytes fit in this
/// allowance plus the gain's quarter BDP, and at 20 ms on 1 Gbit/s they hold up to 0.58 BDP
/// (eight sockets at 128-256 KiB against 2.4 MB). With a quarter, the cap stayed engaged there
/// under random loss on its own standing queue and held mtcpd-8 at 918-920 Mbit/s at 1 % loss
/// (uncoupled 944, one bbr flow 931); with half, 939-943. On a 1 Gbit/s path from about 35 ms
/// up, the sockets' 1 MiB is under either bound, so nothing changes there. Room the sockets do
/// not use goes into the network: where a shallow queue (under half the BDP) is the
/// bottleneck, that is up to a quarter BDP more of its drops. Allowing only what the sockets
/// held at the last report instead starved them (the kernel paces from them, and an empty
/// socket then had no room to refill): 845 Mbit/s at 20 ms / 1 %.
const UNSENT_ALLOWANCE_MAX_BDP: f64 = 0.5;
/// Least the coupled cap allows per active tunnel, bytes.
const COUPLED_FLOOR: u64 = 64 * 1024;
/// The queue is building once the median tunnel's kernel RTT is this fraction above the
/// smallest minimum RTT (a queue of a fifth of the path's RTT).
const ENGAGE_ABOVE: f64 = 0.2;
/// A loss while the inflation is under this fraction is random loss (hysteresis with
/// [`ENGAGE_ABOVE`], so the cap does not flap with every smoothed-RTT wobble).
const RELEASE_BELOW: f64 = 0.1;
/// ... and stayed under it for this many path RTTs: a loss is reported about an RTT after the
/// segment met the queue, and queue drops stall the stream's flow (its window waits for the
/// holes), so the queue that dropped it is often gone by then. Judged on the inflation at
/// that moment, the overflows of a shallow queue (0.4 of the RTT at 250 ms on the emulator)
/// read as random loss, released the cap and overflowed it again.
const QUEUE_PEAK_RTTS: u32 = 2;
/// Released by random loss, the cap grows by this factor per path RTT rather than vanish at
/// once: windows that loss holds small never reach it, and windows it does not (16 Reno-like
/// tunnels at 0.1 % on the simulator) rebuild the queue over a few RTTs, where the RTT signal
/// engages the cap again, instead of dumping what the cap held back into the queue within
/// one RTT, faster than any RTT signal (there: 357-530 queue drops per run without the ramp,
/// 0-4 with it; 1.25 per RTT left 170, 1.1 cost 4 % of goodput at 1 % loss).
const RELEASE_GROWTH_PER_RTT: f64 = 1.15;
/// Once the released cap has grown this far it is gone.
const RELEASE_SCALE_MAX: f64 = 64.0;
/// Less queueing than this is no queue, whatever its fraction of the RTT: on a LAN or loopback
/// path (microseconds of RTT) scheduling noise alone is a large fraction.
const QUEUE_FLOOR: Duration = Duration::from_millis(1);
/// A path whose minimum RTT is under this is short: a queue on it drains within a few
/// milliseconds and slow start overshoots little, so the cap starts off there (it would
/// otherwise stay on for lack of any loss to release it).
const SHORT_PATH: Duration = Duration::from_millis(2);

/// The coupled cap as the metrics show it ([`Session::coupled_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CoupledStats {
    /// Whether the cap binds now: engaged (a queue built), or still growing after random loss
    /// released it.
    pub binding: bool,
    /// The most the session keeps on the path now, bytes (`None` while the cap does not bind
    /// or before any RTT is known).
    pub cap_bytes: Option<u64>,
    /// The session's bytes on the path, as the cap weighs them (the kernel's in-flight and
    /// unsent bytes, the driver's queues, the resend queue).
    pub bytes_on_path: u64,
    /// The session's delivery rate over all its tunnels, bytes/s (`None` before a sample
    /// taken while it had data waiting).
    pub delivery_rate: Option<f64>,
    /// The path RTT the cap multiplies that rate by (`None` before any tunnel reported one).
    pub path_rtt: Option<Duration>,
    /// RTT probes run (the cap held at 0.6× for 2 RTTs every 10 s while engaged).
    pub rtt_probes: u64,
}

impl Session {
    /// The coupled cap's state now; `None` with `coupled_pacing` off.
    pub fn coupled_stats(&self) -> Option<CoupledStats> {
        if !self.config.coupled_pacing {
            return None;
        }
        let rtt = self.cap_rtt();
        Some(CoupledStats {
            binding: self.coupled_cap_scale().is_some(),
            cap_bytes: self
                .binding_cap()
                .filter(|_| !rtt.is_zero())
                .map(|cap| cap as u64),
            bytes_on_path: self.held_on_path(),
            delivery_rate: self.aggregate_rate.rate(),
            path_rtt: (!rtt.is_zero()).then_some(rtt),
            rtt_probes: self.rtt_probe.probes(),
        })
    }

    /// Whether the driver should read tunnel `t`'s TCP_INFO now and report it with
    /// [`Session::set_tunnel_tcp_info`]: `coupled_pacing` is on, stream data waits to be framed
    /// (only then can the cap matter: an idle session costs no system call), the tunnel has
    /// frames unacknowledged, or its window was last seen collapsed (`handoff`: until a report
    /// shows it open); and the last report is older than 10 ms (`TCP_INFO_INTERVAL`), or
    /// while the cap binds than an eighth of the tunnel's RTT within 1-10 ms
    /// (`TCP_INFO_PER_RTT`).
    pub fn wants_tcp_info(&self, t: usize, now: Instant) -> bool {
        let interval = |x: &super::tunnels::Tunnel| {
            if self.coupled_cap_scale().is_some() {
                (x.path.min_rtt() / TCP_INFO_PER_RTT)
                    .clamp(TCP_INFO_INTERVAL_MIN, TCP_INFO_INTERVAL)
            } else {
                TCP_INFO_INTERVAL
            }
        };
        self.config.coupled_pacing
            && self.tunnels.get(t).is_some_and(|x| {
                (!self.ready.is_empty() || x.cwnd_collapsed || x.unacked_bytes > 0)
                    && x.is_active()
                    && x.tcp_info_at
                        .is_none_or(|at| now.saturating_duration_since(at) >= interval(x))
            })
    }

    /// Re-reads the decision after tunnel `t`'s kernel figures changed at `now`; `lost`: it
    /// retransmitted since its last report.
    pub(super) fn update_queue_building(&mut self, t: usize, lost: bool, now: Instant) {
        let Some((queue, base)) = self.queue_inflation() else {
            return;
        };
        let inflation = queue.as_secs_f64() / base.as_secs_f64();
        let peak = match self.queue_peak {
            Some((q, at))
                if q > queue && now.saturating_duration_since(at) < base * QUEUE_PEAK_RTTS =>
            {
                q
            }
            _ => {
                self.queue_peak = Some((queue, now));
                queue
            }
        };
        let quiet = peak.as_secs_f64() / base.as_secs_f64() < RELEASE_BELOW || peak < QUEUE_FLOOR;
        // The first report engages it (see the module doc: slow start).
        let building = *self.queue_building.get_or_insert(true);
        if queue > StartUp::exit_queue(base) {
            self.startup.end();
        }
        if base < SHORT_PATH && queue < QUEUE_FLOOR {
            self.queue_building = Some(false);
            self.released_at = None;
        } else if inflation > ENGAGE_ABOVE && queue >= QUEUE_FLOOR {
            self.startup.end();
            if !building {
                self.queue_building = Some(true);
                for tun in &mut self.tunnels {
                    tun.quiet_loss = false;
                }
            }
        } else if lost && quiet && building {
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
                self.released_at = Some(now);
            }
        }
        self.cap_scale = match self.queue_building {
            Some(true) => Some(1.0),
            Some(false) => self.released_at.and_then(|at| {
                let rtts = now.saturating_duration_since(at).as_secs_f64() / base.as_secs_f64();
                let scale = RELEASE_GROWTH_PER_RTT.powf(rtts);
                (scale < RELEASE_SCALE_MAX).then_some(scale)
            }),
            None => None,
        };
    }

    /// Tunnel `t`'s kernel reported `report` at `now`: the bytes its peer received since the
    /// last report feed the session's delivery rate ([`Session::on_delivered`]), and once a
    /// driver reports them, ACK frames no longer do. The kernel counts bytes as they arrive,
    /// beyond a hole too; ACK frames wait behind the hole and then come in a burst, which
    /// raised the rate's windowed maximum to 1.4× the link (see the module doc).
    pub(super) fn on_kernel_delivery(&mut self, t: usize, report: &TcpReport, now: Instant) {
        if report.delivered_bytes == 0 {
            return;
        }
        self.kernel_delivery = true;
        let Some(x) = self.tunnels.get(t) else {
            return;
        };
        // The connection's first count only sets the mark (ACK frames counted what came
        // before); a count below the mark (a hole filled with short segments) adds nothing.
        let (Some(held), Some(last)) = (x.kernel_held, x.tcp_info_at) else {
            return;
        };
        if held.delivered_mark == 0 {
            return;
        }
        let bytes = report.delivered_bytes.saturating_sub(held.delivered_mark);
        let rtt = x.path.base_rtt();
        // What arrived since `last` left about one RTT before it.
        let app_limited = self.app_limited_at.is_some_and(|at| at + rtt >= last)
            || self.rtt_probe.holds_back(rtt, now);
        self.on_delivered(bytes, rtt, app_limited, now);
    }

    /// `bytes` reached the peer at `now` on a tunnel whose minimum RTT is `rtt`; `app_limited`:
    /// the session had nothing more to frame when they were sent. Moves the session's delivery
    /// rate and its start-up judgement on.
    pub(super) fn on_delivered(
        &mut self,
        bytes: u64,
        rtt: Duration,
        app_limited: bool,
        now: Instant,
    ) {
        self.aggregate_rate.on_ack(bytes, rtt, app_limited, now);
        self.startup
            .on_rate(self.aggregate_rate.rate(), rtt, app_limited, now);
    }

    /// How far the coupled cap binds: the cap is [`Session::coupled_cap`] times this; `None`
    /// when it does not bind at all.
    pub(super) fn coupled_cap_scale(&self) -> Option<f64> {
        self.cap_scale
            .filter(|_| self.couples())
            .map(|x| x * self.rtt_probe.scale())
    }

    /// Whether the coupled cap may apply: `coupled_pacing` is on and at least
    /// [`COUPLED_MIN_TUNNELS`] tunnels are active and not draining (a draining tunnel takes
    /// no new frames).
    pub(super) fn couples(&self) -> bool {
        self.config.coupled_pacing
            && self
                .tunnels
                .iter()
                .filter(|t| t.is_active() && !t.draining)
                .count()
                >= COUPLED_MIN_TUNNELS
    }

    /// The cap that binds now, bytes: [`Session::coupled_cap`] times
    /// [`Session::coupled_cap_scale`]; `None` while it does not bind.
    pub(super) fn binding_cap(&self) -> Option<f64> {
        self.coupled_cap_scale()
            .map(|x| self.coupled_cap() as f64 * x)
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

    /// The session's bytes on the path (in flight or waiting to enter it), for the coupled
    /// cap: every tunnel's [`super::tunnels::Tunnel::held_on_path`] plus the resend queue.
    pub(super) fn held_on_path(&self) -> u64 {
        let on_tunnels: u64 = self.tunnels.iter().map(|t| t.held_on_path()).sum();
        self.retransmit_bytes + on_tunnels
    }

    /// The most the whole session keeps on the path while the coupled cap is engaged (times
    /// [`Session::coupled_cap_scale`] after a release): its measured bandwidth-delay product (its
    /// [`AggregateRate`], or before that has a sample the tunnels' estimates summed, times
    /// [`Session::cap_rtt`]) with a gain of [`COUPLED_GAIN`], so that N tunnels together hold about
    /// what one well-behaved flow would and cannot stack N windows in the bottleneck queue. The
    /// gain lets the rate estimate grow while the queue is empty;
    /// [`crate::Config::tunnel_unsent_bytes`] per active tunnel (together at most
    /// [`UNSENT_ALLOWANCE_MAX_BDP`] of the BDP) leaves room for what waits in the sockets;
    /// [`COUPLED_FLOOR`] per tunnel keeps an idle session from starving its own estimates.
    pub(super) fn coupled_cap(&self) -> u64 {
        let (mut rate, mut active) = (0.0f64, 0u64);
        for tun in self.tunnels.iter().filter(|t| t.is_active()) {
            rate += tun.path.rate();
            active += 1;
        }
        let rtt = self.cap_rtt().as_secs_f64();
        if rtt == 0.0 {
            return u64::MAX;
        }
        let rate = self.aggregate_rate.rate().unwrap_or(rate);
        let bdp = rate * rtt;
        let per_tunnel = u64::from(self.config.tunnel_unsent_bytes);
        let unsent = (per_tunnel.saturating_mul(active) as f64).min(bdp * UNSENT_ALLOWANCE_MAX_BDP);
        ((bdp * self.startup.gain() + unsent) as u64).max(COUPLED_FLOOR * active.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(100);
    const STEP: Duration = Duration::from_millis(10);

    /// Acknowledges `rate` bytes/s in [`STEP`]s from `at` for `steps` steps; returns the end.
    fn feed(
        a: &mut AggregateRate,
        at: Instant,
        steps: u32,
        rate: f64,
        app_limited: bool,
    ) -> Instant {
        let mut now = at;
        for _ in 0..steps {
            now += STEP;
            a.on_ack((rate * STEP.as_secs_f64()) as u64, RTT, app_limited, now);
        }
        now
    }

    #[test]
    fn measures_what_all_tunnels_acknowledge_per_rtt() {
        let mut a = AggregateRate::default();
        let now = feed(&mut a, Instant::now(), 10, 10e6, false);
        assert_eq!(a.rate(), None, "less than a span: no sample yet");
        feed(&mut a, now, 100, 10e6, false);
        let r = a.rate().unwrap();
        assert!((r / 10e6 - 1.0).abs() < 0.02, "{r}");
    }

    #[test]
    fn a_burst_after_a_stall_is_mostly_averaged_out() {
        // One tunnel's hole holds half the data for an RTT, then its ACKs come at once (half
        // an RTT's worth in one step, 5× the path's rate over that step). Spans of two RTTs
        // read at most 1.2× here (every alignment of the stall against the marks is tried).
        for shift in 0..10 {
            let mut a = AggregateRate::default();
            let mut now = feed(&mut a, Instant::now(), 100 + shift, 10e6, false);
            now = feed(&mut a, now, 10, 5e6, false);
            now += STEP;
            a.on_ack(500_000, RTT, false, now);
            feed(&mut a, now, 100, 10e6, false);
            let r = a.rate().unwrap();
            assert!(r <= 12.5e6, "shift {shift}: {r}");
        }
    }

    #[test]
    fn the_bytes_of_a_stall_read_in_one_pass_are_counted_at_the_end_of_the_stall() {
        // Eight tunnels read every step; then the event loop stalls for two RTTs, and one pass
        // reads each tunnel's bytes of the stall at the same instant.
        let mut a = AggregateRate::default();
        let mut now = Instant::now();
        let per_tunnel = |rate: f64, span: Duration| (rate * span.as_secs_f64() / 8.0) as u64;
        for _ in 0..100 {
            now += STEP;
            for _ in 0..8 {
                a.on_ack(per_tunnel(10e6, STEP), RTT, false, now);
            }
        }
        now += RTT * 2;
        for _ in 0..8 {
            a.on_ack(per_tunnel(10e6, RTT * 2), RTT, false, now);
        }
        for _ in 0..100 {
            now += STEP;
            for _ in 0..8 {
                a.on_ack(per_tunnel(10e6, STEP), RTT, false, now);
            }
            let r = a.rate().unwrap();
            assert!(r <= 10.5e6, "{r}");
        }
    }

    #[test]
    fn app_limited_samples_never_lower_it_backlogged_ones_do_once_it_is_old() {
        let mut a = AggregateRate::default();
        let mut now = feed(&mut a, Instant::now(), 100, 10e6, false);
        now = feed(&mut a, now, 200, 1e6, true);
        assert!(a.rate().unwrap() > 9e6, "app-limited: kept");
        feed(&mut a, now, 200, 1e6, false);
        assert!(
            a.rate().unwrap() < 1.1e6,
            "backlogged and the maximum is old: replaced"
        );
    }

    #[test]
    fn the_start_up_lasts_while_the_rate_grows_and_ends_after_three_flat_rounds() {
        let mut s = StartUp::default();
        let mut now = Instant::now();
        // Doubling every round: still in the start-up after 20 rounds.
        for k in 0..20 {
            now += RTT;
            s.on_rate(Some(1e6 * 2f64.powi(k)), RTT, false, now);
        }
        assert_eq!(s.gain(), STARTUP_GAIN);
        // Flat while application-limited: says nothing of the pipe.
        let top = 1e6 * 2f64.powi(19);
        for _ in 0..10 {
            now += RTT;
            s.on_rate(Some(top), RTT, true, now);
        }
        assert_eq!(
            s.gain(),
            STARTUP_GAIN,
            "application-limited rounds do not count"
        );
        // A rise of less than a quarter a round is flat: the third such round ends it.
        for k in 1..=3 {
            now += RTT;
            s.on_rate(Some(top * (1.0 + 0.05 * k as f64)), RTT, false, now);
            assert_eq!(s.gain() == COUPLED_GAIN, k == 3, "round {k}");
        }
        assert_eq!(s.gain(), COUPLED_GAIN);
        // Over is over: growth later does not bring it back.
        now += RTT;
        s.on_rate(Some(top * 10.0), RTT, false, now);
        assert_eq!(s.gain(), COUPLED_GAIN);
    }

    #[test]
    fn acks_within_a_round_do_not_count_as_rounds() {
        let mut s = StartUp::default();
        let mut now = Instant::now();
        for _ in 0..100 {
            now += RTT / 10;
            s.on_rate(Some(1e6), RTT, false, now);
        }
        // 10 RTTs of flat rate: ended, after three of them, not after three ACKs.
        assert_eq!(s.gain(), COUPLED_GAIN);
        let mut s = StartUp::default();
        for _ in 0..30 {
            now += RTT / 10;
            s.on_rate(Some(1e6), RTT, false, now);
        }
        assert_eq!(s.gain(), STARTUP_GAIN, "under three rounds");
        s.end();
        assert_eq!(s.gain(), COUPLED_GAIN, "a queue ends it");
    }

    #[test]
    fn a_queue_of_an_eighth_of_the_rtt_within_4_and_16_ms_ends_the_start_up() {
        let ms = Duration::from_millis;
        assert_eq!(StartUp::exit_queue(ms(10)), ms(4), "at least 4 ms");
        assert_eq!(StartUp::exit_queue(ms(20)), ms(4));
        assert_eq!(StartUp::exit_queue(ms(100)), Duration::from_micros(12_500));
        assert_eq!(StartUp::exit_queue(ms(250)), ms(16), "at most 16 ms");
        // Under the cap's own threshold (a fifth of the RTT) from 32 ms on.
        for rtt in [ms(32), ms(100), ms(250), ms(600)] {
            assert!(
                StartUp::exit_queue(rtt) < rtt.mul_f64(ENGAGE_ABOVE),
                "{rtt:?}"
            );
        }
    }

    #[test]
    fn keeps_a_bounded_number_of_marks_whatever_the_rtt_does() {
        let mut a = AggregateRate::default();
        let mut now = Instant::now();
        for k in 0..10_000u64 {
            now += Duration::from_micros(100 + k % 7 * 1_000);
            let rtt = Duration::from_micros(1 + (k * 7919) % 400_000);
            a.on_ack(1_000, rtt, k % 3 == 0, now);
            assert!(a.marks.len() <= AGGREGATE_MARKS);
        }
        assert!(a.rate().is_some());
    }
}
