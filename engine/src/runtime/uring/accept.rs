//! Listeners: one multishot `ACCEPT` armed per listener, with the one-shot fallback and the
//! back-off after a failed accept.
//!
//! Owns: [`UringListener`], arming its accept ([`Core::arm_accept`]), what an accept completion
//! means (a connection queued, the kernel refusing multishot, an error such as `EMFILE` and the
//! [`ACCEPT_RETRY`] back-off) and handing accepted connections to the loop. Must not touch: the
//! ring's submission and the operation table (`ring`), stream reads and writes (`stream`).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::super::io::IoListener;
use super::ring::{Core, CoreRef, OpKind, lock};
use super::stream::{UringStream, stream};

/// How long a listener waits before accepting again after an accept failed (e.g. `EMFILE`),
/// rather than spinning on the error.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

impl Core {
    pub(super) fn arm_accept(&mut self, id: usize) {
        if self.socks[id].closed || self.socks[id].accept_op.is_some() {
            return;
        }
        let op = self.start(Some(id), OpKind::Accept);
        self.socks[id].accept_op = Some(op);
    }

    /// The end of a one-shot accept (or of a multishot one the kernel stopped) on listener
    /// `id`; `retry` says the error was a transient one (`EINTR`, `EAGAIN`).
    pub(super) fn accept_done(&mut self, id: usize, res: i32, retry: bool) {
        let err = || io::Error::from_raw_os_error(-res);
        let s = &mut self.socks[id];
        s.accept_op = None;
        if res == -libc::EINVAL && self.accept_multi {
            // A kernel before 5.19: multishot accept is not there.
            tracing::debug!("io_uring: no multishot accept; accepting one at a time");
            self.accept_multi = false;
            if !s.closed {
                self.arm_accept(id);
            }
        } else if res >= 0 {
            // SAFETY: a successful accept returns a new descriptor that nobody owns yet.
            s.accepted
                .push_back(Ok(unsafe { OwnedFd::from_raw_fd(res) }));
            if !s.closed {
                self.arm_accept(id);
            }
        } else if retry {
            if !s.closed {
                self.arm_accept(id);
            }
        } else if res != -libc::ECANCELED {
            s.accepted.push_back(Err(err()));
            if !s.closed {
                self.accept_retry.push((id, Instant::now() + ACCEPT_RETRY));
            }
        }
    }

    /// A completion of a multishot operation that stays armed: an accepted connection.
    pub(super) fn complete_more(&mut self, key: usize, res: i32) {
        let Some(op) = self.ops.get(key) else {
            return;
        };
        let (Some(id), OpKind::Accept) = (op.sock, &op.kind) else {
            return;
        };
        let s = &mut self.socks[id];
        if res >= 0 {
            // SAFETY: a successful accept returns a new descriptor that nobody owns yet.
            let fd = unsafe { OwnedFd::from_raw_fd(res) };
            if s.closed {
                // The listener is going away; the connection is closed with `fd`.
                return;
            }
            s.accepted.push_back(Ok(fd));
        }
        if let Some(t) = s.token {
            self.ready.push((t, true, false));
        }
    }

    /// Re-arms the listeners whose back-off is over; the earliest still waiting.
    pub(super) fn retry_accepts(&mut self, now: Instant) -> Option<Instant> {
        let due: Vec<usize> = self
            .accept_retry
            .iter()
            .filter(|(_, at)| *at <= now)
            .map(|(id, _)| *id)
            .collect();
        self.accept_retry.retain(|(_, at)| *at > now);
        for id in due {
            if self.socks.get(id).is_some_and(|s| !s.closed) {
                self.arm_accept(id);
            }
        }
        self.accept_retry.iter().map(|(_, at)| *at).min()
    }
}

/// A listener of the io_uring driver.
pub(in crate::runtime) struct UringListener {
    pub(super) sock: TcpListener,
    pub(super) id: usize,
    pub(super) core: CoreRef,
}

impl std::fmt::Debug for UringListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringListener")
            .field("sock", &self.sock)
            .finish()
    }
}

impl AsFd for UringListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl Drop for UringListener {
    fn drop(&mut self) {
        lock(&self.core).close(self.id);
    }
}

impl IoListener for UringListener {
    type Stream = UringStream;
    fn accept(&mut self) -> io::Result<(UringStream, SocketAddr)> {
        loop {
            let mut core = lock(&self.core);
            let s = &mut core.socks[self.id];
            let next = s.accepted.pop_front();
            if matches!(next, Some(Err(_))) && !s.accepted.is_empty() {
                // The loop stops accepting at an error: make it come back for the rest.
                if let Some(token) = s.token {
                    core.ready.push((token, true, false));
                }
            }
            drop(core);
            match next {
                None => return Err(io::ErrorKind::WouldBlock.into()),
                Some(Err(e)) => return Err(e),
                Some(Ok(fd)) => {
                    let sock = TcpStream::from(fd);
                    // A connection reset before we got to it has no peer: skip it.
                    let Ok(peer) = sock.peer_addr() else {
                        continue;
                    };
                    return Ok((stream(&self.core, sock)?, peer));
                }
            }
        }
    }
}
