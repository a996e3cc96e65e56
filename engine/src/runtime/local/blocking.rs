//! The blocking application objects over an in-process stream: [`MtcpStream`] and its
//! [`ReadHalf`] / [`WriteHalf`].
//!
//! Owns: blocking reads and writes (parking on the stream's condvar), timeouts, half-close,
//! reset and the close-on-drop of the application's side. Must not touch: the shared state's
//! layout or the hub (the parent module's), nor anything the event loop decides.

use super::*;

/// A new stream: the application's object and the loop's ends.
pub(in crate::runtime) fn stream_pair(
    hub: &Arc<Hub>,
    slot: Option<OpenSlot>,
) -> (MtcpStream, LoopEnds) {
    let shared = Arc::new(StreamShared::new(slot));
    let app = MtcpStream {
        read: ReadHalf {
            shared: shared.clone(),
            hub: hub.clone(),
            current: Bytes::new(),
            timeout: None,
        },
        write: WriteHalf {
            shared: shared.clone(),
            hub: hub.clone(),
            timeout: None,
        },
    };
    let ends = LoopEnds { shared };
    (app, ends)
}
fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now() + t)
}

fn check_timeout(t: Option<Duration>) -> io::Result<()> {
    if t == Some(Duration::ZERO) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a zero timeout is not allowed",
        ));
    }
    Ok(())
}

/// One in-process stream: blocking [`Read`] and [`Write`] over an mtcpd stream, with no socket
/// or file descriptor behind it.
///
/// - Writes return as soon as the bytes are queued for the event loop (at most 256 KiB per
///   stream wait there; a writer blocks while that is full, so a slow peer holds back the
///   writer, not memory). [`Write::flush`] has nothing to do.
/// - Reads block until bytes arrive, then return what is there; `Ok(0)` is the end of the
///   stream (the peer shut its writing down).
/// - Errors carry a [`StreamFailure`]: a reset is [`io::ErrorKind::ConnectionReset`], the loss of
///   the session or a stopped runtime [`io::ErrorKind::ConnectionAborted`], a write after
///   [`MtcpStream::shutdown_write`] [`io::ErrorKind::BrokenPipe`], an expired timeout
///   [`io::ErrorKind::TimedOut`].
/// - Dropping the stream closes it gracefully, like closing a socket with no unread data: what
///   was written is delivered, then the peer reads end of stream; bytes that arrive afterwards
///   are discarded (the peer is not reset). [`MtcpStream::reset`] aborts instead.
///
/// [`MtcpStream::into_split`] gives a read half and a write half for use on two threads.
#[derive(Debug)]
pub struct MtcpStream {
    read: ReadHalf,
    write: WriteHalf,
}

impl MtcpStream {
    /// Splits into a read half and a write half, each usable on its own thread.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        (self.read, self.write)
    }

    /// Finishes this end's direction: the peer reads end of stream after the bytes already
    /// written. Reading goes on.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.write.shutdown_write()
    }

    /// Aborts both directions: queued bytes are dropped and the peer sees a reset with `code`.
    pub fn reset(self, code: u32) {
        self.write.reset(code);
    }

    /// Reads the next chunk without copying it; empty at the end of the stream.
    pub fn read_bytes(&mut self) -> io::Result<Bytes> {
        self.read.read_bytes()
    }

    /// Writes a prefix of `data` without copying it and returns its length (0 only for empty
    /// `data`); blocks while the stream's buffer is full.
    pub fn write_bytes(&mut self, data: Bytes) -> io::Result<usize> {
        self.write.write_bytes(data)
    }

    /// How long a read may block (`None`: forever); past it the read fails with
    /// [`io::ErrorKind::TimedOut`]. A zero duration is refused.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.read.set_timeout(timeout)
    }

    /// How long a write may block (`None`: forever); past it the write fails with
    /// [`io::ErrorKind::TimedOut`]. A zero duration is refused.
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.write.set_timeout(timeout)
    }
}

impl Read for MtcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read.read(buf)
    }
}

impl Write for MtcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reading half of an [`MtcpStream`]. Dropping it discards whatever arrives later.
pub struct ReadHalf {
    pub(in crate::runtime) shared: Arc<StreamShared>,
    hub: Arc<Hub>,
    /// The chunk being read.
    pub(in crate::runtime) current: Bytes,
    timeout: Option<Duration>,
}

impl fmt::Debug for ReadHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadHalf")
            .field("buffered", &self.current.len())
            .finish_non_exhaustive()
    }
}

