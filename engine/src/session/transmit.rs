//! Output: the bytes to write to each tunnel, and the choice of tunnel for every reliable frame.
//!
//! Owns: [`Session::poll_transmit`] and [`Session::wants_transmit`], the order of output
//! (handshake, CLOSE, unreliable control, resends, control, stream data), the scheduler's view of
//! the tunnels, cutting stream data to credit and frame size, and emitting (encoding and
//! retaining) frames. Must not touch: what is acknowledged (`retransmit`) or when window updates
//! are due (`flow_control`); it only sends what they queued.

use std::time::Instant;

use bytes::Bytes;

use super::retransmit::{Reliable, Retained};
use super::tunnels::TunnelState;
use super::{Event, Session};
use crate::scheduler::PathView;
use crate::wire::{self, FRAME_HEADER_LEN, Frame};

impl Session {
    /// Whether tunnel `t` has bytes to send now (a hint for drivers that poll lazily).
    pub fn wants_transmit(&self, t: usize) -> bool {
        let Some(tun) = self.tunnels.get(t) else {
            return false;
        };
        if !tun.handshake_out.is_empty() || tun.close_pending.is_some() {
            return true;
        }
        if !tun.is_active() || self.closed.is_some() {
            return false;
        }
        self.drain_news(t).is_some()
            || tun.recv_reliable > tun.ack_sent
            || tun.pong_due.is_some()
            || tun.ping_due
            || self.has_reports_for(t)
            || self.has_relief_for(t)
            || !self.retransmit.is_empty()
            || !self.control.is_empty()
            || (!self.ready.is_empty() && self.may_frame_data(t))
    }

