//! The resolved, validated configuration that the daemon runs: the engine's own
//! `RuntimeOptions`, plus what only the file knows.
//!
//! Owns: `DaemonConfig` and its file-level parts (listen and backend addresses, the server's
//! target allow-list, client forwards with their labels), the daemon's default addresses
//! (`defaults`), and target routing at the server (`ServerConfig::target_for`). Must not touch:
//! the TOML text (`raw.rs`), validation (`validate.rs`), or any engine default or range: every
//! limit, timer and socket option is the engine's `RuntimeOptions`, defaulted and checked by the
//! engine. A `DaemonConfig` only ever comes out of `validate.rs`.

use std::fmt;
use std::net::SocketAddr;

use mtcpd_engine::Role;
use mtcpd_engine::runtime::{ClientForward, ClientProxy, RuntimeOptions};

use super::allow::AllowList;

use super::error::ConfigOrigin;

/// The daemon's default addresses: file-level values the engine knows nothing of.
/// `config/mtcpd.example.toml` shows the same values.
pub mod defaults {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// Server: where tunnels are accepted.
    pub const SERVER_LISTEN: SocketAddr = SocketAddr::new(LOOPBACK, 8000);
    /// Server: where streams go when they name no (allowed) target.
    pub const SERVER_BACKEND: SocketAddr = SocketAddr::new(LOOPBACK, 9000);
    /// Client: where applications connect.
    pub const CLIENT_LISTEN: SocketAddr = SocketAddr::new(LOOPBACK, 7000);
    /// Client: the server's tunnel address.
    pub const CLIENT_SERVER: SocketAddr = SocketAddr::new(LOOPBACK, 8000);
    /// Server: a target not in the allow-list is refused (reset, code 5), not sent to the
    /// default backend.
    pub const UNLISTED_TO_DEFAULT_BACKEND: bool = false;
}

/// Where the server should connect a stream: an IP socket address or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetAddr {
    /// A literal IP address and port.
    Socket(SocketAddr),
    /// A DNS name and port, resolved by the server when the stream opens.
    Host {
        /// The DNS name.
        host: String,
        /// The port.
        port: u16,
    },
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetAddr::Socket(address) => write!(formatter, "{address}"),
            TargetAddr::Host { host, port } => write!(formatter, "{host}:{port}"),
        }
    }
}

/// Everything the daemon runs on, validated.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Which end this process is.
    pub role: Role,
    /// Where the configuration came from.
    pub origin: ConfigOrigin,
    /// The role-specific, file-level part.
    pub endpoint: Endpoint,
    /// What the engine runs with: every limit, timer, socket option and the key
    /// (`runtime.engine.psk`, empty when none is set), after the engine's defaults.
    pub runtime: RuntimeOptions,
    /// Where the Prometheus metrics endpoint listens (`metrics_listen`, `--metrics`); `None`:
    /// off (the default).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The log filter (`log_level`, `RUST_LOG` syntax); `None`: `RUST_LOG`, else `info`.
    /// `RUST_LOG` wins over it. Reloaded on SIGHUP.
    pub log_level: Option<String>,
}

impl DaemonConfig {
    /// The server part, when this is a server config.
    pub fn server(&self) -> Option<&ServerConfig> {
        match &self.endpoint {
            Endpoint::Server(server) => Some(server),
            Endpoint::Client(_) => None,
        }
    }

    /// The client part, when this is a client config.
    pub fn client(&self) -> Option<&ClientConfig> {
        match &self.endpoint {
            Endpoint::Client(client) => Some(client),
            Endpoint::Server(_) => None,
        }
    }

    /// True when a pre-shared key is set (tunnels are authenticated).
    pub fn has_psk(&self) -> bool {
        !self.runtime.engine.psk.is_empty()
    }
}

/// The role-specific part of a `DaemonConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `[server]`.
    Server(ServerConfig),
    /// `[client]`.
    Client(ClientConfig),
}

/// A server: accepts tunnels, connects streams to targets. How many tunnels it grants a
/// session is the engine's `pool_size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where tunnels are accepted (`listen_ip:listen_port`).
    pub listen: SocketAddr,
    /// Where a stream goes when it names no target, or one not in `allowed_targets`.
    pub default_backend: SocketAddr,
    /// Targets a client may ask for (`[[server.forward]]`).
    pub allowed_targets: Vec<ServerForward>,
    /// Dynamic targets a client may ask for (`[server] allow`); empty allows none.
    pub allow: AllowList,
    /// Reverse listeners (`[[server.reverse]]`).
    pub reverse: Vec<mtcpd_engine::runtime::ReverseListener>,
    /// `server.unlisted_to_default_backend`: a stream asking for a target not in
    /// `allowed_targets` goes to the default backend (the old behaviour) instead of being
    /// refused (reset, code 5).
    pub unlisted_to_default_backend: bool,
}

impl ServerConfig {
    /// Where to connect a stream that asked for `requested`: the requested target when it
    /// is allowed, else the default backend.
    pub fn target_for(&self, requested: Option<&TargetAddr>) -> TargetAddr {
        requested
            .filter(|wanted| {
                self.allowed_targets
                    .iter()
                    .any(|allowed| &allowed.target == *wanted)
            })
            .cloned()
            .unwrap_or(TargetAddr::Socket(self.default_backend))
    }
}

/// One allowed target at the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerForward {
    /// Label for logs.
    pub name: Option<String>,
    /// The target.
    pub target: TargetAddr,
}

/// A client: accepts application connections, carries them over the tunnels. How many tunnels
/// it proposes and whether it dials them at start-up are the engine's `pool_size` and
/// `zero_rtt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The servers' tunnel addresses, in order (`server_ip:server_port`, or `servers`): each
    /// session dials the first that works. A host name is resolved at start.
    pub servers: Vec<TargetAddr>,
    /// Local listeners, in file order; at least one forward, proxy or exposed service in all.
    pub forwards: Vec<LabelledForward>,
    /// Proxy listeners (`[[client.socks5]]`, then `[[client.http_proxy]]`).
    pub proxies: Vec<ClientProxy>,
    /// Services this client exposes (`[[client.expose]]`), in file order.
    pub exposed: Vec<ClientExpose>,
}

/// One `[[client.expose]]`: the server's streams for `name` are connected to `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientExpose {
    /// The service's name, as the server's `[[server.reverse]]` names it.
    pub name: String,
    /// Where this client connects those streams (a host name is resolved at start).
    pub target: TargetAddr,
}

impl ClientConfig {
    /// The forwards as the engine takes them.
    pub fn engine_forwards(&self) -> Vec<ClientForward> {
        self.forwards
            .iter()
            .map(|labelled| ClientForward {
                name: labelled.name.clone(),
                ..labelled.forward.clone()
            })
            .collect()
    }
}

/// One engine `ClientForward` with the label the file gave it (for logs and `mtcpd check`).
/// Its target is in the engine's form: the text the server is asked for, already checked to be
/// `ip:port` or `host:port` and with the host name lower-cased.
#[derive(Debug, Clone)]
pub struct LabelledForward {
    /// Label for logs; unique within the file.
    pub name: Option<String>,
    /// The forward itself.
    pub forward: ClientForward,
}

impl PartialEq for LabelledForward {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.forward.listen == other.forward.listen
            && self.forward.target == other.forward.target
    }
}

impl Eq for LabelledForward {}