impl ReadHalf {
    /// See [`MtcpStream::set_read_timeout`].
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        check_timeout(timeout)?;
        self.timeout = timeout;
        Ok(())
    }

    /// Reads the next chunk without copying it; empty at the end of the stream.
    pub fn read_bytes(&mut self) -> io::Result<Bytes> {
        if self.current.is_empty() {
            self.fill()?;
        }
        Ok(std::mem::take(&mut self.current))
    }

    /// Takes one chunk from the ring, without blocking.
    pub(in crate::runtime) fn take(&mut self) -> bool {
        let Some(chunk) = self.shared.to_app.pop() else {
            return false;
        };
        self.shared.rx_bytes.fetch_sub(chunk.len(), SeqCst);
        if self.shared.rx_blocked.load(SeqCst) && self.shared.rx_blocked.swap(false, SeqCst) {
            self.shared.rx_kick.store(true, SeqCst);
            self.hub.notify(&self.shared);
        }
        self.current = chunk;
        true
    }

    /// Makes `current` non-empty, or leaves it empty at the end of the stream.
    fn fill(&mut self) -> io::Result<()> {
        let deadline = deadline(self.timeout);
        loop {
            if self.try_fill()? {
                return Ok(());
            }
            let shared = &self.shared;
            shared.park(READER, deadline, || Self::readable(shared))?;
        }
    }

    /// Whether a read would not wait: a chunk, the end of the stream or an error is there.
    pub(in crate::runtime) fn readable(shared: &StreamShared) -> bool {
        !shared.to_app.is_empty() || shared.state() & (PEER_FIN | FAILURES) != 0
    }

    /// Makes `current` non-empty, or leaves it empty at the end of the stream (both `true`),
    /// or answers `false` when that means waiting.
    pub(in crate::runtime) fn try_fill(&mut self) -> io::Result<bool> {
        if self.take() {
            return Ok(true);
        }
        let state = self.shared.state();
        if state & PEER_FIN != 0 {
            // Every byte went into the ring before the flag: one more look, then EOF.
            self.take();
            return Ok(true);
        }
        if let Some(f) = self.shared.failure(state) {
            return Err(f.into());
        }
        Ok(false)
    }
}

impl Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.current.is_empty() {
            self.fill()?;
        }
        let n = self.current.len().min(buf.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

impl Drop for ReadHalf {
    fn drop(&mut self) {
        self.shared.set(APP_NO_READ);
        self.shared.rx_kick.store(true, SeqCst);
        self.hub.notify(&self.shared);
    }
}

/// The writing half of an [`MtcpStream`]. Dropping it finishes the direction (see
/// [`WriteHalf::shutdown_write`]).
pub struct WriteHalf {
    pub(in crate::runtime) shared: Arc<StreamShared>,
    hub: Arc<Hub>,
    timeout: Option<Duration>,
}

impl fmt::Debug for WriteHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteHalf")
            .field("queued", &self.shared.tx_bytes.load(SeqCst))
            .finish_non_exhaustive()
    }
}

/// What a write hands over.
pub(in crate::runtime) enum Source<'a> {
    Slice(&'a [u8]),
    Bytes(Bytes),
}

impl WriteHalf {
    /// See [`MtcpStream::set_write_timeout`].
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        check_timeout(timeout)?;
        self.timeout = timeout;
        Ok(())
    }

    /// See [`MtcpStream::shutdown_write`].
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        let state = self.shared.state();
        if state & APP_SHUT == 0 {
            if let Some(f) = self.shared.failure(state) {
                return Err(f.into());
            }
            self.shared.set(APP_SHUT);
            self.hub.notify(&self.shared);
        }
        Ok(())
    }

    /// See [`MtcpStream::reset`]; the read half, if kept, fails from now on.
    pub fn reset(self, code: u32) {
        self.shared.app_code.store(code, SeqCst);
        self.shared.set(APP_RESET);
        // Drop notifies the loop.
    }

    /// See [`MtcpStream::write_bytes`].
    pub fn write_bytes(&mut self, data: Bytes) -> io::Result<usize> {
        self.push(Source::Bytes(data))
    }

    fn push(&mut self, src: Source<'_>) -> io::Result<usize> {
        let deadline = deadline(self.timeout);
        loop {
            if let Some(n) = self.try_push(&src)? {
                return Ok(n);
            }
            let shared = &self.shared;
            shared.park(WRITER, deadline, || Self::writable(shared))?;
        }
    }

    /// Whether a write would not wait: there is room, or there is an error to report.
    pub(in crate::runtime) fn writable(shared: &StreamShared) -> bool {
        (shared.tx_bytes.load(SeqCst) < STREAM_BUFFER && !shared.to_loop.is_full())
            || shared.state() & (APP_SHUT | FAILURES) != 0
    }

    /// Queues a prefix of `src` if the stream has room (`Some(its length)`; 0 only for an
    /// empty `src`), or answers `None` without waiting.
    pub(in crate::runtime) fn try_push(&mut self, src: &Source<'_>) -> io::Result<Option<usize>> {
        let len = match src {
            Source::Slice(s) => s.len(),
            Source::Bytes(b) => b.len(),
        };
        if len == 0 {
            return Ok(Some(0));
        }
        let state = self.shared.state();
        if state & APP_SHUT != 0 {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown_write",
            ));
        }
        if let Some(f) = self.shared.failure(state) {
            return Err(f.into());
        }
        let room = STREAM_BUFFER.saturating_sub(self.shared.tx_bytes.load(SeqCst));
        if room == 0 || self.shared.to_loop.is_full() {
            return Ok(None);
        }
        let n = room.min(len);
        let chunk = match src {
            Source::Slice(s) => Bytes::copy_from_slice(&s[..n]),
            Source::Bytes(b) => b.slice(..n),
        };
        // Counted before it is visible, so the loop never takes more than was counted.
        self.shared.tx_bytes.fetch_add(n, SeqCst);
        if self.shared.to_loop.push(chunk).is_err() {
            // Only this half pushes, and it saw a free slot.
            self.shared.tx_bytes.fetch_sub(n, SeqCst);
            return Err(io::Error::other("in-process stream ring unexpectedly full"));
        }
        self.hub.notify(&self.shared);
        Ok(Some(n))
    }
}

impl Write for WriteHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push(Source::Slice(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        self.shared.set(APP_SHUT);
        self.hub.notify(&self.shared);
    }
}
