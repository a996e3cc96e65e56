//! Readiness API: one application thread drives many in-process streams, mio style.
//!
//! Owns: [`Poller`] (the per-thread queue of ready tokens, and the one place that thread
//! sleeps), [`PolledStream`] (a stream with non-blocking `try_read` / `try_write`, reporting to
//! a poller), [`Events`] / [`Event`] / [`Token`], and [`WriteBatch`] (writes to many streams,
//! one wake-up per worker). Must not touch: the rings, flags and waiter bits
//! (`runtime::local`) or the event loop; it is built only on the poll functions of
//! [`AsyncMtcpStream`] and [`Server::poll_accept`], with a [`std::task::Waker`] that queues a
//! token instead of scheduling a task.
//!
//! # Semantics (edge-triggered, like mio)
//! - [`Poller::register`] reports the stream once at once (readable and writable: try it).
//! - After an operation answers [`io::ErrorKind::WouldBlock`], the stream is reported again
//!   once that direction changes (bytes, end of stream, a failure, or room to write). A report
//!   may be spurious: the next try answers `WouldBlock` again and re-arms it.
//! - Keep reading (writing) until `WouldBlock` before waiting for the next event.
//!
//! # Bounds
//! The poller's queue holds at most one entry per registration, one per direction armed by a
//! `WouldBlock` (a waker fires once per arming), and one per armed acceptor: its length is
//! bounded by three per registered stream, whatever the peer does.
//!
//! # Cost
//! A wake-up is one push under a short lock on the poller's ready queue, made by the stream's
//! worker thread (which holds its task wake-ups back until the end of its loop iteration, so a
//! poller following thousands of streams is woken once per iteration, `runtime::local`), and
//! a futex wake only when the polling thread sleeps. [`Poller::poll`] takes everything queued
//! in one lock: O(ready). The poller holds no per-stream state: a [`PolledStream`] carries its
//! two wakers (made on its first `WouldBlock`), so 10,000 streams cost the poller nothing and a
//! wake-up O(1). A dropped poller's queue keeps nothing.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker as TaskWaker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::api::Server;
use super::async_stream::{AcceptedAsync, AsyncMtcpStream};
use super::local::Hub;

/// Identifies a registered stream (or acceptor) in the events of its [`Poller`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub usize);

const READABLE: u64 = 1;
const WRITABLE: u64 = 2;

/// One readiness report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    token: Token,
    bits: u64,
}

impl Event {
    /// The stream (or acceptor) it is about.
    pub fn token(&self) -> Token {
        self.token
    }

    /// A read may make progress: bytes, the end of the stream, a failure (or, for an
    /// acceptor, a stream to take).
    pub fn is_readable(&self) -> bool {
        self.bits & READABLE != 0
    }

    /// A write may make progress: room, or a failure to report.
    pub fn is_writable(&self) -> bool {
        self.bits & WRITABLE != 0
    }
}

/// A batch of events filled by [`Poller::poll`] (at most its capacity per call).
#[derive(Debug)]
pub struct Events {
    list: Vec<Event>,
    capacity: usize,
}

impl Events {
    /// Room for `capacity` events per poll (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            list: Vec::with_capacity(capacity),
            capacity,
        }
    }

    /// The events of the last poll.
    pub fn iter(&self) -> impl Iterator<Item = &Event> {
        self.list.iter()
    }

    /// How many events the last poll returned.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether the last poll returned nothing (it timed out).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Forgets the events.
    pub fn clear(&mut self) {
        self.list.clear();
    }
}

impl<'a> IntoIterator for &'a Events {
    type Item = &'a Event;
    type IntoIter = std::slice::Iter<'a, Event>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

/// A poller's queue of ready tokens, shared with the wakers of its streams.
///
/// One short lock per token pushed; the polling thread takes everything queued in one lock
/// (O(ready), batched) and sleeps with `park`, so a push costs a system call only when the
/// poller actually sleeps (`unpark` of a running thread is an atomic store). std's channel,
/// used before, took a contended lock on every sleep and wake-up of the receiver.
#[derive(Debug, Default)]
struct ReadyQueue {
    state: Mutex<ReadyState>,
}

#[derive(Debug, Default)]
struct ReadyState {
    words: Vec<u64>,
    /// The polling thread, while it sleeps (or is about to).
    sleeper: Option<Thread>,
    /// The poller is gone: nobody takes tokens any more, so none are kept.
    closed: bool,
}

impl ReadyQueue {
    fn lock(&self) -> MutexGuard<'_, ReadyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, word: u64) {
        let sleeper = {
            let mut s = self.lock();
            if s.closed {
                return;
            }
            s.words.push(word);
            s.sleeper.take()
        };
        if let Some(t) = sleeper {
            t.unpark();
        }
    }

