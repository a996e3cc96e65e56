//! The configuration file exactly as written: serde structs mirroring the TOML.
//!
//! Owns: the file's shape (table and key names, `deny_unknown_fields` everywhere, the seed's
//! key names such as `buffer_size` and `connection_pool_size`). Every field is optional or has a
//! serde default so that a missing key takes the engine's default. Must not touch: defaults or
//! ranges (the engine's) or cross-key rules (the engine's and `validate.rs`); nothing here is
//! handed to the runtime.
//!
//! Numbers that have a range (ports, pool sizes, counts) are read as `i64` so that an
//! out-of-range value gets a message saying the range, not a bare "expected u16".

use std::path::PathBuf;
use std::str::FromStr;

use mtcpd_engine::Role;
use mtcpd_engine::runtime::IoChoice;
use serde::{Deserialize, Deserializer};

use mtcpd_common::units::{ByteSize, HumanDuration};

/// Reads an engine name (`Role`, `IoChoice`) through its `FromStr`, so the file accepts
/// exactly the words the engine does and a wrong one is reported at its key and line.
fn engine_name<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfigFile {
    /// Which role this file configures (seed key). Optional: inferred from the tables.
    #[serde(default, deserialize_with = "engine_name")]
    pub mode: Option<Role>,
    /// Pre-shared key, inline.
    pub psk: Option<String>,
    /// Pre-shared key, read from this file (relative to the config file's directory).
    pub psk_file: Option<PathBuf>,
    /// Worker threads (one per core).
    pub cores: Option<i64>,
    /// I/O driver.
    #[serde(default, deserialize_with = "engine_name")]
    pub io: Option<IoChoice>,
    /// TCP congestion control of the tunnels.
    pub congestion: Option<String>,
    /// Cap the session's unacknowledged bytes near its measured BDP (issue 13).
    pub coupled_pacing: Option<bool>,
    /// Receiver-driven head-of-line relief (issue 13 item 3).
    pub hol_relief: Option<bool>,
    /// SO_SNDBUF of every socket, if set.
    pub socket_send_buffer: Option<ByteSize>,
    /// SO_RCVBUF of every socket, if set.
    pub socket_recv_buffer: Option<ByteSize>,
    /// TCP_NOTSENT_LOWAT of the tunnels.
    pub socket_notsent_lowat: Option<ByteSize>,
    /// `[server]`.
    pub server: Option<RawServerSection>,
    /// `[client]`.
    pub client: Option<RawClientSection>,
    /// `[limits]`.
    #[serde(default)]
    pub limits: RawLimits,
    /// Tunnels without TLS (for benchmarks; both ends must say so).
    pub insecure_plaintext: Option<bool>,
    /// `[tls]`: the server's identity and how the client verifies it.
    #[serde(default)]
    pub tls: RawTls,
    /// Where the Prometheus metrics endpoint listens (`ip:port`); unset: no endpoint.
    pub metrics_listen: Option<String>,
    /// Log filter (`RUST_LOG` syntax: `info`, `mtcpd=debug,info`); `RUST_LOG` wins over it.
    pub log_level: Option<String>,
}

/// `[tls]`. Paths are relative to the config file's directory.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Server: certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// Server: its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Server: where the generated identity is kept.
    pub state_dir: Option<PathBuf>,
    /// Client: CA certificates (PEM) to verify the server by name.
    pub ca_file: Option<PathBuf>,
    /// Client: the name the server's certificate must carry.
    pub server_name: Option<String>,
    /// Client: the server certificate's fingerprint to pin.
    pub server_fingerprint: Option<String>,
}

/// `connection_pool_size`: a number, or (client) the word `"auto"` (the adaptive pool).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawPoolSize {
    /// A fixed pool.
    Count(i64),
    /// A word: only `"auto"` is one.
    Word(String),
}

