//! `mtcp-perf msgrate`: message rate over N in-process streams through the library API, client
//! and server in this one process (no socket but the tunnels on loopback).
//!
//! Owns: the message-rate workloads (one-way and ping-pong) over the readiness API
//! (`runtime::Poller`, a few application threads driving every stream) and, as the baseline
//! measured in the same run, over the blocking `MtcpStream` (the same threads, each looping
//! over its streams with blocking calls). Must not touch: the socket modes (`bulk`, `latency`).
//!
//! One-way: each client thread writes one `size`-byte message to each of its streams in turn
//! (skipping a stream whose buffer is full until it is writable again); the server threads
//! count what arrives. Ping-pong: one message in flight per stream, echoed by the server; the
//! client times each round trip.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use mtcpd_common::units::parse_duration_or_seconds;
use mtcpd_engine::runtime::{
    Client, Events, MtcpStream, PolledStream, Poller, RuntimeOptions, Server, Token,
};
use serde::Serialize;

use crate::stats::{Lat, LatSummary};

/// The pattern of the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// The client sends, the server counts.
    OneWay,
    /// One message in flight per stream, echoed.
    PingPong,
}

/// Which application API drives the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Api {
    /// `Poller` + `PolledStream::try_read` / `try_write` (event-driven).
    Poll,
    /// Blocking `MtcpStream` reads and writes (the baseline).
    Blocking,
    /// Both, one after the other in this run (poll first).
    Both,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct MsgrateArgs {
    /// Message pattern.
    #[arg(long, value_enum, default_value = "one-way")]
    pattern: Pattern,
    /// Application API.
    #[arg(long, value_enum, default_value = "both")]
    api: Api,
    /// Concurrent streams.
    #[arg(short = 'N', long, default_value_t = 10_000)]
    streams: usize,
    /// Message size in bytes.
    #[arg(short = 'm', long, default_value_t = 64)]
    size: usize,
    /// Application threads on each side (client and server).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Engine worker threads on each side.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Tunnels in the pool.
    #[arg(long, default_value_t = 8)]
    pool: u16,
    /// I/O driver: mio or uring.
    #[arg(long, default_value = "mio")]
    io: String,
    /// Measured time (after a 1 s warm-up).
    #[arg(short = 't', long, default_value = "5s", value_parser = parse_duration_or_seconds)]
    time: Duration,
    /// Repetitions of each measurement (a fresh client–server pair each).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Client sessions (each its own `Client`; streams spread over them).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    api: Api,
    pattern: Pattern,
    streams: usize,
    size: usize,
    threads: usize,
    messages_per_s: f64,
    round_trips_per_s: f64,
    latency: LatSummary,
    rss_mib: f64,
    /// Process CPU time (user + system, every thread) per message in the measured window: the
    /// per-message cost, which a loaded machine changes far less than the rate.
    cpu_us_per_msg: f64,
}

