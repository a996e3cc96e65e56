//! Reverse tunnels in the event loop. Server: the public listeners its configuration names
//! (held by worker 0, opened and closed as [`ReverseTable`] says), each accepted connection
//! carried as a stream the server opens in the owning session (handed to that session's
//! worker when it lives elsewhere), and the table kept up to date from the sessions' EXPOSE.
//! Client: its exposed services announced on every session, and the server's streams connected
//! to their targets (or reset, code 5, for a name it does not expose).
//!
//! Owns: [`ReverseState`] and the reset code 5. Must not touch: how a connected stream moves
//! its bytes ([`super::app`]), the backend budget and connect timeout ([`super::backends`],
//! whose machinery the client's connects reuse), or who owns a name ([`ReverseTable`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::app::AppConn;
use super::{Entry, EventLoop, RESET_APP_ERROR, Role, hex};
use crate::endpoint::SessionKey;
use crate::handshake::SessionId;
use crate::runtime::io::{Driver, IoListener};
use crate::runtime::reverse::{ExposedService, Owner, ReverseTable, WhenAbsent};
use crate::runtime::worker::Handoff;
use crate::runtime::{Route, sockopt};
use crate::session::StreamId;

/// Reset code for a server-opened stream whose name this client does not expose: the same
/// "not allowed" a server's allow-list answers with (one table of codes, PROTOCOL.md §4.6).
pub(super) const RESET_NOT_EXPOSED: u32 = crate::runtime::reset_code::NOT_ALLOWED;
/// How soon a reverse listener whose address could not be bound is tried again.
const BIND_RETRY: Duration = Duration::from_secs(1);

/// A worker's part in reverse tunnels.
#[derive(Debug, Default)]
pub(super) struct ReverseState {
    /// Server: the shared table of names and owners (`None`: no reverse listeners).
    table: Option<Arc<ReverseTable>>,
    /// Server: each configured listener's name, by index.
    names: Vec<Arc<str>>,
    /// Worker 0: the entry of each listener while it is open.
    listeners: Vec<Option<usize>>,
    /// Worker 0: the table's generation last acted on.
    seen: Option<u64>,
    /// Worker 0: a bind failed; try again then.
    retry_at: Option<Instant>,
    /// Worker 0: listeners whose bind failure was already warned about.
    bind_warned: Vec<bool>,
    /// Client: the services it exposes.
    exposed: Arc<[ExposedService]>,
}

