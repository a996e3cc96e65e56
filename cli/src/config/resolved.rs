//! The resolved, validated, typed configuration that the daemon runtime consumes.
//!
//! Owns: `DaemonConfig` and its parts, the documented defaults (`defaults` below), target
//! routing at the server (`ServerConfig::target_for`), and printing a config for `mtcpd
//! check`. Must not touch: the TOML text (that is `raw.rs`) or validation rules
//! (`validate.rs`). A `DaemonConfig` only ever comes out of `validate.rs`, so every value
//! here is already within its documented range.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::error::ConfigOrigin;
use mtcpd_common::units::{ByteSize, HumanDuration};

/// The documented defaults. `config/mtcpd.example.toml` shows the same values.
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
    /// Client: tunnels proposed to the server.
    pub const CLIENT_POOL_SIZE: u16 = 8;
    /// Largest pool size anywhere.
    pub const MAX_POOL_SIZE: u16 = 256;
    /// Read chunk of application sockets (the seed's `buffer_size`).
    pub const BUFFER_SIZE: u64 = 64 * 1024;
    /// 0-RTT: keep the tunnels open before any application connects.
    pub const ENABLE_ZERO_RTT: bool = true;
    /// Tunnels' TCP congestion control.
    pub const CONGESTION: &str = "bbr";
}

/// Which end of the tunnel a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Accepts tunnels and connects streams to their targets.
    Server,
    /// Accepts application connections and carries them over tunnels.
    Client,
}

impl Role {
    /// `"server"` or `"client"`, as written in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Which I/O driver the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IoDriver {
    /// io_uring if the kernel supports it, else mio.
    #[default]
    Auto,
    /// io_uring (Linux only); the runtime fails if the kernel refuses it.
    Uring,
    /// mio (epoll/kqueue), everywhere.
    Mio,
}

impl fmt::Display for IoDriver {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            IoDriver::Auto => "auto",
            IoDriver::Uring => "uring",
            IoDriver::Mio => "mio",
        })
    }
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

/// The pre-shared key. Never printed: `Debug` and `Display` show only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct PreSharedKey(Vec<u8>);

impl PreSharedKey {
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        PreSharedKey(bytes)
    }

    /// The key's bytes, for the handshake's challenge–response.
    pub fn expose_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for PreSharedKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "PreSharedKey(<{} bytes, redacted>)",
            self.0.len()
        )
    }
}

impl fmt::Display for PreSharedKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "<{} bytes, redacted>", self.0.len())
    }
}

/// Everything the daemon runtime needs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Which end this process is.
    pub role: Role,
    /// Where the configuration came from.
    pub origin: ConfigOrigin,
    /// The role-specific part.
    pub endpoint: Endpoint,
    /// Key proving both ends belong together; `None` means tunnels are unauthenticated.
    pub psk: Option<PreSharedKey>,
    /// Threads, I/O driver and socket options.
    pub runtime: RuntimeOptions,
    /// Resource limits and timers.
    pub limits: Limits,
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
}

/// The role-specific part of a `DaemonConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `[server]`.
    Server(ServerConfig),
    /// `[client]`.
    Client(ClientConfig),
}

/// A server: accepts tunnels, connects streams to targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where tunnels are accepted (`listen_ip:listen_port`).
    pub listen: SocketAddr,
    /// Where a stream goes when it names no target, or one not in `allowed_targets`.
    pub default_backend: SocketAddr,
    /// Targets a client may ask for (`[[server.forward]]`).
    pub allowed_targets: Vec<ServerForward>,
    /// Most tunnels granted to one session: the client proposes its pool size, the server
    /// grants `min(proposal, max_pool_size)`. Mismatched pool sizes are therefore fine.
    pub max_pool_size: u16,
    /// Read chunk for target sockets, in bytes.
    pub buffer_size: usize,
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

/// A client: accepts application connections, carries them over the tunnels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The server's tunnel address.
    pub server: SocketAddr,
    /// Local listeners; at least one.
    pub forwards: Vec<ClientForward>,
    /// Tunnels proposed to the server (it may grant fewer).
    pub pool_size: u16,
    /// Read chunk for application sockets, in bytes.
    pub buffer_size: usize,
    /// Open the tunnels at start-up rather than at the first application connection.
    pub zero_rtt: bool,
}

/// One local listener at the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientForward {
    /// Label for logs.
    pub name: Option<String>,
    /// Where applications connect.
    pub listen: SocketAddr,
    /// Target asked of the server; `None` = the server's default backend.
    pub target: Option<TargetAddr>,
}

/// Threads, I/O driver and socket options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Worker threads, one per core.
    pub cores: usize,
    /// I/O driver.
    pub io: IoDriver,
    /// Congestion control of the tunnel sockets (TCP_CONGESTION), e.g. "bbr".
    pub congestion: String,
    /// SO_SNDBUF; `None` leaves the kernel's autotuning.
    pub socket_send_buffer: Option<usize>,
    /// SO_RCVBUF; `None` leaves the kernel's autotuning.
    pub socket_recv_buffer: Option<usize>,
    /// TCP_NOTSENT_LOWAT of the tunnels: unsent bytes the kernel may hold per tunnel.
    pub socket_notsent_lowat: usize,
}

