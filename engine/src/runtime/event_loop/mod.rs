//! The event loop: one thread moving bytes and timers between sockets and the sessions of an
//! [`Endpoint`], generic over the I/O driver.
//!
//! Both drivers (mio and io_uring) run this same code: it only uses the readiness-shaped socket
//! operations of [`super::io`], so session servicing, event handling and back-pressure are
//! written once.
//!
//! Owns: every socket of its runtime (listeners, tunnels, application connections, server
//! handshakes in progress), their user-space send queues, the mapping between sockets and
//! (session, tunnel slot) or (session, stream), and which sessions need servicing when. Must not
//! touch: protocol decisions — which session a tunnel joins, admission, handshakes and the
//! client's restart are the [`Endpoint`]'s; a session's protocol is the session's, driven
//! exactly as the contract in [`crate::session`] says.
//!
//! By concept: [`accept`] (listeners), [`pending`] (server handshakes in progress and the
//! hand-over between workers), [`tunnels`] (tunnel sockets), [`app`] (application and target
//! sockets), [`backends`] (a server's target resolution, backend budget and connect timeout),
//! [`local_streams`] (in-process streams), [`streams`] (the one interface both stream kinds
//! offer the session's events), [`sessions`] (the ready list, the timer heap, servicing and
//! session events), [`reverse`] (reverse tunnels: a server's public listeners and the streams it
//! opens for them; a client's exposed services), [`failover`] (a client's move to the next
//! server), [`forward_reload`] (a client's listeners added, changed and removed while running).
//!
//! Back-pressure is end to end: an application socket is read only while its stream's send buffer
//! has room (a short `write` pauses it until `StreamWritable`), and a stream is read from the
//! session only while its application socket keeps up (an unflushed queue pauses it until the
//! socket is writable again), so credit, not memory, absorbs a slow side.
//!
//! Only sessions with work are serviced on a wake-up (see [`sessions`]): the cost of a wake-up
//! grows with the active sessions, not with all of them.

mod accept;
mod app;
mod backends;
mod connect_wait;
mod failover;
mod forward_reload;
mod linger;
mod local_streams;
mod metrics;
mod pending;
mod pool_log;
mod proxy;
mod reverse;
mod sessions;
mod streams;
mod target_refusals;
mod tunnels;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use slab::Slab;

use super::io::{Driver, IoStream, READ_CLOSED, Ready};
use super::rejection_log::SharedRejectionLog;
use super::resolver::{BackendBudget, WorkerResolver};
use super::worker::Mailbox;
use super::{ClientForward, ListenerRole, ProxyKind, RuntimeOptions, TargetResolver};
use crate::endpoint::{Endpoint, HandshakeKey, SessionBudget, SessionKey, SourceBudget};
use crate::tls::{TlsSetup, TunnelTls};
use app::AppConn;
use backends::Backends;
use local_streams::{LocalConn, LocalState};
use proxy::{Proxies, ProxyConn};
use sessions::SessionIo;

/// User-space bytes queued towards an application before its stream is read further.
const APP_QUEUE: usize = 256 * 1024;
/// Reset code for streams whose target could not be reached.
const RESET_CONNECT_FAILED: u32 = 1;
/// Reset code for streams whose application connection failed.
const RESET_APP_ERROR: u32 = 2;
/// Reset code for streams whose target did not accept the connection in time.
const RESET_CONNECT_TIMEOUT: u32 = 3;
/// Reset code for streams whose target is not in the server's allow-list.
const RESET_NOT_ALLOWED: u32 = 5;
/// Reset code for streams refused because the backend budget (connections, or lookups waiting
/// for the resolver) is spent.
const RESET_BACKEND_BUSY: u32 = 4;
/// Longest wait: handshake deadlines, accept retries and a stop request are looked at least
/// this often.
const MAX_WAIT: Duration = Duration::from_millis(250);
/// Read size of a connection whose handshake is in progress: a read stops taking more once
/// [`crate::endpoint::MAX_HANDSHAKE_INPUT`] (four of these) is buffered.
const HANDSHAKE_READ: usize = crate::endpoint::MAX_HANDSHAKE_INPUT / 4;

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

