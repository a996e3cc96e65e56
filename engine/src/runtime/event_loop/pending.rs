//! Server tunnel connections whose handshake is in progress, and their hand-over between
//! workers.
//!
//! Owns: reading and writing a pending connection's bytes (through its TLS record layer: the
//! TLS handshake first, then the mtcpd handshake inside it, bound to the TLS exporter), routing it to the worker that owns
//! its session (read the session id from the ClientHello, hand the socket and the handshake over
//! the worker ring), taking over connections other workers hand here, and turning a finished
//! handshake into a tunnel entry. Must not touch: the handshake's decisions — admission,
//! create-or-attach and timeouts are the endpoint's ([`crate::endpoint`]); this file writes what
//! it answers and closes what it fails.

use std::time::Instant;

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::{Entry, EventLoop, Outbox, PendingConn, ReadState, TunnelConn, hex, read_into};
use crate::endpoint::MAX_HANDSHAKE_INPUT;
use crate::endpoint::{HandshakeKey, HandshakeOutcome};
use crate::handshake::client_hello_session_id;
use crate::runtime::io::Driver;
use crate::runtime::rejection_log::{RejectReason, RejectionLine, RejectionLog};
use crate::runtime::sockopt;
use crate::runtime::worker::Handoff;

impl<D: Driver> EventLoop<D> {
    pub(super) fn on_pending(&mut self, key: usize, readable: bool, _writable: bool) {
        let now = Instant::now();
        let Some(Entry::Pending(conn)) = self.entries.get_mut(key) else {
            return;
        };
        let PendingConn {
            sock,
            handshake,
            tls,
            received,
            rx,
            tx,
            peer,
            routed,
            ..
        } = &mut **conn;
        let (peer, handshake) = (*peer, *handshake);
        let (mut eof, mut full) = (false, false);
        if readable {
            // Small reads: a read stops at MAX_HANDSHAKE_INPUT (a `Batch`).
            match read_into(sock, received, &mut self.read_buf[..super::HANDSHAKE_READ]) {
                Ok(state) => (eof, full) = (state == ReadState::Eof, state == ReadState::Batch),
                Err(e) => {
                    tracing::debug!(%peer, "tunnel connection failed during handshake: {e}");
                    self.reject_closed(now, handshake, peer);
                    self.drop_pending(key);
                    return;
                }
            }
        }
        // TLS first: what it decrypts is the mtcpd handshake; what it answers goes out now.
        let decrypted = tls.read(received, rx);
        // Before authentication a connection holds little: a peer that sends more than a
        // handshake needs (in one read, or left over on either side of TLS) is cut off.
        if full
            || received.len() >= MAX_HANDSHAKE_INPUT
            || rx.len() >= MAX_HANDSHAKE_INPUT
            || tls.bytes_before_binding() >= MAX_HANDSHAKE_INPUT
        {
            tracing::debug!(%peer, "tunnel connection sent too much during its handshake; closed");
            self.reject(now, RejectReason::InputTooLarge, peer);
            self.drop_pending(key);
            return;
        }
        tls.take_output(|c| tx.push(c));
        let flushed = tx.flush(sock);
        if let Err(e) = decrypted {
            tracing::debug!(%peer, "tunnel TLS failed: {e}; connection closed");
            self.reject(now, RejectReason::of_tls(&e), peer);
            self.drop_pending(key);
            return;
        }
        if flushed.is_err() {
            self.drop_pending(key);
            return;
        }
        let Some(&binding) = tls.binding() else {
            if eof {
                self.reject_closed(now, handshake, peer);
                self.drop_pending(key);
            }
            return;
        };
        if !*routed {
            match client_hello_session_id(rx) {
                Ok(None) if !eof => return,
                Ok(Some(id)) => {
                    let home = self.mailbox.home_worker(&id);
                    if home != self.mailbox.index() {
                        // A socket changes driver only with nothing of ours in flight: the
                        // TLS server's flight must be written first (io_uring completes it
                        // later, with a writable event that brings us back here).
                        if tx.len == 0 {
                            self.hand_over(key, home);
                        }
                        return;
                    }
                }
                // Not a ClientHello, or cut short: the handshake here says why.
                Ok(None) | Err(_) => {}
            }
            *routed = true;
        }
        if rx.is_empty() && !eof {
            return;
        }
        let step = self.endpoint.handshake_input(now, handshake, rx, &binding);
        let sealed = tls.seal([step.output.freeze()], |c| tx.push(c));
        let flushed = tx.flush(sock);
        if sealed.is_err() {
            self.drop_pending(key);
            return;
        }
        match step.outcome {
            HandshakeOutcome::Pending => {
                if rx.len() >= MAX_HANDSHAKE_INPUT {
                    tracing::debug!(%peer, "tunnel connection sent too much during its handshake; closed");
                    self.reject(now, RejectReason::InputTooLarge, peer);
                    self.drop_pending(key);
                } else if eof {
                    self.reject_closed(now, handshake, peer);
                    self.drop_pending(key);
                } else if flushed.is_err() {
                    self.drop_pending(key);
                }
            }
            HandshakeOutcome::Attached {
                session,
                created,
                tunnel,
            } => {
                let Some(Entry::Pending(conn)) = self.remove(key) else {
                    return;
                };
                let PendingConn {
                    sock,
                    tls,
                    received,
                    rx,
                    tx,
                    ..
                } = *conn;
                if created {
                    let id = hex(&tunnel.session_id);
                    tracing::info!(session = %id, %peer, pool = tunnel.pool_size, "session started");
                    let used = sockopt::congestion_of(&sock).unwrap_or_else(|| "unknown".into());
                    let asked = self.opts.tunnel_sockets.congestion.as_deref();
                    sockopt::log_session_congestion(&id, asked, &used);
                }
                self.touch(session);
                let slot_index = usize::from(tunnel.tunnel_index);
                let entry = Entry::Tunnel(Box::new(TunnelConn {
                    sock,
                    session,
                    slot: slot_index,
                    tls,
                    received,
                    rx,
                    tx,
                    unsent_limit: self.opts.tunnel_sockets.notsent_lowat,
                    connecting: false,
                    closing: None,
                    write_shut: false,
                }));
                match self.add(entry) {
                    Ok(tk) => {
                        if let Some(old) =
                            self.endpoint[session].data_mut().set_tunnel(slot_index, tk)
                        {
                            self.remove(old);
                        }
                        tracing::info!(session = %hex(&tunnel.session_id), tunnel = slot_index, %peer, rtt = ?tunnel.rtt, "tunnel established");
                        // Bytes after ClientAuth belong to the session, and more may wait in
                        // the socket (0-RTT data right behind the handshake).
                        self.on_tunnel(tk, true, true, true);
                    }
                    Err(e) => {
                        // The session counts the tunnel as up: tell it, or it waits for an
                        // idle timeout on a socket that is gone.
                        tracing::warn!("cannot register tunnel: {e}");
                        self.endpoint[session].session_mut().tunnel_lost(
                            now,
                            slot_index,
                            "could not register the socket",
                        );
                    }
                }
            }
            HandshakeOutcome::Failed(e) => {
                tracing::debug!(%peer, "tunnel handshake failed: {e}; connection closed");
                self.reject(now, RejectReason::of(&e), peer);
                self.remove(key);
            }
        }
    }

