//! Hand-off: the frames waiting in a tunnel whose congestion window collapsed go out again on
//! another tunnel where the stall would use up the peer's credit, and the scheduler leaves
//! that tunnel alone until its window reopens (but for a PING once nothing of it is on the
//! path: without traffic bbr never leaves ProbeRTT).
//!
//! Owns: reading a collapsed window from the kernel's reports (`Tunnel::cwnd_collapsed`),
//! choosing the frames to copy and asking for the collapsed tunnel's PING (`ping_due`; the
//! PING itself is `transmit`'s). Must not touch: the copies'
//! queue, their tunnel and their accounting (`relief`: a copy is retained and acknowledged
//! like any frame), or which tunnel new frames go on (`transmit` only reads the flag).
//!
//! Why. A window of a few segments does not send for a long while, and the peer reads each
//! stream in order, so every frame still in that tunnel's socket holds up everything the other
//! tunnels deliver after it. Two things collapse it. Bbr's ProbeRTT: every 10 s without a lower
//! RTT sample, the window drops to four segments for 200 ms and a round trip after its bytes in
//! flight drained; the coupled cap keeps a standing queue, so no tunnel sees a lower RTT and
//! each enters ProbeRTT 10 s after its first samples (seen with `ss` on the emulator: at
//! 250 ms one to five tunnels at a time from 13 s on, with up to 1.7 MB unsent among them; at
//! 100 ms all eight together, which nothing here can help: there is no open window to hand
//! to). And a retransmission timeout, after which the window restarts from one segment. What
//! the tunnel had in flight arrives as usual; only what it had not sent yet is copied. The
//! peer keeps the first copy of each byte and drops the other (a relief copy is the same), so
//! nothing arrives twice.
//!
//! When it pays. A copy takes the place of other bytes on the path, and the original still
//! leaves once the window reopens, so a copy costs the path its length; it pays only where the
//! stall would otherwise run the peer's credit out and stop every tunnel
//! ([`Session::stall_outruns_credit`]). At 250 ms and 1 Gbit/s a ProbeRTT stall needs more
//! than the default window's half (without copies the sender waited for credit there); under
//! a 20 Mbit/s per-flow cap it needs a sixth of it, and every copy took the place of another
//! tunnel's own capped bytes (mtcpd-8 146.6 Mbit/s against 148.6 without those copies, on the
//! emulator).
//!
//! Not a guess at a slow tunnel (the sender-side relief that copied a stalled tunnel's oldest
//! frames measured 0.83×: `relief`): the kernel's own window says the bytes cannot leave.

use super::Session;
use super::retransmit::Reliable;
use crate::path::TcpReport;
use std::time::Duration;

/// A congestion window at or under this many bytes may have collapsed: four segments of an
/// Ethernet MSS, bbr's ProbeRTT window (a window after a retransmission timeout is one).
pub(super) const COLLAPSED_CWND: u64 = 4 * 1500;
/// ... if it fell there from at least this many times as large since the last report. A
/// window that is small because the path's BDP is (a slow path, or Reno-like halvings under
/// random loss, which at most halve it per report) is no collapse: its bytes do leave.
pub(super) const COLLAPSE_FACTOR: u64 = 8;
/// Most bytes one collapse copies (a tunnel's socket holds 128 KiB unsent by default, 4 ms of
/// its rate if that is more, `unsent`, and the driver's queue adds a little: this bounds the
/// cost of a faster tunnel or a larger setting, whose excess is not copied).
pub(super) const HANDOFF_MAX: u64 = 4 << 20;
/// How long bbr holds its ProbeRTT window once the bytes in flight drained (Linux
/// `bbr_probe_rtt_mode_ms`).
const PROBE_RTT_HOLD: Duration = Duration::from_millis(200);
/// How many of the collapsed tunnel's RTTs a stall takes besides [`PROBE_RTT_HOLD`]: one to
/// drain its bytes in flight, the round trip bbr adds after the hold, the unsent bytes' way
/// to the peer and the credit's way back.
const STALL_RTTS: u32 = 4;

impl Session {
    /// Tunnel `t`'s kernel report (the window of the report before it: `before`): notes
    /// whether its window collapsed, and when it just did, copies the frames it has not sent
    /// yet onto the tunnel expected to deliver first.
    pub(super) fn on_window_report(&mut self, t: usize, report: &TcpReport, before: u64) {
        let Some(tun) = self.tunnels.get_mut(t) else {
            return;
        };
        let cwnd = report.cwnd_bytes;
        let was = tun.cwnd_collapsed;
        let small = cwnd > 0 && cwnd <= COLLAPSED_CWND;
        let collapsed = small && (was || before >= cwnd.saturating_mul(COLLAPSE_FACTOR));
        tun.cwnd_collapsed = collapsed;
        // Sidelined (another window is open) with nothing on its path, the tunnel sends
        // nothing, and its congestion control never sees the ACK or the restart after idle on
        // which bbr ends ProbeRTT: it stays at four segments until the keepalive (on the
        // emulator at 250 ms, three of eight tunnels for the last 4 s of a run). A PING gives
        // it both. Only when sidelined: a tunnel that is not takes frames as usual.
        if collapsed && report.held_bytes == 0 && self.any_window_open() {
            let tun = &mut self.tunnels[t];
            tun.ping_due |= !tun.ping_outstanding;
        }
        if !collapsed || was || report.unsent_bytes == 0 {
            return;
        }
        if !self.stall_outruns_credit(t) {
            return;
        }
        let Some(to) = self.relief_target(t) else {
            return;
        };
        // The socket sends in order: its unsent bytes are the newest frames framed on it.
        let want = report.unsent_bytes.min(HANDOFF_MAX);
        let mut covered = 0;
        let mut copies = Vec::new();
        for r in self.tunnels[t].retained.iter().rev() {
            if covered >= want {
                break;
            }
            covered += r.wire_len;
            if matches!(r.frame, Reliable::Data { .. }) {
                copies.push(r.frame.clone());
            }
        }
        for frame in copies.into_iter().rev() {
            self.queue_handoff_copy(to, frame);
        }
    }

    /// Whether the stall a collapse of tunnel `t` causes may use up the peer's credit: the
    /// bytes the session delivers meanwhile ([`STALL_RTTS`] of the tunnel's RTTs and bbr's
    /// [`PROBE_RTT_HOLD`], at the session's delivery rate) exceed half the smaller of the
    /// peer's stream and session windows. Half: the peer extends credit only once half a
    /// window was read (docs/PROTOCOL.md §5.1), and bytes on the path take some of it. The
    /// initial windows, not what auto-tuning grew them to: it errs towards copying. It says
    /// yes in the session's start-up, whose rate grows every RTT so that the present one
    /// understates what a stall would need, and before the rate is measured or the peer's
    /// windows are known.
    fn stall_outruns_credit(&self, t: usize) -> bool {
        let (Some(rate), Some(peer)) = (self.aggregate_rate.rate(), self.peer_params) else {
            return true;
        };
        if !self.startup.is_over() {
            return true;
        }
        let rtt = self.tunnels[t].path.base_rtt();
        let stall = rtt * STALL_RTTS + PROBE_RTT_HOLD;
        let credit = peer.stream_window.min(peer.session_window) / 2;
        rate * stall.as_secs_f64() > credit as f64
    }

    /// Whether some active tunnel's window is open: only then does the scheduler sideline
    /// the collapsed ones (with every window collapsed, frames still go somewhere).
    pub(super) fn any_window_open(&self) -> bool {
        self.tunnels
            .iter()
            .any(|x| x.is_active() && !x.cwnd_collapsed && !x.draining)
    }
}
