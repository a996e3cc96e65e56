//! SIGHUP: re-reading the config file and applying what can change without a restart.
//!
//! Owns: [`Reloader`] (the configuration the daemon runs now, re-loading the file with the same
//! loader and validation as at start, the diff against the running one, and the log lines that
//! say what changed and what was refused) and [`SharedRoutes`] (the server's routing, swapped
//! by a reload). Must not touch: config parsing (`config`), the runtime's workers (reached only
//! through the engine's `ReloadHandle`), or signal handling (`daemon`).
//!
//! What reloads: a client's `[[client.forward]]`, `[[client.socks5]]` and
//! `[[client.http_proxy]]` listeners (added, removed, target/name/credentials changed: new
//! connections use the new values, open streams run on), a server's `[[server.forward]]`
//! targets, `[server] allow`, `backend_ip`/`backend_port` and `unlisted_to_default_backend`
//! (new streams are judged by the new routing), and `log_level`. Everything else that changed is
//! refused, each key on its own line, and the rest is still applied. A file that fails to load
//! is refused whole: the running configuration stays.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use mtcpd_engine::runtime::reload::{ListenerPlan, ReloadHandle};
use mtcpd_engine::runtime::{ClientProxy, ProxyKind};

use crate::config::{self, ClientConfig, DaemonConfig, Endpoint, LoadRequest, ServerConfig};

/// The server's routing: read by the target resolver for every new stream, replaced by a
/// reload.
pub type SharedRoutes = Arc<RwLock<Arc<ServerConfig>>>;

/// How long a reload waits for the workers to apply a listener change.
const APPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// The running configuration and how to change it.
pub struct Reloader {
    request: LoadRequest,
    running: DaemonConfig,
    /// Client: each running listener's configured address → the address it is bound to.
    bound: HashMap<SocketAddr, SocketAddr>,
    handle: ReloadHandle,
    /// Server: the routing the resolver reads.
    routes: Option<SharedRoutes>,
}

/// What one reload did.
#[derive(Debug, Default)]
struct Outcome {
    applied: Vec<String>,
    refused: Vec<String>,
}

impl Outcome {
    fn refuse_restart(&mut self, key: &str) {
        tracing::warn!("reload: {key} changed; restart needed to apply it");
        self.refused.push(key.to_owned());
    }
}

impl Reloader {
    /// A reloader for a daemon started from `request` with `running`; `bound_listeners` are
    /// the client's bound addresses in the runtime's order (forwards, then proxies).
    pub fn new(
        request: LoadRequest,
        running: DaemonConfig,
        bound_listeners: &[SocketAddr],
        handle: ReloadHandle,
        routes: Option<SharedRoutes>,
    ) -> Self {
        let mut bound = HashMap::new();
        if let Some(client) = running.client() {
            let configured = client
                .forwards
                .iter()
                .map(|f| f.forward.listen)
                .chain(client.proxies.iter().map(|p| p.listen));
            for (configured, bound_to) in configured.zip(bound_listeners) {
                bound.insert(configured, *bound_to);
            }
        }
        Self {
            request,
            running,
            bound,
            handle,
            routes,
        }
    }

    /// The configuration running now (after the reloads applied so far).
    pub fn running(&self) -> &DaemonConfig {
        &self.running
    }

    /// Re-reads the file and applies what can change; logs every change, every refusal and one
    /// summary line.
    pub fn reload(&mut self) {
        let file = match &self.request.file {
            Some(path) => path.display().to_string(),
            None => "<built-in defaults>".to_owned(),
        };
        tracing::info!(file, "reload: re-reading the configuration (SIGHUP)");
        let new = match config::load(&self.request) {
            Ok(new) => new,
            Err(error) => {
                tracing::warn!(
                    file,
                    "reload refused: {error}; the running configuration stays"
                );
                return;
            }
        };
        let mut outcome = Outcome::default();
        if new.role != self.running.role {
            outcome.refuse_restart("mode (the daemon's role)");
        } else {
            self.refuse_restart_keys(&new, &mut outcome);
            match (&self.running.endpoint, &new.endpoint) {
                (Endpoint::Client(old), Endpoint::Client(next)) => {
                    let (old, next) = (old.clone(), next.clone());
                    self.reload_client(&old, &next, &mut outcome);
                }
                (Endpoint::Server(old), Endpoint::Server(next)) => {
                    let (old, next) = (old.clone(), next.clone());
                    self.reload_server(&old, &next, new.has_psk(), &mut outcome);
                }
                _ => {}
            }
            self.reload_log_level(&new, &mut outcome);
        }
        tracing::info!(
            "reload: applied {} changes ({}), refused {} ({})",
            outcome.applied.len(),
            outcome.applied.join(", "),
            outcome.refused.len(),
            outcome.refused.join(", ")
        );
    }

