//! Head-of-line relief (issue 13 item 3, docs/PROTOCOL.md §6.2): a receiver whose stream has
//! waited too long for a hole tells the sender (HOL_REPORT); the sender re-sends the frames
//! covering the hole on the tunnel expected to deliver first.
//!
//! Owns: both halves of that exchange. Receiver: when a stream's hole is old enough to report
//! (one timer per stream with a hole, in a heap), the bounded queue of reports to send.
//! Sender: checking a peer's report against what it really sent and still retains, the relief
//! budget, the choice of tunnel, and the bounded queue of relief copies per tunnel. Must not
//! touch: acknowledgement or retention (`retransmit`: a relief copy is retained and
//! acknowledged like any frame), the reorder buffer's contents, or tunnel states.
//!
//! Why receiver-driven: a sender-side guess (copying a stalled tunnel's oldest frames) fired on
//! every slow tunnel and measured 0.83× (docs/BENCHMARKS.md). Only the receiver knows that a
//! stream is actually waiting; it reports a hole only after it has outlived a normal TCP
//! recovery ([`WAIT_SRTTS`] × the largest smoothed RTT), so relief fires on RTO-bound and
//! repeated-loss recoveries, not on every fast retransmit.
//!
//! Bounds (a hostile peer included): a report names at most [`MAX_SPAN`] bytes, each frame is
//! relieved at most once (`Stream::relieved_to`), only the first [`SCAN_PER_TUNNEL`] retained
//! frames of each tunnel are looked at, and everything — each report's scan too
//! ([`SCAN_COST`]) — is paid from a credit that grows by 1/[`BUDGET_DIVISOR`] of the stream
//! bytes this end sends, capped at [`CREDIT_CAP`]. The queues are capped ([`MAX_REPORTS`],
//! [`MAX_QUEUED`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::retransmit::Reliable;
use super::{Session, StreamId};
use crate::error::SessionError;
use crate::handshake::CAP_HOL_REPORT;
use crate::wire::Frame;

/// A hole is reported once it has been open this many times the largest smoothed RTT of the
/// active tunnels (a fast retransmit repairs a loss in about one).
pub const WAIT_SRTTS: f64 = 1.25;
/// Least wait before a hole is reported.
pub const MIN_WAIT: Duration = Duration::from_millis(10);
/// Most bytes of the stream past the hole one report can have re-sent.
pub const MAX_SPAN: u64 = 8 << 20;
/// Retained frames looked at per tunnel for one report (the frames a stalled tunnel holds up
/// are its oldest).
pub const SCAN_PER_TUNNEL: usize = 1024;
/// Relief may re-send at most 1/this of the stream bytes sent.
pub const BUDGET_DIVISOR: u64 = 8;
/// Most relief credit saved up, bytes.
pub const CREDIT_CAP: u64 = 4 << 20;
/// Credit each report's scan costs, whatever it finds.
pub const SCAN_COST: u64 = 16 * 1024;
/// Reports waiting to be sent; more are dropped (and counted).
pub const MAX_REPORTS: usize = 64;
/// Relief copies waiting for their tunnel; the oldest is dropped beyond this.
pub const MAX_QUEUED: usize = 256;

/// What relief did, for stats and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReliefStats {
    /// HOL_REPORT frames sent (this end as receiver).
    pub reports_sent: u64,
    /// Reports not queued because 64 were waiting (`MAX_REPORTS`).
    pub reports_dropped: u64,
    /// HOL_REPORT frames received (this end as sender).
    pub reports_received: u64,
    /// Received reports that named nothing this end could re-send (unknown stream, not sent,
    /// already relieved, nothing retained, no other tunnel, or no credit).
    pub reports_ignored: u64,
    /// Frames re-sent as relief.
    pub frames_resent: u64,
    /// Encoded bytes re-sent as relief.
    pub bytes_resent: u64,
    /// Frames copied off a tunnel whose congestion window collapsed (`handoff`; sent whether
    /// or not relief is on).
    pub handoff_frames: u64,
    /// Encoded bytes of those copies.
    pub handoff_bytes: u64,
}

