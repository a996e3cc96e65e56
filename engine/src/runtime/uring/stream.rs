//! Streams: the receive kept in flight and the vectored send, behind [`IoStream`].
//!
//! Owns: [`UringStream`], arming a receive into a buffer the stream owns ([`Core::arm_recv`]:
//! `read_chunk` bytes, or [`HANDSHAKE_RECV`] during a handshake so a half-open connection does
//! not pin a bulk buffer), handing received bytes to the loop (copied, appended, or a
//! well-filled buffer passed on as `Bytes` without a copy), and the `SENDMSG` of clones of the
//! queued `Bytes`, which keep the payload alive until the completion arrives. Must not touch:
//! the ring and the operation table (`ring`), what a completion means (`completion`).

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use bytes::{Bytes, BytesMut};

use super::super::io::{IoStream, MAX_IOV};
use super::ring::{Core, CoreRef, OpKind, Rx, Sock, lock};

/// Receive buffer of a connection in its handshake (see [`Driver::handshake_buffers`]).
pub(super) const HANDSHAKE_RECV: usize = 4096;

impl Core {
    pub(super) fn arm_recv(&mut self, id: usize) {
        let s = &mut self.socks[id];
        if s.closed || s.recv_op.is_some() || s.rx.is_some() {
            return;
        }
        let size = if s.handshake {
            HANDSHAKE_RECV
        } else {
            self.read_chunk
        };
        let mut buf = std::mem::take(&mut s.spare);
        buf.clear();
        // The kernel fills the whole capacity: a handshake must not reuse a bulk-sized spare.
        if buf.capacity() < size || (s.handshake && buf.capacity() > size) {
            buf = Vec::with_capacity(size);
        }
        let op = self.start(Some(id), OpKind::Recv(buf));
        self.socks[id].recv_op = Some(op);
    }
}

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
        let mut core = lock(&self.core);
        let c = &mut *core;
        let s = &mut c.socks[self.id];
        match s.rx.take() {
            Some(Rx::Data(data, pos, end)) => {
                let n = buf.len().min(end - pos);
                buf[..n].copy_from_slice(&data[pos..pos + n]);
                if pos + n < end {
                    s.rx = Some(Rx::Data(data, pos + n, end));
                } else {
                    s.spare = data;
                    c.arm_recv(self.id);
                }
                Ok(n)
            }
            Some(Rx::Eof) => {
                s.rx = Some(Rx::Eof);
                Ok(0)
            }
            Some(Rx::Err(e)) => Err(e),
            None => {
                c.arm_recv(self.id);
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
    }

    fn read_append(&mut self, rx: &mut BytesMut, _scratch: &mut [u8]) -> io::Result<usize> {
        let mut core = lock(&self.core);
        let c = &mut *core;
        let s = &mut c.socks[self.id];
        match s.rx.take() {
            Some(Rx::Data(data, pos, end)) => {
                rx.extend_from_slice(&data[pos..end]);
                s.spare = data;
                c.arm_recv(self.id);
                Ok(end - pos)
            }
            Some(Rx::Eof) => {
                s.rx = Some(Rx::Eof);
                Ok(0)
            }
            Some(Rx::Err(e)) => Err(e),
            None => {
                c.arm_recv(self.id);
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
    }

    fn read_bytes(&mut self, _scratch: &mut [u8]) -> io::Result<Bytes> {
        let mut core = lock(&self.core);
        let c = &mut *core;
        let s = &mut c.socks[self.id];
        match s.rx.take() {
            Some(Rx::Data(data, pos, end)) => {
                // A well-filled buffer is handed over as is (the next receive gets a fresh one);
                // a small read is copied, so a few bytes never pin a whole buffer.
                let out = if pos == 0 && end >= c.read_chunk / 4 {
                    Bytes::from(data)
                } else {
                    let out = Bytes::copy_from_slice(&data[pos..end]);
                    s.spare = data;
                    out
                };
                c.arm_recv(self.id);
                Ok(out)
            }
            Some(Rx::Eof) => {
                s.rx = Some(Rx::Eof);
                Ok(Bytes::new())
            }
            Some(Rx::Err(e)) => Err(e),
            None => {
                c.arm_recv(self.id);
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
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
