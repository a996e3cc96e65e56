//! Validation: from the file as written (`raw.rs`) to a `DaemonConfig`, or an error.
//!
//! Owns: the role decision (command line vs `mode` vs which table is present), defaults
//! for missing keys, every range and cross-key rule, reading `psk_file`, and command-line
//! overrides (`--cores`, `--io`). Must not touch: the TOML shape (`raw.rs`) or the
//! runtime; this code reads at most one extra file (`psk_file`) and opens no sockets.
//!
//! The first problem found is reported; nothing is returned alongside it.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use super::error::{ConfigError, ConfigOrigin};
use super::raw::{RawClientSection, RawConfigFile, RawLimits, RawServerSection};
use super::resolved::{
    ClientConfig, ClientForward, DaemonConfig, Endpoint, IoDriver, Limits, PreSharedKey, Role,
    RuntimeOptions, ServerConfig, ServerForward, TargetAddr, defaults,
};
use mtcpd_common::units::{ByteSize, HumanDuration};

/// Values given on the command line (or its env vars); they win over the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandLineOverrides {
    /// The role the command asked for (`mtcpd server`, `--role client`).
    pub role: Option<Role>,
    /// `--cores`.
    pub cores: Option<usize>,
    /// `--io` / `MTCPD_IO`.
    pub io: Option<IoDriver>,
}

/// Shortest accepted pre-shared key, in bytes.
pub const MIN_PSK_BYTES: usize = 16;
/// Longest accepted pre-shared key, in bytes.
pub const MAX_PSK_BYTES: usize = 1024;
const MAX_CORES: i64 = 1024;
/// Bounds and default of `socket_notsent_lowat`: below 16 KiB a tunnel cannot keep a fast path
/// busy between loop turns; above 64 MiB the scheduler would commit data to a tunnel long before
/// it can leave.
const MIN_NOTSENT_LOWAT: u64 = 16 * 1024;
const MAX_NOTSENT_LOWAT: u64 = 64 * 1024 * 1024;
/// The default unsent allowance per tunnel.
pub const DEFAULT_NOTSENT_LOWAT: usize = 128 * 1024;
const MIN_BUFFER_SIZE: u64 = ByteSize::KIB;
const MAX_BUFFER_SIZE: u64 = 16 * ByteSize::MIB;
const MIN_SOCKET_BUFFER: u64 = 4 * ByteSize::KIB;
const MAX_SOCKET_BUFFER: u64 = ByteSize::GIB;
/// Longest congestion-control name Linux accepts (TCP_CA_NAME_MAX is 16 with the NUL).
const MAX_CONGESTION_NAME: usize = 15;
const ONE_DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Checks `raw` (read from `origin`) and resolves it for the role; `base_dir` is where a
/// relative `psk_file` is looked up. `raw = None` means no file: built-in defaults.
pub fn resolve(
    raw: Option<RawConfigFile>,
    origin: ConfigOrigin,
    base_dir: &Path,
    overrides: CommandLineOverrides,
) -> Result<DaemonConfig, ConfigError> {
    let from_file = raw.is_some();
    let raw = raw.unwrap_or_default();
    let checker = Checker { origin };
    let role = checker.role(&raw, overrides.role)?;
    let limits = checker.limits(&raw.limits)?;
    let endpoint = match role {
        Role::Server => match (&raw.server, from_file) {
            (Some(section), _) => Endpoint::Server(checker.server(section, &limits)?),
            (None, false) => {
                Endpoint::Server(checker.server(&RawServerSection::default(), &limits)?)
            }
            (None, true) => return Err(checker.missing_role_table(Role::Server)),
        },
        Role::Client => match (&raw.client, from_file) {
            (Some(section), _) => Endpoint::Client(checker.client(section)?),
            (None, false) => Endpoint::Client(checker.default_client()?),
            (None, true) => return Err(checker.missing_role_table(Role::Client)),
        },
    };
    let psk = checker.psk(&raw, base_dir)?;
    let runtime = checker.runtime(&raw, role, overrides)?;
    Ok(DaemonConfig {
        role,
        origin: checker.origin,
        endpoint,
        psk,
        runtime,
        limits,
    })
}

