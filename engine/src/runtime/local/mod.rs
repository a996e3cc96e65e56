//! In-process streams: the state an application thread shares with the event loop for one
//! stream that is not backed by any socket; the blocking [`MtcpStream`] over it lives in `blocking`.
//!
//! Owns: the per-stream shared state ([`StreamShared`]) with the two queues that carry a
//! stream's bytes (application → loop and loop → application, [`ChunkQueue`]s of [`Bytes`]
//! chunks), the parking of blocked readers and writers, and the [`Hub`] through
//! which application threads tell their event loop which streams need attention. Must not
//! touch: sessions, sockets or protocol decisions — the loop side
//! (`event_loop::local_streams`) moves bytes between these queues and the session exactly as
//! it does for an application socket.
//!
//! # How a stream is shared
//! - Data: each direction is one [`ChunkQueue`] of at most
//!   [`RING_SLOTS`](super::local_queue::RING_SLOTS) chunks, and at most [`STREAM_BUFFER`]
//!   bytes (counted in an atomic, so a writer knows its room without asking the loop). One side only pushes, the other only pops; the queue holds no memory while
//!   empty (`runtime::local_queue`), so an idle stream costs only its [`StreamShared`].
//! - Flags: one atomic word of state bits (the application finished writing, the peer
//!   finished, reset codes, why the stream failed).
//! - Attention: when an application thread gives the loop something to do (bytes written,
//!   room made in a full receive ring, a half-close, a reset, a drop) it sends the stream's
//!   [`Arc`] on the hub's channel (std's `mpsc`, a lock-free linked list of blocks; once: a
//!   `scheduled` flag suppresses duplicates until the loop takes it) and wakes the driver through its [`Waker`] (once per loop iteration: a
//!   `wake_pending` flag suppresses the system call while a wake-up is already on its way). The
//!   loop services exactly the streams it was sent; it never scans.
//! - Sleeping: a blocked reader or writer parks on the stream's `Mutex` + `Condvar`, used for
//!   nothing else; the loop takes the mutex only when a waiter's bit is set.
//! - Tasks: an async reader or writer (`runtime::async_stream`) leaves its task's
//!   [`TaskWaker`] in the same mutex instead of sleeping, with the same waiter bit; whoever
//!   wakes the waiter (the loop's worker thread, mostly) takes the waker out and wakes it after
//!   the mutex is released. One mechanism, so a blocked thread and a pending task are woken by
//!   exactly the same events, and a waker is any [`TaskWaker`] (a tokio task's, or one that
//!   queues the stream on a readiness list).
//!
//! # Lifetime
//! The loop's ends of a stream ([`LoopEnds`]) mark the stream detached when dropped, whatever
//! dropped them (the stream finished, its session closed, the runtime stopped, a panic): an
//! application blocked on a stream the loop no longer services always wakes up with an error.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Read, Write};
use std::sync::atomic::{
    AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst, fence,
};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::Waker as TaskWaker;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Waker;
use super::local_queue::ChunkQueue;
use crate::error::StreamLimitError;

mod blocking;
pub use blocking::{MtcpStream, ReadHalf, WriteHalf};
pub(super) use blocking::{Source, stream_pair};

/// Bytes a stream may hold in each direction between the application and the loop.
pub(super) const STREAM_BUFFER: usize = 256 * 1024;

