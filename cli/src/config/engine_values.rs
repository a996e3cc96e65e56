//! The file's engine keys: where each engine setting is written in the file, and putting what
//! the file says into the engine's `RuntimeOptions`.
//!
//! Owns: `FILE_KEYS` (engine field name ↔ file key, including the seed's names such as
//! `buffer_size`, `connection_pool_size`, `cores` and `enable_zero_rtt`), reading the top-level
//! runtime keys and `[limits]` into `RuntimeOptions`, and command-line overrides (`--cores`,
//! `--io`). Must not touch: defaults or ranges. Every default is the engine's
//! (`RuntimeOptions::for_role`), every range is checked by the engine (its `range` tables and
//! `validate`); a number is only checked here before it is narrowed to its field's type, and
//! then against the engine's range.

use std::ops::RangeInclusive;

use mtcpd_engine::Role;
use mtcpd_engine::config::range as protocol_range;
use mtcpd_engine::runtime::RuntimeOptions;
use mtcpd_engine::runtime::options::range as runtime_range;
use mtcpd_engine::settings::{SettingValue, check_in};

use super::error::ConfigFileError;
use super::raw::{RawConfigFile, RawLimits, RawTls};
use super::validate::{Checker, CommandLineOverrides};
use mtcpd_common::units::ByteSize;

/// Where each engine setting is written in a file: (engine key, file key). `{role}` stands for
/// the role's table. `None`: the file cannot set it, the engine's default always applies.
pub const FILE_KEYS: &[(&str, Option<&str>)] = &[
    ("psk", Some("psk")),
    ("pool_size", Some("{role}.connection_pool_size")),
    // Not a key of its own: `client.connection_pool_size = "auto"` turns it on (and then
    // `client.pool_max` is `pool_size`).
    ("pool_auto", None),
    ("pool_min", Some("client.pool_min")),
    ("max_frame_payload", Some("limits.max_frame_payload")),
    ("max_frame_body", None),
    ("stream_window", Some("limits.stream_window")),
    ("session_window", Some("limits.session_window")),
    ("stream_send_buffer", None),
    ("max_streams", Some("limits.max_streams_per_session")),
    ("max_unacked_bytes", Some("limits.max_unacked_bytes")),
    (
        "max_tunnel_unacked_bytes",
        Some("limits.max_tunnel_unacked_bytes"),
    ),
    ("max_pending_ranges", Some("limits.max_pending_ranges")),
    ("handshake_timeout", Some("limits.handshake_timeout")),
    ("preauth_timeout", Some("limits.preauth_timeout")),
    ("max_handshakes", Some("limits.max_handshakes_per_worker")),
    (
        "max_handshakes_per_source",
        Some("limits.max_handshakes_per_source"),
    ),
    ("tunnel_idle_timeout", Some("limits.tunnel_idle_timeout")),
    ("keepalive_interval", Some("limits.keepalive_interval")),
    ("session_grace", Some("limits.session_grace")),
    ("redial_backoff_min", Some("limits.redial_backoff_min")),
    ("redial_backoff_max", Some("limits.redial_backoff_max")),
    ("refused_backoff_max", Some("limits.refused_backoff_max")),
    ("initial_rate", None),
    ("scheduler", None),
    ("copy_threshold", None),
    ("zero_rtt", Some("client.enable_zero_rtt")),
    ("coupled_pacing", Some("coupled_pacing")),
    ("hol_relief", Some("hol_relief")),
    ("io", Some("io")),
    ("workers", Some("cores")),
    ("read_chunk", Some("{role}.buffer_size")),
    ("drain_timeout", Some("limits.drain_timeout")),
    ("max_sessions", Some("limits.max_sessions")),
    (
        "backend_connect_timeout",
        Some("limits.backend_connect_timeout"),
    ),
    (
        "max_backend_connections",
        Some("limits.max_backend_connections"),
    ),
    ("connect_wait", Some("limits.connect_wait")),
    ("tunnel_sockets.congestion", Some("congestion")),
    ("tunnel_sockets.send_buffer", Some("socket_send_buffer")),
    ("tunnel_sockets.recv_buffer", Some("socket_recv_buffer")),
    ("tunnel_sockets.notsent_lowat", Some("socket_notsent_lowat")),
    ("insecure_plaintext", Some("insecure_plaintext")),
    ("tls.cert_file", Some("tls.cert_file")),
    ("tls.key_file", Some("tls.key_file")),
    ("tls.state_dir", Some("tls.state_dir")),
    ("tls.ca_file", Some("tls.ca_file")),
    ("tls.server_name", Some("tls.server_name")),
    ("tls.server_fingerprint", Some("tls.server_fingerprint")),
];

/// The file key that sets engine setting `engine_key` for `role`, if a file can set it
/// (a `[client]` key configures nothing on a server).
pub fn file_key(engine_key: &str, role: Role) -> Option<String> {
    let (_, file) = FILE_KEYS.iter().find(|(engine, _)| *engine == engine_key)?;
    let file = (*file)?.replace("{role}", role.as_str());
    let other = match role {
        Role::Server => "client.",
        Role::Client => "server.",
    };
    (!file.starts_with(other)).then_some(file)
}

