//! Input: bytes read from a tunnel, the rest of a client's handshake on it, then frames, each
//! dispatched to the concept that owns it.
//!
//! Owns: [`Session::handle_input`] (splitting frames off the driver's buffer, the per-tunnel
//! receive counters, turning a protocol violation into the session's failure) and the frame
//! dispatch. Must not touch: what a frame does — streams, flow control, acknowledgement,
//! keepalive and close each handle their own frames.

use std::time::Instant;

use bytes::BytesMut;

use super::Session;
use super::tunnels::TunnelState;
use crate::error::SessionError;
use crate::wire::{self, Frame};

impl Session {
    /// Consumes bytes read from tunnel `t`. Complete frames are split off the front of `buf`
    /// (zero-copy); a partial frame stays for the next call. An `Err` means the session is now
    /// closed (the peer broke the protocol); the error is also reported as an event.
    pub fn handle_input(
        &mut self,
        now: Instant,
        t: usize,
        buf: &mut BytesMut,
    ) -> Result<(), SessionError> {
        if self.closed.is_some() || t >= self.tunnels.len() {
            buf.clear();
            return Ok(());
        }
        if matches!(self.tunnels[t].state, TunnelState::Handshaking(_)) {
            self.client_handshake_input(now, t, buf)?;
            if matches!(self.tunnels[t].state, TunnelState::Handshaking(_)) {
                // The rest of the ServerHello is still on its way.
                return Ok(());
            }
        }
        if !self.tunnels[t].is_active() {
            buf.clear();
            return Ok(());
        }
        let max_body = self.config.max_frame_body;
        loop {
            match wire::decode(buf, max_body) {
                Ok(Some(frame)) => {
                    let tun = &mut self.tunnels[t];
                    tun.last_recv = now;
                    if frame.is_reliable() {
                        tun.recv_reliable += 1;
                    }
                    if let Err(e) = self.on_frame(now, t, frame) {
                        buf.clear();
                        return Err(self.fail(now, e));
                    }
                    if self.closed.is_some() || !self.tunnels[t].is_active() {
                        buf.clear();
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(source) => {
                    buf.clear();
                    let e = SessionError::Frame {
                        tunnel: t as u16,
                        source,
                    };
                    return Err(self.fail(now, e));
                }
            }
        }
    }

    /// Dispatches one frame received on tunnel `t` to the concept that owns it.
    fn on_frame(&mut self, now: Instant, t: usize, frame: Frame) -> Result<(), SessionError> {
        match frame {
            Frame::Data {
                stream,
                offset,
                fin,
                payload,
            } => {
                self.on_data(stream, offset, fin, payload)?;
                self.watch_gap(now, stream);
                Ok(())
            }
            Frame::Open { stream, target } => self.on_open(stream, target),
            Frame::Reset {
                stream,
                final_offset,
                code,
            } => self.on_reset(stream, final_offset, code),
            Frame::StreamWindow { stream, max_offset } => self.on_stream_window(stream, max_offset),
            Frame::SessionWindow { max_data } => {
                self.on_session_window(max_data);
                Ok(())
            }
            Frame::MaxStreams { count } => {
                self.on_max_streams(count);
                Ok(())
            }
            Frame::Ack { frames } => self.on_ack(now, t, frames),
            Frame::Ping { token } => {
                self.tunnels[t].pong_due = Some(token);
                Ok(())
            }
            Frame::Pong { token } => {
                self.on_pong(now, t, token);
                Ok(())
            }
            Frame::GoAway { code } => {
                self.on_go_away(now, code);
                Ok(())
            }
            Frame::Close { code, reason } => {
                let reason = String::from_utf8_lossy(&reason).into_owned();
                self.finish(SessionError::PeerClosed { code, reason });
                Ok(())
            }
            Frame::Expose { names } => self.on_expose(names),
            Frame::HolReport {
                stream,
                offset,
                length,
            } => self.on_hol_report(t, stream, offset, length),
            Frame::TunnelDrain { draining } => self.on_tunnel_drain(t, draining),
        }
    }
}
