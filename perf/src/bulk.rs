//! `mtcp-perf client bulk`: parallel bulk streams (upload, download or both) for a duration or a
//! byte count, with iperf-style interval lines, per-stream and summed results, congestion control
//! chosen and read back on both ends, TCP_INFO, and optional byte-exact pattern verification.

use crate::net;
use crate::proto::{self, Header, Hello, Mode, UpResult};
use crate::server::NOTSENT_LOWAT;
use anyhow::{Context, Result, bail};
use mtcpd_common::pattern;
use mtcpd_common::sockopt::{self, TcpInfo};
use mtcpd_common::units::{format_bytes, format_rate};
use serde::Serialize;
use std::io::{ErrorKind, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Bulk settings (from the command line).
#[derive(Debug, Clone, Serialize)]
pub struct BulkOpts {
    pub streams: usize,
    pub reverse: bool,
    pub bidir: bool,
    #[serde(serialize_with = "mtcpd_common::units::serialize_seconds")]
    pub duration: Duration,
    pub bytes: Option<u64>,
    #[serde(serialize_with = "mtcpd_common::units::serialize_optional_seconds")]
    pub interval: Option<Duration>,
    pub congestion: Option<String>,
    pub verify: bool,
    pub seed: u64,
    pub len: usize,
    #[serde(serialize_with = "mtcpd_common::units::serialize_seconds")]
    pub connect_timeout: Duration,
    /// How long to wait after the sending phase for the tail to drain and results to arrive.
    #[serde(serialize_with = "mtcpd_common::units::serialize_seconds")]
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dir {
    Up,
    Down,
}

/// One stream's result.
#[derive(Debug, Clone, Serialize)]
pub struct StreamResult {
    pub id: usize,
    pub direction: Dir,
    /// Bytes delivered (upload: acknowledged by the peer's TCP at the end of the sending phase,
    /// or counted by the server when that is larger; download: received).
    pub bytes: u64,
    pub bytes_written: u64,
    pub seconds: f64,
    pub bits_per_second: f64,
    pub gbit_per_second: f64,
    pub server_bytes: Option<u64>,
    pub cc_client: Option<String>,
    pub cc_server: Option<String>,
    pub tcp_info: Option<TcpInfo>,
    pub verified: Option<bool>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    pub start: f64,
    pub end: f64,
    pub bytes: u64,
    pub bits_per_second: f64,
    pub streams: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sum {
    pub bytes: u64,
    pub seconds: f64,
    pub bits_per_second: f64,
    pub gbit_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BulkReport {
    pub streams: Vec<StreamResult>,
    pub intervals: Vec<Interval>,
    pub sum_up: Option<Sum>,
    pub sum_down: Option<Sum>,
    pub sum: Sum,
    pub all_verified: Option<bool>,
    pub errors: usize,
}

struct Shared {
    counters: Vec<AtomicU64>,
    done: AtomicUsize,
    stop: AtomicBool,
}

pub fn run(addr: &str, o: &BulkOpts, json: bool) -> Result<BulkReport> {
    let addr = net::resolve(addr)?;
    if o.streams == 0 || o.streams > 1024 {
        bail!("-P must be within 1..=1024");
    }
    if o.len == 0 || o.len > 16 << 20 {
        bail!("--len must be within 1..=16M");
    }
    let mut plan = Vec::new();
    for i in 0..o.streams {
        if o.bidir {
            plan.push(Dir::Up);
            plan.push(Dir::Down);
        } else if o.reverse {
            plan.push(Dir::Down);
        } else {
            plan.push(Dir::Up);
        }
        let _ = i;
    }
    let n = plan.len();
    let shared = Arc::new(Shared {
        counters: (0..n).map(|_| AtomicU64::new(0)).collect(),
        done: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut handles = Vec::new();
    for (id, dir) in plan.iter().copied().enumerate() {
        let (sh, b, o) = (shared.clone(), barrier.clone(), o.clone());
        let h = std::thread::Builder::new()
            .name(format!("bulk-{id}"))
            .spawn(move || {
                let r = stream(id, dir, addr, &o, &sh, &b);
                sh.done.fetch_add(1, Ordering::SeqCst);
                r
            })
            .context("spawning stream thread")?;
        handles.push(h);
    }
    barrier.wait();
    let start = Instant::now();
    if !json {
        println!(
            "Connecting to {addr}: {n} stream(s), {}",
            match o.bytes {
                Some(b) => format!("{} each", format_bytes(b)),
                None => format!("{:?}", o.duration),
            }
        );
    }
    // Interval reporting until every stream is done (streams bound themselves by time/bytes).
    let hard_stop = o.duration + o.drain_timeout + Duration::from_secs(30);
    let mut intervals = Vec::new();
    let mut last = vec![0u64; n];
    let mut last_t = 0.0f64;
    let tick = o.interval.unwrap_or(Duration::from_secs(3600));
    let mut next = start + tick;
    while shared.done.load(Ordering::SeqCst) < n {
        if o.bytes.is_none() && start.elapsed() > hard_stop {
            shared.stop.store(true, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(20).min(tick));
        if o.interval.is_some() && Instant::now() >= next {
            let t = start.elapsed().as_secs_f64();
            let cur: Vec<u64> = shared
                .counters
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect();
            let deltas: Vec<u64> = cur.iter().zip(&last).map(|(c, l)| c - l).collect();
            let bytes: u64 = deltas.iter().sum();
            let iv = Interval {
                start: last_t,
                end: t,
                bytes,
                bits_per_second: bytes as f64 * 8.0 / (t - last_t).max(1e-9),
                streams: deltas,
            };
            if !json {
                print_interval(&iv, &plan);
            }
            intervals.push(iv);
            last = cur;
            last_t = t;
            next += tick;
        }
    }
    let mut streams = Vec::new();
    for (id, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(r) => streams.push(r),
            Err(_) => streams.push(failed(id, plan[id], "stream thread panicked".into())),
        }
    }
    let sum_of = |f: &dyn Fn(&StreamResult) -> bool| -> Option<Sum> {
        let sel: Vec<&StreamResult> = streams.iter().filter(|s| f(s)).collect();
        if sel.is_empty() {
            return None;
        }
        let bytes: u64 = sel.iter().map(|s| s.bytes).sum();
        let seconds = sel.iter().map(|s| s.seconds).fold(0.0, f64::max);
        let bps = sel.iter().map(|s| s.bits_per_second).sum::<f64>();
        Some(Sum {
            bytes,
            seconds,
            bits_per_second: bps,
            gbit_per_second: bps / 1e9,
        })
    };
    let sum_up = sum_of(&|s| s.direction == Dir::Up);
    let sum_down = sum_of(&|s| s.direction == Dir::Down);
    let sum = sum_of(&|_| true).unwrap_or(Sum {
        bytes: 0,
        seconds: 0.0,
        bits_per_second: 0.0,
        gbit_per_second: 0.0,
    });
    let all_verified = if o.verify {
        Some(streams.iter().all(|s| s.verified == Some(true)))
    } else {
        None
    };
    let errors = streams.iter().filter(|s| s.error.is_some()).count();
    let rep = BulkReport {
        streams,
        intervals,
        sum_up,
        sum_down,
        sum,
        all_verified,
        errors,
    };
    if !json {
        print_summary(&rep);
    }
    Ok(rep)
}

fn print_interval(iv: &Interval, plan: &[Dir]) {
    if plan.len() > 1 {
        for (i, b) in iv.streams.iter().enumerate() {
            println!(
                "[{i:3}] {:6.2}-{:6.2} sec  {:>12}  {:>16}  {:?}",
                iv.start,
                iv.end,
                format_bytes(*b),
                format_rate(*b as f64 * 8.0 / (iv.end - iv.start).max(1e-9)),
                plan[i]
            );
        }
    }
    println!(
        "[SUM] {:6.2}-{:6.2} sec  {:>12}  {:>16}",
        iv.start,
        iv.end,
        format_bytes(iv.bytes),
        format_rate(iv.bits_per_second)
    );
}

fn print_summary(r: &BulkReport) {
    println!("- - - - - - - - - - - - - - - - - - - - - - - - -");
    for s in &r.streams {
        println!(
            "[{:3}] {:?}  {:6.2} sec  {:>12}  {:>16}  cc client={} server={}  rtt={}  retrans={}{}{}",
            s.id,
            s.direction,
            s.seconds,
            format_bytes(s.bytes),
            format_rate(s.bits_per_second),
            s.cc_client.as_deref().unwrap_or("?"),
            s.cc_server.as_deref().unwrap_or("?"),
            s.tcp_info
                .as_ref()
                .map(|t| format!("{:.1}ms", t.rtt_us as f64 / 1000.0))
                .unwrap_or("?".into()),
            s.tcp_info
                .as_ref()
                .map(|t| t.total_retrans.to_string())
                .unwrap_or("?".into()),
            match s.verified {
                Some(true) => "  verified",
                Some(false) => "  VERIFY FAILED",
                None => "",
            },
            s.error
                .as_ref()
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        );
    }
    for (name, s) in [("UP ", &r.sum_up), ("DN ", &r.sum_down)] {
        if let Some(s) = s {
            println!(
                "[{name}]  {:6.2} sec  {:>12}  {:>16}",
                s.seconds,
                format_bytes(s.bytes),
                format_rate(s.bits_per_second)
            );
        }
    }
    println!(
        "[SUM]  {:6.2} sec  {:>12}  {:>16}  ({:.3} Gbit/s)",
        r.sum.seconds,
        format_bytes(r.sum.bytes),
        format_rate(r.sum.bits_per_second),
        r.sum.gbit_per_second
    );
}

fn failed(id: usize, direction: Dir, e: String) -> StreamResult {
    StreamResult {
        id,
        direction,
        bytes: 0,
        bytes_written: 0,
        seconds: 0.0,
        bits_per_second: 0.0,
        gbit_per_second: 0.0,
        server_bytes: None,
        cc_client: None,
        cc_server: None,
        tcp_info: None,
        verified: None,
        error: Some(e),
    }
}

/// Connect and exchange header/hello; always reaches the barrier exactly once.
fn stream(
    id: usize,
    dir: Dir,
    addr: SocketAddr,
    o: &BulkOpts,
    sh: &Shared,
    b: &Barrier,
) -> StreamResult {
    let setup = (|| -> Result<(TcpStream, Hello)> {
        let mut s = net::connect(&addr, o.connect_timeout, false, o.congestion.as_deref())?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        let mut h = Header::new(if dir == Dir::Up {
            Mode::BulkUp
        } else {
            Mode::BulkDown
        });
        h.bytes = o.bytes;
        h.duration_ms = Some(o.duration.as_millis() as u64);
        h.verify_seed = o.verify.then_some(o.seed.wrapping_add(id as u64));
        h.cc = o.congestion.clone();
        h.idle_timeout_ms = Some(60_000);
        std::io::Write::write_all(&mut s, &h.encode()?).context("sending header")?;
        let hello: Hello = proto::read_frame(&mut s).context("reading server hello")?;
        if let Some(e) = &hello.error {
            bail!("server refused: {e}");
        }
        Ok((s, hello))
    })();
    b.wait();
    let (s, hello) = match setup {
        Ok(x) => x,
        Err(e) => return failed(id, dir, format!("{e:#}")),
    };
    let seed = o.verify.then_some(o.seed.wrapping_add(id as u64));
    let r = match dir {
        Dir::Up => upload(s, o, seed, &sh.counters[id], &sh.stop),
        Dir::Down => download(s, o, seed, &sh.counters[id], &sh.stop),
    };
    match r {
        Ok(mut r) => {
            r.id = id;
            r.cc_server = hello.cc;
            r
        }
        Err(e) => failed(id, dir, format!("{e:#}")),
    }
}

fn upload(
    mut s: TcpStream,
    o: &BulkOpts,
    seed: Option<u64>,
    ctr: &AtomicU64,
    stop: &AtomicBool,
) -> Result<StreamResult> {
    let _ = sockopt::set_notsent_lowat(&s, NOTSENT_LOWAT);
    let acked0 = sockopt::tcp_bytes_acked(&s).unwrap_or(0);
    let mut buf = vec![0u8; o.len];
    if seed.is_none() {
        pattern::fill(0, 0, &mut buf);
    }
    let limit = o.bytes.unwrap_or(u64::MAX);
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < limit && !stop.load(Ordering::Relaxed) {
        if o.bytes.is_none() && start.elapsed() >= o.duration {
            break;
        }
        let n = (limit - sent).min(o.len as u64) as usize;
        if let Some(seed) = seed {
            pattern::fill(seed, sent, &mut buf[..n]);
        }
        match std::io::Write::write(&mut s, &buf[..n]) {
            Ok(0) => bail!("connection closed while sending"),
            Ok(k) => {
                sent += k as u64;
                ctr.fetch_add(k as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("sending"),
        }
    }
    let send_secs = start.elapsed().as_secs_f64();
    let acked = sockopt::tcp_bytes_acked(&s).map(|a| a.saturating_sub(acked0));
    let info = sockopt::tcp_info(&s);
    let cc = sockopt::congestion_of(&s);
    s.shutdown(Shutdown::Write).context("half-close")?;
    // Collect the server's report; bounded by the drain timeout.
    s.set_read_timeout(Some(o.drain_timeout.max(Duration::from_millis(100))))?;
    let server: Result<UpResult> = proto::read_frame(&mut s);
    let (bytes, seconds, server_bytes, verified, error) = match server {
        // The receiver's count over its first-byte-to-EOF span is the honest figure through any
        // tunnel (a local ack only means a relay buffered the bytes).
        Ok(r) if r.seconds > 0.0 => (r.bytes, r.seconds, Some(r.bytes), r.verified, r.error),
        Ok(r) => (
            acked.unwrap_or(sent),
            send_secs,
            Some(r.bytes),
            r.verified,
            r.error,
        ),
        Err(e) => (
            acked.unwrap_or(sent),
            send_secs,
            None,
            seed.map(|_| false),
            Some(format!(
                "no result from server within the drain timeout: {e:#}"
            )),
        ),
    };
    let bps = bytes as f64 * 8.0 / seconds.max(1e-9);
    Ok(StreamResult {
        id: 0,
        direction: Dir::Up,
        bytes,
        bytes_written: sent,
        seconds,
        bits_per_second: bps,
        gbit_per_second: bps / 1e9,
        server_bytes,
        cc_client: cc,
        cc_server: None,
        tcp_info: info,
        verified,
        error,
    })
}

fn download(
    mut s: TcpStream,
    o: &BulkOpts,
    seed: Option<u64>,
    ctr: &AtomicU64,
    stop: &AtomicBool,
) -> Result<StreamResult> {
    let mut buf = vec![0u8; o.len.max(64 * 1024)];
    let start = Instant::now();
    let mut first: Option<Instant> = None;
    let mut got = 0u64;
    let mut verified = seed.map(|_| true);
    let mut error = None;
    let deadline = o.duration + o.drain_timeout;
    loop {
        if stop.load(Ordering::Relaxed) || (o.bytes.is_none() && start.elapsed() > deadline) {
            error = Some("download did not finish in time".into());
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                first.get_or_insert_with(Instant::now);
                if let Some(sd) = seed
                    && verified == Some(true)
                    && let Some(off) = pattern::check(sd, got, &buf[..n])
                {
                    verified = Some(false);
                    error = Some(format!("pattern mismatch at stream offset {off}"));
                }
                got += n as u64;
                ctr.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                error = Some(format!("receiving: {e}"));
                break;
            }
        }
    }
    if let Some(want) = o.bytes
        && got != want
        && error.is_none()
    {
        error = Some(format!("expected {want} bytes, got {got}"));
        if verified.is_some() {
            verified = Some(false);
        }
    }
    let seconds = match (o.bytes, first) {
        (Some(_), Some(f)) => f.elapsed().as_secs_f64(),
        _ => start.elapsed().as_secs_f64(),
    };
    let info = sockopt::tcp_info(&s);
    let cc = sockopt::congestion_of(&s);
    let bps = got as f64 * 8.0 / seconds.max(1e-9);
    Ok(StreamResult {
        id: 0,
        direction: Dir::Down,
        bytes: got,
        bytes_written: 0,
        seconds,
        bits_per_second: bps,
        gbit_per_second: bps / 1e9,
        server_bytes: None,
        cc_client: cc,
        cc_server: None,
        tcp_info: info,
        verified,
        error,
    })
}
