//! Application sockets: a client's application connections and a server's target connections,
//! each carrying one stream.
//!
//! Owns: [`AppConn`] (its socket, the bytes the stream has not taken yet, its send queue and
//! half-closes) and opening a stream for an accepted application connection (client). Must not
//! touch: in-process streams ([`super::local_streams`]), tunnels, or how a server picks and
//! bounds its backend connections ([`super::backends`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::connect_wait::WaitingApp;
use super::proxy::{close_after_reply, send_now};
use super::streams::{After, StreamConn};
use super::{APP_QUEUE, Entry, EventLoop, Outbox, RESET_APP_ERROR};
use crate::endpoint::SessionKey;
use crate::proxy::{ReplyKind, Verdict};
use crate::runtime::ClientForward;
use crate::runtime::io::{Driver, IoStream};
use crate::runtime::reset_code;
use crate::runtime::resolver::BackendPermit;
use crate::runtime::sockopt;
use crate::session::{ReadOutcome, Session, StreamId};

#[derive(Debug)]
pub(super) struct AppConn<D: Driver> {
    pub(super) sock: D::Stream,
    session: SessionKey,
    stream: StreamId,
    pub(super) connecting: bool,
    /// Bytes read from the socket that the stream has not taken yet; while set, the socket is
    /// not read (the stream's `StreamWritable` resumes it).
    unsent: Option<Bytes>,
    read_eof: bool,
    /// An event saw the peer's FIN: reads go on to the end even after a short one
    /// ([`Driver::SHORT_READ_DRAINS`]).
    read_closed: bool,
    tx: Outbox,
    fin_pending: bool,
    write_closed: bool,
    target: SocketAddr,
    /// Server: this backend connection's place in the process-wide budget.
    _permit: Option<BackendPermit>,
    /// Client proxy connection: the server's verdict has not come yet, and this is how the
    /// application is told. Until then the socket is not read and nothing is written to it.
    verdict: Option<ReplyKind>,
    /// Bytes the stream took from this connection (for the metrics).
    pub(super) bytes_to_peer: u64,
    /// Bytes read from the stream for this connection (for the metrics).
    pub(super) bytes_from_peer: u64,
    /// Client: the forward the application connected to (for the log).
    forward: Option<Arc<ClientForward>>,
    /// When the stream was opened (the log gives each stream's duration).
    opened_at: Instant,
}

impl<D: Driver> AppConn<D> {
    /// A connection carrying `stream`; `connecting` while a target connect is in progress.
    fn new(
        sock: D::Stream,
        session: SessionKey,
        stream: StreamId,
        connecting: bool,
        target: SocketAddr,
    ) -> Self {
        Self {
            sock,
            session,
            stream,
            connecting,
            unsent: None,
            read_eof: false,
            read_closed: false,
            tx: Outbox::default(),
            fin_pending: false,
            write_closed: false,
            target,
            _permit: None,
            verdict: None,
            bytes_to_peer: 0,
            bytes_from_peer: 0,
            forward: None,
            opened_at: Instant::now(),
        }
    }

    /// Client: a proxy connection whose stream was opened for it; `first` (an HTTP request
    /// head, bytes the application sent early) goes on the stream before anything else.
    pub(super) fn proxied(
        sock: D::Stream,
        session: SessionKey,
        stream: StreamId,
        peer: SocketAddr,
        reply: ReplyKind,
        first: Bytes,
    ) -> Self {
        Self {
            verdict: Some(reply),
            unsent: (!first.is_empty()).then_some(first),
            ..Self::new(sock, session, stream, false, peer)
        }
    }

    /// A proxy connection of `stream` still waiting for its verdict is told it timed out (and
    /// closed by the caller); false when it is another connection or already answered.
    pub(super) fn give_up_verdict(&mut self, session: SessionKey, stream: StreamId) -> bool {
        if self.session != session || self.stream != stream {
            return false;
        }
        let Some(kind) = self.verdict.take() else {
            return false;
        };
        send_now(&self.sock, &kind.reply(Verdict::TimedOut));
        close_after_reply(&self.sock);
        true
    }

    /// Client: the forward the application connected to.
    pub(super) fn forward(&self) -> Option<&Arc<ClientForward>> {
        self.forward.as_ref()
    }

    /// How long ago its stream was opened.
    pub(super) fn age(&self) -> Duration {
        self.opened_at.elapsed()
    }

