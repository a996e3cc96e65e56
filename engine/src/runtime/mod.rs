//! The daemon runtime: runs the sans-IO sessions over real sockets.
//!
//! Owns: the public entry points ([`spawn_server`], [`spawn_client`], [`RuntimeHandle`]), the
//! choice of I/O driver, and process-wide set-up (open-file limit). Must not touch: protocol
//! logic (the [`crate::session`] state machine decides everything; the event loop only moves
//! bytes, reports socket events and fires timers).
//!
//! # I/O drivers
//! The contract an event loop fulfils towards a session is the one in [`crate::session`]'s
//! module docs. Both drivers run the same event loop (`event_loop`), generic over the small
//! socket contract in `io`: mio (epoll here, kqueue elsewhere) and, on Linux, io_uring
//! (`uring`). [`IoChoice::Uring`] (`--io uring`) probes the kernel and fails clearly if it
//! refuses a ring; [`IoChoice::Mio`] (`--io mio`) forces mio. [`IoChoice::Auto`], the default,
//! reads `MTCPD_IO` (`mio`, `uring` or `auto`; any other value is an error): an explicit choice
//! wins over it, it wins over the probe. `auto` (or no `MTCPD_IO`) takes io_uring when the probe
//! works and mio otherwise. The probe runs once per process (`driver_choice`); the choice is
//! logged at start.
//!
//! # Workers
//! [`RuntimeOptions::workers`] event loops run, one thread each, pinned one per core when there
//! is more than one (`worker`). A session and everything it owns live on one worker; a server
//! tunnel accepted by another worker is handed to the session's worker once, before its
//! handshake, over a lock-free SPSC ring. docs/ARCHITECTURE.md explains why and measures it.
//!
//! # In-process use
//! [`Client`] and [`Server`] run the same runtime inside a program, which opens streams with
//! [`Client::open_stream`] and takes them with [`Server::accept`] as [`MtcpStream`]s (blocking
//! `std::io` objects with no socket behind them): see [`api`] for an example.

mod accept_queue;
pub mod api;
mod async_stream;
mod driver_choice;
mod event_loop;
mod io;
mod listen;
mod local;
mod local_queue;
pub mod options;
mod poll;
mod rejection_log;
pub mod reload;
mod repeat_log;
pub mod reset_code;
mod resolver;
pub mod reverse;
pub mod server_list;
mod sockopt;
pub mod stats;
#[cfg(target_os = "linux")]
mod uring;
mod worker;

pub use api::{Accepted, Client, Server};
pub use async_stream::{AcceptedAsync, AsyncMtcpStream, AsyncReadHalf, AsyncWriteHalf};
pub(crate) use io::Waker;
pub use local::{MtcpStream, ReadHalf, StreamFailure, WriteHalf};
pub use poll::{Event, Events, PolledStream, Poller, Token, WriteBatch};
pub use reverse::{ExposedService, ReverseListener, WhenAbsent};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use thiserror::Error;

use crate::config::Config;
use driver_choice::{DriverKind, choose_driver};
pub use sockopt::TunnelSocketOptions;

/// Which I/O driver to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoChoice {
    /// The one `MTCPD_IO` names (`mio`, `uring`); unset or `auto`: io_uring when the kernel
    /// gives this process a ring (probed once per process), else mio.
    #[default]
    Auto,
    /// io_uring.
    Uring,
    /// mio (epoll/kqueue).
    Mio,
}

/// Why the runtime could not start.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The requested driver is not available in this build or on this kernel.
    #[error("I/O driver {0:?} is not available: {1}")]
    DriverUnavailable(IoChoice, String),
    /// `MTCPD_IO` names no driver (the choice was [`IoChoice::Auto`], so it was consulted).
    #[error("MTCPD_IO={0:?} is not an I/O driver: use mio, uring or auto")]
    BadIoEnv(String),
    /// The protocol configuration is invalid.
    #[error("invalid engine configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// A listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another socket (another mtcpd, or any other program) already serves the address.
    #[error(
        "cannot listen on {addr}: port {} is already in use (by another mtcpd or another \
         program; still after 2 s); stop it or choose another port",
        addr.port()
    )]
    AddressInUse {
        /// The address.
        addr: SocketAddr,
    },
    /// `workers` was zero.
    #[error("a runtime needs at least one worker")]
    Workers,
    /// A client was given an empty list of servers.
    #[error("a client needs at least one server address")]
    NoServer,
    /// The event loop could not be created.
    #[error("event loop: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS identity or verification settings cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// Reverse tunnels (a server's reverse listeners, a client's exposed services) need a key
    /// on both ends, or their configuration is not usable (a bad or repeated name).
    #[error("reverse tunnels: {0}")]
    Reverse(String),
}

