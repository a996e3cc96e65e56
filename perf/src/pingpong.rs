//! Many sockets from one thread (issue 10 items 3 and 6): a plain echo server (`echo-mio`),
//! a closed-loop ping-pong over K connections (`pingpong`) and a stream-churn load that
//! verifies what comes back (used by [`crate::soak`]). All three are mio event loops, so K can
//! be thousands without a thread per connection, and the load generator is not what limits
//! the figures. They speak raw bytes (no `MTPF` header): the echo server sends back whatever
//! it reads, so they work directly, through mtcpd, or through any relay.
//!
//! Every loop is bounded by a deadline.

use anyhow::{Context, Result, bail};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::stats::{Lat, LatSummary};

const LISTENER: Token = Token(usize::MAX);

/// A connection slot table: tokens are indices, freed slots are reused.
pub(crate) struct Slots<T> {
    items: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Slots<T> {
    pub(crate) fn new() -> Self {
        Self {
            items: Vec::new(),
            free: Vec::new(),
        }
    }
    /// The key the next [`Slots::insert`] returns (to register a socket before inserting it).
    pub(crate) fn next_key(&self) -> usize {
        self.free.last().copied().unwrap_or(self.items.len())
    }
    pub(crate) fn insert(&mut self, t: T) -> usize {
        if let Some(i) = self.free.pop() {
            self.items[i] = Some(t);
            i
        } else {
            self.items.push(Some(t));
            self.items.len() - 1
        }
    }
    pub(crate) fn get(&mut self, i: usize) -> Option<&mut T> {
        self.items.get_mut(i).and_then(|x| x.as_mut())
    }
    pub(crate) fn remove(&mut self, i: usize) -> Option<T> {
        let t = self.items.get_mut(i)?.take();
        if t.is_some() {
            self.free.push(i);
        }
        t
    }
}

struct EchoConn {
    s: TcpStream,
    pending: Vec<u8>,
}

/// Serves an echo on `listen` from one thread until `max_time` (or forever).
pub fn echo_server(listen: SocketAddr, max_time: Option<Duration>) -> Result<()> {
    let mut poll = Poll::new()?;
    let mut l = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    // mio listens with a backlog of 1024: a burst of thousands of connects would overflow it
    // and wait out SYN retransmissions. A second listen() only resizes the queue (the kernel
    // caps it at net.core.somaxconn).
    // SAFETY: plain syscall on a descriptor `l` owns.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 4096) };
    poll.registry()
        .register(&mut l, LISTENER, Interest::READABLE)?;
    let mut conns: Slots<EchoConn> = Slots::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let end = max_time.map(|t| Instant::now() + t);
    while poll_until(&mut poll, &mut events, end)? {
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nodelay(true);
                            let key = conns.next_key();
                            poll.registry().register(
                                &mut s,
                                Token(key),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            conns.insert(EchoConn {
                                s,
                                pending: Vec::new(),
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // Out of descriptors and the like: try again on the next event.
                        Err(_) => break,
                    }
                }
                continue;
            }
            let key = ev.token().0;
            let Some(c) = conns.get(key) else { continue };
            if !echo_turn(c, &mut buf) {
                if let Some(mut c) = conns.remove(key) {
                    let _ = poll.registry().deregister(&mut c.s);
                }
            }
        }
    }
    Ok(())
}

