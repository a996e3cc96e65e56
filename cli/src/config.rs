//! mtcpd configuration: TOML file → the engine's `RuntimeOptions` plus the file-level parts.
//!
//! Owns: reading the config file and mapping it onto the engine's types. The pipeline is
//! parse (`raw`, serde with `deny_unknown_fields`) → validate (`validate`, with the engine keys
//! in `engine_values`) → resolved (`resolved::DaemonConfig`), printed by `display`. A bad config
//! never yields a config: every error names the file, the dotted key, its line when known
//! (`locate`) and what is wrong (`error::ConfigFileError`). Every default and every range of an
//! engine value is the engine's (`mtcpd_engine::config`, `mtcpd_engine::runtime::options`); this
//! module adds only file-level concerns: addresses, forwards, `psk_file`, the seed's key names,
//! and error locations. Must not touch: sockets, threads, logging set-up or the command line
//! (`main.rs` turns the command line into a `LoadRequest`).
//!
//! The seed's `config.server.toml` / `config.client.toml` load unchanged. One difference
//! from the seed: `connection_pool_size` need not match between the two ends. The client
//! proposes its pool size, the server grants at most its own `connection_pool_size` (and
//! at most `limits.max_tunnels`). The full reference, with every key and default, is
//! `config/mtcpd.example.toml`. Sizes and durations are parsed by `mtcpd_common::units`, the
//! same parser mtcp-perf's command line uses.

mod allow;
mod display;
mod engine_values;
mod error;
mod locate;
mod raw;
mod resolved;
mod reverse;
mod targets;
mod validate;

use std::path::{Path, PathBuf};

pub use allow::{AllowList, is_public};
pub use engine_values::{FILE_KEYS, file_key};
pub use error::{ConfigFileError, ConfigOrigin, TextPosition};
pub use mtcpd_common::units::{ByteSize, HumanDuration};
pub use mtcpd_engine::Role;
pub use mtcpd_engine::runtime::{ClientForward, IoChoice, RuntimeOptions};
pub use resolved::{
    ClientConfig, ClientExpose, DaemonConfig, Endpoint, LabelledForward, ServerConfig,
    ServerForward, TargetAddr, defaults,
};
pub use targets::parse_target;
pub use validate::CommandLineOverrides;

/// What to load: an optional file plus what the command line says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadRequest {
    /// `-c FILE`; `None` = built-in defaults for the role.
    pub file: Option<PathBuf>,
    /// Role and settings from the command line; they win over the file.
    pub overrides: CommandLineOverrides,
}

/// Loads, validates and resolves a configuration.
pub fn load(request: &LoadRequest) -> Result<DaemonConfig, ConfigFileError> {
    match &request.file {
        None => validate::resolve(
            None,
            ConfigOrigin::BuiltInDefaults,
            "",
            Path::new("."),
            request.overrides,
        ),
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|io_error| ConfigFileError::Unreadable {
                    path: path.clone(),
                    io_error,
                })?;
            let base_dir = path
                .parent()
                .filter(|parent| !parent.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            load_str(
                &text,
                ConfigOrigin::File(path.clone()),
                base_dir,
                request.overrides,
            )
        }
    }
}