impl ReliefStats {
    /// Every counter with its metric label (`mtcpd_hol_relief_total{kind=...}`), in order.
    pub fn by_kind(&self) -> [(&'static str, u64); 8] {
        [
            ("reports_sent", self.reports_sent),
            ("reports_dropped", self.reports_dropped),
            ("reports_received", self.reports_received),
            ("reports_ignored", self.reports_ignored),
            ("frames_resent", self.frames_resent),
            ("bytes_resent", self.bytes_resent),
            ("handoff_frames", self.handoff_frames),
            ("handoff_bytes", self.handoff_bytes),
        ]
    }

    /// Adds `other` into `self` (a runtime's totals over its sessions).
    pub fn add(&mut self, other: &ReliefStats) {
        self.reports_sent += other.reports_sent;
        self.reports_dropped += other.reports_dropped;
        self.reports_received += other.reports_received;
        self.reports_ignored += other.reports_ignored;
        self.frames_resent += other.frames_resent;
        self.bytes_resent += other.bytes_resent;
        self.handoff_frames += other.handoff_frames;
        self.handoff_bytes += other.handoff_bytes;
    }
}

/// The session's relief state, both halves.
#[derive(Debug, Default)]
pub(super) struct Relief {
    /// Receiver: when to look again at a stream's hole (one entry per stream, `gap_armed`).
    timers: BinaryHeap<Reverse<(Instant, StreamId)>>,
    /// Receiver: (stream, offset, length) to send.
    reports: VecDeque<(StreamId, u64, u64)>,
    /// Sender: copies to send, each with the tunnel chosen for it; `true`: a hand-off copy
    /// (`handoff`), not relief.
    queue: VecDeque<(usize, Reliable, bool)>,
    credit: u64,
    /// `send_data_total` already turned into credit.
    credited_to: u64,
    pub(super) stats: ReliefStats,
}

impl Session {
    /// Whether both ends announced relief.
    pub(super) fn relief_on(&self) -> bool {
        self.config.hol_relief && self.peer_capabilities & CAP_HOL_REPORT != 0
    }

    /// How long a hole may stay open before it is reported.
    fn relief_wait(&self) -> Duration {
        let srtt = self
            .tunnels
            .iter()
            .filter(|t| t.is_active())
            .map(|t| t.path.srtt())
            .max()
            .unwrap_or_default();
        srtt.mul_f64(WAIT_SRTTS).max(MIN_WAIT)
    }

    /// Receiver: DATA arrived on `stream`; if it left a hole, start timing it.
    pub(super) fn watch_gap(&mut self, now: Instant, stream: StreamId) {
        if !self.relief_on() {
            return;
        }
        let wait = self.relief_wait();
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.gap_armed {
            return;
        }
        let Some((offset, _)) = s.recv.first_gap() else {
            return;
        };
        s.gap_armed = true;
        s.gap_at = offset;
        self.relief.timers.push(Reverse((now + wait, stream)));
    }

    /// Receiver: the next instant a hole is due to be looked at again.
    pub(super) fn relief_deadline(&self) -> Option<Instant> {
        self.relief.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Receiver: holes whose wait is over are reported if they are still the same hole; every
    /// stream still holding a hole is looked at again one wait later.
    pub(super) fn relief_timeout(&mut self, now: Instant) {
        let wait = self.relief_wait();
        while let Some(&Reverse((at, sid))) = self.relief.timers.peek() {
            if at > now {
                break;
            }
            self.relief.timers.pop();
            let Some(s) = self.streams.get_mut(&sid) else {
                continue;
            };
            s.gap_armed = false;
            if s.peer_reset.is_some() || s.local_reset.is_some() {
                continue;
            }
            let Some((offset, _)) = s.recv.first_gap() else {
                continue;
            };
            // Everything the receiver holds beyond the hole waits for it: the sender re-sends
            // what of that went on the hole's tunnel (in order behind it there).
            let length = s.recv_highest - offset;
            if offset == s.gap_at {
                if self.relief.reports.len() < MAX_REPORTS {
                    self.relief.reports.push_back((sid, offset, length));
                } else {
                    self.relief.stats.reports_dropped += 1;
                }
            }
            s.gap_at = offset;
            s.gap_armed = true;
            self.relief.timers.push(Reverse((now + wait, sid)));
        }
    }

    /// Receiver: whether reports wait to be sent on tunnel `t`.
    pub(super) fn has_reports_for(&self, t: usize) -> bool {
        !self.relief.reports.is_empty() && self.report_tunnel() == Some(t)
    }

    /// Receiver: the tunnel reports go on: the active one that delivered last (a tunnel stuck
    /// in recovery may be stuck both ways).
    fn report_tunnel(&self) -> Option<usize> {
        self.tunnels
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_active() && t.close_pending.is_none())
            .max_by_key(|(i, t)| (t.last_recv, Reverse(*i)))
            .map(|(i, _)| i)
    }

