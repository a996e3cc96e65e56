//! The runtime's own settings: their defaults and valid ranges, stated once.
//!
//! Owns: `Default` for [`RuntimeOptions`], [`RuntimeOptions::for_role`], the ranges in
//! [`range`], [`RuntimeOptions::validate`] and [`RuntimeOptions::settings`], and the names of
//! [`IoChoice`] as written in configs. Must not touch: protocol settings (those are
//! [`crate::config`]), sockets or threads (this only describes what the runtime will do).

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

use super::{IoChoice, RuntimeOptions, TunnelSocketOptions};
use crate::config::{Config, ConfigError, UnknownName};
use crate::session::Role;
use crate::settings::{Setting, SettingValue};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Tunnels' congestion control unless told otherwise: tunnels face the WAN, where BBR holds up
/// far better than loss-based controls under random loss.
pub const DEFAULT_CONGESTION: &str = "bbr";
/// Unsent bytes the kernel may hold per tunnel at least (TCP_NOTSENT_LOWAT; a faster tunnel
/// holds 4 ms of its rate) unless told otherwise.
pub const DEFAULT_NOTSENT_LOWAT: u32 = 128 * 1024;

/// The valid range of every [`RuntimeOptions`] field that has one (both ends inclusive).
pub mod range {
    use super::*;

    /// [`RuntimeOptions::workers`].
    pub const WORKERS: RangeInclusive<usize> = 1..=1024;
    /// [`RuntimeOptions::read_chunk`].
    pub const READ_CHUNK: RangeInclusive<usize> = KIB..=16 * MIB;
    /// [`RuntimeOptions::drain_timeout`].
    pub const DRAIN_TIMEOUT: RangeInclusive<Duration> =
        Duration::ZERO..=Duration::from_secs(24 * 60 * 60);
    /// [`RuntimeOptions::max_sessions`].
    pub const MAX_SESSIONS: RangeInclusive<usize> = 1..=1_000_000;
    /// [`RuntimeOptions::backend_connect_timeout`].
    pub const BACKEND_CONNECT_TIMEOUT: RangeInclusive<Duration> =
        Duration::from_millis(100)..=Duration::from_secs(300);
    /// [`RuntimeOptions::connect_wait`].
    pub const CONNECT_WAIT: RangeInclusive<Duration> =
        Duration::from_millis(100)..=Duration::from_secs(300);
    /// [`RuntimeOptions::max_backend_connections`].
    pub const MAX_BACKEND_CONNECTIONS: RangeInclusive<usize> = 1..=1_000_000;
    /// [`TunnelSocketOptions::send_buffer`] and [`TunnelSocketOptions::recv_buffer`], when set.
    pub const SOCKET_BUFFER: RangeInclusive<usize> = 4 * KIB..=1024 * MIB;
    /// [`TunnelSocketOptions::notsent_lowat`] (0 leaves the kernel's default): below 16 KiB a
    /// tunnel cannot keep a fast path busy between loop turns; above 64 MiB the scheduler
    /// would commit data to a tunnel long before it can leave.
    pub const NOTSENT_LOWAT: RangeInclusive<u32> = 16 * 1024..=64 * 1024 * 1024;
    /// Length of a congestion-control name (Linux TCP_CA_NAME_MAX is 16 with the NUL).
    pub const CONGESTION_NAME_LEN: RangeInclusive<usize> = 1..=15;
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            engine: Config::default(),
            io: IoChoice::Auto,
            tunnel_sockets: TunnelSocketOptions {
                congestion: Some(DEFAULT_CONGESTION.into()),
                send_buffer: None,
                recv_buffer: None,
                notsent_lowat: DEFAULT_NOTSENT_LOWAT,
            },
            read_chunk: 64 * KIB,
            drain_timeout: Duration::from_secs(30),
            max_sessions: 1024,
            workers: 1,
            backend_connect_timeout: Duration::from_secs(10),
            max_backend_connections: 8192,
            tls: crate::tls::TlsOptions::default(),
            connect_wait: Duration::from_secs(5),
        }
    }
}