    /// A pending connection closed or failed: after our proof, that is how a client with
    /// another key (or none) leaves.
    fn reject_closed(&mut self, now: Instant, handshake: HandshakeKey, peer: SocketAddr) {
        let reason = if self.endpoint.handshake_answered(handshake) {
            RejectReason::ClosedAfterProof
        } else {
            RejectReason::ClosedEarly
        };
        self.reject(now, reason, peer);
    }

    /// Counts a refused handshake; logs it if it is the first from its source or a summary is
    /// due.
    pub(super) fn reject(&mut self, now: Instant, reason: RejectReason, peer: SocketAddr) {
        self.metrics.handshake_rejected(reason);
        let mut log = lock(&self.rejections);
        if let Some(line) = log.record(now, reason, peer.ip()) {
            log_rejection(&line, log.interval());
        }
    }

    /// Logs the rejection summaries that are due (this worker looks once a second).
    pub(super) fn flush_rejections(&mut self, now: Instant) {
        if now < self.next_rejection_flush {
            return;
        }
        self.next_rejection_flush = now + Duration::from_secs(1);
        let mut log = lock(&self.rejections);
        for line in log.flush(now) {
            log_rejection(&line, log.interval());
        }
    }

    /// Closes a pending connection and forgets its handshake.
    fn drop_pending(&mut self, key: usize) {
        if let Some(Entry::Pending(conn)) = self.remove(key) {
            self.endpoint.abandon_handshake(conn.handshake);
        }
    }

    /// Passes a tunnel connection to the worker that owns its session.
    fn hand_over(&mut self, key: usize, home: usize) {
        let Some(Entry::Pending(conn)) = self.entries.try_remove(key) else {
            return;
        };
        let PendingConn {
            sock,
            handshake,
            mut tls,
            received: mut ciphertext,
            mut rx,
            peer,
            accepted_at,
            ..
        } = *conn;
        let Some(handshake) = self.endpoint.take_handshake(handshake) else {
            // Not expected (every pending entry has its handshake); still, nothing of the
            // driver may keep pointing at a socket that is going away.
            let mut sock = sock;
            self.io.deregister_stream(&mut sock);
            return;
        };
        match self.io.detach_stream(sock) {
            Ok((sock, unread)) => {
                // What the driver still held goes through TLS here; the new owner gets
                // plaintext, the record layer and the start of a record not yet whole.
                ciphertext.extend_from_slice(&unread);
                if let Err(e) = tls.read(&mut ciphertext, &mut rx) {
                    tracing::debug!(%peer, "tunnel TLS failed: {e}; connection closed");
                    return;
                }
                tracing::debug!(%peer, from = self.mailbox.index(), to = home, "tunnel handed to its session's worker");
                let handoff = Handoff::Tunnel {
                    sock,
                    received: rx,
                    tls: Box::new(tls),
                    unopened: ciphertext[..].into(),
                    handshake,
                    peer,
                    accepted_at,
                };
                if self.mailbox.send(home, handoff).is_err() {
                    tracing::debug!(%peer, "hand-off backlog full; connection closed");
                    self.reject(Instant::now(), RejectReason::HandoffBacklogFull, peer);
                }
            }
            Err(e) => {
                tracing::warn!(%peer, "cannot hand the tunnel to worker {home}: {e}; connection closed")
            }
        }
    }