    /// Every changed key that only a restart applies: one line each.
    fn refuse_restart_keys(&self, new: &DaemonConfig, outcome: &mut Outcome) {
        let role = self.running.role;
        if self.running.runtime.engine.psk != new.runtime.engine.psk {
            outcome.refuse_restart("psk");
        }
        let settings = |c: &DaemonConfig| {
            let mut all = c.runtime.engine.settings();
            all.extend(c.runtime.settings());
            all
        };
        let (old, next) = (settings(&self.running), settings(new));
        for (a, b) in old.iter().zip(&next) {
            if a.key == "psk"
                || matches!(a.value, mtcpd_engine::settings::SettingValue::Secret { .. })
            {
                continue; // compared above, by its bytes
            }
            if a.key != b.key || a.value != b.value {
                let key = config::file_key(a.key, role).unwrap_or_else(|| a.key.to_owned());
                outcome.refuse_restart(&key);
            }
        }
        if self.running.metrics_listen != new.metrics_listen {
            outcome.refuse_restart("metrics_listen");
        }
        match (&self.running.endpoint, &new.endpoint) {
            (Endpoint::Server(a), Endpoint::Server(b)) => {
                if a.listen != b.listen {
                    outcome.refuse_restart("server.listen_ip/listen_port");
                }
                if a.reverse != b.reverse {
                    outcome.refuse_restart("[[server.reverse]]");
                }
            }
            (Endpoint::Client(a), Endpoint::Client(b)) => {
                if a.servers != b.servers {
                    outcome.refuse_restart("client.servers (server_ip/server_port)");
                }
                if a.exposed != b.exposed {
                    outcome.refuse_restart("[[client.expose]]");
                }
            }
            _ => {}
        }
    }

    /// Client: forwards and proxies added, changed, removed.
    fn reload_client(&mut self, old: &ClientConfig, next: &ClientConfig, outcome: &mut Outcome) {
        let mut removes = ListenerPlan::default();
        let mut adds = ListenerPlan::default();
        let mut running = old.clone();
        // Forwards, by configured listen address.
        for f in &old.forwards {
            let listen = f.forward.listen;
            let Some(bound) = self.bound.get(&listen).copied() else {
                continue;
            };
            match next.forwards.iter().find(|n| n.forward.listen == listen) {
                None => {
                    removes.remove.push(bound);
                    running.forwards.retain(|r| r.forward.listen != listen);
                    tracing::info!(%listen, forward = f.name.as_deref().unwrap_or_default(),
                        "reload: forward removed (open streams run on)");
                    outcome.applied.push(format!("forward {listen} removed"));
                }
                Some(n) if n != f => {
                    removes
                        .update_forwards
                        .push(mtcpd_engine::runtime::ClientForward {
                            listen: bound,
                            name: n.name.clone(),
                            target: n.forward.target.clone(),
                        });
                    if let Some(r) = running
                        .forwards
                        .iter_mut()
                        .find(|r| r.forward.listen == listen)
                    {
                        *r = n.clone();
                    }
                    tracing::info!(%listen, forward = n.name.as_deref().unwrap_or_default(),
                        target = n.forward.target.as_deref().unwrap_or("<server default>"),
                        "reload: forward changed (new connections use it)");
                    outcome.applied.push(format!("forward {listen} changed"));
                }
                Some(_) => {}
            }
        }
        let mut added_forwards = Vec::new();
        for n in &next.forwards {
            if !old
                .forwards
                .iter()
                .any(|f| f.forward.listen == n.forward.listen)
            {
                adds.add_forwards
                    .push(mtcpd_engine::runtime::ClientForward {
                        name: n.name.clone(),
                        ..n.forward.clone()
                    });
                added_forwards.push(n.clone());
            }
        }
        // Proxies, by configured listen address; a changed protocol is a remove and an add.
        let mut added_proxies = Vec::new();
        for p in &old.proxies {
            let Some(bound) = self.bound.get(&p.listen).copied() else {
                continue;
            };
            match next.proxies.iter().find(|n| n.listen == p.listen) {
                Some(n) if n == p => {}
                Some(n) if same_protocol(&n.kind, &p.kind) => {
                    removes.update_proxies.push(ClientProxy {
                        listen: bound,
                        kind: n.kind.clone(),
                    });
                    if let Some(r) = running.proxies.iter_mut().find(|r| r.listen == p.listen) {
                        *r = n.clone();
                    }
                    tracing::info!(listen = %p.listen, "reload: proxy credentials changed");
                    outcome.applied.push(format!("proxy {} changed", p.listen));
                }
                other => {
                    removes.remove.push(bound);
                    running.proxies.retain(|r| r.listen != p.listen);
                    tracing::info!(listen = %p.listen, "reload: proxy listener removed (open streams run on)");
                    outcome.applied.push(format!("proxy {} removed", p.listen));
                    if let Some(n) = other {
                        adds.add_proxies.push(n.clone());
                        added_proxies.push(n.clone());
                    }
                }
            }
        }
        for n in &next.proxies {
            if !old.proxies.iter().any(|p| p.listen == n.listen) {
                adds.add_proxies.push(n.clone());
                added_proxies.push(n.clone());
            }
        }
        // Removals first (acknowledged by the workers), so an address moving from one
        // listener to another is free when it is bound again.
        for plan in [removes, adds] {
            if plan.is_empty() {
                continue;
            }
            let report = self.handle.apply_listeners(&plan, APPLY_TIMEOUT);
            if report.workers_missing > 0 {
                tracing::warn!(
                    workers = report.workers_missing,
                    "reload: some workers did not confirm the listener changes within {APPLY_TIMEOUT:?}"
                );
            }
            for (listen, bound) in &report.added {
                self.bound.insert(*listen, *bound);
                if let Some(f) = added_forwards.iter().find(|f| f.forward.listen == *listen) {
                    tracing::info!(%listen, forward = f.name.as_deref().unwrap_or_default(),
                        target = f.forward.target.as_deref().unwrap_or("<server default>"),
                        "reload: forward added: listening for applications");
                    running.forwards.push(f.clone());
                    outcome.applied.push(format!("forward {listen} added"));
                } else if let Some(p) = added_proxies.iter().find(|p| p.listen == *listen) {
                    tracing::info!(%listen, "reload: proxy listener added");
                    running.proxies.push(p.clone());
                    outcome.applied.push(format!("proxy {listen} added"));
                }
            }
            for (listen, error) in &report.refused {
                tracing::warn!(%listen, "reload: listener not added: {error}");
                outcome.refused.push(format!("listener {listen} ({error})"));
            }
        }
        for removed in old
            .forwards
            .iter()
            .map(|f| f.forward.listen)
            .chain(old.proxies.iter().map(|p| p.listen))
        {
            let still = running.forwards.iter().any(|f| f.forward.listen == removed)
                || running.proxies.iter().any(|p| p.listen == removed);
            if !still {
                self.bound.remove(&removed);
            }
        }
        self.running.endpoint = Endpoint::Client(running);
    }