/// Where the server sends a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Connect it to this TCP address.
    Connect(SocketAddr),
    /// Hand it to the program through [`Server::accept`] (a runtime started with
    /// [`spawn_server`] has no acceptor and resets such streams).
    Accept,
    /// Reset it (code 1, as for a target that cannot be reached).
    Refuse,
    /// Reset it with this code ([`reset_code`]: e.g. not allowed, unresolvable), so that the
    /// client can tell its application why.
    Reset(u32),
    /// Reset it with code 5: the target is not in the server's allow-list (the client logs
    /// that the server refused it).
    NotAllowed,
}

/// Where the server sends a stream, given the target its client asked for. Runs on the
/// server's resolver threads, never on a worker, so it may block (DNS); its answer for a target
/// is reused for 30 s (`resolver`).
pub type TargetResolver = Arc<dyn Fn(Option<&str>) -> Route + Send + Sync>;

/// Settings shared by both roles. Defaults and valid ranges are in [`options`].
#[derive(Clone)]
pub struct RuntimeOptions {
    /// Protocol limits and timers.
    pub engine: Config,
    /// I/O driver.
    pub io: IoChoice,
    /// Tunnel socket tuning.
    pub tunnel_sockets: TunnelSocketOptions,
    /// Read chunk of application sockets.
    pub read_chunk: usize,
    /// On shutdown, how long open streams may take to finish.
    pub drain_timeout: Duration,
    /// Server: most concurrent sessions.
    pub max_sessions: usize,
    /// Worker threads, each running its own event loop; pinned one per core when more than one.
    /// A server spreads sessions over them; a client runs one session (with its own tunnel
    /// pool) per worker.
    pub workers: usize,
    /// Server: a stream whose backend connection is not established within this is reset
    /// (code 3).
    pub backend_connect_timeout: Duration,
    /// Server: most backend connections (connecting or connected), all workers together; a
    /// stream whose target would need one more is reset at once (code 4). Each holds at most 256 KiB queued towards the backend plus one `read_chunk` towards
    /// the stream, which bounds the bytes buffered for backends too.
    pub max_backend_connections: usize,
    /// TLS under every tunnel (on unless `insecure_plaintext`), and the identities.
    pub tls: crate::tls::TlsOptions,
    /// Client: how long an application connection may wait for a tunnel (the server
    /// unreachable, the pool still opening); then it is reset. At most `engine.max_streams`
    /// (capped at [`MAX_WAITING_CONNECTIONS`]) wait at once per worker; more are reset at once.
    pub connect_wait: Duration,
}

/// Client: most application connections one worker holds while no tunnel can carry them
/// (also bounded by `max_streams_per_session`).
pub const MAX_WAITING_CONNECTIONS: usize = 65_536;

impl std::fmt::Debug for RuntimeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeOptions")
            .field("io", &self.io)
            .field("tunnel_sockets", &self.tunnel_sockets)
            .field("read_chunk", &self.read_chunk)
            .field("drain_timeout", &self.drain_timeout)
            .field("max_sessions", &self.max_sessions)
            .field("workers", &self.workers)
            .field("backend_connect_timeout", &self.backend_connect_timeout)
            .field("max_backend_connections", &self.max_backend_connections)
            .field("tls", &self.tls)
            .field("connect_wait", &self.connect_wait)
            .field("engine", &self.engine)
            .finish()
    }
}

