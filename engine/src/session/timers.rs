//! Timers: the one deadline a driver must wake the session at, and what fires then.
//!
//! Owns: [`Session::poll_timeout`] and [`Session::handle_timeout`]: handshake, idle and
//! unacknowledged-frame timeouts, due (re-)dials, keepalive PINGs, and the grace period of a
//! session with no live tunnel.
//! Must not touch: the transitions themselves (`tunnels`, `close`); it only decides they are due.

use std::time::Instant;

use super::tunnels::TunnelState;
use super::{Event, Session};
use crate::error::{SessionError, TunnelError};
use crate::handshake::HandshakeError;

impl Session {
    /// The next instant [`Session::handle_timeout`] must be called at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        let c = &self.config;
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for tun in &self.tunnels {
            if let Some(since) = tun.handshake_started() {
                consider(since + c.handshake_timeout);
            }
            match tun.state {
                TunnelState::Down {
                    redial_at: Some(at),
                } => consider(at),
                TunnelState::Active => {
                    consider(tun.last_recv + c.tunnel_idle_timeout);
                    if let Some(oldest) = tun.retained.front() {
                        consider(oldest.sent_at + c.tunnel_idle_timeout);
                    }
                    if !tun.ping_outstanding && !tun.ping_due {
                        consider(tun.next_ping);
                    }
                }
                _ => {}
            }
        }
        if self.established
            && let Some(since) = self.no_tunnel_since
        {
            consider(since + c.session_grace);
        }
        if let Some(at) = self.pool_tick_at() {
            consider(at);
        }
        if let Some(at) = self.relief_deadline() {
            consider(at);
        }
        next
    }

    /// Fires every timer due at `now`: handshake and idle timeouts, re-dials, keepalives, and the
    /// session's grace period.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        let (hs, idle) = (
            self.config.handshake_timeout,
            self.config.tunnel_idle_timeout,
        );
        for t in 0..self.tunnels.len() {
            match self.tunnels[t].state {
                TunnelState::Down {
                    redial_at: Some(at),
                } if at <= now => {
                    self.tunnels[t].state = TunnelState::Dialing { since: now };
                    self.events.push_back(Event::Dial { tunnel: t as u16 });
                }
                _ if self.tunnels[t]
                    .handshake_started()
                    .is_some_and(|s| s + hs <= now) =>
                {
                    self.tunnel_down(now, t, TunnelError::Handshake(HandshakeError::Timeout));
                }
                TunnelState::Active if self.tunnels[t].last_recv + idle <= now => {
                    self.tunnel_down(now, t, TunnelError::IdleTimeout(idle));
                }
                TunnelState::Active
                    if self.tunnels[t]
                        .retained
                        .front()
                        .is_some_and(|oldest| oldest.sent_at + idle <= now) =>
                {
                    // Answering PINGs is not enough: a tunnel must take what is sent on it.
                    self.tunnel_down(now, t, TunnelError::Unacknowledged(idle));
                }
                TunnelState::Active => {
                    // The PING goes out with the tunnel's next transmit; the timer is re-armed
                    // now so that a tunnel with a full send buffer cannot make it fire forever.
                    let tun = &mut self.tunnels[t];
                    if !tun.ping_outstanding && !tun.ping_due && tun.next_ping <= now {
                        tun.ping_due = true;
                        tun.next_ping = now + self.config.keepalive_interval;
                    }
                }
                _ => {}
            }
        }
        self.pool_tick(now);
        self.relief_timeout(now);
        if self.established
            && let Some(since) = self.no_tunnel_since
            && since + self.config.session_grace <= now
        {
            self.finish(SessionError::AllTunnelsLost(self.config.session_grace));
        }
    }
}