fn bad(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        problem: problem.into(),
    }
}

impl RuntimeOptions {
    /// The defaults for a daemon of `role`: a server spreads its sessions over every core; a
    /// client carries one session, whose pool one core drives (more workers would mean more
    /// sessions and more tunnels). Everything else is [`RuntimeOptions::default`].
    pub fn for_role(role: Role) -> Self {
        let workers = match role {
            Role::Server => std::thread::available_parallelism().map_or(1, usize::from),
            Role::Client => 1,
        };
        Self {
            workers: workers.min(*range::WORKERS.end()),
            ..Self::default()
        }
    }

    /// The sessions' config: [`RuntimeOptions::engine`], with the least each tunnel socket may
    /// hold unsent ([`Config::tunnel_unsent_bytes`], from `tunnel_sockets.notsent_lowat`; 0
    /// there leaves the kernel's default, which bounds nothing).
    pub(crate) fn session_config(&self) -> Config {
        Config {
            tunnel_unsent_bytes: match self.tunnel_sockets.notsent_lowat {
                0 => u32::MAX,
                bytes => bytes,
            },
            ..self.engine.clone()
        }
    }

    /// The runtime's own fields with their values and bounds (the protocol's are
    /// `self.engine.settings()`).
    pub fn settings(&self) -> Vec<Setting> {
        // Destructured so that a new field cannot be forgotten here.
        let RuntimeOptions {
            engine: _,
            io,
            tunnel_sockets,
            read_chunk,
            drain_timeout,
            max_sessions,
            workers,
            backend_connect_timeout,
            max_backend_connections,
            tls,
            connect_wait,
        } = self;
        let TunnelSocketOptions {
            congestion,
            send_buffer,
            recv_buffer,
            notsent_lowat,
        } = tunnel_sockets;
        let buffer = |key, size: &Option<usize>| match size {
            Some(bytes) => Setting::bytes(key, *bytes, range::SOCKET_BUFFER),
            None => Setting::unbounded(key, SettingValue::Unset("kernel autotuning")),
        };
        vec![
            Setting::unbounded("io", SettingValue::Name(io.to_string())),
            Setting::count("workers", *workers as u64, as_u64(range::WORKERS)),
            Setting::bytes("read_chunk", *read_chunk, range::READ_CHUNK),
            Setting::duration("drain_timeout", *drain_timeout, range::DRAIN_TIMEOUT),
            Setting::count(
                "max_sessions",
                *max_sessions as u64,
                as_u64(range::MAX_SESSIONS),
            ),
            Setting::duration(
                "backend_connect_timeout",
                *backend_connect_timeout,
                range::BACKEND_CONNECT_TIMEOUT,
            ),
            Setting::count(
                "max_backend_connections",
                *max_backend_connections as u64,
                as_u64(range::MAX_BACKEND_CONNECTIONS),
            ),
            Setting::duration("connect_wait", *connect_wait, range::CONNECT_WAIT),
            Setting::unbounded(
                "tunnel_sockets.congestion",
                match congestion {
                    Some(name) => SettingValue::Name(name.clone()),
                    None => SettingValue::Unset("system default"),
                },
            ),
            buffer("tunnel_sockets.send_buffer", send_buffer),
            buffer("tunnel_sockets.recv_buffer", recv_buffer),
            match notsent_lowat {
                0 => Setting::unbounded(
                    "tunnel_sockets.notsent_lowat",
                    SettingValue::Unset("kernel default"),
                ),
                bytes => {
                    Setting::bytes("tunnel_sockets.notsent_lowat", *bytes, range::NOTSENT_LOWAT)
                }
            },
        ]
        .into_iter()
        .chain(tls.settings())
        .collect()
    }

    /// Checks the protocol config and every runtime value; the runtime never starts on options
    /// that fail this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.engine.validate()?;
        for setting in self.settings() {
            setting.check()?;
        }
        if let Some(name) = &self.tunnel_sockets.congestion {
            check_congestion_name(name)?;
        }
        self.tls.validate()?;
        Ok(())
    }
}

