//! `mtcp-perf relay`: a plain TCP relay, the baseline for "two hops through user space" (issue
//! 10 item 3). It owns one mio thread that accepts on one address and, per accepted
//! connection, opens one connection to the target and copies bytes both ways unchanged: no
//! framing, no multiplexing, no thread per connection. A chain of two of them is the floor any
//! two-hop relay (mtcpd's client + server among them) is measured against; `socat` forks per
//! connection and is no fair floor at thousands of connections.
//!
//! It is meant to be the best a one-thread user-space relay can do, so every system call it
//! saves is deliberate:
//! * readiness is tracked per socket (edge-triggered), so an event on one side never costs a
//!   read or write on the other that would only return `WouldBlock`;
//! * a read shorter than the buffer drained the socket (Linux TCP raises a new edge for any data
//!   that arrives later), so no second read just to see `WouldBlock` — unless the peer's FIN
//!   was reported already: it raises no further edge, so then reads go on until EOF;
//! * bytes go from one shared scratch buffer straight into the peer's socket; a connection only
//!   holds bytes of its own (a lazily allocated `pending`, at most one read) while its peer's
//!   send buffer is full, and reading that direction stops until they are written (backpressure).
//!
//! EOF is passed on as a half-close (`shutdown(Write)`) once everything before it was written;
//! a pair is dropped when both directions ended, or at once when either socket fails.
//! Connections beyond `--max-conns` are closed on accept. It must not know about mtcpd or the
//! ping-pong's message format.

use crate::pingpong::{Slots, poll_until};
use anyhow::{Context, Result};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX);
/// The shared read buffer: one read never takes more than this from a socket.
const SCRATCH: usize = 64 * 1024;

/// `mtcp-perf relay`: arguments.
#[derive(clap::Args)]
pub struct RelayArgs {
    /// Address to accept connections on.
    #[arg(long, short = 'l')]
    listen: SocketAddr,
    /// Where each accepted connection is relayed to.
    #[arg(long)]
    to: SocketAddr,
    /// Most connections relayed at once; more are closed on accept.
    #[arg(long, default_value_t = 20_000)]
    max_conns: usize,
    /// Exit after this long (default: run until killed).
    #[arg(long, value_parser = mtcpd_common::units::parse_duration_or_seconds)]
    max_time: Option<Duration>,
}

/// One socket of a pair and what is known about its readiness.
struct Side {
    s: TcpStream,
    /// A read may return data (cleared on `WouldBlock` or a short read).
    readable: bool,
    /// A write may take bytes (cleared on `WouldBlock`).
    writable: bool,
    /// The peer's FIN (or an error) was reported: no edge follows, read until EOF.
    hup: bool,
}

impl Side {
    fn new(s: TcpStream) -> Self {
        Self {
            s,
            readable: false,
            writable: false,
            hup: false,
        }
    }
}

/// One direction of a pair: bytes read from one side, not yet written to the other.
#[derive(Default)]
struct Flow {
    pending: Vec<u8>,
    /// The reading side sent EOF.
    eof: bool,
    /// The EOF was passed on (`shutdown(Write)` on the writing side).
    done: bool,
}

/// An accepted connection and its connection to the target. Tokens: `2 * key` is the
/// accepted side, `2 * key + 1` the target side.
struct Pair {
    down: Side,
    up: Side,
    /// The connect to the target completed; nothing is read before.
    connected: bool,
    /// down → up.
    to_up: Flow,
    /// up → down.
    to_down: Flow,
}

