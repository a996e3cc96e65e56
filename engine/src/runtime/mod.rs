//! The daemon runtime: runs the sans-IO sessions over real sockets.
//!
//! Owns: the public entry points ([`spawn_server`], [`spawn_client`], [`RuntimeHandle`]), the
//! choice of I/O driver, and process-wide set-up (open-file limit). Must not touch: protocol
//! logic (the [`crate::session`] state machine decides everything; the event loop only moves
//! bytes, reports socket events and fires timers).
//!
//! # I/O drivers
//! The contract an event loop fulfils towards a session is the one in [`crate::session`]'s
//! module docs. The mio driver (epoll here, kqueue elsewhere) is the one implemented so far; the
//! io_uring driver is planned behind the same contract. `--io auto` therefore runs mio and says
//! so in the log; `--io uring` is refused with a clear error rather than silently downgraded.

mod event_loop;
pub mod sockopt;

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
    DriverUnavailable(IoChoice, &'static str),
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

/// Where the server sends a stream, given the target its client asked for (`None`: refuse).
pub type TargetResolver = Arc<dyn Fn(Option<&str>) -> Option<SocketAddr> + Send + Sync>;

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
    waker: Arc<mio::Waker>,
    thread: Option<JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
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
    pub fn stop_flag(&self) -> (Arc<AtomicBool>, Arc<mio::Waker>) {
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

fn choose_driver(io: IoChoice) -> Result<&'static str, RuntimeError> {
    match io {
        IoChoice::Mio => Ok("mio"),
        IoChoice::Auto => {
            tracing::info!("I/O driver: mio (auto: the io_uring driver is not in this build yet)");
            Ok("mio")
        }
        IoChoice::Uring => Err(RuntimeError::DriverUnavailable(
            IoChoice::Uring,
            "the io_uring driver is not in this build yet; use --io mio or auto",
        )),
    }
}

fn prepare(opts: &RuntimeOptions) -> Result<(), RuntimeError> {
    opts.engine.validate()?;
    let driver = choose_driver(opts.io)?;
    tracing::info!(driver, "I/O driver selected");
    match sockopt::raise_nofile_limit() {
        Ok((before, now, hard)) => {
            tracing::info!(soft_before = before, soft = now, hard, "open-file limit")
        }
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
    Ok(())
}

/// Starts a server: accepts tunnels on `listen`, connects each stream to what `resolve` says.
pub fn spawn_server(
    opts: RuntimeOptions,
    listen: SocketAddr,
    resolve: TargetResolver,
) -> Result<RuntimeHandle, RuntimeError> {
    prepare(&opts)?;
    let listener = sockopt::listener(listen, false).map_err(|source| RuntimeError::Listen {
        addr: listen,
        source,
    })?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "listening for tunnels");
    let (event_loop, waker, stop) =
        event_loop::EventLoop::server(opts, mio::net::TcpListener::from_std(listener), resolve)?;
    Ok(spawn(event_loop, waker, stop, vec![local], "mtcpd-server")?)
}

/// Starts a client: opens the tunnel pool to `server` and carries every connection accepted on a
/// forward's listen address as a stream.
pub fn spawn_client(
    opts: RuntimeOptions,
    server: SocketAddr,
    forwards: &[ClientForward],
) -> Result<RuntimeHandle, RuntimeError> {
    prepare(&opts)?;
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
        listeners.push((mio::net::TcpListener::from_std(l), f.target.clone()));
    }
    let (event_loop, waker, stop) = event_loop::EventLoop::client(opts, server, listeners)?;
    Ok(spawn(event_loop, waker, stop, addrs, "mtcpd-client")?)
}

fn spawn(
    mut event_loop: event_loop::EventLoop,
    waker: Arc<mio::Waker>,
    stop: Arc<AtomicBool>,
    local_addrs: Vec<SocketAddr>,
    name: &str,
) -> std::io::Result<RuntimeHandle> {
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || event_loop.run())?;
    Ok(RuntimeHandle {
        stop,
        waker,
        thread: Some(thread),
        local_addrs,
    })
}
