//! Loads every fixture in `tests/fixtures/` and every file in the top-level `config/`
//! through the library: good files resolve to the expected values, bad files fail with
//! an error naming the exact key.

use std::path::{Path, PathBuf};

use mtcpd::config::{
    CommandLineOverrides, ConfigFileError, ConfigOrigin, IoChoice, LoadRequest, Role, TargetAddr,
    load, parse_target,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load_file(
    path: PathBuf,
    role: Option<Role>,
) -> Result<mtcpd::config::DaemonConfig, ConfigFileError> {
    load(&LoadRequest {
        file: Some(path),
        overrides: CommandLineOverrides {
            role,
            ..CommandLineOverrides::default()
        },
    })
}

#[test]
fn seed_server_loads_with_and_without_mode() {
    for name in ["good_seed_server.toml", "good_seed_server_no_mode.toml"] {
        for role in [None, Some(Role::Server)] {
            let config = load_file(fixture(name), role).unwrap();
            assert_eq!(config.role, Role::Server, "{name}");
            let server = config.server().unwrap();
            assert_eq!(server.listen.to_string(), "0.0.0.0:8000");
            assert_eq!(server.default_backend.to_string(), "127.0.0.1:9000");
            assert_eq!(config.runtime.engine.pool_size, 4);
            assert_eq!(config.runtime.read_chunk, 65536);
            assert!(server.allowed_targets.is_empty());
            assert_eq!(config.origin, ConfigOrigin::File(fixture(name)));
        }
    }
}

#[test]
fn seed_client_loads_with_and_without_mode() {
    for name in ["good_seed_client.toml", "good_seed_client_no_mode.toml"] {
        for role in [None, Some(Role::Client)] {
            let config = load_file(fixture(name), role).unwrap();
            assert_eq!(config.role, Role::Client, "{name}");
            let client = config.client().unwrap();
            assert_eq!(client.servers[0].to_string(), "127.0.0.1:8000");
            assert_eq!(config.runtime.engine.pool_size, 4);
            assert_eq!(config.runtime.read_chunk, 65536);
            assert!(config.runtime.engine.zero_rtt);
            assert_eq!(client.forwards.len(), 1);
            assert_eq!(
                client.forwards[0].forward.listen.to_string(),
                "127.0.0.1:7000"
            );
            assert_eq!(client.forwards[0].forward.target, None);
        }
    }
}

#[test]
fn pool_size_mismatch_with_the_server_is_fine() {
    let client = load_file(fixture("good_seed_client_pool_mismatch.toml"), None).unwrap();
    let server = load_file(fixture("good_seed_server.toml"), None).unwrap();
    assert_eq!(client.runtime.engine.pool_size, 16);
    assert_eq!(server.runtime.engine.pool_size, 4);
}

#[test]
fn rich_server_resolves_every_key() {
    let config = load_file(fixture("good_rich_server.toml"), None).unwrap();
    let runtime = &config.runtime;
    assert_eq!(runtime.engine.psk, b"this-is-a-test-psk-0123456789abcdef");
    assert_eq!(runtime.workers, 2);
    assert_eq!(runtime.io, IoChoice::Mio);
    assert_eq!(runtime.tunnel_sockets.congestion.as_deref(), Some("cubic"));
    assert_eq!(runtime.tunnel_sockets.send_buffer, Some(4 << 20));
    assert_eq!(runtime.tunnel_sockets.recv_buffer, Some(4 << 20));
    let server = config.server().unwrap();
    assert_eq!(runtime.engine.pool_size, 16, "capped by limits.max_tunnels");
    assert_eq!(runtime.read_chunk, 128 * 1024);
    assert_eq!(server.allowed_targets.len(), 3);
    assert_eq!(server.allowed_targets[0].name.as_deref(), Some("mysql"));
    let requested = parse_target("db.internal:5432").unwrap();
    assert_eq!(server.target_for(Some(&requested)), requested);
    let engine = &runtime.engine;
    assert_eq!(runtime.max_sessions, 16);
    assert_eq!(engine.max_streams, 100_000);
    assert_eq!(engine.stream_window, 1 << 20);
    assert_eq!(engine.session_window, 64 << 20);
    assert_eq!(engine.max_frame_payload, 64 * 1024);
    assert_eq!(engine.handshake_timeout.as_secs(), 5);
    assert_eq!(engine.tunnel_idle_timeout.as_secs(), 120);
    assert_eq!(engine.redial_backoff_min.as_millis(), 100);
    assert_eq!(runtime.drain_timeout.as_secs(), 0);
}

#[test]
fn multi_forward_client_keeps_every_forward_in_order() {
    let config = load_file(fixture("good_multi_forward_client.toml"), None).unwrap();
    let client = config.client().unwrap();
    let listens: Vec<String> = client
        .forwards
        .iter()
        .map(|f| f.forward.listen.to_string())
        .collect();
    assert_eq!(listens, ["127.0.0.1:7000", "127.0.0.1:3306", "[::1]:5432"]);
    assert_eq!(client.forwards[0].forward.target, None);
    let host = TargetAddr::Host {
        host: "db.internal".into(),
        port: 5432,
    };
    assert_eq!(client.forwards[2].forward.target, Some(host.to_string()));
    assert_eq!(client.servers[0].to_string(), "198.51.100.5:8000");
}

/// (fixture, role from the command line, key the error must name, text the message must contain)
const BAD_FIXTURES: &[(&str, Option<Role>, &str, &str)] = &[
    (
        "bad_unknown_key.toml",
        None,
        "server.listen_addr",
        "unknown field",
    ),
    (
        "bad_port.toml",
        None,
        "client.server_port",
        "between 1 and 65535",
    ),
    (
        "bad_ip.toml",
        None,
        "server.backend_ip",
        "not an IP address",
    ),
    ("bad_psk_and_psk_file.toml", None, "psk_file", "not both"),
    (
        "bad_missing_psk_file.toml",
        None,
        "psk_file",
        "no-such-key-file.psk",
    ),
    (
        "bad_pool_size_zero.toml",
        None,
        "client.connection_pool_size",
        "between 1 and 256",
    ),
    (
        "bad_mode_server.toml",
        Some(Role::Client),
        "mode",
        "mode = \"server\"",
    ),
    (
        "bad_wrong_type.toml",
        None,
        "client.enable_zero_rtt",
        "invalid type",
    ),
    (
        "bad_forward_target.toml",
        None,
        "client.forward[1].target",
        "not a target",
    ),
    (
        "bad_client_without_forward.toml",
        None,
        "client.forward",
        "at least one forward",
    ),
    (
        "bad_duration.toml",
        None,
        "limits.handshake_timeout",
        "not a duration",
    ),
    (
        "bad_allow_rule.toml",
        None,
        "server.allow[1]",
        "the network is 10.0.0.0/8",
    ),
    ("bad_allow_without_psk.toml", None, "psk", "allow list"),
    (
        "bad_socks5_half_credentials.toml",
        None,
        "client.socks5[0].password",
        "go together",
    ),
    (
        "bad_proxy_listen_taken.toml",
        None,
        "client.http_proxy[0].listen",
        "already used by client.socks5[0].listen",
    ),
];

#[test]
fn a_client_with_only_proxies_and_a_server_with_an_allow_list_load() {
    use mtcpd::config::ClientForward;
    use mtcpd_engine::runtime::ProxyKind;
    let config = load_file(fixture("good_proxy_client.toml"), None).unwrap();
    let client = config.client().unwrap();
    assert!(client.forwards.is_empty());
    let kinds: Vec<(String, &ProxyKind)> = client
        .proxies
        .iter()
        .map(|p| (p.listen.to_string(), &p.kind))
        .collect();
    assert_eq!(kinds.len(), 3);
    assert_eq!(
        kinds[0],
        (
            "127.0.0.1:1080".into(),
            &ProxyKind::Socks5 { credentials: None }
        )
    );
    assert!(
        matches!(kinds[1].1, ProxyKind::Socks5 { credentials: Some(c) } if c.username == "alice" && c.password == "s3cret")
    );
    assert_eq!(kinds[2], ("[::1]:3128".into(), &ProxyKind::Http));
    let _: Vec<ClientForward> = client.engine_forwards();
    let server = load_file(fixture("good_allow_server.toml"), None).unwrap();
    assert_eq!(
        server.server().unwrap().allow.to_string(),
        "[10.0.0.0/8:443, *.example.com:1-65535, 127.0.0.1:9000, [fd00::/8]:22]"
    );
}

#[test]
fn bad_fixtures_name_the_exact_key() {
    for (name, role, key, fragment) in BAD_FIXTURES {
        let error = load_file(fixture(name), *role).expect_err(name);
        assert_eq!(error.key(), Some(*key), "{name}: {error}");
        let message = error.to_string();
        assert!(message.contains(fragment), "{name}: {message}");
        assert!(
            message.contains(&fixture(name).display().to_string()),
            "{name}: the error must name the file: {message}"
        );
        assert!(message.contains(&format!("`{key}`")), "{name}: {message}");
    }
}

#[test]
fn syntax_errors_name_the_file_and_line() {
    let error = load_file(fixture("bad_syntax.toml"), None).unwrap_err();
    assert!(matches!(error, ConfigFileError::Syntax { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("{}:1:", fixture("bad_syntax.toml").display())),
        "{message}"
    );
}

#[test]
fn a_missing_config_file_is_named() {
    let error = load_file(fixture("does_not_exist.toml"), Some(Role::Server)).unwrap_err();
    assert!(
        matches!(error, ConfigFileError::Unreadable { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("does_not_exist.toml"));
}

#[test]
fn every_fixture_is_covered_by_a_test() {
    let covered: Vec<&str> = BAD_FIXTURES
        .iter()
        .map(|(name, ..)| *name)
        .chain(["bad_syntax.toml"])
        .collect();
    for entry in std::fs::read_dir(fixture("")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.starts_with("bad_") {
            assert!(
                covered.contains(&name.as_str()),
                "{name} is not in BAD_FIXTURES"
            );
        } else if name.starts_with("good_") {
            load_file(fixture(&name), None).unwrap_or_else(|error| panic!("{name}: {error}"));
        }
    }
}

#[test]
fn every_file_in_the_config_directory_loads() {
    let config_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&config_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|extension| extension != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let has_both_roles = text.contains("\n[server]") && text.contains("\n[client]");
        let roles: &[Option<Role>] = if has_both_roles {
            &[Some(Role::Server), Some(Role::Client)]
        } else {
            &[None]
        };
        for role in roles {
            load_file(path.clone(), *role)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            loaded += 1;
        }
    }
    assert!(
        loaded >= 4,
        "expected the seed files and the example, loaded {loaded}"
    );
}

#[test]
fn the_example_shows_the_defaults() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/mtcpd.example.toml");
    for role in [Role::Server, Role::Client] {
        let from_example = load_file(example.clone(), Some(role)).unwrap();
        let from_defaults = load(&LoadRequest {
            file: None,
            overrides: CommandLineOverrides {
                role: Some(role),
                ..CommandLineOverrides::default()
            },
        })
        .unwrap();
        assert_eq!(from_example.endpoint, from_defaults.endpoint, "{role}");
        assert_eq!(
            from_example.runtime.engine.settings(),
            from_defaults.runtime.engine.settings(),
            "{role}"
        );
        assert_eq!(
            from_example.runtime.settings(),
            from_defaults.runtime.settings(),
            "{role}"
        );
    }
}
