//! Reliability: every reliable frame is retained per tunnel until that tunnel's peer
//! acknowledges it (by count: TCP delivers in order, so "the first N frames" is exact); when a
//! tunnel dies, its unacknowledged frames are sent again on the others.
//!
//! Owns: [`Reliable`] (what is remembered of a frame, enough to rebuild it on any tunnel),
//! [`Retained`], ACK processing (with the RTT and delivery-rate samples it yields), the resend
//! queue, and rebuilding a remembered frame with current values. Must not touch: which tunnel a
//! frame goes on (`transmit`) or tunnel states (`tunnels`).

use std::time::Instant;

use bytes::Bytes;

use super::{Session, StreamId};
use crate::error::SessionError;
use crate::wire::Frame;

/// A reliable frame as the session remembers it: enough to send it again, on any tunnel.
#[derive(Debug, Clone)]
pub(super) enum Reliable {
    Data {
        stream: StreamId,
        offset: u64,
        fin: bool,
        payload: Bytes,
    },
    Open {
        stream: StreamId,
    },
    Reset {
        stream: StreamId,
        final_offset: u64,
        code: u32,
    },
    StreamWindow {
        stream: StreamId,
    },
    SessionWindow,
    MaxStreams,
    GoAway {
        code: u32,
    },
    /// Client: its exposed services, sent as the current set.
    Expose,
}

impl Reliable {
    /// The stream whose completion waits for this frame's acknowledgement.
    pub(super) fn counted_stream(&self) -> Option<StreamId> {
        match self {
            Reliable::Data { stream, .. } | Reliable::Open { stream } => Some(*stream),
            _ => None,
        }
    }
}

/// A reliable frame sent on a tunnel and not yet acknowledged there.
#[derive(Debug)]
pub(super) struct Retained {
    pub(super) frame: Reliable,
    pub(super) wire_len: u64,
    pub(super) sent_at: Instant,
    /// The tunnel's delivered bytes when this frame was sent (for the delivery-rate sample).
    pub(super) delivered_at_send: u64,
    /// The tunnel was not being kept full when this frame was sent.
    pub(super) app_limited: bool,
    /// The session had no stream data left to frame when this frame was sent.
    pub(super) session_app_limited: bool,
}

impl Session {
    /// The peer's ACK on tunnel `t`: the first `frames` reliable frames sent on this connection
    /// arrived. Frees them, samples RTT and delivery rate, and finishes streams waiting on them.
    pub(super) fn on_ack(
        &mut self,
        now: Instant,
        t: usize,
        frames: u64,
    ) -> Result<(), SessionError> {
        let tun = &mut self.tunnels[t];
        if frames <= tun.acked_reliable {
            return Ok(());
        }
        if frames > tun.sent_reliable {
            return Err(SessionError::Protocol(format!(
                "ACK of {frames} frames on tunnel {t}, only {} sent",
                tun.sent_reliable
            )));
        }
        let count = frames - tun.acked_reliable;
        tun.acked_reliable = frames;
        let mut last = None;
        let mut finished = Vec::new();
        let mut acked_bytes = 0;
        for _ in 0..count {
            let Some(r) = tun.retained.pop_front() else {
                break;
            };
            tun.unacked_bytes -= r.wire_len;
            tun.delivered += r.wire_len;
            acked_bytes += r.wire_len;
            if let Some(sid) = r.frame.counted_stream()
                && let Some(s) = self.streams.get_mut(&sid)
            {
                s.unacked_frames = s.unacked_frames.saturating_sub(1);
                if s.unacked_frames == 0 {
                    finished.push(sid);
                }
            }
            last = Some(r);
        }
        if let Some(r) = last {
            let elapsed = now.saturating_duration_since(r.sent_at);
            tun.path.on_rtt_sample(elapsed, now);
            if !elapsed.is_zero() {
                let rate = (tun.delivered - r.delivered_at_send) as f64 / elapsed.as_secs_f64();
                tun.path.on_rate_sample(rate, r.app_limited, now);
            }
            if !self.kernel_delivery {
                let rtt = tun.path.base_rtt();
                let app_limited = r.session_app_limited || self.rtt_probe.holds_back(rtt, now);
                self.on_delivered(acked_bytes, rtt, app_limited, now);
            }
        }
        for sid in finished {
            self.maybe_remove(sid);
        }
        Ok(())
    }

    /// Tunnel `t` died: its unacknowledged frames join the resend queue, oldest first.
    pub(super) fn requeue_unacknowledged(&mut self, t: usize) {
        let tun = &mut self.tunnels[t];
        while let Some(r) = tun.retained.pop_front() {
            self.frames_resent += 1;
            self.retransmit_bytes += r.wire_len;
            self.retransmit.push_back((r.frame, r.wire_len));
        }
    }

    /// Takes the oldest frame of the resend queue off its accounting.
    pub(super) fn pop_resend(&mut self) -> Option<Reliable> {
        let (r, len) = self.retransmit.pop_front()?;
        self.retransmit_bytes -= len;
        Some(r)
    }

    /// Encoded bytes kept for resend: unacknowledged on every tunnel plus the resend queue.
    pub(super) fn retained_bytes(&self) -> u64 {
        self.retransmit_bytes + self.tunnels.iter().map(|t| t.unacked_bytes).sum::<u64>()
    }

    /// Whether new stream data may be framed on tunnel `t`: neither the session nor the tunnel
    /// holds its cap of unacknowledged bytes, nor, when engaged, the session its coupled cap of
    /// bytes on the path (resends and control frames are not held back).
    pub(super) fn may_frame_data(&self, t: usize) -> bool {
        let retained = self.retained_bytes();
        self.tunnels
            .get(t)
            .is_some_and(|tun| tun.unacked_bytes < self.config.max_tunnel_unacked_bytes)
            && retained < self.config.max_unacked_bytes
            && self
                .binding_cap()
                .is_none_or(|cap| (self.held_on_path() as f64) < cap)
    }

    /// The frame to send for a remembered reliable frame, with current values; `None` when it
    /// is obsolete (its stream is gone or reset).
    pub(super) fn materialize(&self, r: &Reliable) -> Option<Frame> {
        let live = |id: &StreamId| self.streams.get(id).filter(|s| !s.reset_sent);
        Some(match r {
            Reliable::Data {
                stream,
                offset,
                fin,
                payload,
            } => {
                live(stream)?;
                Frame::Data {
                    stream: *stream,
                    offset: *offset,
                    fin: *fin,
                    payload: payload.clone(),
                }
            }
            Reliable::Open { stream } => Frame::Open {
                stream: *stream,
                target: live(stream)?.target.clone(),
            },
            Reliable::Reset {
                stream,
                final_offset,
                code,
            } => Frame::Reset {
                stream: *stream,
                final_offset: *final_offset,
                code: *code,
            },
            Reliable::StreamWindow { stream } => {
                let s = self.streams.get(stream)?;
                if s.reset_code().is_some() || s.final_size.is_some() {
                    return None;
                }
                Frame::StreamWindow {
                    stream: *stream,
                    max_offset: s.recv_max_advertised,
                }
            }
            Reliable::SessionWindow => Frame::SessionWindow {
                max_data: self.recv_max_data,
            },
            Reliable::MaxStreams => Frame::MaxStreams {
                count: self.peer_stream_limit,
            },
            Reliable::GoAway { code } => Frame::GoAway { code: *code },
            Reliable::Expose => Frame::Expose {
                names: self.expose_body()?,
            },
        })
    }
}
