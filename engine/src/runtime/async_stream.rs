//! Async in-process streams: [`AsyncMtcpStream`], the non-blocking sibling of
//! [`MtcpStream`], for programs that drive many streams from a few tasks instead of a thread
//! each; [`Client::open_stream_async`] and [`Server::accept_async`].
//!
//! Owns: the poll functions over a stream's rings (`poll_read`, `poll_write`, their zero-copy
//! forms) and over the server's accept queue, and, behind the cargo features `tokio` and
//! `futures-io`, those crates' `AsyncRead` / `AsyncWrite` traits on top of them. Must not touch:
//! the rings, flags and waiter bits themselves (`runtime::local`), or the event loop.
//!
//! # Who wakes a task, and when
//! No runtime runs inside the engine, and nothing polls: a poll that would wait leaves the
//! task's [`std::task::Waker`] in the stream (`StreamShared::register_task`, the same slot and
//! waiter bit a blocked thread uses), looks at the stream once more, and returns `Pending`. The
//! stream's worker thread wakes it when it changes what the task waits for: it pushed bytes
//! into the receive ring, or the end of the stream, a reset or a failure (a reader); it took
//! bytes out of the send ring into the session (a writer: the session's own send buffer has
//! room, so backpressure reaches the task); it handed over an accepted stream (an acceptor).
//! The waker runs on that worker thread; for tokio that only schedules the task on its own
//! runtime.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::sync::PoisonError;
use std::sync::mpsc::TryRecvError;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::api::{Accepted, Client, Server};
use super::local::{MtcpStream, READER, ReadHalf, Source, WRITER, WriteHalf};

/// One in-process stream for async code: the same stream as [`MtcpStream`] (same buffers, same
/// errors, same close and reset), read and written with poll functions that never block.
///
/// - With the cargo feature `tokio` it implements `tokio::io::AsyncRead` and `AsyncWrite`;
///   with `futures-io`, `futures_io::AsyncRead` and `AsyncWrite`. Any executor works: the
///   engine's worker threads wake the task's waker.
/// - A write returns `Pending` while the stream's 256 KiB hand-over buffer is full, and the
///   task is woken once the session took bytes out of it (the session itself takes no more than
///   its send buffer and the peer's window allow), so a fast writer waits for a slow reader.
/// - Shutting down (`poll_shutdown`, [`AsyncMtcpStream::shutdown_write`]) finishes this end's
///   direction at once: the peer reads end of stream after the bytes already written. Flushing
///   has nothing to do.
/// - Dropping it closes the stream gracefully, like [`MtcpStream`]: what was written is
///   delivered, then the peer reads end of stream; [`AsyncMtcpStream::reset`] aborts instead.
#[derive(Debug)]
pub struct AsyncMtcpStream {
    read: AsyncReadHalf,
    write: AsyncWriteHalf,
}

/// The reading half of an [`AsyncMtcpStream`]. Dropping it discards whatever arrives later.
pub struct AsyncReadHalf {
    inner: ReadHalf,
}

/// The writing half of an [`AsyncMtcpStream`]. Dropping it finishes the direction.
pub struct AsyncWriteHalf {
    inner: WriteHalf,
}

impl fmt::Debug for AsyncReadHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl fmt::Debug for AsyncWriteHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl From<MtcpStream> for AsyncMtcpStream {
    fn from(stream: MtcpStream) -> Self {
        let (read, write) = stream.into_split();
        Self {
            read: AsyncReadHalf { inner: read },
            write: AsyncWriteHalf { inner: write },
        }
    }
}

impl MtcpStream {
    /// The same stream, for async code. Read and write timeouts no longer apply.
    pub fn into_async(self) -> AsyncMtcpStream {
        self.into()
    }
}

impl AsyncMtcpStream {
    /// Splits into a read half and a write half, each usable in its own task.
    pub fn into_split(self) -> (AsyncReadHalf, AsyncWriteHalf) {
        (self.read, self.write)
    }

