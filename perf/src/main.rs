//! `mtcp-perf`: iperf-style load tool (client and server) and user-space WAN emulator for
//! mtcpd. This module owns the command line (clap derive) and dispatches to the modes.
//!
//! * [`server`]: the server side of every test mode.
//! * [`bulk`], [`latency`]: the client modes.
//! * [`pingpong`]: many connections from one thread (`echo-mio`, `pingpong`); [`soak`]: churn
//!   through a running mtcpd pair with the daemons' memory sampled; [`relay`]: a plain
//!   one-thread relay, the two-hop baseline.
//! * [`proto`]: the tool's own framing; [`pattern`]: the verification pattern.
//! * [`wan`]: the WAN emulator (namespaces, TUN devices, impairments).
//! * [`grid`]: the benchmark grid (`make perf`) over emulated paths; [`report`]: its CSV, SVG
//!   and markdown outputs.

mod bulk;
mod grid;
mod latency;
mod msgrate;
mod net;
mod pingpong;
mod proto;
mod relay;
mod report;
mod rng;
mod server;
mod soak;
mod stats;
mod wan;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use mtcpd_common::units::{parse_bytes, parse_duration_or_seconds};
use serde::Serialize;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "mtcp-perf",
    version,
    about = "iperf-style load tool and WAN emulator for mtcpd",
    after_help = "Units (the same as in mtcpd's config file): sizes 64k = 64KiB = 65536 bytes \
                  (k/M/G/T and KiB/MiB/GiB/TiB are powers of 1024), 64kB = 64000 bytes \
                  (kB/MB/GB/TB are powers of 1000); durations 250ms, 1.5s, 2m (a bare number is \
                  seconds); rates are decimal, 20mbit (bits) or 10mbps (bytes) per second."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve every test mode on a TCP address.
    Server {
        /// Address to listen on.
        #[arg(long, short = 'l', default_value = "0.0.0.0:5201")]
        listen: String,
        /// Maximum concurrent connections (more are refused).
        #[arg(long, default_value_t = 10_000)]
        max_conns: usize,
        /// Exit after this long (default: run until killed).
        #[arg(long, value_parser = parse_duration_or_seconds)]
        max_time: Option<Duration>,
        /// Log per-connection errors.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Run a test against a server (directly, or through any TCP tunnel).
    Client(ClientArgs),
    /// User-space WAN emulator between two network namespaces.
    Wan(wan::WanArgs),
    /// The WAN benchmark grid: every contender on every emulated path (root, Linux).
    Grid(grid::GridArgs),
    /// Regenerate CSV, SVG plots and the markdown section from a grid's grid.json.
    Report(report::ReportArgs),
    /// A plain one-thread echo server (mio) for many connections; raw bytes, no header.
    EchoMio(pingpong::EchoArgs),
    /// 64 B ping-pong over many connections from one thread (mio), against `echo-mio`.
    Pingpong(pingpong::PingpongArgs),
    /// A plain one-thread TCP relay (mio): bytes copied both ways unchanged, the baseline for
    /// two-hop paths (`socket-scale.sh` chains two).
    Relay(relay::RelayArgs),
    /// Stream churn through a running mtcpd pair, sampling the daemons' RSS and descriptors.
    Soak(soak::SoakArgs),
    /// Message rate over N in-process streams through the library API (one-way or
    /// ping-pong; readiness API and blocking baseline in the same run).
    Msgrate(msgrate::MsgrateArgs),
}

