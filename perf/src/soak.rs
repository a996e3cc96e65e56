//! The soak (issue 10 item 6, `make soak`): stream churn through a running mtcpd pair while
//! the daemons' memory and descriptors are sampled, then a peak load and a quiet spell to see
//! the memory taken by the peak go back.
//!
//! Phases: `steady` (`--concurrency` connections in flight for `--duration`, each moving
//! `--bytes` each way through the echo server behind the pair, verified), `peak`
//! (`--peak-concurrency` for `--peak-time`), `quiet` (no load for `--quiet`). Every
//! `--interval` a CSV row: seconds, phase, and for each daemon its RSS (KiB, `/proc/PID/status`)
//! and open descriptors (`/proc/PID/fd`). Verdict (PASS/FAIL, printed and in the exit code):
//! - no connection failed;
//! - steady after warm-up (the first quarter of `--duration`, at least one sample): each
//!   daemon's RSS and descriptors stay flat within 10 %: the median of the last third of the
//!   samples is at most 1.1 × the median of the first third. (A single sample moves with the
//!   load itself: how many connections are in flight at that instant and how much of their
//!   64 KiB is buffered, ±30 % on a busy machine; a leak shows as growth between the thirds.)
//! - quiet: each daemon's RSS at the end is at most 1.1 × its steady median (what the peak
//!   took went back), and its descriptors are back to the steady level.
//!
//! Must not touch: the daemons (it only reads `/proc`).

use anyhow::{Context, Result};
use serde::Serialize;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::pingpong::Churn;

/// Settings of a soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakOpts {
    pub connect: SocketAddr,
    pub client_pid: u32,
    pub server_pid: u32,
    pub concurrency: usize,
    pub bytes: usize,
    #[serde(serialize_with = "mtcpd_common::units::serialize_seconds")]
    pub duration: Duration,
    #[serde(serialize_with = "mtcpd_common::units::serialize_seconds")]
    pub interval: Duration,
    pub peak_concurrency: usize,
    #[serde(serialize_with = "mtcpd_common::units::serialize_seconds")]
    pub peak_time: Duration,
    #[serde(serialize_with = "mtcpd_common::units::serialize_seconds")]
    pub quiet: Duration,
    pub csv: PathBuf,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    phase: &'static str,
    rss: [u64; 2],
    fds: [u64; 2],
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

fn fds(pid: u32) -> Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("process {pid} is gone"))?
        .count() as u64)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// (median of the first third, median of the last third, flat): see the module docs.
fn flat(values: &[u64]) -> (u64, u64, bool) {
    let third = (values.len() / 3).max(1);
    let first = median(values.iter().take(third).copied().collect());
    let last = median(values.iter().rev().take(third).copied().collect());
    (first, last, last as f64 <= first as f64 * 1.10)
}