/// User + system CPU time of this process so far, in seconds.
fn cpu_secs() -> f64 {
    crate::grid::procs::proc_cpu_seconds("/proc/self/stat").unwrap_or(0.0)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn opts(a: &MsgrateArgs) -> Result<RuntimeOptions> {
    let mut o = RuntimeOptions {
        io: a.io.parse().map_err(|e| anyhow::anyhow!("--io: {e}"))?,
        drain_timeout: Duration::from_secs(1),
        workers: a.workers,
        ..RuntimeOptions::default()
    };
    o.engine.psk = b"mtcp-perf msgrate key, 32 bytes at least".to_vec();
    o.engine.pool_size = a.pool;
    o.engine.max_streams = o.engine.max_streams.max(a.streams as u64 * 2);
    Ok(o)
}

/// Shared counters of one run.
#[derive(Default)]
struct Counters {
    bytes: AtomicU64,
    round_trips: AtomicU64,
    stop: AtomicBool,
    measuring: AtomicBool,
}

/// Runs the mode; prints results.
pub fn run(a: &MsgrateArgs) -> Result<bool> {
    if a.streams == 0 || a.size == 0 || a.threads == 0 || a.clients == 0 {
        bail!("--streams, --size, --threads and --clients must be at least 1");
    }
    let apis: &[Api] = match a.api {
        Api::Both => &[Api::Poll, Api::Blocking],
        Api::Poll => &[Api::Poll],
        Api::Blocking => &[Api::Blocking],
    };
    let mut results = Vec::new();
    for _ in 0..a.runs {
        for &api in apis {
            let r = one(a, api)?;
            if !a.json {
                println!(
                    "{:?} {:?}: {} streams x {} B, {} thread(s)/side: {:.0} msg/s{} cpu {:.2} us/msg, rss {:.0} MiB",
                    api,
                    a.pattern,
                    a.streams,
                    a.size,
                    a.threads,
                    r.messages_per_s,
                    if a.pattern == Pattern::PingPong {
                        format!(
                            ", {:.0} rt/s, p50 {:.0} us, p99 {:.0} us,",
                            r.round_trips_per_s, r.latency.p50_us, r.latency.p99_us
                        )
                    } else {
                        ",".into()
                    },
                    r.cpu_us_per_msg,
                    r.rss_mib
                );
            }
            results.push(r);
        }
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "tool": "mtcp-perf", "mode": "msgrate", "config": a, "results": results
            }))?
        );
    }
    Ok(results.iter().all(|r| r.messages_per_s > 0.0))
}

fn one(a: &MsgrateArgs, api: Api) -> Result<RunResult> {
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let server = Server::accept_all(opts(a)?, any).context("starting the server")?;
    let clients = (0..a.clients)
        .map(|_| Client::start(opts(a)?, server.local_addr()).context("starting a client"))
        .collect::<Result<Vec<_>>>()?;
    let mut mine = Vec::with_capacity(a.streams);
    for i in 0..a.streams {
        mine.push(clients[i % clients.len()].open_stream(None)?);
    }
    let mut theirs = Vec::with_capacity(a.streams);
    while theirs.len() < a.streams {
        let s = server
            .accept_timeout(Duration::from_secs(30))
            .context("accepting the streams")?;
        theirs.push(s.stream);
    }
    let c = Arc::new(Counters::default());
    let mut threads: Vec<JoinHandle<Lat>> = Vec::new();
    for (mine, theirs) in split(mine, a.threads)
        .into_iter()
        .zip(split(theirs, a.threads))
    {
        let (c1, c2, size, pattern) = (c.clone(), c.clone(), a.size, a.pattern);
        threads.push(std::thread::spawn(move || match (api, pattern) {
            (Api::Blocking, Pattern::OneWay) => blocking_send(mine, size, &c1),
            (Api::Blocking, Pattern::PingPong) => blocking_ping(mine, size, &c1),
            (_, Pattern::OneWay) => poll_send(mine, size, &c1),
            (_, Pattern::PingPong) => poll_ping(mine, size, &c1),
        }));
        threads.push(std::thread::spawn(move || match (api, pattern) {
            (Api::Blocking, Pattern::OneWay) => blocking_count(theirs, size, &c2),
            (Api::Blocking, Pattern::PingPong) => blocking_echo(theirs, size, &c2),
            (_, _) => poll_sink(theirs, pattern == Pattern::PingPong, &c2),
        }));
    }
    std::thread::sleep(Duration::from_secs(1));
    c.measuring.store(true, Relaxed);
    let (b0, r0, t0, cpu0) = (
        c.bytes.load(Relaxed),
        c.round_trips.load(Relaxed),
        Instant::now(),
        cpu_secs(),
    );
    std::thread::sleep(a.time);
    let (b1, r1, secs, cpu1) = (
        c.bytes.load(Relaxed),
        c.round_trips.load(Relaxed),
        t0.elapsed().as_secs_f64(),
        cpu_secs(),
    );
    c.measuring.store(false, Relaxed);
    let rss = rss_mib();
    c.stop.store(true, Relaxed);
    let mut lat = Lat::new();
    for t in threads {
        if let Ok(l) = t.join() {
            lat.merge(&l);
        }
    }
    for cl in &clients {
        cl.shutdown();
    }
    server.shutdown();
    clients.into_iter().for_each(Client::join);
    server.join();
    let messages = (b1 - b0) as f64 / a.size as f64;
    Ok(RunResult {
        api,
        pattern: a.pattern,
        streams: a.streams,
        size: a.size,
        threads: a.threads,
        messages_per_s: messages / secs,
        round_trips_per_s: (r1 - r0) as f64 / secs,
        latency: lat.summary(),
        rss_mib: rss,
        cpu_us_per_msg: if messages > 0.0 {
            (cpu1 - cpu0) * 1e6 / messages
        } else {
            0.0
        },
    })
}