    /// Reads the next chunk without copying it (empty at the end of the stream), or
    /// registers the task to be woken when there is one.
    pub fn poll_read_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
        self.read.poll_read_bytes(cx)
    }

    /// Reads into `buf` (0 bytes: the end of the stream, or an empty `buf`), or registers the
    /// task to be woken when there is something to read.
    pub fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.read.poll_read(cx, buf)
    }

    /// Queues a prefix of `buf` (its length is returned; 0 only for an empty `buf`), or
    /// registers the task to be woken when the stream has room.
    pub fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.write.poll_write(cx, buf)
    }

    /// Like [`AsyncMtcpStream::poll_write`], without copying `data`.
    pub fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        data: &Bytes,
    ) -> Poll<io::Result<usize>> {
        self.write.poll_write_bytes(cx, data)
    }

    /// The next chunk, without copying it; empty at the end of the stream.
    pub fn read_bytes(&mut self) -> impl Future<Output = io::Result<Bytes>> + Send + '_ {
        self.read.read_bytes()
    }

    /// Queues a prefix of `data` without copying it and returns its length.
    pub fn write_bytes(
        &mut self,
        data: Bytes,
    ) -> impl Future<Output = io::Result<usize>> + Send + '_ {
        self.write.write_bytes(data)
    }

    /// Finishes this end's direction (never waits): the peer reads end of stream after the
    /// bytes already written. Reading goes on.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.write.shutdown_write()
    }

    /// Aborts both directions: queued bytes are dropped and the peer sees a reset with `code`.
    pub fn reset(self, code: u32) {
        self.write.reset(code);
    }
}

impl AsyncReadHalf {
    /// See [`AsyncMtcpStream::poll_read_bytes`].
    pub fn poll_read_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
        match self.poll_fill(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(std::mem::take(&mut self.inner.current))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// See [`AsyncMtcpStream::poll_read`].
    pub fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        match self.poll_fill(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(self.copy_out(buf))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// See [`AsyncMtcpStream::read_bytes`].
    pub fn read_bytes(&mut self) -> impl Future<Output = io::Result<Bytes>> + Send + '_ {
        poll_fn(move |cx| self.poll_read_bytes(cx))
    }

    /// Copies the start of the current chunk into `buf`.
    fn copy_out(&mut self, buf: &mut [u8]) -> usize {
        let current = &mut self.inner.current;
        let n = current.len().min(buf.len());
        buf[..n].copy_from_slice(&current[..n]);
        let _ = current.split_to(n);
        n
    }

    /// Makes the current chunk non-empty (or leaves it empty at the end of the stream), or
    /// registers the task as the stream's reader.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.inner.current.is_empty() {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.inner.try_fill()? {
                return Poll::Ready(Ok(()));
            }
            let shared = &self.inner.shared;
            if !shared.register_task(READER, cx.waker(), || ReadHalf::readable(shared)) {
                return Poll::Pending;
            }
        }
    }
}

impl AsyncWriteHalf {
    /// See [`AsyncMtcpStream::poll_write`].
    pub fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_push(cx, &Source::Slice(buf))
    }

    /// See [`AsyncMtcpStream::poll_write_bytes`].
    pub fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        data: &Bytes,
    ) -> Poll<io::Result<usize>> {
        self.poll_push(cx, &Source::Bytes(data.clone()))
    }

    /// See [`AsyncMtcpStream::write_bytes`].
    pub fn write_bytes(
        &mut self,
        data: Bytes,
    ) -> impl Future<Output = io::Result<usize>> + Send + '_ {
        poll_fn(move |cx| self.poll_write_bytes(cx, &data))
    }

    /// See [`AsyncMtcpStream::shutdown_write`].
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.inner.shutdown_write()
    }

    /// See [`AsyncMtcpStream::reset`]; the read half, if kept, fails from now on.
    pub fn reset(self, code: u32) {
        self.inner.reset(code);
    }

    fn poll_push(&mut self, cx: &mut Context<'_>, src: &Source<'_>) -> Poll<io::Result<usize>> {
        loop {
            if let Some(n) = self.inner.try_push(src)? {
                return Poll::Ready(Ok(n));
            }
            let shared = &self.inner.shared;
            if !shared.register_task(WRITER, cx.waker(), || WriteHalf::writable(shared)) {
                return Poll::Pending;
            }
        }
    }
}

