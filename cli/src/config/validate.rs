//! Validation: from the file as written (`raw.rs`) to a `DaemonConfig`, or an error.
//!
//! Owns: the role decision (command line vs `mode` vs which table is present), the file-level
//! rules (addresses, forwards and their labels, `psk` vs `psk_file`, reading `psk_file`), the
//! server's `limits.max_tunnels` cap, and turning an engine `ConfigError` into a
//! `ConfigFileError` that names the file, the key as written there and its line. Must not
//! touch: the TOML shape (`raw.rs`), defaults or ranges of engine values (the engine's: this
//! starts from `RuntimeOptions::for_role` and ends with `RuntimeOptions::validate`), or the
//! runtime; this code reads at most one extra file (`psk_file`) and opens no sockets.
//!
//! The first problem found is reported; nothing is returned alongside it.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;

use mtcpd_engine::Role;
use mtcpd_engine::config::{ConfigError, check_psk, range as protocol_range};
use mtcpd_engine::proxy::Socks5Credentials;
use mtcpd_engine::runtime::options::range as runtime_range;
use mtcpd_engine::runtime::{ClientForward, ClientProxy, IoChoice, ProxyKind, RuntimeOptions};

use super::allow::AllowList;
use super::engine_values::file_key;
use super::error::{ConfigFileError, ConfigOrigin};
use super::locate::locate;
use super::raw::{RawClientSection, RawConfigFile, RawPoolSize, RawServerSection, RawSocks5};
use super::resolved::{
    ClientConfig, DaemonConfig, Endpoint, LabelledForward, ServerConfig, ServerForward, TargetAddr,
    defaults,
};
use super::targets::{parse_listen_address, parse_target};

/// Values given on the command line (or its env vars); they win over the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandLineOverrides {
    /// The role the command asked for (`mtcpd server`, `--role client`).
    pub role: Option<Role>,
    /// `--cores`.
    pub cores: Option<usize>,
    /// `--io` (the engine reads `MTCPD_IO` itself when the choice stays `auto`).
    pub io: Option<IoChoice>,
    /// `--metrics ADDR`: serve the metrics there (wins over `metrics_listen`).
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Checks `raw` (read from `origin`, whose text is `text`) and resolves it for the role;
/// `base_dir` is where a relative `psk_file` is looked up. `raw = None` means no file: the
/// engine's defaults and the daemon's default addresses.
pub fn resolve(
    raw: Option<RawConfigFile>,
    origin: ConfigOrigin,
    text: &str,
    base_dir: &Path,
    overrides: CommandLineOverrides,
) -> Result<DaemonConfig, ConfigFileError> {
    let from_file = raw.is_some();
    let raw = raw.unwrap_or_default();
    let checker = Checker {
        origin,
        text: text.to_owned(),
    };
    let role = checker.role(&raw, overrides.role)?;
    let mut runtime = RuntimeOptions::for_role(role);
    let max_tunnels = checker.limits(&raw.limits, &mut runtime)?;
    let endpoint = match role {
        Role::Server => {
            let section = match (&raw.server, from_file) {
                (Some(section), _) => section,
                (None, false) => &RawServerSection::default(),
                (None, true) => return Err(checker.missing_role_table(Role::Server)),
            };
            Endpoint::Server(checker.server(section, max_tunnels, &mut runtime)?)
        }
        Role::Client => {
            let default_section;
            let section = match (&raw.client, from_file) {
                (Some(section), _) => section,
                (None, false) => {
                    default_section = default_client_section();
                    &default_section
                }
                (None, true) => return Err(checker.missing_role_table(Role::Client)),
            };
            Endpoint::Client(checker.client(section, &mut runtime)?)
        }
    };
    if let Some((key, psk)) = checker.psk(&raw, base_dir)? {
        check_psk(&psk).map_err(|error| checker.invalid(key, error.problem))?;
        runtime.engine.psk = psk;
    }
    checker.reverse_needs_key(&endpoint, !runtime.engine.psk.is_empty())?;
    checker.keyless_policy(&endpoint, &mut runtime)?;
    checker.runtime_keys(&raw, overrides, &mut runtime)?;
    checker.tls_keys(&raw, role, base_dir, &mut runtime)?;
    runtime
        .validate()
        .map_err(|error| checker.engine_refused(error, role, &raw, overrides))?;
    let metrics_listen = match (overrides.metrics_listen, &raw.metrics_listen) {
        (Some(addr), _) => Some(addr),
        (None, Some(text)) => Some(
            parse_listen_address(text)
                .map_err(|message| checker.invalid("metrics_listen", message))?,
        ),
        (None, None) => None,
    };
    let log_level = match &raw.log_level {
        Some(text) => Some(
            crate::logging::parse_filter(text)
                .map_err(|message| checker.invalid("log_level", message))?,
        ),
        None => None,
    };
    Ok(DaemonConfig {
        role,
        origin: checker.origin,
        endpoint,
        runtime,
        metrics_listen,
        log_level,
    })
}

