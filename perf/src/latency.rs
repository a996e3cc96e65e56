//! The latency-oriented client modes, all served by the server's echo mode:
//! `rr` (request/response, closed or open loop), `ttfb` (new connection + request + first
//! response byte), `churn` (connections per second) and `idle` (hold N idle connections, check
//! they still answer). Every loop is bounded by a deadline or a count.

use crate::net;
use crate::proto::{Header, Mode};
use crate::stats::{Lat, LatSummary};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Settings shared by the latency modes.
#[derive(Debug, Clone, Serialize)]
pub struct LatOpts {
    pub size: u32,
    pub resp_size: u32,
    pub concurrency: usize,
    #[serde(serialize_with = "mtcpd_common::units::serialize_seconds")]
    pub duration: Duration,
    pub count: Option<u64>,
    pub rate: Option<f64>,
    #[serde(serialize_with = "mtcpd_common::units::serialize_seconds")]
    pub connect_timeout: Duration,
    pub congestion: Option<String>,
}

fn echo_header(o: &LatOpts, idle: Duration) -> Result<Vec<u8>> {
    if o.size == 0 {
        bail!("--size must be at least 1");
    }
    let mut h = Header::new(Mode::Echo);
    h.req = o.size;
    h.resp = o.resp_size;
    h.cc = o.congestion.clone();
    h.idle_timeout_ms = Some(idle.as_millis() as u64);
    h.encode()
}

fn open_echo(addr: &SocketAddr, o: &LatOpts, idle: Duration) -> Result<TcpStream> {
    let mut s = net::connect(addr, o.connect_timeout, true, o.congestion.as_deref())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&echo_header(o, idle)?)
        .context("sending header")?;
    Ok(s)
}

#[derive(Debug, Clone, Serialize)]
pub struct RrReport {
    pub open_loop: bool,
    pub target_rate: Option<f64>,
    pub messages: u64,
    pub seconds: f64,
    pub messages_per_second: f64,
    pub latency: LatSummary,
    pub errors: Vec<String>,
}