#[derive(Args)]
struct ClientArgs {
    /// Address of the server (or of a tunnel leading to it).
    #[arg(long, short = 'c')]
    connect: String,
    /// Print one JSON document with all results instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Connect timeout.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration_or_seconds)]
    connect_timeout: Duration,
    /// Congestion control for the sockets (client and, via the header, server): bbr, cubic…
    #[arg(long, global = true)]
    congestion: Option<String>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Bulk throughput: parallel streams, upload/download/both.
    Bulk {
        /// Parallel streams.
        #[arg(short = 'P', long, default_value_t = 1)]
        parallel: usize,
        /// Download (server sends).
        #[arg(short = 'R', long, conflicts_with = "bidir")]
        reverse: bool,
        /// Both directions at once (one upload and one download connection per stream).
        #[arg(long)]
        bidir: bool,
        /// Duration.
        #[arg(short = 't', long, default_value = "10s", value_parser = parse_duration_or_seconds)]
        time: Duration,
        /// Bytes per stream instead of a duration (e.g. 1G). Sizes: k/M/G and KiB/MiB/GiB are
        /// powers of 1024, kB/MB/GB powers of 1000.
        #[arg(short = 'n', long, value_parser = parse_bytes)]
        bytes: Option<u64>,
        /// Interval between progress lines; 0 disables them.
        #[arg(short = 'i', long, default_value = "1s", value_parser = parse_duration_or_seconds)]
        interval: Duration,
        /// Carry a deterministic pseudo-random pattern and verify it byte for byte.
        #[arg(long)]
        verify: bool,
        /// Seed of the verification pattern.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write size (128k = 128 KiB; kB/MB/GB are powers of 1000).
        #[arg(short = 'l', long, default_value = "128k", value_parser = parse_bytes)]
        len: u64,
        /// How long to wait for the tail to drain and the server's report after sending.
        #[arg(long, default_value = "15s", value_parser = parse_duration_or_seconds)]
        drain_timeout: Duration,
    },
    /// Request/response latency and rate (closed loop, or open loop with --rate).
    Rr {
        #[command(flatten)]
        m: MsgArgs,
        /// Concurrent connections.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Duration.
        #[arg(short = 't', long, default_value = "10s", value_parser = parse_duration_or_seconds)]
        time: Duration,
        /// Total messages instead of a duration.
        #[arg(short = 'n', long)]
        count: Option<u64>,
        /// Open loop: target messages per second (total over all connections).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Time to first byte of a small exchange on a new connection each time.
    Ttfb {
        #[command(flatten)]
        m: MsgArgs,
        /// Samples.
        #[arg(short = 'n', long, default_value_t = 100)]
        samples: u64,
        /// Pause between samples.
        #[arg(long, default_value = "0s", value_parser = parse_duration_or_seconds)]
        pause: Duration,
        /// Upper bound on the whole run.
        #[arg(short = 't', long, default_value = "60s", value_parser = parse_duration_or_seconds)]
        time: Duration,
    },
    /// Connections opened and closed per second.
    Churn {
        #[command(flatten)]
        m: MsgArgs,
        /// Parallel connect loops.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Duration.
        #[arg(short = 't', long, default_value = "5s", value_parser = parse_duration_or_seconds)]
        time: Duration,
    },
    /// Hold N idle connections, then check each still answers.
    Idle {
        #[command(flatten)]
        m: MsgArgs,
        /// Connections.
        #[arg(short = 'N', long, default_value_t = 100)]
        conns: usize,
        /// How long to hold them idle.
        #[arg(short = 't', long, default_value = "5s", value_parser = parse_duration_or_seconds)]
        time: Duration,
    },
}

#[derive(Args, Clone, Copy)]
struct MsgArgs {
    /// Request size in bytes.
    #[arg(short = 's', long, default_value_t = 64)]
    size: u32,
    /// Response size in bytes (default: the request size).
    #[arg(long)]
    resp_size: Option<u32>,
}

#[derive(Serialize)]
struct JsonDoc<'a, C: Serialize, R: Serialize> {
    tool: &'static str,
    version: &'static str,
    mode: &'a str,
    target: &'a str,
    config: C,
    result: R,
}