impl Checker {
    /// An integer from the file, checked against the engine's `range` before it is narrowed.
    pub(super) fn count_in<T>(
        &self,
        key: &str,
        value: i64,
        range: RangeInclusive<T>,
    ) -> Result<T, ConfigFileError>
    where
        T: Copy + TryFrom<i128>,
        i128: TryFrom<T>,
    {
        self.narrow(key, i128::from(value), range, |n| {
            SettingValue::Count(u64::try_from(n).unwrap_or(u64::MAX))
        })
    }

    /// A size from the file, checked against the engine's `range` before it is narrowed.
    pub(super) fn bytes_in<T>(
        &self,
        key: &str,
        value: ByteSize,
        range: RangeInclusive<T>,
    ) -> Result<T, ConfigFileError>
    where
        T: Copy + TryFrom<i128>,
        i128: TryFrom<T>,
    {
        self.narrow(key, i128::from(value.bytes()), range, |n| {
            SettingValue::Bytes(u64::try_from(n).unwrap_or(u64::MAX))
        })
    }

    fn narrow<T>(
        &self,
        key: &str,
        value: i128,
        range: RangeInclusive<T>,
        typed: impl Fn(i128) -> SettingValue,
    ) -> Result<T, ConfigFileError>
    where
        T: Copy + TryFrom<i128>,
        i128: TryFrom<T>,
    {
        check_in("", value, &range, typed)
            .map_err(|error| self.invalid(key, error.problem))
            .and_then(|()| {
                T::try_from(value).map_err(|_| self.invalid(key, "out of range".to_owned()))
            })
    }

    /// Puts the top-level runtime keys and the command-line overrides into `opts`.
    pub(super) fn runtime_keys(
        &self,
        raw: &RawConfigFile,
        overrides: CommandLineOverrides,
        opts: &mut RuntimeOptions,
    ) -> Result<(), ConfigFileError> {
        match (overrides.cores, raw.cores) {
            (Some(from_command_line), _) => {
                let cores = i64::try_from(from_command_line).unwrap_or(i64::MAX);
                opts.workers = self.count_in("--cores", cores, runtime_range::WORKERS)?;
            }
            (None, Some(from_file)) => {
                opts.workers = self.count_in("cores", from_file, runtime_range::WORKERS)?;
            }
            (None, None) => {}
        }
        if let Some(io) = overrides.io.or(raw.io) {
            opts.io = io;
        }
        if let Some(coupled) = raw.coupled_pacing {
            opts.engine.coupled_pacing = coupled;
        }
        if let Some(relief) = raw.hol_relief {
            opts.engine.hol_relief = relief;
        }
        let sockets = &mut opts.tunnel_sockets;
        if let Some(name) = &raw.congestion {
            sockets.congestion = Some(name.clone());
        }
        if let Some(size) = raw.socket_send_buffer {
            sockets.send_buffer =
                Some(self.bytes_in("socket_send_buffer", size, runtime_range::SOCKET_BUFFER)?);
        }
        if let Some(size) = raw.socket_recv_buffer {
            sockets.recv_buffer =
                Some(self.bytes_in("socket_recv_buffer", size, runtime_range::SOCKET_BUFFER)?);
        }
        if let Some(size) = raw.socket_notsent_lowat {
            sockets.notsent_lowat =
                self.bytes_in("socket_notsent_lowat", size, runtime_range::NOTSENT_LOWAT)?;
        }
        Ok(())
    }

