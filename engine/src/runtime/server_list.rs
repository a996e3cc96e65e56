//! Client: the servers a client may use (`[client] servers`), which one the current session
//! dials, and when a session that cannot be established there moves to the next.
//!
//! Owns: the list, the current server, the rule for moving on, and which server each tunnel
//! slot was last dialed to (so that an attempt abandoned on the previous server does not count
//! against the next one). Must not touch: sockets, sessions or logs (the event loop's
//! `failover` applies what this decides and says it).
//!
//! The rule: a session that has never been established moves to the next server (round-robin)
//! after as many failed attempts on the current server as its pool has tunnels, with no tunnel
//! accepted meanwhile: one round of the pool, each attempt a refused or unreachable dial, a
//! handshake that timed out (`handshake_timeout` covers the dial too) or was rejected. A session
//! that was established stays on its server until it ends (every tunnel lost for
//! `session_grace`, or the server forgot it); its replacement tries the same server first. A
//! permanent refusal (wrong key, another protocol) ends the session at once, and the next one
//! tries the next server after the refusal's wait. All tunnels of one session dial one server.
//! Each slot keeps its own re-dial backoff across servers, so a client whose servers are all
//! down tries less and less often, as with one server.

use std::net::SocketAddr;
use std::sync::Arc;

/// The servers of one client worker and where its session stands.
#[derive(Debug, Clone)]
pub(crate) struct ServerList {
    addrs: Arc<[SocketAddr]>,
    current: usize,
    /// Bumped at every move: a slot dialed in an earlier epoch dialed another server.
    epoch: u64,
    /// The epoch each slot was last dialed in.
    dialed: Vec<u64>,
    /// Failed attempts on the current server since the session started there (or since its
    /// last accepted tunnel).
    failures: usize,
    /// Moves since a tunnel was last accepted (a whole cycle of them: every server is down).
    moves_without_success: usize,
}

/// A move from one server to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Move {
    /// The server given up on.
    pub(crate) from: SocketAddr,
    /// The server the session dials now.
    pub(crate) to: SocketAddr,
    /// Failed attempts on `from` that decided it.
    pub(crate) attempts: usize,
    /// True on the first pass through the list since the last success (later passes, while
    /// every server stays down, are summarised by the outage report).
    pub(crate) first_pass: bool,
}

impl ServerList {
    /// A list of at least one server (the caller checked).
    pub(crate) fn new(addrs: Arc<[SocketAddr]>) -> Self {
        debug_assert!(!addrs.is_empty());
        Self {
            addrs,
            current: 0,
            epoch: 0,
            dialed: Vec::new(),
            failures: 0,
            moves_without_success: 0,
        }
    }

    /// The server the session dials now.
    pub(crate) fn current(&self) -> SocketAddr {
        self.addrs[self.current % self.addrs.len()]
    }

    /// How many servers there are.
    pub(crate) fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Slot `t` is being dialed to the current server.
    pub(crate) fn dialing(&mut self, t: usize) {
        if self.dialed.len() <= t {
            self.dialed.resize(t + 1, self.epoch);
        }
        self.dialed[t] = self.epoch;
    }

    /// Slot `t`'s last attempt went to another server than the current one (it was abandoned
    /// by a move).
    pub(crate) fn is_stale(&self, t: usize) -> bool {
        self.dialed.get(t).is_some_and(|&e| e != self.epoch)
    }

    /// A fresh session starts (on the current server): nothing failed on it yet.
    pub(crate) fn session_started(&mut self) {
        self.failures = 0;
        self.dialed.clear();
    }

    /// A tunnel was accepted: the current server works.
    pub(crate) fn accepted(&mut self) {
        self.failures = 0;
        self.moves_without_success = 0;
    }

    /// An attempt of slot `t` of a session never established failed on the current server;
    /// `pool` is the session's pool size. Returns the move to make, if this one completes a
    /// round of the pool (never with a single server).
    pub(crate) fn attempt_failed(&mut self, t: usize, pool: usize) -> Option<Move> {
        if self.addrs.len() < 2 || self.is_stale(t) {
            return None;
        }
        self.failures += 1;
        if self.failures < pool.max(1) {
            return None;
        }
        let attempts = self.failures;
        Some(self.advance(attempts))
    }

    /// Moves to the next server now (the session there was refused for good, or a round of
    /// attempts failed).
    pub(crate) fn advance(&mut self, attempts: usize) -> Move {
        let from = self.current();
        self.current = (self.current + 1) % self.addrs.len();
        self.epoch += 1;
        self.failures = 0;
        let first_pass = self.moves_without_success < self.addrs.len();
        self.moves_without_success += 1;
        Move {
            from,
            to: self.current(),
            attempts,
            first_pass,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(n: u16) -> ServerList {
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 8000 + i)))
            .collect();
        ServerList::new(addrs.into())
    }

    #[test]
    fn one_round_of_the_pool_moves_to_the_next_server_round_robin() {
        let mut s = list(3);
        assert_eq!(s.current().port(), 8000);
        for t in 0..4 {
            s.dialing(t);
        }
        for t in 0..3 {
            assert_eq!(s.attempt_failed(t, 4), None);
        }
        let m = s.attempt_failed(3, 4).expect("a round failed");
        assert_eq!((m.from.port(), m.to.port(), m.attempts), (8000, 8001, 4));
        assert!(m.first_pass);
        assert_eq!(s.current().port(), 8001);
        // Slots still dialed to the old server do not count against the new one.
        assert!(s.is_stale(0));
        assert_eq!(s.attempt_failed(0, 1), None);
        s.dialing(0);
        assert!(!s.is_stale(0));
        assert_eq!(s.attempt_failed(0, 1).map(|m| m.to.port()), Some(8002));
        s.dialing(0);
        assert_eq!(s.attempt_failed(0, 1).map(|m| m.to.port()), Some(8000));
        // A fourth move without success: every server was tried, later passes are quiet.
        s.dialing(0);
        let m = s.attempt_failed(0, 1).expect("moves on");
        assert!(!m.first_pass, "{m:?}");
        s.accepted();
        s.dialing(0);
        assert!(s.attempt_failed(0, 1).expect("moves on").first_pass);
    }

    #[test]
    fn an_accepted_tunnel_or_a_fresh_session_restarts_the_count() {
        let mut s = list(2);
        for t in 0..2 {
            s.dialing(t);
        }
        assert_eq!(s.attempt_failed(0, 2), None);
        s.accepted();
        assert_eq!(s.attempt_failed(1, 2), None);
        s.session_started();
        assert_eq!(s.attempt_failed(0, 2), None);
        assert!(s.attempt_failed(1, 2).is_some());
    }

    #[test]
    fn a_single_server_never_moves() {
        let mut s = list(1);
        s.dialing(0);
        for _ in 0..100 {
            assert_eq!(s.attempt_failed(0, 1), None);
        }
        assert_eq!(s.current().port(), 8000);
        assert_eq!(s.len(), 1);
    }
}
