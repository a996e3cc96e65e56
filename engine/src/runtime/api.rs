//! The library API: a client or a server running in-process, with streams opened and accepted
//! as blocking `std::io` objects ([`MtcpStream`]) that no socket or file descriptor backs.
//!
//! Owns: [`Client`], [`Server`] and [`Accepted`] — starting a runtime with an in-process side,
//! and handing streams between the program and its event loop. Must not touch: how the loop
//! services those streams (`event_loop::local_streams`) or what they share with it
//! (`runtime::local`).
//!
//! A [`Client`] is a client runtime (the tunnel pool to one server, or to the first that works
//! of a list ([`Client::start_with_servers`]), optionally with TCP
//! forwards as well) that also opens streams for the program: [`Client::open_stream`] returns at
//! once, and bytes written before any tunnel is up wait (bounded) and leave as soon as one is.
//! A [`Server`] is a server runtime whose [`TargetResolver`] may route a stream to the program
//! ([`Route::Accept`]); [`Server::accept`] takes those. Both keep serving TCP as the daemons do,
//! and both stop gracefully with [`Client::shutdown`] / [`Server::shutdown`] and
//! [`Client::join`] / [`Server::join`] (or on drop): no new streams, open ones get
//! [`RuntimeOptions::drain_timeout`] to finish.
//!
//! # Example
//! `engine/examples/in_process_echo.rs` (`cargo run -p mtcpd-engine --example in_process_echo`;
//! the tests run it too):
#![doc = concat!("```\n", include_str!("../../examples/in_process_echo.rs"), "```")]

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::accept_queue::{self, AcceptWaiters};
use super::local::{Hub, MtcpStream, OpenRequest, stream_pair};
use super::stats::{RuntimeStats, STATS_TIMEOUT};
use super::{
    ClientForward, Route, RuntimeError, RuntimeHandle, RuntimeOptions, TargetResolver,
    spawn_client, start_server,
};
use crate::error::StreamLimitError;
use crate::wire::MAX_TARGET_LEN;

/// Where a server's event loop puts the streams it accepted for the program.
pub(super) use super::accept_queue::AcceptSender;

/// A stream a [`Server`] accepted for the program.
#[derive(Debug)]
pub struct Accepted {
    /// The stream.
    pub stream: MtcpStream,
    /// The target its client asked for, if any.
    pub target: Option<String>,
}

/// A client runtime that opens streams for the program. Dropping it stops the runtime like
/// [`Client::shutdown`] + [`Client::join`], so it waits up to the drain timeout for open streams.
#[derive(Debug)]
pub struct Client {
    handle: RuntimeHandle,
    /// One per worker (each runs its own session); streams are spread over them in turn.
    hubs: Vec<Arc<Hub>>,
    next_hub: AtomicUsize,
}

impl Client {
    /// Starts a client: opens the tunnel pool to `server` (re-dialing with backoff while it
    /// is unreachable) and returns at once.
    pub fn start(opts: RuntimeOptions, server: SocketAddr) -> Result<Self, RuntimeError> {
        Self::start_with_forwards(opts, server, &[])
    }

    /// Starts a client that also carries every TCP connection accepted on a forward's listen
    /// address, as [`super::spawn_client`] does.
    pub fn start_with_forwards(
        opts: RuntimeOptions,
        server: SocketAddr,
        forwards: &[ClientForward],
    ) -> Result<Self, RuntimeError> {
        Self::with_handle(spawn_client(opts, server, forwards)?)
    }

    /// Starts a client given several servers: each session dials the first that works,
    /// moving on round-robin when one cannot be established (see [`super::server_list`]).
    pub fn start_with_servers(
        opts: RuntimeOptions,
        servers: &[SocketAddr],
    ) -> Result<Self, RuntimeError> {
        let services = super::ClientServices::default();
        Self::with_handle(super::spawn_client_with_servers(opts, servers, services)?)
    }

    fn with_handle(handle: RuntimeHandle) -> Result<Self, RuntimeError> {
        let hubs = handle.hubs.clone();
        Ok(Self {
            handle,
            hubs,
            next_hub: AtomicUsize::new(0),
        })
    }

