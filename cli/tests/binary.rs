//! Runs the real `mtcpd` binary: `check` on good and bad configs (exit codes, what goes to
//! stdout and stderr), the daemon commands before the runtime exists, and `--help`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mtcpd_testkit::process::ChildGuard;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn config_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config")
        .join(name)
}

fn mtcpd(arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mtcpd"))
        .args(arguments)
        .env_remove("MTCPD_IO")
        .env_remove("MTCPD_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("the mtcpd binary runs")
}

/// Holds the listen addresses of the built-in defaults and the seed server config
/// (127.0.0.1:7000, 0.0.0.0:8000), so a daemon started with them stops at once with "cannot
/// listen" instead of serving. Waits while another test holds them; if something outside the
/// tests holds one for long, the daemon fails on it just the same.
fn hold_default_listen_addresses() -> Vec<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut held = Vec::new();
    for addr in ["127.0.0.1:7000", "0.0.0.0:8000"] {
        loop {
            match TcpListener::bind(addr) {
                Ok(l) => {
                    held.push(l);
                    break;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(_) => break,
            }
        }
    }
    held
}

/// Runs a daemon command that should stop on its own (it cannot listen), killing it after a while
/// so a mistake fails the test instead of hanging it (and with the test, if that fails first).
fn run_daemon(command: &mut Command) -> Output {
    ChildGuard::spawn(command.stdout(Stdio::piped()).stderr(Stdio::piped()))
        .expect("the mtcpd binary runs")
        .output_within(Duration::from_secs(20))
        .expect("collect mtcpd output")
}

fn daemon(arguments: &[&str]) -> Output {
    run_daemon(
        Command::new(env!("CARGO_BIN_EXE_mtcpd"))
            .args(arguments)
            .env_remove("MTCPD_IO")
            .env_remove("MTCPD_CONFIG")
            .env_remove("RUST_LOG"),
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("fixture paths are UTF-8")
}

#[test]
fn check_accepts_the_seed_configs_and_prints_the_resolved_config() {
    let server = mtcpd(&["check", "-c", path_arg(&config_file("config.server.toml"))]);
    assert!(server.status.success(), "{}", text(&server.stderr));
    let stdout = text(&server.stdout);
    assert!(stdout.contains("mode = \"server\""), "{stdout}");
    assert!(stdout.contains("listen = \"0.0.0.0:8000\""), "{stdout}");
    assert!(
        stdout.contains("default_backend = \"127.0.0.1:9000\""),
        "{stdout}"
    );

    let client = mtcpd(&["check", "-c", path_arg(&config_file("config.client.toml"))]);
    assert!(client.status.success(), "{}", text(&client.stderr));
    assert!(text(&client.stdout).contains("[[client.forward]]"));
}

#[test]
fn check_takes_a_role_for_a_file_with_both_tables() {
    let example = config_file("mtcpd.example.toml");
    let without_role = mtcpd(&["check", "-c", path_arg(&example)]);
    assert_eq!(without_role.status.code(), Some(78));
    assert!(text(&without_role.stderr).contains("key `mode`"));
    for role in ["server", "client"] {
        let output = mtcpd(&["check", "-c", path_arg(&example), "--role", role]);
        assert!(output.status.success(), "{role}: {}", text(&output.stderr));
        assert!(text(&output.stdout).contains(&format!("mode = \"{role}\"")));
    }
}

#[test]
fn check_never_prints_the_psk() {
    let output = mtcpd(&[
        "check",
        "-c",
        path_arg(&fixture("good_multi_forward_client.toml")),
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let all = text(&output.stdout) + &text(&output.stderr);
    assert!(!all.contains("this-is-a-test-psk"), "{all}");
    assert!(all.contains("redacted"));
}

#[test]
fn check_rejects_bad_configs_naming_file_and_key() {
    let cases = [
        ("bad_port.toml", "client.server_port"),
        ("bad_unknown_key.toml", "server.listen_addr"),
        ("bad_missing_psk_file.toml", "psk_file"),
        ("bad_forward_target.toml", "client.forward[1].target"),
        ("bad_wrong_type.toml", "client.enable_zero_rtt"),
    ];
    for (name, key) in cases {
        let path = fixture(name);
        let output = mtcpd(&["check", "-c", path_arg(&path)]);
        assert_eq!(output.status.code(), Some(78), "{name}");
        assert!(
            output.stdout.is_empty(),
            "{name}: a bad config prints no config"
        );
        let stderr = text(&output.stderr);
        assert!(stderr.contains(&format!("key `{key}`")), "{name}: {stderr}");
        assert!(stderr.contains(path_arg(&path)), "{name}: {stderr}");
    }
}

#[test]
fn mode_conflicting_with_the_command_is_refused() {
    let path = fixture("bad_mode_server.toml");
    for arguments in [
        vec!["client", "-c", path_arg(&path)],
        vec!["--role", "client", "-c", path_arg(&path)],
        vec!["check", "--role", "client", "-c", path_arg(&path)],
    ] {
        let output = mtcpd(&arguments);
        assert_eq!(output.status.code(), Some(78), "{arguments:?}");
        assert!(text(&output.stderr).contains("key `mode`"), "{arguments:?}");
    }
}

/// The listen addresses are taken (see [`hold_default_listen_addresses`]), so these commands stop
/// right after starting the runtime instead of serving forever.
#[test]
fn daemon_commands_validate_the_config_then_start_the_runtime() {
    let _held = hold_default_listen_addresses();
    let seed_form = daemon(&[
        "server",
        "-c",
        path_arg(&config_file("config.server.toml")),
        "--io",
        "mio",
    ]);
    let role_form = daemon(&["--role", "client", "--cores", "1"]);
    // The seed's configs have no key: they still start, with a warning (a loud one for a
    // server listening beyond loopback).
    let seed_stderr = text(&seed_form.stderr);
    assert!(seed_stderr.contains("NO KEY"), "{seed_stderr}");
    assert!(seed_stderr.contains("mtcpd genkey"), "{seed_stderr}");
    let client_stderr = text(&role_form.stderr);
    assert!(
        client_stderr.contains("no psk or psk_file set"),
        "{client_stderr}"
    );
    for output in [seed_form, role_form] {
        assert_eq!(output.status.code(), Some(1));
        let stderr = text(&output.stderr);
        assert!(stderr.contains("configuration loaded"), "{stderr}");
        assert!(stderr.contains("I/O driver selected"), "{stderr}");
        assert!(stderr.contains("cannot listen"), "{stderr}");
    }
}

#[test]
fn defaults_are_announced_when_no_file_is_given() {
    let _held = hold_default_listen_addresses();
    let output = daemon(&["--role", "server"]);
    let stderr = text(&output.stderr);
    assert!(stderr.contains("built-in defaults"), "{stderr}");
    assert!(stderr.contains("127.0.0.1:8000"), "{stderr}");
    assert!(stderr.contains("127.0.0.1:9000"), "{stderr}");
}

/// The `driver` the engine logged as selected ("I/O driver selected driver=..."), if any.
fn selected_driver(stderr: &str) -> Option<String> {
    let line = stderr.lines().find(|l| l.contains("I/O driver selected"))?;
    let value = line.split("driver=").nth(1)?.split_whitespace().next()?;
    Some(value.trim_matches('"').to_string())
}

/// A server daemon (which stops at once: its listen address is held) with `MTCPD_IO=value`
/// and `arguments`; its stderr.
fn server_with_io_env(value: &str, arguments: &[&str]) -> Output {
    run_daemon(
        Command::new(env!("CARGO_BIN_EXE_mtcpd"))
            .args(["--role", "server"])
            .args(arguments)
            .env("MTCPD_IO", value)
            .env("RUST_LOG", "info")
            .env_remove("MTCPD_CONFIG"),
    )
}

/// The engine reads MTCPD_IO when the driver is left at auto; an explicit --io wins over it.
#[test]
fn io_driver_comes_from_the_environment_unless_io_is_given() {
    let _held = hold_default_listen_addresses();
    for (value, arguments, expected) in [
        ("mio", &[][..], "mio"),
        ("mio", &["--io", "auto"][..], "mio"),
        ("uring", &["--io", "mio"][..], "mio"),
    ] {
        let stderr = text(&server_with_io_env(value, arguments).stderr);
        assert_eq!(
            selected_driver(&stderr).as_deref(),
            Some(expected),
            "MTCPD_IO={value} {arguments:?}: {stderr}"
        );
    }
}

#[test]
fn a_bad_mtcpd_io_value_stops_the_daemon_with_a_clear_error() {
    let _held = hold_default_listen_addresses();
    let output = server_with_io_env("epoll", &[]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("MTCPD_IO=\"epoll\"") && stderr.contains("use mio, uring or auto"),
        "{stderr}"
    );
    assert_eq!(selected_driver(&stderr), None, "{stderr}");
    // An explicit --io never reads it.
    let output = server_with_io_env("epoll", &["--io", "mio"]);
    assert_eq!(
        selected_driver(&text(&output.stderr)).as_deref(),
        Some("mio")
    );
}

#[test]
fn rust_log_controls_logging() {
    let _held = hold_default_listen_addresses();
    let quiet = run_daemon(
        Command::new(env!("CARGO_BIN_EXE_mtcpd"))
            .args(["--role", "server"])
            .env("RUST_LOG", "off"),
    );
    let stderr = text(&quiet.stderr);
    assert!(!stderr.contains("configuration loaded"), "{stderr}");
    assert!(
        stderr.contains("cannot listen"),
        "errors still print: {stderr}"
    );

    let seed_filter = run_daemon(
        Command::new(env!("CARGO_BIN_EXE_mtcpd"))
            .args(["--role", "server"])
            .env("RUST_LOG", "mtcp=debug"),
    );
    assert!(text(&seed_filter.stderr).contains("configuration loaded"));
}

#[test]
fn usage_errors_exit_2() {
    for arguments in [
        vec![],
        vec!["server", "--role", "client"],
        vec!["--role", "server", "--io", "epoll"],
        vec!["--role", "server", "--cores", "0"],
    ] {
        let output = mtcpd(&arguments);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{arguments:?}: {}",
            text(&output.stderr)
        );
    }
}

#[test]
fn help_answers_the_real_questions() {
    let output = mtcpd(&["--help"]);
    assert!(output.status.success());
    let help = text(&output.stdout);
    for needed in [
        "server",
        "client",
        "check",
        "--role",
        "--cores",
        "--io",
        "-c, --config",
        "127.0.0.1:8000",
        "127.0.0.1:9000",
        "127.0.0.1:7000",
        "pool of 8",
        "mtcpd config-reference",
        "RUST_LOG",
        "MTCPD_IO",
        "Exit status",
    ] {
        assert!(help.contains(needed), "--help lacks {needed:?}:\n{help}");
    }
    let short = mtcpd(&["-h"]);
    assert!(short.status.success());
    assert!(text(&short.stdout).contains("--help"));
}

#[test]
fn version_prints() {
    let output = mtcpd(&["--version"]);
    assert!(output.status.success());
    assert!(text(&output.stdout).starts_with("mtcpd "));
}