/// Reads into `rx` until the socket would block, it closes, or `rx` holds a batch worth handing
/// to the session first. Readiness is edge-triggered: the caller must come back while this says
/// `Batch`.
fn read_into(sock: &mut impl IoStream, rx: &mut BytesMut, buf: &mut [u8]) -> io::Result<ReadState> {
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

#[derive(Debug)]
enum Entry<D: Driver> {
    /// Client: applications connect here.
    AppListener {
        sock: D::Listener,
        /// The forward it serves (its name and target).
        forward: Arc<ClientForward>,
        /// Its place in the runtime's forwards (for the metrics).
        metrics_forward: usize,
    },
    /// Server: tunnels connect here.
    TunnelListener { sock: D::Listener },
    /// Client: applications speaking a proxy protocol connect here.
    /// (`kind` is boxed: it may carry credentials, and [`Entry`] stays small.)
    ProxyListener {
        sock: D::Listener,
        kind: Box<ProxyKind>,
    },
    /// Client: a proxy connection whose request is not complete (or whose stream cannot be
    /// opened yet).
    Proxy(Box<ProxyConn<D>>),
    /// Server (worker 0): users of reverse service `index` connect here.
    ReverseListener { sock: D::Listener, index: usize },
    /// Server: a tunnel connection whose handshake (in the endpoint) is in progress.
    Pending(Box<PendingConn<D>>),
    /// A tunnel of a session.
    Tunnel(Box<TunnelConn<D>>),
    /// An application connection (client) or target connection (server) carrying a stream.
    App(Box<AppConn<D>>),
    /// An in-process stream (no socket).
    Local(Box<LocalConn>),
}

/// A server's tunnel connection whose handshake is in progress (boxed in [`Entry`], which stays
/// small: every idle stream pays for one slab slot).
#[derive(Debug)]
struct PendingConn<D: Driver> {
    sock: D::Stream,
    handshake: HandshakeKey,
    /// Its record layer (the TLS handshake comes first).
    tls: TunnelTls,
    /// Bytes read from the socket, not yet through `tls`.
    received: BytesMut,
    /// Plaintext: the mtcpd handshake.
    rx: BytesMut,
    /// Ciphertext to write.
    tx: Outbox,
    peer: SocketAddr,
    /// Known to belong on this worker (its session id was read, or there is one worker).
    routed: bool,
    /// When a worker accepted it (the pre-auth deadline runs from here).
    accepted_at: Instant,
}

/// A tunnel of a session (boxed in [`Entry`]).
#[derive(Debug)]
struct TunnelConn<D: Driver> {
    sock: D::Stream,
    session: SessionKey,
    slot: usize,
    /// Its record layer (client: the TLS handshake runs after the TCP connect, and the
    /// session hears `tunnel_connected` once it is done).
    tls: TunnelTls,
    /// Bytes read from the socket, not yet through `tls`.
    received: BytesMut,
    /// Plaintext for the session.
    rx: BytesMut,
    /// Ciphertext to write.
    tx: Outbox,
    /// The TCP_NOTSENT_LOWAT set on `sock` (0: never set, the kernel's default); the session's
    /// [`crate::Session::tunnel_unsent_limit`] replaces it when that changes.
    unsent_limit: u32,
    connecting: bool,
    /// Its session closed: it only writes its last bytes, until this deadline ([`linger`]).
    closing: Option<Instant>,
    /// Lingering: everything was written and the write side shut down.
    write_shut: bool,
}

enum Role {
    /// Client: the servers, and the one its session dials now.
    Client {
        servers: super::server_list::ServerList,
    },
    Server {
        resolve: TargetResolver,
    },
}

/// One event loop: a client (one session) or a server (many sessions).
pub(super) struct EventLoop<D: Driver> {
    io: D,
    ready: Vec<Ready>,
    role: Role,
    opts: RuntimeOptions,
    /// The sessions, with this loop's sockets for each, and the server's handshakes.
    endpoint: Endpoint<SessionIo<D>>,
    entries: Slab<Entry<D>>,
    stop: Arc<AtomicBool>,
    draining_since: Option<Instant>,
    /// Listeners whose accept failed with connections possibly still queued, and their
    /// back-off.
    accepts: accept::AcceptRetry,
    scratch: Vec<Bytes>,
    read_buf: Vec<u8>,
    /// This worker's ends of the rings to the other workers.
    mailbox: Mailbox,
    /// In-process streams, once a hub is attached.
    local: Option<LocalState>,
    /// Sessions with work to do on this turn of the loop (each at most once: `SessionIo::queued`).
    work: Vec<SessionKey>,
    /// Each session's next timer, earliest first; an entry that no longer matches its session's
    /// `SessionIo::armed` is stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, SessionKey)>>,
    /// The session being serviced now (what it is touched by is handled in the same service).
    servicing: Option<SessionKey>,
    /// Server: refused handshakes of all workers, logged aggregated.
    rejections: SharedRejectionLog,
    /// When this worker next asks the rejection log for its due summaries.
    /// Client: the last TLS handshake failure logged as a warning; the same failure again (a
    /// pinned fingerprint that does not match fails every re-dial of every slot) is logged at
    /// debug until a TLS handshake succeeds.
    tls_failure_warned: Option<String>,
    next_rejection_flush: Instant,
    /// Server: backend connections being resolved and connected.
    backends: Backends,
    /// Makes each tunnel connection's record layer (TLS, or plaintext).
    tls: TlsSetup,
    /// Client: proxy handshakes in progress and their deadlines.
    proxies: Proxies,
    /// Reverse tunnels: a server's listeners and table, a client's exposed services.
    reverse: reverse::ReverseState,
    /// This worker's counters and stats requests.
    metrics: metrics::WorkerMetrics,
    /// Client: what the log has said about the pool (tunnels up, an outage being reported).
    pool_log: pool_log::PoolLog,
    /// Streams reset because the drain timeout ran out, all workers together.
    streams_cut: Arc<AtomicU64>,
    /// Tunnels of closed sessions writing their last bytes, and until when ([`linger`]).
    lingering: Vec<(usize, Instant)>,
    /// Client: application connections reset or dropped while waiting, not yet reported.
    connect_wait_log: connect_wait::ConnectWaitLog,
    /// Refused targets (server: its refusals; client: the server's, per forward), aggregated.
    target_refusals: target_refusals::TargetRefusals,
    /// Where reloads for this worker arrive.
    reload: Option<super::reload::ReloadInbox>,
    /// When a fall in load calls for shrinking what the peak grew.
    shrink: super::shrink_on_fall::ShrinkOnFall,
}

/// What an event loop shares with the other workers of its runtime.
pub(super) struct WorkerContext {
    /// Set to stop every worker.
    pub(super) stop: Arc<AtomicBool>,
    /// This worker's rings.
    pub(super) mailbox: Mailbox,
    /// Server: the places for sessions on all workers together (`max_sessions`).
    pub(super) budget: SessionBudget,
    /// Server: refused handshakes of all workers together, logged aggregated.
    pub(super) rejections: SharedRejectionLog,
    /// Server: handshakes in progress per source network, all workers together.
    pub(super) sources: SourceBudget,
    /// Server: the places for backend connections on all workers together.
    pub(super) backends: BackendBudget,
    /// Server: this worker's handle on the resolver threads.
    pub(super) resolver: Option<WorkerResolver>,
    /// The runtime's TLS setup (built once: identity loaded, verifier chosen).
    pub(super) tls: TlsSetup,
    /// Server: the reverse listeners and who owns each name, all workers together.
    pub(super) reverse_table: Option<Arc<super::reverse::ReverseTable>>,
    /// Client: the services it exposes.
    pub(super) exposed: Arc<[super::reverse::ExposedService]>,
    /// This worker's index in its runtime.
    pub(super) worker: usize,
    /// Where stats requests for this worker arrive.
    pub(super) stats: Option<super::stats::StatsInbox>,
    /// Where reloads (listener changes) for this worker arrive.
    pub(super) reload: Option<super::reload::ReloadInbox>,
    /// Streams reset because the drain timeout ran out, all workers together.
    pub(super) streams_cut: Arc<AtomicU64>,
}

/// 32 bytes from the OS for an endpoint's session ids, nonces and seeds.
fn os_seed() -> [u8; 32] {
    let mut seed = [0; 32];
    StdRng::from_os_rng().fill_bytes(&mut seed);
    seed
}

impl<D: Driver> EventLoop<D> {
    fn new(
        io: D,
        opts: RuntimeOptions,
        role: Role,
        endpoint: Endpoint<SessionIo<D>>,
        ctx: WorkerContext,
    ) -> Self {
        let read_buf = vec![0; opts.read_chunk.max(4096)];
        Self {
            io,
            ready: Vec::new(),
            role,
            opts,
            endpoint,
            entries: Slab::new(),
            stop: ctx.stop,
            draining_since: None,
            accepts: accept::AcceptRetry::new(),
            scratch: Vec::new(),
            read_buf,
            mailbox: ctx.mailbox,
            local: None,
            work: Vec::new(),
            timers: BinaryHeap::new(),
            servicing: None,
            rejections: ctx.rejections,
            next_rejection_flush: Instant::now(),
            tls_failure_warned: None,
            backends: Backends::new(ctx.backends, ctx.resolver),
            tls: ctx.tls,
            proxies: Proxies::default(),
            reverse: reverse::ReverseState::new(ctx.reverse_table, ctx.exposed),
            metrics: metrics::WorkerMetrics::new(ctx.worker, ctx.stats),
            pool_log: pool_log::PoolLog::default(),
            streams_cut: ctx.streams_cut,
            lingering: Vec::new(),
            connect_wait_log: connect_wait::ConnectWaitLog::default(),
            target_refusals: target_refusals::TargetRefusals::default(),
            reload: ctx.reload,
            shrink: Default::default(),
        }
    }

    pub(super) fn server(
        io: D,
        opts: RuntimeOptions,
        listener: std::net::TcpListener,
        resolve: TargetResolver,
        ctx: WorkerContext,
    ) -> io::Result<Self> {
        let config = Arc::new(opts.session_config());
        let mut endpoint = Endpoint::server(config, ctx.budget.clone(), os_seed());
        endpoint.share_source_budget(ctx.sources.clone());
        let mut el = Self::new(io, opts, Role::Server { resolve }, endpoint, ctx);
        let sock = el.io.listener(listener)?;
        el.add(Entry::TunnelListener { sock })?;
        el.open_reverse_listeners()?;
        Ok(el)
    }

    pub(super) fn client(
        io: D,
        opts: RuntimeOptions,
        servers: Arc<[SocketAddr]>,
        listeners: Vec<(std::net::TcpListener, ListenerRole)>,
        ctx: WorkerContext,
    ) -> io::Result<Self> {
        let config = Arc::new(opts.session_config());
        let endpoint = Endpoint::client(config, Instant::now(), os_seed());
        let servers = super::server_list::ServerList::new(servers);
        let mut el = Self::new(io, opts, Role::Client { servers }, endpoint, ctx);
        for (sock, role) in listeners {
            let local = sock.local_addr()?;
            let sock = el.io.listener(sock)?;
            match role {
                ListenerRole::Forward(forward) => {
                    let metrics_forward = el.metrics.add_forward(local, forward.name.clone());
                    el.add(Entry::AppListener {
                        sock,
                        forward,
                        metrics_forward,
                    })?
                }
                ListenerRole::Proxy(kind) => el.add(Entry::ProxyListener {
                    sock,
                    kind: Box::new(kind),
                })?,
            };
        }
        // The new session asks for its tunnels to be dialed.
        if let Some(key) = el.endpoint.client_session() {
            el.touch(key);
            el.expose_on(key);
        }
        Ok(el)
    }

    fn add(&mut self, mut entry: Entry<D>) -> io::Result<usize> {
        let key = self.entries.vacant_key();
        match &mut entry {
            Entry::AppListener { sock, .. }
            | Entry::TunnelListener { sock }
            | Entry::ProxyListener { sock, .. }
            | Entry::ReverseListener { sock, .. } => self.io.register_listener(sock, key)?,
            Entry::Proxy(proxy) => self.io.register_stream(&mut proxy.sock, key, false)?,
            Entry::Pending(p) => {
                let sock = &mut p.sock;
                // Until it is a session's, a connection is read in small pieces.
                self.io.handshake_buffers(sock, true);
                self.io.register_stream(sock, key, false)?
            }
            Entry::Tunnel(t) => {
                self.io.handshake_buffers(&mut t.sock, false);
                self.io.register_stream(&mut t.sock, key, t.connecting)?
            }
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
            Entry::AppListener { sock, .. }
            | Entry::TunnelListener { sock }
            | Entry::ProxyListener { sock, .. }
            | Entry::ReverseListener { sock, .. } => self.io.deregister_listener(sock),
            Entry::Proxy(proxy) => {
                self.proxies.handshake_ended();
                self.io.deregister_stream(&mut proxy.sock)
            }
            Entry::Pending(p) => self.io.deregister_stream(&mut p.sock),
            Entry::Tunnel(t) => self.io.deregister_stream(&mut t.sock),
            Entry::App(app) => {
                self.metrics.connection_done(app);
                self.io.deregister_stream(&mut app.sock)
            }
            Entry::Local(_) => {}
        }
        Some(entry)
    }

    /// Runs until stopped and drained.
    pub(super) fn run(&mut self) {
        // Task wake-ups for in-process streams go out once per iteration, before the wait.
        let wakes = super::local::DeferWakes::begin();
        loop {
            let now = Instant::now();
            if self.stop.load(Ordering::SeqCst) {
                self.endpoint.set_stopping();
            }
            let timeout = self.wait_timeout(now);
            wakes.flush();
            if let Err(e) = self.io.wait(timeout, &mut self.ready) {
                tracing::error!("event loop wait failed ({} driver): {e}", D::NAME);
                return;
            }
            while let Some(msg) = self.mailbox.receive() {
                match msg {
                    super::worker::Handoff::Reverse {
                        sock,
                        early,
                        session,
                        index,
                        peer,
                    } => self.adopt_reverse(sock, early, session, index, peer),
                    tunnel => self.adopt(tunnel),
                }
            }
            self.answer_stats_requests();
            self.apply_reloads();
            let ready = std::mem::take(&mut self.ready);
            for &(token, readable, writable) in &ready {
                let read_closed = token & READ_CLOSED != 0;
                self.on_ready(token & !READ_CLOSED, readable, writable, read_closed);
            }
            self.ready = ready;
            self.ready.clear();
            self.poll_local();
            let now = Instant::now();
            self.fire_timers(now);
            self.reconcile_reverse(now);
            self.service_ready();
            self.expire_handshakes(now);
            self.take_resolved();
            self.expire_backend_connects(now);
            self.expire_proxies(now);
            self.expire_waiting(now);
            self.report_target_refusals(now);
            self.flush_rejections(now);
            self.retry_accepts(Instant::now());
            self.expire_lingering(now);
            if self.shrink.observe(now, self.entries.len()) {
                self.give_back_memory();
            }
            if self.stop.load(Ordering::SeqCst) && self.drain(now) && self.lingering.is_empty() {
                tracing::info!("stopped");
                return;
            }
        }
    }

    /// The load has fallen: shrinks what the peak grew and is now empty (the tunnels' buffers,
    /// the sessions' stream maps, the backend connects' queue); the `mtcpd` binary's trimmer
    /// then returns the freed pages to the system.
    fn give_back_memory(&mut self) {
        self.shrink_idle_tunnels();
        self.backends.shrink();
        for (_, slot) in self.endpoint.iter_mut() {
            slot.data_mut().streams.shrink_to_fit();
        }
    }

    /// How long the next wait may take: until the earliest timer, at once when sessions still
    /// have work, and soon when a ring to another worker was full.
    fn wait_timeout(&mut self, now: Instant) -> Duration {
        if !self.work.is_empty() {
            return Duration::ZERO;
        }
        let mut timeout = MAX_WAIT;
        if let Some(at) = self.next_timer() {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        if let Some(at) = self.endpoint.poll_handshake_timeout() {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        if let Some(at) = self.accepts.due() {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        if let Some(at) = self.proxies.next_deadline() {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        if let Some(at) = self.backends.next_deadline() {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        if let Some(at) = self.next_waiting_deadline() {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        if let Some(at) = self.next_lingering_deadline() {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        if let Some(at) = self.shrink.deadline() {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        if self.mailbox.retry() {
            timeout = timeout.min(Duration::from_millis(1));
        }
        timeout
    }

    /// Graceful stop: no new connections, GO_AWAY, wait for streams up to the drain timeout.
    /// True when done.
    fn drain(&mut self, now: Instant) -> bool {
        if self.draining_since.is_none() {
            self.draining_since = Some(now);
            // Sessions closed by the drain are not replaced (the stop may have been seen only
            // now, after this turn's start).
            self.endpoint.set_stopping();
            tracing::info!(
                "shutting down: no new connections; open streams have {:?} to finish",
                self.opts.drain_timeout
            );
            let listeners: Vec<usize> = self
                .entries
                .iter()
                .filter(|(_, e)| {
                    matches!(
                        e,
                        Entry::AppListener { .. }
                            | Entry::TunnelListener { .. }
                            | Entry::ProxyListener { .. }
                    )
                })
                .map(|(k, _)| k)
                .collect();
            for k in listeners {
                self.remove(k);
            }
            self.close_reverse_listeners();
            for key in self.endpoint.keys() {
                self.endpoint[key].session_mut().go_away(now);
                self.service(key);
            }
        }
        let all_done = self
            .endpoint
            .iter()
            .all(|(_, s)| s.session().is_closed() || s.data().streams.is_empty());
        let expired = self
            .draining_since
            .is_some_and(|since| now.saturating_duration_since(since) >= self.opts.drain_timeout);
        if all_done || expired {
            if expired && !all_done {
                let open: usize = self
                    .endpoint
                    .iter()
                    .filter(|(_, s)| !s.session().is_closed())
                    .map(|(_, s)| s.data().streams.len())
                    .sum();
                self.streams_cut.fetch_add(open as u64, Ordering::SeqCst);
                tracing::warn!(
                    streams = open,
                    "drain timeout ({:?}) ran out: resetting {open} streams still open",
                    self.opts.drain_timeout
                );
            }
            for key in self.endpoint.keys() {
                self.endpoint[key]
                    .session_mut()
                    .close(crate::error::code::SHUTDOWN, "shutting down");
                self.service(key);
            }
            return true;
        }
        false
    }

    /// A socket event; `read_closed`: the peer's FIN may be queued, so a read goes on to the end
    /// even after a short read (see [`Driver::SHORT_READ_DRAINS`]).
    fn on_ready(&mut self, key: usize, readable: bool, writable: bool, read_closed: bool) {
        let Some(entry) = self.entries.get(key) else {
            return;
        };
        match entry {
            Entry::AppListener { .. } => self.accept_apps(key),
            Entry::TunnelListener { .. } => self.accept_tunnels(key),
            Entry::ReverseListener { .. } => self.accept_reverse(key),
            Entry::Pending(_) => self.on_pending(key, readable, writable),
            Entry::Tunnel(_) => self.on_tunnel(key, readable, writable, read_closed),
            Entry::App(_) => self.on_app(key, readable, writable, read_closed),
            Entry::ProxyListener { .. } => self.accept_proxies(key),
            Entry::Proxy(_) => self.on_proxy(key),
            Entry::Local(_) => {}
        }
    }
}

/// A session id, shortened for logs.
fn hex(id: &[u8]) -> String {
    id.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod entry_size {
    /// Every stream (socket or in-process) holds one slab slot of [`super::Entry`], and the
    /// slab's spare capacity after a growth is up to as much again: the big variants are boxed.
    #[test]
    fn an_entry_is_small() {
        let mio = size_of::<super::Entry<crate::runtime::io::Mio>>();
        let uring = size_of::<super::Entry<crate::runtime::uring::Uring>>();
        println!("Entry: mio {mio} B, io_uring {uring} B");
        assert!(
            mio <= 40 && uring <= 48,
            "Entry grew: mio {mio} B, io_uring {uring} B"
        );
    }
}