/// Waits for events (at most 1 s at a time) until `end`; false once `end` has passed. An
/// interrupted wait is a wake-up without events.
pub(crate) fn poll_until(
    poll: &mut Poll,
    events: &mut Events,
    end: Option<Instant>,
) -> io::Result<bool> {
    let timeout = end.map(|e| e.saturating_duration_since(Instant::now()));
    if timeout == Some(Duration::ZERO) {
        return Ok(false);
    }
    match poll.poll(events, timeout.or(Some(Duration::from_secs(1)))) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            events.clear();
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Echoes what `c` has; false when it is finished (closed or failed).
fn echo_turn(c: &mut EchoConn, buf: &mut [u8]) -> bool {
    loop {
        while !c.pending.is_empty() {
            match c.s.write(&c.pending) {
                Ok(n) => {
                    c.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        match c.s.read(buf) {
            Ok(0) => return false,
            Ok(n) => match c.s.write(&buf[..n]) {
                Ok(w) if w == n => {}
                Ok(w) => c.pending.extend_from_slice(&buf[w..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.pending.extend_from_slice(&buf[..n])
                }
                Err(_) => return false,
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// What `pingpong` measured.
#[derive(Debug, Clone, Serialize)]
pub struct PingpongReport {
    pub connections: usize,
    pub size: usize,
    /// From the first connect until every connection had its first echo back.
    pub setup_seconds: f64,
    pub seconds: f64,
    pub round_trips: u64,
    pub round_trips_per_second: f64,
    pub latency: LatSummary,
    pub errors: u64,
}

struct PingConn {
    s: TcpStream,
    got: usize,
    sent_at: Instant,
    /// Written but not all of it yet (a 64 B message normally goes in one write).
    unsent: usize,
    warmed: bool,
}

/// Closed-loop ping-pong: `conns` connections each send `size` bytes and wait for them to come
/// back, for `time` after every connection completed its first round trip (bounded by
/// `setup_limit` for that).
pub fn pingpong(
    addr: SocketAddr,
    conns: usize,
    size: usize,
    time: Duration,
    setup_limit: Duration,
) -> Result<PingpongReport> {
    if size == 0 || conns == 0 {
        bail!("--size and --conns must be at least 1");
    }
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let msg = vec![0x5au8; size];
    let mut buf = vec![0u8; 64 * 1024];
    let mut all: Vec<PingConn> = Vec::with_capacity(conns);
    let t0 = Instant::now();
    for i in 0..conns {
        let mut s = TcpStream::connect(addr).with_context(|| format!("connect {i} to {addr}"))?;
        poll.registry()
            .register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)?;
        all.push(PingConn {
            s,
            got: 0,
            sent_at: t0,
            unsent: size,
            warmed: false,
        });
    }
    let mut warm = 0usize;
    let mut errors = 0u64;
    let mut lat = Lat::new();
    let mut round_trips = 0u64;
    let mut measuring: Option<Instant> = None;
    let mut alive = conns;
    loop {
        let now = Instant::now();
        let end = match measuring {
            Some(start) => start + time,
            None => t0 + setup_limit,
        };
        if now >= end {
            if measuring.is_none() {
                bail!("only {warm} of {conns} connections echoed within {setup_limit:?}");
            }
            break;
        }
        if alive == 0 {
            bail!("every connection failed");
        }
        poll.poll(&mut events, Some(end - now)).or_else(|e| {
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        for ev in events.iter() {
            let c = &mut all[ev.token().0];
            if c.unsent == usize::MAX {
                continue; // failed earlier
            }
            let mut failed = false;
            loop {
                if c.unsent > 0 {
                    match c.s.write(&msg[size - c.unsent..]) {
                        Ok(n) => c.unsent -= n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => break,
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                    continue;
                }
                match c.s.read(&mut buf) {
                    Ok(0) => {
                        failed = true;
                        break;
                    }
                    Ok(n) => {
                        c.got += n;
                        if c.got >= size {
                            let t = Instant::now();
                            if !c.warmed {
                                c.warmed = true;
                                warm += 1;
                                if warm == conns {
                                    measuring = Some(t);
                                }
                            } else if measuring.is_some_and(|m| c.sent_at >= m) {
                                lat.record(t - c.sent_at);
                                round_trips += 1;
                            }
                            c.got -= size;
                            c.sent_at = t;
                            c.unsent = size;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => break,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                errors += 1;
                alive -= 1;
                c.unsent = usize::MAX;
                let _ = poll.registry().deregister(&mut c.s);
            }
        }
    }
    let start = measuring.unwrap_or(t0);
    let seconds = start.elapsed().as_secs_f64().min(time.as_secs_f64());
    Ok(PingpongReport {
        connections: conns,
        size,
        setup_seconds: (start - t0).as_secs_f64(),
        seconds,
        round_trips,
        round_trips_per_second: round_trips as f64 / seconds.max(1e-9),
        latency: lat.summary(),
        errors,
    })
}

/// Counters of a churn load.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChurnCounts {
    /// Connections that sent their bytes and got them back, verified.
    pub completed: u64,
    /// Connections that failed (refused, reset, short, or wrong bytes).
    pub failed: u64,
    /// Bytes verified (each way).
    pub bytes: u64,
}

struct ChurnConn {
    s: TcpStream,
    seed: u64,
    sent: usize,
    got: usize,
}

/// The byte at `i` of connection `seed`'s pattern.
fn pattern(seed: u64, i: usize) -> u8 {
    let x = (i as u64 ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8
}

/// A churn load: keeps `concurrency` connections in flight, each sending `bytes` of its own
/// pattern, reading them back, verifying and closing, replaced at once by a new one; until
/// `until`, or until `stop()` says so. Adds to `counts`.
pub struct Churn {
    poll: Poll,
    events: Events,
    addr: SocketAddr,
    bytes: usize,
    conns: Slots<ChurnConn>,
    next_seed: u64,
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
    pub counts: ChurnCounts,
}

impl Churn {
    pub fn new(addr: SocketAddr, bytes: usize) -> Result<Self> {
        Ok(Self {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            addr,
            bytes,
            conns: Slots::new(),
            next_seed: 1,
            wbuf: vec![0; 16 * 1024],
            rbuf: vec![0; 64 * 1024],
            counts: ChurnCounts::default(),
        })
    }

    fn open(&mut self) {
        let seed = self.next_seed;
        self.next_seed += 1;
        match TcpStream::connect(self.addr) {
            Ok(mut s) => {
                let key = self
                    .conns
                    .free
                    .last()
                    .copied()
                    .unwrap_or(self.conns.items.len());
                if self
                    .poll
                    .registry()
                    .register(&mut s, Token(key), Interest::READABLE | Interest::WRITABLE)
                    .is_err()
                {
                    self.counts.failed += 1;
                    return;
                }
                self.conns.insert(ChurnConn {
                    s,
                    seed,
                    sent: 0,
                    got: 0,
                });
            }
            Err(_) => self.counts.failed += 1,
        }
    }

    fn live(&self) -> usize {
        self.conns.items.len() - self.conns.free.len()
    }

    /// Runs for `time` with `concurrency` connections in flight; then, when `finish`, lets the
    /// ones still in flight finish (at most 10 s more) without opening new ones.
    pub fn run(&mut self, concurrency: usize, time: Duration, finish: bool) -> Result<()> {
        let end = Instant::now() + time;
        let hard_end = end + Duration::from_secs(10);
        loop {
            let now = Instant::now();
            if now >= end && !finish {
                return Ok(());
            }
            if now < end {
                while self.live() < concurrency {
                    let before = self.counts.failed;
                    self.open();
                    if self.counts.failed > before {
                        break; // out of descriptors or ports: try again on the next turn
                    }
                }
            } else if self.live() == 0 || now >= hard_end {
                // Anything left past the hard end counts as failed.
                for i in 0..self.conns.items.len() {
                    if self.conns.remove(i).is_some() {
                        self.counts.failed += 1;
                    }
                }
                return Ok(());
            }
            let wait = if now < end { end - now } else { hard_end - now };
            if let Err(e) = self
                .poll
                .poll(&mut self.events, Some(wait.min(Duration::from_millis(100))))
            {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
            let tokens: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
            for key in tokens {
                match self.turn(key) {
                    Some(true) => {
                        self.conns.remove(key);
                        self.counts.completed += 1;
                        self.counts.bytes += self.bytes as u64;
                    }
                    Some(false) => {
                        self.conns.remove(key);
                        self.counts.failed += 1;
                    }
                    None => {}
                }
            }
        }
    }

    /// Moves connection `key` on: Some(true) done and verified, Some(false) failed.
    fn turn(&mut self, key: usize) -> Option<bool> {
        let bytes = self.bytes;
        let c = self.conns.get(key)?;
        loop {
            if c.sent < bytes {
                let n = (bytes - c.sent).min(self.wbuf.len());
                for (j, b) in self.wbuf[..n].iter_mut().enumerate() {
                    *b = pattern(c.seed, c.sent + j);
                }
                match c.s.write(&self.wbuf[..n]) {
                    Ok(w) => {
                        c.sent += w;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return None,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return Some(false),
                }
            }
            match c.s.read(&mut self.rbuf) {
                Ok(0) => return Some(false),
                Ok(n) => {
                    if c.got + n > bytes {
                        return Some(false);
                    }
                    let ok = self.rbuf[..n]
                        .iter()
                        .enumerate()
                        .all(|(j, b)| *b == pattern(c.seed, c.got + j));
                    if !ok {
                        return Some(false);
                    }
                    c.got += n;
                    if c.got == bytes {
                        return Some(true);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Some(false),
            }
        }
    }
}

/// `mtcp-perf echo-mio`: the echo server.
#[derive(clap::Args)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, short = 'l')]
    listen: SocketAddr,
    /// Exit after this long (default: run until killed).
    #[arg(long, value_parser = mtcpd_common::units::parse_duration_or_seconds)]
    max_time: Option<Duration>,
}

/// `mtcp-perf pingpong`: the closed-loop ping-pong over many connections.
#[derive(clap::Args)]
pub struct PingpongArgs {
    /// The echo server (or a relay / mtcpd client in front of it).
    #[arg(long, short = 'c')]
    connect: SocketAddr,
    /// Connections.
    #[arg(long, short = 'n', default_value_t = 1000)]
    conns: usize,
    /// Message size in bytes.
    #[arg(long, short = 's', default_value_t = 64)]
    size: usize,
    /// How long to measure, after every connection's first round trip.
    #[arg(long, short = 't', default_value = "10s", value_parser = mtcpd_common::units::parse_duration_or_seconds)]
    time: Duration,
    /// Longest wait for every connection's first round trip.
    #[arg(long, default_value = "60s", value_parser = mtcpd_common::units::parse_duration_or_seconds)]
    setup_limit: Duration,
    /// One JSON document instead of text.
    #[arg(long)]
    json: bool,
}

pub fn echo_main(a: EchoArgs) -> Result<i32> {
    echo_server(a.listen, a.max_time)?;
    Ok(0)
}

pub fn pingpong_main(a: PingpongArgs) -> Result<i32> {
    let r = pingpong(a.connect, a.conns, a.size, a.time, a.setup_limit)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "pingpong {} B x{} conns: setup {:.2}s, {} round trips in {:.2}s = {:.0} rt/s, {} errors",
            r.size,
            r.connections,
            r.setup_seconds,
            r.round_trips,
            r.seconds,
            r.round_trips_per_second,
            r.errors
        );
        println!("latency: {}", r.latency.line());
    }
    Ok(if r.errors == 0 && r.round_trips > 0 {
        0
    } else {
        1
    })
}