/// One client listener: applications connect to `listen`; their streams ask for `target`.
#[derive(Debug, Clone)]
pub struct ClientForward {
    /// Local listen address.
    pub listen: SocketAddr,
    /// Target asked of the server (`None`: the server's default backend).
    pub target: Option<String>,
    /// A label for logs (the config's `name`), if any.
    pub name: Option<String>,
}

/// One client proxy listener: applications connect to `listen` and name their target with
/// the proxy protocol of `kind`; the target rides in the stream's OPEN and the application
/// hears the server's verdict (PROTOCOL.md §4.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientProxy {
    /// Local listen address.
    pub listen: SocketAddr,
    /// The protocol spoken there.
    pub kind: ProxyKind,
}

/// The protocol of a [`ClientProxy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyKind {
    /// SOCKS5 CONNECT, with username/password when `credentials` is set.
    Socks5 {
        /// Required username and password (RFC 1929), if any.
        credentials: Option<crate::proxy::Socks5Credentials>,
    },
    /// HTTP proxy: CONNECT, and absolute-form requests (`GET http://host/path`).
    Http,
}

/// What a client listener serves.
#[derive(Debug, Clone)]
enum ListenerRole {
    /// A forward: every connection asks for its target.
    Forward(Arc<ClientForward>),
    /// A proxy: each connection names its target.
    Proxy(ProxyKind),
}

/// A running client or server.
#[derive(Debug)]
pub struct RuntimeHandle {
    shutdown: ShutdownHandle,
    threads: Vec<JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
    /// How in-process streams reach each worker's event loop.
    hubs: Vec<Arc<local::Hub>>,
    /// Asks the workers for their figures.
    stats: stats::StatsProbe,
    /// Changes listeners and routing while running.
    reload: reload::ReloadHandle,
}

/// Asks a runtime to stop; cheap to clone and usable from any thread (e.g. a signal handler's).
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    stop: Arc<AtomicBool>,
    wakers: Arc<[Arc<Waker>]>,
    /// Streams the workers reset because `drain_timeout` ran out (see [`DrainReport`]).
    streams_cut: Arc<AtomicU64>,
}

/// How a graceful stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Streams still open when `drain_timeout` ran out, reset by the stop (0: every stream
    /// finished, a clean stop).
    pub streams_cut: u64,
}

impl ShutdownHandle {
    /// Asks for a graceful stop: listeners close, open streams get `drain_timeout` to finish.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.wakers.iter() {
            let _ = w.wake();
        }
    }
}

impl RuntimeHandle {
    /// Addresses actually bound (server: the tunnel listener; client: the forwards, in order).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Asks for a graceful stop: listeners close, open streams get `drain_timeout` to finish.
    pub fn shutdown(&self) {
        self.shutdown.shutdown();
    }

    /// A handle that can ask for the stop from elsewhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// True once a stop was asked for.
    pub(super) fn stopping(&self) -> bool {
        self.shutdown.stop.load(Ordering::SeqCst)
    }

    /// The runtime's figures now: sessions, tunnels (TCP_INFO read now), counters since start,
    /// forwards. Waits at most `timeout` for the workers (see [`stats::StatsProbe::snapshot`]).
    pub fn stats(&self, timeout: Duration) -> stats::RuntimeStats {
        self.stats.snapshot(timeout)
    }

    /// A handle that reads the runtime's figures from another thread (e.g. a metrics endpoint).
    pub fn stats_probe(&self) -> stats::StatsProbe {
        self.stats.clone()
    }

    /// A handle that changes the running runtime (a client's listeners, a server's routing).
    pub fn reload_handle(&self) -> reload::ReloadHandle {
        self.reload.clone()
    }

    /// How many worker threads run.
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// Waits until every worker has stopped, and says whether the drain cut streams.
    pub fn join_drain(self) -> DrainReport {
        let cut = self.shutdown.streams_cut.clone();
        self.join();
        DrainReport {
            streams_cut: cut.load(Ordering::SeqCst),
        }
    }