fn split<T>(v: Vec<T>, parts: usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = (0..parts).map(|_| Vec::new()).collect();
    for (i, x) in v.into_iter().enumerate() {
        out[i % parts].push(x);
    }
    out
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// One-way sender over the readiness API.
fn poll_send(streams: Vec<MtcpStream>, size: usize, c: &Counters) -> Lat {
    let mut poller = Poller::new();
    let mut ps: Vec<PolledStream> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| poller.register(s, Token(i)))
        .collect();
    let msg = vec![0x5a_u8; size];
    // Bytes of the current message still to write, per stream; `blocked` until writable.
    let mut left = vec![size; ps.len()];
    let mut blocked = vec![false; ps.len()];
    let mut nblocked = 0;
    let mut events = Events::with_capacity(4096);
    while !c.stop.load(Relaxed) {
        {
            let _batch = poller.batch();
            for (i, s) in ps.iter_mut().enumerate() {
                if blocked[i] {
                    continue;
                }
                match s.try_write(&msg[size - left[i]..]) {
                    Ok(n) => {
                        left[i] -= n;
                        if left[i] == 0 {
                            left[i] = size;
                        }
                    }
                    Err(e) if would_block(&e) => {
                        blocked[i] = true;
                        nblocked += 1;
                    }
                    Err(_) => return Lat::new(),
                }
            }
        }
        let wait = if nblocked == ps.len() {
            Duration::from_millis(10)
        } else {
            Duration::ZERO
        };
        if poller.poll(&mut events, Some(wait)).is_err() {
            break;
        }
        for ev in &events {
            let i = ev.token().0;
            if ev.is_writable() && blocked.get(i) == Some(&true) {
                blocked[i] = false;
                nblocked -= 1;
            }
        }
    }
    Lat::new()
}

/// Server side over the readiness API: counts what arrives (and echoes it, for ping-pong).
fn poll_sink(streams: Vec<MtcpStream>, echo: bool, c: &Counters) -> Lat {
    let mut poller = Poller::new();
    let mut ps: Vec<PolledStream> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| poller.register(s, Token(i)))
        .collect();
    // Echo bytes not yet taken by a full stream, per stream.
    let mut owed: Vec<Vec<u8>> = vec![Vec::new(); ps.len()];
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = Events::with_capacity(4096);
    while !c.stop.load(Relaxed) {
        if poller
            .poll(&mut events, Some(Duration::from_millis(10)))
            .is_err()
        {
            break;
        }
        let _batch = poller.batch();
        for ev in &events {
            let i = ev.token().0;
            let Some(s) = ps.get_mut(i) else { continue };
            loop {
                match s.try_read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        c.bytes.fetch_add(n as u64, Relaxed);
                        if echo {
                            owed[i].extend_from_slice(&buf[..n]);
                        }
                    }
                    Err(_) => break,
                }
            }
            while !owed[i].is_empty() {
                match s.try_write(&owed[i]) {
                    Ok(n) => {
                        owed[i].drain(..n);
                    }
                    Err(_) => break,
                }
            }
        }
    }
    Lat::new()
}

