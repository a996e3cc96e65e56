//! Client: proxy connections (SOCKS5, HTTP) from accept to the server's verdict.
//!
//! Owns: [`ProxyConn`] (a connection whose proxy request is not complete yet, or whose stream
//! the session cannot open yet), the per-worker cap on those ([`MAX_PROXY_HANDSHAKES`]), the
//! handshake and verdict deadlines, opening the stream with the target the application named,
//! and the replies written straight to the socket before it is closed. Must not touch: the
//! protocol parsing ([`crate::proxy`]) or how a stream moves bytes once it exists
//! ([`super::app`]; an [`AppConn`] waiting for its verdict writes the success reply).
//!
//! A connection becomes an [`AppConn`] in place (same slab key, so the driver's registration
//! and any read in flight stay as they are) once its stream is open; from then on the
//! session's `StreamConfirmed` or `StreamReset` is the verdict (PROTOCOL.md §4.8).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::app::AppConn;
use super::streams::After;
use super::{Entry, EventLoop};
use crate::endpoint::SessionKey;
use crate::proxy::{HttpHandshake, ProxyHandshake, ProxyRequest, Socks5Handshake, Step, Verdict};
use crate::runtime::io::{Driver, IoStream};
use crate::runtime::{ProxyKind, reset_code};
use crate::session::StreamId;

/// Proxy connections per worker whose request is not complete or whose stream is not open
/// yet; beyond this, new proxy connections are closed at once.
pub(super) const MAX_PROXY_HANDSHAKES: usize = if cfg!(test) { 8 } else { 1024 };
/// From accept to a complete proxy request (and an open stream).
pub(super) const PROXY_HANDSHAKE_TIMEOUT: Duration = if cfg!(test) {
    // The unit tests below wait for it.
    Duration::from_millis(400)
} else {
    Duration::from_secs(10)
};
/// From the stream's open to the server's verdict. Longer than the server's default
/// `backend_connect_timeout` (10 s) plus a lookup, so the server's own answer normally comes
/// first; this bounds a server that never answers (one that predates confirmations).
pub(super) const PROXY_VERDICT_TIMEOUT: Duration = Duration::from_secs(30);

/// A deadline for the entry at `key`, valid while the entry is still the same connection.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    key: usize,
    /// Handshakes: the connection's serial. Verdicts: the stream.
    id: u64,
    session: Option<SessionKey>,
}

/// This worker's proxy connections in the making.
#[derive(Debug, Default)]
pub(super) struct Proxies {
    handshakes: usize,
    next_serial: u64,
    /// In order of start (one timeout for all, so the earliest is first).
    handshake_deadlines: VecDeque<Deadline>,
    verdict_deadlines: VecDeque<Deadline>,
}

impl Proxies {
    /// When the earliest handshake or verdict gives up.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let a = self.handshake_deadlines.front().map(|d| d.at);
        let b = self.verdict_deadlines.front().map(|d| d.at);
        a.into_iter().chain(b).min()
    }

    /// A [`ProxyConn`] left the slab.
    pub(super) fn handshake_ended(&mut self) {
        self.handshakes = self.handshakes.saturating_sub(1);
    }
}

/// A proxy connection before its stream exists.
#[derive(Debug)]
pub(super) struct ProxyConn<D: Driver> {
    pub(super) sock: D::Stream,
    handshake: ProxyHandshake,
    /// Read and not consumed by the handshake yet (after the request: the application's first
    /// stream bytes).
    input: Vec<u8>,
    /// The complete request, while the session cannot open a stream yet.
    request: Option<ProxyRequest>,
    serial: u64,
    peer: SocketAddr,
}

