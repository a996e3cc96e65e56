//! The hand-off from the command line to the engine's runtime.
//!
//! Owns: `run_daemon`, which starts the server or client on a validated `DaemonConfig` (whose
//! `runtime` already is the engine's `RuntimeOptions`), routes the server's streams through its
//! allow-list, stops it gracefully on SIGINT/SIGTERM and reloads it on SIGHUP (`reload`). Must
//! not touch: config parsing (done before this is called) or logging set-up.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::Context;
use mtcpd_engine::runtime::{self, Route, TargetResolver};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::{ClientConfig, DaemonConfig, LoadRequest, Role, TargetAddr};
use crate::reload::{Reloader, SharedRoutes};

fn resolve(target: &TargetAddr) -> Option<SocketAddr> {
    match target {
        TargetAddr::Socket(addr) => Some(*addr),
        TargetAddr::Host { host, port } => (host.as_str(), *port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next()),
    }
}

/// Routes each stream by the routing in `routes` now (a reload replaces it).
fn target_resolver(routes: SharedRoutes) -> TargetResolver {
    Arc::new(move |requested: Option<&str>| {
        let server = routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
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

/// The client's servers with their names resolved (once, at start), in order.
fn client_servers(client: &ClientConfig) -> anyhow::Result<Vec<SocketAddr>> {
    let servers = client
        .servers
        .iter()
        .map(|server| resolve(server).with_context(|| format!("cannot resolve server {server}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if servers.len() > 1 {
        let list: Vec<String> = servers.iter().map(ToString::to_string).collect();
        tracing::info!(
            servers = %list.join(", "),
            "servers, tried in this order; a session that cannot be established on one moves \
             to the next"
        );
    }
    Ok(servers)
}

/// Runs the daemon for `role` with `config` (loaded from `request`, which SIGHUP loads again)
/// until SIGINT or SIGTERM, then drains and returns.
pub fn run_daemon(role: Role, config: &DaemonConfig, request: &LoadRequest) -> anyhow::Result<()> {
    crate::startup_log::log_configuration(
        &format!(
            "role={role} origin={} protocol_version={}; all of it: `mtcpd check` with the same \
             arguments",
            config.origin,
            mtcpd_engine::wire::PROTOCOL_VERSION
        ),
        &config.to_string(),
    );
    // Installed before anything listens: a SIGHUP sent as soon as a port answers must find
    // its handler (its default action ends the process).
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("cannot install the SIGINT/SIGTERM/SIGHUP handlers")?;
    let opts = config.runtime.clone();
    let routes: Option<SharedRoutes> = config
        .server()
        .map(|server| Arc::new(RwLock::new(Arc::new(server.clone()))));
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
            let servers = client_servers(client)?;
            runtime::spawn_client_with_servers(
                opts,
                &servers,
                runtime::ClientServices {
                    forwards: &client.engine_forwards(),
                    proxies: &client.proxies,
                    exposed: &exposed,
                },
            )
            .context("cannot start the client")?
        }
        (Role::Server, _, Some(server)) => {
            let resolver = target_resolver(routes.clone().context("no server routing")?);
            if server.reverse.is_empty() {
                runtime::spawn_server(opts, server.listen, resolver)
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
                runtime::spawn_reverse_server(opts, server.listen, resolver, &server.reverse)
                    .context("cannot start the server")?
            }
        }
        _ => anyhow::bail!("the configuration does not describe a {role}"),
    };
    if let Some(addr) = config.metrics_listen {
        let context = crate::metrics::ExpositionContext { role };
        crate::metrics::start(addr, handle.stats_probe(), context)?;
    }
    crate::memory_trim::start();
    let shutdown = handle.shutdown_handle();
    let drain = config.runtime.drain_timeout;
    let mut reloader = Reloader::new(
        request.clone(),
        config.clone(),
        handle.local_addrs(),
        handle.reload_handle(),
        routes,
    );
    std::thread::Builder::new()
        .name("mtcpd-signals".into())
        .spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                match (signal, stopping) {
                    (SIGHUP, false) => reloader.reload(),
                    (SIGHUP, true) => {
                        tracing::info!("reload (SIGHUP) ignored: the daemon is stopping")
                    }
                    (_, false) => {
                        tracing::info!(
                            signal,
                            "signal received: draining (up to {drain:?}); send it again to exit now"
                        );
                        stopping = true;
                        shutdown.shutdown();
                    }
                    (_, true) => {
                        tracing::warn!(signal, "second signal: exiting without draining");
                        std::process::exit(i32::from(crate::exit_code::INTERRUPTED));
                    }
                }
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
