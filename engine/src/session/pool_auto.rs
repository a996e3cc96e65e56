//! The client's adaptive pool (`Config::pool_auto`): feeding the [`PoolController`] and applying
//! its decisions to the tunnel slots.
//!
//! Growing dials parked slots (`Down` with no re-dial time). Shrinking is graceful: a slot beyond
//! the target first *drains* (the scheduler gives it no new reliable frame; ACKs and keepalives
//! still flow), and only once everything sent on it is acknowledged is it closed and parked, so
//! nothing is re-sent and nothing is lost (the peer's own unacknowledged frames on it are re-sent
//! on the other tunnels, as for any tunnel that closes).
//!
//! A server that announced [`CAP_TUNNEL_DRAIN`] hears of each change of a slot's draining state
//! in a TUNNEL_DRAIN frame on that tunnel: it then sends no new frames on a draining tunnel
//! either (nothing of its own needs re-sending when the client closes it), and takes the close
//! for the planned retirement it is, not a lost tunnel.
//!
//! The client sees its own backlog (an upload); a download's backlog is on the server, so
//! stream data arriving at every tick also counts as backlogged, and goodput counts both
//! directions.
//!
//! Owns: `Session::pool_control`, the slots' `draining` flags (the client's, and the server's
//! copy from TUNNEL_DRAIN) and the [`Event::PoolResized`] events. Must not touch: the decision
//! rule (`crate::pool_control`) or a slot's handshake and backoff (`tunnels`).

use std::time::{Duration, Instant};

use super::tunnels::TunnelState;
use super::{Event, Role, Session};
use crate::error::{SessionError, TunnelError};
use crate::handshake::CAP_TUNNEL_DRAIN;
use crate::pool_control::{PoolController, PoolSample, TICK};

impl Session {
    /// Client with `pool_auto`: the controller, starting at `pool_min` of `pool_size` slots.
    pub(super) fn pool_controller(config: &crate::Config, slots: usize) -> Option<PoolController> {
        config
            .pool_auto
            .then(|| PoolController::new(usize::from(config.pool_min), slots))
    }

    /// How many slots may carry tunnels now: the adaptive pool's target, or every slot.
    pub(super) fn pool_target(&self) -> usize {
        self.pool_control
            .as_ref()
            .map_or(self.tunnels.len(), PoolController::target)
    }

    /// Client: the adaptive pool's current size (`None`: the pool is fixed).
    pub fn adaptive_pool_target(&self) -> Option<usize> {
        self.pool_control.as_ref().map(PoolController::target)
    }

    /// When the next pool tick is due (`None`: no adaptive pool).
    pub(super) fn pool_tick_at(&self) -> Option<Instant> {
        self.pool_control.as_ref().map(|_| self.pool_next_tick)
    }

    /// The server granted `granted` slots: the adaptive pool never asks for more.
    pub(super) fn cap_adaptive_pool(&mut self, now: Instant, granted: usize) {
        if let Some(to) = self.pool_control.as_mut().and_then(|c| c.cap(granted)) {
            self.apply_pool_target(now, to);
        }
    }

    /// Samples the session, lets the controller decide, and applies a change; closes drained
    /// slots. Called from `handle_timeout` once [`Session::pool_tick_at`] is reached.
    pub(super) fn pool_tick(&mut self, now: Instant) {
        if self.role != Role::Client || self.closed.is_some() || self.pool_control.is_none() {
            return;
        }
        if now < self.pool_next_tick {
            return;
        }
        self.pool_next_tick = now + TICK;
        // A download is backlogged on the server, which the client cannot see: stream data
        // arriving at every tick counts as busy too. An application-limited download then costs
        // one probe step (goodput does not rise: back, and settled).
        let receiving = self.recv_data_total > self.pool_last_received;
        self.pool_last_received = self.recv_data_total;
        let mut sample = self.pool_sample();
        sample.backlogged |= receiving;
        let change = self.pool_control.as_mut().and_then(|c| c.tick(now, sample));
        if let Some(change) = change {
            self.apply_pool_target(now, change.to);
            self.events.push_back(Event::PoolResized { change });
        }
        self.close_drained(now);
    }

