//! Servicing sessions: which need it (a ready list and a timer heap), reacting to their events,
//! and letting go of closed ones.
//!
//! Owns: [`SessionIo`] (a session's sockets and stream connections in this loop), the ready list
//! (sessions touched by input, a stream call, a socket event, an in-process notice or a
//! hand-over), the timer heap (each session's `poll_timeout`, invalidated lazily), servicing
//! (events, then transmit), and tearing down a closed session's sockets. Must not touch:
//! whether a closed session is replaced or what a session decides — the endpoint and the session
//! say.
//!
//! The rule that keeps bytes from stalling: every call that may make a session produce output
//! or events is followed by [`EventLoop::touch`], so the session is serviced on this turn of the
//! loop; a session nobody touched is only woken by its timer. A wake-up therefore costs in
//! proportion to the sessions with work, not to all sessions.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use super::connect_wait::WaitingApp;
use super::pool_log::PoolNow;
use super::{EventLoop, hex};
use crate::endpoint::{ClientRefused, Reaped, RefusalReport, SessionKey};
use crate::error::{SessionError, TunnelError};
use crate::id_hash::IdMap;
use crate::runtime::io::Driver;
use crate::session::{Event, StreamId};

/// Rounds of events-then-transmit in one service while the session keeps being touched by its
/// own servicing; beyond that it goes back on the ready list for the next turn.
const SERVICE_ROUNDS: usize = 4;

/// A session's sockets and stream connections in this loop, and its place in the schedule.
#[derive(Debug)]
pub(super) struct SessionIo<D: Driver> {
    /// Tunnel entry of each slot.
    pub(super) tunnels: Vec<Option<usize>>,
    /// Entry carrying each stream.
    pub(super) streams: IdMap<StreamId, usize>,
    /// Client: application connections waiting for a tunnel (see [`super::connect_wait`]).
    pub(super) waiting_apps: VecDeque<WaitingApp<D>>,
    /// On the ready list.
    queued: bool,
    /// Touched since its service began.
    touched: bool,
    /// The timer entry in the heap that counts (earlier ones were fired, later ones are stale).
    armed: Option<Instant>,
    /// Frame bytes sent and received over each tunnel slot, across its connections.
    pub(super) traffic: Vec<(u64, u64)>,
}

impl<D: Driver> Default for SessionIo<D> {
    fn default() -> Self {
        Self {
            tunnels: Vec::new(),
            streams: IdMap::default(),
            waiting_apps: VecDeque::new(),
            queued: false,
            touched: false,
            armed: None,
            traffic: Vec::new(),
        }
    }
}

impl<D: Driver> SessionIo<D> {
    /// Puts tunnel entry `entry` in slot `t`; returns the entry it replaces.
    pub(super) fn set_tunnel(&mut self, t: usize, entry: usize) -> Option<usize> {
        if self.tunnels.len() <= t {
            self.tunnels.resize(t + 1, None);
        }
        self.tunnels[t].replace(entry)
    }

    /// Empties slot `t` if it still holds `entry`.
    pub(super) fn clear_tunnel(&mut self, t: usize, entry: usize) {
        if let Some(slot) = self.tunnels.get_mut(t)
            && *slot == Some(entry)
        {
            *slot = None;
        }
    }

    /// Counts `sent` and `received` frame bytes on tunnel slot `t`.
    pub(super) fn count_traffic(&mut self, t: usize, sent: u64, received: u64) {
        if self.traffic.len() <= t {
            self.traffic.resize(t + 1, (0, 0));
        }
        self.traffic[t].0 += sent;
        self.traffic[t].1 += received;
    }

    /// Forgets `stream` if `entry` still carries it.
    pub(super) fn forget_stream(&mut self, stream: StreamId, entry: usize) {
        if self.streams.get(&stream) == Some(&entry) {
            self.streams.remove(&stream);
        }
    }
}