    /// Server: a connection being made to `target` for `stream`, holding `permit`.
    pub(super) fn backend(
        sock: D::Stream,
        session: SessionKey,
        stream: StreamId,
        target: SocketAddr,
        permit: BackendPermit,
    ) -> Self {
        Self {
            _permit: Some(permit),
            ..Self::new(sock, session, stream, true, target)
        }
    }

    /// Server: a connection accepted on a reverse listener, carried by `stream` (which the
    /// server opened), holding `permit`; `early` is what it sent before it was handed over.
    pub(super) fn reverse(
        sock: D::Stream,
        session: SessionKey,
        stream: StreamId,
        peer: SocketAddr,
        permit: BackendPermit,
        early: Bytes,
    ) -> Self {
        Self {
            _permit: Some(permit),
            unsent: (!early.is_empty()).then_some(early),
            ..Self::new(sock, session, stream, false, peer)
        }
    }

    /// Still connecting, for `stream` of `session` (a slab key may have been reused).
    pub(super) fn is_connecting_for(&self, session: SessionKey, stream: StreamId) -> bool {
        self.connecting && self.session == session && self.stream == stream
    }

    /// Both directions are finished.
    fn finished(&self) -> After {
        if self.read_eof && self.write_closed {
            After::Close
        } else {
            After::Keep
        }
    }
}

impl<D: Driver> StreamConn for AppConn<D> {
    fn session(&self) -> SessionKey {
        self.session
    }

    fn stream(&self) -> StreamId {
        self.stream
    }

    fn to_session(&mut self, session: &mut Session, buf: &mut [u8]) -> After {
        // The last read emptied the socket: its bytes go to the session, and the next read
        // waits for the next event.
        let mut drained = false;
        loop {
            if self.connecting || self.read_eof {
                return After::Keep;
            }
            if let Some(pending) = self.unsent.take() {
                match session.write(self.stream, pending.clone()) {
                    Ok(n) => {
                        self.bytes_to_peer += n as u64;
                        if n < pending.len() {
                            self.unsent = Some(pending.slice(n..));
                            return After::Keep;
                        }
                    }
                    Err(_) => return After::Close,
                }
            }
            if self.verdict.is_some() {
                // A proxy's application waits for its reply before it sends more.
                return After::Keep;
            }
            if drained {
                return After::Keep;
            }
            match self.sock.read_bytes(buf) {
                Ok(b) if b.is_empty() => {
                    self.read_eof = true;
                    let _ = session.shutdown(self.stream);
                    return self.finished();
                }
                Ok(b) => {
                    tracing::trace!(stream = self.stream, bytes = b.len(), "data to the peer");
                    drained = D::SHORT_READ_DRAINS && !self.read_closed && b.len() < buf.len();
                    self.unsent = Some(b)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return After::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::info!(
                        stream = self.stream,
                        "application connection failed: {e}; resetting the stream"
                    );
                    return After::Reset(RESET_APP_ERROR);
                }
            }
        }
    }

    fn to_app(&mut self, session: &mut Session) -> After {
        if self.connecting || self.verdict.is_some() {
            return After::Keep;
        }
        loop {
            if let Err(e) = self.tx.flush(&mut self.sock) {
                tracing::info!(
                    stream = self.stream,
                    "writing to the application failed: {e}; resetting the stream"
                );
                return After::Reset(RESET_APP_ERROR);
            }
            if self.tx.len >= APP_QUEUE || self.fin_pending || self.write_closed {
                break;
            }
            match session.read(self.stream, APP_QUEUE) {
                Ok(ReadOutcome::Data(b)) => {
                    self.bytes_from_peer += b.len() as u64;
                    tracing::trace!(stream = self.stream, bytes = b.len(), "data from the peer");
                    self.tx.push(b)
                }
                Ok(ReadOutcome::Fin) => self.fin_pending = true,
                Ok(ReadOutcome::WouldBlock) | Err(_) => break,
            }
        }
        if self.fin_pending && self.tx.len == 0 && !self.write_closed {
            self.write_closed = true;
            let _ = self.sock.shutdown_write();
            return self.finished();
        }
        After::Keep
    }

    fn peer_reset(&mut self, code: u32) {
        if let Some(kind) = self.verdict.take() {
            // The server's verdict is a refusal: the application hears why, then a clean close.
            let verdict = reset_code::verdict(code);
            tracing::info!(
                stream = self.stream,
                code,
                ?verdict,
                "proxy request refused by the server"
            );
            send_now(&self.sock, &kind.reply(verdict));
            close_after_reply(&self.sock);
            return;
        }
        sockopt::abort_on_close(&self.sock);
    }