    /// Waits until every worker has stopped.
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for RuntimeHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown();
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

fn prepare(opts: &mut RuntimeOptions) -> Result<DriverKind, RuntimeError> {
    if opts.workers == 0 {
        return Err(RuntimeError::Workers);
    }
    opts.validate()?;
    // A runtime is what exposes the tunnel to a network: no key without an explicit opt-in.
    opts.engine.check_key()?;
    let driver = choose_driver(opts.io)?;
    tracing::info!(driver = driver.name(), requested = ?opts.io, "I/O driver selected");
    match sockopt::raise_nofile_limit() {
        Ok((before, now, hard)) => {
            tracing::info!(soft_before = before, soft = now, hard, "open-file limit");
            reserve_descriptors(opts, now);
        }
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
    Ok(driver)
}

/// Keeps three quarters of the open-file limit `nofile` for tunnels, backend connections and
/// re-dials: a worker's handshakes in progress plus its hand-offs waiting for a full ring (each
/// at most `max_handshakes`) may take the rest, so `max_handshakes` is lowered to
/// `nofile / (8 × workers)` when it is higher.
fn reserve_descriptors(opts: &mut RuntimeOptions, nofile: u64) {
    let share = nofile / (8 * opts.workers.max(1) as u64);
    let share = u32::try_from(share).unwrap_or(u32::MAX).max(1);
    if share < opts.engine.max_handshakes {
        tracing::info!(
            configured = opts.engine.max_handshakes,
            applied = share,
            nofile,
            "handshakes in progress per worker lowered to keep descriptors for tunnels and \
             backend connections"
        );
        opts.engine.max_handshakes = share;
    }
}

/// Starts a server: accepts tunnels on `listen`, connects each stream to what `resolve` says.
/// With several workers, each accepts on its own `SO_REUSEPORT` copy of the listener and hands
/// a tunnel to the worker that owns its session.
pub fn spawn_server(
    opts: RuntimeOptions,
    listen: SocketAddr,
    resolve: TargetResolver,
) -> Result<RuntimeHandle, RuntimeError> {
    start_server(opts, listen, resolve, None)
}

/// [`spawn_server`] with reverse tunnels: each of `reverse` listens (on worker 0) while a
/// client that exposes its name is connected, or always ([`WhenAbsent::Reset`]), and carries
/// each connection as a stream the server opens towards that client. Requires a key.
pub fn spawn_reverse_server(
    opts: RuntimeOptions,
    listen: SocketAddr,
    resolve: TargetResolver,
    reverse: &[ReverseListener],
) -> Result<RuntimeHandle, RuntimeError> {
    start_server_with(opts, listen, resolve, None, reverse)
}

/// [`spawn_client`] exposing services: the server's streams for each name in `exposed` are
/// connected to its target (any other name is reset, code 5). Requires a key.
pub fn spawn_exposing_client(
    opts: RuntimeOptions,
    server: SocketAddr,
    forwards: &[ClientForward],
    exposed: &[ExposedService],
) -> Result<RuntimeHandle, RuntimeError> {
    spawn_client_with(
        opts,
        server,
        ClientServices {
            forwards,
            proxies: &[],
            exposed,
        },
    )
}

/// Reverse tunnels need a key (the peer must prove it before a port opens or a target is
/// reached) and names a client can send.
fn check_reverse<'a>(
    opts: &RuntimeOptions,
    names: impl Iterator<Item = &'a str>,
) -> Result<(), RuntimeError> {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        return Ok(());
    }
    if opts.engine.psk.is_empty() {
        return Err(RuntimeError::Reverse(
            "reverse tunnels need a key on both ends (make one with `mtcpd genkey`)".into(),
        ));
    }
    if crate::wire::encode_expose_names(&names).is_none() {
        return Err(RuntimeError::Reverse(format!(
            "names must be distinct, 1 to {} ASCII letters, digits, '.', '_' or '-', and fit in              {} bytes together (one more byte each): {names:?}",
            crate::wire::MAX_EXPOSE_NAME,
            crate::wire::MAX_EXPOSE_BODY
        )));
    }
    Ok(())
}

/// [`spawn_server`], handing the streams routed to [`Route::Accept`] to `accept`.
fn start_server(
    opts: RuntimeOptions,
    listen: SocketAddr,
    resolve: TargetResolver,
    accept: Option<api::AcceptSender>,
) -> Result<RuntimeHandle, RuntimeError> {
    start_server_with(opts, listen, resolve, accept, &[])
}