/// Runs the soak; true when it passed.
pub fn run(o: &SoakOpts) -> Result<bool> {
    let mut csv =
        std::fs::File::create(&o.csv).with_context(|| format!("creating {}", o.csv.display()))?;
    writeln!(
        csv,
        "seconds,phase,client_rss_kib,client_fds,server_rss_kib,server_fds,completed,failed"
    )?;
    let t0 = Instant::now();
    let mut churn = Churn::new(o.connect, o.bytes)?;
    let mut samples: Vec<Sample> = Vec::new();
    let pids = [o.client_pid, o.server_pid];
    let mut sample = |phase: &'static str, churn: &Churn, csv: &mut std::fs::File| -> Result<()> {
        let s = Sample {
            phase,
            rss: [rss_kib(pids[0])?, rss_kib(pids[1])?],
            fds: [fds(pids[0])?, fds(pids[1])?],
        };
        writeln!(
            csv,
            "{:.1},{},{},{},{},{},{},{}",
            t0.elapsed().as_secs_f64(),
            phase,
            s.rss[0],
            s.fds[0],
            s.rss[1],
            s.fds[1],
            churn.counts.completed,
            churn.counts.failed
        )?;
        csv.flush()?;
        eprintln!(
            "{:>7.1}s {phase:<6} client {} KiB {} fds, server {} KiB {} fds; {} done, {} failed",
            t0.elapsed().as_secs_f64(),
            s.rss[0],
            s.fds[0],
            s.rss[1],
            s.fds[1],
            churn.counts.completed,
            churn.counts.failed
        );
        samples.push(s);
        Ok(())
    };
    sample("start", &churn, &mut csv)?;
    // Churn at `concurrency` for `length`, sampling every interval, then let the phase's
    // connections finish (so the next phase starts from this one's level).
    let mut churn_phase = |phase: &'static str,
                           concurrency: usize,
                           length: Duration,
                           churn: &mut Churn,
                           csv: &mut std::fs::File|
     -> Result<()> {
        let end = Instant::now() + length;
        while Instant::now() < end {
            churn.run(concurrency, o.interval.min(end - Instant::now()), false)?;
            sample(phase, churn, csv)?;
        }
        churn.run(concurrency, Duration::ZERO, true)
    };
    churn_phase("steady", o.concurrency, o.duration, &mut churn, &mut csv)?;
    churn_phase(
        "peak",
        o.peak_concurrency,
        o.peak_time,
        &mut churn,
        &mut csv,
    )?;
    let quiet_end = Instant::now() + o.quiet;
    while Instant::now() < quiet_end {
        std::thread::sleep(o.interval.min(quiet_end - Instant::now()));
        sample("quiet", &churn, &mut csv)?;
    }

    let steady: Vec<Sample> = samples
        .iter()
        .filter(|s| s.phase == "steady")
        .copied()
        .collect();
    let skip = (steady.len() / 4)
        .max(1)
        .min(steady.len().saturating_sub(1));
    let after_warmup = &steady[skip..];
    let mut pass = true;
    let mut say = |ok: bool, what: String| {
        println!("{} {what}", if ok { "ok  " } else { "FAIL" });
        pass &= ok;
    };
    say(
        churn.counts.failed == 0 && churn.counts.completed > 0,
        format!(
            "{} connections moved {} bytes each way, verified; {} failed",
            churn.counts.completed, o.bytes, churn.counts.failed
        ),
    );
    let (Some(start), Some(end)) = (samples.first().copied(), samples.last()) else {
        say(false, "no samples".into());
        return Ok(false);
    };
    let peak = samples.iter().filter(|s| s.phase == "peak");
    for (d, name) in ["client", "server"].iter().enumerate() {
        let rss: Vec<u64> = after_warmup.iter().map(|s| s.rss[d]).collect();
        let (first, last, ok) = flat(&rss);
        say(
            ok,
            format!(
                "{name}: steady RSS flat after warm-up: median {first} KiB (first third) -> \
                 {last} KiB (last third); samples {}..{} KiB over {}",
                rss.iter().min().unwrap_or(&0),
                rss.iter().max().unwrap_or(&0),
                rss.len()
            ),
        );
        let f: Vec<u64> = after_warmup.iter().map(|s| s.fds[d]).collect();
        let (first, last, ok) = flat(&f);
        say(
            ok,
            format!(
                "{name}: steady descriptors flat: median {first} -> {last}; samples {}..{}",
                f.iter().min().unwrap_or(&0),
                f.iter().max().unwrap_or(&0)
            ),
        );
        let peak_rss = peak.clone().map(|s| s.rss[d]).max().unwrap_or(0);
        let steady_rss = median(rss);
        say(
            end.rss[d] as f64 <= steady_rss as f64 * 1.10,
            format!(
                "{name}: RSS went back after the peak: before any load {} KiB, steady (median) \
                 {steady_rss} KiB, peak {peak_rss} KiB, quiet {} KiB",
                start.rss[d], end.rss[d]
            ),
        );
        let steady_fds = median(f);
        say(
            end.fds[d] as f64 <= steady_fds as f64 * 1.10,
            format!(
                "{name}: descriptors back after the peak: steady (median) {steady_fds}, quiet {}",
                end.fds[d]
            ),
        );
    }
    println!("{}", if pass { "PASS" } else { "FAIL" });
    Ok(pass)
}

/// `mtcp-perf soak`.
#[derive(clap::Args)]
pub struct SoakArgs {
    /// The mtcpd client's listener (an echo server behind the pair).
    #[arg(long, short = 'c')]
    connect: SocketAddr,
    /// Process id of the mtcpd client.
    #[arg(long)]
    client_pid: u32,
    /// Process id of the mtcpd server.
    #[arg(long)]
    server_pid: u32,
    /// Connections in flight during the steady phase.
    #[arg(long, default_value_t = 500)]
    concurrency: usize,
    /// Bytes each connection moves each way.
    #[arg(long, default_value = "64KiB", value_parser = mtcpd_common::units::parse_bytes)]
    bytes: u64,
    /// Steady phase.
    #[arg(long, short = 't', default_value = "10m", value_parser = mtcpd_common::units::parse_duration_or_seconds)]
    duration: Duration,
    /// Sampling interval.
    #[arg(long, default_value = "10s", value_parser = mtcpd_common::units::parse_duration_or_seconds)]
    interval: Duration,
    /// Connections in flight during the peak.
    #[arg(long, default_value_t = 4000)]
    peak_concurrency: usize,
    /// Peak phase.
    #[arg(long, default_value = "30s", value_parser = mtcpd_common::units::parse_duration_or_seconds)]
    peak_time: Duration,
    /// Quiet phase after the peak.
    #[arg(long, default_value = "30s", value_parser = mtcpd_common::units::parse_duration_or_seconds)]
    quiet: Duration,
    /// Where the samples go.
    #[arg(long, default_value = "soak.csv")]
    csv: PathBuf,
}

pub fn main(a: SoakArgs) -> Result<i32> {
    let o = SoakOpts {
        connect: a.connect,
        client_pid: a.client_pid,
        server_pid: a.server_pid,
        concurrency: a.concurrency,
        bytes: a.bytes as usize,
        duration: a.duration,
        interval: a.interval,
        peak_concurrency: a.peak_concurrency,
        peak_time: a.peak_time,
        quiet: a.quiet,
        csv: a.csv,
    };
    Ok(if run(&o)? { 0 } else { 1 })
}