    fn confirmed(&mut self) {
        if let Some(kind) = self.verdict.take() {
            self.tx.push(Bytes::from(kind.reply(Verdict::Connected)));
        }
    }

    fn stream_closed(&mut self) -> bool {
        self.finished() == After::Close
    }

    fn session_lost(&mut self) {
        if let Some(kind) = self.verdict.take() {
            send_now(&self.sock, &kind.reply(Verdict::Failed));
            close_after_reply(&self.sock);
            return;
        }
        sockopt::abort_on_close(&self.sock);
    }
}

impl<D: Driver> EventLoop<D> {
    /// Socket readiness of an application connection; `read_closed` as in
    /// [`EventLoop::on_ready`] (remembered: a read put off until later still reads to the end).
    pub(super) fn on_app(&mut self, key: usize, readable: bool, writable: bool, read_closed: bool) {
        let Some(Entry::App(app)) = self.entries.get_mut(key) else {
            return;
        };
        app.read_closed |= read_closed;
        if app.connecting {
            match app.sock.take_error() {
                Ok(None) if app.sock.peer_addr().is_ok() => {
                    app.connecting = false;
                    tracing::debug!(stream = app.stream, target = %app.target, "connected to target");
                    // The client may be waiting for this (a proxy's verdict, PROTOCOL.md §4.8).
                    let (skey, stream) = (app.session, app.stream);
                    if let Some(s) = self.endpoint.get_mut(skey) {
                        s.session_mut().confirm_stream(stream);
                        self.touch(skey);
                    }
                }
                Ok(None) => return,
                Ok(Some(e)) | Err(e) => {
                    tracing::warn!(stream = app.stream, target = %app.target, "cannot connect to target: {e}; resetting the stream");
                    self.after(key, After::Reset(reset_code::for_connect_error(&e)));
                    return;
                }
            }
        }
        if writable {
            self.stream_to_app(key);
        }
        if readable {
            self.stream_to_session(key);
        }
    }

    /// Client: opens a stream for an application connection, or holds the connection until a
    /// tunnel can carry it ([`super::connect_wait`]).
    pub(super) fn start_client_stream(&mut self, skey: SessionKey, waiting: WaitingApp<D>) {
        let Some(slot) = self.endpoint.get_mut(skey) else {
            return;
        };
        let session = slot.session_mut();
        if session.is_established() && session.active_tunnels() == 0 {
            // Every tunnel is down: a stream opened now would be sent whenever the server
            // comes back, however late; the connection waits at most connect_wait instead.
            return self.hold_app(skey, waiting);
        }
        let forward = waiting.forward.clone();
        let target = forward.target.as_deref();
        let opened = session.open_stream(target);
        // Even a refused open may have changed the session: without zero-RTT the first stream
        // is what dials the pool, so its timers must be looked at again.
        self.touch(skey);
        match opened {
            Ok(stream) => {
                let conn = waiting.conn;
                let peer = conn
                    .peer_addr()
                    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                tracing::debug!(
                    stream,
                    %peer,
                    forward = forward.name.as_deref().unwrap_or_default(),
                    listen = %forward.listen,
                    target = target.unwrap_or("<server default>"),
                    "stream opened"
                );
                let app = AppConn {
                    forward: Some(forward.clone()),
                    ..AppConn::new(conn, skey, stream, false, peer)
                };
                match self.add(Entry::App(Box::new(app))) {
                    Ok(k) => {
                        self.endpoint[skey].data_mut().streams.insert(stream, k);
                        self.stream_to_session(k);
                    }
                    Err(e) => {
                        tracing::warn!("cannot register application socket: {e}");
                        self.refuse_stream(skey, stream, RESET_APP_ERROR);
                    }
                }
            }
            Err(crate::StreamError::NotReady) if self.refused_everywhere() => {
                // The server refuses this client for good (logged once, when it did): the
                // application learns at once, instead of waiting for the next attempt.
                tracing::debug!("application connection closed: the server refuses this client");
            }
            Err(crate::StreamError::NotReady) => {
                // Held until a tunnel is up.
                self.hold_app(skey, waiting);
            }
            Err(
                e @ (crate::StreamError::StreamLimit | crate::StreamError::LocalStreamLimit(_)),
            ) => {
                // A limit refuses at once (issue 10): the application sees a reset, not a
                // connection that hangs until connect_wait.
                sockopt::abort_on_close(&waiting.conn);
                self.note_stream_limit(&forward, &e);
            }
            Err(e) => {
                tracing::warn!("cannot open a stream: {e}; closing the application connection");
            }
        }
    }
}
