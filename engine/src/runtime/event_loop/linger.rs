//! A closed session's last bytes: its tunnels stay open until what the session transmitted
//! last (its CLOSE among it) has left and the peer has closed its side, or [`CLOSE_LINGER`]
//! passes.
//!
//! Owns: the lingering tunnels (their keys and deadlines) and when each goes. Must not touch:
//! the session (it is gone) or what the bytes are.
//!
//! Why (issue 10, "io_uring drain stall"): a session's final transmit may queue more than one
//! write's worth (the acknowledgements of tens of thousands of finished streams, then the
//! CLOSE). io_uring only submits a send and completes it later, and dropping the socket then
//! cancelled the rest; and closing a socket with unread bytes in it (the peer's own last
//! acknowledgements) makes the kernel answer with a reset, on which the peer's next write fails
//! and it drops the tunnel before reading the CLOSE already in its receive buffer. The peer
//! then waited out its whole drain timeout. So a closed session's tunnel closes like a
//! well-behaved TCP connection: write everything, shut down the write side (the peer reads the
//! CLOSE, then end of stream), discard what arrives until the peer closes too, then close.

use std::time::{Duration, Instant};

use super::{Entry, EventLoop};
use crate::runtime::io::{Driver, IoStream};

/// Longest a closed session's tunnel stays open to write its last bytes.
pub(super) const CLOSE_LINGER: Duration = Duration::from_secs(2);

impl<D: Driver> EventLoop<D> {
    /// Closes tunnel `key` of a closed session once it has written its last bytes and the peer
    /// has closed its side (or at the deadline); a tunnel still connecting goes at once.
    pub(super) fn close_tunnel_after_flush(&mut self, key: usize, now: Instant) {
        let Some(Entry::Tunnel(conn)) = self.entries.get_mut(key) else {
            return;
        };
        if conn.connecting {
            self.remove(key);
            return;
        }
        let deadline = now + CLOSE_LINGER;
        conn.closing = Some(deadline);
        self.lingering.push((key, deadline));
        // Write what the socket takes now; the rest on its next event.
        self.flush_lingering(key);
    }

    /// A lingering tunnel's socket is ready: writes what is left, then shuts its write side
    /// and discards what arrives; goes at the peer's end of stream or on an error. True when
    /// `key` is a lingering tunnel (then the caller does nothing else with it).
    pub(super) fn flush_lingering(&mut self, key: usize) -> bool {
        let Some(Entry::Tunnel(conn)) = self.entries.get_mut(key) else {
            return false;
        };
        if conn.closing.is_none() {
            return false;
        }
        let conn = &mut **conn;
        let done = match conn.tx.flush(&mut conn.sock) {
            Ok(false) => false,
            Ok(true) => {
                if !conn.write_shut {
                    conn.write_shut = true;
                    let _ = conn.sock.shutdown_write();
                }
                peer_finished(&mut conn.sock, &mut self.read_buf)
            }
            Err(_) => true,
        };
        if done {
            self.end_lingering(key);
        }
        true
    }

    /// Closes the lingering tunnels whose deadline passed.
    pub(super) fn expire_lingering(&mut self, now: Instant) {
        if self.lingering.iter().all(|&(_, at)| at > now) {
            return;
        }
        let due: Vec<usize> = self
            .lingering
            .iter()
            .filter(|&&(_, at)| at <= now)
            .map(|&(k, _)| k)
            .collect();
        for key in due {
            tracing::debug!("a closed session's tunnel did not write its last bytes in time");
            self.end_lingering(key);
        }
    }

    /// The earliest lingering deadline.
    pub(super) fn next_lingering_deadline(&self) -> Option<Instant> {
        self.lingering.iter().map(|&(_, at)| at).min()
    }

    fn end_lingering(&mut self, key: usize) {
        self.lingering.retain(|&(k, _)| k != key);
        if matches!(self.entries.get(key), Some(Entry::Tunnel(c)) if c.closing.is_some()) {
            self.remove(key);
        }
    }
}

/// Reads and discards until the socket has nothing more; true at its end of stream or an error
/// (the peer is done with it).
fn peer_finished(sock: &mut impl IoStream, buf: &mut [u8]) -> bool {
    loop {
        match sock.read(buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}