    /// Appends to `out` the bytes to write to tunnel `t` now, about `max_bytes` of them (a frame
    /// may overshoot); returns how many were appended. Frames are committed to the tunnel when
    /// returned: the driver must write all of them, in order.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        t: usize,
        max_bytes: usize,
        out: &mut Vec<Bytes>,
    ) -> usize {
        let Some(tun) = self.tunnels.get_mut(t) else {
            return 0;
        };
        let mut written = 0;
        if !tun.handshake_out.is_empty() {
            let hs = tun.handshake_out.split().freeze();
            written += hs.len();
            out.push(hs);
        }
        if let Some((code, reason)) = tun.close_pending.take() {
            let f = Frame::Close { code, reason };
            written += f.encoded_len();
            f.encode(&mut self.scratch, usize::MAX, out);
            tun.state = TunnelState::Down { redial_at: None };
            return written;
        }
        if !tun.is_active() || self.closed.is_some() {
            return written;
        }
        let copy_below = self.config.copy_threshold;
        let ping_token = self.ping_token(now);
        let drain_news = self.take_drain_news(t, ping_token);
        let tun = &mut self.tunnels[t];
        // Unreliable control first: acknowledgements free the peer's memory.
        if let Some(draining) = drain_news {
            let f = Frame::TunnelDrain { draining };
            written += f.encoded_len();
            f.encode(&mut self.scratch, copy_below, out);
        }
        if tun.recv_reliable > tun.ack_sent {
            tun.ack_sent = tun.recv_reliable;
            let f = Frame::Ack {
                frames: tun.recv_reliable,
            };
            written += f.encoded_len();
            f.encode(&mut self.scratch, copy_below, out);
        }
        if let Some(token) = tun.pong_due.take() {
            let f = Frame::Pong { token };
            written += f.encoded_len();
            f.encode(&mut self.scratch, copy_below, out);
        }
        if tun.ping_due {
            tun.ping_due = false;
            tun.ping_outstanding = true;
            let f = Frame::Ping { token: ping_token };
            written += f.encoded_len();
            f.encode(&mut self.scratch, copy_below, out);
        }
        written += self.emit_reports(t, out);
        self.build_views(t);
        while written < max_bytes {
            let Some(sent) = self.send_one_reliable(now, t, out) else {
                break;
            };
            written += sent;
        }
        self.tunnels[t].saturated = written >= max_bytes;
        written
    }

    /// The scheduler's view of every tunnel, as seen from a transmit on `polled`.
    ///
    /// A tunnel that joined the session in full flight (the adaptive pool grew, or its slot
    /// first connected late) counts at what its congestion window sends per RTT until it is
    /// measured itself, not at the optimistic initial rate: it is in slow start, and the assumed
    /// rate drew onto it every frame the measured tunnels could not deliver at once, frames that
    /// then waited in its socket for RTTs while the receiver's stream waited for them. At the
    /// session's start every tunnel is alike, and the assumption spreads the first bytes
    /// fastest. (A slot that reconnects keeps its old estimate: not covered.)
    fn build_views(&mut self, polled: usize) {
        self.views.clear();
        let sideline_collapsed = self.any_window_open();
        for (i, tun) in self.tunnels.iter().enumerate() {
            let full_now = tun.saturated && i != polled;
            let (rate, rtt) = tun
                .path
                .slow_start_view()
                .filter(|_| tun.joined_in_flight)
                .unwrap_or_else(|| (tun.path.rate(), tun.path.scheduling_rtt()));
            self.views.push(PathView {
                usable: tun.is_active()
                    && tun.close_pending.is_none()
                    && !tun.draining
                    && !(tun.cwnd_collapsed && sideline_collapsed),
                unacked_bytes: tun.unacked_bytes,
                rate,
                rtt,
                waiting_bytes: if full_now { self.backlog } else { 0 },
            });
        }
    }

    /// Sends the next reliable frame on `t` if the scheduler picks `t` for it. `None` when there
    /// is nothing to send or it belongs on another tunnel.
    fn send_one_reliable(&mut self, now: Instant, t: usize, out: &mut Vec<Bytes>) -> Option<usize> {
        // Relief first (the peer's stream is stalled on it, and this tunnel was chosen for
        // it), then resends (they are the oldest), then control, then new stream data.
        if let Some((r, frame)) = self.take_relief(t) {
            return Some(self.emit(now, t, r, frame, out));
        }
        while let Some((r, _)) = self.retransmit.front() {
            match self.materialize(r) {
                Some(frame) => {
                    if !self.scheduled_here(t, frame.encoded_len()) {
                        return None;
                    }
                    let r = self.pop_resend()?;
                    return Some(self.emit(now, t, r, frame, out));
                }
                None => {
                    self.pop_resend();
                }
            }
        }
        while let Some(r) = self.control.front() {
            match self.materialize(r) {
                Some(frame) => {
                    if !self.scheduled_here(t, frame.encoded_len()) {
                        return None;
                    }
                    let r = self.control.pop_front()?;
                    self.clear_queued_flag(&r);
                    return Some(self.emit(now, t, r, frame, out));
                }
                None => {
                    if let Some(r) = self.control.pop_front() {
                        self.clear_queued_flag(&r);
                    }
                }
            }
        }
        self.send_stream_data(now, t, out)
    }

    /// Whether the scheduler puts a frame of `frame_len` bytes on tunnel `t` now.
    fn scheduled_here(&mut self, t: usize, frame_len: usize) -> bool {
        self.scheduler.accept(t, &self.views, frame_len)
    }

    /// Encodes a reliable frame onto tunnel `t` and retains it until acknowledged.
    fn emit(
        &mut self,
        now: Instant,
        t: usize,
        r: Reliable,
        frame: Frame,
        out: &mut Vec<Bytes>,
    ) -> usize {
        let len = frame.encoded_len();
        frame.encode(&mut self.scratch, self.config.copy_threshold, out);
        let tun = &mut self.tunnels[t];
        tun.unacked_bytes += len as u64;
        tun.sent_reliable += 1;
        tun.retained.push_back(Retained {
            frame: r,
            wire_len: len as u64,
            sent_at: now,
            delivered_at_send: tun.delivered,
            app_limited: !tun.saturated,
            session_app_limited: self.backlog == 0,
        });
        self.views[t].unacked_bytes += len as u64;
        self.scheduler.on_sent(t);
        if self.backlog == 0 {
            self.app_limited_at = Some(now);
        }
        len
    }

    /// Sends the next piece of stream data on `t`, as far as credit, frame size and the
    /// scheduler allow. `None` when nothing goes out here now.
    fn send_stream_data(&mut self, now: Instant, t: usize, out: &mut Vec<Bytes>) -> Option<usize> {
        if !self.may_frame_data(t) {
            // Held for resend up to the cap: new data waits for ACKs (like quinn's send window).
            return None;
        }
        let payload_limit = self
            .config
            .payload_limit(self.peer_params.map_or(0, |p| p.max_frame_body));
        while let Some(&id) = self.ready.front() {
            let session_credit = self.peer_max_data.saturating_sub(self.send_data_total);
            let Some(s) = self.streams.get_mut(&id) else {
                self.ready.pop_front();
                continue;
            };
            if !s.has_sendable() {
                s.in_ready = false;
                self.ready.pop_front();
                continue;
            }
            let stream_credit = s.send_max.saturating_sub(s.send_offset);
            let front_len = s.send_queue.front().map_or(0, Bytes::len);
            let n = front_len
                .min(payload_limit)
                .min(stream_credit.min(usize::MAX as u64) as usize)
                .min(session_credit.min(usize::MAX as u64) as usize);
            let fin_only = s.send_queued == 0;
            if n == 0 && !fin_only {
                if stream_credit == 0 {
                    // Waits for a STREAM_WINDOW, which puts it back.
                    s.in_ready = false;
                    self.window_stats.stream_credit_waits += 1;
                    self.ready.pop_front();
                    continue;
                }
                // Out of session credit: everything waits for a SESSION_WINDOW.
                return None;
            }
            let frame_len = FRAME_HEADER_LEN + wire::DATA_FIXED_LEN + n;
            if !self.scheduled_here(t, frame_len) {
                return None;
            }
            let s = self.streams.get_mut(&id)?;
            let payload = if n == 0 {
                Bytes::new()
            } else {
                let front = s.send_queue.front_mut()?;
                if front.len() == n {
                    s.send_queue.pop_front()?
                } else {
                    front.split_to(n)
                }
            };
            s.send_queued -= n;
            self.backlog -= n as u64;
            let fin = s.fin_requested && s.send_queued == 0;
            let offset = s.send_offset;
            s.send_offset += n as u64;
            s.fin_sent |= fin;
            s.unacked_frames += 1;
            self.send_data_total += n as u64;
            let mut writable = false;
            if s.write_blocked && s.send_queued <= self.config.stream_send_buffer / 2 {
                s.write_blocked = false;
                writable = true;
            }
            self.ready.pop_front();
            if s.has_sendable() {
                self.ready.push_back(id);
            } else {
                s.in_ready = false;
            }
            if writable {
                self.events.push_back(Event::StreamWritable { stream: id });
            }
            let frame = Frame::Data {
                stream: id,
                offset,
                fin,
                payload: payload.clone(),
            };
            let r = Reliable::Data {
                stream: id,
                offset,
                fin,
                payload,
            };
            return Some(self.emit(now, t, r, frame, out));
        }
        None
    }
}