    /// Receiver: encodes the waiting reports onto `out` if `t` is the tunnel for them; the
    /// bytes written.
    pub(super) fn emit_reports(&mut self, t: usize, out: &mut Vec<Bytes>) -> usize {
        if !self.has_reports_for(t) {
            return 0;
        }
        let mut written = 0;
        while let Some((stream, offset, length)) = self.relief.reports.pop_front() {
            let f = Frame::HolReport {
                stream,
                offset,
                length,
            };
            written += f.encoded_len();
            f.encode(&mut self.scratch, usize::MAX, out);
            self.relief.stats.reports_sent += 1;
        }
        written
    }

    /// Sender: the peer's HOL_REPORT, received on tunnel `t`. Re-sends, once each, the frames
    /// of `stream` covering the hole that are still retained, on the best tunnel other than
    /// the one each went on, as far as the credit allows. Anything it cannot use is ignored.
    pub(super) fn on_hol_report(
        &mut self,
        t: usize,
        stream: StreamId,
        offset: u64,
        length: u64,
    ) -> Result<(), SessionError> {
        if !self.config.hol_relief {
            return Err(SessionError::Protocol(format!(
                "HOL_REPORT on tunnel {t}, a capability this end did not announce"
            )));
        }
        self.relief.stats.reports_received += 1;
        if !self.relieve(stream, offset, length) {
            self.relief.stats.reports_ignored += 1;
        }
        Ok(())
    }

    /// Queues relief copies for a report; whether any was queued.
    fn relieve(&mut self, stream: StreamId, offset: u64, length: u64) -> bool {
        let Some(s) = self.streams.get(&stream) else {
            return false;
        };
        if s.reset_sent || offset >= s.send_offset {
            return false;
        }
        let start = offset.max(s.relieved_to);
        let end = offset
            .saturating_add(length.clamp(1, MAX_SPAN))
            .min(s.send_offset);
        if start >= end {
            return false;
        }
        // Credit: a share of what was sent since last time, saved up to a cap.
        let earned = (self.send_data_total - self.relief.credited_to) / BUDGET_DIVISOR;
        self.relief.credited_to += earned * BUDGET_DIVISOR;
        self.relief.credit = (self.relief.credit + earned).min(CREDIT_CAP);
        if self.relief.credit < SCAN_COST {
            return false;
        }
        self.relief.credit -= SCAN_COST;
        // The tunnel holding the frame that covers the hole's first byte is the one in
        // recovery: the stream's later frames on it wait in order behind it, so they are
        // re-sent too (those on other tunnels are not: they are arriving).
        let data_of = |r: &Reliable| match r {
            Reliable::Data {
                stream: id,
                offset: fo,
                payload,
                ..
            } if *id == stream => Some((*fo, fo + payload.len() as u64)),
            _ => None,
        };
        let covering = self.tunnels.iter().enumerate().find_map(|(ti, tun)| {
            tun.is_active()
                .then(|| {
                    tun.retained
                        .iter()
                        .take(SCAN_PER_TUNNEL)
                        .position(|r| {
                            data_of(&r.frame).is_some_and(|(fo, fe)| fo < end && fe > start)
                        })
                        .map(|i| (ti, i))
                })
                .flatten()
        });
        let Some((from, first)) = covering else {
            return false;
        };
        let Some(to) = self.relief_target(from) else {
            return false;
        };
        let mut found: Vec<(u64, Reliable, u64)> = Vec::new();
        for r in self.tunnels[from]
            .retained
            .iter()
            .skip(first)
            .take(SCAN_PER_TUNNEL - first)
        {
            if let Some((fo, fe)) = data_of(&r.frame)
                && fo < end
                && fe > start
            {
                found.push((fe, r.frame.clone(), r.wire_len));
            }
        }
        let mut queued = false;
        let mut relieved_to = None;
        for (fe, frame, len) in found {
            if self.relief.credit < len {
                break;
            }
            self.relief.credit -= len;
            self.queue_copy(to, frame, false);
            relieved_to = Some(fe);
            queued = true;
        }
        if let (Some(to), Some(s)) = (relieved_to, self.streams.get_mut(&stream)) {
            s.relieved_to = s.relieved_to.max(to);
        }
        queued
    }

