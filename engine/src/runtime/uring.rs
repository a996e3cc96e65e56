//! The io_uring driver: the [`super::io`] contract over completions.
//!
//! Owns: the ring, every operation in flight and the buffers they reference. Must not touch:
//! what the loop does with the bytes ([`super::event_loop`] is shared with mio).
//!
//! # Completion model
//! - Each stream has at most one receive in flight, into a buffer it owns (`read_chunk` bytes
//!   of capacity, or [`HANDSHAKE_RECV`] while the loop says the connection is in its handshake,
//!   so a half-open connection does not pin a bulk buffer; a well-filled one is handed to the session as `Bytes` without a copy, tunnel
//!   bytes are appended straight to the tunnel's receive buffer), and at most one vectored send (`SENDMSG` with `MSG_NOSIGNAL`) of clones of the queued
//!   `Bytes`, which keep the payload alive until the completion arrives. The loop's outbox only
//!   drops bytes the completion reports as sent, so the send never references freed memory.
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

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use io_uring::{IoUring, opcode, types};
use slab::Slab;

use super::io::{Driver, IoListener, IoStream, MAX_IOV, Ready, Waker, WakerInner};

/// `user_data` of operations nobody waits for (cancellations).
const UNTRACKED: u64 = u64::MAX;

/// How long a listener waits before accepting again after an accept failed (e.g. `EMFILE`),
/// rather than spinning on the error.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Queued operations handed to the kernel at once, without waiting for the end of the loop's
/// turn. Submitting only once per turn turned thousands of connections into store-and-forward:
/// a turn with 1,000 ready sockets sent nothing until all 1,000 were serviced, so the next hop
/// got them in one burst and each hop's whole turn was added to every message's latency
/// (64 B ping-pong over 1,000 connections ran at a third of the mio driver's rate with the
/// daemons mostly idle). Small batches keep the pipeline moving and still share a syscall.
const SUBMIT_BATCH: usize = 32;

/// Receive buffer of a connection in its handshake (see [`Driver::handshake_buffers`]).
const HANDSHAKE_RECV: usize = 4096;

/// The ring the driver runs on. The kernel must support `IORING_FEAT_EXT_ARG` (Linux 5.11), which
/// the loop's timed wait needs; every opcode used here is older.
///
/// Where the kernel has it (5.19), the ring is set up with `COOP_TASKRUN`: completions are
/// posted when the loop next enters the kernel instead of by interrupting it (an IPI and a
/// pass through signal handling per completion while it runs), which is what a loop that
/// enters the kernel every turn wants.
fn ring() -> io::Result<IoUring> {
    let ring = match IoUring::builder()
        .setup_cqsize(8192)
        .setup_coop_taskrun()
        .build(1024)
    {
        Ok(ring) => ring,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            IoUring::builder().setup_cqsize(8192).build(1024)?
        }
        Err(e) => return Err(e),
    };
    if !ring.params().is_feature_ext_arg() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "kernel lacks IORING_FEAT_EXT_ARG (needs Linux 5.11 or later)",
        ));
    }
    Ok(ring)
}

/// Checks that the kernel lets this process set up the driver's ring.
pub(super) fn probe() -> io::Result<()> {
    IoUring::new(256)?;
    ring().map(drop)
}

enum OpKind {
    Recv(Vec<u8>),
    Send {
        _bufs: Vec<Bytes>,
        _iov: Box<[libc::iovec]>,
        _msg: Box<libc::msghdr>,
    },
    Accept,
    Poll,
    Wake(Box<u64>),
}

struct Op {
    sock: Option<usize>,
    kind: OpKind,
}

enum Rx {
    Data(Vec<u8>, usize, usize),
    Eof,
    Err(io::Error),
}

#[derive(Default)]
struct Sock {
    fd: RawFd,
    token: Option<usize>,
    closed: bool,
    inflight: u32,
    recv_op: Option<usize>,
    rx: Option<Rx>,
    spare: Vec<u8>,
    send_op: Option<usize>,
    sent: Option<io::Result<usize>>,
    poll_op: Option<usize>,
    accept_op: Option<usize>,
    accepted: VecDeque<io::Result<OwnedFd>>,
    /// Receives into [`HANDSHAKE_RECV`] bytes rather than `read_chunk`.
    handshake: bool,
}

