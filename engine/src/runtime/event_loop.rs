//! The event loop: one thread driving sessions over sockets, generic over the I/O driver.
//!
//! Both drivers (mio and io_uring) run this same code: it only uses the readiness-shaped socket
//! operations of [`super::io`], so session servicing, event handling and back-pressure are
//! written once.
//!
//! Owns: every socket of its runtime (listeners, tunnels, application connections, server
//! handshakes in progress), their user-space send queues, and the mapping between sockets and
//! (session, tunnel slot) or (session, stream). Must not touch: protocol decisions — it calls the
//! session API exactly as the driver contract in [`crate::session`] says.
//!
//! Back-pressure is end to end: an application socket is read only while its stream's send buffer
//! has room (a short `write` pauses it until `StreamWritable`), and a stream is read from the
//! session only while its application socket keeps up (an unflushed queue pauses it until the
//! socket is writable again), so credit, not memory, absorbs a slow side.
//!
//! In-process streams (the library API) are entries too ([`Entry::Local`]), serviced by
//! [`local_streams`] the same way, with rings in place of a socket.

mod local_streams;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use slab::Slab;

use super::io::{Driver, IoListener, IoStream, Ready};
use super::sockopt;
use super::worker::{Handoff, Mailbox, home_worker};
use super::{Route, RuntimeOptions, TargetResolver};
use crate::config::Config;
use crate::handshake::{
    Admission, HELLO_FLAG_RESUME, HelloStatus, ServerHandshake, ServerProgress,
    client_hello_session_id,
};
use crate::session::{Event, ReadOutcome, Session, StreamId};
use local_streams::{LocalConn, LocalState};

/// User-space bytes queued towards an application before its stream is read further.
const APP_QUEUE: usize = 256 * 1024;
/// Reset code for streams whose target could not be reached.
const RESET_CONNECT_FAILED: u32 = 1;
/// Reset code for streams whose application connection failed.
const RESET_APP_ERROR: u32 = 2;

/// How far a read got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    /// The socket has nothing more now.
    Drained,
    /// A batch was read; more may be waiting.
    Batch,
    /// The peer closed its side.
    Eof,
}