/// Makes errors that name the origin and the key.
struct Checker {
    origin: ConfigOrigin,
}

impl Checker {
    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.clone(),
            key: key.into(),
            position: None,
            message: message.into(),
        }
    }

    fn role(
        &self,
        raw: &RawConfigFile,
        from_command_line: Option<Role>,
    ) -> Result<Role, ConfigError> {
        match (from_command_line, raw.mode) {
            (Some(wanted), Some(written)) if wanted != written => Err(self.invalid(
                "mode",
                format!(
                    "this file says mode = \"{written}\" but mtcpd was started as {wanted}; \
                     use `mtcpd {written}` or a {wanted} config"
                ),
            )),
            (Some(role), _) | (None, Some(role)) => Ok(role),
            (None, None) => match (raw.server.is_some(), raw.client.is_some()) {
                (true, false) => Ok(Role::Server),
                (false, true) => Ok(Role::Client),
                (true, true) => Err(self.invalid(
                    "mode",
                    "the file has both [server] and [client] tables: set mode = \"server\" or \
                     \"client\", or pass --role",
                )),
                (false, false) => Err(self.invalid(
                    "mode",
                    "cannot tell whether this configures a server or a client: set \
                     mode = \"server\" or \"client\", add a [server] or [client] table, or \
                     pass --role",
                )),
            },
        }
    }

    fn missing_role_table(&self, role: Role) -> ConfigError {
        self.invalid(
            role.as_str(),
            format!("role is {role} but the file has no [{role}] table"),
        )
    }

    fn server(
        &self,
        section: &RawServerSection,
        limits: &Limits,
    ) -> Result<ServerConfig, ConfigError> {
        let listen = SocketAddr::new(
            self.ip(
                "server.listen_ip",
                section.listen_ip.as_deref(),
                defaults::SERVER_LISTEN.ip(),
            )?,
            self.port(
                "server.listen_port",
                section.listen_port,
                defaults::SERVER_LISTEN.port(),
            )?,
        );
        let default_backend = SocketAddr::new(
            self.ip(
                "server.backend_ip",
                section.backend_ip.as_deref(),
                defaults::SERVER_BACKEND.ip(),
            )?,
            self.port(
                "server.backend_port",
                section.backend_port,
                defaults::SERVER_BACKEND.port(),
            )?,
        );
        if default_backend == listen {
            return Err(self.invalid(
                "server.backend_port",
                format!("the backend {default_backend} is the server's own listen address"),
            ));
        }
        let max_pool_size = match section.connection_pool_size {
            Some(size) => self
                .pool_size("server.connection_pool_size", size)?
                .min(limits.max_tunnels),
            None => limits.max_tunnels,
        };
        let buffer_size = self.buffer_size("server.buffer_size", section.buffer_size)?;
        let mut allowed_targets = Vec::with_capacity(section.forward.len());
        let mut names = HashSet::new();
        for (index, forward) in section.forward.iter().enumerate() {
            let key = format!("server.forward[{index}]");
            let name = self.forward_name(&key, forward.name.as_deref(), &mut names)?;
            let target = parse_target(&forward.target)
                .map_err(|message| self.invalid(format!("{key}.target"), message))?;
            allowed_targets.push(ServerForward { name, target });
        }
        Ok(ServerConfig {
            listen,
            default_backend,
            allowed_targets,
            max_pool_size,
            buffer_size,
        })
    }

    fn default_client(&self) -> Result<ClientConfig, ConfigError> {
        let section = RawClientSection {
            local_listen_ip: Some(defaults::CLIENT_LISTEN.ip().to_string()),
            local_listen_port: Some(i64::from(defaults::CLIENT_LISTEN.port())),
            ..RawClientSection::default()
        };
        self.client(&section)
    }

    fn client(&self, section: &RawClientSection) -> Result<ClientConfig, ConfigError> {
        let server = SocketAddr::new(
            self.ip(
                "client.server_ip",
                section.server_ip.as_deref(),
                defaults::CLIENT_SERVER.ip(),
            )?,
            self.port(
                "client.server_port",
                section.server_port,
                defaults::CLIENT_SERVER.port(),
            )?,
        );
        let pool_size = match section.connection_pool_size {
            Some(size) => self.pool_size("client.connection_pool_size", size)?,
            None => defaults::CLIENT_POOL_SIZE,
        };
        let buffer_size = self.buffer_size("client.buffer_size", section.buffer_size)?;

        let mut forwards = Vec::with_capacity(section.forward.len() + 1);
        let mut listen_keys: Vec<(SocketAddr, String)> = Vec::new();
        if section.local_listen_ip.is_some() || section.local_listen_port.is_some() {
            let Some(port) = section.local_listen_port else {
                return Err(self.invalid(
                    "client.local_listen_port",
                    "missing: required when client.local_listen_ip is set",
                ));
            };
            let listen = SocketAddr::new(
                self.ip(
                    "client.local_listen_ip",
                    section.local_listen_ip.as_deref(),
                    defaults::CLIENT_LISTEN.ip(),
                )?,
                self.port("client.local_listen_port", Some(port), 0)?,
            );
            listen_keys.push((listen, "client.local_listen_port".to_owned()));
            forwards.push(ClientForward {
                name: None,
                listen,
                target: None,
            });
        }
        let mut names = HashSet::new();
        for (index, forward) in section.forward.iter().enumerate() {
            let key = format!("client.forward[{index}]");
            let name = self.forward_name(&key, forward.name.as_deref(), &mut names)?;
            let listen = parse_listen_address(&forward.listen)
                .map_err(|message| self.invalid(format!("{key}.listen"), message))?;
            if let Some((_, earlier_key)) = listen_keys.iter().find(|(used, _)| *used == listen) {
                return Err(self.invalid(
                    format!("{key}.listen"),
                    format!("{listen} is already used by {earlier_key}"),
                ));
            }
            listen_keys.push((listen, format!("{key}.listen")));
            let target = forward
                .target
                .as_deref()
                .map(parse_target)
                .transpose()
                .map_err(|message| self.invalid(format!("{key}.target"), message))?;
            forwards.push(ClientForward {
                name,
                listen,
                target,
            });
        }
        if forwards.is_empty() {
            return Err(self.invalid(
                "client.forward",
                "a client needs at least one forward: set local_listen_ip/local_listen_port \
                 or add a [[client.forward]] table with `listen`",
            ));
        }
        Ok(ClientConfig {
            server,
            forwards,
            pool_size,
            buffer_size,
            zero_rtt: section.enable_zero_rtt.unwrap_or(defaults::ENABLE_ZERO_RTT),
        })
    }

    fn forward_name(
        &self,
        key: &str,
        name: Option<&str>,
        seen: &mut HashSet<String>,
    ) -> Result<Option<String>, ConfigError> {
        let Some(name) = name else {
            return Ok(None);
        };
        if name.trim().is_empty() {
            return Err(self.invalid(format!("{key}.name"), "must not be empty"));
        }
        if !seen.insert(name.to_owned()) {
            return Err(self.invalid(
                format!("{key}.name"),
                format!("the name \"{name}\" is used by another forward"),
            ));
        }
        Ok(Some(name.to_owned()))
    }

    fn psk(
        &self,
        raw: &RawConfigFile,
        base_dir: &Path,
    ) -> Result<Option<PreSharedKey>, ConfigError> {
        let (key, bytes) = match (&raw.psk, &raw.psk_file) {
            (Some(_), Some(_)) => {
                return Err(self.invalid("psk_file", "set either psk or psk_file, not both"));
            }
            (None, None) => return Ok(None),
            (Some(inline), None) => ("psk", inline.as_bytes().to_vec()),
            (None, Some(file)) => {
                let path = base_dir.join(file);
                let mut contents = std::fs::read(&path).map_err(|error| {
                    self.invalid(
                        "psk_file",
                        format!(
                            "cannot read pre-shared key file {}: {error}",
                            path.display()
                        ),
                    )
                })?;
                while matches!(contents.last(), Some(b'\n' | b'\r')) {
                    contents.pop();
                }
                ("psk_file", contents)
            }
        };
        if !(MIN_PSK_BYTES..=MAX_PSK_BYTES).contains(&bytes.len()) {
            return Err(self.invalid(
                key,
                format!(
                    "the pre-shared key must be {MIN_PSK_BYTES} to {MAX_PSK_BYTES} bytes long, \
                     got {} bytes",
                    bytes.len()
                ),
            ));
        }
        Ok(Some(PreSharedKey::new(bytes)))
    }

    fn runtime(
        &self,
        raw: &RawConfigFile,
        role: Role,
        overrides: CommandLineOverrides,
    ) -> Result<RuntimeOptions, ConfigError> {
        let cores = match (overrides.cores, raw.cores) {
            (Some(from_command_line), _) => {
                self.count("--cores", from_command_line as i64, 1, MAX_CORES)? as usize
            }
            (None, Some(from_file)) => self.count("cores", from_file, 1, MAX_CORES)? as usize,
            // A server spreads its sessions over every core; a client carries one session, whose
            // pool one core drives (more workers would mean more sessions and more tunnels).
            (None, None) => match role {
                Role::Server => std::thread::available_parallelism().map_or(1, usize::from),
                Role::Client => 1,
            },
        };
        let congestion = raw
            .congestion
            .clone()
            .unwrap_or_else(|| defaults::CONGESTION.to_owned());
        let valid_name = |name: &str| {
            !name.is_empty()
                && name.len() <= MAX_CONGESTION_NAME
                && name
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
        };
        if !valid_name(&congestion) {
            return Err(self.invalid(
                "congestion",
                format!(
                    "\"{congestion}\" is not a congestion control name (1 to \
                     {MAX_CONGESTION_NAME} of a-z, 0-9, _ or -, e.g. \"bbr\" or \"cubic\")"
                ),
            ));
        }
        let socket_buffer = |key: &str, value: Option<ByteSize>| {
            value
                .map(|size| self.size(key, size, MIN_SOCKET_BUFFER, MAX_SOCKET_BUFFER))
                .transpose()
                .map(|bytes| bytes.map(|bytes| bytes as usize))
        };
        Ok(RuntimeOptions {
            cores,
            io: overrides.io.or(raw.io).unwrap_or_default(),
            congestion,
            socket_send_buffer: socket_buffer("socket_send_buffer", raw.socket_send_buffer)?,
            socket_recv_buffer: socket_buffer("socket_recv_buffer", raw.socket_recv_buffer)?,
            socket_notsent_lowat: match raw.socket_notsent_lowat {
                Some(size) => self.size(
                    "socket_notsent_lowat",
                    size,
                    MIN_NOTSENT_LOWAT,
                    MAX_NOTSENT_LOWAT,
                )? as usize,
                None => DEFAULT_NOTSENT_LOWAT,
            },
        })
    }

    fn limits(&self, raw: &RawLimits) -> Result<Limits, ConfigError> {
        let default = Limits::default();
        let count = |key: &str, value: Option<i64>, fallback: u64, max: i64| match value {
            Some(value) => self.count(key, value, 1, max),
            None => Ok(fallback),
        };
        let size =
            |key: &str, value: Option<ByteSize>, fallback: u64, min: u64, max: u64| match value {
                Some(value) => self.size(key, value, min, max),
                None => Ok(fallback),
            };
        let duration = |key: &str,
                        value: Option<HumanDuration>,
                        fallback: Duration,
                        min: Duration,
                        max: Duration| match value {
            Some(value) => self.duration(key, value.get(), min, max),
            None => Ok(fallback),
        };
        let millis = Duration::from_millis;
        let secs = Duration::from_secs;
        let limits = Limits {
            max_sessions: count(
                "limits.max_sessions",
                raw.max_sessions,
                u64::from(default.max_sessions),
                1_000_000,
            )? as u32,
            max_streams_per_session: count(
                "limits.max_streams_per_session",
                raw.max_streams_per_session,
                u64::from(default.max_streams_per_session),
                10_000_000,
            )? as u32,
            max_tunnels: count(
                "limits.max_tunnels",
                raw.max_tunnels,
                u64::from(default.max_tunnels),
                i64::from(defaults::MAX_POOL_SIZE),
            )? as u16,
            stream_window: size(
                "limits.stream_window",
                raw.stream_window,
                default.stream_window,
                4 * ByteSize::KIB,
                ByteSize::GIB,
            )?,
            session_window: size(
                "limits.session_window",
                raw.session_window,
                default.session_window,
                64 * ByteSize::KIB,
                4 * ByteSize::GIB,
            )?,
            max_frame_payload: size(
                "limits.max_frame_payload",
                raw.max_frame_payload,
                u64::from(default.max_frame_payload),
                512,
                256 * ByteSize::KIB,
            )? as u32,
            handshake_timeout: duration(
                "limits.handshake_timeout",
                raw.handshake_timeout,
                default.handshake_timeout,
                millis(100),
                secs(300),
            )?,
            tunnel_idle_timeout: duration(
                "limits.tunnel_idle_timeout",
                raw.tunnel_idle_timeout,
                default.tunnel_idle_timeout,
                secs(1),
                ONE_DAY,
            )?,
            keepalive_interval: duration(
                "limits.keepalive_interval",
                raw.keepalive_interval,
                default.keepalive_interval,
                millis(100),
                secs(3600),
            )?,
            session_grace: duration(
                "limits.session_grace",
                raw.session_grace,
                default.session_grace,
                Duration::ZERO,
                ONE_DAY,
            )?,
            redial_backoff_min: duration(
                "limits.redial_backoff_min",
                raw.redial_backoff_min,
                default.redial_backoff_min,
                millis(10),
                secs(3600),
            )?,
            redial_backoff_max: duration(
                "limits.redial_backoff_max",
                raw.redial_backoff_max,
                default.redial_backoff_max,
                millis(10),
                ONE_DAY,
            )?,
            drain_timeout: duration(
                "limits.drain_timeout",
                raw.drain_timeout,
                default.drain_timeout,
                Duration::ZERO,
                ONE_DAY,
            )?,
        };
        if limits.stream_window > limits.session_window {
            return Err(self.invalid(
                "limits.stream_window",
                format!(
                    "{} is larger than limits.session_window ({})",
                    ByteSize(limits.stream_window),
                    ByteSize(limits.session_window)
                ),
            ));
        }
        if u64::from(limits.max_frame_payload) > limits.stream_window {
            return Err(self.invalid(
                "limits.max_frame_payload",
                format!(
                    "{} is larger than limits.stream_window ({})",
                    ByteSize(u64::from(limits.max_frame_payload)),
                    ByteSize(limits.stream_window)
                ),
            ));
        }
        if limits.keepalive_interval >= limits.tunnel_idle_timeout {
            return Err(self.invalid(
                "limits.keepalive_interval",
                format!(
                    "{} must be shorter than limits.tunnel_idle_timeout ({}), or idle tunnels \
                     would be closed between pings",
                    HumanDuration(limits.keepalive_interval),
                    HumanDuration(limits.tunnel_idle_timeout)
                ),
            ));
        }
        if limits.redial_backoff_min > limits.redial_backoff_max {
            return Err(self.invalid(
                "limits.redial_backoff_min",
                format!(
                    "{} is longer than limits.redial_backoff_max ({})",
                    HumanDuration(limits.redial_backoff_min),
                    HumanDuration(limits.redial_backoff_max)
                ),
            ));
        }
        Ok(limits)
    }

    fn ip(&self, key: &str, text: Option<&str>, fallback: IpAddr) -> Result<IpAddr, ConfigError> {
        match text {
            None => Ok(fallback),
            Some(text) => IpAddr::from_str(text.trim()).map_err(|_| {
                self.invalid(
                    key,
                    format!(
                        "\"{text}\" is not an IP address (write e.g. \"127.0.0.1\", \"0.0.0.0\" \
                         or \"::1\"; host names are not accepted here)"
                    ),
                )
            }),
        }
    }

    fn port(&self, key: &str, value: Option<i64>, fallback: u16) -> Result<u16, ConfigError> {
        match value {
            None => Ok(fallback),
            Some(value) => u16::try_from(value)
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| {
                    self.invalid(
                        key,
                        format!("port must be between 1 and 65535, got {value}"),
                    )
                }),
        }
    }

    fn pool_size(&self, key: &str, value: i64) -> Result<u16, ConfigError> {
        self.count(key, value, 1, i64::from(defaults::MAX_POOL_SIZE))
            .map(|size| size as u16)
    }

    fn buffer_size(&self, key: &str, value: Option<ByteSize>) -> Result<usize, ConfigError> {
        match value {
            None => Ok(defaults::BUFFER_SIZE as usize),
            Some(size) => self
                .size(key, size, MIN_BUFFER_SIZE, MAX_BUFFER_SIZE)
                .map(|bytes| bytes as usize),
        }
    }

    fn count(&self, key: &str, value: i64, min: i64, max: i64) -> Result<u64, ConfigError> {
        if (min..=max).contains(&value) {
            Ok(value as u64)
        } else {
            Err(self.invalid(key, format!("must be between {min} and {max}, got {value}")))
        }
    }

    fn size(&self, key: &str, value: ByteSize, min: u64, max: u64) -> Result<u64, ConfigError> {
        if (min..=max).contains(&value.bytes()) {
            Ok(value.bytes())
        } else {
            Err(self.invalid(
                key,
                format!(
                    "must be between {} and {}, got {} ({} bytes)",
                    ByteSize(min),
                    ByteSize(max),
                    value,
                    value.bytes()
                ),
            ))
        }
    }

    fn duration(
        &self,
        key: &str,
        value: Duration,
        min: Duration,
        max: Duration,
    ) -> Result<Duration, ConfigError> {
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(self.invalid(
                key,
                format!(
                    "must be between {} and {}, got {}",
                    HumanDuration(min),
                    HumanDuration(max),
                    HumanDuration(value)
                ),
            ))
        }
    }
}