struct Core {
    ring: IoUring,
    socks: Slab<Sock>,
    ops: Slab<Op>,
    ready: Vec<Ready>,
    read_chunk: usize,
    wake_fd: OwnedFd,
    /// Listeners whose accept failed, and when to arm it again.
    accept_retry: Vec<(usize, Instant)>,
    /// Accepts are multishot (cleared when the kernel refuses one).
    accept_multi: bool,
}

// SAFETY: the raw pointers (ring mappings, iovecs and message headers of operations in flight)
// point into memory owned by the `Core` itself; it is only used behind a `Mutex`.
unsafe impl Send for Core {}

type CoreRef = Arc<Mutex<Core>>;

fn lock(core: &CoreRef) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(|e| e.into_inner())
}

impl Core {
    fn push(&mut self, entry: io_uring::squeue::Entry) {
        loop {
            // SAFETY: every buffer the entry references is owned by `self.ops` until its
            // completion (or is not referenced at all: cancellations).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                tracing::error!("io_uring submit failed: {e}");
                std::thread::yield_now();
            }
        }
    }

    fn start(&mut self, sock: Option<usize>, kind: OpKind) -> usize {
        let key = self.ops.vacant_key();
        let fd = sock.map(|s| types::Fd(self.socks[s].fd));
        let entry = match &kind {
            OpKind::Recv(buf) => {
                let Some(fd) = fd else { unreachable!() };
                // The kernel writes into the spare capacity; `complete` sets the length.
                opcode::Recv::new(fd, buf.as_ptr().cast_mut(), buf.capacity() as u32).build()
            }
            OpKind::Send { _msg, .. } => {
                let Some(fd) = fd else { unreachable!() };
                opcode::SendMsg::new(fd, &**_msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
            }
            OpKind::Accept if self.accept_multi => {
                let Some(fd) = fd else { unreachable!() };
                opcode::AcceptMulti::new(fd)
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
            }
            OpKind::Accept => {
                let Some(fd) = fd else { unreachable!() };
                opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
            }
            OpKind::Poll => {
                let Some(fd) = fd else { unreachable!() };
                opcode::PollAdd::new(fd, libc::POLLOUT as u32).build()
            }
            OpKind::Wake(buf) => opcode::Read::new(
                types::Fd(self.wake_fd.as_raw_fd()),
                (&raw const **buf).cast_mut().cast(),
                8,
            )
            .build(),
        };
        self.ops.insert(Op { sock, kind });
        if let Some(s) = sock {
            self.socks[s].inflight += 1;
        }
        self.push(entry.user_data(key as u64));
        if self.ring.submission().len() >= SUBMIT_BATCH {
            // Hand a batch over now rather than at the end of the turn (see SUBMIT_BATCH).
            if let Err(e) = self.ring.submit() {
                tracing::debug!("io_uring submit failed: {e}");
            }
        }
        key
    }

    fn arm_recv(&mut self, id: usize) {
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

    fn arm_accept(&mut self, id: usize) {
        if self.socks[id].closed || self.socks[id].accept_op.is_some() {
            return;
        }
        let op = self.start(Some(id), OpKind::Accept);
        self.socks[id].accept_op = Some(op);
    }

    fn complete(&mut self, user_data: u64, res: i32, flags: u32) {
        if user_data == UNTRACKED {
            return;
        }
        if io_uring::cqueue::more(flags) {
            // A multishot operation goes on: it keeps its place in the table.
            self.complete_more(user_data as usize, res);
            return;
        }
        let Some(op) = self.ops.try_remove(user_data as usize) else {
            return;
        };
        let err = || io::Error::from_raw_os_error(-res);
        let Some(id) = op.sock else {
            if let OpKind::Wake(buf) = op.kind {
                self.start(None, OpKind::Wake(buf));
            }
            return;
        };
        let retry = res == -libc::EINTR || res == -libc::EAGAIN;
        let s = &mut self.socks[id];
        s.inflight -= 1;
        let (readable, writable) = match op.kind {
            OpKind::Recv(mut buf) => {
                s.recv_op = None;
                s.rx = if res > 0 {
                    // SAFETY: the kernel initialised the first `res` bytes (at most the capacity
                    // it was given).
                    unsafe { buf.set_len(res as usize) };
                    Some(Rx::Data(buf, 0, res as usize))
                } else if res == 0 {
                    Some(Rx::Eof)
                } else if retry || s.closed {
                    s.spare = buf;
                    None
                } else {
                    Some(Rx::Err(err()))
                };
                (true, false)
            }
            OpKind::Send { .. } => {
                s.send_op = None;
                s.sent = if res >= 0 {
                    Some(Ok(res as usize))
                } else if retry {
                    None
                } else {
                    Some(Err(err()))
                };
                (false, true)
            }
            OpKind::Accept => {
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
                (true, false)
            }
            OpKind::Poll => {
                s.poll_op = None;
                (true, true)
            }
            OpKind::Wake(_) => (false, false),
        };
        let s = &mut self.socks[id];
        if s.closed {
            if s.inflight == 0 {
                self.socks.remove(id);
            }
            return;
        }
        if let Some(t) = s.token {
            self.ready.push((t, readable, writable));
        }
    }

    /// A completion of a multishot operation that stays armed: an accepted connection.
    fn complete_more(&mut self, key: usize, res: i32) {
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
    fn retry_accepts(&mut self, now: Instant) -> Option<Instant> {
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

    fn reap(&mut self) {
        let done: Vec<(u64, i32, u32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result(), c.flags()))
            .collect();
        for (ud, res, flags) in done {
            self.complete(ud, res, flags);
        }
    }

    fn close(&mut self, id: usize) {
        // Queued entries name this descriptor by number: hand them over before it is closed.
        let _ = self.ring.submit();
        // Its slab key may be reused once it is gone.
        self.accept_retry.retain(|(l, _)| *l != id);
        let s = &mut self.socks[id];
        s.closed = true;
        s.token = None;
        let ops: Vec<usize> = [s.recv_op, s.send_op, s.poll_op, s.accept_op]
            .into_iter()
            .flatten()
            .collect();
        if s.inflight == 0 {
            self.socks.remove(id);
            return;
        }
        self.cancel(ops);
        let _ = self.ring.submit();
    }

    /// Queues a cancellation of each operation (their completions still arrive, as
    /// `ECANCELED` or with what they did before).
    fn cancel(&mut self, ops: impl IntoIterator<Item = usize>) {
        for op in ops {
            self.push(
                opcode::AsyncCancel::new(op as u64)
                    .build()
                    .user_data(UNTRACKED),
            );
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        let keys: Vec<usize> = self.ops.iter().map(|(k, _)| k).collect();
        self.cancel(keys);
        for _ in 0..50 {
            if self.ops.is_empty() {
                return;
            }
            let ts = types::Timespec::new().nsec(20_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            let done: Vec<(u64, i32, u32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags()))
                .collect();
            for (ud, res, flags) in done {
                if ud == UNTRACKED {
                    continue;
                }
                if io_uring::cqueue::more(flags) {
                    if res >= 0 {
                        // An accepted connection nobody will take: close it.
                        // SAFETY: a new descriptor that nobody owns yet.
                        drop(unsafe { OwnedFd::from_raw_fd(res) });
                    }
                    continue;
                }
                self.ops.try_remove(ud as usize);
            }
        }
        // The kernel may still write into these: never free them.
        std::mem::forget(std::mem::take(&mut self.ops));
    }
}

/// The io_uring driver.
pub(super) struct Uring {
    core: CoreRef,
}

impl Uring {
    pub(super) fn new(read_chunk: usize) -> io::Result<(Self, Waker)> {
        let ring = ring()?;
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
            read_chunk: read_chunk.max(4096),
            wake_fd,
            accept_retry: Vec::new(),
            accept_multi: true,
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

/// A listener of the io_uring driver.
pub(super) struct UringListener {
    sock: TcpListener,
    id: usize,
    core: CoreRef,
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

/// A stream of the io_uring driver.
pub(super) struct UringStream {
    sock: TcpStream,
    id: usize,
    core: CoreRef,
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

fn stream(core: &CoreRef, sock: TcpStream) -> io::Result<UringStream> {
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
        let received = match c.socks[id].rx.take() {
            Some(Rx::Data(data, pos, end)) => Bytes::copy_from_slice(&data[pos..end]),
            // End of stream and errors are still there for the next owner to read.
            Some(Rx::Eof) | Some(Rx::Err(_)) | None => Bytes::new(),
        };
        drop(c);
        // The record and the original descriptor go with `s`; the duplicate lives on.
        let sock = s.sock.try_clone()?;
        drop(s);
        Ok((sock, received))
    }

    fn wait(&mut self, timeout: Duration, out: &mut Vec<Ready>) -> io::Result<()> {
        let mut c = lock(&self.core);
        c.reap();
        let now = Instant::now();
        let timeout = match c.retry_accepts(now) {
            Some(at) => timeout.min(at.saturating_duration_since(now)),
            None => timeout,
        };
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