/// Bytes waiting to be written to a socket, written with vectored writes.
#[derive(Debug, Default)]
struct Outbox {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Outbox {
    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.chunks.push_back(b);
        }
    }

    /// Writes as much as the socket takes; `Ok(true)` when empty.
    fn flush(&mut self, sock: &mut impl IoStream) -> io::Result<bool> {
        while !self.chunks.is_empty() {
            match sock.write_chunks(&self.chunks) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(mut n) => {
                    self.len -= n;
                    while n > 0 {
                        let Some(front) = self.chunks.front_mut() else {
                            break;
                        };
                        if front.len() <= n {
                            n -= front.len();
                            self.chunks.pop_front();
                        } else {
                            let _ = front.split_to(n);
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

#[derive(Debug)]
enum Entry<D: Driver> {
    /// Client: applications connect here.
    AppListener {
        sock: D::Listener,
        target: Option<String>,
    },
    /// Server: tunnels connect here.
    TunnelListener { sock: D::Listener },
    /// Server: a tunnel connection whose handshake is in progress.
    Pending {
        sock: D::Stream,
        hs: Box<ServerHandshake>,
        rx: BytesMut,
        tx: Outbox,
        peer: SocketAddr,
        /// Known to belong on this worker (its session id was read, or there is one worker).
        routed: bool,
    },
    /// A tunnel of a session.
    Tunnel {
        sock: D::Stream,
        session: usize,
        slot: usize,
        rx: BytesMut,
        tx: Outbox,
        connecting: bool,
    },
    /// An application connection (client) or target connection (server) carrying a stream.
    App(Box<AppConn<D>>),
    /// An in-process stream (no socket).
    Local(Box<LocalConn>),
}

#[derive(Debug)]
struct AppConn<D: Driver> {
    sock: D::Stream,
    session: usize,
    stream: StreamId,
    connecting: bool,
    /// Bytes read from the socket that the stream has not taken yet; while set, the socket is
    /// not read (the stream's `StreamWritable` resumes it).
    unsent: Option<Bytes>,
    read_eof: bool,
    tx: Outbox,
    fin_pending: bool,
    write_closed: bool,
    target: SocketAddr,
}

impl<D: Driver> AppConn<D> {
    /// A connection carrying `stream`; `connecting` while a target connect is in progress.
    fn new(
        sock: D::Stream,
        session: usize,
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
            tx: Outbox::default(),
            fin_pending: false,
            write_closed: false,
            target,
        }
    }
}

#[derive(Debug)]
struct SessionSlot<D: Driver> {
    session: Session,
    tunnels: Vec<Option<usize>>,
    streams: HashMap<StreamId, usize>,
    /// Client: application connections accepted before the session could open streams.
    waiting_apps: VecDeque<(D::Stream, Option<String>)>,
}

impl<D: Driver> SessionSlot<D> {
    fn new(session: Session) -> Self {
        let pool = session.tunnel_count();
        Self {
            session,
            tunnels: vec![None; pool],
            streams: HashMap::new(),
            waiting_apps: VecDeque::new(),
        }
    }
}

enum Role {
    Client { server: SocketAddr },
    Server { resolve: TargetResolver },
}

/// One event loop: a client (one session) or a server (many sessions).
pub(super) struct EventLoop<D: Driver> {
    io: D,
    ready: Vec<Ready>,
    role: Role,
    opts: RuntimeOptions,
    config: Arc<Config>,
    entries: Slab<Entry<D>>,
    sessions: Slab<SessionSlot<D>>,
    by_id: HashMap<[u8; 16], usize>,
    stop: Arc<AtomicBool>,
    draining_since: Option<Instant>,
    /// Listeners whose accept failed with connections possibly still queued.
    accept_retry: Vec<usize>,
    rng: StdRng,
    scratch: Vec<Bytes>,
    read_buf: Vec<u8>,
    /// This worker's ends of the rings to the other workers.
    mailbox: Mailbox,
    /// Server: sessions on all workers together (admission against `max_sessions`).
    sessions_total: Arc<AtomicUsize>,
    /// In-process streams, once a hub is attached.
    local: Option<LocalState>,
}

/// What an event loop shares with the other workers of its runtime.
pub(super) struct WorkerContext {
    /// Set to stop every worker.
    pub(super) stop: Arc<AtomicBool>,
    /// This worker's rings.
    pub(super) mailbox: Mailbox,
    /// Sessions on all workers.
    pub(super) sessions_total: Arc<AtomicUsize>,
}

impl<D: Driver> EventLoop<D> {
    fn new(io: D, opts: RuntimeOptions, role: Role, ctx: WorkerContext) -> Self {
        let config = Arc::new(opts.engine.clone());
        let read_buf = vec![0; opts.read_chunk.max(4096)];
        Self {
            io,
            ready: Vec::new(),
            role,
            config,
            opts,
            entries: Slab::new(),
            sessions: Slab::new(),
            by_id: HashMap::new(),
            stop: ctx.stop,
            draining_since: None,
            accept_retry: Vec::new(),
            rng: StdRng::from_os_rng(),
            scratch: Vec::new(),
            read_buf,
            mailbox: ctx.mailbox,
            sessions_total: ctx.sessions_total,
            local: None,
        }
    }

    pub(super) fn server(
        io: D,
        opts: RuntimeOptions,
        listener: std::net::TcpListener,
        resolve: TargetResolver,
        ctx: WorkerContext,
    ) -> io::Result<Self> {
        let mut el = Self::new(io, opts, Role::Server { resolve }, ctx);
        let sock = el.io.listener(listener)?;
        el.add(Entry::TunnelListener { sock })?;
        Ok(el)
    }

    pub(super) fn client(
        io: D,
        opts: RuntimeOptions,
        server: SocketAddr,
        listeners: Vec<(std::net::TcpListener, Option<String>)>,
        ctx: WorkerContext,
    ) -> io::Result<Self> {
        let mut el = Self::new(io, opts, Role::Client { server }, ctx);
        for (sock, target) in listeners {
            let sock = el.io.listener(sock)?;
            el.add(Entry::AppListener { sock, target })?;
        }
        let session = Session::client_seeded(el.config.clone(), Instant::now(), el.seed());
        el.sessions.insert(SessionSlot::new(session));
        Ok(el)
    }

    /// A fresh 256-bit seed: a client session draws its 128-bit id and nonces from it.
    fn seed(&mut self) -> [u8; 32] {
        let mut seed = [0; 32];
        self.rng.fill_bytes(&mut seed);
        seed
    }

    fn add(&mut self, mut entry: Entry<D>) -> io::Result<usize> {
        let key = self.entries.vacant_key();
        match &mut entry {
            Entry::AppListener { sock, .. } | Entry::TunnelListener { sock } => {
                self.io.register_listener(sock, key)?
            }
            Entry::Pending { sock, .. } => self.io.register_stream(sock, key, false)?,
            Entry::Tunnel {
                sock, connecting, ..
            } => self.io.register_stream(sock, key, *connecting)?,
            Entry::App(app) => self
                .io
                .register_stream(&mut app.sock, key, app.connecting)?,
            Entry::Local(_) => {}
        }
        Ok(self.entries.insert(entry))
    }

    fn remove(&mut self, key: usize) -> Option<Entry<D>> {
        let mut entry = self.entries.try_remove(key)?;
        match &mut entry {
            Entry::AppListener { sock, .. } | Entry::TunnelListener { sock } => {
                self.io.deregister_listener(sock)
            }
            Entry::Pending { sock, .. } | Entry::Tunnel { sock, .. } => {
                self.io.deregister_stream(sock)
            }
            Entry::App(app) => self.io.deregister_stream(&mut app.sock),
            Entry::Local(_) => {}
        }
        Some(entry)
    }

    /// Runs until stopped and drained.
    pub(super) fn run(&mut self) {
        loop {
            let now = Instant::now();
            let timeout = self
                .sessions
                .iter()
                .filter_map(|(_, s)| s.session.poll_timeout())
                .min()
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_millis(250));
            // A full ring to another worker is retried soon rather than on the next event.
            let timeout = if self.mailbox.retry() {
                timeout.min(Duration::from_millis(1))
            } else {
                timeout
            };
            if let Err(e) = self.io.wait(timeout, &mut self.ready) {
                tracing::error!("event loop wait failed ({} driver): {e}", D::NAME);
                return;
            }
            while let Some(msg) = self.mailbox.receive() {
                self.adopt(msg);
            }
            let ready = std::mem::take(&mut self.ready);
            for &(key, readable, writable) in &ready {
                self.on_ready(key, readable, writable);
            }
            self.ready = ready;
            self.ready.clear();
            self.poll_local();
            let now = Instant::now();
            for key in self.session_keys() {
                let s = &mut self.sessions[key].session;
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now);
                }
                self.service(key);
            }
            self.expire_handshakes(now);
            for key in std::mem::take(&mut self.accept_retry) {
                self.on_ready(key, true, false);
            }
            if self.stop.load(Ordering::SeqCst) && self.drain(now) {
                tracing::info!("stopped");
                return;
            }
        }
    }

    fn session_keys(&self) -> Vec<usize> {
        self.sessions.iter().map(|(k, _)| k).collect()
    }

    /// Graceful stop: no new connections, GO_AWAY, wait for streams up to the drain timeout.
    /// True when done.
    fn drain(&mut self, now: Instant) -> bool {
        if self.draining_since.is_none() {
            self.draining_since = Some(now);
            tracing::info!(
                "shutting down: no new connections; open streams have {:?} to finish",
                self.opts.drain_timeout
            );
            let listeners: Vec<usize> = self
                .entries
                .iter()
                .filter(|(_, e)| {
                    matches!(e, Entry::AppListener { .. } | Entry::TunnelListener { .. })
                })
                .map(|(k, _)| k)
                .collect();
            for k in listeners {
                self.remove(k);
            }
            for key in self.session_keys() {
                self.sessions[key].session.go_away(now);
                self.service(key);
            }
        }
        let all_done = self
            .sessions
            .iter()
            .all(|(_, s)| s.session.is_closed() || s.streams.is_empty());
        let expired = self
            .draining_since
            .is_some_and(|since| now.saturating_duration_since(since) >= self.opts.drain_timeout);
        if all_done || expired {
            if expired && !all_done {
                tracing::warn!("drain timeout: closing sessions with streams still open");
            }
            for key in self.session_keys() {
                self.sessions[key]
                    .session
                    .close(crate::error::code::SHUTDOWN, "shutting down");
                self.service(key);
            }
            return true;
        }
        false
    }

    // ----- Readiness -----------------------------------------------------------------------

    fn on_ready(&mut self, key: usize, readable: bool, writable: bool) {
        let Some(entry) = self.entries.get(key) else {
            return;
        };
        match entry {
            Entry::AppListener { .. } => self.accept_apps(key),
            Entry::TunnelListener { .. } => self.accept_tunnels(key),
            Entry::Pending { .. } => self.on_pending(key, readable, writable),
            Entry::Tunnel { .. } => self.on_tunnel(key, readable, writable),
            Entry::App(_) => self.on_app(key, readable, writable),
            Entry::Local(_) => {}
        }
    }

    fn accept_apps(&mut self, key: usize) {
        loop {
            let Some(Entry::AppListener { sock, target }) = self.entries.get_mut(key) else {
                return;
            };
            let target = target.clone();
            match sock.accept() {
                Ok((conn, peer)) => {
                    sockopt::tune_app(&conn);
                    tracing::debug!(%peer, "application connected");
                    let Some((skey, _)) = self.sessions.iter().next() else {
                        return;
                    };
                    self.start_client_stream(skey, conn, target);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Readiness will not fire again for connections already queued: retry
                    // from the loop (e.g. once file descriptors are free again after EMFILE).
                    tracing::warn!("accept failed: {e}; retrying shortly");
                    if !self.accept_retry.contains(&key) {
                        self.accept_retry.push(key);
                    }
                    return;
                }
            }
        }
    }

    fn start_client_stream(&mut self, skey: usize, conn: D::Stream, target: Option<String>) {
        let slot = &mut self.sessions[skey];
        match slot.session.open_stream(target.as_deref()) {
            Ok(stream) => {
                let peer = conn
                    .peer_addr()
                    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                tracing::info!(stream, %peer, "stream opened");
                let app = AppConn::new(conn, skey, stream, false, peer);
                match self.add(Entry::App(Box::new(app))) {
                    Ok(k) => {
                        self.sessions[skey].streams.insert(stream, k);
                        self.read_app(k);
                    }
                    Err(e) => {
                        tracing::warn!("cannot register application socket: {e}");
                        let _ = self.sessions[skey].session.reset(stream, RESET_APP_ERROR);
                    }
                }
            }
            Err(crate::StreamError::NotReady) | Err(crate::StreamError::StreamLimit) => {
                // Held until a tunnel is up or the peer grants more streams.
                slot.waiting_apps.push_back((conn, target));
            }
            Err(e) => {
                tracing::warn!("cannot open a stream: {e}; closing the application connection");
            }
        }
    }

    fn accept_tunnels(&mut self, key: usize) {
        loop {
            let Some(Entry::TunnelListener { sock }) = self.entries.get_mut(key) else {
                return;
            };
            match sock.accept() {
                Ok((conn, peer)) => {
                    let cc = sockopt::tune_tunnel(&conn, &self.opts.tunnel_sockets);
                    tracing::debug!(%peer, congestion = %cc, "tunnel connection accepted");
                    let c = &self.config;
                    let hs = ServerHandshake::new(
                        &c.psk,
                        c.pool_size,
                        c.transport_params(),
                        c.handshake_timeout,
                        Instant::now(),
                        &mut self.rng,
                    );
                    let entry = Entry::Pending {
                        sock: conn,
                        hs: Box::new(hs),
                        rx: BytesMut::new(),
                        tx: Outbox::default(),
                        peer,
                        routed: self.mailbox.workers() == 1,
                    };
                    if let Err(e) = self.add(entry) {
                        tracing::warn!("cannot register tunnel socket: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Readiness will not fire again for connections already queued: retry
                    // from the loop (e.g. once file descriptors are free again after EMFILE).
                    tracing::warn!("accept failed: {e}; retrying shortly");
                    if !self.accept_retry.contains(&key) {
                        self.accept_retry.push(key);
                    }
                    return;
                }
            }
        }
    }

    /// Reads into `rx` until the socket would block, it closes, or `rx` holds a batch worth
    /// handing to the session first. Readiness is edge-triggered: the caller must come back
    /// while this says `Batch`.
    fn read_into(sock: &mut D::Stream, rx: &mut BytesMut, buf: &mut [u8]) -> io::Result<ReadState> {
        loop {
            match sock.read_append(rx, buf) {
                Ok(0) => return Ok(ReadState::Eof),
                Ok(_) => {
                    if rx.len() >= 4 * buf.len() {
                        return Ok(ReadState::Batch);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadState::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn on_pending(&mut self, key: usize, readable: bool, _writable: bool) {
        let now = Instant::now();
        let Some(Entry::Pending {
            sock,
            hs,
            rx,
            tx,
            peer,
            routed,
        }) = self.entries.get_mut(key)
        else {
            return;
        };
        let peer = *peer;
        let mut eof = false;
        if readable {
            // A handshake is small: bound what a stranger can make us buffer.
            match Self::read_into(sock, rx, &mut self.read_buf) {
                Ok(state) => eof = state == ReadState::Eof,
                Err(e) => {
                    tracing::info!(%peer, "tunnel connection failed during handshake: {e}");
                    self.remove(key);
                    return;
                }
            }
        }
        if !*routed {
            match client_hello_session_id(rx) {
                Ok(None) if !eof => return,
                Ok(Some(id)) => {
                    let home = home_worker(&id, self.mailbox.workers());
                    if home != self.mailbox.index() {
                        self.hand_over(key, home);
                        return;
                    }
                }
                // Not a ClientHello, or cut short: the handshake here says why.
                Ok(None) | Err(_) => {}
            }
            *routed = true;
        }
        let by_id = &self.by_id;
        let full = self.sessions_total.load(Ordering::Relaxed) >= self.opts.max_sessions;
        let result = hs.handle_input(now, rx, |hello| match by_id.get(&hello.session_id) {
            Some(_) => Admission::Admit,
            None if hello.flags & HELLO_FLAG_RESUME != 0 => {
                Admission::Refuse(HelloStatus::UnknownSession)
            }
            None if full => Admission::Refuse(HelloStatus::TooManySessions),
            None => Admission::Admit,
        });
        tx.push(hs.take_output().freeze());
        let flushed = tx.flush(sock);
        match result {
            Ok(ServerProgress::Pending) => {
                if eof {
                    tracing::info!(%peer, "tunnel connection closed during handshake");
                    self.remove(key);
                } else if flushed.is_err() {
                    self.remove(key);
                }
            }
            Ok(ServerProgress::Accepted(acc)) => {
                let Some(Entry::Pending { sock, rx, tx, .. }) = self.remove(key) else {
                    return;
                };
                let skey = match self.by_id.get(&acc.session_id) {
                    Some(&k) => {
                        self.sessions[k].session.attach_tunnel(now, &acc);
                        k
                    }
                    None => {
                        let seed = self.rng.next_u64();
                        let session = Session::server(self.config.clone(), now, &acc, seed);
                        let k = self.sessions.insert(SessionSlot::new(session));
                        self.by_id.insert(acc.session_id, k);
                        self.sessions_total.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(session = %hex(&acc.session_id), %peer, pool = acc.pool_size, "session started");
                        k
                    }
                };
                let slot_index = acc.tunnel_index as usize;
                let entry = Entry::Tunnel {
                    sock,
                    session: skey,
                    slot: slot_index,
                    rx,
                    tx,
                    connecting: false,
                };
                match self.add(entry) {
                    Ok(tk) => {
                        let slots = &mut self.sessions[skey].tunnels;
                        if slots.len() <= slot_index {
                            slots.resize(slot_index + 1, None);
                        }
                        if let Some(old) = slots[slot_index].replace(tk) {
                            self.remove(old);
                        }
                        tracing::info!(session = %hex(&acc.session_id), tunnel = slot_index, %peer, rtt = ?acc.rtt, "tunnel established");
                        // Bytes after ClientAuth belong to the session, and more may wait in
                        // the socket (0-RTT data right behind the handshake).
                        self.on_tunnel(tk, true, true);
                    }
                    Err(e) => tracing::warn!("cannot register tunnel: {e}"),
                }
            }
            Err(e) => {
                tracing::warn!(%peer, "tunnel handshake failed: {e}; connection closed");
                self.remove(key);
            }
        }
    }

    /// Passes a tunnel connection to the worker that owns its session.
    fn hand_over(&mut self, key: usize, home: usize) {
        let Some(Entry::Pending {
            sock,
            hs,
            mut rx,
            peer,
            ..
        }) = self.entries.try_remove(key)
        else {
            return;
        };
        match self.io.detach_stream(sock) {
            Ok((sock, received)) => {
                rx.extend_from_slice(&received);
                tracing::debug!(%peer, from = self.mailbox.index(), to = home, "tunnel handed to its session's worker");
                self.mailbox.send(
                    home,
                    Handoff::Tunnel {
                        sock,
                        received: rx,
                        handshake: hs,
                        peer,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(%peer, "cannot hand the tunnel to worker {home}: {e}; connection closed")
            }
        }
    }

    /// Takes over a tunnel connection another worker accepted for a session that lives here.
    fn adopt(&mut self, msg: Handoff) {
        let Handoff::Tunnel {
            sock,
            received,
            handshake,
            peer,
        } = msg;
        let sock = match self.io.stream(sock) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, "cannot take over a tunnel connection: {e}; connection closed");
                return;
            }
        };
        let entry = Entry::Pending {
            sock,
            hs: handshake,
            rx: received,
            tx: Outbox::default(),
            peer,
            routed: true,
        };
        match self.add(entry) {
            // The bytes already read are processed now; the socket may hold more.
            Ok(key) => self.on_pending(key, true, false),
            Err(e) => tracing::warn!(%peer, "cannot register a tunnel connection: {e}"),
        }
    }

    fn expire_handshakes(&mut self, now: Instant) {
        let expired: Vec<usize> = self
            .entries
            .iter_mut()
            .filter_map(|(k, e)| match e {
                Entry::Pending { hs, .. } => hs.handle_timeout(now).is_err().then_some(k),
                _ => None,
            })
            .collect();
        for k in expired {
            if let Some(Entry::Pending { peer, .. }) = self.remove(k) {
                tracing::warn!(%peer, "tunnel handshake timed out; connection closed");
            }
        }
    }

    fn on_tunnel(&mut self, key: usize, readable: bool, writable: bool) {
        let now = Instant::now();
        let Some(Entry::Tunnel {
            sock,
            session,
            slot,
            connecting,
            ..
        }) = self.entries.get_mut(key)
        else {
            return;
        };
        let (skey, t) = (*session, *slot);
        if *connecting {
            if !writable && !readable {
                return;
            }
            match sock.take_error() {
                Ok(None) if sock.peer_addr().is_ok() => {
                    *connecting = false;
                    self.sessions[skey].session.tunnel_connected(now, t);
                }
                Ok(None) => return,
                Ok(Some(e)) | Err(e) => {
                    tracing::info!(tunnel = t, "dial failed: {e}");
                    self.remove(key);
                    self.sessions[skey].tunnels[t] = None;
                    self.sessions[skey]
                        .session
                        .tunnel_dial_failed(now, t, &e.to_string());
                    return;
                }
            }
        }
        if writable {
            let Some(Entry::Tunnel { sock, tx, .. }) = self.entries.get_mut(key) else {
                return;
            };
            if let Err(e) = tx.flush(sock) {
                self.lose_tunnel(key, &format!("write failed: {e}"));
                return;
            }
        }
        if !readable {
            return;
        }
        loop {
            let Some(Entry::Tunnel { sock, rx, .. }) = self.entries.get_mut(key) else {
                return;
            };
            let result = Self::read_into(sock, rx, &mut self.read_buf);
            self.feed_tunnel(key);
            match result {
                Ok(ReadState::Batch) => continue,
                Ok(ReadState::Drained) => break,
                Ok(ReadState::Eof) => {
                    self.lose_tunnel(key, "closed by peer");
                    break;
                }
                Err(e) => {
                    self.lose_tunnel(key, &format!("read failed: {e}"));
                    break;
                }
            }
        }
    }

    /// Hands the tunnel's received bytes to its session.
    fn feed_tunnel(&mut self, key: usize) {
        let now = Instant::now();
        let Some(Entry::Tunnel {
            session, slot, rx, ..
        }) = self.entries.get_mut(key)
        else {
            return;
        };
        if rx.is_empty() {
            return;
        }
        let (skey, t) = (*session, *slot);
        let Some(s) = self.sessions.get_mut(skey) else {
            return;
        };
        if let Err(e) = s.session.handle_input(now, t, rx) {
            tracing::warn!(tunnel = t, "session closed: peer broke the protocol: {e}");
        }
    }

    fn lose_tunnel(&mut self, key: usize, why: &str) {
        let now = Instant::now();
        if let Some(Entry::Tunnel { session, slot, .. }) = self.remove(key) {
            if let Some(s) = self.sessions.get_mut(session) {
                if s.tunnels.get(slot).copied().flatten() == Some(key) {
                    s.tunnels[slot] = None;
                }
                s.session.tunnel_lost(now, slot, why);
            }
        }
    }

    fn on_app(&mut self, key: usize, readable: bool, writable: bool) {
        let now = Instant::now();
        let Some(Entry::App(app)) = self.entries.get_mut(key) else {
            return;
        };
        if app.connecting {
            match app.sock.take_error() {
                Ok(None) if app.sock.peer_addr().is_ok() => {
                    app.connecting = false;
                    tracing::debug!(stream = app.stream, target = %app.target, "connected to target");
                }
                Ok(None) => return,
                Ok(Some(e)) | Err(e) => {
                    tracing::warn!(stream = app.stream, target = %app.target, "cannot connect to target: {e}; resetting the stream");
                    self.abort_app(key, RESET_CONNECT_FAILED);
                    return;
                }
            }
        }
        let _ = now;
        if writable {
            self.write_app(key);
        }
        if readable {
            self.read_app(key);
        }
    }

    /// Moves bytes from an application socket into its stream, as far as credit allows.
    fn read_app(&mut self, key: usize) {
        loop {
            let Some(Entry::App(app)) = self.entries.get_mut(key) else {
                return;
            };
            if app.connecting || app.read_eof {
                return;
            }
            let Some(slot) = self.sessions.get_mut(app.session) else {
                return;
            };
            if let Some(pending) = app.unsent.take() {
                match slot.session.write(app.stream, pending.clone()) {
                    Ok(n) if n < pending.len() => {
                        app.unsent = Some(pending.slice(n..));
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        self.close_app(key);
                        return;
                    }
                }
            }
            match app.sock.read_bytes(&mut self.read_buf) {
                Ok(b) if b.is_empty() => {
                    app.read_eof = true;
                    let _ = slot.session.shutdown(app.stream);
                    self.maybe_finish_app(key);
                    return;
                }
                Ok(b) => app.unsent = Some(b),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::info!(
                        stream = app.stream,
                        "application connection failed: {e}; resetting the stream"
                    );
                    self.abort_app(key, RESET_APP_ERROR);
                    return;
                }
            }
        }
    }

    /// Moves stream bytes to the application socket while it keeps up.
    fn write_app(&mut self, key: usize) {
        let Some(Entry::App(app)) = self.entries.get_mut(key) else {
            return;
        };
        if app.connecting {
            return;
        }
        let Some(slot) = self.sessions.get_mut(app.session) else {
            return;
        };
        loop {
            if let Err(e) = app.tx.flush(&mut app.sock) {
                tracing::info!(
                    stream = app.stream,
                    "writing to the application failed: {e}; resetting the stream"
                );
                self.abort_app(key, RESET_APP_ERROR);
                return;
            }
            if app.tx.len >= APP_QUEUE || app.fin_pending || app.write_closed {
                break;
            }
            match slot.session.read(app.stream, APP_QUEUE) {
                Ok(ReadOutcome::Data(b)) => app.tx.push(b),
                Ok(ReadOutcome::Fin) => app.fin_pending = true,
                Ok(ReadOutcome::WouldBlock) => break,
                Err(_) => break,
            }
        }
        if app.fin_pending && app.tx.len == 0 && !app.write_closed {
            app.write_closed = true;
            let _ = app.sock.shutdown_write();
            self.maybe_finish_app(key);
        }
    }

    fn maybe_finish_app(&mut self, key: usize) {
        if let Some(Entry::App(app)) = self.entries.get(key)
            && app.read_eof
            && app.write_closed
        {
            self.close_app(key);
        }
    }

    /// Drops an application connection and its stream mapping (slab keys are reused, so a
    /// stale mapping would route another connection's events).
    fn close_app(&mut self, key: usize) {
        if let Some(Entry::App(app)) = self.remove(key)
            && let Some(s) = self.sessions.get_mut(app.session)
            && s.streams.get(&app.stream) == Some(&key)
        {
            s.streams.remove(&app.stream);
        }
    }

    /// Drops an application connection that failed and resets its stream with `code`.
    fn abort_app(&mut self, key: usize, code: u32) {
        let Some(Entry::App(app)) = self.entries.get(key) else {
            return;
        };
        let (skey, stream) = (app.session, app.stream);
        self.close_app(key);
        if let Some(s) = self.sessions.get_mut(skey) {
            let _ = s.session.reset(stream, code);
        }
    }

    // ----- Sessions ------------------------------------------------------------------------

    /// Reacts to a session's events and sends what it has for its tunnels.
    fn service(&mut self, skey: usize) {
        let now = Instant::now();
        while let Some(ev) = self
            .sessions
            .get_mut(skey)
            .and_then(|s| s.session.poll_event())
        {
            self.on_session_event(skey, ev, now);
        }
        self.transmit(skey);
        let Some(slot) = self.sessions.get(skey) else {
            return;
        };
        if slot.session.is_closed() {
            // Everything was flushed by `transmit` above as far as the sockets allowed.
            let tunnels: Vec<usize> = slot.tunnels.iter().flatten().copied().collect();
            let apps: Vec<usize> = slot.streams.values().copied().collect();
            let id = *slot.session.id();
            for k in tunnels.into_iter().chain(apps) {
                if let Some(Entry::App(app)) = self.entries.get(k) {
                    sockopt::abort_on_close(&app.sock);
                }
                if let Some(Entry::Local(conn)) = self.entries.get(k) {
                    conn.session_lost();
                }
                self.remove(k);
            }
            self.sessions.remove(skey);
            if self.by_id.remove(&id).is_some() {
                self.sessions_total.fetch_sub(1, Ordering::Relaxed);
            }
            if matches!(self.role, Role::Client { .. }) && !self.stop.load(Ordering::SeqCst) {
                // A client always has a session: start a fresh one.
                let session = Session::client_seeded(self.config.clone(), now, self.seed());
                tracing::info!("starting a new session");
                self.sessions.insert(SessionSlot::new(session));
            }
        }
    }

    fn transmit(&mut self, skey: usize) {
        let now = Instant::now();
        let Some(slot) = self.sessions.get_mut(skey) else {
            return;
        };
        for t in 0..slot.tunnels.len() {
            let Some(tk) = slot.tunnels[t] else {
                continue;
            };
            let Some(Entry::Tunnel {
                sock,
                tx,
                connecting: false,
                ..
            }) = self.entries.get_mut(tk)
            else {
                continue;
            };
            let mut failed = None;
            loop {
                if tx.len >= D::TUNNEL_QUEUE {
                    break;
                }
                self.scratch.clear();
                let n =
                    slot.session
                        .poll_transmit(now, t, D::TUNNEL_QUEUE - tx.len, &mut self.scratch);
                for c in self.scratch.drain(..) {
                    tx.push(c);
                }
                match tx.flush(sock) {
                    Ok(true) if n > 0 => continue,
                    Ok(_) => break,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                let why = format!("write failed: {e}");
                if let Some(Entry::Tunnel { mut sock, .. }) = self.entries.try_remove(tk) {
                    self.io.deregister_stream(&mut sock);
                    slot.tunnels[t] = None;
                    slot.session.tunnel_lost(now, t, &why);
                }
            }
        }
    }

    fn on_session_event(&mut self, skey: usize, ev: Event, now: Instant) {
        let id = self
            .sessions
            .get(skey)
            .map(|s| hex(s.session.id()))
            .unwrap_or_default();
        match ev {
            Event::Dial { tunnel } => {
                let Role::Client { server } = self.role else {
                    return;
                };
                let t = tunnel as usize;
                match sockopt::connect_nonblocking(server, Some(&self.opts.tunnel_sockets))
                    .and_then(|(s, cc)| Ok((self.io.stream(s)?, cc)))
                {
                    Ok((sock, cc)) => {
                        tracing::debug!(tunnel = t, %server, congestion = cc.as_deref().unwrap_or("?"), "dialing tunnel");
                        let entry = Entry::Tunnel {
                            sock,
                            session: skey,
                            slot: t,
                            rx: BytesMut::new(),
                            tx: Outbox::default(),
                            connecting: true,
                        };
                        match self.add(entry) {
                            Ok(k) => self.sessions[skey].tunnels[t] = Some(k),
                            Err(e) => self.sessions[skey].session.tunnel_dial_failed(
                                now,
                                t,
                                &e.to_string(),
                            ),
                        }
                    }
                    Err(e) => {
                        tracing::info!(tunnel = t, %server, "dial failed: {e}");
                        self.sessions[skey]
                            .session
                            .tunnel_dial_failed(now, t, &e.to_string());
                    }
                }
            }
            Event::TunnelUp { tunnel, rtt } => {
                let cc = self.sessions[skey].tunnels[tunnel as usize]
                    .and_then(|k| match self.entries.get(k) {
                        Some(Entry::Tunnel { sock, .. }) => sockopt::congestion_of(sock),
                        _ => None,
                    })
                    .unwrap_or_default();
                if matches!(self.role, Role::Client { .. }) {
                    tracing::info!(session = %id, tunnel, ?rtt, congestion = %cc, "tunnel established");
                }
                // Held application connections can go now.
                let waiting: Vec<_> = self.sessions[skey].waiting_apps.drain(..).collect();
                for (conn, target) in waiting {
                    self.start_client_stream(skey, conn, target);
                }
                self.open_waiting_locals();
            }
            Event::TunnelDown { tunnel, reason } => {
                tracing::warn!(session = %id, tunnel, "tunnel lost: {reason}");
                if let Some(k) = self.sessions[skey]
                    .tunnels
                    .get_mut(tunnel as usize)
                    .and_then(Option::take)
                {
                    self.remove(k);
                }
            }
            Event::StreamOpened { stream, target } => self.open_target(skey, stream, target),
            Event::StreamReadable { stream } => {
                if let Some(&k) = self.sessions[skey].streams.get(&stream) {
                    self.write_app(k);
                    self.write_local(k);
                }
            }
            Event::StreamWritable { stream } => {
                if let Some(&k) = self.sessions[skey].streams.get(&stream) {
                    self.read_app(k);
                    self.read_local(k);
                }
            }
            Event::StreamReset { stream, code } => {
                tracing::info!(session = %id, stream, code, "stream reset by peer");
                if let Some(k) = self.sessions[skey].streams.remove(&stream) {
                    if let Some(Entry::App(app)) = self.entries.get(k) {
                        sockopt::abort_on_close(&app.sock);
                    }
                    self.reset_local(k, code);
                    self.close_app(k);
                }
            }
            Event::StreamClosed {
                stream,
                sent,
                received,
            } => {
                tracing::info!(session = %id, stream, bytes_sent = sent, bytes_received = received, "stream closed");
                if let Some(k) = self.sessions[skey].streams.remove(&stream) {
                    // The connection finishes its own half-closes; it is only forgotten here.
                    if let Some(Entry::App(app)) = self.entries.get(k)
                        && app.read_eof
                        && app.write_closed
                    {
                        self.close_app(k);
                    }
                    self.closed_local(k);
                }
            }
            Event::GoAway { code } => tracing::info!(session = %id, code, "peer is going away"),
            Event::SessionClosed { reason } => {
                if reason.code() == crate::error::code::NO_ERROR {
                    tracing::info!(session = %id, "session closed: {reason}");
                } else {
                    tracing::warn!(session = %id, "session closed: {reason}");
                }
            }
        }
    }

    fn open_target(&mut self, skey: usize, stream: StreamId, target: Option<String>) {
        let Role::Server { resolve } = &self.role else {
            return;
        };
        let addr = match resolve(target.as_deref()) {
            Route::Connect(addr) => addr,
            Route::Accept => return self.accept_local(skey, stream, target),
            Route::Refuse => {
                tracing::warn!(
                    stream,
                    target = target.as_deref().unwrap_or(""),
                    "target not allowed or unresolvable; resetting"
                );
                let _ = self.sessions[skey]
                    .session
                    .reset(stream, RESET_CONNECT_FAILED);
                return;
            }
        };
        match sockopt::connect_nonblocking(addr, None).and_then(|(s, _)| self.io.stream(s)) {
            Ok(sock) => {
                tracing::info!(stream, target = %addr, "stream opened");
                let app = AppConn::new(sock, skey, stream, true, addr);
                match self.add(Entry::App(Box::new(app))) {
                    Ok(k) => {
                        self.sessions[skey].streams.insert(stream, k);
                    }
                    Err(e) => {
                        tracing::warn!("cannot register target socket: {e}");
                        let _ = self.sessions[skey]
                            .session
                            .reset(stream, RESET_CONNECT_FAILED);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(stream, target = %addr, "cannot connect to target: {e}; resetting");
                let _ = self.sessions[skey]
                    .session
                    .reset(stream, RESET_CONNECT_FAILED);
            }
        }
    }
}

fn hex(id: &[u8]) -> String {
    id.iter().take(6).map(|b| format!("{b:02x}")).collect()
}
