//! The io_uring driver: the [`super::io`] contract over completions.
//!
//! Owns: the ring, every operation in flight and the buffers they reference. Must not touch:
//! what the loop does with the bytes ([`super::event_loop`] is shared with mio).
//!
//! # Completion model
//! - Each stream keeps one multishot receive armed that takes buffers from the worker's
//!   provided-buffer ring only when bytes arrive (`bufring`, `recv`): an idle socket holds no
//!   receive buffer. Received chunks queue per socket; a buffer goes back to the ring once its
//!   bytes are read, and what the loop leaves unread at the end of a turn is copied out and the
//!   multishot cancelled until the socket is read empty (flow control). Without a ring (a kernel
//!   before 5.19) each stream has one receive into a buffer of its own (`read_chunk`, or
//!   [`stream::HANDSHAKE_RECV`] during a handshake). A well-filled buffer is handed to the
//!   session as `Bytes` without a copy, tunnel bytes are appended to the tunnel's receive buffer.
//!   At most one vectored send (`SENDMSG` with `MSG_NOSIGNAL`) of clones of the queued
//!   `Bytes` is in flight, which keep the payload alive until the completion arrives. The loop's
//!   outbox only drops bytes the completion reports as sent, so the send never references freed
//!   memory.
//! - A `read` that finds no completed receive arms one and answers `WouldBlock`; a `write` that
//!   finds no completed send submits one and answers `WouldBlock`. Every completion becomes an
//!   event for the socket's token, which is exactly the edge the shared loop waits for.
//! - Listeners keep one multishot `ACCEPT` armed (Linux 5.19): one submission accepts every
//!   connection that arrives, each as its own completion, so a burst of connects is taken in
//!   one turn of the loop rather than one connection per turn (8,000 connects took seconds that
//!   way). A kernel without it answers `EINVAL` once, and the driver falls back to one-shot
//!   accepts for the rest of its life. When the accept ends (an error such as `EMFILE`, or the
//!   kernel dropping the multishot), it is armed again, after a short back-off when it failed,
//!   so `EMFILE` does not spin the loop. Connecting sockets (a non-blocking `connect` is
//!   already in progress) wait with `POLL_ADD(POLLOUT)`.
//! - Timers: the loop's timeout is passed to `io_uring_enter` (`EXT_ARG` timespec).
//! - The waker is an eventfd with a `READ` always armed.
//!
//! # Buffer lifetimes
//! Buffers live in the operation table, not in the socket, and are freed only when their
//! completion arrives. Dropping a socket first submits whatever is queued (an SQE names a file
//! descriptor number, which must not be reused before the kernel has looked it up), then cancels
//! its operations; the state is forgotten when the last completion arrives. Dropping the ring
//! cancels and waits for everything still in flight, and leaks buffers rather than free memory
//! the kernel might still write.
//!
//! Sockets are put in blocking mode: io_uring then waits for readiness internally (poll arming)
//! instead of failing with `EAGAIN`, and the loop never calls a blocking syscall on them itself.
//!
//! # Files
//! - `ring`: the ring, the operation table, submission batching, cancellation, shutdown.
//! - `completion`: what each completion means for its socket; the ready events.
//! - `bufring`: the provided-buffer ring and its size.
//! - `recv`: each socket's receive queue, the multishot receive, spilling and re-arming.
//! - `accept`: listeners, multishot accept with the one-shot fallback, the back-off.
//! - `stream`: streams' reads and vectored send.
//! - this file: the [`Driver`] the loop holds, which ties them together.

mod accept;
mod bufring;
mod completion;
mod recv;
mod ring;
mod stream;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::types;
use slab::Slab;

use super::io::{Driver, Ready, Waker, WakerInner};
pub(super) use accept::UringListener;
use bufring::BufRing;
pub(super) use ring::probe;
use ring::{Core, CoreRef, OpKind, Sock, lock};
pub(super) use stream::UringStream;
use stream::stream;

/// How soon the wait returns while sockets still wait for ring buffers.
const STARVED_RETRY: Duration = Duration::from_millis(1);

/// The io_uring driver.
pub(super) struct Uring {
    core: CoreRef,
}

impl Uring {
    pub(super) fn new(read_chunk: usize) -> io::Result<(Self, Waker)> {
        let buffers = if bufring::RING_BY_DEFAULT {
            bufring::RING_BUFFERS
        } else {
            0
        };
        Self::with_ring(read_chunk, buffers)
    }