fn as_u64(range: RangeInclusive<usize>) -> RangeInclusive<u64> {
    *range.start() as u64..=*range.end() as u64
}

/// A congestion-control name the kernel could know: 1 to 15 of a-z, A-Z, 0-9, `_` or `-`.
pub fn check_congestion_name(name: &str) -> Result<(), ConfigError> {
    let valid = range::CONGESTION_NAME_LEN.contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if valid {
        Ok(())
    } else {
        Err(bad(
            "tunnel_sockets.congestion",
            format!(
                "\"{name}\" is not a congestion control name (1 to {} of a-z, 0-9, _ or -, e.g. \
                 \"bbr\" or \"cubic\")",
                range::CONGESTION_NAME_LEN.end()
            ),
        ))
    }
}

impl IoChoice {
    /// Every driver choice, by the name configs, `--io` and `MTCPD_IO` use.
    pub const NAMES: &'static [&'static str] = &["auto", "uring", "mio"];

    /// `"auto"`, `"uring"` or `"mio"`.
    pub fn as_str(self) -> &'static str {
        match self {
            IoChoice::Auto => "auto",
            IoChoice::Uring => "uring",
            IoChoice::Mio => "mio",
        }
    }
}

impl fmt::Display for IoChoice {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        out.write_str(self.as_str())
    }
}

impl FromStr for IoChoice {
    type Err = UnknownName;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "auto" => Ok(IoChoice::Auto),
            "uring" => Ok(IoChoice::Uring),
            "mio" => Ok(IoChoice::Mio),
            _ => Err(UnknownName {
                what: "I/O driver",
                given: name.to_owned(),
                expected: IoChoice::NAMES,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_leave_room_for_what_the_tunnel_sockets_hold_unsent() {
        let mut opts = RuntimeOptions::default();
        assert_eq!(
            opts.session_config().tunnel_unsent_bytes,
            DEFAULT_NOTSENT_LOWAT
        );
        assert_eq!(Config::default().tunnel_unsent_bytes, DEFAULT_NOTSENT_LOWAT);
        opts.tunnel_sockets.notsent_lowat = 1 << 20;
        assert_eq!(opts.session_config().tunnel_unsent_bytes, 1 << 20);
        opts.tunnel_sockets.notsent_lowat = 0;
        assert_eq!(opts.session_config().tunnel_unsent_bytes, u32::MAX);
    }

    #[test]
    fn defaults_are_valid_and_out_of_range_values_name_their_key() {
        RuntimeOptions::default().validate().unwrap();
        RuntimeOptions::for_role(Role::Server).validate().unwrap();
        assert_eq!(RuntimeOptions::for_role(Role::Client).workers, 1);
        let mut opts = RuntimeOptions::default();
        opts.tunnel_sockets.notsent_lowat = 1024;
        assert_eq!(
            opts.validate().unwrap_err().key,
            "tunnel_sockets.notsent_lowat"
        );
        opts.tunnel_sockets.notsent_lowat = 0;
        opts.validate().unwrap();
        opts.tunnel_sockets.congestion = Some("b b r".into());
        assert_eq!(
            opts.validate().unwrap_err().key,
            "tunnel_sockets.congestion"
        );
        let opts = RuntimeOptions {
            max_sessions: 0,
            ..RuntimeOptions::default()
        };
        assert_eq!(opts.validate().unwrap_err().key, "max_sessions");
        let opts = RuntimeOptions {
            backend_connect_timeout: Duration::from_millis(1),
            ..RuntimeOptions::default()
        };
        assert_eq!(opts.validate().unwrap_err().key, "backend_connect_timeout");
        let opts = RuntimeOptions {
            max_backend_connections: 0,
            ..RuntimeOptions::default()
        };
        assert_eq!(opts.validate().unwrap_err().key, "max_backend_connections");
    }

    #[test]
    fn io_choices_parse_from_their_names() {
        for name in IoChoice::NAMES {
            assert_eq!(name.parse::<IoChoice>().unwrap().to_string(), *name);
        }
        assert!("epoll".parse::<IoChoice>().is_err());
    }
}
