//! The ring and its operation table: set-up, submission batching, cancellation and shutdown.
//!
//! Owns: the [`Core`] every driver object shares (the ring, the socket and operation tables,
//! the ready list), the SQE each operation kind becomes ([`Core::start`]), how queued entries
//! reach the kernel (in batches of [`SUBMIT_BATCH`], see there why), reaping completions, and
//! closing a socket's record (submit what names its descriptor, then cancel its operations).
//! Dropping the ring cancels and waits for everything in flight and leaks buffers rather than
//! free memory the kernel might still write. Must not touch: what a completion means for a
//! socket (`completion`), accept arming and back-off (`accept`), the receive and send buffers'
//! reuse (`stream`).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use io_uring::{IoUring, opcode, types};
use slab::Slab;

use super::super::io::Ready;
use super::bufring::{BufRing, GROUP};

/// `user_data` of operations nobody waits for (cancellations).
pub(super) const UNTRACKED: u64 = u64::MAX;

/// An operation's `user_data`: its key in [`Core::ops`] in the low half, the generation it was
/// started with in the high half. A slab key is reused as soon as its operation ends, so the key
/// alone is ambiguous: a cancellation queued for one operation (the end of a turn queues them
/// before it reaps) would, once that operation ended and its key went to the next, end the
/// wrong one, another socket's receive or a listener's accept. With the generation the kernel
/// matches only the operation meant, and a completion of an operation that is gone is ignored.
pub(super) fn tag(key: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | key as u64
}

/// Queued operations handed to the kernel at once, without waiting for the end of the loop's
/// turn. Submitting only once per turn turned thousands of connections into store-and-forward:
/// a turn with 1,000 ready sockets sent nothing until all 1,000 were serviced, so the next hop
/// got them in one burst and each hop's whole turn was added to every message's latency
/// (64 B ping-pong over 1,000 connections ran at a third of the mio driver's rate with the
/// daemons mostly idle). Small batches keep the pipeline moving and still share a syscall.
const SUBMIT_BATCH: usize = 32;

/// The ring the driver runs on. The kernel must support `IORING_FEAT_EXT_ARG` (Linux 5.11), which
/// the loop's timed wait needs; every opcode used here is older.
///
/// Where the kernel has it (5.19), the ring is set up with `COOP_TASKRUN`: completions are
/// posted when the loop next enters the kernel instead of by interrupting it (an IPI and a
/// pass through signal handling per completion while it runs), which is what a loop that
/// enters the kernel every turn wants.
pub(super) fn ring() -> io::Result<IoUring> {
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
pub(in crate::runtime) fn probe() -> io::Result<()> {
    IoUring::new(256)?;
    ring().map(drop)
}

pub(super) enum OpKind {
    /// A receive into the socket's own buffer (no buffer ring).
    Recv(Vec<u8>),
    /// A multishot receive taking buffers from the ring ([`super::bufring`]).
    RecvMulti,
    Send {
        _bufs: Vec<Bytes>,
        _iov: Box<[libc::iovec]>,
        _msg: Box<libc::msghdr>,
    },
    Accept,
    Poll,
    Wake(Box<u64>),
}

pub(super) struct Op {
    pub(super) sock: Option<usize>,
    pub(super) kind: OpKind,
    /// Told apart from earlier operations under the same key (see [`tag`]).
    pub(super) generation: u32,
}

/// Received bytes a socket has not handed out yet: `data[pos..end]`.
pub(super) enum Chunk {
    /// In buffer `bid` of the ring, which goes back to the ring once consumed.
    Ring { bid: u16, pos: usize, end: usize },
    /// In memory of the socket's own: a receive into its own buffer, or what the end of a turn
    /// copied out of the ring because the loop left it unread ([`Core::spill`]).
    Heap {
        data: Vec<u8>,
        pos: usize,
        end: usize,
    },
}

/// How a socket's receiving ended, after its queued chunks.
pub(super) enum Rx {
    Eof,
    Err(io::Error),
}

#[derive(Default)]
pub(super) struct Sock {
    pub(super) fd: RawFd,
    pub(super) token: Option<usize>,
    pub(super) closed: bool,
    pub(super) inflight: u32,
    pub(super) recv_op: Option<usize>,
    /// Received and not yet read, in order.
    pub(super) rx: VecDeque<Chunk>,
    /// End of stream or an error, after `rx`.
    pub(super) rx_end: Option<Rx>,
    /// The multishot receive is being cancelled (its reader fell behind).
    pub(super) cancelling: bool,
    /// Listed in [`Core::holding`].
    pub(super) holding: bool,
    /// Listed in [`Core::starved`].
    pub(super) starved: bool,
    /// Being handed to another driver: no receive is armed again.
    pub(super) detached: bool,
    pub(super) spare: Vec<u8>,
    pub(super) send_op: Option<usize>,
    pub(super) sent: Option<io::Result<usize>>,
    pub(super) poll_op: Option<usize>,
    pub(super) accept_op: Option<usize>,
    pub(super) accepted: VecDeque<io::Result<OwnedFd>>,
    /// Receives into [`HANDSHAKE_RECV`] bytes rather than `read_chunk`.
    pub(super) handshake: bool,
}

pub(super) struct Core {
    pub(super) ring: IoUring,
    pub(super) socks: Slab<Sock>,
    pub(super) ops: Slab<Op>,
    pub(super) ready: Vec<Ready>,
    pub(super) read_chunk: usize,
    pub(super) wake_fd: OwnedFd,
    /// Listeners whose accept failed, and when to arm it again.
    pub(super) accept_retry: Vec<(usize, Instant)>,
    /// Accepts are multishot (cleared when the kernel refuses one).
    pub(super) accept_multi: bool,
    /// The provided-buffer ring; `None` when the kernel refused it (each socket then receives
    /// into a buffer of its own).
    pub(super) bufs: Option<BufRing>,
    /// Sockets that were given ring buffers since the last wait (see [`Core::spill`]).
    pub(super) holding: Vec<usize>,
    /// Sockets whose multishot receive ended because the ring was empty (`ENOBUFS`), to arm
    /// again once buffers are back.
    pub(super) starved: VecDeque<usize>,
    /// Multishot receives armed so far (each serves many receives until it ends).
    pub(super) multishots: u64,
    /// When the ring running dry may next be logged, and the count logged by then.
    pub(super) dry_log: (Instant, u64),
    /// The generation the next operation starts with (see [`tag`]).
    pub(super) generation: u32,
}

// SAFETY: the raw pointers (ring mappings, iovecs and message headers of operations in flight)
// point into memory owned by the `Core` itself; it is only used behind a `Mutex`.
unsafe impl Send for Core {}

pub(super) type CoreRef = Arc<Mutex<Core>>;

pub(super) fn lock(core: &CoreRef) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(|e| e.into_inner())
}

