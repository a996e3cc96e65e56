//! The seam between the event loop and an I/O driver: the few socket operations the loop uses,
//! each written once per driver side by side (monoio's `OpAble` idea at socket granularity).
//!
//! Owns: the [`Driver`] / [`IoListener`] / [`IoStream`] contract and its mio implementation.
//! Must not touch: what the loop does with the bytes (that is [`super::event_loop`], shared by
//! both drivers).
//!
//! The contract is readiness-shaped, because that is what the shared loop consumes: an operation
//! either completes now or answers `WouldBlock`, and a `WouldBlock` is always followed later by
//! an event for the socket's token. mio gives that natively (edge-triggered epoll); the io_uring
//! driver ([`super::uring`]) gives it by keeping one operation in flight per direction and
//! turning each completion into an event.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

/// Most chunks handed to one vectored write.
pub(super) const MAX_IOV: usize = 64;

/// An event for the loop: (token, readable, writable).
pub(super) type Ready = (usize, bool, bool);

/// Set in an event's token by a driver whose reads are syscalls ([`Driver::SHORT_READ_DRAINS`])
/// when the event also saw the peer's end of stream: such a socket is read to its end (or
/// `WouldBlock`) even after a short read, because no further event will come for a FIN that
/// was already queued. Slab keys never reach this bit.
pub(super) const READ_CLOSED: usize = 1 << (usize::BITS - 1);

/// A listening socket.
pub(super) trait IoListener: Send + std::fmt::Debug + AsFd + Sized {
    /// The connections it accepts.
    type Stream: IoStream;
    /// Accepts one connection, or `WouldBlock`.
    fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)>;
}

/// A connected (or connecting) TCP socket.
pub(super) trait IoStream: Send + std::fmt::Debug + AsFd + Sized {
    /// Reads into `buf`; `Ok(0)` at end of stream, or `WouldBlock`.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Reads and appends to `rx`; `Ok(0)` at end of stream, or `WouldBlock`. `scratch` is where
    /// a driver that reads in place may put the bytes first.
    fn read_append(&mut self, rx: &mut BytesMut, scratch: &mut [u8]) -> io::Result<usize> {
        let n = self.read(scratch)?;
        rx.extend_from_slice(&scratch[..n]);
        Ok(n)
    }
    /// Reads one chunk (empty at end of stream), or `WouldBlock`; a driver that owns its receive
    /// buffers may hand one over instead of copying.
    fn read_bytes(&mut self, scratch: &mut [u8]) -> io::Result<Bytes> {
        let n = self.read(scratch)?;
        Ok(Bytes::copy_from_slice(&scratch[..n]))
    }
    /// Writes a prefix of `chunks` (they stay queued until this reports them written), or
    /// `WouldBlock`.
    fn write_chunks(&mut self, chunks: &VecDeque<Bytes>) -> io::Result<usize>;
    /// Half-closes the sending direction.
    fn shutdown_write(&mut self) -> io::Result<()>;
    /// The pending socket error (`SO_ERROR`).
    fn take_error(&self) -> io::Result<Option<io::Error>>;
    /// The peer, once connected.
    fn peer_addr(&self) -> io::Result<SocketAddr>;
}

/// One I/O driver: owns the poller (or ring) and makes sockets for it.
pub(super) trait Driver: Send + Sized + 'static {
    /// Its listener type.
    type Listener: IoListener<Stream = Self::Stream>;
    /// Its stream type.
    type Stream: IoStream;
    /// Name for logs.
    const NAME: &'static str;
    /// User-space bytes queued per tunnel before the session is asked for more. A completion
    /// driver keeps this much in flight per send, so it wants more than a readiness driver,
    /// whose writes land in the socket buffer at once.
    const TUNNEL_QUEUE: usize = 64 * 1024;
    /// A read that returned less than its buffer emptied the socket, so the loop need not read
    /// again until the next event (and spends no `WouldBlock` read per message). True for an
    /// edge-triggered readiness driver over TCP: a short read took everything queued then, and
    /// bytes arriving later raise a new edge. A completion driver hands out what one receive
    /// brought, so a short piece says nothing (and asking again costs no system call there).
    /// Its events carry [`READ_CLOSED`] when they saw the peer's FIN.
    const SHORT_READ_DRAINS: bool = false;
    /// Wraps a bound std listener.
    fn listener(&mut self, l: std::net::TcpListener) -> io::Result<Self::Listener>;
    /// Wraps a std stream (connected, or connecting when `connecting`).
    fn stream(&mut self, s: std::net::TcpStream) -> io::Result<Self::Stream>;
    /// Starts reporting a listener's events under `token`.
    fn register_listener(&mut self, l: &mut Self::Listener, token: usize) -> io::Result<()>;
    /// Starts reporting a stream's events under `token`.
    fn register_stream(
        &mut self,
        s: &mut Self::Stream,
        token: usize,
        connecting: bool,
    ) -> io::Result<()>;
    /// Sizes a stream's receive buffers for a handshake (`true`: a connection that has not
    /// proved anything yet must not hold a bulk-sized buffer) or for a session's tunnel. A
    /// driver that reads into the loop's scratch buffer holds none and ignores this.
    fn handshake_buffers(&mut self, _s: &mut Self::Stream, _handshake: bool) {}
    /// Stops reporting a listener's events.
    fn deregister_listener(&mut self, l: &mut Self::Listener);
    /// Stops reporting a stream's events (it may be registered again under another token).
    fn deregister_stream(&mut self, s: &mut Self::Stream);
    /// Takes a stream out of this driver so that another worker's driver can adopt it: once
    /// this returns, nothing of this driver refers to the socket or will read from it. Gives
    /// back the socket and the bytes the driver had received but not yet handed out. Only for a
    /// stream with no write in flight (a server tunnel before its first reply, or an accepted
    /// connection never registered).
    fn detach_stream(&mut self, s: Self::Stream) -> io::Result<(std::net::TcpStream, Bytes)>;
    /// Waits up to `timeout` and appends what became ready (the waker reports nothing).
    fn wait(&mut self, timeout: Duration, out: &mut Vec<Ready>) -> io::Result<()>;
}