    /// Server: the routing of new streams.
    fn reload_server(
        &mut self,
        old: &ServerConfig,
        next: &ServerConfig,
        next_has_psk: bool,
        outcome: &mut Outcome,
    ) {
        let Some(routes) = &self.routes else {
            return;
        };
        let mut running = old.clone();
        let mut changed = Vec::new();
        // A key the running daemon does not have cannot be borrowed from the new file (the psk
        // change itself is refused): routes that need a key stay as they are.
        let keyed = self.running.has_psk() || !next_has_psk;
        if old.allowed_targets != next.allowed_targets {
            if keyed {
                running.allowed_targets = next.allowed_targets.clone();
                changed.push("[[server.forward]]");
            } else {
                tracing::warn!(
                    "reload: [[server.forward]] not changed: it needs a key, and this daemon runs without one (a psk needs a restart)"
                );
                outcome.refused.push("[[server.forward]] (no key)".into());
            }
        }
        if old.allow != next.allow {
            if keyed {
                running.allow = next.allow.clone();
                changed.push("server.allow");
            } else {
                tracing::warn!(
                    "reload: server.allow not changed: it needs a key, and this daemon runs without one (a psk needs a restart)"
                );
                outcome.refused.push("server.allow (no key)".into());
            }
        }
        if old.default_backend != next.default_backend {
            running.default_backend = next.default_backend;
            changed.push("server.backend_ip/backend_port");
        }
        if old.unlisted_to_default_backend != next.unlisted_to_default_backend {
            running.unlisted_to_default_backend = next.unlisted_to_default_backend;
            changed.push("server.unlisted_to_default_backend");
        }
        if changed.is_empty() {
            return;
        }
        *routes.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(running.clone());
        self.handle.routes_changed();
        for key in &changed {
            tracing::info!("reload: {key} changed (new streams use it; open streams run on)");
            outcome.applied.push((*key).to_owned());
        }
        self.running.endpoint = Endpoint::Server(running);
    }

    fn reload_log_level(&mut self, new: &DaemonConfig, outcome: &mut Outcome) {
        if new.log_level == self.running.log_level {
            return;
        }
        match crate::logging::use_config_filter(new.log_level.as_deref()) {
            Ok(filter) => {
                tracing::info!(filter, "reload: log_level changed");
                self.running.log_level = new.log_level.clone();
                outcome.applied.push("log_level".into());
            }
            Err(why) => {
                tracing::warn!("reload: log_level not changed: {why}");
                outcome.refused.push(format!("log_level ({why})"));
            }
        }
    }
}

/// Same proxy protocol (SOCKS5 with or without credentials counts as SOCKS5).
fn same_protocol(a: &ProxyKind, b: &ProxyKind) -> bool {
    matches!(
        (a, b),
        (ProxyKind::Socks5 { .. }, ProxyKind::Socks5 { .. }) | (ProxyKind::Http, ProxyKind::Http)
    )
}
