//! `mtcpd stats`: a live view of a running daemon, like `top`, read from its metrics endpoint.
//!
//! Owns: the refresh loop (read, build the view with rates from the previous reading, clear the
//! terminal and redraw; or one table or JSON document with `--once`). Must not touch: the
//! daemon — it only reads `/metrics` over HTTP, as Prometheus does (`exposition`), and shows it
//! (`view`).

pub mod exposition;
pub mod view;

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::command_line::StatsRequest;
use view::View;

/// One reading: the view and when it was read.
fn read(addr: SocketAddr, previous: Option<&(View, Instant)>) -> anyhow::Result<(View, Instant)> {
    let text = exposition::fetch(addr)?;
    let at = Instant::now();
    let samples = exposition::parse(&text)
        .with_context(|| format!("metrics endpoint {addr}: not a Prometheus exposition"))?;
    if !samples.iter().any(|s| s.name == "mtcpd_build_info") {
        anyhow::bail!("{addr} serves metrics, but not an mtcpd daemon's");
    }
    let (before, elapsed) = match previous {
        Some((view, then)) => (Some(view), at.saturating_duration_since(*then)),
        None => (None, Duration::ZERO),
    };
    Ok((View::build(&samples, before, elapsed), at))
}

fn show(view: &View, request: &StatsRequest) -> anyhow::Result<String> {
    if request.json {
        Ok(serde_json::to_string(view)? + "\n")
    } else {
        Ok(view.table(&request.metrics.to_string()))
    }
}

/// Runs `mtcpd stats`: with `--once`, two readings one interval apart (for the rates) and one
/// table; else a redraw every interval until interrupted.
pub fn run(request: &StatsRequest) -> anyhow::Result<()> {
    let addr = request.metrics;
    let mut last = read(addr, None)?;
    let mut stdout = std::io::stdout();
    if request.once {
        std::thread::sleep(request.interval);
        let now = read(addr, Some(&last))?;
        stdout.write_all(show(&now.0, request)?.as_bytes())?;
        return Ok(());
    }
    loop {
        std::thread::sleep(request.interval);
        match read(addr, Some(&last)) {
            Ok(now) => {
                let text = show(&now.0, request)?;
                if request.json {
                    stdout.write_all(text.as_bytes())?;
                } else {
                    // Clear the screen, cursor home, redraw.
                    write!(stdout, "\x1b[2J\x1b[H{text}")?;
                }
                last = now;
            }
            Err(e) => {
                if !request.json {
                    write!(stdout, "\x1b[2J\x1b[H")?;
                }
                writeln!(stdout, "mtcpd stats: {e:#}; retrying")?;
            }
        }
        stdout.flush()?;
    }
}
