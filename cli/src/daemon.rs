//! The hand-off from the command line to the engine's runtime.
//!
//! Owns: `run_daemon`, which starts the server or client on a validated `DaemonConfig` (whose
//! `runtime` already is the engine's `RuntimeOptions`), routes the server's streams through its
//! allow-list, and stops it gracefully on SIGINT/SIGTERM. Must not touch:
//! config parsing (done before this is called) or logging set-up.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use anyhow::Context;
use mtcpd_engine::runtime::{self, Route, TargetResolver};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::{ClientConfig, DaemonConfig, Role, ServerConfig, TargetAddr};

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
        if let (Some(want), None) = (requested, &allowed)
            && !server.allow.is_empty()
        {
            // Not a configured forward: a dynamic target, judged by `[server] allow`.
            return crate::dynamic_route::route(&server.allow, want);
        }
        if let (Some(want), None) = (requested, &allowed) {
            if !server.unlisted_to_default_backend {
                // Said (aggregated) by the runtime, which resets the stream with code 5.
                return Route::NotAllowed;
            }
            tracing::info!(
                target = want,
                "requested target is not a [[server.forward]] target; using the default backend \
                 (unlisted_to_default_backend = true)"
            );
        }
        resolve(&server.target_for(allowed.as_ref())).map_or(Route::Refuse, Route::Connect)
    })
}

/// The client's exposed services with their targets resolved (once, at start).
fn exposed_services(client: &ClientConfig) -> anyhow::Result<Vec<runtime::ExposedService>> {
    client
        .exposed
        .iter()
        .map(|exposed| {
            let target = resolve(&exposed.target).with_context(|| {
                format!(
                    "cannot resolve {} (the target of exposed service {:?})",
                    exposed.target, exposed.name
                )
            })?;
            tracing::info!(service = %exposed.name, %target, "exposed service");
            Ok(runtime::ExposedService {
                name: exposed.name.clone(),
                target,
            })
        })
        .collect()
}

/// The `forward` label of each client forward, in the runtime's order: its name, else its
/// listen address.
fn forward_labels(config: &DaemonConfig) -> Vec<String> {
    config.client().map_or_else(Vec::new, |client| {
        client
            .forwards
            .iter()
            .map(|f| {
                f.name
                    .clone()
                    .unwrap_or_else(|| f.forward.listen.to_string())
            })
            .collect()
    })
}

/// Runs the daemon for `role` with `config` until SIGINT or SIGTERM, then drains and returns.
pub fn run_daemon(role: Role, config: &DaemonConfig) -> anyhow::Result<()> {
    crate::startup_log::log_configuration(
        &format!(
            "role={role} origin={} protocol_version={}; all of it: `mtcpd check` with the same \
             arguments",
            config.origin,
            mtcpd_engine::wire::PROTOCOL_VERSION
        ),
        &config.to_string(),
    );
    let opts = config.runtime.clone();
    let handle = match (role, config.client(), config.server()) {
        (Role::Client, Some(client), _) => {
            for labelled in client.forwards.iter().filter(|f| f.name.is_some()) {
                tracing::info!(
                    forward = labelled.name.as_deref().unwrap_or_default(),
                    listen = %labelled.forward.listen,
                    target = labelled.forward.target.as_deref().unwrap_or("<server default>"),
                    "client forward"
                );
            }
            let exposed = exposed_services(client)?;
            runtime::spawn_client_with(
                opts,
                client.server,
                runtime::ClientServices {
                    forwards: &client.engine_forwards(),
                    proxies: &client.proxies,
                    exposed: &exposed,
                },
            )
            .context("cannot start the client")?
        }
        (Role::Server, _, Some(server)) => {
            if server.reverse.is_empty() {
                runtime::spawn_server(opts, server.listen, target_resolver(server))
                    .context("cannot start the server")?
            } else {
                for reverse in &server.reverse {
                    tracing::info!(
                        service = %reverse.name,
                        listen = %reverse.listen,
                        when_absent = reverse.when_absent.name(),
                        "reverse tunnel"
                    );
                }
                runtime::spawn_reverse_server(
                    opts,
                    server.listen,
                    target_resolver(server),
                    &server.reverse,
                )
                .context("cannot start the server")?
            }
        }
        _ => anyhow::bail!("the configuration does not describe a {role}"),
    };
    if let Some(addr) = config.metrics_listen {
        let context = crate::metrics::ExpositionContext {
            role,
            forward_labels: forward_labels(config),
        };
        crate::metrics::start(addr, handle.stats_probe(), context)?;
    }
    crate::memory_trim::start();
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).context("cannot install the SIGINT/SIGTERM handlers")?;
    let shutdown = handle.shutdown_handle();
    let drain = config.runtime.drain_timeout;
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
    let drained = handle.join_drain();
    if drained.streams_cut == 0 {
        tracing::info!("stopped: every stream finished");
    } else {
        tracing::warn!(
            streams_cut = drained.streams_cut,
            "stopped: drain_timeout ({drain:?}) ran out and {} streams were reset",
            drained.streams_cut
        );
    }
    Ok(())
}
