//! `mtcp-perf server`: accepts test connections, reads each connection's [`Header`] and serves
//! the requested mode (bulk upload sink, bulk download source, echo). One thread per connection
//! with small stacks, a cap on concurrent connections, and timeouts on every read and write, so
//! no handler can live forever.

use crate::proto::{self, Header, Hello, Mode, UpResult};
use anyhow::{Context, Result};
use mtcpd_common::pattern;
use mtcpd_common::sockopt;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    pub listen: String,
    pub max_conns: usize,
    pub max_time: Option<Duration>,
    pub verbose: bool,
}

const BUF: usize = 256 * 1024;
/// Keep the kernel's unsent queue short so a bulk sender's tail drains quickly.
pub const NOTSENT_LOWAT: u32 = 256 * 1024;
/// Longest download the server agrees to.
const MAX_DOWNLOAD: Duration = Duration::from_secs(3600);

pub fn run(opts: &ServerOpts) -> Result<()> {
    let listener =
        TcpListener::bind(&opts.listen).with_context(|| format!("binding {}", opts.listen))?;
    let local = listener.local_addr().context("local_addr")?;
    println!("mtcp-perf server listening on {local}");
    if let Some(t) = opts.max_time {
        std::thread::spawn(move || {
            std::thread::sleep(t);
            eprintln!("mtcp-perf server: --max-time reached, exiting");
            std::process::exit(0);
        });
    }
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.load(Ordering::Relaxed) >= opts.max_conns {
            if opts.verbose {
                eprintln!(
                    "refusing connection: {} active (--max-conns)",
                    opts.max_conns
                );
            }
            drop(stream);
            continue;
        }
        active.fetch_add(1, Ordering::Relaxed);
        let act = active.clone();
        let verbose = opts.verbose;
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let peer = stream.peer_addr().ok();
                if let Err(e) = handle(stream)
                    && verbose
                {
                    eprintln!("connection {peer:?}: {e:#}");
                }
                act.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            eprintln!("spawning handler: {e}");
            active.fetch_sub(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

fn handle(mut s: TcpStream) -> Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    let h = Header::read_from(&mut s)?;
    let mut cc_err = None;
    if let Some(cc) = &h.cc
        && let Err(e) = sockopt::set_congestion(&s, cc)
    {
        cc_err = Some(format!("{e:#}"));
    }
    let idle = Duration::from_millis(h.idle_timeout_ms.unwrap_or(60_000).clamp(1_000, 86_400_000));
    s.set_read_timeout(Some(idle))?;
    match h.mode {
        Mode::BulkUp => {
            let hello = Hello {
                cc: sockopt::congestion_of(&s),
                error: cc_err.clone(),
            };
            proto::write_frame(&mut s, &hello)?;
            if cc_err.is_some() {
                return Ok(());
            }
            let r = sink(&mut s, &h);
            proto::write_frame(&mut s, &r)?;
            let _ = s.shutdown(Shutdown::Write);
            Ok(())
        }
        Mode::BulkDown => {
            let hello = Hello {
                cc: sockopt::congestion_of(&s),
                error: cc_err.clone(),
            };
            proto::write_frame(&mut s, &hello)?;
            if cc_err.is_some() {
                return Ok(());
            }
            let _ = sockopt::set_notsent_lowat(&s, NOTSENT_LOWAT);
            source(&mut s, &h)?;
            s.shutdown(Shutdown::Write).context("half-close")?;
            // Wait (bounded by the read timeout) for the client to close.
            let mut buf = [0u8; 1024];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            Ok(())
        }
        Mode::Echo => echo(&mut s, &h),
    }
}

/// Receive a bulk upload until EOF (or the announced byte count), verifying if asked.
fn sink(s: &mut TcpStream, h: &Header) -> UpResult {
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    let mut first: Option<Instant> = None;
    let mut verified = h.verify_seed.map(|_| true);
    let mut error = None;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                first.get_or_insert_with(Instant::now);
                if let Some(seed) = h.verify_seed
                    && verified == Some(true)
                    && let Some(off) = pattern::check(seed, total, &buf[..n])
                {
                    verified = Some(false);
                    error = Some(format!("pattern mismatch at stream offset {off}"));
                }
                total += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                error = Some(format!("read: {e}"));
                break;
            }
        }
    }
    if let Some(want) = h.bytes
        && total != want
        && error.is_none()
    {
        error = Some(format!("expected {want} bytes, got {total}"));
        if verified.is_some() {
            verified = Some(false);
        }
    }
    UpResult {
        bytes: total,
        seconds: first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(0.0),
        verified,
        error,
    }
}

/// Send a bulk download for the announced duration or byte count.
fn source(s: &mut TcpStream, h: &Header) -> Result<()> {
    let dur = h
        .duration_ms
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(10))
        .min(MAX_DOWNLOAD);
    let limit = h.bytes.unwrap_or(u64::MAX);
    let mut buf = vec![0u8; BUF];
    if h.verify_seed.is_none() {
        pattern::fill(0, 0, &mut buf);
    }
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < limit && (h.bytes.is_some() || start.elapsed() < dur) {
        if start.elapsed() > MAX_DOWNLOAD {
            break;
        }
        let n = (limit - sent).min(BUF as u64) as usize;
        if let Some(seed) = h.verify_seed {
            pattern::fill(seed, sent, &mut buf[..n]);
        }
        s.write_all(&buf[..n]).context("sending download")?;
        sent += n as u64;
    }
    Ok(())
}

/// Read `req` bytes, answer `resp` bytes, until EOF.
fn echo(s: &mut TcpStream, h: &Header) -> Result<()> {
    s.set_nodelay(true)?;
    let mut req = vec![0u8; h.req as usize];
    let resp = vec![0x5au8; h.resp as usize];
    loop {
        // A clean EOF at a message boundary ends the connection.
        let mut got = 0;
        while got < req.len() {
            match s.read(&mut req[got..]) {
                Ok(0) if got == 0 => return Ok(()),
                Ok(0) => anyhow::bail!("EOF inside a request"),
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading request"),
            }
        }
        if !resp.is_empty() {
            s.write_all(&resp).context("writing response")?;
        }
    }
}