/// [`start_server`] with reverse listeners.
fn start_server_with(
    opts: RuntimeOptions,
    listen: SocketAddr,
    resolve: TargetResolver,
    accept: Option<api::AcceptSender>,
    reverse: &[ReverseListener],
) -> Result<RuntimeHandle, RuntimeError> {
    check_reverse(&opts, reverse.iter().map(|r| r.name.as_str()))?;
    let mut opts = opts;
    let driver = prepare(&mut opts)?;
    let tls = opts.tls.server_setup()?;
    let listeners = listen::listeners_per_worker(listen, opts.workers, true)?;
    let local = listeners[0].local_addr()?;
    tracing::info!(%local, workers = opts.workers, "listening for tunnels");
    let setup = WorkerSetup::Server {
        listeners: listeners.into_iter().map(Some).collect(),
        resolve,
        accept,
        reverse: (!reverse.is_empty()).then(|| Arc::new(reverse::ReverseTable::new(reverse))),
    };
    start(driver, opts, vec![local], setup, tls)
}

/// Starts a client: opens the tunnel pool to `server` and carries every connection accepted on a
/// forward's listen address as a stream. With several workers, each runs its own session (and
/// pool) and takes the connections the kernel gives its copy of each listener.
pub fn spawn_client(
    opts: RuntimeOptions,
    server: SocketAddr,
    forwards: &[ClientForward],
) -> Result<RuntimeHandle, RuntimeError> {
    spawn_client_with(
        opts,
        server,
        ClientServices {
            forwards,
            ..ClientServices::default()
        },
    )
}

/// [`spawn_client`] with proxy listeners too (SOCKS5, HTTP): each of their connections names
/// its own target. A client may have proxies and no forward.
pub fn spawn_client_with_proxies(
    opts: RuntimeOptions,
    server: SocketAddr,
    forwards: &[ClientForward],
    proxies: &[ClientProxy],
) -> Result<RuntimeHandle, RuntimeError> {
    spawn_client_with(
        opts,
        server,
        ClientServices {
            forwards,
            proxies,
            exposed: &[],
        },
    )
}

/// Everything a client serves besides its tunnels: forwards, proxy listeners and the services
/// the server's reverse listeners reach. A client needs at least one of them to be useful, but
/// the runtime does not insist (a library client may only open streams itself).
#[derive(Clone, Copy, Default)]
pub struct ClientServices<'a> {
    /// Local listeners whose connections go to a fixed target.
    pub forwards: &'a [ClientForward],
    /// Local SOCKS5 / HTTP proxy listeners: each connection names its own target.
    pub proxies: &'a [ClientProxy],
    /// Services this client connects the server's reverse streams to (requires a key).
    pub exposed: &'a [ExposedService],
}

/// Starts a client with all of `services`: the general form of [`spawn_client`],
/// [`spawn_client_with_proxies`] and [`spawn_exposing_client`].
pub fn spawn_client_with(
    opts: RuntimeOptions,
    server: SocketAddr,
    services: ClientServices<'_>,
) -> Result<RuntimeHandle, RuntimeError> {
    spawn_client_with_servers(opts, &[server], services)
}

