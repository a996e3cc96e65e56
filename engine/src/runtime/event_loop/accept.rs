//! Listeners: applications connecting to a client, tunnels connecting to a server.
//!
//! Owns: accepting from the listeners (a tunnel connection starts with its TLS record layer), and retrying an accept that failed while connections may
//! still be queued. Must not touch: what happens to an accepted connection next — a tunnel goes
//! to [`super::pending`] with a handshake the endpoint starts, an application connection to
//! [`super::app`].

use std::io;
use std::time::Instant;

use bytes::BytesMut;

use super::{Entry, EventLoop, Outbox};
use crate::runtime::io::{Driver, IoListener};
use crate::runtime::sockopt;

impl<D: Driver> EventLoop<D> {
    /// Client: takes application connections; each becomes a stream of the session.
    pub(super) fn accept_apps(&mut self, key: usize) {
        loop {
            let Some(Entry::AppListener { sock, target }) = self.entries.get_mut(key) else {
                return;
            };
            let target = target.clone();
            match sock.accept() {
                Ok((conn, peer)) => {
                    sockopt::tune_app(&conn);
                    tracing::debug!(%peer, "application connected");
                    let Some(skey) = self.endpoint.client_session() else {
                        return;
                    };
                    self.start_client_stream(skey, conn, target);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return self.retry_accept(key, e),
            }
        }
    }

    /// Server: takes tunnel connections; the endpoint starts a handshake for each.
    pub(super) fn accept_tunnels(&mut self, key: usize) {
        loop {
            let Some(Entry::TunnelListener { sock }) = self.entries.get_mut(key) else {
                return;
            };
            match sock.accept() {
                Ok((conn, peer)) => {
                    let cc = sockopt::tune_tunnel(&conn, &self.opts.tunnel_sockets);
                    tracing::debug!(%peer, congestion = %cc, "tunnel connection accepted");
                    let tls = match self.tls.connection() {
                        Ok(tls) => tls,
                        Err(e) => {
                            tracing::warn!(%peer, "cannot start TLS: {e}; connection closed");
                            continue;
                        }
                    };
                    let Some(handshake) = self.endpoint.accept_connection(Instant::now()) else {
                        return;
                    };
                    let entry = Entry::Pending {
                        sock: conn,
                        handshake,
                        tls,
                        received: BytesMut::new(),
                        rx: BytesMut::new(),
                        tx: Outbox::default(),
                        peer,
                        routed: self.mailbox.workers() == 1,
                    };
                    if let Err(e) = self.add(entry) {
                        tracing::warn!("cannot register tunnel socket: {e}");
                        self.endpoint.abandon_handshake(handshake);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return self.retry_accept(key, e),
            }
        }
    }

    /// Readiness will not fire again for connections already queued: retry from the loop (e.g.
    /// once file descriptors are free again after EMFILE).
    fn retry_accept(&mut self, key: usize, e: io::Error) {
        tracing::warn!("accept failed: {e}; retrying shortly");
        if !self.accept_retry.contains(&key) {
            self.accept_retry.push(key);
        }
    }
}
