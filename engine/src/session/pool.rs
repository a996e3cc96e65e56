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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::config::Config;

    /// A client whose four slots have each failed `failures` dials in a row at `now`.
    fn backed_off(now: Instant, failures: u32) -> Session {
        let config = Arc::new(Config {
            pool_size: 4,
            allow_unauthenticated: true,
            ..Config::default()
        });
        let mut s = Session::client(config, now, 7);
        for _ in 0..failures {
            for t in 0..4 {
                s.tunnels[t].state = TunnelState::Dialing { since: now };
                s.tunnel_dial_failed(now, t, "refused");
            }
        }
        s
    }

    #[test]
    fn slots_back_off_alone_until_one_gets_through_then_all_are_due_at_once() {
        let now = Instant::now();
        let mut s = backed_off(now, 8);
        assert_eq!(s.proposed_tunnels(), 4);
        assert_eq!(s.granted_tunnels(), 4);
        assert_eq!(s.active_tunnels(), 0);
        // Eight failures: each slot waits between half and all of redial_backoff_max.
        let max = s.config.redial_backoff_max;
        let next = s.next_redial().expect("a re-dial is due");
        assert!(next >= now + max / 2, "{:?}", next - now);
        let later = now + Duration::from_millis(1);
        s.redial_waiting_slots(later);
        for tun in &s.tunnels {
            assert_eq!(
                tun.state,
                TunnelState::Down {
                    redial_at: Some(later)
                }
            );
        }
        assert_eq!(s.next_redial(), Some(later));
        // Their failure counts were forgotten: the next failure waits the shortest backoff.
        s.tunnels[0].state = TunnelState::Dialing { since: later };
        s.tunnel_dial_failed(later, 0, "refused");
        let TunnelState::Down {
            redial_at: Some(at),
        } = s.tunnels[0].state
        else {
            panic!("slot 0 is down");
        };
        assert!(
            at <= later + s.config.redial_backoff_min * 2,
            "{:?}",
            at - later
        );
    }
}