/// [`spawn_client_with`] given several servers: each session dials the first that works,
/// moving on round-robin when one cannot be established (see [`server_list`]).
pub fn spawn_client_with_servers(
    opts: RuntimeOptions,
    servers: &[SocketAddr],
    services: ClientServices<'_>,
) -> Result<RuntimeHandle, RuntimeError> {
    let Some(&server) = servers.first() else {
        return Err(RuntimeError::NoServer);
    };
    let ClientServices {
        forwards,
        proxies,
        exposed,
    } = services;
    check_reverse(&opts, exposed.iter().map(|e| e.name.as_str()))?;
    let mut opts = opts;
    let driver = prepare(&mut opts)?;
    let tls = opts.tls.client_setup()?;
    let mut listeners: Vec<Vec<(std::net::TcpListener, ListenerRole)>> =
        (0..opts.workers).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for f in forwards {
        let copies = listen::listeners_per_worker(f.listen, opts.workers, true)?;
        let local = copies[0].local_addr()?;
        tracing::info!(
            %local,
            forward = f.name.as_deref().unwrap_or_default(),
            target = f.target.as_deref().unwrap_or("<server default>"),
            %server,
            "listening for applications"
        );
        addrs.push(local);
        let forward = Arc::new(ClientForward {
            listen: local,
            ..f.clone()
        });
        for (w, l) in copies.into_iter().enumerate() {
            listeners[w].push((l, ListenerRole::Forward(forward.clone())));
        }
    }
    for p in proxies {
        let copies = listen::listeners_per_worker(p.listen, opts.workers, true)?;
        let local = copies[0].local_addr()?;
        let kind = match &p.kind {
            ProxyKind::Socks5 { credentials: None } => "SOCKS5",
            ProxyKind::Socks5 { .. } => "SOCKS5 (username/password)",
            ProxyKind::Http => "HTTP",
        };
        tracing::info!(%local, proxy = kind, %server, "listening for proxy requests");
        addrs.push(local);
        for (w, l) in copies.into_iter().enumerate() {
            listeners[w].push((l, ListenerRole::Proxy(p.kind.clone())));
        }
    }
    start(
        driver,
        opts,
        addrs,
        WorkerSetup::Client {
            servers: servers.into(),
            listeners,
            exposed: exposed.into(),
        },
        tls,
    )
}

/// What each worker of a runtime starts with.
enum WorkerSetup {
    Server {
        listeners: Vec<Option<std::net::TcpListener>>,
        resolve: TargetResolver,
        /// Where streams routed to [`Route::Accept`] go (every worker holds a sender).
        accept: Option<api::AcceptSender>,
        /// The reverse listeners and their owners, shared by every worker.
        reverse: Option<Arc<reverse::ReverseTable>>,
    },
    Client {
        servers: Arc<[SocketAddr]>,
        listeners: Vec<Vec<(std::net::TcpListener, ListenerRole)>>,
        /// The services this client exposes.
        exposed: Arc<[ExposedService]>,
    },
}

impl WorkerSetup {
    fn name(&self) -> &'static str {
        match self {
            WorkerSetup::Server { .. } => "mtcpd-server",
            WorkerSetup::Client { .. } => "mtcpd-client",
        }
    }

    /// Worker `w`'s event loop on driver `io`.
    fn build<D: io::Driver>(
        &mut self,
        w: usize,
        io: D,
        opts: RuntimeOptions,
        ctx: event_loop::WorkerContext,
    ) -> std::io::Result<event_loop::EventLoop<D>> {
        match self {
            WorkerSetup::Server {
                listeners, resolve, ..
            } => {
                let listener = listeners[w]
                    .take()
                    .ok_or_else(|| std::io::Error::other("worker listener taken twice"))?;
                event_loop::EventLoop::server(io, opts, listener, resolve.clone(), ctx)
            }
            WorkerSetup::Client {
                servers, listeners, ..
            } => {
                let mine = std::mem::take(&mut listeners[w]);
                event_loop::EventLoop::client(io, opts, servers.clone(), mine, ctx)
            }
        }
    }
}

/// Starts the workers on the chosen driver.
fn start(
    driver: DriverKind,
    opts: RuntimeOptions,
    local_addrs: Vec<SocketAddr>,
    setup: WorkerSetup,
    tls: crate::tls::TlsSetup,
) -> Result<RuntimeHandle, RuntimeError> {
    match driver {
        DriverKind::Mio => start_on(io::Mio::new, driver.name(), opts, local_addrs, setup, tls),
        #[cfg(target_os = "linux")]
        DriverKind::Uring => {
            let chunk = opts.read_chunk;
            start_on(
                move || uring::Uring::new(chunk),
                driver.name(),
                opts,
                local_addrs,
                setup,
                tls,
            )
        }
    }
}