    /// Moves every queued token to `out`; or, with none queued, registers the calling thread
    /// to be unparked by the next push and answers false.
    fn take_or_sleep(&self, out: &mut VecDeque<u64>) -> bool {
        let mut s = self.lock();
        if s.words.is_empty() {
            s.sleeper = Some(std::thread::current());
            return false;
        }
        s.sleeper = None;
        out.extend(s.words.drain(..));
        release_if_large(&mut s.words);
        true
    }

    fn take(&self, out: &mut VecDeque<u64>) {
        let mut s = self.lock();
        out.extend(s.words.drain(..));
        release_if_large(&mut s.words);
    }
}

/// Capacity an empty ready queue keeps (beyond it, the burst's memory goes back).
const READY_KEEP: usize = 4096;

fn release_if_large(v: &mut Vec<u64>) {
    if v.is_empty() && v.capacity() > READY_KEEP {
        *v = Vec::new();
    }
}

/// The waker of one (token, direction): queues the token on its poller.
struct TokenWake {
    ready: Arc<ReadyQueue>,
    word: u64,
}

impl Wake for TokenWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.push(self.word);
    }
}

fn encode(token: Token, bits: u64) -> u64 {
    ((token.0 as u64) << 2) | bits
}

/// Where one application thread waits for all its streams. Not shared between threads: each
/// thread that drives streams has its own (a [`PolledStream`] may move to another thread with
/// a new registration).
pub struct Poller {
    ready: Arc<ReadyQueue>,
    /// Tokens taken from `ready` that did not fit in the last `Events`.
    pending: VecDeque<u64>,
    /// The acceptor's waker, kept so that repeated [`Poller::accept`] calls leave one waker
    /// with the server, not one per call.
    accept_waker: Option<(Token, TaskWaker)>,
}

impl fmt::Debug for Poller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poller").finish_non_exhaustive()
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // Streams still registered may go on being woken: their tokens are dropped, not kept.
        let mut s = self.ready.lock();
        s.closed = true;
        s.words = Vec::new();
    }
}

impl Default for Poller {
    fn default() -> Self {
        Self::new()
    }
}

impl Poller {
    /// An empty poller.
    pub fn new() -> Self {
        Self {
            ready: Arc::default(),
            pending: VecDeque::new(),
            accept_waker: None,
        }
    }

    fn waker(&self, token: Token, bits: u64) -> TaskWaker {
        TaskWaker::from(Arc::new(TokenWake {
            ready: self.ready.clone(),
            word: encode(token, bits),
        }))
    }

    /// Starts reporting `stream` under `token` (tokens are the caller's; `token.0` must stay
    /// below 2^62). One event (readable and writable) is reported at once.
    pub fn register(&self, stream: impl Into<AsyncMtcpStream>, token: Token) -> PolledStream {
        self.ready.push(encode(token, READABLE | WRITABLE));
        PolledStream {
            stream: stream.into(),
            token,
            ready: self.ready.clone(),
            read_waker: None,
            write_waker: None,
        }
    }

    /// Takes a stream `server` accepted for the program, or answers `None` and reports `token`
    /// readable when one arrives (or when the server stopped: then this fails).
    pub fn accept(&mut self, server: &Server, token: Token) -> io::Result<Option<AcceptedAsync>> {
        let waker = match &self.accept_waker {
            Some((t, w)) if *t == token => w.clone(),
            _ => {
                let w = self.waker(token, READABLE);
                self.accept_waker = Some((token, w.clone()));
                w
            }
        };
        let mut cx = Context::from_waker(&waker);
        match server.poll_accept(&mut cx) {
            Poll::Ready(Ok(a)) => Ok(Some(a)),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(None),
        }
    }

