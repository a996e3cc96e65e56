//! The daemon runtime: runs the sans-IO sessions over real sockets.
//!
//! Owns: the public API's types ([`RuntimeOptions`], [`RuntimeHandle`], [`RuntimeError`]); the
//! entry points ([`spawn_server`], [`spawn_client`], …) live in `spawn`, which also chooses the
//! I/O driver and does the process-wide set-up (open-file limit). Must not touch: protocol
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
mod shrink_on_fall;
mod sockopt;
mod spawn;
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
use spawn::start_server;
pub use spawn::{
    ClientServices, spawn_client, spawn_client_with, spawn_client_with_proxies,
    spawn_client_with_servers, spawn_exposing_client, spawn_reverse_server, spawn_server,
};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use thiserror::Error;

use crate::config::Config;
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