fn start_on<D: io::Driver>(
    new_driver: impl Fn() -> std::io::Result<(D, Waker)>,
    io_name: &'static str,
    opts: RuntimeOptions,
    local_addrs: Vec<SocketAddr>,
    mut setup: WorkerSetup,
    tls: crate::tls::TlsSetup,
) -> Result<RuntimeHandle, RuntimeError> {
    let workers = opts.workers;
    let mut drivers = Vec::with_capacity(workers);
    let mut wakers = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (driver, waker) = new_driver()?;
        drivers.push(driver);
        wakers.push(Arc::new(waker));
    }
    let wakers: Arc<[Arc<Waker>]> = wakers.into();
    let stop = Arc::new(AtomicBool::new(false));
    let budget = crate::endpoint::SessionBudget::new(opts.max_sessions);
    let rejections = rejection_log::RejectionLog::shared(std::time::Instant::now());
    let streams_cut = Arc::new(AtomicU64::new(0));
    let shutdown = ShutdownHandle {
        stop: stop.clone(),
        wakers: wakers.clone(),
        streams_cut: streams_cut.clone(),
    };
    let (stats, stats_inboxes) = stats::StatsProbe::wire(io_name, &wakers);
    let resolver = match &setup {
        WorkerSetup::Server { resolve, .. } => {
            Some(resolver::ResolverPool::start(resolve.clone())?)
        }
        WorkerSetup::Client { .. } => None,
    };
    let (reload, reload_inboxes) =
        reload::ReloadHandle::wire(&wakers, resolver.clone(), stop.clone());
    let mut handle = RuntimeHandle {
        reload,
        shutdown,
        threads: Vec::with_capacity(workers),
        local_addrs,
        hubs: Vec::with_capacity(workers),
        stats,
    };
    let accept = match &setup {
        WorkerSetup::Server { accept, .. } => accept.clone(),
        WorkerSetup::Client { .. } => None,
    };
    // Hand-offs waiting for a full ring are connections before authentication too: as many as
    // a worker may have handshakes.
    let mailboxes = worker::Mailbox::wire(
        wakers.clone(),
        opts.engine.max_handshakes as usize,
        worker::Placement::random(),
    );
    let sources = crate::endpoint::SourceBudget::new(opts.engine.max_handshakes_per_source);
    let backends = resolver::BackendBudget::new(opts.max_backend_connections);
    let (reverse_table, exposed) = match &setup {
        WorkerSetup::Server { reverse, .. } => (reverse.clone(), Arc::from([])),
        WorkerSetup::Client { exposed, .. } => (None, exposed.clone()),
    };
    let workers_inputs = drivers
        .into_iter()
        .zip(mailboxes)
        .zip(stats_inboxes)
        .zip(reload_inboxes);
    for (w, (((driver, mailbox), stats_inbox), reload_inbox)) in workers_inputs.enumerate() {
        let ctx = event_loop::WorkerContext {
            stop: stop.clone(),
            mailbox,
            budget: budget.clone(),
            rejections: rejections.clone(),
            sources: sources.clone(),
            backends: backends.clone(),
            resolver: resolver
                .as_ref()
                .map(|pool| pool.for_worker(wakers[w].clone())),
            tls: tls.clone(),
            reverse_table: reverse_table.clone(),
            exposed: exposed.clone(),
            worker: w,
            stats: Some(stats_inbox),
            reload: Some(reload_inbox),
            streams_cut: streams_cut.clone(),
        };
        // On failure `handle` is dropped, which stops and joins the workers already started.
        let mut event_loop = setup.build(w, driver, opts.clone(), ctx)?;
        handle
            .hubs
            .push(event_loop.attach_local(wakers[w].clone(), accept.clone()));
        let thread = std::thread::Builder::new()
            .name(format!("{}-{w}", setup.name()))
            .spawn(move || {
                let _span = tracing::info_span!("worker", id = w).entered();
                if workers > 1 {
                    match worker::pin_to_core(w) {
                        Some(core) => tracing::info!(core, "worker pinned"),
                        None => {
                            tracing::warn!("cannot pin worker to a core; left to the scheduler")
                        }
                    }
                }
                event_loop.run()
            })?;
        handle.threads.push(thread);
    }
    Ok(handle)
}