    /// Takes over a tunnel connection another worker accepted for a session that lives here.
    pub(super) fn adopt(&mut self, msg: Handoff) {
        let Handoff::Tunnel {
            sock,
            received,
            tls,
            unopened,
            handshake,
            peer,
            accepted_at,
        } = msg
        else {
            return;
        };
        let now = Instant::now();
        if self.endpoint.preauth_expired(accepted_at, now) {
            tracing::debug!(%peer, "handed over past the pre-auth deadline; connection closed");
            self.reject(now, RejectReason::StaleHandoff, peer);
            return;
        }
        let handshake = match self.endpoint.adopt_handshake_from(handshake, peer.ip()) {
            Ok(handshake) => handshake,
            Err(refusal) => {
                tracing::debug!(%peer, "handed-over connection closed: {refusal}");
                self.reject(now, RejectReason::of_preauth(&refusal), peer);
                return;
            }
        };
        let sock = match self.io.stream(sock) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, "cannot take over a tunnel connection: {e}; connection closed");
                self.endpoint.abandon_handshake(handshake);
                return;
            }
        };
        let entry = Entry::Pending(Box::new(PendingConn {
            sock,
            handshake,
            tls: *tls,
            received: bytes::BytesMut::from(&unopened[..]),
            rx: received,
            tx: Outbox::default(),
            peer,
            routed: true,
            accepted_at,
        }));
        match self.add(entry) {
            // The bytes already read are processed now; the socket may hold more.
            Ok(key) => self.on_pending(key, true, false),
            Err(e) => {
                tracing::warn!(%peer, "cannot register a tunnel connection: {e}");
                self.endpoint.abandon_handshake(handshake);
            }
        }
    }

    /// Closes the connections whose handshake the endpoint timed out.
    pub(super) fn expire_handshakes(&mut self, now: Instant) {
        if self
            .endpoint
            .poll_handshake_timeout()
            .is_none_or(|at| at > now)
        {
            return;
        }
        // A set: thousands may expire in one turn among tens of thousands of entries.
        let expired: std::collections::HashSet<HandshakeKey> =
            self.endpoint.handshake_timeout(now).into_iter().collect();
        let keys: Vec<usize> = self
            .entries
            .iter()
            .filter_map(|(k, e)| match e {
                Entry::Pending(conn) if expired.contains(&conn.handshake) => Some(k),
                _ => None,
            })
            .collect();
        for k in keys {
            if let Some(Entry::Pending(conn)) = self.remove(k) {
                let peer = conn.peer;
                tracing::debug!(%peer, "tunnel handshake timed out; connection closed");
                self.reject(now, RejectReason::Timeout, peer);
            }
        }
    }
}

/// One line of the rejection log: the first from a source at once, then a count per interval
/// ("other sources": those that found the table full).
fn log_rejection(line: &RejectionLine, interval: Duration) {
    let source = line
        .source
        .map_or_else(|| "other sources".to_owned(), |ip| ip.to_string());
    let reason = line.reason;
    // Lines for one (reason, source) are at least `interval` apart.
    let times = if line.first {
        String::new()
    } else {
        format!(
            " ({} times since the last report, at most one per {interval:?})",
            line.count
        )
    };
    if reason.is_authentication() {
        tracing::warn!("authentication failed from {source}: {reason}{times}");
    } else if reason == RejectReason::Refused(crate::handshake::HelloStatus::TunnelIndexOutOfRange)
    {
        // A client proposing a larger pool than this server grants dials its extra slots
        // before it learns the grant (it says "server granted N of M" once): normal.
        tracing::debug!("tunnel handshake from {source} refused: {reason}{times}");
    } else if reason == RejectReason::ClosedEarly {
        tracing::info!("tunnel handshake from {source} ended: {reason}{times}");
    } else {
        tracing::warn!("tunnel handshake from {source} failed: {reason}{times}");
    }
}

/// The shared rejection log; a worker that panicked while holding it left only counters behind,
/// which are still good to use.
fn lock(log: &Mutex<RejectionLog>) -> MutexGuard<'_, RejectionLog> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}
