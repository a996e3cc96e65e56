//! Client: moving a session that cannot be established to the next server of the list, as
//! [`ServerList`] decides, and saying so once.
//!
//! Owns: applying a move (the attempts still in flight to the previous server are abandoned,
//! so that every tunnel of the session dials the same server), which tunnel losses count as
//! failed attempts, and the line that names the servers. Must not touch: the rule itself
//! ([`crate::runtime::server_list`]), a slot's backoff (the session's), or the pool's other
//! log lines ([`super::pool_log`]).

use std::net::SocketAddr;
use std::time::Instant;

use super::{EventLoop, Role};
use crate::endpoint::{ClientRefused, SessionKey};
use crate::error::TunnelError;
use crate::runtime::io::Driver;
use crate::runtime::server_list::{Move, ServerList};

impl<D: Driver> EventLoop<D> {
    /// Client: the server the session dials now.
    pub(super) fn current_server(&self) -> Option<SocketAddr> {
        match &self.role {
            Role::Client { servers } => Some(servers.current()),
            Role::Server { .. } => None,
        }
    }

    fn servers_mut(&mut self) -> Option<&mut ServerList> {
        match &mut self.role {
            Role::Client { servers } => Some(servers),
            Role::Server { .. } => None,
        }
    }

    /// Client: the server to dial slot `t` to now (remembered for the slot).
    pub(super) fn server_for_dial(&mut self, t: usize) -> Option<SocketAddr> {
        let servers = self.servers_mut()?;
        servers.dialing(t);
        Some(servers.current())
    }

    /// Client: slot `t` went down after an attempt on a server the session has left (a move
    /// abandoned it): not news, and not a failure of the current server.
    pub(super) fn abandoned_attempt(&self, t: u16) -> bool {
        match &self.role {
            Role::Client { servers } => servers.is_stale(usize::from(t)),
            Role::Server { .. } => false,
        }
    }

    /// Client: the server refused this client for good and there is no other server to try,
    /// so an application connection is closed at once instead of waiting. With a list, the
    /// next server may take it: connections wait (at most `connect_wait`) for it.
    pub(super) fn refused_everywhere(&self) -> bool {
        let others = matches!(&self.role, Role::Client { servers } if servers.len() > 1);
        self.endpoint.is_refused() && !others
    }

    /// Client: a tunnel was accepted; the current server works.
    pub(super) fn failover_accepted(&mut self) {
        if let Some(servers) = self.servers_mut() {
            servers.accepted();
        }
    }

    /// Client: a fresh session starts on the current server.
    pub(super) fn failover_session_started(&mut self) {
        if let Some(servers) = self.servers_mut() {
            servers.session_started();
        }
    }

    /// Client: slot `t` of session `skey` went down for `reason`. An attempt of a session never
    /// established that failed on the current server counts; a round of them moves the
    /// session to the next server. `refused`: the session is being refused for good (handled
    /// when it is let go, [`Self::failover_after_refusal`]).
    pub(super) fn failover_after_tunnel_down(
        &mut self,
        skey: SessionKey,
        t: u16,
        reason: &TunnelError,
        refused: bool,
        now: Instant,
    ) {
        let normal = matches!(reason, TunnelError::Retired | TunnelError::SessionClosed);
        let Some(session) = self.endpoint.get(skey).map(|s| s.session()) else {
            return;
        };
        if refused || normal || session.is_established() || session.is_closed() {
            return;
        }
        let pool = session.granted_tunnels();
        let Some(servers) = self.servers_mut() else {
            return;
        };
        if let Some(m) = servers.attempt_failed(usize::from(t), pool) {
            self.move_session(skey, m, reason, now);
        }
    }

    /// Client: the session that just ended was refused for good by the current server; its
    /// replacement (which waits the refusal's backoff first) tries the next one.
    pub(super) fn failover_after_refusal(&mut self, refused: &ClientRefused) {
        let Some(servers) = self.servers_mut() else {
            return;
        };
        if servers.len() < 2 {
            return;
        }
        let m = servers.advance(1);
        let (from, to, wait) = (m.from, m.to, refused.retry_in);
        if m.first_pass {
            tracing::warn!(
                %from,
                %to,
                "server {from} {}; trying server {to} in {wait:.1?}",
                refused.refusal
            );
        } else {
            tracing::debug!(%from, %to, "server {from} refused again; trying server {to}");
        }
    }

    /// Moves session `skey` (never established) to `m.to`: says so, and abandons its attempts
    /// still in flight to `m.from`; every slot's next dial goes to `m.to`.
    fn move_session(&mut self, skey: SessionKey, m: Move, reason: &TunnelError, now: Instant) {
        self.pool_log.moved(&m, reason, now);
        let Some(slot) = self.endpoint.get_mut(skey) else {
            return;
        };
        let in_flight: Vec<(usize, usize)> = slot
            .data()
            .tunnels
            .iter()
            .enumerate()
            .filter_map(|(t, k)| k.map(|k| (t, k)))
            .collect();
        let why = format!("abandoned: moving to server {}", m.to);
        for (t, k) in in_flight {
            self.remove(k);
            let (session, io) = self.endpoint[skey].parts_mut();
            io.clear_tunnel(t, k);
            session.tunnel_lost(now, t, &why);
        }
        self.touch(skey);
    }
}
