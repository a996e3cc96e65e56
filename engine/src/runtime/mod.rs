//! The daemon runtime: runs the sans-IO sessions over real sockets.
//!
//! Owns: the public entry points ([`spawn_server`], [`spawn_client`], [`RuntimeHandle`]), the
//! choice of I/O driver, and process-wide set-up (open-file limit). Must not touch: protocol
//! logic (the [`crate::session`] state machine decides everything; the event loop only moves
//! bytes, reports socket events and fires timers).
//!
//! # I/O drivers
//! The contract an event loop fulfils towards a session is the one in [`crate::session`]'s
//! module docs. Both drivers run the same event loop ([`event_loop`]), generic over the small
//! socket contract in [`io`]: mio (epoll here, kqueue elsewhere) and, on Linux, io_uring
//! ([`uring`]). `--io uring` probes the kernel and fails clearly if it refuses a ring; `--io auto`
//! takes io_uring when the probe works and mio otherwise; `MTCPD_IO=mio` (or `--io mio`) forces
//! mio. The choice is logged at start.
//!
//! # In-process use
//! [`Client`] and [`Server`] run the same runtime inside a program, which opens streams with
//! [`Client::open_stream`] and takes them with [`Server::accept`] as [`MtcpStream`]s (blocking
//! `std::io` objects with no socket behind them): see [`api`] for an example.

pub mod api;
mod event_loop;
mod io;
mod local;
pub mod sockopt;
#[cfg(target_os = "linux")]
mod uring;

pub use api::{Accepted, Client, Server};
pub use io::Waker;
pub use local::{MtcpStream, ReadHalf, StreamFailure, WriteHalf};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use thiserror::Error;

use crate::config::Config;
pub use sockopt::TunnelSocketOptions;

/// Which I/O driver to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoChoice {
    /// The best one available.
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
    /// The event loop could not be created.
    #[error("event loop: {0}")]
    Io(#[from] std::io::Error),
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
}

/// Where the server sends a stream, given the target its client asked for.
pub type TargetResolver = Arc<dyn Fn(Option<&str>) -> Route + Send + Sync>;

/// Settings shared by both roles.
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
}

impl std::fmt::Debug for RuntimeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeOptions")
            .field("io", &self.io)
            .field("tunnel_sockets", &self.tunnel_sockets)
            .field("read_chunk", &self.read_chunk)
            .finish_non_exhaustive()
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            engine: Config::default(),
            io: IoChoice::Auto,
            tunnel_sockets: TunnelSocketOptions {
                congestion: Some("bbr".into()),
                send_buffer: None,
                recv_buffer: None,
                notsent_lowat: 128 * 1024,
            },
            read_chunk: 64 * 1024,
            drain_timeout: Duration::from_secs(30),
            max_sessions: 1024,
        }
    }
}

/// One client listener: applications connect to `listen`; their streams ask for `target`.
#[derive(Debug, Clone)]
pub struct ClientForward {
    /// Local listen address.
    pub listen: SocketAddr,
    /// Target asked of the server (`None`: the server's default backend).
    pub target: Option<String>,
}

/// A running client or server.
#[derive(Debug)]
pub struct RuntimeHandle {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
    /// How in-process streams reach the event loop.
    hub: Arc<local::Hub>,
}

impl RuntimeHandle {
    /// Addresses actually bound (server: the tunnel listener; client: the forwards, in order).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Asks for a graceful stop: listeners close, open streams get `drain_timeout` to finish.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }

    /// The flag that [`RuntimeHandle::shutdown`] sets (e.g. for a signal handler), and the waker
    /// to call after setting it.
    pub fn stop_flag(&self) -> (Arc<AtomicBool>, Arc<Waker>) {
        (self.stop.clone(), self.waker.clone())
    }

    /// Waits until the runtime has stopped.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RuntimeHandle {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.shutdown();
            let _ = t.join();
        }
    }
}

/// The drivers this crate can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DriverKind {
    Mio,
    #[cfg(target_os = "linux")]
    Uring,
}

#[cfg(target_os = "linux")]
fn probe_uring() -> Result<(), String> {
    uring::probe().map_err(|e| format!("the kernel refused an io_uring instance: {e}"))
}

#[cfg(not(target_os = "linux"))]
fn probe_uring() -> Result<(), String> {
    Err("io_uring exists only on Linux".into())
}

fn choose_driver(io: IoChoice) -> Result<DriverKind, RuntimeError> {
    match io {
        IoChoice::Mio => Ok(DriverKind::Mio),
        IoChoice::Auto => match probe_uring() {
            #[cfg(target_os = "linux")]
            Ok(()) => Ok(DriverKind::Uring),
            #[cfg(not(target_os = "linux"))]
            Ok(()) => Ok(DriverKind::Mio),
            Err(why) => {
                tracing::info!("auto: io_uring unavailable ({why}); using mio");
                Ok(DriverKind::Mio)
            }
        },
        IoChoice::Uring => match probe_uring() {
            #[cfg(target_os = "linux")]
            Ok(()) => Ok(DriverKind::Uring),
            #[cfg(not(target_os = "linux"))]
            Ok(()) => unreachable!(),
            Err(why) => Err(RuntimeError::DriverUnavailable(
                IoChoice::Uring,
                format!("{why}; use --io mio or auto"),
            )),
        },
    }
}