    /// Puts `insecure_plaintext` and `[tls]` into `opts` (paths relative to `base_dir`); a key
    /// of the other role is an error rather than silently ignored.
    pub(super) fn tls_keys(
        &self,
        raw: &RawConfigFile,
        role: Role,
        base_dir: &std::path::Path,
        opts: &mut RuntimeOptions,
    ) -> Result<(), ConfigFileError> {
        let RawTls {
            cert_file,
            key_file,
            state_dir,
            ca_file,
            server_name,
            server_fingerprint,
        } = &raw.tls;
        let (wrong_role, owner) = match role {
            Role::Server => (
                [
                    ("tls.ca_file", ca_file.is_some()),
                    ("tls.server_name", server_name.is_some()),
                    ("tls.server_fingerprint", server_fingerprint.is_some()),
                ],
                "client",
            ),
            Role::Client => (
                [
                    ("tls.cert_file", cert_file.is_some()),
                    ("tls.key_file", key_file.is_some()),
                    ("tls.state_dir", state_dir.is_some()),
                ],
                "server",
            ),
        };
        if let Some((key, _)) = wrong_role.iter().find(|(_, set)| *set) {
            return Err(self.invalid(
                *key,
                format!("a {owner} setting: this file configures a {role}"),
            ));
        }
        let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| base_dir.join(p));
        let tls = &mut opts.tls;
        if let Some(plaintext) = raw.insecure_plaintext {
            tls.insecure_plaintext = plaintext;
        }
        tls.cert_file = path(cert_file);
        tls.key_file = path(key_file);
        tls.state_dir = path(state_dir);
        tls.ca_file = path(ca_file);
        tls.server_name = server_name.clone();
        tls.server_fingerprint = server_fingerprint.clone();
        Ok(())
    }

    /// Puts `[limits]` into `opts`; returns `limits.max_tunnels`, the server's cap on
    /// `connection_pool_size`, when set.
    pub(super) fn limits(
        &self,
        raw: &RawLimits,
        opts: &mut RuntimeOptions,
    ) -> Result<Option<u16>, ConfigFileError> {
        if let Some(count) = raw.max_sessions {
            opts.max_sessions =
                self.count_in("limits.max_sessions", count, runtime_range::MAX_SESSIONS)?;
        }
        if let Some(duration) = raw.drain_timeout {
            opts.drain_timeout = duration.get();
        }
        if let Some(duration) = raw.backend_connect_timeout {
            opts.backend_connect_timeout = duration.get();
        }
        if let Some(duration) = raw.connect_wait {
            opts.connect_wait = duration.get();
        }
        if let Some(count) = raw.max_backend_connections {
            opts.max_backend_connections = self.count_in(
                "limits.max_backend_connections",
                count,
                runtime_range::MAX_BACKEND_CONNECTIONS,
            )?;
        }
        let engine = &mut opts.engine;
        if let Some(count) = raw.max_streams_per_session {
            engine.max_streams = self.count_in(
                "limits.max_streams_per_session",
                count,
                protocol_range::MAX_STREAMS,
            )?;
        }
        if let Some(size) = raw.stream_window {
            engine.stream_window = size.bytes();
        }
        if let Some(size) = raw.max_unacked_bytes {
            engine.max_unacked_bytes = size.bytes();
        }
        match raw.max_tunnel_unacked_bytes {
            Some(size) => engine.max_tunnel_unacked_bytes = size.bytes(),
            // Left to its default: at most the session's cap, so a file that lowered only
            // that (valid while the default was 32 MiB) still loads.
            None => {
                engine.max_tunnel_unacked_bytes = engine
                    .max_tunnel_unacked_bytes
                    .min(engine.max_unacked_bytes)
            }
        }
        if let Some(count) = raw.max_pending_ranges {
            engine.max_pending_ranges = self.count_in(
                "limits.max_pending_ranges",
                count,
                protocol_range::MAX_PENDING_RANGES,
            )?;
        }
        if let Some(size) = raw.session_window {
            engine.session_window = size.bytes();
        }
        if let Some(size) = raw.max_frame_payload {
            engine.max_frame_payload = self.bytes_in(
                "limits.max_frame_payload",
                size,
                protocol_range::MAX_FRAME_PAYLOAD,
            )?;
        }
        if let Some(count) = raw.max_handshakes_per_worker {
            engine.max_handshakes = self.count_in(
                "limits.max_handshakes_per_worker",
                count,
                protocol_range::MAX_HANDSHAKES,
            )?;
        }
        if let Some(count) = raw.max_handshakes_per_source {
            engine.max_handshakes_per_source = self.count_in(
                "limits.max_handshakes_per_source",
                count,
                protocol_range::MAX_HANDSHAKES_PER_SOURCE,
            )?;
        }
        for (field, value) in [
            (&mut engine.handshake_timeout, raw.handshake_timeout),
            (&mut engine.preauth_timeout, raw.preauth_timeout),
            (&mut engine.tunnel_idle_timeout, raw.tunnel_idle_timeout),
            (&mut engine.keepalive_interval, raw.keepalive_interval),
            (&mut engine.session_grace, raw.session_grace),
            (&mut engine.redial_backoff_min, raw.redial_backoff_min),
            (&mut engine.redial_backoff_max, raw.redial_backoff_max),
            (&mut engine.refused_backoff_max, raw.refused_backoff_max),
        ] {
            if let Some(duration) = value {
                *field = duration.get();
            }
        }
        raw.max_tunnels
            .map(|count| self.count_in("limits.max_tunnels", count, protocol_range::POOL_SIZE))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_setting_has_a_file_key_entry() {
        let opts = RuntimeOptions::default();
        let keys: Vec<&str> = opts
            .engine
            .settings()
            .iter()
            .chain(opts.settings().iter())
            .map(|setting| setting.key)
            .collect();
        for key in &keys {
            assert!(
                FILE_KEYS.iter().any(|(engine, _)| engine == key),
                "{key} is missing from FILE_KEYS"
            );
        }
        assert_eq!(
            keys.len(),
            FILE_KEYS.len(),
            "FILE_KEYS names a setting that is gone"
        );
    }

    #[test]
    fn role_keys_follow_the_role() {
        assert_eq!(
            file_key("read_chunk", Role::Server).as_deref(),
            Some("server.buffer_size")
        );
        assert_eq!(file_key("zero_rtt", Role::Server), None);
        assert_eq!(
            file_key("zero_rtt", Role::Client).as_deref(),
            Some("client.enable_zero_rtt")
        );
        assert_eq!(file_key("max_frame_body", Role::Client), None);
    }
}