    fn pool_sample(&self) -> PoolSample {
        let (mut delivered, mut active, mut srtt, mut min_rtt) =
            (0u64, 0usize, Duration::ZERO, Duration::ZERO);
        for tun in &self.tunnels {
            delivered += tun.delivered;
            // Both directions count: frame bytes the peer acknowledged, stream bytes received.
            if tun.is_active() && !tun.draining {
                active += 1;
                srtt += tun.path.srtt();
                let m = tun.path.min_rtt();
                if !m.is_zero() && (min_rtt.is_zero() || m < min_rtt) {
                    min_rtt = m;
                }
            }
        }
        PoolSample {
            delivered: delivered + self.recv_data_total,
            backlogged: self.backlog > 0,
            active,
            srtt: srtt / (active.max(1) as u32),
            min_rtt,
        }
    }

    /// Makes slots `0..to` live (dialing parked ones, keeping draining ones) and drains the rest.
    fn apply_pool_target(&mut self, now: Instant, to: usize) {
        let pool_deferred = self.pool_deferred;
        for t in 0..self.tunnels.len() {
            let tun = &mut self.tunnels[t];
            if t < to {
                tun.draining = false;
                if tun.state == (TunnelState::Down { redial_at: None }) && !pool_deferred {
                    tun.state = TunnelState::Dialing { since: now };
                    self.events.push_back(Event::Dial { tunnel: t as u16 });
                }
            } else {
                match tun.state {
                    TunnelState::Active => {
                        tun.draining = true;
                        self.drop_relief_for(t);
                    }
                    // Not carrying frames: parked at once.
                    TunnelState::Down { .. } => {
                        tun.state = TunnelState::Down { redial_at: None };
                    }
                    TunnelState::Dialing { .. } | TunnelState::Handshaking(_) => {
                        self.tunnel_down(now, t, TunnelError::Retired);
                    }
                    TunnelState::Retired => {}
                }
            }
        }
    }

    /// Closes every draining slot whose frames are all acknowledged and whose server, if it
    /// understands TUNNEL_DRAIN, has read it (the PONG to the PING sent behind it came back:
    /// closed earlier, the frame could die with the connection); it stays parked.
    fn close_drained(&mut self, now: Instant) {
        let server_hears = self.server_hears_drain();
        for t in 0..self.tunnels.len() {
            let tun = &self.tunnels[t];
            if tun.draining
                && tun.is_active()
                && tun.retained.is_empty()
                && (!server_hears || tun.drain_heard)
            {
                self.tunnel_down(now, t, TunnelError::Retired);
            }
        }
    }

    /// Client: the draining state tunnel `t`'s server has not heard yet (`None`: nothing to
    /// tell, or a server that does not understand TUNNEL_DRAIN).
    pub(super) fn drain_news(&self, t: usize) -> Option<bool> {
        let tun = self.tunnels.get(t)?;
        (self.server_hears_drain() && tun.is_active() && tun.draining != tun.drain_told)
            .then_some(tun.draining)
    }

    /// Client, building a transmit on tunnel `t` whose PINGs carry `ping_token`: the
    /// TUNNEL_DRAIN to send now, if any, taken as told. A TUNNEL_DRAIN(1) arms a PING to go
    /// right behind it; its PONG says the server read it (`close_drained`).
    pub(super) fn take_drain_news(&mut self, t: usize, ping_token: u64) -> Option<bool> {
        let draining = self.drain_news(t)?;
        let tun = &mut self.tunnels[t];
        tun.drain_told = draining;
        tun.drain_heard = false;
        if draining {
            tun.drain_token = ping_token;
            tun.ping_due = true;
        }
        Some(draining)
    }

    /// Client: whether the server understands TUNNEL_DRAIN (its ServerHello carried the bit).
    fn server_hears_drain(&self) -> bool {
        self.role == Role::Client && self.peer_capabilities & CAP_TUNNEL_DRAIN != 0
    }

    /// Server: the client's TUNNEL_DRAIN on tunnel `t`. A draining tunnel gets no new frames,
    /// and its close is logged and counted as retired.
    pub(super) fn on_tunnel_drain(&mut self, t: usize, draining: bool) -> Result<(), SessionError> {
        if self.role == Role::Client {
            return Err(SessionError::Protocol(format!(
                "TUNNEL_DRAIN on tunnel {t}: only a client sends it"
            )));
        }
        self.tunnels[t].draining = draining;
        if draining {
            self.drop_relief_for(t);
        }
        Ok(())
    }

    /// Whether slot `t` is beyond the adaptive pool's target (parked, or draining).
    pub(super) fn beyond_pool_target(&self, t: usize) -> bool {
        self.pool_control.is_some() && t >= self.pool_target()
    }
}
