//! The client's pool as a whole: how many slots the server granted, how many carry frames, when
//! the next re-dial is due, and bringing the whole pool back once the server answers again.
//!
//! Owns: pool-wide views of the tunnel slots and the one pool-wide backoff rule (the first
//! tunnel accepted after failures makes every waiting slot due at once). Must not touch: a
//! slot's own transitions and its backoff arithmetic (`tunnels`), frames, or sockets.

use std::time::Instant;

use super::tunnels::TunnelState;
use super::{Role, Session};

impl Session {
    /// Client: the slots the server granted (the proposal until the first tunnel is accepted).
    pub fn granted_tunnels(&self) -> usize {
        self.tunnels
            .iter()
            .filter(|t| t.state != TunnelState::Retired)
            .count()
    }

    /// Client: the pool size this end proposed.
    pub fn proposed_tunnels(&self) -> usize {
        usize::from(self.config.pool_size.max(1))
    }

    /// Tunnels carrying frames now.
    pub fn active_tunnels(&self) -> usize {
        self.tunnels.iter().filter(|t| t.is_active()).count()
    }

    /// Client: when the earliest waiting slot is re-dialed (`None`: none is waiting).
    pub fn next_redial(&self) -> Option<Instant> {
        self.tunnels
            .iter()
            .filter_map(|t| match t.state {
                TunnelState::Down { redial_at } => redial_at,
                _ => None,
            })
            .min()
    }

    /// Client: a tunnel was just accepted, so the server answers again. Every slot still
    /// waiting out its own backoff is re-dialed now instead (its failure count forgotten), so
    /// the whole pool is back within one dial of the first success rather than each slot
    /// returning at its own, possibly much later, time.
    pub(super) fn redial_waiting_slots(&mut self, now: Instant) {
        if self.role != Role::Client || self.closed.is_some() {
            return;
        }
        for tun in &mut self.tunnels {
            if let TunnelState::Down {
                redial_at: Some(at),
            } = tun.state
                && at > now
            {
                tun.state = TunnelState::Down {
                    redial_at: Some(now),
                };
                tun.forget_dial_failures();
            }
        }
    }
}
