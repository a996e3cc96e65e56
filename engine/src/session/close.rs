//! The end of a session: GO_AWAY (no new streams, finish the others), an orderly CLOSE, a
//! failure that tells the peer why, and forgetting everything once closed.
//!
//! Owns: [`Session::go_away`], [`Session::close`], the peer's GO_AWAY, and `finish`, the one
//! place a session becomes closed. Must not touch: sockets (the driver closes them on
//! [`Event::TunnelDown`]); CLOSE frames are written by `transmit`.

use std::time::Instant;

use bytes::Bytes;

use super::retransmit::Reliable;
use super::tunnels::TunnelState;
use super::{Event, Session};
use crate::error::{SessionError, TunnelError, code};
use crate::wire;

impl Session {
    /// Stops new streams in both directions; existing streams finish, then the session closes.
    pub fn go_away(&mut self, now: Instant) {
        if self.closed.is_some() || self.going_away_local {
            return;
        }
        self.going_away_local = true;
        self.control.push_back(Reliable::GoAway {
            code: code::NO_ERROR,
        });
        self.maybe_finish_going_away(now);
    }

    /// Closes the session now: a CLOSE frame goes out on every live tunnel.
    pub fn close(&mut self, code: u32, reason: &str) {
        if self.closed.is_some() {
            return;
        }
        let reason: String = reason.chars().take(wire::MAX_REASON_LEN / 4).collect();
        let bytes = Bytes::from(reason.clone().into_bytes());
        for tun in &mut self.tunnels {
            if tun.is_active() {
                tun.close_pending = Some((code, bytes.clone()));
            }
        }
        self.finish(SessionError::LocallyClosed { code, reason });
    }

    /// Closes with an error: tells the peer why, and returns the error.
    pub(super) fn fail(&mut self, _now: Instant, e: SessionError) -> SessionError {
        if self.closed.is_none() {
            let reason = e.to_string();
            let bytes = Bytes::from(
                reason
                    .chars()
                    .take(wire::MAX_REASON_LEN / 4)
                    .collect::<String>(),
            );
            for tun in &mut self.tunnels {
                if tun.is_active() {
                    tun.close_pending = Some((e.code(), bytes.clone()));
                }
            }
            self.finish(e.clone());
        }
        e
    }

    /// Ends the session: tunnels still up are reported down (unless a CLOSE is on its way),
    /// every stream and queue is dropped, and [`Event::SessionClosed`] says why.
    pub(super) fn finish(&mut self, reason: SessionError) {
        if self.closed.is_some() {
            return;
        }
        for (t, tun) in self.tunnels.iter_mut().enumerate() {
            tun.retained.clear();
            if tun.close_pending.is_none()
                && matches!(
                    tun.state,
                    TunnelState::Active | TunnelState::Handshaking(_) | TunnelState::Dialing { .. }
                )
            {
                tun.state = TunnelState::Down { redial_at: None };
                self.events.push_back(Event::TunnelDown {
                    tunnel: t as u16,
                    reason: TunnelError::SessionClosed,
                });
            } else if tun.close_pending.is_none() {
                tun.state = TunnelState::Down { redial_at: None };
            }
        }
        self.streams.clear();
        self.local_open = 0;
        self.reorder_overhead = 0;
        self.backlog = 0;
        self.ready.clear();
        self.retransmit.clear();
        self.retransmit_bytes = 0;
        self.control.clear();
        self.closed = Some(reason.clone());
        self.events.push_back(Event::SessionClosed { reason });
    }

    /// The peer's GO_AWAY: no new streams either way; the session closes once the others end.
    pub(super) fn on_go_away(&mut self, now: Instant, code: u32) {
        if !self.going_away_peer {
            self.going_away_peer = true;
            self.events.push_back(Event::GoAway { code });
        }
        self.maybe_finish_going_away(now);
    }

    /// Closes a going-away session once its last stream is finished.
    fn maybe_finish_going_away(&mut self, _now: Instant) {
        if (self.going_away_local || self.going_away_peer) && self.streams.is_empty() {
            self.close(code::NO_ERROR, "going away: all streams finished");
        }
    }
}