/// No file and the client role: the seed's single forward on the default address.
fn default_client_section() -> RawClientSection {
    RawClientSection {
        local_listen_ip: Some(defaults::CLIENT_LISTEN.ip().to_string()),
        local_listen_port: Some(i64::from(defaults::CLIENT_LISTEN.port())),
        ..RawClientSection::default()
    }
}

/// Makes errors that name the origin, the key and, when the file writes it, its line.
pub(super) struct Checker {
    origin: ConfigOrigin,
    text: String,
}

impl Checker {
    pub(super) fn invalid(
        &self,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigFileError {
        let key = key.into();
        ConfigFileError::Invalid {
            origin: self.origin.clone(),
            position: locate(&self.text, &key),
            key,
            message: message.into(),
        }
    }

    /// The engine refused a value: name it by its key in the file.
    fn engine_refused(
        &self,
        error: ConfigError,
        role: Role,
        raw: &RawConfigFile,
        overrides: CommandLineOverrides,
    ) -> ConfigFileError {
        let key = match error.key {
            "workers" if overrides.cores.is_some() => "--cores".to_owned(),
            "psk" if raw.psk_file.is_some() => "psk_file".to_owned(),
            engine_key => file_key(engine_key, role).unwrap_or_else(|| engine_key.to_owned()),
        };
        self.invalid(key, error.problem)
    }

    fn role(
        &self,
        raw: &RawConfigFile,
        from_command_line: Option<Role>,
    ) -> Result<Role, ConfigFileError> {
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

    fn missing_role_table(&self, role: Role) -> ConfigFileError {
        self.invalid(
            role.as_str(),
            format!("role is {role} but the file has no [{role}] table"),
        )
    }

    fn server(
        &self,
        section: &RawServerSection,
        max_tunnels: Option<u16>,
        runtime: &mut RuntimeOptions,
    ) -> Result<ServerConfig, ConfigFileError> {
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
        // The server grants min(proposal, pool_size): connection_pool_size, capped by
        // limits.max_tunnels; either alone sets it; neither leaves the engine's default.
        let pool = match &section.connection_pool_size {
            None => None,
            Some(RawPoolSize::Count(size)) => Some(self.count_in(
                "server.connection_pool_size",
                *size,
                protocol_range::POOL_SIZE,
            )?),
            Some(RawPoolSize::Word(word)) => {
                return Err(self.invalid(
                    "server.connection_pool_size",
                    format!(
                        "\"{word}\" is not a server pool size: the server's \
                         connection_pool_size is the most tunnels it grants one session, a \
                         number from 1 to 256 (\"auto\" is a client setting)"
                    ),
                ));
            }
        };
        if let Some(size) = match (pool, max_tunnels) {
            (Some(pool), Some(cap)) => Some(pool.min(cap)),
            (pool, cap) => pool.or(cap),
        } {
            runtime.engine.pool_size = size;
        }
        if let Some(size) = section.buffer_size {
            runtime.read_chunk =
                self.bytes_in("server.buffer_size", size, runtime_range::READ_CHUNK)?;
        }
        let mut allowed_targets = Vec::with_capacity(section.forward.len());
        let mut names = HashSet::new();
        for (index, forward) in section.forward.iter().enumerate() {
            let key = format!("server.forward[{index}]");
            let name = self.forward_name(&key, forward.name.as_deref(), &mut names)?;
            let target = parse_target(&forward.target)
                .map_err(|message| self.invalid(format!("{key}.target"), message))?;
            allowed_targets.push(ServerForward { name, target });
        }
        let allow = AllowList::parse(&section.allow)
            .map_err(|(index, message)| self.invalid(format!("server.allow[{index}]"), message))?;
        let reverse = self.reverse_listeners(&section.reverse, listen)?;
        Ok(ServerConfig {
            listen,
            default_backend,
            allowed_targets,
            allow,
            reverse,
            unlisted_to_default_backend: section
                .unlisted_to_default_backend
                .unwrap_or(defaults::UNLISTED_TO_DEFAULT_BACKEND),
        })
    }

    /// `client.connection_pool_size`: a number (a fixed pool), or `"auto"` with the optional
    /// `pool_min` / `pool_max` (the adaptive pool; its defaults are the engine's).
    fn client_pool(
        &self,
        section: &RawClientSection,
        runtime: &mut RuntimeOptions,
    ) -> Result<(), ConfigFileError> {
        let auto = match &section.connection_pool_size {
            None => false,
            Some(RawPoolSize::Count(size)) => {
                runtime.engine.pool_size = self.count_in(
                    "client.connection_pool_size",
                    *size,
                    protocol_range::POOL_SIZE,
                )?;
                false
            }
            Some(RawPoolSize::Word(word)) if word == "auto" => true,
            Some(RawPoolSize::Word(word)) => {
                return Err(self.invalid(
                    "client.connection_pool_size",
                    format!("\"{word}\" is not a pool size: a number from 1 to 256, or \"auto\""),
                ));
            }
        };
        if !auto {
            for (key, set) in [
                ("client.pool_min", section.pool_min.is_some()),
                ("client.pool_max", section.pool_max.is_some()),
            ] {
                if set {
                    return Err(self.invalid(
                        key,
                        "only with connection_pool_size = \"auto\" (a fixed pool has one size)",
                    ));
                }
            }
            return Ok(());
        }
        let max = match section.pool_max {
            Some(n) => self.count_in("client.pool_max", n, protocol_range::POOL_SIZE)?,
            None => mtcpd_engine::config::AUTO_POOL_MAX,
        };
        // A `pool_max` below the default smallest pool is a smaller range, not an error.
        let min = match section.pool_min {
            Some(n) => self.count_in("client.pool_min", n, protocol_range::POOL_MIN)?,
            None => mtcpd_engine::config::AUTO_POOL_MIN.min(max),
        };
        if min > max {
            return Err(self.invalid(
                "client.pool_min",
                format!("{min} is above client.pool_max ({max})"),
            ));
        }
        runtime.engine.pool_auto = true;
        runtime.engine.pool_min = min;
        runtime.engine.pool_size = max;
        Ok(())
    }

    fn client(
        &self,
        section: &RawClientSection,
        runtime: &mut RuntimeOptions,
    ) -> Result<ClientConfig, ConfigFileError> {
        let servers = self.client_servers(section)?;
        self.client_pool(section, runtime)?;
        if let Some(size) = section.buffer_size {
            runtime.read_chunk =
                self.bytes_in("client.buffer_size", size, runtime_range::READ_CHUNK)?;
        }
        if let Some(zero_rtt) = section.enable_zero_rtt {
            runtime.engine.zero_rtt = zero_rtt;
        }

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
            forwards.push(LabelledForward {
                name: None,
                forward: ClientForward {
                    listen,
                    target: None,
                    name: None,
                },
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
            forwards.push(LabelledForward {
                name,
                forward: ClientForward {
                    listen,
                    target: target.map(|target| target.to_string()),
                    name: None,
                },
            });
        }
        let proxies = self.proxies(section, &mut listen_keys)?;
        let exposed = self.exposed_services(&section.expose)?;
        if forwards.is_empty() && proxies.is_empty() && exposed.is_empty() {
            return Err(self.invalid(
                "client.forward",
                "a client needs at least one forward, proxy or exposed service: set \
                 local_listen_ip/local_listen_port, add a [[client.forward]] table with \
                 `listen`, a [[client.socks5]] or [[client.http_proxy]] table, or expose a \
                 service with [[client.expose]]",
            ));
        }
        Ok(ClientConfig {
            servers,
            forwards,
            proxies,
            exposed,
        })
    }

    /// The client's servers: `servers = ["host:port", ...]` (distinct, at least one), or the
    /// seed's `server_ip`/`server_port` (defaults included); not both.
    fn client_servers(
        &self,
        section: &RawClientSection,
    ) -> Result<Vec<TargetAddr>, ConfigFileError> {
        let Some(list) = &section.servers else {
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
            return Ok(vec![TargetAddr::Socket(server)]);
        };
        if section.server_ip.is_some() || section.server_port.is_some() {
            return Err(self.invalid(
                "client.servers",
                "set either `servers` or `server_ip`/`server_port`, not both (write the first \
                 server in `servers`)",
            ));
        }
        if list.is_empty() {
            return Err(self.invalid(
                "client.servers",
                "needs at least one \"host:port\" (or remove it and set server_ip/server_port)",
            ));
        }
        let mut servers: Vec<TargetAddr> = Vec::with_capacity(list.len());
        for (index, text) in list.iter().enumerate() {
            let key = format!("client.servers[{index}]");
            let server = parse_target(text).map_err(|message| self.invalid(&key, message))?;
            if servers.contains(&server) {
                return Err(self.invalid(key, format!("{server} is listed twice")));
            }
            servers.push(server);
        }
        Ok(servers)
    }

    /// `[[client.socks5]]` and `[[client.http_proxy]]`: their listen addresses (unique among
    /// all listeners) and SOCKS5 credentials (both or neither, 1 to 255 bytes each).
    fn proxies(
        &self,
        section: &RawClientSection,
        listen_keys: &mut Vec<(SocketAddr, String)>,
    ) -> Result<Vec<ClientProxy>, ConfigFileError> {
        let mut proxies = Vec::new();
        let listeners = section
            .socks5
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("client.socks5[{i}]"), &s.listen, Some(s)))
            .chain(
                section
                    .http_proxy
                    .iter()
                    .enumerate()
                    .map(|(i, h)| (format!("client.http_proxy[{i}]"), &h.listen, None)),
            );
        for (key, listen, socks) in listeners {
            let listen = parse_listen_address(listen)
                .map_err(|message| self.invalid(format!("{key}.listen"), message))?;
            if let Some((_, earlier_key)) = listen_keys.iter().find(|(used, _)| *used == listen) {
                return Err(self.invalid(
                    format!("{key}.listen"),
                    format!("{listen} is already used by {earlier_key}"),
                ));
            }
            listen_keys.push((listen, format!("{key}.listen")));
            let kind = match socks {
                None => ProxyKind::Http,
                Some(socks) => ProxyKind::Socks5 {
                    credentials: self.socks5_credentials(&key, socks)?,
                },
            };
            proxies.push(ClientProxy { listen, kind });
        }
        Ok(proxies)
    }

    fn socks5_credentials(
        &self,
        key: &str,
        socks: &RawSocks5,
    ) -> Result<Option<Socks5Credentials>, ConfigFileError> {
        let (username, password) = match (&socks.username, &socks.password) {
            (None, None) => return Ok(None),
            (Some(u), Some(p)) => (u, p),
            (Some(_), None) => {
                return Err(self.invalid(
                    format!("{key}.password"),
                    "missing: username and password go together",
                ));
            }
            (None, Some(_)) => {
                return Err(self.invalid(
                    format!("{key}.username"),
                    "missing: username and password go together",
                ));
            }
        };
        for (field, value) in [("username", username), ("password", password)] {
            if value.is_empty() || value.len() > 255 {
                return Err(self.invalid(
                    format!("{key}.{field}"),
                    "must be 1 to 255 bytes (RFC 1929)",
                ));
            }
        }
        Ok(Some(Socks5Credentials {
            username: username.clone(),
            password: password.clone(),
        }))
    }

    fn forward_name(
        &self,
        key: &str,
        name: Option<&str>,
        seen: &mut HashSet<String>,
    ) -> Result<Option<String>, ConfigFileError> {
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

    /// Without a key, a server may only forward to its default backend (a port forward, as the
    /// seed's config does); one that would relay to any `[[server.forward]]` target refuses to
    /// start. A keyless client, or such a server, runs with the engine's explicit opt-in (the
    /// daemon warns at start).
    fn keyless_policy(
        &self,
        endpoint: &Endpoint,
        runtime: &mut RuntimeOptions,
    ) -> Result<(), ConfigFileError> {
        if !runtime.engine.psk.is_empty() {
            return Ok(());
        }
        if let Endpoint::Server(server) = endpoint
            && !server.allow.is_empty()
        {
            return Err(self.invalid(
                "psk",
                format!(
                    "a server with an allow list (server.allow) needs a key: without one, \
                     anyone who reaches {} could open streams to every target it allows. Make \
                     a key with `mtcpd genkey --out mtcpd.psk`, and set psk_file = \
                     \"mtcpd.psk\" (or psk) on both ends",
                    server.listen
                ),
            ));
        }
        if let Endpoint::Server(server) = endpoint
            && !server.allowed_targets.is_empty()
        {
            return Err(self.invalid(
                "psk",
                format!(
                    "a server with [[server.forward]] targets needs a key: without one, anyone \
                     who reaches {} could open streams to every one of them. Make a key with \
                     `mtcpd genkey --out mtcpd.psk`, and set psk_file = \"mtcpd.psk\" (or psk) \
                     on both ends",
                    server.listen
                ),
            ));
        }
        runtime.engine.allow_unauthenticated = true;
        Ok(())
    }

    /// The key's bytes and the file key that gave them, if the file sets one.
    fn psk(
        &self,
        raw: &RawConfigFile,
        base_dir: &Path,
    ) -> Result<Option<(&'static str, Vec<u8>)>, ConfigFileError> {
        match (&raw.psk, &raw.psk_file) {
            (Some(_), Some(_)) => {
                Err(self.invalid("psk_file", "set either psk or psk_file, not both"))
            }
            (None, None) => Ok(None),
            (Some(inline), None) => Ok(Some(("psk", inline.as_bytes().to_vec()))),
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
                Ok(Some(("psk_file", contents)))
            }
        }
    }

    fn ip(
        &self,
        key: &str,
        text: Option<&str>,
        fallback: IpAddr,
    ) -> Result<IpAddr, ConfigFileError> {
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

    fn port(&self, key: &str, value: Option<i64>, fallback: u16) -> Result<u16, ConfigFileError> {
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
}