/// A stream a [`Server`] accepted for an async program.
#[derive(Debug)]
pub struct AcceptedAsync {
    /// The stream.
    pub stream: AsyncMtcpStream,
    /// The target its client asked for, if any.
    pub target: Option<String>,
}

impl From<Accepted> for AcceptedAsync {
    fn from(a: Accepted) -> Self {
        Self {
            stream: a.stream.into(),
            target: a.target,
        }
    }
}

impl Client {
    /// [`Client::open_stream`] for async code: ready at once (the stream opens without a
    /// round trip, and what is written before a tunnel is up waits in its buffer). Fails as
    /// [`Client::open_stream`] does, at once: a limit reached is [`crate::STREAM_LIMIT_KIND`].
    pub fn open_stream_async(
        &self,
        target: Option<&str>,
    ) -> impl Future<Output = io::Result<AsyncMtcpStream>> + Send + '_ {
        let opened = self.open_stream(target).map(AsyncMtcpStream::from);
        std::future::ready(opened)
    }
}

impl Server {
    /// Waits, without blocking the thread, for the next stream routed to the program. Fails
    /// with [`io::ErrorKind::ConnectionAborted`] once the runtime has stopped and every
    /// accepted stream was taken. Any number of tasks may wait at once; do not mix with a
    /// blocking [`Server::accept`] waiting on another thread (it holds the queue meanwhile).
    pub fn accept_async(&self) -> impl Future<Output = io::Result<AcceptedAsync>> + Send + '_ {
        poll_fn(move |cx| self.poll_accept(cx))
    }

    /// Takes the next accepted stream, or registers the task to be woken when one arrives.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<AcceptedAsync>> {
        if let Some(done) = self.try_take_accepted() {
            return Poll::Ready(done);
        }
        self.accept_waiters.register(cx.waker());
        match self.try_take_accepted() {
            Some(done) => Poll::Ready(done),
            None => Poll::Pending,
        }
    }

    fn try_take_accepted(&self) -> Option<io::Result<AcceptedAsync>> {
        let rx = self.accepted.lock().unwrap_or_else(PoisonError::into_inner);
        match rx.try_recv() {
            Ok(a) => Some(Ok(a.into())),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(Server::stopped())),
        }
    }
}

#[cfg(feature = "tokio")]
mod tokio_io {
    use std::pin::Pin;

    use super::*;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    fn read_into(
        half: &mut AsyncReadHalf,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        match half.poll_fill(cx) {
            Poll::Ready(Ok(())) => {
                let current = &mut half.inner.current;
                let n = current.len().min(buf.remaining());
                buf.put_slice(&current.split_to(n));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    impl AsyncRead for AsyncReadHalf {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            read_into(self.get_mut(), cx, buf)
        }
    }

    impl AsyncRead for AsyncMtcpStream {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            read_into(&mut self.get_mut().read, cx, buf)
        }
    }

    impl AsyncWrite for AsyncWriteHalf {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            AsyncWriteHalf::poll_write(self.get_mut(), cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(self.get_mut().shutdown_write())
        }
    }

    impl AsyncWrite for AsyncMtcpStream {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().write.poll_write(cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(self.get_mut().shutdown_write())
        }
    }
}

#[cfg(feature = "futures-io")]
mod futures_io_impl {
    use std::pin::Pin;

    use super::*;
    use futures_io::{AsyncRead, AsyncWrite};

    impl AsyncRead for AsyncReadHalf {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            AsyncReadHalf::poll_read(self.get_mut(), cx, buf)
        }
    }

    impl AsyncRead for AsyncMtcpStream {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().read.poll_read(cx, buf)
        }
    }

    impl AsyncWrite for AsyncWriteHalf {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            AsyncWriteHalf::poll_write(self.get_mut(), cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(self.get_mut().shutdown_write())
        }
    }

    impl AsyncWrite for AsyncMtcpStream {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().write.poll_write(cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(self.get_mut().shutdown_write())
        }
    }
}

#[cfg(test)]
#[path = "async_stream_tests.rs"]
mod tests;