fn emit<C: Serialize, R: Serialize + std::fmt::Debug>(
    a: &ClientArgs,
    mode: &str,
    config: C,
    result: R,
    text: impl FnOnce(&R),
) -> Result<()> {
    if a.json {
        let doc = JsonDoc {
            tool: "mtcp-perf",
            version: env!("CARGO_PKG_VERSION"),
            mode,
            target: &a.connect,
            config,
            result,
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        text(&result);
    }
    Ok(())
}

fn lat_opts(
    a: &ClientArgs,
    m: MsgArgs,
    c: usize,
    t: Duration,
    count: Option<u64>,
    rate: Option<f64>,
) -> latency::LatOpts {
    latency::LatOpts {
        size: m.size,
        resp_size: m.resp_size.unwrap_or(m.size),
        concurrency: c,
        duration: t,
        count,
        rate,
        connect_timeout: a.connect_timeout,
        congestion: a.congestion.clone(),
    }
}

fn client(a: &ClientArgs) -> Result<bool> {
    match a.mode {
        Mode::Bulk {
            parallel,
            reverse,
            bidir,
            time,
            bytes,
            interval,
            verify,
            seed,
            len,
            drain_timeout,
        } => {
            let o = bulk::BulkOpts {
                streams: parallel,
                reverse,
                bidir,
                duration: time,
                bytes,
                interval: (!interval.is_zero()).then_some(interval),
                congestion: a.congestion.clone(),
                verify,
                seed,
                len: len as usize,
                connect_timeout: a.connect_timeout,
                drain_timeout,
            };
            let r = bulk::run(&a.connect, &o, a.json)?;
            let ok = r.errors == 0 && r.all_verified != Some(false);
            emit(a, "bulk", &o, r, |_| {})?;
            Ok(ok)
        }
        Mode::Rr {
            m,
            concurrency,
            time,
            count,
            rate,
        } => {
            let o = lat_opts(a, m, concurrency, time, count, rate);
            let r = latency::rr(&a.connect, &o)?;
            let ok = r.errors.is_empty() && r.messages > 0;
            emit(a, "rr", &o, r, |r| {
                println!(
                    "rr {} B/{} B x{}: {} messages in {:.2}s = {:.0} msg/s{}",
                    o.size,
                    o.resp_size,
                    o.concurrency,
                    r.messages,
                    r.seconds,
                    r.messages_per_second,
                    if r.open_loop { " (open loop)" } else { "" }
                );
                println!("latency: {}", r.latency.line());
                for e in &r.errors {
                    println!("error: {e}");
                }
            })?;
            Ok(ok)
        }
        Mode::Ttfb {
            m,
            samples,
            pause,
            time,
        } => {
            let o = lat_opts(a, m, 1, time, Some(samples), None);
            let r = latency::ttfb(&a.connect, &o, samples, pause)?;
            let ok = r.failures == 0 && r.samples > 0;
            emit(a, "ttfb", &o, r, |r| {
                println!("ttfb: {} samples, {} failures", r.samples, r.failures);
                println!("connect: {}", r.connect.line());
                println!("ttfb:    {}", r.ttfb.line());
                for e in &r.errors {
                    println!("error: {e}");
                }
            })?;
            Ok(ok)
        }
        Mode::Churn {
            m,
            concurrency,
            time,
        } => {
            let o = lat_opts(a, m, concurrency, time, None, None);
            let r = latency::churn(&a.connect, &o)?;
            let ok = r.connections > 0;
            emit(a, "churn", &o, r, |r| {
                println!(
                    "churn: {} connections in {:.2}s = {:.0} conn/s, {} failures",
                    r.connections, r.seconds, r.connections_per_second, r.failures
                );
                println!("cycle: {}", r.cycle.line());
                for e in &r.errors {
                    println!("error: {e}");
                }
            })?;
            Ok(ok)
        }
        Mode::Idle { m, conns, time } => {
            let o = lat_opts(a, m, 1, time, None, None);
            let r = latency::idle(&a.connect, &o, conns)?;
            let ok = r.alive_at_end == conns;
            emit(a, "idle", &o, r, |r| {
                println!(
                    "idle: {}/{} opened in {:.2}s, held {:.2}s, {} alive at the end",
                    r.opened, r.requested, r.open_seconds, r.held_seconds, r.alive_at_end
                );
                println!("check: {}", r.check.line());
                for e in &r.errors {
                    println!("error: {e}");
                }
            })?;
            Ok(ok)
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Server {
            listen,
            max_conns,
            max_time,
            verbose,
        } => server::run(&server::ServerOpts {
            listen,
            max_conns,
            max_time,
            verbose,
        }),
        Cmd::Client(a) => {
            if !client(&a)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Wan(w) => {
            let code = wan::main(w)?;
            std::process::exit(code);
        }
        Cmd::Grid(g) => {
            let code = grid::main(g)?;
            std::process::exit(code);
        }
        Cmd::Report(r) => {
            let code = report::main(r)?;
            std::process::exit(code);
        }
        Cmd::EchoMio(a) => std::process::exit(pingpong::echo_main(a)?),
        Cmd::Pingpong(a) => std::process::exit(pingpong::pingpong_main(a)?),
        Cmd::Relay(a) => std::process::exit(relay::main(a)?),
        Cmd::Soak(a) => std::process::exit(soak::main(a)?),
        Cmd::Msgrate(a) => {
            if !msgrate::run(&a)? {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