/// Resource limits and timers (`[limits]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Server: concurrent sessions (clients).
    pub max_sessions: u32,
    /// Concurrent streams in one session.
    pub max_streams_per_session: u32,
    /// Server: tunnels granted to one session (caps the pool size).
    pub max_tunnels: u16,
    /// Receive window of one stream, in bytes (bounds its reorder buffer).
    pub stream_window: u64,
    /// Receive window of a whole session, in bytes.
    pub session_window: u64,
    /// Largest payload in one data frame, in bytes.
    pub max_frame_payload: u32,
    /// Time allowed for a tunnel's handshake.
    pub handshake_timeout: Duration,
    /// A tunnel silent this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// Ping interval on an otherwise idle tunnel.
    pub keepalive_interval: Duration,
    /// How long a session outlives its last tunnel, waiting for a re-dial.
    pub session_grace: Duration,
    /// Client: first re-dial delay after a tunnel dies.
    pub redial_backoff_min: Duration,
    /// Client: longest re-dial delay.
    pub redial_backoff_max: Duration,
    /// On shutdown, time given to streams to finish before they are reset.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 1024,
            max_streams_per_session: 65_536,
            max_tunnels: 64,
            stream_window: 64 * ByteSize::MIB,
            session_window: 256 * ByteSize::MIB,
            max_frame_payload: 16 * 1024,
            handshake_timeout: Duration::from_secs(10),
            tunnel_idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(15),
            session_grace: Duration::from_secs(30),
            redial_backoff_min: Duration::from_millis(250),
            redial_backoff_max: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Prints a config as commented TOML-like text, for `mtcpd check` and the start-up log.
/// The PSK is never shown.
impl fmt::Display for DaemonConfig {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let size = |bytes: u64| ByteSize(bytes).to_string();
        let duration = |value: Duration| HumanDuration(value).to_string();
        writeln!(out, "# resolved from {}", self.origin)?;
        writeln!(out, "mode = \"{}\"", self.role)?;
        match &self.psk {
            Some(key) => writeln!(out, "psk = \"{key}\"")?,
            None => writeln!(out, "# psk: none (tunnels are not authenticated)")?,
        }
        let runtime = &self.runtime;
        writeln!(out, "cores = {}", runtime.cores)?;
        writeln!(out, "io = \"{}\"", runtime.io)?;
        writeln!(out, "congestion = \"{}\"", runtime.congestion)?;
        writeln!(
            out,
            "socket_notsent_lowat = \"{}\"",
            size(runtime.socket_notsent_lowat as u64)
        )?;
        for (key, value) in [
            ("socket_send_buffer", runtime.socket_send_buffer),
            ("socket_recv_buffer", runtime.socket_recv_buffer),
        ] {
            match value {
                Some(bytes) => writeln!(out, "{key} = \"{}\"", size(bytes as u64))?,
                None => writeln!(out, "# {key}: kernel default")?,
            }
        }
        match &self.endpoint {
            Endpoint::Server(server) => {
                writeln!(out, "\n[server]")?;
                writeln!(out, "listen = \"{}\"", server.listen)?;
                writeln!(out, "default_backend = \"{}\"", server.default_backend)?;
                writeln!(
                    out,
                    "max_pool_size = {}  # grants min(client proposal, this)",
                    server.max_pool_size
                )?;
                writeln!(out, "buffer_size = \"{}\"", size(server.buffer_size as u64))?;
                for allowed in &server.allowed_targets {
                    writeln!(out, "\n[[server.forward]]")?;
                    if let Some(name) = &allowed.name {
                        writeln!(out, "name = \"{name}\"")?;
                    }
                    writeln!(out, "target = \"{}\"", allowed.target)?;
                }
            }
            Endpoint::Client(client) => {
                writeln!(out, "\n[client]")?;
                writeln!(out, "server = \"{}\"", client.server)?;
                writeln!(
                    out,
                    "connection_pool_size = {}  # proposed; the server may grant fewer",
                    client.pool_size
                )?;
                writeln!(out, "buffer_size = \"{}\"", size(client.buffer_size as u64))?;
                writeln!(out, "enable_zero_rtt = {}", client.zero_rtt)?;
                for forward in &client.forwards {
                    writeln!(out, "\n[[client.forward]]")?;
                    if let Some(name) = &forward.name {
                        writeln!(out, "name = \"{name}\"")?;
                    }
                    writeln!(out, "listen = \"{}\"", forward.listen)?;
                    match &forward.target {
                        Some(target) => writeln!(out, "target = \"{target}\"")?,
                        None => writeln!(out, "# target: the server's default backend")?,
                    }
                }
            }
        }
        let limits = &self.limits;
        writeln!(out, "\n[limits]")?;
        writeln!(out, "max_sessions = {}", limits.max_sessions)?;
        writeln!(
            out,
            "max_streams_per_session = {}",
            limits.max_streams_per_session
        )?;
        writeln!(out, "max_tunnels = {}", limits.max_tunnels)?;
        writeln!(out, "stream_window = \"{}\"", size(limits.stream_window))?;
        writeln!(out, "session_window = \"{}\"", size(limits.session_window))?;
        writeln!(
            out,
            "max_frame_payload = \"{}\"",
            size(u64::from(limits.max_frame_payload))
        )?;
        for (key, value) in [
            ("handshake_timeout", limits.handshake_timeout),
            ("tunnel_idle_timeout", limits.tunnel_idle_timeout),
            ("keepalive_interval", limits.keepalive_interval),
            ("session_grace", limits.session_grace),
            ("redial_backoff_min", limits.redial_backoff_min),
            ("redial_backoff_max", limits.redial_backoff_max),
            ("drain_timeout", limits.drain_timeout),
        ] {
            writeln!(out, "{key} = \"{}\"", duration(value))?;
        }
        Ok(())
    }
}
