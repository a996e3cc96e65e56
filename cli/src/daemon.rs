//! The hand-off from the command line to the engine's runtime.
//!
//! Owns: `run_daemon`, which maps a validated `DaemonConfig` onto the engine's runtime options,
//! starts the server or client, and stops it gracefully on SIGINT/SIGTERM. Must not touch:
//! config parsing (done before this is called) or logging set-up.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use anyhow::Context;
use mtcpd_engine::runtime::{
    self, ClientForward, IoChoice, Route, RuntimeOptions, TargetResolver, TunnelSocketOptions,
};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::{DaemonConfig, IoDriver, Role, ServerConfig, TargetAddr};

/// Maps the daemon configuration onto the engine's runtime options.
pub fn runtime_options(config: &DaemonConfig) -> RuntimeOptions {
    let limits = &config.limits;
    let (pool_size, read_chunk) = match (config.client(), config.server()) {
        (Some(c), _) => (c.pool_size, c.buffer_size),
        (_, Some(s)) => (s.max_pool_size.min(limits.max_tunnels), s.buffer_size),
        _ => (8, 64 * 1024),
    };
    let engine = mtcpd_engine::Config {
        psk: config
            .psk
            .as_ref()
            .map(|k| k.expose_bytes().to_vec())
            .unwrap_or_default(),
        pool_size,
        max_frame_payload: limits.max_frame_payload,
        stream_window: limits.stream_window,
        session_window: limits.session_window,
        max_streams: u64::from(limits.max_streams_per_session),
        handshake_timeout: limits.handshake_timeout,
        tunnel_idle_timeout: limits.tunnel_idle_timeout,
        keepalive_interval: limits.keepalive_interval,
        session_grace: limits.session_grace,
        redial_backoff_min: limits.redial_backoff_min,
        redial_backoff_max: limits.redial_backoff_max,
        ..mtcpd_engine::Config::default()
    };
    RuntimeOptions {
        engine,
        io: match config.runtime.io {
            IoDriver::Auto => IoChoice::Auto,
            IoDriver::Uring => IoChoice::Uring,
            IoDriver::Mio => IoChoice::Mio,
        },
        tunnel_sockets: TunnelSocketOptions {
            congestion: Some(config.runtime.congestion.clone()),
            send_buffer: config.runtime.socket_send_buffer,
            recv_buffer: config.runtime.socket_recv_buffer,
            // Validated to at most 64 MiB.
            notsent_lowat: u32::try_from(config.runtime.socket_notsent_lowat).unwrap_or(u32::MAX),
        },
        read_chunk,
        drain_timeout: limits.drain_timeout,
        max_sessions: limits.max_sessions as usize,
        workers: config.runtime.cores,
    }
}

fn resolve(target: &TargetAddr) -> Option<SocketAddr> {
    match target {
        TargetAddr::Socket(addr) => Some(*addr),
        TargetAddr::Host { host, port } => (host.as_str(), *port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next()),
    }
}

fn target_resolver(server: &ServerConfig) -> TargetResolver {
    let server = server.clone();
    Arc::new(move |requested: Option<&str>| {
        let allowed = requested.and_then(|want| {
            server
                .allowed_targets
                .iter()
                .find(|f| f.target.to_string() == want)
                .map(|f| f.target.clone())
        });
        if let (Some(want), None) = (requested, &allowed) {
            tracing::info!(
                target = want,
                "requested target is not in the allow-list; using the default backend"
            );
        }
        resolve(&server.target_for(allowed.as_ref())).map_or(Route::Refuse, Route::Connect)
    })
}

/// Runs the daemon for `role` with `config` until SIGINT or SIGTERM, then drains and returns.
pub fn run_daemon(role: Role, config: &DaemonConfig) -> anyhow::Result<()> {
    tracing::info!(
        %role,
        origin = %config.origin,
        protocol_version = mtcpd_engine::wire::PROTOCOL_VERSION,
        "configuration loaded:\n{config}"
    );
    let opts = runtime_options(config);
    let handle = match (role, config.client(), config.server()) {
        (Role::Client, Some(client), _) => {
            let forwards: Vec<ClientForward> = client
                .forwards
                .iter()
                .map(|f| ClientForward {
                    listen: f.listen,
                    target: f.target.as_ref().map(ToString::to_string),
                })
                .collect();
            runtime::spawn_client(opts, client.server, &forwards)
                .context("cannot start the client")?
        }
        (Role::Server, _, Some(server)) => {
            runtime::spawn_server(opts, server.listen, target_resolver(server))
                .context("cannot start the server")?
        }
        _ => anyhow::bail!("the configuration does not describe a {role}"),
    };
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).context("cannot install the SIGINT/SIGTERM handlers")?;
    let shutdown = handle.shutdown_handle();
    let drain = config.limits.drain_timeout;
    std::thread::Builder::new()
        .name("mtcpd-signals".into())
        .spawn(move || {
            let mut signals = signals.forever();
            if let Some(signal) = signals.next() {
                tracing::info!(
                    signal,
                    "signal received: draining (up to {drain:?}); send it again to exit now"
                );
                shutdown.shutdown();
            }
            if let Some(signal) = signals.next() {
                tracing::warn!(signal, "second signal: exiting without draining");
                std::process::exit(130);
            }
        })
        .context("cannot start the signal thread")?;
    handle.join();
    tracing::info!("exited cleanly");
    Ok(())
}