/// `[server]`: the seed's keys plus the target allow-list.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerSection {
    pub listen_ip: Option<String>,
    pub listen_port: Option<i64>,
    pub backend_ip: Option<String>,
    pub backend_port: Option<i64>,
    pub connection_pool_size: Option<RawPoolSize>,
    pub buffer_size: Option<ByteSize>,
    pub unlisted_to_default_backend: Option<bool>,
    /// `[[server.forward]]`: targets clients may ask for.
    #[serde(default)]
    pub forward: Vec<RawServerForward>,
    /// Dynamic targets clients may ask for (`HOST:PORTS` rules; empty: none).
    #[serde(default)]
    pub allow: Vec<String>,
    /// `[[server.reverse]]`: public ports carried to the client that exposes their name.
    #[serde(default)]
    pub reverse: Vec<RawServerReverse>,
}

/// One `[[server.reverse]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerReverse {
    pub name: String,
    pub listen: String,
    pub when_absent: Option<String>,
}

/// One `[[server.forward]]`: a target the server agrees to connect to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerForward {
    pub name: Option<String>,
    pub target: String,
}

/// `[client]`: the seed's keys plus extra forwards.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientSection {
    pub local_listen_ip: Option<String>,
    pub local_listen_port: Option<i64>,
    pub server_ip: Option<String>,
    pub server_port: Option<i64>,
    /// Several servers (`host:port` each), tried in order: instead of `server_ip`/`server_port`.
    pub servers: Option<Vec<String>>,
    pub connection_pool_size: Option<RawPoolSize>,
    /// With `connection_pool_size = "auto"`: the smallest pool.
    pub pool_min: Option<i64>,
    /// With `connection_pool_size = "auto"`: the largest pool (what the client proposes).
    pub pool_max: Option<i64>,
    pub buffer_size: Option<ByteSize>,
    pub enable_zero_rtt: Option<bool>,
    /// `[[client.forward]]`: local listeners.
    #[serde(default)]
    pub forward: Vec<RawClientForward>,
    /// `[[client.socks5]]`: SOCKS5 proxy listeners.
    #[serde(default)]
    pub socks5: Vec<RawSocks5>,
    /// `[[client.http_proxy]]`: HTTP proxy listeners.
    #[serde(default)]
    pub http_proxy: Vec<RawHttpProxy>,
    /// `[[client.expose]]`: services the server's reverse listeners reach.
    #[serde(default)]
    pub expose: Vec<RawClientExpose>,
}

/// One `[[client.socks5]]`: a local SOCKS5 listener, with optional username/password.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSocks5 {
    pub listen: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// One `[[client.http_proxy]]`: a local HTTP proxy listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpProxy {
    pub listen: String,
}

/// One `[[client.expose]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientExpose {
    pub name: String,
    pub target: String,
}

/// One `[[client.forward]]`: a local listen address and the target asked of the server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientForward {
    pub name: Option<String>,
    pub listen: String,
    pub target: Option<String>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_sessions: Option<i64>,
    pub max_streams_per_session: Option<i64>,
    pub max_tunnels: Option<i64>,
    pub stream_window: Option<ByteSize>,
    pub session_window: Option<ByteSize>,
    pub max_frame_payload: Option<ByteSize>,
    pub max_unacked_bytes: Option<ByteSize>,
    pub max_tunnel_unacked_bytes: Option<ByteSize>,
    pub max_pending_ranges: Option<i64>,
    pub handshake_timeout: Option<HumanDuration>,
    pub preauth_timeout: Option<HumanDuration>,
    pub max_handshakes_per_worker: Option<i64>,
    pub max_handshakes_per_source: Option<i64>,
    pub tunnel_idle_timeout: Option<HumanDuration>,
    pub keepalive_interval: Option<HumanDuration>,
    pub session_grace: Option<HumanDuration>,
    pub redial_backoff_min: Option<HumanDuration>,
    pub redial_backoff_max: Option<HumanDuration>,
    pub refused_backoff_max: Option<HumanDuration>,
    pub drain_timeout: Option<HumanDuration>,
    pub backend_connect_timeout: Option<HumanDuration>,
    pub max_backend_connections: Option<i64>,
    pub connect_wait: Option<HumanDuration>,
}