impl ReverseState {
    /// Server: reverse listeners from `table`. Client: exposes `exposed`.
    pub(super) fn new(table: Option<Arc<ReverseTable>>, exposed: Arc<[ExposedService]>) -> Self {
        let names: Vec<Arc<str>> = table
            .as_ref()
            .map(|t| {
                t.specs()
                    .iter()
                    .map(|s| Arc::from(s.name.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            listeners: vec![None; names.len()],
            bind_warned: vec![false; names.len()],
            names,
            table,
            exposed,
            ..Self::default()
        }
    }
}

impl<D: Driver> EventLoop<D> {
    /// Worker 0 of a server, at start: checks that every reverse listener's address can be
    /// bound (a mistake in the config fails the start, not the first client) and keeps open
    /// those that listen with no client ([`WhenAbsent::Reset`]).
    pub(super) fn open_reverse_listeners(&mut self) -> std::io::Result<()> {
        let Some(table) = self.reverse.table.clone() else {
            return Ok(());
        };
        if self.mailbox.index() != 0 {
            return Ok(());
        }
        for (index, spec) in table.specs().into_iter().enumerate() {
            let bound = sockopt::listener(spec.listen, false).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot listen on {} for reverse service {:?}: {e}",
                        spec.listen, spec.name
                    ),
                )
            })?;
            if spec.when_absent == WhenAbsent::Reset {
                let sock = self.io.listener(bound)?;
                self.reverse.listeners[index] =
                    Some(self.add(Entry::ReverseListener { sock, index })?);
                tracing::info!(service = %spec.name, listen = %spec.listen, "reverse listener open (connections are reset until a client exposes it)");
            }
        }
        self.reverse.seen = Some(table.generation());
        Ok(())
    }

    /// Worker 0 of a server: opens the reverse listeners that have an owner now (or listen
    /// regardless) and closes the others, when the table changed or a failed bind is due again.
    pub(super) fn reconcile_reverse(&mut self, now: Instant) {
        let Some(table) = self.reverse.table.clone() else {
            return;
        };
        if self.mailbox.index() != 0 || self.draining_since.is_some() {
            return;
        }
        let generation = table.generation();
        let retry_due = self.reverse.retry_at.is_some_and(|at| at <= now);
        if self.reverse.seen == Some(generation) && !retry_due {
            return;
        }
        self.reverse.seen = Some(generation);
        self.reverse.retry_at = None;
        for (index, spec) in table.specs().into_iter().enumerate() {
            let want = table.should_listen(index);
            match (want, self.reverse.listeners[index]) {
                (true, None) => {
                    let opened = sockopt::listener(spec.listen, false)
                        .and_then(|l| self.io.listener(l))
                        .and_then(|sock| self.add(Entry::ReverseListener { sock, index }));
                    match opened {
                        Ok(k) => {
                            self.reverse.listeners[index] = Some(k);
                            self.reverse.bind_warned[index] = false;
                            tracing::info!(service = %spec.name, listen = %spec.listen, "reverse listener open");
                        }
                        Err(e) => {
                            if !std::mem::replace(&mut self.reverse.bind_warned[index], true) {
                                tracing::warn!(service = %spec.name, listen = %spec.listen, "cannot open the reverse listener: {e}; retrying every {BIND_RETRY:?}");
                            }
                            self.reverse.retry_at = Some(now + BIND_RETRY);
                        }
                    }
                }
                (false, Some(k)) => {
                    self.remove(k);
                    self.reverse.listeners[index] = None;
                    tracing::info!(service = %spec.name, listen = %spec.listen, "no client exposes the service: reverse listener closed");
                }
                _ => {}
            }
        }
    }

    /// On shutdown: the reverse listeners close with the others.
    pub(super) fn close_reverse_listeners(&mut self) {
        for k in std::mem::take(&mut self.reverse.listeners)
            .into_iter()
            .flatten()
        {
            self.remove(k);
        }
    }

    /// Worker 0 of a server: takes the connections of reverse listener entry `key`.
    pub(super) fn accept_reverse(&mut self, key: usize) {
        loop {
            let Some(Entry::ReverseListener { sock, index }) = self.entries.get_mut(key) else {
                return;
            };
            let index = *index;
            match sock.accept() {
                Ok((conn, peer)) => {
                    self.accept_works();
                    self.carry_reverse(index, conn, peer);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => return self.accept_failed(key, e, false),
            }
        }
    }

    /// A connection to reverse listener `index`: a stream of the owning session, here or on
    /// its worker; reset when no client exposes the service.
    fn carry_reverse(&mut self, index: usize, conn: D::Stream, peer: SocketAddr) {
        let Some(table) = &self.reverse.table else {
            return;
        };
        let name = self.reverse.names.get(index).cloned().unwrap_or_default();
        match table.owner(index) {
            None => {
                tracing::debug!(service = %name, %peer, "no client exposes the service: connection reset");
                sockopt::abort_on_close(&conn);
            }
            Some(owner) if owner.worker == self.mailbox.index() => {
                self.open_reverse_stream(owner.session, index, conn, Bytes::new(), peer)
            }
            Some(owner) => match self.io.detach_stream(conn) {
                Ok((sock, early)) => {
                    let msg = Handoff::Reverse {
                        sock,
                        early,
                        session: owner.session,
                        index,
                        peer,
                    };
                    if self.mailbox.send(owner.worker, msg).is_err() {
                        tracing::warn!(service = %name, %peer, "hand-off queue full: connection closed");
                    }
                }
                Err(e) => {
                    tracing::warn!(service = %name, %peer, "cannot hand the connection over: {e}; closed")
                }
            },
        }
    }

    /// A reverse connection handed over by worker 0 for a session of this worker.
    pub(super) fn adopt_reverse(
        &mut self,
        sock: std::net::TcpStream,
        early: Bytes,
        session: SessionId,
        index: usize,
        peer: SocketAddr,
    ) {
        match self.io.stream(sock) {
            Ok(conn) => self.open_reverse_stream(session, index, conn, early, peer),
            Err(e) => tracing::warn!(%peer, "cannot take over a reverse connection: {e}; closed"),
        }
    }

    /// Opens a stream in session `session` for a connection to reverse listener `index`; the
    /// connection holds a place in the backend budget like a backend connection.
    fn open_reverse_stream(
        &mut self,
        session: SessionId,
        index: usize,
        conn: D::Stream,
        early: Bytes,
        peer: SocketAddr,
    ) {
        let name = self.reverse.names.get(index).cloned().unwrap_or_default();
        let Some(skey) = self.endpoint.find(&session) else {
            tracing::debug!(service = %name, %peer, "the exposing session has ended: connection reset");
            return sockopt::abort_on_close(&conn);
        };
        let Some(permit) = self.backends.budget.try_acquire() else {
            tracing::warn!(service = %name, %peer, limit = self.opts.max_backend_connections, "connection budget spent: reverse connection reset");
            return sockopt::abort_on_close(&conn);
        };
        let opened = self.endpoint[skey].session_mut().open_stream(Some(&name));
        self.touch(skey);
        let stream = match opened {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(service = %name, %peer, "cannot open a stream to the client: {e}; connection reset");
                return sockopt::abort_on_close(&conn);
            }
        };
        sockopt::tune_app(&conn);
        tracing::info!(stream, service = %name, %peer, "reverse stream opened");
        let app = AppConn::reverse(conn, skey, stream, peer, permit, early);
        match self.add(Entry::App(Box::new(app))) {
            Ok(k) => {
                self.endpoint[skey].data_mut().streams.insert(stream, k);
                self.stream_to_session(k);
            }
            Err(e) => {
                tracing::warn!("cannot register a reverse connection: {e}");
                self.refuse_stream(skey, stream, RESET_APP_ERROR);
            }
        }
    }

    /// Server: a session's client exposes `names` now: it owns those the configuration has
    /// (the newest session wins a name another one had); worker 0 opens their listeners.
    pub(super) fn peer_exposed(&mut self, skey: SessionKey, names: Vec<String>) {
        let Some(id) = self.endpoint.get(skey).map(|s| *s.session().id()) else {
            return;
        };
        let Some(table) = self.reverse.table.clone() else {
            tracing::info!(session = %hex(&id), ?names, "the client exposes services, but this server has no reverse listeners");
            return;
        };
        let owner = Owner {
            worker: self.mailbox.index(),
            session: id,
        };
        let claims = table.claim(owner, &names);
        for (name, listen, before) in &claims.taken {
            match before {
                Some(old) => {
                    tracing::warn!(session = %hex(&id), service = %name, replaced = %hex(&old.session), "a newer session exposes the service: it takes the reverse listener (the newest wins)")
                }
                None => {
                    tracing::info!(session = %hex(&id), service = %name, %listen, "the client exposes the service")
                }
            }
        }
        for name in &claims.released {
            tracing::info!(session = %hex(&id), service = %name, "the client no longer exposes the service");
        }
        for name in &claims.unknown {
            tracing::warn!(session = %hex(&id), service = %name, "the client exposes a service no [[server.reverse]] names: ignored");
        }
        self.reverse_changed();
    }

    /// Server: session `skey` is ending; the names it owned lose their owner.
    pub(super) fn release_reverse(&mut self, skey: SessionKey) {
        let (Some(table), Some(id)) = (
            self.reverse.table.clone(),
            self.endpoint.get(skey).map(|s| *s.session().id()),
        ) else {
            return;
        };
        let released = table.release(Owner {
            worker: self.mailbox.index(),
            session: id,
        });
        if !released.is_empty() {
            tracing::info!(session = %hex(&id), services = ?released, "the exposing session ended");
            self.reverse_changed();
        }
    }

    /// The table changed: worker 0 acts on it now (this worker) or when woken.
    fn reverse_changed(&mut self) {
        if self.mailbox.index() == 0 {
            self.reconcile_reverse(Instant::now());
        } else {
            self.mailbox.wake(0);
        }
    }

    /// Client: announces the exposed services on session `skey` (every new session).
    pub(super) fn expose_on(&mut self, skey: SessionKey) {
        if self.reverse.exposed.is_empty() {
            return;
        }
        let names: Vec<&str> = self
            .reverse
            .exposed
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        if let Some(slot) = self.endpoint.get_mut(skey)
            && let Err(e) = slot.session_mut().expose(&names)
        {
            tracing::error!("cannot expose {names:?}: {e}");
        }
        self.touch(skey);
    }

    /// Client: the server opened `stream` for service `target`: connect it to the exposed
    /// target (within the connection budget and connect timeout), or reset it (code 5) when
    /// this client does not expose that name; nothing else is ever connected.
    pub(super) fn open_exposed(
        &mut self,
        skey: SessionKey,
        stream: StreamId,
        target: Option<String>,
    ) {
        debug_assert!(matches!(self.role, Role::Client { .. }));
        let addr = target
            .as_deref()
            .and_then(|name| self.reverse.exposed.iter().find(|e| e.name == name))
            .map(|e| e.target);
        match addr {
            Some(addr) => self.route_stream(skey, stream, target, Route::Connect(addr)),
            None => {
                tracing::warn!(
                    stream,
                    service = target.as_deref().unwrap_or(""),
                    "the server opened a stream for a service this client does not expose; \
                     resetting it (code {RESET_NOT_EXPOSED})"
                );
                self.refuse_stream(skey, stream, RESET_NOT_EXPOSED);
            }
        }
    }
}