/// `mtcp-perf relay`: serve until `--max-time` (or forever).
pub fn main(a: RelayArgs) -> Result<i32> {
    let mut poll = Poll::new()?;
    let mut l = TcpListener::bind(a.listen).with_context(|| format!("binding {}", a.listen))?;
    // The same larger backlog as `echo-mio` (mio listens with 1024): thousands of connects
    // arrive at once.
    // SAFETY: plain syscall on a descriptor `l` owns.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 4096) };
    poll.registry()
        .register(&mut l, LISTENER, Interest::READABLE)?;
    println!(
        "mtcp-perf relay listening on {} to {}",
        l.local_addr()?,
        a.to
    );
    let mut pairs: Slots<Pair> = Slots::new();
    let mut live = 0usize;
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; SCRATCH];
    // accept() failed with connections still queued (out of descriptors): the listener raises
    // no new edge for them, so accepting resumes when a pair closes.
    let mut stalled = false;
    let end = a.max_time.map(|t| Instant::now() + t);
    while poll_until(&mut poll, &mut events, end)? {
        for ev in events.iter() {
            if ev.token() == LISTENER {
                stalled = accept_all(&l, &poll, &mut pairs, &mut live, a.to, a.max_conns)?;
                continue;
            }
            let key = ev.token().0 / 2;
            let Some(p) = pairs.get(key) else { continue };
            let side = if ev.token().0 % 2 == 0 {
                &mut p.down
            } else {
                &mut p.up
            };
            // Errors and hang-ups surface through the next read or write.
            side.hup |= ev.is_read_closed() || ev.is_error();
            side.readable |= ev.is_readable() || side.hup;
            side.writable |= ev.is_writable() || ev.is_write_closed() || ev.is_error();
            if !turn(p, &mut scratch)
                && let Some(mut p) = pairs.remove(key)
            {
                let _ = poll.registry().deregister(&mut p.down.s);
                let _ = poll.registry().deregister(&mut p.up.s);
                live -= 1;
                if stalled {
                    stalled = accept_all(&l, &poll, &mut pairs, &mut live, a.to, a.max_conns)?;
                }
            }
        }
    }
    Ok(0)
}

/// Accepts until `WouldBlock`, opening a connection to `to` for each; true when it stopped on
/// an error instead (connections may still be queued).
fn accept_all(
    l: &TcpListener,
    poll: &Poll,
    pairs: &mut Slots<Pair>,
    live: &mut usize,
    to: SocketAddr,
    max_conns: usize,
) -> Result<bool> {
    loop {
        let (mut down, _) = match l.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Out of descriptors and the like.
            Err(_) => return Ok(true),
        };
        if *live >= max_conns {
            continue; // dropped: the client sees the connection closed
        }
        let Ok(mut up) = TcpStream::connect(to) else {
            continue;
        };
        let _ = down.set_nodelay(true);
        let _ = up.set_nodelay(true);
        let key = pairs.next_key();
        let both = Interest::READABLE | Interest::WRITABLE;
        poll.registry().register(&mut down, Token(2 * key), both)?;
        poll.registry()
            .register(&mut up, Token(2 * key + 1), both)?;
        pairs.insert(Pair {
            down: Side::new(down),
            up: Side::new(up),
            connected: false,
            to_up: Flow::default(),
            to_down: Flow::default(),
        });
        *live += 1;
    }
}

/// Moves what can be moved on `p`; false when the pair is finished (both directions ended, or
/// a socket failed).
fn turn(p: &mut Pair, scratch: &mut [u8]) -> bool {
    if !p.connected {
        if !p.up.writable {
            return true;
        }
        match p.up.s.take_error() {
            Ok(None) => {}
            _ => return false,
        }
        match p.up.s.peer_addr() {
            Ok(_) => p.connected = true,
            // Still connecting: a spurious wake-up.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                p.up.writable = false;
                return true;
            }
            Err(_) => return false,
        }
    }
    if !pump(&mut p.down, &mut p.up, &mut p.to_up, scratch)
        || !pump(&mut p.up, &mut p.down, &mut p.to_down, scratch)
    {
        return false;
    }
    !(p.to_up.done && p.to_down.done)
}

/// Copies from `src` to `dst` until one of them would block; false when a socket failed.
fn pump(src: &mut Side, dst: &mut Side, f: &mut Flow, scratch: &mut [u8]) -> bool {
    loop {
        if !f.pending.is_empty() {
            if !dst.writable {
                return true;
            }
            match dst.s.write(&f.pending) {
                Ok(n) if n == f.pending.len() => f.pending = Vec::new(),
                // Only `WouldBlock` proves the send buffer full (and a new edge to come).
                Ok(n) => {
                    f.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    dst.writable = false;
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        if f.eof {
            if !f.done {
                f.done = true;
                if dst.s.shutdown(Shutdown::Write).is_err() {
                    return false;
                }
            }
            return true;
        }
        if !src.readable {
            return true;
        }
        let n = match src.s.read(scratch) {
            Ok(0) => {
                f.eof = true;
                src.readable = false;
                continue;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                src.readable = false;
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        if n < scratch.len() && !src.hup {
            // The socket is drained: new data (or a FIN) raises a new edge.
            src.readable = false;
        }
        let mut w = 0;
        while dst.writable && w < n {
            match dst.s.write(&scratch[w..n]) {
                Ok(k) => w += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if w < n {
            // Kept until `dst` takes it; this direction reads nothing more until then.
            f.pending.extend_from_slice(&scratch[w..n]);
        }
    }
}