/// Writes `bytes` now, without blocking (the socket is fresh and the bytes few: a handshake
/// reply or a verdict). Used instead of the driver's queued writes for replies that are
/// followed by a close, so that they are in the kernel before the descriptor goes.
pub(super) fn send_now(sock: &impl AsFd, bytes: &[u8]) -> bool {
    let fd = sock.as_fd().as_raw_fd();
    let mut sent = 0;
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        // SAFETY: `rest` is a live, initialised byte slice for the duration of the call, and
        // `fd` is a socket this loop owns.
        let n = unsafe {
            libc::send(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n > 0 {
            sent += n.unsigned_abs();
        } else if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {
            continue;
        } else {
            return false;
        }
    }
    true
}

/// Ends our side after a final reply: FIN, and whatever the application sent meanwhile is read
/// and dropped so that the close does not turn into a reset that could destroy the reply.
pub(super) fn close_after_reply(sock: &impl AsFd) {
    let fd = sock.as_fd().as_raw_fd();
    // SAFETY: `fd` is a socket this loop owns; shutdown takes no memory.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    let mut scratch = [0u8; 4096];
    for _ in 0..16 {
        // SAFETY: `scratch` is a writable buffer of the length given, live during the call.
        let n = unsafe {
            libc::recv(
                fd,
                scratch.as_mut_ptr().cast(),
                scratch.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            break;
        }
    }
}

impl<D: Driver> EventLoop<D> {
    /// A connection accepted on a proxy listener: its handshake starts, within the cap.
    pub(super) fn start_proxy(&mut self, sock: D::Stream, peer: SocketAddr, kind: &ProxyKind) {
        if self.proxies.handshakes >= MAX_PROXY_HANDSHAKES {
            tracing::warn!(
                %peer,
                limit = MAX_PROXY_HANDSHAKES,
                "too many proxy handshakes in progress; connection closed"
            );
            crate::runtime::sockopt::abort_on_close(&sock);
            return;
        }
        let handshake = match kind {
            ProxyKind::Socks5 { credentials } => {
                ProxyHandshake::Socks5(Socks5Handshake::new(credentials.clone()))
            }
            ProxyKind::Http => ProxyHandshake::Http(HttpHandshake::new()),
        };
        let serial = self.proxies.next_serial;
        self.proxies.next_serial += 1;
        let conn = ProxyConn {
            sock,
            handshake,
            input: Vec::new(),
            request: None,
            serial,
            peer,
        };
        match self.add(Entry::Proxy(Box::new(conn))) {
            Ok(key) => {
                self.proxies.handshakes += 1;
                self.proxies.handshake_deadlines.push_back(Deadline {
                    at: Instant::now() + PROXY_HANDSHAKE_TIMEOUT,
                    key,
                    id: serial,
                    session: None,
                });
                tracing::debug!(%peer, "proxy connection accepted");
                self.on_proxy(key);
            }
            Err(e) => tracing::warn!("cannot register a proxy connection: {e}"),
        }
    }

    /// Readiness of a proxy connection: reads and advances its handshake.
    pub(super) fn on_proxy(&mut self, key: usize) {
        loop {
            let Some(Entry::Proxy(conn)) = self.entries.get_mut(key) else {
                return;
            };
            if conn.request.is_some() {
                // Waiting for the session; the stream reads the rest once it is open.
                return;
            }
            let read = conn.sock.read_bytes(&mut self.read_buf);
            let bytes = match read {
                Ok(b) if b.is_empty() => {
                    tracing::debug!(peer = %conn.peer, "proxy connection closed during its handshake");
                    self.remove(key);
                    return;
                }
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(peer = %conn.peer, "proxy connection failed: {e}");
                    self.remove(key);
                    return;
                }
            };
            conn.input.extend_from_slice(&bytes);
            let mut out = Vec::new();
            let step = conn.handshake.advance(&mut conn.input, &mut out);
            if !out.is_empty() && !send_now(&conn.sock, &out) {
                tracing::debug!(peer = %conn.peer, "cannot write a proxy handshake reply");
                self.remove(key);
                return;
            }
            match step {
                Ok(Step::NeedMore) => {}
                Ok(Step::Request(request)) => {
                    tracing::debug!(peer = %conn.peer, target = %request.target, "proxy request");
                    conn.request = Some(request);
                    self.open_proxy_stream(key);
                    return;
                }
                Err(failure) => {
                    tracing::info!(peer = %conn.peer, "proxy handshake refused: {failure}");
                    self.close_proxy(key, &failure.reply);
                    return;
                }
            }
        }
    }

    /// Opens the stream of a proxy connection whose request is complete, and turns the
    /// connection into an [`AppConn`] waiting for the verdict; or leaves it waiting for the
    /// session (a tunnel, or more streams).
    fn open_proxy_stream(&mut self, key: usize) {
        let Some(skey) = self.endpoint.client_session() else {
            return;
        };
        let Some(Entry::Proxy(conn)) = self.entries.get(key) else {
            return;
        };
        let Some(request) = &conn.request else {
            return;
        };
        let reply = request.reply;
        let target = request.target.clone();
        let Some(slot) = self.endpoint.get_mut(skey) else {
            return;
        };
        let opened = slot.session_mut().open_stream(Some(&target));
        self.touch(skey);
        let stream = match opened {
            Ok(stream) => stream,
            Err(crate::StreamError::NotReady) if self.refused_everywhere() => {
                return self.close_proxy(key, &reply.reply(Verdict::Failed));
            }
            Err(crate::StreamError::NotReady) => return,
            Err(e) => {
                tracing::warn!(%target, "cannot open a stream for a proxy request: {e}");
                return self.close_proxy(key, &reply.reply(Verdict::Failed));
            }
        };
        // Out of the slab without touching the driver, and back in at the same key.
        let Some(Entry::Proxy(conn)) = self.entries.try_remove(key) else {
            return;
        };
        self.proxies.handshake_ended();
        let ProxyConn {
            sock,
            input,
            request,
            peer,
            ..
        } = *conn;
        let mut first = request.map(|r| r.head).unwrap_or_default();
        first.extend_from_slice(&input);
        tracing::info!(stream, %peer, %target, "stream opened by proxy request");
        let app = AppConn::proxied(sock, skey, stream, peer, reply, Bytes::from(first));
        let new_key = self.entries.insert(Entry::App(Box::new(app)));
        debug_assert_eq!(new_key, key, "a slab reuses the key it freed last");
        if new_key != key {
            // Not expected (a slab reuses the last freed key), but keep the driver right.
            if let Some(Entry::App(app)) = self.entries.get_mut(new_key) {
                self.io.deregister_stream(&mut app.sock);
                if let Err(e) = self.io.register_stream(&mut app.sock, new_key, false) {
                    tracing::warn!("cannot register a proxy connection: {e}");
                    self.entries.remove(new_key);
                    self.refuse_stream(skey, stream, reset_code::CONNECT_FAILED);
                    return;
                }
            }
        }
        self.endpoint[skey]
            .data_mut()
            .streams
            .insert(stream, new_key);
        self.proxies.verdict_deadlines.push_back(Deadline {
            at: Instant::now() + PROXY_VERDICT_TIMEOUT,
            key: new_key,
            id: stream,
            session: Some(skey),
        });
        self.stream_to_session(new_key);
    }

    /// Client: proxy connections whose request waited for the session open their streams now.
    pub(super) fn open_waiting_proxies(&mut self) {
        let waiting: Vec<usize> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Proxy(c) if c.request.is_some()))
            .map(|(k, _)| k)
            .collect();
        for key in waiting {
            self.open_proxy_stream(key);
        }
    }

    /// Writes a final reply to a proxy connection and closes it.
    fn close_proxy(&mut self, key: usize, reply: &[u8]) {
        if let Some(Entry::Proxy(conn)) = self.remove(key) {
            if !reply.is_empty() {
                send_now(&conn.sock, reply);
            }
            close_after_reply(&conn.sock);
        }
    }

    /// Closes the handshakes that took too long, and answers the streams whose verdict has not
    /// come in time (their streams are reset with code 3).
    pub(super) fn expire_proxies(&mut self, now: Instant) {
        while let Some(d) = self.proxies.handshake_deadlines.front().copied() {
            if d.at > now {
                break;
            }
            self.proxies.handshake_deadlines.pop_front();
            let reply = match self.entries.get(d.key) {
                Some(Entry::Proxy(conn)) if conn.serial == d.id => match &conn.request {
                    Some(request) => request.reply.reply(Verdict::Failed),
                    None => conn.handshake.timeout_reply(),
                },
                _ => continue,
            };
            tracing::info!(timeout = ?PROXY_HANDSHAKE_TIMEOUT, "proxy handshake timed out; connection closed");
            self.close_proxy(d.key, &reply);
        }
        while let Some(d) = self.proxies.verdict_deadlines.front().copied() {
            if d.at > now {
                break;
            }
            self.proxies.verdict_deadlines.pop_front();
            let (Some(session), stream) = (d.session, d.id as StreamId) else {
                continue;
            };
            let Some(Entry::App(app)) = self.entries.get_mut(d.key) else {
                continue;
            };
            if app.give_up_verdict(session, stream) {
                tracing::warn!(stream, timeout = ?PROXY_VERDICT_TIMEOUT, "no verdict from the server for a proxy stream; resetting it");
                self.after(d.key, After::Reset(reset_code::CONNECT_TIMEOUT));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::{Duration, Instant};

    use super::{MAX_PROXY_HANDSHAKES, PROXY_HANDSHAKE_TIMEOUT};
    use crate::runtime::{ClientProxy, ProxyKind, RuntimeOptions, spawn_client_with_proxies};

    /// Reads until EOF or an error, within `limit`; true when the peer closed.
    fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
        s.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                }
            }
        }
    }

    mtcpd_testkit::driver_tests! {
        /// The proxy handshakes a worker holds are capped (the one beyond is closed at once),
        /// a handshake that stalls is closed at its deadline (HTTP with 408), and the places
        /// come back.
        #[within(60)]
        fn proxy_handshakes_are_capped_and_time_out(io) {
            let mut opts = RuntimeOptions {
                io: io.name().parse().expect("a driver name"),
                drain_timeout: Duration::from_millis(200),
                workers: 1,
                ..RuntimeOptions::default()
            };
            opts.engine.psk = b"proxy-cap-test-key: 32 bytes or more!".to_vec();
            opts.tunnel_sockets.congestion = None;
            let any = SocketAddr::from(([127, 0, 0, 1], 0));
            let proxies = [
                ClientProxy { listen: any, kind: ProxyKind::Socks5 { credentials: None } },
                ClientProxy { listen: any, kind: ProxyKind::Http },
            ];
            // No server: the proxies never get as far as a stream.
            let nowhere = SocketAddr::from(([127, 0, 0, 1], 1));
            let handle = spawn_client_with_proxies(opts, nowhere, &[], &proxies).unwrap();
            let (socks, http) = (handle.local_addrs()[0], handle.local_addrs()[1]);
            let mut held: Vec<TcpStream> = (0..MAX_PROXY_HANDSHAKES - 1)
                .map(|_| TcpStream::connect(socks).unwrap())
                .collect();
            let mut http_conn = TcpStream::connect(http).unwrap();
            http_conn.write_all(b"GET http://x/ HTTP/1.1\r\n").unwrap();
            // Let the worker accept them all before the one over the cap.
            std::thread::sleep(Duration::from_millis(100));
            let started = Instant::now();
            let mut over = TcpStream::connect(socks).unwrap();
            assert!(
                closed_within(&mut over, Duration::from_millis(300)),
                "a connection beyond {MAX_PROXY_HANDSHAKES} handshakes is closed at once"
            );
            assert!(started.elapsed() < PROXY_HANDSHAKE_TIMEOUT);
            for s in &mut held {
                assert!(closed_within(s, PROXY_HANDSHAKE_TIMEOUT * 4), "stalled handshake closed");
            }
            let mut reply = Vec::new();
            http_conn.set_read_timeout(Some(PROXY_HANDSHAKE_TIMEOUT * 4)).unwrap();
            let _ = http_conn.read_to_end(&mut reply);
            assert!(reply.starts_with(b"HTTP/1.1 408 "), "{:?}", String::from_utf8_lossy(&reply));
            // The places came back: a new handshake is answered.
            let mut again = TcpStream::connect(socks).unwrap();
            again.write_all(&[5, 1, 0]).unwrap();
            let mut method = [0u8; 2];
            again.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            again.read_exact(&mut method).unwrap();
            assert_eq!(method, [5, 0]);
            handle.shutdown();
            handle.join();
        }
    }
}
