//! Tunnel sockets: dialing them (client), their TLS record layer, reading them into their
//! session, writing what the session transmits, and reporting their loss.
//!
//! Owns: a tunnel entry's socket, record layer, receive buffers and send queue. Must not touch:
//! the bytes' meaning (the session parses and produces them) or which session a server tunnel
//! joins (the endpoint decided that in [`super::pending`]).

use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::hex;
use super::{Entry, EventLoop, Outbox, ReadState, TunnelConn};
use crate::endpoint::SessionKey;
use crate::error::SessionError;
use crate::handshake::PLAINTEXT_BINDING;
use crate::path::TcpReport;
use crate::runtime::io::{Driver, IoStream};
use crate::runtime::sockopt;
use crate::tls::{TlsError, TunnelTls};

/// What an empty tunnel buffer may keep once the load has fallen
/// ([`EventLoop::shrink_idle_tunnels`]): a read's worth, so a quiet tunnel's next read does not
/// allocate.
const KEEP_IDLE_CAPACITY: usize = 64 * 1024;

impl<D: Driver> EventLoop<D> {
    /// Socket readiness of a tunnel; `read_closed` as in [`EventLoop::on_ready`].
    pub(super) fn on_tunnel(
        &mut self,
        key: usize,
        readable: bool,
        writable: bool,
        read_closed: bool,
    ) {
        if self.flush_lingering(key) {
            return;
        }
        let now = Instant::now();
        let Some(Entry::Tunnel(conn)) = self.entries.get_mut(key) else {
            return;
        };
        let TunnelConn {
            sock,
            session,
            slot,
            connecting,
            tls,
            tx,
            ..
        } = &mut **conn;
        let (skey, t) = (*session, *slot);
        if *connecting {
            if !writable && !readable {
                return;
            }
            match sock.take_error() {
                Ok(None) if sock.peer_addr().is_ok() => {
                    *connecting = false;
                    if tls.is_handshaking() {
                        // TLS first: its ClientHello goes out now; the session hears
                        // `tunnel_connected` when the handshake is done (its dial timeout
                        // covers both).
                        tls.take_output(|c| tx.push(c));
                    } else {
                        let binding = *tls.binding().unwrap_or(&PLAINTEXT_BINDING);
                        self.endpoint[skey]
                            .session_mut()
                            .tunnel_connected(now, t, &binding);
                        self.touch(skey);
                    }
                }
                Ok(None) => return,
                Ok(Some(e)) | Err(e) => {
                    // Said, aggregated over the pool, by the pool log (the slot's TunnelDown).
                    tracing::debug!(tunnel = t, "dial failed: {e}");
                    self.remove(key);
                    let (session, io) = self.endpoint[skey].parts_mut();
                    io.clear_tunnel(t, key);
                    session.tunnel_dial_failed(now, t, &e.to_string());
                    self.touch(skey);
                    return;
                }
            }
        }
        {
            let Some(Entry::Tunnel(conn)) = self.entries.get_mut(key) else {
                return;
            };
            let TunnelConn { sock, tx, .. } = &mut **conn;
            if let Err(e) = tx.flush(sock) {
                self.lose_tunnel(key, &format!("write failed: {e}"));
                return;
            }
            if writable {
                // Room in the socket: the session may have more to send.
                self.touch(skey);
            }
        }
        if !readable {
            return;
        }
        loop {
            let Some(Entry::Tunnel(conn)) = self.entries.get_mut(key) else {
                return;
            };
            let TunnelConn {
                sock, received, rx, ..
            } = &mut **conn;
            let short_read_drains = D::SHORT_READ_DRAINS && !read_closed;
            let result = read_tunnel(sock, received, rx, &mut self.read_buf, short_read_drains);
            if !self.feed_tunnel(key) {
                return;
            }
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

    /// Passes the tunnel's received bytes through its record layer and the plaintext to its
    /// session; tells the session when a client tunnel's TLS handshake is done. False when the
    /// tunnel was lost (a record failed, or its reply could not be written).
    fn feed_tunnel(&mut self, key: usize) -> bool {
        let now = Instant::now();
        let Some(Entry::Tunnel(conn)) = self.entries.get_mut(key) else {
            return false;
        };
        let TunnelConn {
            sock,
            session,
            slot,
            tls,
            received,
            rx,
            tx,
            ..
        } = &mut **conn;
        let (skey, t) = (*session, *slot);
        let was_handshaking = tls.is_handshaking();
        let decrypted = tls.read(received, rx);
        // TLS's own answers (handshake messages, alerts) go out even when the read failed.
        tls.take_output(|c| tx.push(c));
        let flushed = tx.flush(sock);
        if let Err(e) = decrypted {
            let peer = sock
                .peer_addr()
                .map_or_else(|_| "?".to_owned(), |a| a.to_string());
            let session_id = self.endpoint.get(skey).map(|s| hex(s.session().id()));
            let session = session_id.as_deref().unwrap_or("?");
            if was_handshaking {
                let why = e.to_string();
                if self.tls_failure_warned.as_deref() == Some(why.as_str()) {
                    tracing::debug!(session, tunnel = t, %peer, "TLS handshake failed again: {e}");
                } else {
                    tracing::warn!(
                        session,
                        tunnel = t,
                        %peer,
                        "TLS handshake failed: {e} (repeats of this failure are logged at debug)"
                    );
                    self.tls_failure_warned = Some(why);
                }
            } else if matches!(e, TlsError::PeerClosed | TlsError::KeyLimit { .. }) {
                tracing::info!(
                    session,
                    tunnel = t,
                    %peer,
                    "tunnel closed: {e}; its unacknowledged data goes on the other tunnels"
                );
            } else {
                tracing::warn!(
                    session,
                    tunnel = t,
                    %peer,
                    "tunnel dropped: {e}; its unacknowledged data goes on the other tunnels"
                );
            }
            self.lose_tunnel(key, &e.to_string());
            return false;
        }
        if let Err(e) = flushed {
            self.lose_tunnel(key, &format!("write failed: {e}"));
            return false;
        }
        if was_handshaking && let Some(binding) = tls.binding() {
            let binding = *binding;
            self.tls_failure_warned = None;
            self.endpoint[skey]
                .session_mut()
                .tunnel_connected(now, t, &binding);
            self.touch(skey);
        }
        let Some(Entry::Tunnel(conn)) = self.entries.get_mut(key) else {
            return false;
        };
        let rx = &mut conn.rx;
        if rx.is_empty() {
            return true;
        }
        let Some(s) = self.endpoint.get_mut(skey) else {
            return true;
        };
        let before = rx.len();
        let result = s.session_mut().handle_input(now, t, rx);
        let received = before.saturating_sub(rx.len()) as u64;
        s.data_mut().count_traffic(t, 0, received);
        match result {
            Ok(()) => {}
            // A permanent refusal: said once, by the endpoint's report, when the session is
            // let go.
            // The server restarted and forgot the session: normal, said by the session's end.
            Err(e @ (SessionError::Handshake(_) | SessionError::SessionLost)) => {
                tracing::debug!(tunnel = t, "session closed: {e}")
            }
            // Said once, by the session's end (SessionClosed), with the peer's reason.
            Err(e @ SessionError::PeerClosed { .. }) => {
                tracing::debug!(tunnel = t, "session closed: {e}")
            }
            Err(e) => tracing::warn!(tunnel = t, "session closed: peer broke the protocol: {e}"),
        }
        self.touch(skey);
        true
    }

    /// Gives back the capacity a load left in the tunnels' empty buffers (a burst grows a
    /// tunnel's receive buffer to several hundred KiB, and an empty `BytesMut` keeps it):
    /// called when the worker's load has fallen (`shrink_on_fall`), not on every turn, where
    /// the buffer would be allocated again at once.
    pub(super) fn shrink_idle_tunnels(&mut self) {
        for (_, entry) in self.entries.iter_mut() {
            if let Entry::Tunnel(conn) = entry {
                for buf in [&mut conn.received, &mut conn.rx] {
                    if buf.is_empty() && buf.capacity() > KEEP_IDLE_CAPACITY {
                        *buf = BytesMut::new();
                    }
                }
                if conn.tx.chunks.is_empty() {
                    conn.tx.chunks.shrink_to_fit();
                }
            }
        }
    }

    pub(super) fn lose_tunnel(&mut self, key: usize, why: &str) {
        let now = Instant::now();
        if let Some(Entry::Tunnel(conn)) = self.remove(key)
            && let TunnelConn { session, slot, .. } = *conn
            && let Some(s) = self.endpoint.get_mut(session)
        {
            let (s, io) = s.parts_mut();
            io.clear_tunnel(slot, key);
            s.tunnel_lost(now, slot, why);
            self.touch(session);
        }
    }

    /// Client: dials tunnel `t` of session `skey` (the session asked with `Event::Dial`).
    pub(super) fn dial(&mut self, skey: SessionKey, t: usize, now: Instant) {
        let Some(server) = self.server_for_dial(t) else {
            return;
        };
        let dialed = sockopt::connect_nonblocking(server, Some(&self.opts.tunnel_sockets))
            .and_then(|(s, cc)| Ok((self.io.stream(s)?, cc)));
        let failure = match dialed {
            Ok((sock, cc)) => match self.tls.connection() {
                Err(e) => std::io::Error::other(e),
                Ok(tls) => {
                    tracing::debug!(tunnel = t, %server, congestion = cc.as_deref().unwrap_or("?"), "dialing tunnel");
                    let entry = Entry::Tunnel(Box::new(TunnelConn {
                        sock,
                        session: skey,
                        slot: t,
                        tls,
                        received: BytesMut::new(),
                        rx: BytesMut::new(),
                        tx: Outbox::default(),
                        unsent_limit: self.opts.tunnel_sockets.notsent_lowat,
                        connecting: true,
                        closing: None,
                        write_shut: false,
                    }));
                    match self.add(entry) {
                        Ok(k) => {
                            if let Some(old) = self.endpoint[skey].data_mut().set_tunnel(t, k) {
                                self.remove(old);
                            }
                            return;
                        }
                        Err(e) => e,
                    }
                }
            },
            Err(e) => {
                tracing::debug!(tunnel = t, %server, "dial failed: {e}");
                e
            }
        };
        self.endpoint[skey]
            .session_mut()
            .tunnel_dial_failed(now, t, &failure.to_string());
        self.touch(skey);
    }

    /// Sends what the session has for each of its tunnels, as far as the sockets take it.
    pub(super) fn transmit(&mut self, skey: SessionKey) {
        let now = Instant::now();
        let Some(slot) = self.endpoint.get_mut(skey) else {
            return;
        };
        let (session, io) = slot.parts_mut();
        let mut lost = false;
        for t in 0..io.tunnels.len() {
            let Some(tk) = io.tunnels[t] else {
                continue;
            };
            let Some(Entry::Tunnel(conn)) = self.entries.get_mut(tk) else {
                continue;
            };
            let TunnelConn {
                sock,
                tx,
                tls,
                unsent_limit,
                connecting: false,
                ..
            } = &mut **conn
            else {
                continue;
            };
            if tls.is_handshaking() {
                // The session has not been told this tunnel is connected yet.
                continue;
            }
            let limit = session.tunnel_unsent_limit(t);
            if limit != u32::MAX && limit != *unsent_limit {
                // Tried once per change: a refusal keeps the old value, as at creation.
                *unsent_limit = limit;
                if let Err(e) = mtcpd_common::sockopt::set_notsent_lowat(sock, limit) {
                    tracing::debug!(tunnel = t, "TCP_NOTSENT_LOWAT {limit}: {e}");
                }
            }
            if session.wants_tcp_info(t, now)
                && let Some(info) = mtcpd_common::sockopt::tcp_info(sock)
            {
                let unsent_bytes = u64::from(info.notsent_bytes).saturating_add(tx.len as u64);
                session.set_tunnel_tcp_info(
                    t,
                    now,
                    TcpReport {
                        srtt: Duration::from_micros(u64::from(info.rtt_us)),
                        min_rtt: Duration::from_micros(u64::from(info.min_rtt_us)),
                        retransmits: u64::from(info.total_retrans),
                        held_bytes: info.in_flight_bytes.saturating_add(unsent_bytes),
                        cwnd_bytes: u64::from(info.snd_cwnd) * u64::from(info.snd_mss),
                        unsent_bytes,
                        delivered_bytes: info.delivered_bytes,
                    },
                );
            }
            let mut failed = None;
            loop {
                if tx.len >= D::TUNNEL_QUEUE {
                    break;
                }
                self.scratch.clear();
                let n = session.poll_transmit(now, t, D::TUNNEL_QUEUE - tx.len, &mut self.scratch);
                io.count_traffic(t, n as u64, 0);
                if let Err(e) = tls.seal(self.scratch.drain(..), |c| tx.push(c)) {
                    failed = Some(std::io::Error::other(e));
                    break;
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
                if let Some(Entry::Tunnel(mut conn)) = self.entries.try_remove(tk) {
                    self.io.deregister_stream(&mut conn.sock);
                    io.tunnels[t] = None;
                    session.tunnel_lost(now, t, &why);
                    lost = true;
                }
            }
        }
        if lost {
            self.touch(skey);
        }
    }

    /// The congestion control a session's tunnel `t` runs (for the log).
    pub(super) fn tunnel_congestion(&self, skey: SessionKey, t: usize) -> String {
        self.endpoint
            .get(skey)
            .and_then(|s| s.data().tunnels.get(t).copied().flatten())
            .and_then(|k| match self.entries.get(k) {
                Some(Entry::Tunnel(conn)) => sockopt::congestion_of(&conn.sock),
                _ => None,
            })
            .unwrap_or_default()
    }
}

/// Reads a tunnel's socket into `received` as [`super::read_into`] does, first making room so
/// that the plaintext its records open into joins `plain` (the partial frame the session left)
/// without a copy: room for one read, and for a whole batch once a read filled the buffer. With
/// `short_read_drains`, a read that did not fill `buf` ends it (`Drained`, no `WouldBlock` read).
fn read_tunnel(
    sock: &mut impl IoStream,
    received: &mut BytesMut,
    plain: &mut BytesMut,
    buf: &mut [u8],
    short_read_drains: bool,
) -> std::io::Result<ReadState> {
    let mut room = buf.len();
    loop {
        TunnelTls::reserve_receive(received, plain, room);
        match sock.read_append(received, buf) {
            Ok(0) => return Ok(ReadState::Eof),
            Ok(n) => {
                if received.len() >= 4 * buf.len() {
                    return Ok(ReadState::Batch);
                }
                if short_read_drains && n < buf.len() {
                    return Ok(ReadState::Drained);
                }
                if n == buf.len() {
                    room = 4 * buf.len();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Ok(ReadState::Drained);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