/// A client listen address: `ip:port` with a non-zero port.
fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    let address = SocketAddr::from_str(text.trim()).map_err(|_| {
        format!(
            "\"{text}\" is not an ip:port address (write e.g. \"127.0.0.1:7001\" or \
             \"[::1]:7001\")"
        )
    })?;
    if address.port() == 0 {
        return Err(format!("\"{text}\": port must be between 1 and 65535"));
    }
    Ok(address)
}

/// A target: `ip:port`, `[ipv6]:port` or `dns-name:port`, with a non-zero port.
pub fn parse_target(text: &str) -> Result<TargetAddr, String> {
    let text = text.trim();
    let shape_hint = || {
        format!(
            "\"{text}\" is not a target address (write \"host:port\", e.g. \"10.0.0.5:3306\", \
             \"[::1]:80\" or \"db.internal:5432\")"
        )
    };
    if let Ok(address) = SocketAddr::from_str(text) {
        if address.port() == 0 {
            return Err(format!("\"{text}\": port must be between 1 and 65535"));
        }
        return Ok(TargetAddr::Socket(address));
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(shape_hint)?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("\"{text}\": port must be between 1 and 65535"))?;
    if !is_dns_name(host) {
        return Err(shape_hint());
    }
    Ok(TargetAddr::Host {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_accept_ips_and_host_names() {
        assert_eq!(
            parse_target("10.0.0.5:3306"),
            Ok(TargetAddr::Socket("10.0.0.5:3306".parse().unwrap()))
        );
        assert_eq!(
            parse_target("[::1]:80"),
            Ok(TargetAddr::Socket("[::1]:80".parse().unwrap()))
        );
        assert_eq!(
            parse_target("DB.internal:5432"),
            Ok(TargetAddr::Host {
                host: "db.internal".into(),
                port: 5432
            })
        );
    }

    #[test]
    fn targets_refuse_bad_shapes() {
        for bad in [
            "", "db", ":80", "db:0", "db:70000", "-db:1", "a..b:1", "::1:80", "db:x", "a b:1",
        ] {
            assert!(parse_target(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn listen_addresses_must_be_ip_and_port() {
        assert!(parse_listen_address("127.0.0.1:7001").is_ok());
        assert!(parse_listen_address("localhost:7001").is_err());
        assert!(parse_listen_address("127.0.0.1:0").is_err());
    }
}