/// Ping-pong client over the readiness API: one message in flight per stream.
fn poll_ping(streams: Vec<MtcpStream>, size: usize, c: &Counters) -> Lat {
    let mut lat = Lat::new();
    let mut poller = Poller::new();
    let mut ps: Vec<PolledStream> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| poller.register(s, Token(i)))
        .collect();
    let msg = vec![0xa5_u8; size];
    let now = Instant::now();
    // Per stream: when its message left, bytes of it still to write, bytes of the reply read.
    let mut sent_at = vec![now; ps.len()];
    let mut to_write = vec![size; ps.len()];
    let mut got = vec![0usize; ps.len()];
    let mut buf = vec![0u8; size.max(4096)];
    let mut events = Events::with_capacity(4096);
    while !c.stop.load(Relaxed) {
        if poller
            .poll(&mut events, Some(Duration::from_millis(10)))
            .is_err()
        {
            break;
        }
        let _batch = poller.batch();
        for ev in &events {
            let i = ev.token().0;
            let Some(s) = ps.get_mut(i) else { continue };
            loop {
                // Write what is left of the message, then read its reply.
                while to_write[i] > 0 {
                    match s.try_write(&msg[size - to_write[i]..]) {
                        Ok(n) => to_write[i] -= n,
                        Err(_) => break,
                    }
                }
                if to_write[i] > 0 {
                    break;
                }
                match s.try_read(&mut buf[..size - got[i]]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        got[i] += n;
                        if got[i] == size {
                            got[i] = 0;
                            let t = Instant::now();
                            if c.measuring.load(Relaxed) {
                                lat.record(t - sent_at[i]);
                            }
                            c.round_trips.fetch_add(1, Relaxed);
                            sent_at[i] = t;
                            to_write[i] = size;
                        }
                    }
                }
            }
        }
    }
    lat
}

/// One-way sender over blocking streams: one message to each stream in turn.
fn blocking_send(mut streams: Vec<MtcpStream>, size: usize, c: &Counters) -> Lat {
    let msg = vec![0x5a_u8; size];
    for s in &mut streams {
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    }
    'run: while !c.stop.load(Relaxed) {
        for s in &mut streams {
            if s.write_all(&msg).is_err() {
                break 'run;
            }
        }
    }
    Lat::new()
}

/// One-way receiver over blocking streams: one message from each stream in turn.
fn blocking_count(mut streams: Vec<MtcpStream>, size: usize, c: &Counters) -> Lat {
    let mut buf = vec![0u8; size];
    for s in &mut streams {
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    }
    'run: while !c.stop.load(Relaxed) {
        for s in &mut streams {
            if s.read_exact(&mut buf).is_err() {
                break 'run;
            }
            c.bytes.fetch_add(size as u64, Relaxed);
        }
    }
    Lat::new()
}

/// Ping-pong client over blocking streams: a message to each stream, then each reply.
fn blocking_ping(mut streams: Vec<MtcpStream>, size: usize, c: &Counters) -> Lat {
    let mut lat = Lat::new();
    let msg = vec![0xa5_u8; size];
    let mut buf = vec![0u8; size];
    let mut sent_at = vec![Instant::now(); streams.len()];
    for s in &mut streams {
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    }
    'run: while !c.stop.load(Relaxed) {
        for (i, s) in streams.iter_mut().enumerate() {
            sent_at[i] = Instant::now();
            if s.write_all(&msg).is_err() {
                break 'run;
            }
        }
        for (i, s) in streams.iter_mut().enumerate() {
            if s.read_exact(&mut buf).is_err() {
                break 'run;
            }
            if c.measuring.load(Relaxed) {
                lat.record(sent_at[i].elapsed());
            }
            c.round_trips.fetch_add(1, Relaxed);
        }
    }
    lat
}

/// Ping-pong server over blocking streams: one message from each stream in turn, echoed.
fn blocking_echo(mut streams: Vec<MtcpStream>, size: usize, c: &Counters) -> Lat {
    let mut buf = vec![0u8; size];
    for s in &mut streams {
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    }
    'run: while !c.stop.load(Relaxed) {
        for s in &mut streams {
            if s.read_exact(&mut buf).is_err() || s.write_all(&buf).is_err() {
                break 'run;
            }
            c.bytes.fetch_add(size as u64, Relaxed);
        }
    }
    Lat::new()
}