impl Core {
    pub(super) fn push(&mut self, entry: io_uring::squeue::Entry) {
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

    pub(super) fn start(&mut self, sock: Option<usize>, kind: OpKind) -> usize {
        let key = self.ops.vacant_key();
        let fd = sock.map(|s| types::Fd(self.socks[s].fd));
        let entry = match &kind {
            OpKind::Recv(buf) => {
                let Some(fd) = fd else { unreachable!() };
                // The kernel writes into the spare capacity; `complete` sets the length.
                opcode::Recv::new(fd, buf.as_ptr().cast_mut(), buf.capacity() as u32).build()
            }
            OpKind::RecvMulti => {
                let Some(fd) = fd else { unreachable!() };
                opcode::RecvMulti::new(fd, GROUP).build()
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
        let generation = self.generation;
        self.generation = generation.wrapping_add(1);
        self.ops.insert(Op {
            sock,
            kind,
            generation,
        });
        if let Some(s) = sock {
            self.socks[s].inflight += 1;
        }
        self.push(entry.user_data(tag(key, generation)));
        if self.ring.submission().len() >= SUBMIT_BATCH {
            // Hand a batch over now rather than at the end of the turn (see SUBMIT_BATCH).
            if let Err(e) = self.ring.submit() {
                tracing::debug!("io_uring submit failed: {e}");
            }
        }
        key
    }

    pub(super) fn reap(&mut self) {
        let done: Vec<(u64, i32, u32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result(), c.flags()))
            .collect();
        for (ud, res, flags) in done {
            self.complete(ud, res, flags);
        }
    }

    pub(super) fn close(&mut self, id: usize) {
        // Queued entries name this descriptor by number: hand them over before it is closed.
        let _ = self.ring.submit();
        // Its slab key may be reused once it is gone.
        self.accept_retry.retain(|(l, _)| *l != id);
        let s = &mut self.socks[id];
        s.closed = true;
        s.token = None;
        self.release_rx(id);
        let s = &mut self.socks[id];
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
    /// `ECANCELED` or with what they did before). Each names its operation by key and
    /// generation, so it cannot end a later operation under the same key.
    pub(super) fn cancel(&mut self, ops: impl IntoIterator<Item = usize>) {
        for key in ops {
            let Some(op) = self.ops.get(key) else {
                continue;
            };
            let target = tag(key, op.generation);
            self.push(
                opcode::AsyncCancel::new(target)
                    .build()
                    .user_data(UNTRACKED),
            );
        }
    }

    /// The key in [`Core::ops`] of the operation `user_data` names, if it is still there (not
    /// ended, and its key not taken by a later operation).
    pub(super) fn op_key(&self, user_data: u64) -> Option<usize> {
        let key = (user_data & u64::from(u32::MAX)) as usize;
        let generation = (user_data >> 32) as u32;
        self.ops
            .get(key)
            .is_some_and(|op| op.generation == generation)
            .then_some(key)
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        let keys: Vec<usize> = self.ops.iter().map(|(k, _)| k).collect();
        self.cancel(keys);
        for _ in 0..50 {
            if self.ops.is_empty() {
                if let Some(bufs) = &self.bufs {
                    bufs.unregister(&self.ring);
                }
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
                let Some(key) = (ud != UNTRACKED).then(|| self.op_key(ud)).flatten() else {
                    continue;
                };
                if io_uring::cqueue::more(flags) {
                    let accept = matches!(
                        self.ops.get(key),
                        Some(Op {
                            kind: OpKind::Accept,
                            ..
                        })
                    );
                    if accept && res >= 0 {
                        // An accepted connection nobody will take: close it.
                        // SAFETY: a new descriptor that nobody owns yet.
                        drop(unsafe { OwnedFd::from_raw_fd(res) });
                    }
                    continue;
                }
                self.ops.try_remove(key);
            }
        }
        // The kernel may still write into these: never free them.
        std::mem::forget(std::mem::take(&mut self.ops));
        std::mem::forget(self.bufs.take());
    }
}