    /// Opens a stream asking the server for `target` (`None`: its default route), without
    /// waiting: the stream is carried as soon as the session can open it, and what is written
    /// before then waits in the stream's buffer.
    ///
    /// # Errors
    /// - [`io::ErrorKind::NotConnected`]: the client is shut down.
    /// - [`io::ErrorKind::InvalidInput`]: `target` is longer than [`MAX_TARGET_LEN`].
    /// - [`crate::STREAM_LIMIT_KIND`] ([`io::ErrorKind::QuotaExceeded`]), with a
    ///   [`StreamLimitError::Local`] inside: every session already has `max_streams` streams
    ///   this client opened and has not released (a stream is released once the program dropped
    ///   it and both directions ended). Returned at once, never after a wait.
    ///
    /// A stream the session cannot open later fails its reads and writes: with
    /// [`super::StreamFailure::Limit`] (the same kind) when the peer allows no more streams,
    /// else [`super::StreamFailure::NotOpened`].
    pub fn open_stream(&self, target: Option<&str>) -> io::Result<MtcpStream> {
        if target.is_some_and(|t| t.len() > MAX_TARGET_LEN) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("target longer than {MAX_TARGET_LEN} bytes"),
            ));
        }
        let stopped = || io::Error::new(io::ErrorKind::NotConnected, "the client is shut down");
        if self.handle.stopping() {
            return Err(stopped());
        }
        let n = self.hubs.len();
        if n == 0 {
            return Err(stopped());
        }
        // Round-robin over the workers' sessions; a full one passes its turn to the next.
        let turn = self.next_hub.fetch_add(1, Ordering::Relaxed);
        let mut refused = None;
        let (hub, slot) = (0..n)
            .find_map(|i| {
                let hub = &self.hubs[(turn + i) % n];
                hub.reserve()
                    .map_err(|e| refused = Some(e))
                    .ok()
                    .map(|slot| (hub, slot))
            })
            .ok_or_else(|| io::Error::from(refused.unwrap_or(StreamLimitError::Local(0))))?;
        let (stream, ends) = stream_pair(hub, Some(slot));
        let req = OpenRequest {
            ends,
            target: target.map(str::to_owned),
        };
        // A request the loop can no longer take comes back; dropping it detaches the stream.
        hub.open(req).map_err(|_| stopped())?;
        Ok(stream)
    }

    /// The forwards' bound addresses, in order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.handle.local_addrs()
    }

    /// The client's figures now: its sessions and their tunnels (RTT, congestion window,
    /// delivery rate and retransmissions from TCP_INFO, bytes each way), streams, counters
    /// since start and forwards. Waits at most [`STATS_TIMEOUT`] for the workers.
    pub fn stats(&self) -> RuntimeStats {
        self.handle.stats(STATS_TIMEOUT)
    }

    /// Asks for a graceful stop (see [`RuntimeHandle::shutdown`]); new streams are refused.
    pub fn shutdown(&self) {
        self.handle.shutdown();
    }

    /// Waits until the runtime has stopped (after [`Client::shutdown`], or after its session
    /// ends on its own).
    pub fn join(self) {
        self.handle.join();
    }

    /// The runtime, e.g. for its stop flag.
    pub fn runtime(&self) -> &RuntimeHandle {
        &self.handle
    }
}

/// A server runtime that hands streams routed to [`Route::Accept`] to the program. Dropping it
/// stops the runtime like [`Server::shutdown`] + [`Server::join`].
#[derive(Debug)]
pub struct Server {
    handle: RuntimeHandle,
    pub(super) accepted: Mutex<Receiver<Accepted>>,
    /// The tasks waiting in [`Server::accept_async`].
    pub(super) accept_waiters: Arc<AcceptWaiters>,
}

impl Server {
    /// Starts a server accepting tunnels on `listen`; each stream goes where `route` says.
    pub fn start(
        opts: RuntimeOptions,
        listen: SocketAddr,
        route: TargetResolver,
    ) -> Result<Self, RuntimeError> {
        let (tx, rx, accept_waiters) = accept_queue::channel();
        let handle = start_server(opts, listen, route, Some(tx))?;
        Ok(Self {
            handle,
            accepted: Mutex::new(rx),
            accept_waiters,
        })
    }

    /// Starts a server that hands every stream to the program.
    pub fn accept_all(opts: RuntimeOptions, listen: SocketAddr) -> Result<Self, RuntimeError> {
        Self::start(opts, listen, Arc::new(|_| Route::Accept))
    }

    /// The address tunnels connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addrs()[0]
    }

    /// The server's figures now (as [`Client::stats`]), with the handshakes it refused.
    pub fn stats(&self) -> RuntimeStats {
        self.handle.stats(STATS_TIMEOUT)
    }

    pub(super) fn stopped() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionAborted, "the server has stopped")
    }

    /// Waits for the next stream routed to the program. Fails with
    /// [`io::ErrorKind::ConnectionAborted`] once the runtime has stopped and every accepted
    /// stream was taken.
    pub fn accept(&self) -> io::Result<Accepted> {
        let rx = self.accepted.lock().unwrap_or_else(PoisonError::into_inner);
        rx.recv().map_err(|_| Self::stopped())
    }

    /// Like [`Server::accept`], failing with [`io::ErrorKind::TimedOut`] after `timeout`.
    pub fn accept_timeout(&self, timeout: Duration) -> io::Result<Accepted> {
        let rx = self.accepted.lock().unwrap_or_else(PoisonError::into_inner);
        rx.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => {
                io::Error::new(io::ErrorKind::TimedOut, "no stream to accept in time")
            }
            RecvTimeoutError::Disconnected => Self::stopped(),
        })
    }

    /// Takes a stream if one is waiting.
    pub fn try_accept(&self) -> io::Result<Option<Accepted>> {
        let rx = self.accepted.lock().unwrap_or_else(PoisonError::into_inner);
        match rx.try_recv() {
            Ok(a) => Ok(Some(a)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(Self::stopped()),
        }
    }

    /// Asks for a graceful stop (see [`RuntimeHandle::shutdown`]).
    pub fn shutdown(&self) {
        self.handle.shutdown();
    }

    /// Waits until the runtime has stopped.
    pub fn join(self) {
        self.handle.join();
    }

    /// The runtime, e.g. for its stop flag.
    pub fn runtime(&self) -> &RuntimeHandle {
        &self.handle
    }
}