/// Request/response: `concurrency` connections, closed loop or open loop at `rate` msgs/s.
pub fn rr(addr: &str, o: &LatOpts) -> Result<RrReport> {
    let addr = net::resolve(addr)?;
    let c = o.concurrency.clamp(1, 4096);
    let per_conn = o.count.map(|n| n.div_ceil(c as u64));
    let start = Instant::now();
    let deadline = start + o.duration;
    let mut hs = Vec::new();
    for i in 0..c {
        let o = o.clone();
        hs.push(
            std::thread::Builder::new()
                .name(format!("rr-{i}"))
                .spawn(move || -> Result<(Lat, u64)> {
                    let s = open_echo(&addr, &o, o.duration + Duration::from_secs(30))?;
                    match o.rate {
                        None => rr_closed(s, &o, deadline, per_conn),
                        Some(r) => rr_open(s, &o, deadline, per_conn, r / c as f64),
                    }
                })
                .context("spawning rr thread")?,
        );
    }
    let mut lat = Lat::new();
    let mut messages = 0;
    let mut errors = Vec::new();
    for h in hs {
        match h.join() {
            Ok(Ok((l, n))) => {
                lat.merge(&l);
                messages += n;
            }
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(_) => errors.push("rr thread panicked".into()),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(RrReport {
        open_loop: o.rate.is_some(),
        target_rate: o.rate,
        messages,
        seconds,
        messages_per_second: messages as f64 / seconds.max(1e-9),
        latency: lat.summary(),
        errors,
    })
}

fn rr_closed(
    mut s: TcpStream,
    o: &LatOpts,
    deadline: Instant,
    count: Option<u64>,
) -> Result<(Lat, u64)> {
    let req = vec![0xa5u8; o.size as usize];
    let mut resp = vec![0u8; o.resp_size as usize];
    let mut lat = Lat::new();
    let mut n = 0u64;
    while count.is_none_or(|c| n < c) && (count.is_some() || Instant::now() < deadline) {
        let t0 = Instant::now();
        s.write_all(&req).context("sending request")?;
        s.read_exact(&mut resp).context("reading response")?;
        lat.record(t0.elapsed());
        n += 1;
    }
    Ok((lat, n))
}

fn rr_open(
    s: TcpStream,
    o: &LatOpts,
    deadline: Instant,
    count: Option<u64>,
    rate: f64,
) -> Result<(Lat, u64)> {
    if !(rate.is_finite() && rate > 0.0) {
        bail!("--rate must be positive");
    }
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut rd = s.try_clone().context("cloning socket")?;
    let resp_size = o.resp_size as usize;
    let (tx, rx) = mpsc::channel::<Instant>();
    let reader = std::thread::spawn(move || -> Result<(Lat, u64)> {
        let mut lat = Lat::new();
        let mut resp = vec![0u8; resp_size];
        let mut n = 0;
        // Ends when the writer hangs up and every sent request is answered.
        for intended in rx {
            rd.read_exact(&mut resp).context("reading response")?;
            // Measured from the intended send time: no coordinated omission.
            lat.record(intended.elapsed());
            n += 1;
        }
        Ok((lat, n))
    });
    let mut w = s;
    let req = vec![0xa5u8; o.size as usize];
    let t0 = Instant::now();
    let mut k: u64 = 0;
    let mut werr = None;
    loop {
        if count.is_some_and(|c| k >= c) {
            break;
        }
        let intended = t0 + period.mul_f64(k as f64);
        if count.is_none() && intended >= deadline {
            break;
        }
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        if let Err(e) = w.write_all(&req) {
            werr = Some(e);
            break;
        }
        if tx.send(intended).is_err() {
            break;
        }
        k += 1;
    }
    drop(tx);
    let r = reader
        .join()
        .map_err(|_| anyhow::anyhow!("rr reader panicked"))?;
    if let Some(e) = werr {
        return Err(e).context("sending request");
    }
    r
}

#[derive(Debug, Clone, Serialize)]
pub struct TtfbReport {
    pub samples: u64,
    pub failures: u64,
    /// TCP connect (handshake) time.
    pub connect: LatSummary,
    /// Connect start to first response byte.
    pub ttfb: LatSummary,
    pub errors: Vec<String>,
}

/// Time to first byte on a new connection per sample.
pub fn ttfb(addr: &str, o: &LatOpts, samples: u64, pause: Duration) -> Result<TtfbReport> {
    let addr = net::resolve(addr)?;
    if o.resp_size == 0 {
        bail!("ttfb needs a non-empty response (--resp-size)");
    }
    let mut conn = Lat::new();
    let mut first = Lat::new();
    let mut errors = Vec::new();
    let mut failures = 0;
    let deadline = Instant::now() + o.duration;
    let mut msg = echo_header(o, Duration::from_secs(30))?;
    msg.extend(std::iter::repeat_n(0xa5u8, o.size as usize));
    for _ in 0..samples {
        if Instant::now() > deadline {
            errors.push("stopped early: -t duration reached".into());
            break;
        }
        let r = (|| -> Result<(Duration, Duration)> {
            let t0 = Instant::now();
            let mut s = net::connect(&addr, o.connect_timeout, true, o.congestion.as_deref())?;
            let tc = t0.elapsed();
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(&msg).context("sending request")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)
                .context("reading first response byte")?;
            let tf = t0.elapsed();
            let mut rest = vec![0u8; o.resp_size as usize - 1];
            s.read_exact(&mut rest).context("reading response")?;
            Ok((tc, tf))
        })();
        match r {
            Ok((tc, tf)) => {
                conn.record(tc);
                first.record(tf);
            }
            Err(e) => {
                failures += 1;
                if errors.len() < 10 {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    Ok(TtfbReport {
        samples: first.count(),
        failures,
        connect: conn.summary(),
        ttfb: first.summary(),
        errors,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    pub connections: u64,
    pub failures: u64,
    pub seconds: f64,
    pub connections_per_second: f64,
    /// Whole cycle: connect, request, response, close.
    pub cycle: LatSummary,
    pub errors: Vec<String>,
}

/// Connections opened and closed per second, `concurrency` loops in parallel.
pub fn churn(addr: &str, o: &LatOpts) -> Result<ChurnReport> {
    let addr = net::resolve(addr)?;
    let c = o.concurrency.clamp(1, 1024);
    let start = Instant::now();
    let deadline = start + o.duration;
    let mut msg = echo_header(o, Duration::from_secs(30))?;
    msg.extend(std::iter::repeat_n(0xa5u8, o.size as usize));
    let mut hs = Vec::new();
    for _ in 0..c {
        let (o, msg) = (o.clone(), msg.clone());
        hs.push(std::thread::spawn(move || {
            let mut lat = Lat::new();
            let mut fails = 0u64;
            let mut errs = Vec::new();
            let mut resp = vec![0u8; o.resp_size as usize];
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let r = (|| -> Result<()> {
                    let mut s =
                        net::connect(&addr, o.connect_timeout, true, o.congestion.as_deref())?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                    s.write_all(&msg).context("sending request")?;
                    s.read_exact(&mut resp).context("reading response")?;
                    Ok(())
                })();
                match r {
                    Ok(()) => lat.record(t0.elapsed()),
                    Err(e) => {
                        fails += 1;
                        if errs.len() < 5 {
                            errs.push(format!("{e:#}"));
                        }
                        // Don't spin on a persistent failure (e.g. port exhaustion).
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            (lat, fails, errs)
        }));
    }
    let mut lat = Lat::new();
    let mut failures = 0;
    let mut errors = Vec::new();
    for h in hs {
        match h.join() {
            Ok((l, f, e)) => {
                lat.merge(&l);
                failures += f;
                errors.extend(e);
            }
            Err(_) => errors.push("churn thread panicked".into()),
        }
    }
    errors.truncate(10);
    let seconds = start.elapsed().as_secs_f64();
    Ok(ChurnReport {
        connections: lat.count(),
        failures,
        seconds,
        connections_per_second: lat.count() as f64 / seconds.max(1e-9),
        cycle: lat.summary(),
        errors,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub requested: usize,
    pub opened: usize,
    pub alive_at_end: usize,
    pub held_seconds: f64,
    pub open_seconds: f64,
    /// Round trip of the final check on each connection.
    pub check: LatSummary,
    pub errors: Vec<String>,
}

/// Open `conns` connections, hold them idle for the duration, then check each still answers.
pub fn idle(addr: &str, o: &LatOpts, conns: usize) -> Result<IdleReport> {
    let addr = net::resolve(addr)?;
    if conns > 100_000 {
        bail!("-N is limited to 100000 (and by the open-file limit)");
    }
    let idle_for = o.duration + Duration::from_secs(60);
    let t0 = Instant::now();
    let mut socks = Vec::with_capacity(conns);
    let mut errors = Vec::new();
    for _ in 0..conns {
        match open_echo(&addr, o, idle_for) {
            Ok(s) => socks.push(s),
            Err(e) => {
                errors.push(format!("{e:#}"));
                break;
            }
        }
    }
    let open_seconds = t0.elapsed().as_secs_f64();
    let hold_start = Instant::now();
    while hold_start.elapsed() < o.duration {
        std::thread::sleep(Duration::from_millis(50).min(o.duration));
    }
    let held_seconds = hold_start.elapsed().as_secs_f64();
    let req = vec![0xa5u8; o.size as usize];
    let mut resp = vec![0u8; o.resp_size as usize];
    let mut lat = Lat::new();
    let mut alive = 0;
    for s in &mut socks {
        let t = Instant::now();
        let r = s.write_all(&req).and_then(|_| s.read_exact(&mut resp));
        match r {
            Ok(()) => {
                alive += 1;
                lat.record(t.elapsed());
            }
            Err(e) => {
                if errors.len() < 10 {
                    errors.push(format!("check: {e}"));
                }
            }
        }
    }
    Ok(IdleReport {
        requested: conns,
        opened: socks.len(),
        alive_at_end: alive,
        held_seconds,
        open_seconds,
        check: lat.summary(),
        errors,
    })
}
