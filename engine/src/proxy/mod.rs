//! Local proxy protocols a client offers its applications: SOCKS5 (RFC 1928, with RFC 1929
//! username/password) and HTTP (CONNECT, and absolute-form requests such as
//! `GET http://host/path`), as sans-IO state machines.
//!
//! Owns: parsing what an application sends before its stream exists, the replies it gets
//! during the handshake, the target text that rides in the stream's OPEN (`host:port`,
//! `a.b.c.d:port` or `[v6]:port`, PROTOCOL.md §4.8), and the reply that tells the application
//! the server's verdict ([`ReplyKind`], [`Verdict`]). Must not touch: sockets, timers or
//! sessions: the runtime (`runtime::event_loop::proxy`) reads and writes the bytes, bounds the
//! handshake in time and opens the stream.
//!
//! They live in the engine rather than in the binary because the engine's event loop runs
//! them (a proxy connection becomes an ordinary stream with no extra copy or thread), and an
//! embedder bringing its own I/O can reuse them.
//!
//! Every input is bounded: a handshake that has not produced its request within
//! [`MAX_HANDSHAKE_BYTES`] is refused, and no input makes these machines panic
//! (`tests::random_bytes_never_panic`).

pub mod http;
pub mod socks5;

use std::net::{Ipv4Addr, Ipv6Addr};

pub use http::HttpHandshake;
pub use socks5::{Socks5Credentials, Socks5Handshake};

/// Most bytes a proxy handshake may send before its request is complete (an HTTP request head
/// with its headers; a SOCKS5 handshake is at most 1 + 1 + 255 + 513 + 262 bytes).
pub const MAX_HANDSHAKE_BYTES: usize = 16 * 1024;

/// What a handshake produced once the application's request is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRequest {
    /// The target for the stream's OPEN: `host:port`, `a.b.c.d:port` or `[v6]:port`.
    pub target: String,
    /// Bytes to send on the stream before anything else the application writes (an HTTP
    /// request rewritten to origin-form; empty for SOCKS5 and CONNECT).
    pub head: Vec<u8>,
    /// How the server's verdict is told to the application.
    pub reply: ReplyKind,
}

/// A handshake that cannot go on; `reply` (possibly empty) is written before closing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ProxyFailure {
    /// Bytes for the application before the connection is closed.
    pub reply: Vec<u8>,
    /// Why, for the log.
    pub reason: String,
}

impl ProxyFailure {
    fn new(reply: impl Into<Vec<u8>>, reason: impl Into<String>) -> Self {
        Self {
            reply: reply.into(),
            reason: reason.into(),
        }
    }
}

/// One step of a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// More bytes are needed.
    NeedMore,
    /// The request is complete; bytes after it are the application's first stream bytes.
    Request(ProxyRequest),
}

/// A proxy handshake of either kind.
#[derive(Debug)]
pub enum ProxyHandshake {
    /// SOCKS5.
    Socks5(Socks5Handshake),
    /// HTTP proxy.
    Http(HttpHandshake),
}

impl ProxyHandshake {
    /// Feeds `input` (everything read and not consumed yet): consumed bytes are removed from
    /// its front, and what to write to the application is appended to `out`.
    pub fn advance(
        &mut self,
        input: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<Step, ProxyFailure> {
        let step = match self {
            ProxyHandshake::Socks5(h) => h.advance(input, out),
            ProxyHandshake::Http(h) => h.advance(input),
        }?;
        if step == Step::NeedMore && input.len() >= MAX_HANDSHAKE_BYTES {
            let reply = match self {
                ProxyHandshake::Socks5(_) => Vec::new(),
                ProxyHandshake::Http(_) => {
                    http::status_reply(431, "Request Header Fields Too Large")
                }
            };
            return Err(ProxyFailure::new(reply, "proxy request too large"));
        }
        Ok(step)
    }

    /// The reply to an application whose handshake took too long.
    pub fn timeout_reply(&self) -> Vec<u8> {
        match self {
            ProxyHandshake::Socks5(_) => Vec::new(),
            ProxyHandshake::Http(_) => http::status_reply(408, "Request Timeout"),
        }
    }
}

/// How the application learns the server's verdict on its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// A SOCKS5 reply (VER, REP, RSV, ATYP, BND.ADDR, BND.PORT).
    Socks5,
    /// An HTTP status line for CONNECT (`200 Connection established` on success).
    HttpConnect,
    /// An HTTP request forwarded to its origin: nothing on success (the origin's response
    /// follows), an error response otherwise.
    HttpForward,
}

/// What the server said about a stream a proxy opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The target is connected.
    Connected,
    /// The server's allow-list does not allow the target.
    NotAllowed,
    /// The target refused the connection.
    ConnectionRefused,
    /// The name did not resolve, or the host or network is unreachable.
    Unreachable,
    /// The target did not answer in time.
    TimedOut,
    /// Anything else (the server is busy, the connection failed otherwise).
    Failed,
}

impl ReplyKind {
    /// The bytes that tell the application `verdict`.
    pub fn reply(self, verdict: Verdict) -> Vec<u8> {
        match self {
            ReplyKind::Socks5 => socks5::reply(socks5::rep_for(verdict)).to_vec(),
            ReplyKind::HttpConnect if verdict == Verdict::Connected => {
                b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec()
            }
            ReplyKind::HttpForward if verdict == Verdict::Connected => Vec::new(),
            ReplyKind::HttpConnect | ReplyKind::HttpForward => {
                let (code, text) = http::status_for(verdict);
                http::status_reply(code, text)
            }
        }
    }
}

/// `host:port` for the OPEN: IPv6 addresses in brackets.
fn target_text(host: &Host, port: u16) -> String {
    match host {
        Host::V4(ip) => format!("{ip}:{port}"),
        Host::V6(ip) => format!("[{ip}]:{port}"),
        Host::Name(name) => format!("{name}:{port}"),
    }
}

/// A target host as an application names it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    Name(String),
}

/// A host name an application may ask for: letters, digits, `-`, `_` and dots, 1 to 255
/// bytes (no client-side DNS: the server resolves it, and its allow-list judges it).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.bytes().any(|b| b != b'.')
}

#[cfg(test)]
mod tests;