// State bits. Set with `fetch_or`, never cleared.
/// The application finished writing (shutdown, or its write half was dropped).
pub(super) const APP_SHUT: u32 = 1 << 0;
/// The application dropped its read half: incoming bytes are discarded.
pub(super) const APP_NO_READ: u32 = 1 << 1;
/// The application reset the stream (code in `app_code`).
pub(super) const APP_RESET: u32 = 1 << 2;
/// The peer finished: after the bytes in the ring, end of stream.
pub(super) const PEER_FIN: u32 = 1 << 3;
/// The peer reset the stream (code in `peer_code`).
pub(super) const PEER_RESET: u32 = 1 << 4;
/// The stream could not be opened (the session is going away, or refused it).
pub(super) const FAILED_OPEN: u32 = 1 << 5;
/// The session carrying the stream closed.
pub(super) const FAILED_SESSION: u32 = 1 << 6;
/// The loop no longer services the stream (meaningful only when nothing above explains it).
pub(super) const DETACHED: u32 = 1 << 7;
/// The stream could not be opened for a limit (with `FAILED_OPEN`; which one in `peer_code`:
/// 0 the peer's, else this end's `max_streams`).
pub(super) const FAILED_LIMIT: u32 = 1 << 8;

/// Everything that ends a direction with an error.
const FAILURES: u32 = APP_RESET | PEER_RESET | FAILED_OPEN | FAILED_SESSION | DETACHED;

/// A waiter bit: the stream's reader (a thread or a task) waits.
pub(super) const READER: u8 = 1;
/// A waiter bit: the stream's writer waits.
pub(super) const WRITER: u8 = 2;

/// Why an in-process stream failed: the payload of the [`io::Error`]s its reads and writes
/// return (`err.get_ref().and_then(|e| e.downcast_ref::<StreamFailure>())`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFailure {
    /// The peer reset the stream with this code ([`io::ErrorKind::ConnectionReset`]). A server
    /// that cannot reach a stream's target, or refuses it, resets it with code 1.
    ResetByPeer(u32),
    /// This end reset the stream ([`io::ErrorKind::ConnectionReset`]).
    ResetLocally(u32),
    /// The stream could not be opened: the session is going away
    /// ([`io::ErrorKind::ConnectionRefused`]).
    NotOpened,
    /// The session carrying the stream closed with the stream unfinished
    /// ([`io::ErrorKind::ConnectionAborted`]).
    SessionLost,
    /// The runtime stopped with the stream unfinished ([`io::ErrorKind::ConnectionAborted`]).
    RuntimeStopped,
    /// The stream could not be opened for a limit: the session's or the peer's `max_streams`
    /// ([`crate::STREAM_LIMIT_KIND`]).
    Limit(StreamLimitError),
}

impl StreamFailure {
    /// The [`io::ErrorKind`] this failure is reported with.
    pub fn kind(self) -> io::ErrorKind {
        match self {
            Self::ResetByPeer(_) | Self::ResetLocally(_) => io::ErrorKind::ConnectionReset,
            Self::NotOpened => io::ErrorKind::ConnectionRefused,
            Self::SessionLost | Self::RuntimeStopped => io::ErrorKind::ConnectionAborted,
            Self::Limit(_) => crate::STREAM_LIMIT_KIND,
        }
    }
}

