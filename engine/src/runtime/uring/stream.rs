//! Streams behind [`IoStream`]: reads off the socket's receive queue and the vectored send.
//!
//! Owns: [`UringStream`], handing received bytes to the loop (copied, appended, or a
//! well-filled buffer passed on as `Bytes` without a copy; the queue and its receive are
//! `recv`'s), and the `SENDMSG` of clones of the queued `Bytes`, which keep the payload alive
//! until the completion arrives. Must not touch: the ring and the operation table (`ring`),
//! what a completion means (`completion`, `recv`).

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use bytes::{Bytes, BytesMut};

use super::super::io::{IoStream, MAX_IOV};
use super::ring::{Core, CoreRef, OpKind, Rx, Sock, lock};

/// Receive buffer of a connection in its handshake when the driver has no buffer ring (see
/// `Driver::handshake_buffers`; with the ring an idle connection holds none at all).
pub(super) const HANDSHAKE_RECV: usize = 4096;

/// A stream of the io_uring driver.
pub(in crate::runtime) struct UringStream {
    pub(super) sock: TcpStream,
    pub(super) id: usize,
    pub(super) core: CoreRef,
}

impl std::fmt::Debug for UringStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringStream")
            .field("sock", &self.sock)
            .finish()
    }
}

impl Drop for UringStream {
    fn drop(&mut self) {
        lock(&self.core).close(self.id);
    }
}

impl AsFd for UringStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// The answer to a read that took `n` bytes: them, else the end of the stream or its error,
/// else `WouldBlock` (with a receive armed, whose completion brings the event).
fn finish(c: &mut Core, id: usize, n: usize) -> io::Result<usize> {
    if n > 0 {
        return Ok(n);
    }
    let s = &mut c.socks[id];
    match s.rx_end.take() {
        Some(Rx::Eof) => {
            s.rx_end = Some(Rx::Eof);
            Ok(0)
        }
        Some(Rx::Err(e)) => Err(e),
        None => {
            c.arm_recv(id);
            Err(io::ErrorKind::WouldBlock.into())
        }
    }
}

pub(super) fn stream(core: &CoreRef, sock: TcpStream) -> io::Result<UringStream> {
    sock.set_nonblocking(false)?;
    let id = lock(core).socks.insert(Sock {
        fd: sock.as_raw_fd(),
        ..Sock::default()
    });
    Ok(UringStream {
        sock,
        id,
        core: core.clone(),
    })
}

impl IoStream for UringStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut c = lock(&self.core);
        let mut n = 0;
        c.consume(self.id, buf.len(), |b| {
            buf[n..n + b.len()].copy_from_slice(b);
            n += b.len();
        });
        finish(&mut c, self.id, n)
    }

    fn read_append(&mut self, rx: &mut BytesMut, _scratch: &mut [u8]) -> io::Result<usize> {
        let mut c = lock(&self.core);
        let n = c.consume(self.id, usize::MAX, |b| rx.extend_from_slice(b));
        finish(&mut c, self.id, n)
    }

    fn read_bytes(&mut self, _scratch: &mut [u8]) -> io::Result<Bytes> {
        let mut c = lock(&self.core);
        // A well-filled buffer is handed over as is; a small read is copied, so a few bytes never
        // pin a whole buffer.
        if let Some(whole) = c.take_whole(self.id) {
            return Ok(Bytes::from(whole));
        }
        let mut out = Vec::new();
        let limit = c.read_chunk;
        let n = c.consume(self.id, limit, |b| out.extend_from_slice(b));
        finish(&mut c, self.id, n).map(|_| Bytes::from(out))
    }

    fn write_chunks(&mut self, chunks: &VecDeque<Bytes>) -> io::Result<usize> {
        let mut core = lock(&self.core);
        let s = &mut core.socks[self.id];
        if let Some(done) = s.sent.take() {
            return done;
        }
        if s.send_op.is_some() || chunks.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let bufs: Vec<Bytes> = chunks.iter().take(MAX_IOV).cloned().collect();
        let iov: Box<[libc::iovec]> = bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr().cast_mut().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: an all-zero msghdr is a valid empty header.
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msg.msg_iov = iov.as_ptr().cast_mut();
        msg.msg_iovlen = iov.len() as _;
        let op = core.start(
            Some(self.id),
            OpKind::Send {
                _bufs: bufs,
                _iov: iov,
                _msg: msg,
            },
        );
        core.socks[self.id].send_op = Some(op);
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        self.sock.shutdown(Shutdown::Write)
    }

    fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.sock.take_error()
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock.peer_addr()
    }
}