fn prepare(opts: &RuntimeOptions) -> Result<DriverKind, RuntimeError> {
    opts.engine.validate()?;
    let driver = choose_driver(opts.io)?;
    let name = match driver {
        DriverKind::Mio => "mio",
        #[cfg(target_os = "linux")]
        DriverKind::Uring => "uring",
    };
    tracing::info!(driver = name, requested = ?opts.io, "I/O driver selected");
    match sockopt::raise_nofile_limit() {
        Ok((before, now, hard)) => {
            tracing::info!(soft_before = before, soft = now, hard, "open-file limit")
        }
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
    Ok(driver)
}

/// Starts a server: accepts tunnels on `listen`, connects each stream to what `resolve` says.
pub fn spawn_server(
    opts: RuntimeOptions,
    listen: SocketAddr,
    resolve: TargetResolver,
) -> Result<RuntimeHandle, RuntimeError> {
    start_server(opts, listen, resolve, None)
}

/// [`spawn_server`], handing the streams routed to [`Route::Accept`] to `accept`.
fn start_server(
    opts: RuntimeOptions,
    listen: SocketAddr,
    resolve: TargetResolver,
    accept: Option<api::AcceptSender>,
) -> Result<RuntimeHandle, RuntimeError> {
    let driver = prepare(&opts)?;
    let listener = sockopt::listener(listen, false).map_err(|source| RuntimeError::Listen {
        addr: listen,
        source,
    })?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "listening for tunnels");
    fn go<D: io::Driver>(
        (driver, waker): (D, Waker),
        opts: RuntimeOptions,
        listener: std::net::TcpListener,
        resolve: TargetResolver,
        local: SocketAddr,
        accept: Option<api::AcceptSender>,
    ) -> Result<RuntimeHandle, RuntimeError> {
        let (event_loop, stop) = event_loop::EventLoop::server(driver, opts, listener, resolve)?;
        let name = "mtcpd-server";
        Ok(spawn(event_loop, waker, stop, vec![local], name, accept)?)
    }
    match driver {
        DriverKind::Mio => go(io::Mio::new()?, opts, listener, resolve, local, accept),
        #[cfg(target_os = "linux")]
        DriverKind::Uring => {
            let chunk = opts.read_chunk;
            go(
                uring::Uring::new(chunk)?,
                opts,
                listener,
                resolve,
                local,
                accept,
            )
        }
    }
}

/// Starts a client: opens the tunnel pool to `server` and carries every connection accepted on a
/// forward's listen address as a stream.
pub fn spawn_client(
    opts: RuntimeOptions,
    server: SocketAddr,
    forwards: &[ClientForward],
) -> Result<RuntimeHandle, RuntimeError> {
    let driver = prepare(&opts)?;
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for f in forwards {
        let l = sockopt::listener(f.listen, false).map_err(|source| RuntimeError::Listen {
            addr: f.listen,
            source,
        })?;
        let local = l.local_addr()?;
        tracing::info!(%local, target = f.target.as_deref().unwrap_or("<server default>"), %server, "listening for applications");
        addrs.push(local);
        listeners.push((l, f.target.clone()));
    }
    fn go<D: io::Driver>(
        (driver, waker): (D, Waker),
        opts: RuntimeOptions,
        server: SocketAddr,
        listeners: Vec<(std::net::TcpListener, Option<String>)>,
        addrs: Vec<SocketAddr>,
    ) -> Result<RuntimeHandle, RuntimeError> {
        let (event_loop, stop) = event_loop::EventLoop::client(driver, opts, server, listeners)?;
        Ok(spawn(event_loop, waker, stop, addrs, "mtcpd-client", None)?)
    }
    match driver {
        DriverKind::Mio => go(io::Mio::new()?, opts, server, listeners, addrs),
        #[cfg(target_os = "linux")]
        DriverKind::Uring => {
            let chunk = opts.read_chunk;
            go(uring::Uring::new(chunk)?, opts, server, listeners, addrs)
        }
    }
}

fn spawn<D: io::Driver>(
    mut event_loop: event_loop::EventLoop<D>,
    waker: Waker,
    stop: Arc<AtomicBool>,
    local_addrs: Vec<SocketAddr>,
    name: &str,
    accept: Option<api::AcceptSender>,
) -> std::io::Result<RuntimeHandle> {
    let waker = Arc::new(waker);
    let hub = event_loop.attach_local(waker.clone(), accept);
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || event_loop.run())?;
    Ok(RuntimeHandle {
        stop,
        waker,
        thread: Some(thread),
        local_addrs,
        hub,
    })
}