impl fmt::Display for StreamFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ResetByPeer(code) => write!(f, "stream reset by the peer (code {code})"),
            Self::ResetLocally(code) => write!(f, "stream reset by this end (code {code})"),
            Self::NotOpened => f.write_str("stream not opened: the session is going away"),
            Self::SessionLost => f.write_str("the session carrying the stream closed"),
            Self::RuntimeStopped => f.write_str("the runtime stopped"),
            Self::Limit(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StreamFailure {}

impl From<StreamFailure> for io::Error {
    fn from(f: StreamFailure) -> Self {
        io::Error::new(f.kind(), f)
    }
}

/// The state one in-process stream shares between the application and the event loop.
#[derive(Debug)]
pub(super) struct StreamShared {
    state: AtomicU32,
    app_code: AtomicU32,
    peer_code: AtomicU32,
    /// Bytes in the application → loop ring, plus what the loop holds back that the session
    /// has not taken yet.
    pub(super) tx_bytes: AtomicUsize,
    /// Bytes in the loop → application ring.
    pub(super) rx_bytes: AtomicUsize,
    /// The loop stopped filling the receive ring because it was full; the reader notifies it
    /// when it makes room.
    pub(super) rx_blocked: AtomicBool,
    /// The reader wants the loop to fill its ring again (it made room in a full one, or went
    /// away): the loop moves bytes to the application for this notice only when set, not for
    /// every write the stream's notices carry.
    pub(super) rx_kick: AtomicBool,
    /// On the hub's channel, not yet taken by the loop.
    pub(super) scheduled: AtomicBool,
    /// The loop's slab key for this stream (`usize::MAX` until it has one). Loop-only.
    pub(super) key: AtomicUsize,
    /// Bytes the application wrote, for the loop (application → loop).
    pub(super) to_loop: ChunkQueue,
    /// Bytes for the application to read (loop → application).
    pub(super) to_app: ChunkQueue,
    waiters: AtomicU8,
    /// The async tasks waiting, if any (blocked threads wait on `cv`).
    lock: Mutex<WaitingTasks>,
    cv: Condvar,
    /// The opener's place under `max_streams`, given back when the last holder drops this.
    _slot: Option<OpenSlot>,
}

/// The tasks waiting on one stream: at most one reader and one writer, as for threads.
#[derive(Debug, Default)]
struct WaitingTasks {
    reader: Option<TaskWaker>,
    writer: Option<TaskWaker>,
}

impl StreamShared {
    fn new(slot: Option<OpenSlot>) -> Self {
        Self {
            _slot: slot,
            state: AtomicU32::new(0),
            app_code: AtomicU32::new(0),
            peer_code: AtomicU32::new(0),
            tx_bytes: AtomicUsize::new(0),
            rx_bytes: AtomicUsize::new(0),
            rx_blocked: AtomicBool::new(false),
            rx_kick: AtomicBool::new(false),
            scheduled: AtomicBool::new(false),
            key: AtomicUsize::new(usize::MAX),
            to_loop: ChunkQueue::default(),
            to_app: ChunkQueue::default(),
            waiters: AtomicU8::new(0),
            lock: Mutex::new(WaitingTasks::default()),
            cv: Condvar::new(),
        }
    }

    /// The state bits.
    pub(super) fn state(&self) -> u32 {
        self.state.load(SeqCst)
    }

    /// Sets state bits and wakes whoever waits.
    pub(super) fn set(&self, bits: u32) {
        self.state.fetch_or(bits, SeqCst);
        self.wake(READER | WRITER);
    }

    /// The peer reset the stream.
    pub(super) fn set_peer_reset(&self, code: u32) {
        self.peer_code.store(code, SeqCst);
        self.set(PEER_RESET);
    }

    /// The stream could not be opened for `limit`.
    pub(super) fn set_limit_failure(&self, limit: StreamLimitError) {
        let code = match limit {
            StreamLimitError::Peer => 0,
            StreamLimitError::Local(n) => u32::try_from(n).unwrap_or(u32::MAX).max(1),
        };
        self.peer_code.store(code, SeqCst);
        self.set(FAILED_OPEN | FAILED_LIMIT);
    }

    /// The code the application reset the stream with.
    pub(super) fn app_code(&self) -> u32 {
        self.app_code.load(SeqCst)
    }

    /// Why the stream failed, if it did.
    pub(super) fn failure(&self, state: u32) -> Option<StreamFailure> {
        if state & FAILURES == 0 {
            None
        } else if state & APP_RESET != 0 {
            Some(StreamFailure::ResetLocally(self.app_code.load(SeqCst)))
        } else if state & PEER_RESET != 0 {
            Some(StreamFailure::ResetByPeer(self.peer_code.load(SeqCst)))
        } else if state & FAILED_LIMIT != 0 {
            Some(StreamFailure::Limit(
                match u64::from(self.peer_code.load(SeqCst)) {
                    0 => StreamLimitError::Peer,
                    n => StreamLimitError::Local(n),
                },
            ))
        } else if state & FAILED_OPEN != 0 {
            Some(StreamFailure::NotOpened)
        } else if state & FAILED_SESSION != 0 {
            Some(StreamFailure::SessionLost)
        } else {
            Some(StreamFailure::RuntimeStopped)
        }
    }

    /// Wakes a parked reader.
    pub(super) fn wake_reader(&self) {
        self.wake(READER);
    }

    /// Wakes a parked writer.
    pub(super) fn wake_writer(&self) {
        self.wake(WRITER);
    }

    fn wake(&self, who: u8) {
        // Orders the caller's change (a ring push is only a release store) before the look
        // at the waiter bits; `park` fences between setting its bit and its look at the ring.
        fence(SeqCst);
        let waiting = self.waiters.load(SeqCst) & who;
        if waiting != 0 {
            self.waiters.fetch_and(!who, SeqCst);
            let (reader, writer) = {
                let mut tasks = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
                let reader = if who & READER != 0 {
                    tasks.reader.take()
                } else {
                    None
                };
                let writer = if who & WRITER != 0 {
                    tasks.writer.take()
                } else {
                    None
                };
                (reader, writer)
            };
            // A waiter without a task is a parked thread. (A futex wake is a system call even
            // when nobody sleeps: a stream driven by tasks or a poller never pays it.)
            let thread_waits = (waiting & READER != 0 && reader.is_none())
                || (waiting & WRITER != 0 && writer.is_none());
            if thread_waits {
                self.cv.notify_all();
            }
            // Outside the mutex: a waker may run arbitrary code (tokio's schedules the task).
            reader.into_iter().chain(writer).for_each(wake_task);
        }
    }

    /// Leaves `waker` to be woken as `who` on the next change, then answers whether `ready`
    /// holds already (then the caller goes on instead of returning `Pending`; the waker stays
    /// and may fire once for nothing). The same order as [`StreamShared::park`]: the bit and the
    /// waker are in place before `ready` is checked, and a waker changes what `ready` reads
    /// before it looks at the bits, so no wake-up is lost.
    pub(super) fn register_task(
        &self,
        who: u8,
        waker: &TaskWaker,
        ready: impl Fn() -> bool,
    ) -> bool {
        {
            let mut tasks = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            let slot = if who == READER {
                &mut tasks.reader
            } else {
                &mut tasks.writer
            };
            match slot {
                Some(w) if w.will_wake(waker) => {}
                _ => *slot = Some(waker.clone()),
            }
            self.waiters.fetch_or(who, SeqCst);
        }
        fence(SeqCst);
        ready()
    }

    /// Parks the calling thread as `who` until `ready` holds or `deadline` passes. A waker
    /// changes what `ready` reads before it looks at the waiter bits, and the bit is set before
    /// `ready` is checked, so no wake-up is lost.
    fn park(&self, who: u8, deadline: Option<Instant>, ready: impl Fn() -> bool) -> io::Result<()> {
        // A batch on this thread must not hold back the wake-up this wait depends on.
        super::poll::flush_deferred();
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            self.waiters.fetch_or(who, SeqCst);
            fence(SeqCst);
            if ready() {
                self.waiters.fetch_and(!who, SeqCst);
                return Ok(());
            }
            guard = match deadline {
                None => self.cv.wait(guard).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        self.waiters.fetch_and(!who, SeqCst);
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "timed out waiting on an in-process stream",
                        ));
                    }
                    self.cv
                        .wait_timeout(guard, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

/// Task wake-ups an event loop holds back while one iteration works (see [`DeferWakes`]) at
/// most; reaching it sends them at once, so the list stays bounded whatever the iteration does.
pub(super) const DEFERRED_WAKES_MAX: usize = 4096;

thread_local! {
    /// The task wake-ups held back on this thread (`None`: not an event loop in an iteration).
    static LOOP_WAKES: RefCell<Option<Vec<TaskWaker>>> = const { RefCell::new(None) };
}

/// Wakes `w` now, or holds it back for the end of this thread's loop iteration.
fn wake_task(w: TaskWaker) {
    let mut w = Some(w);
    let full = LOOP_WAKES
        .try_with(|d| {
            let mut d = d.borrow_mut();
            let list = d.as_mut()?;
            list.extend(w.take());
            (list.len() >= DEFERRED_WAKES_MAX).then(|| std::mem::take(list))
        })
        .ok()
        .flatten();
    // Woken with no borrow held: a waker may run arbitrary code, even wake another stream.
    full.into_iter()
        .flatten()
        .chain(w)
        .for_each(TaskWaker::wake);
}

/// An event loop's hold on its task wake-ups: while it lives, the wake-ups of async readers and
/// writers (a [`super::Poller`]'s tokens, tokio tasks) made on this thread wait until
/// [`DeferWakes::flush`] or the drop, so a poller that follows thousands of streams is woken
/// once per loop iteration with all of them, not once per message (issue 10). Parked threads
/// are still woken at once.
#[derive(Debug)]
pub(in crate::runtime) struct DeferWakes(());

impl DeferWakes {
    /// Starts holding back this thread's task wake-ups.
    pub(in crate::runtime) fn begin() -> Self {
        LOOP_WAKES.with(|d| *d.borrow_mut() = Some(Vec::new()));
        Self(())
    }

    /// Sends the wake-ups held back so far (before the loop waits); holding back goes on.
    pub(in crate::runtime) fn flush(&self) {
        let list = LOOP_WAKES
            .try_with(|d| d.borrow_mut().as_mut().map(std::mem::take))
            .ok()
            .flatten();
        list.into_iter().flatten().for_each(TaskWaker::wake);
    }
}

impl Drop for DeferWakes {
    fn drop(&mut self) {
        let list = LOOP_WAKES
            .try_with(|d| d.borrow_mut().take())
            .ok()
            .flatten();
        list.into_iter().flatten().for_each(TaskWaker::wake);
    }
}

/// The loop's ends of one stream. Dropping them detaches the stream.
#[derive(Debug)]
pub(super) struct LoopEnds {
    /// The stream's shared state: the loop pops `to_loop` and pushes `to_app`.
    pub(super) shared: Arc<StreamShared>,
}

impl Drop for LoopEnds {
    fn drop(&mut self) {
        self.shared.set(DETACHED);
    }
}

/// A stream an application asked the client to open, on its way to the loop.
#[derive(Debug)]
pub(super) struct OpenRequest {
    pub(super) ends: LoopEnds,
    pub(super) target: Option<String>,
}

/// What application threads share with one event loop: how to get its attention.
pub(super) struct Hub {
    notify: Sender<Arc<StreamShared>>,
    opens: Sender<OpenRequest>,
    waker: Arc<Waker>,
    wake_pending: AtomicBool,
    /// Streams the program opened through this hub that are not released yet (each holds an
    /// [`OpenSlot`]); with `max_streams`, what lets an open over the limit fail at once.
    open_streams: Arc<AtomicU64>,
    /// The session's `max_streams`: most streams open through this hub at once.
    max_streams: u64,
}

/// One of a hub's `max_streams` places, held by an opened stream's shared state until both the
/// program and the loop let go of it.
#[derive(Debug)]
pub(super) struct OpenSlot(Arc<AtomicU64>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

/// The loop's side of a [`Hub`].
#[derive(Debug)]
pub(super) struct HubInbox {
    pub(super) hub: Arc<Hub>,
    pub(super) notify: Receiver<Arc<StreamShared>>,
    pub(super) opens: Receiver<OpenRequest>,
}

impl Hub {
    /// A hub for the loop `waker` wakes, and the loop's side of it.
    pub(super) fn create(waker: Arc<Waker>, max_streams: u64) -> HubInbox {
        let (notify, notify_rx) = std::sync::mpsc::channel();
        let (opens, opens_rx) = std::sync::mpsc::channel();
        let hub = Arc::new(Self {
            notify,
            opens,
            waker,
            wake_pending: AtomicBool::new(false),
            open_streams: Arc::new(AtomicU64::new(0)),
            max_streams,
        });
        HubInbox {
            hub,
            notify: notify_rx,
            opens: opens_rx,
        }
    }

    /// Loop: called before it takes what the channels hold, so a later send wakes it again.
    /// (A swap, not a store: reading the last sender's flag orders its send before the takes.)
    pub(super) fn begin_poll(&self) {
        self.wake_pending.swap(false, SeqCst);
    }

    /// Interrupts the loop's wait, unless a wake-up is already on its way.
    pub(super) fn wake(&self) {
        if !self.wake_pending.swap(true, SeqCst) {
            let _ = self.waker.wake();
        }
    }

    /// Asks the loop to service `s` (the wake-up may wait for this thread's
    /// [`super::poll::WriteBatch`]).
    fn notify(self: &Arc<Self>, s: &Arc<StreamShared>) {
        if !s.scheduled.swap(true, SeqCst)
            && self.notify.send(s.clone()).is_ok()
            && !super::poll::defer_wake(self)
        {
            self.wake();
        }
    }

    /// Takes a place for a stream the program opens, or says the limit is reached.
    pub(super) fn reserve(&self) -> Result<OpenSlot, StreamLimitError> {
        self.open_streams
            .fetch_update(SeqCst, SeqCst, |n| (n < self.max_streams).then_some(n + 1))
            .map(|_| OpenSlot(self.open_streams.clone()))
            .map_err(|_| StreamLimitError::Local(self.max_streams))
    }

    /// Hands a new stream to the loop; on failure (the loop is gone) the request comes back.
    pub(super) fn open(&self, req: OpenRequest) -> Result<(), OpenRequest> {
        self.opens.send(req).map_err(|e| e.0)?;
        self.wake();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count(AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    /// Task wake-ups held back in a loop iteration go out at the bound, at a flush and when
    /// the loop's hold ends; without a hold they go at once.
    #[test]
    fn deferred_wakes_go_out_at_the_bound_the_flush_and_the_end() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = TaskWaker::from(count.clone());
        let woken = || count.0.load(SeqCst);
        wake_task(waker.clone());
        assert_eq!(woken(), 1, "no hold: at once");
        let hold = DeferWakes::begin();
        for _ in 0..DEFERRED_WAKES_MAX - 1 {
            wake_task(waker.clone());
        }
        assert_eq!(woken(), 1, "held back");
        wake_task(waker.clone());
        assert_eq!(woken(), 1 + DEFERRED_WAKES_MAX, "the bound sends them");
        wake_task(waker.clone());
        hold.flush();
        assert_eq!(woken(), 2 + DEFERRED_WAKES_MAX, "the flush sends them");
        wake_task(waker.clone());
        drop(hold);
        assert_eq!(
            woken(),
            3 + DEFERRED_WAKES_MAX,
            "the end of the hold sends them"
        );
        wake_task(waker);
        assert_eq!(woken(), 4 + DEFERRED_WAKES_MAX, "no hold again: at once");
    }

    /// The memory an idle in-process stream costs in this module (the loop's entry and the
    /// session's own stream state come on top; `tests/runtime_api_memory.rs` measures it all).
    /// The two queues live inside the shared state and hold no heap memory while empty.
    #[test]
    fn footprint_of_an_idle_stream() {
        let shared = size_of::<StreamShared>() + 2 * size_of::<usize>(); // inside an Arc
        let app = size_of::<MtcpStream>();
        let ends = size_of::<LoopEnds>();
        let total = shared + app + ends;
        println!(
            "shared {shared} B (queues inside), app object {app} B, loop ends {ends} B: \
             {total} B per idle stream in this module"
        );
        assert!(total <= 512, "per-stream footprint grew to {total} B");
    }
}
