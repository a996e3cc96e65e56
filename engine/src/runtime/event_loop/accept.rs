//! Listeners: applications connecting to a client, tunnels connecting to a server.
//!
//! Owns: accepting from the listeners (a tunnel connection starts with its TLS record layer),
//! closing at once the tunnel connections the endpoint's
//! pre-auth caps refuse, and what happens when an accept fails: out of file descriptors, the
//! queued connections are accepted and closed with a spare descriptor kept for that (so peers
//! are not left hanging in the queue), and the listener is tried again on a back-off timer (no
//! busy loop), with one warning per episode. Must not touch: what happens to an accepted
//! connection next — a tunnel goes to [`super::pending`] with a handshake the endpoint starts,
//! an application connection to [`super::app`].

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::connect_wait::WaitingApp;
use super::{Entry, EventLoop, Outbox, PendingConn};
use crate::endpoint::PreauthRefusal;
use crate::runtime::io::{Driver, IoListener};
use crate::runtime::rejection_log::RejectReason;
use crate::runtime::sockopt;

/// First wait before a failed listener is tried again; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(10);
/// Longest wait before a failed listener is tried again.
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Most queued connections closed per failed accept (the rest wait for the next try, so one
/// turn of the loop stays short).
const SHED_MAX: usize = 256;

/// Listeners whose accept failed, when they are tried again, and the spare descriptor.
#[derive(Debug)]
pub(super) struct AcceptRetry {
    listeners: Vec<usize>,
    due: Option<Instant>,
    backoff: Duration,
    /// Failed accepts since the last one that worked, and when the first of them failed.
    failures: u64,
    since: Option<Instant>,
    /// Held so that, out of descriptors, one can be freed to accept a queued connection and
    /// close it (the classic spare-descriptor trick).
    spare: Option<File>,
}

impl AcceptRetry {
    pub(super) fn new() -> Self {
        Self {
            listeners: Vec::new(),
            due: None,
            backoff: RETRY_FIRST,
            failures: 0,
            since: None,
            spare: open_spare(),
        }
    }

    /// When a failed listener is next tried.
    pub(super) fn due(&self) -> Option<Instant> {
        self.due
    }
}

fn open_spare() -> Option<File> {
    File::open("/dev/null").ok()
}

/// The process (or the system) is out of descriptors or of the memory for one.
fn out_of_files(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

impl<D: Driver> EventLoop<D> {
    /// Client: takes application connections; each becomes a stream of the session.
    pub(super) fn accept_apps(&mut self, key: usize) {
        loop {
            let Some(Entry::AppListener {
                sock,
                forward,
                metrics_forward,
            }) = self.entries.get_mut(key)
            else {
                return;
            };
            let (forward, metrics_forward) = (forward.clone(), *metrics_forward);
            match sock.accept() {
                Ok((conn, peer)) => {
                    self.accept_works();
                    self.metrics.connection_accepted(metrics_forward);
                    sockopt::tune_app(&conn);
                    tracing::debug!(%peer, "application connected");
                    let Some(skey) = self.endpoint.client_session() else {
                        return;
                    };
                    let since = Instant::now();
                    self.start_client_stream(
                        skey,
                        WaitingApp {
                            conn,
                            forward,
                            since,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return self.accept_failed(key, e, false),
            }
        }
    }

    /// Client: takes connections on a proxy listener; each starts a proxy handshake
    /// ([`super::proxy`]).
    pub(super) fn accept_proxies(&mut self, key: usize) {
        loop {
            let Some(Entry::ProxyListener { sock, kind }) = self.entries.get_mut(key) else {
                return;
            };
            let kind = crate::runtime::ProxyKind::clone(kind);
            match sock.accept() {
                Ok((conn, peer)) => {
                    self.accept_works();
                    sockopt::tune_app(&conn);
                    self.start_proxy(conn, peer, &kind);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return self.accept_failed(key, e, false),
            }
        }
    }

    /// Server: takes tunnel connections; the endpoint starts a handshake for each, or refuses
    /// it (closed at once, without a reply, and counted in the rejection log).
    pub(super) fn accept_tunnels(&mut self, key: usize) {
        loop {
            let Some(Entry::TunnelListener { sock }) = self.entries.get_mut(key) else {
                return;
            };
            match sock.accept() {
                Ok((conn, peer)) => {
                    self.accept_works();
                    let now = Instant::now();
                    let handshake = match self.endpoint.accept_connection_from(now, peer.ip()) {
                        Ok(handshake) => handshake,
                        Err(PreauthRefusal::NotAServer) => return,
                        Err(refusal) => {
                            tracing::debug!(%peer, "tunnel connection closed at accept: {refusal}");
                            // A reset: nothing is sent, and no TIME_WAIT is left here.
                            sockopt::abort_on_close(&conn);
                            drop(conn);
                            // A network over its cap is one source in the log, not 256.
                            let source = match refusal {
                                PreauthRefusal::TooManyFromSource { network, .. } => {
                                    SocketAddr::new(network.network(), 0)
                                }
                                _ => peer,
                            };
                            self.reject(now, RejectReason::of_preauth(&refusal), source);
                            continue;
                        }
                    };
                    let cc = sockopt::tune_tunnel(&conn, &self.opts.tunnel_sockets);
                    tracing::debug!(%peer, congestion = %cc, "tunnel connection accepted");
                    let tls = match self.tls.connection() {
                        Ok(tls) => tls,
                        Err(e) => {
                            tracing::warn!(%peer, "cannot start TLS: {e}; connection closed");
                            self.endpoint.abandon_handshake(handshake);
                            continue;
                        }
                    };
                    let entry = Entry::Pending(Box::new(PendingConn {
                        sock: conn,
                        handshake,
                        tls,
                        received: BytesMut::new(),
                        rx: BytesMut::new(),
                        tx: Outbox::default(),
                        peer,
                        routed: self.mailbox.workers() == 1,
                        accepted_at: now,
                    }));
                    if let Err(e) = self.add(entry) {
                        tracing::warn!("cannot register tunnel socket: {e}");
                        self.endpoint.abandon_handshake(handshake);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return self.accept_failed(key, e, true),
            }
        }
    }

    /// Tries the listeners whose accept failed, once their back-off is over. Readiness will not
    /// fire again for connections already queued, so this is what picks them up.
    pub(super) fn retry_accepts(&mut self, now: Instant) {
        if self.accepts.due.is_none_or(|at| at > now) {
            return;
        }
        self.accepts.due = None;
        for key in std::mem::take(&mut self.accepts.listeners) {
            self.on_ready(key, true, false, true);
        }
    }

    /// An accept failed with connections possibly still queued: out of descriptors, close the
    /// queued ones with the spare; then try again after a back-off. One warning per episode.
    pub(super) fn accept_failed(&mut self, key: usize, e: io::Error, tunnels: bool) {
        let now = Instant::now();
        let retry = &mut self.accepts;
        if retry.failures == 0 {
            retry.since = Some(now);
            tracing::warn!(
                "accept failed: {e}; closing queued connections and retrying every {RETRY_FIRST:?} \
                 to {RETRY_MAX:?} (said once until accepting works again)"
            );
        } else {
            tracing::debug!("accept failed again: {e}");
        }
        retry.failures += 1;
        if !retry.listeners.contains(&key) {
            retry.listeners.push(key);
        }
        retry.due = Some(now + retry.backoff);
        retry.backoff = (retry.backoff * 2).min(RETRY_MAX);
        if out_of_files(&e) {
            if self.accepts.spare.is_none() {
                // Lost to another thread last time: take it back if a descriptor is free.
                self.accepts.spare = open_spare();
            }
            self.shed_queued(key, tunnels, now);
        }
    }

    /// An accept worked: the end of a failure episode, if there was one.
    pub(super) fn accept_works(&mut self) {
        let retry = &mut self.accepts;
        if retry.failures > 0 {
            let over = retry.since.map(|at| at.elapsed()).unwrap_or_default();
            tracing::info!(
                "accepting again after {} failed accepts over {over:?}",
                retry.failures
            );
            retry.failures = 0;
            retry.since = None;
            retry.backoff = RETRY_FIRST;
        }
        if retry.spare.is_none() {
            retry.spare = open_spare();
        }
    }

    /// Frees the spare descriptor, accepts and closes up to [`SHED_MAX`] queued connections
    /// with it, and takes it again.
    fn shed_queued(&mut self, key: usize, tunnels: bool, now: Instant) {
        let fd: RawFd = match self.entries.get(key) {
            Some(
                Entry::AppListener { sock, .. }
                | Entry::TunnelListener { sock }
                | Entry::ProxyListener { sock, .. }
                | Entry::ReverseListener { sock, .. },
            ) => sock.as_fd().as_raw_fd(),
            _ => return,
        };
        let Some(spare) = self.accepts.spare.take() else {
            return;
        };
        drop(spare);
        let mut shed = 0;
        while shed < SHED_MAX {
            match sockopt::accept_and_reset(fd) {
                Ok(Some(peer)) => {
                    shed += 1;
                    if tunnels {
                        self.reject(now, RejectReason::OutOfFiles, peer);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        self.accepts.spare = open_spare();
        if shed > 0 {
            tracing::debug!(shed, "queued connections closed for want of descriptors");
        }
    }
}