    /// Waits up to `timeout` (`None`: forever) for events and fills `events` with what is
    /// ready (up to its capacity; the rest stays for the next call). Wake-ups a
    /// [`WriteBatch`] on this thread holds back are sent first.
    pub fn poll(&mut self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        flush_deferred();
        events.list.clear();
        if self.pending.is_empty() {
            self.ready.take(&mut self.pending);
        }
        if self.pending.is_empty() && timeout != Some(Duration::ZERO) {
            let deadline = timeout.map(|t| Instant::now() + t);
            while !self.ready.take_or_sleep(&mut self.pending) {
                match deadline {
                    None => std::thread::park(),
                    Some(d) => {
                        let now = Instant::now();
                        if now >= d {
                            self.ready.lock().sleeper = None;
                            break;
                        }
                        std::thread::park_timeout(d - now);
                    }
                }
            }
        }
        while events.list.len() < events.capacity {
            let Some(w) = self.pending.pop_front() else {
                break;
            };
            push(events, w);
        }
        if self.pending.is_empty() && self.pending.capacity() > READY_KEEP {
            self.pending = VecDeque::new();
        }
        Ok(())
    }

    /// Holds back the worker wake-ups of writes made on this thread until the batch is
    /// dropped (or [`Poller::poll`] runs, or a blocking call on this thread would wait): a
    /// loop that writes to thousands of streams wakes each worker once.
    pub fn batch(&self) -> WriteBatch {
        WriteBatch::begin()
    }
}

fn push(events: &mut Events, word: u64) {
    let token = Token((word >> 2) as usize);
    let bits = word & (READABLE | WRITABLE);
    // A token reported twice in a row (reader and writer woken together) is one event.
    if let Some(last) = events.list.last_mut()
        && last.token == token
    {
        last.bits |= bits;
        return;
    }
    events.list.push(Event { token, bits });
}

/// An in-process stream registered with a [`Poller`]: the same stream as
/// [`MtcpStream`](super::MtcpStream) (same
/// buffers, errors, close and reset), with operations that never block.
pub struct PolledStream {
    stream: AsyncMtcpStream,
    token: Token,
    ready: Arc<ReadyQueue>,
    read_waker: Option<TaskWaker>,
    write_waker: Option<TaskWaker>,
}

impl fmt::Debug for PolledStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolledStream")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

fn would_block() -> io::Error {
    io::Error::from(io::ErrorKind::WouldBlock)
}

impl PolledStream {
    /// Its token.
    pub fn token(&self) -> Token {
        self.token
    }

    fn waker<'a>(
        slot: &'a mut Option<TaskWaker>,
        ready: &Arc<ReadyQueue>,
        word: u64,
    ) -> &'a TaskWaker {
        slot.get_or_insert_with(|| {
            TaskWaker::from(Arc::new(TokenWake {
                ready: ready.clone(),
                word,
            }))
        })
    }

    /// Reads into `buf`: its length (0: the end of the stream, or an empty `buf`), or
    /// [`io::ErrorKind::WouldBlock`] (the stream is reported readable later).
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let waker = Self::waker(
            &mut self.read_waker,
            &self.ready,
            encode(self.token, READABLE),
        );
        match self.stream.poll_read(&mut Context::from_waker(waker), buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(would_block()),
        }
    }

    /// Reads the next chunk without copying it (empty: the end of the stream), or
    /// [`io::ErrorKind::WouldBlock`].
    pub fn try_read_bytes(&mut self) -> io::Result<Bytes> {
        let waker = Self::waker(
            &mut self.read_waker,
            &self.ready,
            encode(self.token, READABLE),
        );
        match self.stream.poll_read_bytes(&mut Context::from_waker(waker)) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(would_block()),
        }
    }

    /// Queues a prefix of `buf` and returns its length (0 only for an empty `buf`), or
    /// [`io::ErrorKind::WouldBlock`] while the stream's buffer is full (the stream is reported
    /// writable when the worker took bytes out of it).
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let waker = Self::waker(
            &mut self.write_waker,
            &self.ready,
            encode(self.token, WRITABLE),
        );
        match self.stream.poll_write(&mut Context::from_waker(waker), buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(would_block()),
        }
    }

    /// Like [`PolledStream::try_write`], without copying `data`.
    pub fn try_write_bytes(&mut self, data: &Bytes) -> io::Result<usize> {
        let waker = Self::waker(
            &mut self.write_waker,
            &self.ready,
            encode(self.token, WRITABLE),
        );
        match self
            .stream
            .poll_write_bytes(&mut Context::from_waker(waker), data)
        {
            Poll::Ready(r) => r,
            Poll::Pending => Err(would_block()),
        }
    }

    /// Finishes this end's direction (never waits): the peer reads end of stream after the
    /// bytes already written. Reading goes on.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.stream.shutdown_write()
    }

    /// Aborts both directions: queued bytes are dropped and the peer sees a reset with `code`.
    pub fn reset(self, code: u32) {
        self.stream.reset(code);
    }

    /// The stream, no longer reported to the poller (a wake-up already on its way may still
    /// arrive).
    pub fn into_inner(self) -> AsyncMtcpStream {
        self.stream
    }
}

