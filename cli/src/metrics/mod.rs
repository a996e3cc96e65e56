//! The daemon's Prometheus metrics endpoint (`metrics_listen`, `--metrics`; off by default).
//!
//! Owns: starting the endpoint for a running runtime (`start`), the exposition text
//! (`render`) and the HTTP responder (`http`). Must not touch: how the figures are gathered —
//! the engine's stats snapshot (`RuntimeHandle::stats_probe`), the same one
//! `Client::stats()` / `Server::stats()` give library users — or the runtime itself.

pub mod http;
pub mod render;

use std::net::{SocketAddr, TcpListener};

use anyhow::Context;
use mtcpd_engine::runtime::stats::StatsProbe;

pub use render::ExpositionContext;

/// Binds `addr` and serves `probe`'s figures at `/metrics` on a thread of its own; the bound
/// address. Warns when the endpoint is reachable beyond this host.
pub fn start(
    addr: SocketAddr,
    probe: StatsProbe,
    context: ExpositionContext,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .with_context(|| format!("cannot listen for metrics on {addr} (metrics_listen)"))?;
    let local = http::serve(listener, probe, context)
        .context("cannot start the metrics endpoint's thread")?;
    if !local.ip().is_loopback() {
        tracing::warn!(
            %local,
            "the metrics endpoint is reachable beyond this host: anyone who can reach it sees \
             session ids, peer addresses and traffic; bind it to 127.0.0.1 or firewall it"
        );
    }
    tracing::info!(%local, "serving metrics at http://{local}/metrics");
    Ok(local)
}