    /// Queues a copy of `frame` for tunnel `to` (the oldest copy is dropped beyond
    /// [`MAX_QUEUED`]); `handoff`: a hand-off copy, counted apart from relief's.
    fn queue_copy(&mut self, to: usize, frame: Reliable, handoff: bool) {
        if self.relief.queue.len() >= MAX_QUEUED {
            self.relief.queue.pop_front();
        }
        self.relief.queue.push_back((to, frame, handoff));
    }

    /// Sender (`handoff`): queues a copy of `frame` for tunnel `to`.
    pub(super) fn queue_handoff_copy(&mut self, to: usize, frame: Reliable) {
        self.queue_copy(to, frame, true);
    }

    /// The active tunnel other than `from` expected to deliver a frame first: smoothed RTT
    /// plus the time to drain what it already has unacknowledged. Not one whose congestion
    /// window collapsed (`handoff`), nor one the adaptive pool is retiring.
    pub(super) fn relief_target(&self, from: usize) -> Option<usize> {
        let expected = |t: &super::tunnels::Tunnel| {
            let rate = t.path.rate().max(1.0);
            t.path.srtt().as_secs_f64() + t.unacked_bytes as f64 / rate
        };
        self.tunnels
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                *i != from
                    && t.is_active()
                    && t.close_pending.is_none()
                    && !t.cwnd_collapsed
                    && !t.draining
            })
            .min_by(|a, b| expected(a.1).total_cmp(&expected(b.1)))
            .map(|(i, _)| i)
    }

    /// Sender: forgets the relief and hand-off copies queued for tunnel `t`, which is retiring
    /// (the frames they copy stay retained where they were sent).
    pub(super) fn drop_relief_for(&mut self, t: usize) {
        self.relief.queue.retain(|(to, ..)| *to != t);
    }

    /// Sender: whether a relief copy waits for tunnel `t`.
    pub(super) fn has_relief_for(&self, t: usize) -> bool {
        self.relief.queue.iter().any(|(to, ..)| *to == t)
    }

    /// Sender: takes the next relief copy for tunnel `t` that is still worth sending, as the
    /// frame to emit; its stream counts one more frame to be acknowledged.
    pub(super) fn take_relief(&mut self, t: usize) -> Option<(Reliable, Frame)> {
        while let Some(i) = self.relief.queue.iter().position(|(to, ..)| *to == t) {
            let (_, r, handoff) = self.relief.queue.remove(i)?;
            let Some(frame) = self.materialize(&r) else {
                continue;
            };
            if let Some(sid) = r.counted_stream()
                && let Some(s) = self.streams.get_mut(&sid)
            {
                s.unacked_frames += 1;
            }
            let stats = &mut self.relief.stats;
            if handoff {
                stats.handoff_frames += 1;
                stats.handoff_bytes += frame.encoded_len() as u64;
            } else {
                stats.frames_resent += 1;
                stats.bytes_resent += frame.encoded_len() as u64;
            }
            return Some((r, frame));
        }
        None
    }

    /// What relief did so far.
    pub fn relief_stats(&self) -> ReliefStats {
        self.relief.stats
    }
}