/// Validates and resolves configuration `text` that came from `origin`; a relative
/// `psk_file` is looked up in `base_dir`.
pub fn load_str(
    text: &str,
    origin: ConfigOrigin,
    base_dir: &Path,
    overrides: CommandLineOverrides,
) -> Result<DaemonConfig, ConfigFileError> {
    if let Err(syntax_error) = text.parse::<toml::Table>() {
        return Err(ConfigFileError::Syntax {
            position: syntax_error
                .span()
                .map(|span| TextPosition::of_offset(text, span.start)),
            message: syntax_error.message().trim().to_owned(),
            origin,
        });
    }
    let deserializer = toml::Deserializer::new(text);
    let raw: raw::RawConfigFile = serde_path_to_error::deserialize(deserializer)
        .map_err(|error| ConfigFileError::from_deserialize(&origin, text, error))?;
    validate::resolve(Some(raw), origin, text, base_dir, overrides)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, role: Option<Role>) -> Result<DaemonConfig, ConfigFileError> {
        load_str(
            text,
            ConfigOrigin::File("test.toml".into()),
            Path::new("."),
            CommandLineOverrides {
                role,
                ..CommandLineOverrides::default()
            },
        )
    }

    fn error_key(text: &str, role: Option<Role>) -> String {
        let error = load_text(text, role).expect_err("config should be refused");
        error
            .key()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("no key: {error}"))
    }

    #[test]
    fn no_file_gives_documented_server_defaults() {
        let config = load(&LoadRequest {
            file: None,
            overrides: CommandLineOverrides {
                role: Some(Role::Server),
                ..CommandLineOverrides::default()
            },
        })
        .unwrap();
        let server = config.server().unwrap();
        assert_eq!(server.listen, defaults::SERVER_LISTEN);
        assert_eq!(server.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(server.default_backend.to_string(), "127.0.0.1:9000");
        assert_eq!(config.origin, ConfigOrigin::BuiltInDefaults);
        assert_eq!(
            config.runtime.tunnel_sockets.congestion.as_deref(),
            Some("bbr")
        );
        assert_eq!(config.runtime.io, IoChoice::Auto);
        assert!(!config.has_psk());
        assert!(
            config.runtime.engine.allow_unauthenticated,
            "a keyless server with only its default backend may run (with a warning)"
        );
        let engine_defaults = RuntimeOptions::for_role(Role::Server);
        assert_eq!(config.runtime.settings(), engine_defaults.settings());
        assert_eq!(
            config.runtime.engine.settings(),
            engine_defaults.engine.settings()
        );
    }

    #[test]
    fn no_file_gives_documented_client_defaults() {
        let config = load(&LoadRequest {
            file: None,
            overrides: CommandLineOverrides {
                role: Some(Role::Client),
                ..CommandLineOverrides::default()
            },
        })
        .unwrap();
        let client = config.client().unwrap();
        assert_eq!(client.servers[0].to_string(), "127.0.0.1:8000");
        assert_eq!(config.runtime.engine.pool_size, 8);
        assert_eq!(client.forwards.len(), 1);
        assert_eq!(
            client.forwards[0].forward.listen.to_string(),
            "127.0.0.1:7000"
        );
        assert_eq!(client.forwards[0].forward.target, None);
        assert!(config.runtime.engine.zero_rtt);
        assert_eq!(config.runtime.workers, 1);
    }

    #[test]
    fn a_list_of_servers_is_kept_in_order() {
        let text = "[client]\nlocal_listen_port = 7000\n\
                    servers = [\"10.0.0.1:8000\", \"mtcpd-b.example:8001\", \"[::1]:8002\"]\n";
        let config = load_text(text, None).unwrap();
        let client = config.client().unwrap();
        let servers: Vec<String> = client.servers.iter().map(ToString::to_string).collect();
        assert_eq!(
            servers,
            ["10.0.0.1:8000", "mtcpd-b.example:8001", "[::1]:8002"]
        );
        assert!(
            config.to_string().contains(
                "servers = [\"10.0.0.1:8000\", \"mtcpd-b.example:8001\", \"[::1]:8002\"]"
            ),
            "{config}"
        );
    }

    #[test]
    fn coupled_pacing_maps_onto_the_engine_and_is_on_by_default() {
        let client = "[client]\nlocal_listen_port = 7000\n";
        let on = load_text(client, None).unwrap();
        assert!(on.runtime.engine.coupled_pacing, "the engine's default");
        let off = load_text(&format!("coupled_pacing = false\n{client}"), None).unwrap();
        assert!(!off.runtime.engine.coupled_pacing);
        assert!(off.to_string().contains("coupled_pacing = false"), "{off}");
        let server = load_text("coupled_pacing = false\n[server]\n", None).unwrap();
        assert!(!server.runtime.engine.coupled_pacing);
    }

    #[test]
    fn the_per_tunnel_resend_cap_left_out_follows_a_lower_session_cap() {
        let client = "[client]\nlocal_listen_port = 7000\n";
        let lowered = load_text(
            &format!("{client}[limits]\nmax_unacked_bytes = \"48MiB\"\n"),
            None,
        )
        .expect("a session cap under the per-tunnel default loads");
        let engine = &lowered.runtime.engine;
        assert_eq!(engine.max_unacked_bytes, 48 << 20);
        assert_eq!(engine.max_tunnel_unacked_bytes, 48 << 20);
        let default = load_text(client, None).unwrap();
        assert_eq!(
            default.runtime.engine.max_tunnel_unacked_bytes,
            mtcpd_engine::Config::default().max_tunnel_unacked_bytes
        );
        let both = format!(
            "{client}[limits]\nmax_unacked_bytes = \"48MiB\"\nmax_tunnel_unacked_bytes = \"64MiB\"\n"
        );
        assert!(load_text(&both, None).is_err(), "set above it: refused");
    }

    #[test]
    fn hol_relief_maps_onto_the_engine_and_is_off_by_default() {
        let client = "[client]\nlocal_listen_port = 7000\n";
        let off = load_text(client, None).unwrap();
        assert!(!off.runtime.engine.hol_relief, "the engine's default");
        let on = load_text(&format!("hol_relief = true\n{client}"), None).unwrap();
        assert!(on.runtime.engine.hol_relief);
        assert!(on.to_string().contains("hol_relief = true"), "{on}");
        let server = load_text("hol_relief = true\n[server]\n", None).unwrap();
        assert!(server.runtime.engine.hol_relief);
    }

    #[test]
    fn enable_zero_rtt_maps_onto_the_engine() {
        let client = "[client]\nlocal_listen_port = 7000\n";
        let on = load_text(client, None).unwrap();
        assert!(on.runtime.engine.zero_rtt, "the engine's default");
        let off = load_text(&format!("{client}enable_zero_rtt = false\n"), None).unwrap();
        assert!(!off.runtime.engine.zero_rtt);
        assert!(off.to_string().contains("enable_zero_rtt = false"), "{off}");
        let server = load_text("[server]\n", None).unwrap();
        assert!(!server.to_string().contains("enable_zero_rtt"), "{server}");
    }

    #[test]
    fn no_file_and_no_role_is_refused() {
        let error = load(&LoadRequest::default()).unwrap_err();
        assert_eq!(error.key(), Some("mode"));
    }

    #[test]
    fn server_caps_pool_size_with_max_tunnels() {
        let config = load_text(
            "[server]\nconnection_pool_size = 200\n[limits]\nmax_tunnels = 16\n",
            None,
        )
        .unwrap();
        assert_eq!(config.runtime.engine.pool_size, 16);
        let capped_only = load_text("[server]\n[limits]\nmax_tunnels = 32\n", None).unwrap();
        assert_eq!(capped_only.runtime.engine.pool_size, 32);
        let default = load_text("[server]\n", None).unwrap();
        assert_eq!(
            default.runtime.engine.pool_size,
            mtcpd_engine::Config::default().pool_size
        );
    }

    #[test]
    fn client_auto_pool_parses_with_its_defaults_and_bounds() {
        let auto = load_text(
            "[client]\nlocal_listen_port = 1\nconnection_pool_size = \"auto\"\n",
            None,
        )
        .unwrap();
        let engine = &auto.runtime.engine;
        assert!(engine.pool_auto);
        assert_eq!(
            (engine.pool_min, engine.pool_size),
            (
                mtcpd_engine::config::AUTO_POOL_MIN,
                mtcpd_engine::config::AUTO_POOL_MAX
            )
        );
        let ranged = load_text(
            "[client]\nlocal_listen_port = 1\nconnection_pool_size = \"auto\"\npool_min = 4\n\
             pool_max = 16\n",
            None,
        )
        .unwrap();
        let engine = &ranged.runtime.engine;
        assert_eq!(
            (engine.pool_auto, engine.pool_min, engine.pool_size),
            (true, 4, 16)
        );
        let small = load_text(
            "[client]\nlocal_listen_port = 1\nconnection_pool_size = \"auto\"\npool_max = 4\n",
            None,
        )
        .unwrap();
        let engine = &small.runtime.engine;
        assert_eq!(
            (engine.pool_min, engine.pool_size),
            (4, 4),
            "a pool_max below the default pool_min lowers it"
        );
        let fixed = load_text(
            "[client]\nlocal_listen_port = 1\nconnection_pool_size = 4\n",
            None,
        )
        .unwrap();
        assert!(!fixed.runtime.engine.pool_auto);
        assert_eq!(fixed.runtime.engine.pool_size, 4);
    }

    #[test]
    fn bad_auto_pool_values_name_the_key_and_the_problem() {
        for (text, key, says) in [
            (
                "[client]\nlocal_listen_port = 1\nconnection_pool_size = \"atuo\"\n",
                "client.connection_pool_size",
                "or \"auto\"",
            ),
            (
                "[client]\nlocal_listen_port = 1\npool_min = 4\n",
                "client.pool_min",
                "only with connection_pool_size = \"auto\"",
            ),
            (
                "[client]\nlocal_listen_port = 1\nconnection_pool_size = 8\npool_max = 4\n",
                "client.pool_max",
                "only with",
            ),
            (
                "[client]\nlocal_listen_port = 1\nconnection_pool_size = \"auto\"\npool_min = 8\n\
                 pool_max = 4\n",
                "client.pool_min",
                "above client.pool_max (4)",
            ),
            (
                "[client]\nlocal_listen_port = 1\nconnection_pool_size = \"auto\"\npool_max = 300\n",
                "client.pool_max",
                "256",
            ),
            (
                "[client]\nlocal_listen_port = 1\nconnection_pool_size = \"auto\"\npool_min = 0\n",
                "client.pool_min",
                "",
            ),
            (
                "[server]\nconnection_pool_size = \"auto\"\n",
                "server.connection_pool_size",
                "a client setting",
            ),
        ] {
            let error = load_text(text, None).unwrap_err();
            assert_eq!(error.key(), Some(key), "{text}: {error}");
            assert!(error.to_string().contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn server_routes_allowed_targets_and_defaults_the_rest() {
        let config = load_text(
            "psk = \"a server key of 32 bytes or longer\"\n\
             [server]\n[[server.forward]]\ntarget = \"db.internal:5432\"\n",
            None,
        )
        .unwrap();
        assert!(!config.runtime.engine.allow_unauthenticated);
        let server = config.server().unwrap();
        let allowed = parse_target("db.internal:5432").unwrap();
        let refused = parse_target("10.9.9.9:22").unwrap();
        assert_eq!(server.target_for(Some(&allowed)), allowed);
        let backend = TargetAddr::Socket(defaults::SERVER_BACKEND);
        assert_eq!(server.target_for(Some(&refused)), backend);
        assert_eq!(server.target_for(None), backend);
    }

    #[test]
    fn a_keyless_server_with_forward_targets_refuses_to_start() {
        let error = load_text(
            "[server]\nlisten_ip = \"0.0.0.0\"\n[[server.forward]]\ntarget = \"db.internal:5432\"\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("psk"), "{error}");
        assert!(error.contains("needs a key"), "{error}");
        assert!(error.contains("mtcpd genkey"), "{error}");
        let short = load_text(
            "psk = \"0123456789abcdef0123456789abcde\"\n[server]\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(short.contains("mtcpd genkey"), "{short}");
    }

    #[test]
    fn command_line_overrides_win_over_the_file() {
        let config = load_str(
            "mode = \"server\"\ncores = 2\nio = \"uring\"\nmetrics_listen = \"127.0.0.1:9100\"\n\
             [server]\n",
            ConfigOrigin::File("t.toml".into()),
            Path::new("."),
            CommandLineOverrides {
                role: Some(Role::Server),
                cores: Some(3),
                io: Some(IoChoice::Mio),
                metrics_listen: Some("127.0.0.1:9200".parse().unwrap()),
            },
        )
        .unwrap();
        assert_eq!(config.runtime.workers, 3);
        assert_eq!(config.runtime.io, IoChoice::Mio);
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9200".parse().unwrap())
        );
    }

    #[test]
    fn metrics_are_off_by_default_and_metrics_listen_is_an_address() {
        let off = load_text("mode = \"server\"\n[server]\n", None).unwrap();
        assert_eq!(off.metrics_listen, None);
        let on = load_text(
            "mode = \"server\"\nmetrics_listen = \"[::1]:9100\"\n[server]\n",
            None,
        )
        .unwrap();
        assert_eq!(on.metrics_listen, Some("[::1]:9100".parse().unwrap()));
        assert!(on.to_string().contains("metrics_listen = \"[::1]:9100\""));
        for bad in [
            "\"localhost:9100\"",
            "\"127.0.0.1\"",
            "\"127.0.0.1:0\"",
            "9100",
        ] {
            let text = format!("mode = \"server\"\nmetrics_listen = {bad}\n[server]\n");
            assert_eq!(error_key(&text, None), "metrics_listen", "{bad}");
        }
    }

    #[test]
    fn log_level_is_a_log_filter() {
        let unset = load_text("mode = \"server\"\n[server]\n", None).unwrap();
        assert_eq!(unset.log_level, None);
        let set = load_text(
            "mode = \"server\"\nlog_level = \" mtcpd=debug,info \"\n[server]\n",
            None,
        )
        .unwrap();
        assert_eq!(set.log_level.as_deref(), Some("mtcpd=debug,info"));
        assert!(set.to_string().contains("log_level = \"mtcpd=debug,info\""));
        for bad in ["\"\"", "\"mtcpd=loud\"", "3"] {
            let text = format!("mode = \"server\"\nlog_level = {bad}\n[server]\n");
            assert_eq!(error_key(&text, None), "log_level", "{bad}");
        }
    }

    #[test]
    fn server_uses_every_core_and_client_one_by_default_and_notsent_lowat_is_read() {
        let load = |text: &str| {
            load_str(
                text,
                ConfigOrigin::File("t.toml".into()),
                Path::new("."),
                CommandLineOverrides::default(),
            )
            .unwrap()
        };
        let server = load("[server]\n");
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(server.runtime.workers, cores);
        assert_eq!(server.runtime.tunnel_sockets.notsent_lowat, 128 * 1024);
        let client = load(
            "socket_notsent_lowat = \"1MiB\"\n[client]\nlocal_listen_port = 7000\nserver_ip = \"127.0.0.1\"\n",
        );
        assert_eq!(client.runtime.workers, 1);
        assert_eq!(client.runtime.tunnel_sockets.notsent_lowat, 1 << 20);
    }

    #[test]
    fn validation_errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("[server]\nlisten_port = 0\n", "server.listen_port"),
            ("[server]\nbackend_port = 65536\n", "server.backend_port"),
            ("[server]\nlisten_port = 9000\n", "server.backend_port"),
            (
                "[client]\nlocal_listen_port = 1\nserver_ip = \"x\"\n",
                "client.server_ip",
            ),
            (
                "[client]\nlocal_listen_ip = \"127.0.0.1\"\n",
                "client.local_listen_port",
            ),
            ("[client]\nserver_port = 8000\n", "client.forward"),
            (
                "[client]\nlocal_listen_port = 7000\n[[client.forward]]\nlisten = \"127.0.0.1:7000\"\n",
                "client.forward[0].listen",
            ),
            (
                "[client]\n[[client.forward]]\nlisten = \"127.0.0.1:1\"\n[[client.forward]]\nlisten = \"127.0.0.1:2\"\ntarget = \"bad target\"\n",
                "client.forward[1].target",
            ),
            (
                "[client]\n[[client.forward]]\nlisten = \"127.0.0.1:1\"\nname = \"a\"\n[[client.forward]]\nlisten = \"127.0.0.1:2\"\nname = \"a\"\n",
                "client.forward[1].name",
            ),
            (
                "[server]\n[[server.forward]]\ntarget = \"x:0\"\n",
                "server.forward[0].target",
            ),
            (
                "[server]\nconnection_pool_size = 257\n",
                "server.connection_pool_size",
            ),
            ("[server]\nbuffer_size = \"100B\"\n", "server.buffer_size"),
            (
                "[server]\n[limits]\nstream_window = \"8GiB\"\n",
                "limits.stream_window",
            ),
            (
                "[server]\n[limits]\nstream_window = \"512MiB\"\n",
                "limits.session_window",
            ),
            (
                "[server]\n[limits]\nmax_frame_payload = \"512KiB\"\n",
                "limits.max_frame_payload",
            ),
            (
                "[server]\n[limits]\nkeepalive_interval = \"2m\"\n",
                "limits.keepalive_interval",
            ),
            (
                "[server]\n[limits]\nredial_backoff_min = \"1m\"\nredial_backoff_max = \"1s\"\n",
                "limits.redial_backoff_max",
            ),
            (
                "[server]\n[limits]\nsession_grace = \"0s\"\n",
                "limits.session_grace",
            ),
            (
                "[server]\n[limits]\nmax_tunnels = 300\n",
                "limits.max_tunnels",
            ),
            (
                "[server]\n[limits]\nhandshake_timeout = \"1h\"\n",
                "limits.handshake_timeout",
            ),
            (
                "[server]\n[limits]\nhandshake_timeout = 10\n",
                "limits.handshake_timeout",
            ),
            (
                "[server]\n[limits]\nmax_sessions = 0\n",
                "limits.max_sessions",
            ),
            (
                "[server]\n[limits]\nsession_window = \"lots\"\n",
                "limits.session_window",
            ),
            ("cores = 0\n[server]\n", "cores"),
            ("congestion = \"b b r\"\n[server]\n", "congestion"),
            ("io = \"epoll\"\n[server]\n", "io"),
            ("socket_send_buffer = 1\n[server]\n", "socket_send_buffer"),
            (
                "socket_notsent_lowat = \"1KiB\"\n[server]\n",
                "socket_notsent_lowat",
            ),
            ("psk = \"short\"\n[server]\n", "psk"),
            ("mode = \"client\"\n[server]\n", "client"),
            (
                "[client]\nlocal_listen_port = 1\nserver_port = 8000\nservers = [\"a:1\"]\n",
                "client.servers",
            ),
            (
                "[client]\nlocal_listen_port = 1\nservers = []\n",
                "client.servers",
            ),
            (
                "[client]\nlocal_listen_port = 1\nservers = [\"a:1\", \"b\"]\n",
                "client.servers[1]",
            ),
            (
                "[client]\nlocal_listen_port = 1\nservers = [\"a:1\", \"A:1\"]\n",
                "client.servers[1]",
            ),
            ("[server]\n[client]\n", "mode"),
            ("[limits]\n", "mode"),
            ("[server]\n[limits]\nmax_tunels = 3\n", "limits.max_tunels"),
            (
                "[client]\n[[client.forward]]\ntarget = \"a:1\"\n",
                "client.forward[0].listen",
            ),
        ];
        for (text, expected_key) in cases {
            assert_eq!(&error_key(text, None), expected_key, "config:\n{text}");
        }
    }

    #[test]
    fn mode_must_agree_with_the_command_line_role() {
        assert_eq!(
            error_key("mode = \"server\"\n[server]\n", Some(Role::Client)),
            "mode"
        );
        assert_eq!(error_key("[server]\n", Some(Role::Client)), "client");
    }

    #[test]
    fn check_output_shows_every_engine_value() {
        let files = [
            ("[server]\n", Role::Server),
            ("[client]\nlocal_listen_port = 7000\n", Role::Client),
        ];
        for (text, role) in files {
            let config = load_text(text, None).unwrap();
            let printed = config.to_string();
            let mut settings = config.runtime.engine.settings();
            settings.extend(config.runtime.settings());
            for setting in settings {
                // A file key is printed in its table; the rest as comments by engine name.
                let shown = match file_key(setting.key, role) {
                    Some(key) => key.rsplit('.').next().unwrap_or_default().to_owned(),
                    None => setting.key.to_owned(),
                };
                let found = printed.lines().any(|line| {
                    line.starts_with(&format!("{shown} "))
                        || line.starts_with(&format!("# {shown}"))
                });
                assert!(
                    found,
                    "{role}: `{}` is not printed:\n{printed}",
                    setting.key
                );
            }
        }
    }

    #[test]
    fn engine_range_errors_name_the_file_key_and_line() {
        let error = load_text(
            "[server]\nlisten_port = 8001\n\n[limits]\nhandshake_timeout = \"1h\"\n",
            None,
        )
        .unwrap_err();
        let ConfigFileError::Invalid { key, position, .. } = &error else {
            panic!("expected an invalid key, got {error:?}");
        };
        assert_eq!(key, "limits.handshake_timeout");
        assert_eq!(position.map(|position| position.line), Some(5));
        let message = error.to_string();
        assert!(
            message.starts_with("test.toml:5:1: key `limits.handshake_timeout`"),
            "{message}"
        );
        assert!(message.contains("between 100 ms and 5 min"), "{message}");
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let error = load_text("[server\n", None).unwrap_err();
        let ConfigFileError::Syntax { position, .. } = &error else {
            panic!("expected a syntax error, got {error:?}");
        };
        assert_eq!(position.map(|position| position.line), Some(1));
        assert!(error.to_string().starts_with("test.toml:1:"), "{error}");
    }

    #[test]
    fn resolved_config_never_prints_the_psk() {
        let config = load_text(
            "psk = \"correct horse battery staple, again and again\"\n[server]\n",
            None,
        )
        .unwrap();
        let printed = format!("{config}\n{config:?}");
        assert!(!printed.contains("horse"), "{printed}");
        assert!(printed.contains("redacted"));
        assert_eq!(
            config.runtime.engine.psk,
            b"correct horse battery staple, again and again"
        );
    }
}