thread_local! {
    /// The hubs whose wake-up a [`WriteBatch`] on this thread holds back (`None`: no batch).
    static DEFERRED: RefCell<Option<Vec<Arc<Hub>>>> = const { RefCell::new(None) };
}

/// Holds back this thread's wake-ups of the workers (see [`Poller::batch`]); dropping it sends
/// them, one per worker. Nested batches flush when the outermost one drops.
#[derive(Debug)]
pub struct WriteBatch {
    outermost: bool,
}

impl WriteBatch {
    /// Starts holding back this thread's wake-ups.
    pub fn begin() -> Self {
        let outermost = DEFERRED.with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(Vec::new());
                true
            } else {
                false
            }
        });
        Self { outermost }
    }
}

impl Drop for WriteBatch {
    fn drop(&mut self) {
        if self.outermost {
            let hubs = DEFERRED.with(|d| d.borrow_mut().take());
            hubs.into_iter().flatten().for_each(|h| h.wake());
        }
    }
}

/// Whether a wake-up of `hub` was held back by a batch on this thread (else the caller wakes).
pub(super) fn defer_wake(hub: &Arc<Hub>) -> bool {
    DEFERRED
        .try_with(|d| match d.borrow_mut().as_mut() {
            Some(list) => {
                if !list.iter().any(|h| Arc::ptr_eq(h, hub)) {
                    list.push(hub.clone());
                }
                true
            }
            None => false,
        })
        .unwrap_or(false)
}

/// Sends the wake-ups held back on this thread (the batch goes on); before this thread waits.
pub(super) fn flush_deferred() {
    let hubs = DEFERRED
        .try_with(|d| d.borrow_mut().as_mut().map(std::mem::take))
        .ok()
        .flatten();
    hubs.into_iter().flatten().for_each(|h| h.wake());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wake(p: &Poller, token: usize) -> TaskWaker {
        p.waker(Token(token), READABLE)
    }

    #[test]
    fn tokens_beyond_the_events_capacity_wait_for_the_next_poll() {
        let mut p = Poller::new();
        for t in 0..10 {
            wake(&p, t).wake();
        }
        let mut events = Events::with_capacity(3);
        let mut seen = Vec::new();
        for want in [3, 3, 3, 1, 0] {
            p.poll(&mut events, Some(Duration::ZERO)).unwrap();
            assert_eq!(events.len(), want);
            seen.extend(events.iter().map(|e| e.token().0));
        }
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_wake_from_another_thread_ends_the_wait_and_a_timeout_ends_it_empty() {
        let mut p = Poller::new();
        let mut events = Events::with_capacity(8);
        let t0 = Instant::now();
        p.poll(&mut events, Some(Duration::from_millis(30)))
            .unwrap();
        assert!(events.is_empty());
        assert!(t0.elapsed() >= Duration::from_millis(30));
        let w = wake(&p, 7);
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w.wake();
        });
        p.poll(&mut events, None).unwrap();
        assert_eq!(events.iter().map(|e| e.token().0).collect::<Vec<_>>(), [7]);
        h.join().unwrap();
    }

    #[test]
    fn a_dropped_poller_keeps_no_tokens() {
        let p = Poller::new();
        let ready = p.ready.clone();
        let w = wake(&p, 1);
        drop(p);
        for _ in 0..10_000 {
            w.wake_by_ref();
        }
        assert!(ready.lock().words.is_empty());
        assert_eq!(ready.lock().words.capacity(), 0);
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let mut p = Poller::new();
        let w = wake(&p, 1);
        for _ in 0..(READY_KEEP + 1) {
            w.wake_by_ref();
        }
        let mut events = Events::with_capacity(READY_KEEP * 2);
        p.poll(&mut events, Some(Duration::ZERO)).unwrap();
        // One token, reported once per wake but merged when consecutive.
        assert_eq!(events.len(), 1);
        assert_eq!(p.ready.lock().words.capacity(), 0);
        assert_eq!(p.pending.capacity(), 0);
    }
}
