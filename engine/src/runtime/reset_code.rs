//! RESET codes the runtime sends for streams it cannot connect, beyond the ones its event
//! loop has always used (1–4, PROTOCOL.md §4.6), so that a client proxy can tell its
//! application why (SOCKS5 REP, HTTP status; PROTOCOL.md §4.8).
//!
//! Owns: the numbers and the verdict each one means. Must not touch: who decides (the
//! server's resolver and allow-list, the event loop's connect).

use crate::proxy::Verdict;

/// Codes 1–4, as the event loop sends them (kept here for the mapping below).
pub const CONNECT_FAILED: u32 = 1;
/// The target did not accept the connection within `backend_connect_timeout`.
pub const CONNECT_TIMEOUT: u32 = 3;
/// The target is not allowed: by the server's allow-list (`[server] allow`), or, at a client,
/// a server-opened stream names a service the client does not expose.
pub const NOT_ALLOWED: u32 = 5;
/// The target refused the connection (nothing listens on its port).
pub const CONNECTION_REFUSED: u32 = 6;
/// The target's name did not resolve, or its host or network is unreachable.
pub const UNREACHABLE: u32 = 7;

/// What a client tells its application when the server reset a stream with `code` before
/// confirming it.
pub fn verdict(code: u32) -> Verdict {
    match code {
        NOT_ALLOWED => Verdict::NotAllowed,
        CONNECTION_REFUSED => Verdict::ConnectionRefused,
        UNREACHABLE => Verdict::Unreachable,
        CONNECT_TIMEOUT => Verdict::TimedOut,
        _ => Verdict::Failed,
    }
}

/// The code for a failed connect to a target.
pub fn for_connect_error(e: &std::io::Error) -> u32 {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        return CONNECTION_REFUSED;
    }
    match e.raw_os_error() {
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EADDRNOTAVAIL) => UNREACHABLE,
        _ => CONNECT_FAILED,
    }
}