    /// The driver with a buffer ring of `buffers` receive buffers (0: none, each socket
    /// receives into its own, as on a kernel that refuses the ring).
    pub(super) fn with_ring(read_chunk: usize, buffers: u16) -> io::Result<(Self, Waker)> {
        let ring = ring::ring()?;
        let read_chunk = read_chunk.max(4096);
        let bufs = if buffers == 0 {
            None
        } else {
            match BufRing::new(&ring, buffers, read_chunk.min(bufring::RING_BUFFER_MAX)) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::info!(
                        "io_uring: no provided-buffer ring ({e}); each socket keeps a receive \
                         buffer of its own"
                    );
                    None
                }
            }
        };
        // SAFETY: plain eventfd creation; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor owned by nobody else.
        let wake_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let waker = Waker(WakerInner::EventFd(wake_fd.try_clone()?));
        let mut core = Core {
            ring,
            socks: Slab::new(),
            ops: Slab::new(),
            ready: Vec::new(),
            read_chunk,
            wake_fd,
            accept_retry: Vec::new(),
            accept_multi: true,
            bufs,
            holding: Vec::new(),
            starved: VecDeque::new(),
            multishots: 0,
            dry_log: (Instant::now(), 0),
            generation: 0,
        };
        core.start(None, OpKind::Wake(Box::new(0)));
        Ok((
            Self {
                core: Arc::new(Mutex::new(core)),
            },
            waker,
        ))
    }

    fn sock(&self, fd: RawFd) -> usize {
        lock(&self.core).socks.insert(Sock {
            fd,
            ..Sock::default()
        })
    }
}

impl Driver for Uring {
    type Listener = UringListener;
    type Stream = UringStream;
    const NAME: &'static str = "uring";
    const TUNNEL_QUEUE: usize = 256 * 1024;

    fn listener(&mut self, l: TcpListener) -> io::Result<UringListener> {
        l.set_nonblocking(false)?;
        let id = self.sock(l.as_raw_fd());
        Ok(UringListener {
            sock: l,
            id,
            core: self.core.clone(),
        })
    }

    fn stream(&mut self, s: TcpStream) -> io::Result<UringStream> {
        stream(&self.core, s)
    }

    fn register_listener(&mut self, l: &mut UringListener, token: usize) -> io::Result<()> {
        let mut c = lock(&self.core);
        c.socks[l.id].token = Some(token);
        c.arm_accept(l.id);
        Ok(())
    }

    fn register_stream(
        &mut self,
        s: &mut UringStream,
        token: usize,
        connecting: bool,
    ) -> io::Result<()> {
        let mut c = lock(&self.core);
        c.socks[s.id].token = Some(token);
        if connecting {
            let op = c.start(Some(s.id), OpKind::Poll);
            c.socks[s.id].poll_op = Some(op);
        } else {
            // Like epoll's first edge: the loop looks at the socket once, which arms a receive.
            c.ready.push((token, true, true));
        }
        Ok(())
    }

    fn handshake_buffers(&mut self, s: &mut UringStream, handshake: bool) {
        let mut c = lock(&self.core);
        let sock = &mut c.socks[s.id];
        sock.handshake = handshake;
        if handshake {
            // A spare left from a bulk receive would be reused at its size.
            sock.spare = Vec::new();
        }
    }

    fn deregister_listener(&mut self, l: &mut UringListener) {
        lock(&self.core).socks[l.id].token = None;
    }

    fn deregister_stream(&mut self, s: &mut UringStream) {
        lock(&self.core).socks[s.id].token = None;
    }

    fn detach_stream(&mut self, s: UringStream) -> io::Result<(TcpStream, Bytes)> {
        let mut c = lock(&self.core);
        let id = s.id;
        if c.socks[id].send_op.is_some() {
            return Err(io::Error::other(
                "cannot hand over a socket with a send in flight",
            ));
        }
        c.socks[id].token = None;
        // Nothing arms a receive again from here on.
        c.socks[id].detached = true;
        // A receive left in flight would take bytes meant for the new owner: cancel it and wait
        // until the kernel has given it back (with whatever it had received by then).
        let ops = [c.socks[id].recv_op, c.socks[id].poll_op];
        c.cancel(ops.into_iter().flatten());
        for _ in 0..64 {
            if c.socks[id].inflight == 0 {
                break;
            }
            match c.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
            c.reap();
        }
        if c.socks[id].inflight != 0 {
            return Err(io::Error::other("a cancelled receive did not come back"));
        }
        // End of stream and errors are still there for the next owner to read.
        let mut received = Vec::new();
        c.consume(id, usize::MAX, |b| received.extend_from_slice(b));
        c.release_rx(id);
        drop(c);
        // The record and the original descriptor go with `s`; the duplicate lives on.
        let sock = s.sock.try_clone()?;
        drop(s);
        Ok((sock, Bytes::from(received)))
    }

    fn wait(&mut self, timeout: Duration, out: &mut Vec<Ready>) -> io::Result<()> {
        let mut c = lock(&self.core);
        // The loop has handled the last turn's events: what it left unread leaves the ring.
        c.spill();
        c.reap();
        let now = Instant::now();
        let mut timeout = match c.retry_accepts(now) {
            Some(at) => timeout.min(at.saturating_duration_since(now)),
            None => timeout,
        };
        if c.rearm_starved(now) {
            // More sockets missed the ring than it has buffers: come back for the rest soon.
            timeout = timeout.min(STARVED_RETRY);
        }
        let result = if c.ready.is_empty() {
            let ts = types::Timespec::from(timeout);
            let args = types::SubmitArgs::new().timespec(&ts);
            c.ring.submitter().submit_with_args(1, &args)
        } else {
            c.ring.submit()
        };
        match result {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        c.reap();
        out.append(&mut c.ready);
        Ok(())
    }
}