/// Wakes a driver from another thread.
#[derive(Debug)]
pub struct Waker(pub(super) WakerInner);

#[derive(Debug)]
pub(super) enum WakerInner {
    Mio(mio::Waker),
    #[cfg(target_os = "linux")]
    EventFd(std::os::fd::OwnedFd),
}

impl Waker {
    /// Interrupts the driver's wait.
    pub fn wake(&self) -> io::Result<()> {
        match &self.0 {
            WakerInner::Mio(w) => w.wake(),
            #[cfg(target_os = "linux")]
            WakerInner::EventFd(fd) => {
                use std::os::fd::AsRawFd;
                let one: u64 = 1;
                // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
                let n = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
                if n == 8 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            }
        }
    }
}

// ----- mio ----------------------------------------------------------------------------------

const MIO_WAKER: mio::Token = mio::Token(usize::MAX);

/// The mio driver (epoll here, kqueue elsewhere).
pub(super) struct Mio {
    poll: mio::Poll,
    events: mio::Events,
}

impl Mio {
    pub(super) fn new() -> io::Result<(Self, Waker)> {
        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), MIO_WAKER)?;
        Ok((
            Self {
                poll,
                events: mio::Events::with_capacity(1024),
            },
            Waker(WakerInner::Mio(waker)),
        ))
    }
}

impl IoListener for mio::net::TcpListener {
    type Stream = mio::net::TcpStream;
    fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        mio::net::TcpListener::accept(self)
    }
}

impl IoStream for mio::net::TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(self, buf)
    }
    fn write_chunks(&mut self, chunks: &VecDeque<Bytes>) -> io::Result<usize> {
        // On the stack: a write per message must not cost an allocation too.
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let mut n = 0;
        for (slot, c) in slices.iter_mut().zip(chunks.iter()) {
            *slot = IoSlice::new(c);
            n += 1;
        }
        self.write_vectored(&slices[..n])
    }
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        mio::net::TcpStream::take_error(self)
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        mio::net::TcpStream::peer_addr(self)
    }
}

impl Driver for Mio {
    type Listener = mio::net::TcpListener;
    type Stream = mio::net::TcpStream;
    const NAME: &'static str = "mio";
    const SHORT_READ_DRAINS: bool = true;

    fn listener(&mut self, l: std::net::TcpListener) -> io::Result<Self::Listener> {
        l.set_nonblocking(true)?;
        Ok(mio::net::TcpListener::from_std(l))
    }
    fn stream(&mut self, s: std::net::TcpStream) -> io::Result<Self::Stream> {
        s.set_nonblocking(true)?;
        Ok(mio::net::TcpStream::from_std(s))
    }
    fn register_listener(&mut self, l: &mut Self::Listener, token: usize) -> io::Result<()> {
        self.poll
            .registry()
            .register(l, mio::Token(token), mio::Interest::READABLE)
    }
    fn register_stream(
        &mut self,
        s: &mut Self::Stream,
        token: usize,
        _connecting: bool,
    ) -> io::Result<()> {
        self.poll.registry().register(
            s,
            mio::Token(token),
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        )
    }
    fn deregister_listener(&mut self, l: &mut Self::Listener) {
        let _ = self.poll.registry().deregister(l);
    }
    fn deregister_stream(&mut self, s: &mut Self::Stream) {
        let _ = self.poll.registry().deregister(s);
    }
    fn detach_stream(&mut self, mut s: Self::Stream) -> io::Result<(std::net::TcpStream, Bytes)> {
        // Readiness reads nothing by itself: every received byte is still in the socket. A
        // stream accepted and handed on before it was ever registered (a connection to a
        // reverse listener, for a session on another worker) has nothing to deregister.
        if let Err(e) = self.poll.registry().deregister(&mut s) {
            tracing::trace!("detaching a stream that was not registered: {e}");
        }
        Ok((s.into(), Bytes::new()))
    }
    fn wait(&mut self, timeout: Duration, out: &mut Vec<Ready>) -> io::Result<()> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for ev in self.events.iter() {
            if ev.token() == MIO_WAKER {
                continue;
            }
            let closed = if ev.is_read_closed() { READ_CLOSED } else { 0 };
            out.push((
                ev.token().0 | closed,
                ev.is_readable() || ev.is_read_closed(),
                ev.is_writable() || ev.is_error(),
            ));
        }
        Ok(())
    }
}