impl<D: Driver> EventLoop<D> {
    /// Session `skey` was called and may have output or events: service it on this turn.
    pub(super) fn touch(&mut self, skey: SessionKey) {
        let Some(slot) = self.endpoint.get_mut(skey) else {
            return;
        };
        let io = slot.data_mut();
        io.touched = true;
        if !io.queued && self.servicing != Some(skey) {
            io.queued = true;
            self.work.push(skey);
        }
    }

    /// The earliest live timer (stale heap entries are dropped on the way).
    pub(super) fn next_timer(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, skey))) = self.timers.peek() {
            if self
                .endpoint
                .get(skey)
                .is_some_and(|s| s.data().armed == Some(at))
            {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    /// Fires the timers due at `now`: each such session handles its timeout and is serviced.
    pub(super) fn fire_timers(&mut self, now: Instant) {
        while let Some(at) = self.next_timer() {
            if at > now {
                break;
            }
            let Some(Reverse((_, skey))) = self.timers.pop() else {
                break;
            };
            let Some(slot) = self.endpoint.get_mut(skey) else {
                continue;
            };
            let (session, io) = slot.parts_mut();
            io.armed = None;
            if session.poll_timeout().is_some_and(|t| t <= now) {
                session.handle_timeout(now);
            }
            // Serviced either way: servicing re-arms the timer where it is now.
            self.touch(skey);
        }
    }

    /// Services every session on the ready list.
    pub(super) fn service_ready(&mut self) {
        let work = std::mem::take(&mut self.work);
        for &skey in &work {
            if let Some(slot) = self.endpoint.get_mut(skey) {
                slot.data_mut().queued = false;
            }
            self.service(skey);
        }
        // Keep the allocation; anything touched meanwhile went on `self.work`.
        let mut work = work;
        work.clear();
        if self.work.is_empty() {
            self.work = work;
        }
    }

    /// Reacts to a session's events, sends what it has for its tunnels, re-arms its timer, and
    /// lets it go once closed.
    pub(super) fn service(&mut self, skey: SessionKey) {
        let now = Instant::now();
        self.servicing = Some(skey);
        for _ in 0..SERVICE_ROUNDS {
            let Some(slot) = self.endpoint.get_mut(skey) else {
                break;
            };
            slot.data_mut().touched = false;
            while let Some(ev) = self
                .endpoint
                .get_mut(skey)
                .and_then(|s| s.session_mut().poll_event())
            {
                self.on_session_event(skey, ev, now);
            }
            self.transmit(skey);
            if !self.endpoint.get(skey).is_some_and(|s| s.data().touched) {
                break;
            }
        }
        self.servicing = None;
        let Some(slot) = self.endpoint.get_mut(skey) else {
            return;
        };
        if slot.session().is_closed() {
            // Everything was flushed by `transmit` above as far as the sockets allowed.
            return self.let_go(skey, now);
        }
        let (session, io) = slot.parts_mut();
        if io.touched && !io.queued {
            // Still producing after its rounds: next turn.
            io.queued = true;
            self.work.push(skey);
        }
        if let Some(at) = session.poll_timeout()
            && io.armed.is_none_or(|armed| at < armed)
        {
            io.armed = Some(at);
            self.timers.push(Reverse((at, skey)));
        }
    }

    /// Drops a closed session's sockets and streams and removes it from the endpoint (a client
    /// endpoint starts a fresh session).
    fn let_go(&mut self, skey: SessionKey, now: Instant) {
        let Some(slot) = self.endpoint.get(skey) else {
            return;
        };
        self.metrics.session_retired(&slot.session().stats());
        let tunnels: Vec<usize> = slot.data().tunnels.iter().flatten().copied().collect();
        let streams: Vec<usize> = slot.data().streams.values().copied().collect();
        // Connections waiting for a tunnel wait on for the session that replaces this one.
        let waiting = std::mem::take(&mut self.endpoint[skey].data_mut().waiting_apps);
        for k in tunnels {
            // Its last bytes (the CLOSE) still go out; the socket closes after them.
            self.close_tunnel_after_flush(k, now);
        }
        for k in streams {
            self.stream_session_lost(k);
        }
        self.release_reverse(skey);
        if let Reaped::Removed {
            replacement: Some(fresh),
        } = self.endpoint.reap(now, skey)
        {
            match self.endpoint.take_refusal() {
                Some(refused) => {
                    self.log_refusal(&refused);
                    self.failover_after_refusal(&refused);
                }
                None => tracing::info!("starting a new session"),
            }
            self.failover_session_started();
            if !self.refused_everywhere() {
                self.endpoint[fresh].data_mut().waiting_apps = waiting;
            }
            self.touch(fresh);
            self.expose_on(fresh);
        }
    }

    /// Client: the server refused the session for good. Said once as an error; while the same
    /// refusal repeats, a summary every [`crate::endpoint::REPORT_INTERVAL`], the rest at debug.
    fn log_refusal(&self, refused: &ClientRefused) {
        let Some(server) = self.current_server() else {
            return;
        };
        let (why, retry_in) = (&refused.refusal, refused.retry_in);
        match refused.report {
            RefusalReport::First => tracing::error!(
                "server {server} {why}; not retrying for {retry_in:?}, then less and less often"
            ),
            RefusalReport::StillRefused { since_last_report } => tracing::warn!(
                refused_in_a_row = refused.in_a_row,
                "server {server} {why} (refused {since_last_report} more times since the last \
                 report); next try in {retry_in:?}"
            ),
            RefusalReport::Repeated => tracing::debug!(
                refused_in_a_row = refused.in_a_row,
                "server {server} {why}; next try in {retry_in:?}"
            ),
        }
    }

    /// Client: the pool's figures now, for its log.
    fn pool_now(&self, skey: SessionKey, server: SocketAddr, now: Instant) -> PoolNow {
        let mut pool = PoolNow {
            server,
            now,
            active: 0,
            granted: 0,
            proposed: 0,
            next_attempt: None,
        };
        if let Some(s) = self.endpoint.get(skey) {
            let session = s.session();
            pool.active = session.active_tunnels();
            pool.granted = session.granted_tunnels();
            pool.proposed = session.proposed_tunnels();
            pool.next_attempt = session.next_redial();
        }
        pool
    }

    fn on_session_event(&mut self, skey: SessionKey, ev: Event, now: Instant) {
        // The per-message events first: they log nothing, so they skip the session id (a
        // string built per event) and the refusal check below.
        match ev {
            Event::StreamReadable { stream } => {
                if let Some(&k) = self.endpoint[skey].data().streams.get(&stream) {
                    self.stream_to_app(k);
                }
                return;
            }
            Event::StreamWritable { stream } => {
                if let Some(&k) = self.endpoint[skey].data().streams.get(&stream) {
                    self.stream_to_session(k);
                }
                return;
            }
            _ => {}
        }
        let id = self
            .endpoint
            .get(skey)
            .map(|s| hex(s.session().id()))
            .unwrap_or_default();
        // A session the server refused for good: the refusal is logged once when it is let go
        // (`log_refusal`), so its tunnels and its end are not each a warning at every attempt.
        let refused = self.endpoint.get(skey).is_some_and(|s| {
            matches!(s.session().close_reason(), Some(SessionError::Handshake(_)))
        });
        match ev {
            Event::Dial { tunnel } => self.dial(skey, usize::from(tunnel), now),
            Event::TunnelUp { tunnel, rtt } => {
                if let Some(server) = self.current_server() {
                    self.failover_accepted();
                    let cc = self.tunnel_congestion(skey, usize::from(tunnel));
                    let pool = self.pool_now(skey, server, now);
                    let asked = self.opts.tunnel_sockets.congestion.as_deref();
                    self.pool_log.tunnel_up(&id, tunnel, rtt, &cc, asked, pool);
                }
                // Held application connections can go now.
                self.release_waiting(skey);
                self.open_waiting_proxies();
                self.open_waiting_locals();
            }
            Event::TunnelDown { tunnel, reason } => {
                self.metrics.tunnel_lost(&reason);
                match self.current_server() {
                    Some(_) if self.abandoned_attempt(tunnel) => {
                        tracing::debug!(session = %id, tunnel, "tunnel closed: {reason}")
                    }
                    Some(server) => {
                        let pool = self.pool_now(skey, server, now);
                        self.pool_log
                            .tunnel_down(&id, tunnel, &reason, pool, refused);
                    }
                    None => log_server_tunnel_down(&id, tunnel, &reason),
                }
                if let Some(k) = self.endpoint[skey]
                    .data_mut()
                    .tunnels
                    .get_mut(usize::from(tunnel))
                    .and_then(Option::take)
                {
                    self.remove(k);
                }
                self.failover_after_tunnel_down(skey, tunnel, &reason, refused, now);
            }
            Event::StreamOpened { stream, target } => self.open_target(skey, stream, target),
            // Handled at the top.
            Event::StreamReadable { .. } | Event::StreamWritable { .. } => {}
            Event::StreamConfirmed { stream } => {
                if let Some(&k) = self.endpoint[skey].data().streams.get(&stream) {
                    self.stream_confirmed(k);
                }
            }
            Event::StreamReset { stream, code } => {
                match self.endpoint[skey].data_mut().streams.remove(&stream) {
                    Some(k) => {
                        self.log_reset_by_peer(&id, stream, code, k);
                        self.stream_reset_by_peer(k, code);
                    }
                    None => tracing::info!(session = %id, stream, code, "stream reset by peer"),
                }
            }
            Event::StreamClosed {
                stream,
                sent,
                received,
            } => {
                let k = self.endpoint[skey].data_mut().streams.remove(&stream);
                let (duration, forward) = match k.and_then(|k| self.entries.get(k)) {
                    Some(super::Entry::App(app)) => {
                        (Some(app.age()), app.forward().and_then(|f| f.name.clone()))
                    }
                    _ => (None, None),
                };
                tracing::debug!(
                    session = %id,
                    stream,
                    forward = forward.as_deref().unwrap_or_default(),
                    bytes_sent = sent,
                    bytes_received = received,
                    ?duration,
                    "stream closed"
                );
                if let Some(k) = k {
                    self.stream_closed(k);
                }
            }
            Event::GoAway { code } => tracing::info!(session = %id, code, "peer is going away"),
            // One line per decision of the adaptive pool (a change, or settling), with its reason.
            Event::PoolResized { change } => tracing::info!(
                session = %id,
                from = change.from,
                to = change.to,
                "{change}"
            ),
            Event::PeerExposed { names } => self.peer_exposed(skey, names),
            Event::SessionClosed { reason } => log_session_closed(&id, &reason, refused),
        }
    }
}

/// A server's tunnel went down: a warning when it was a live tunnel that failed; the ends of a
/// session (its client stopped, or it was closed) and replaced or unused slots are normal.
fn log_server_tunnel_down(id: &str, tunnel: u16, reason: &TunnelError) {
    match reason {
        TunnelError::SessionClosed | TunnelError::Replaced | TunnelError::Retired => {
            tracing::debug!(session = %id, tunnel, "tunnel closed: {reason}")
        }
        _ => tracing::warn!(session = %id, tunnel, "tunnel lost: {reason}"),
    }
}

/// A session ended. Normal ends (either side stopping, the server restarted and forgot it) are
/// INFO; a session the server refuses for good is reported once elsewhere; the rest (the peer
/// broke the protocol, every tunnel lost past the grace period) are warnings.
fn log_session_closed(id: &str, reason: &SessionError, refused: bool) {
    let normal_code = matches!(
        reason.code(),
        crate::error::code::NO_ERROR | crate::error::code::SHUTDOWN
    );
    let normal = match reason {
        SessionError::SessionLost => true,
        SessionError::PeerClosed { .. } | SessionError::LocallyClosed { .. } => normal_code,
        _ => false,
    };
    if refused {
        tracing::debug!(session = %id, "session closed: {reason}");
    } else if normal {
        tracing::info!(session = %id, "session closed: {reason}");
    } else {
        tracing::warn!(session = %id, "session closed: {reason}");
    }
}
