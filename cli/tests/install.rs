//! Installing mtcpd and running it as a service, through the real Makefile and binary:
//! `make install` into a staging directory (DESTDIR) gives a working binary, the systemd units
//! and the starter configs (never overwriting one), `make uninstall` takes them away again; the
//! installed units start the installed binary with flags it accepts and a config it loads, pass
//! `systemd-analyze verify` and carry the hardening docs/OPERATIONS.md promises;
//! `mtcpd config-reference` prints the example file, which loads; the server keeps its
//! generated TLS key pair in systemd's `$STATE_DIRECTORY`.
//!
//! The Makefile installs the binary this test run built (`BINARY=`), so nothing is rebuilt.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use mtcpd::config::{Role, RuntimeOptions};
use mtcpd::exit_code;
use mtcpd_testkit::tempdir::TempDir;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// True when `program --version` runs; else says why the caller skips.
fn have(program: &str, for_what: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        eprintln!("SKIPPED {for_what}: `{program}` is not installed");
    }
    found
}

/// `make -C <repo> TARGET BINARY=<this run's mtcpd> POSTINSTALL=no ARGS...`, which must succeed.
fn make(target: &str, arguments: &[String]) -> Output {
    let output = Command::new("make")
        .arg("-C")
        .arg(repo_root())
        .arg(target)
        .arg(format!("BINARY={}", env!("CARGO_BIN_EXE_mtcpd")))
        .arg("POSTINSTALL=no")
        .args(arguments)
        // Not the jobserver of a `make test` this may run under.
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .output()
        .expect("run make");
    assert!(
        output.status.success(),
        "make {target} {arguments:?}:\n{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    output
}

fn run(program: &Path, arguments: &[&str]) -> Output {
    Command::new(program)
        .args(arguments)
        .env_remove("MTCPD_CONFIG")
        .env_remove("MTCPD_IO")
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

fn example_file() -> String {
    std::fs::read_to_string(repo_root().join("config/mtcpd.example.toml")).expect("example")
}

#[test]
fn make_install_into_destdir_gives_a_working_binary_and_uninstall_removes_it() {
    if !have("make", "make install") {
        return;
    }
    let dir = TempDir::new("install");
    let destdir = format!("DESTDIR={}", dir.0.display());
    make("install", std::slice::from_ref(&destdir));

    let staged = |path: &str| dir.0.join(path.trim_start_matches('/'));
    let binary = staged("/usr/local/bin/mtcpd");
    let version = run(&binary, &["--version"]);
    assert!(version.status.success(), "{}", text(&version.stderr));
    assert!(text(&version.stdout).starts_with("mtcpd "));
    let reference = run(&binary, &["config-reference"]);
    assert!(reference.status.success());
    assert_eq!(text(&reference.stdout), example_file());
    for installed in [
        "/usr/local/lib/systemd/system/mtcpd-server.service",
        "/usr/local/lib/systemd/system/mtcpd-client.service",
        "/usr/local/lib/sysusers.d/mtcpd.conf",
        "/usr/local/share/doc/mtcpd/OPERATIONS.md",
        "/usr/local/share/doc/mtcpd/mtcpd.example.toml",
        "/etc/mtcpd/server.toml",
        "/etc/mtcpd/client.toml",
    ] {
        assert!(staged(installed).is_file(), "{installed} is not installed");
    }
    let unit =
        std::fs::read_to_string(staged("/usr/local/lib/systemd/system/mtcpd-server.service"))
            .expect("unit");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/mtcpd server -c /etc/mtcpd/server.toml"),
        "ExecStart names the installed paths, not the staging directory:\n{unit}"
    );

    // A second install keeps the operator's configuration.
    let edited = "# mine\nmode = \"server\"\n[server]\n";
    std::fs::write(staged("/etc/mtcpd/server.toml"), edited).expect("edit");
    let again = make("install", std::slice::from_ref(&destdir));
    assert!(
        text(&again.stdout).contains("kept"),
        "{}",
        text(&again.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(staged("/etc/mtcpd/server.toml")).expect("config"),
        edited
    );

    make("uninstall", std::slice::from_ref(&destdir));
    for removed in [
        "/usr/local/bin/mtcpd",
        "/usr/local/lib/systemd/system/mtcpd-server.service",
        "/usr/local/lib/systemd/system/mtcpd-client.service",
        "/usr/local/lib/sysusers.d/mtcpd.conf",
        "/usr/local/share/doc/mtcpd",
    ] {
        assert!(!staged(removed).exists(), "{removed} is still there");
    }
    assert!(
        staged("/etc/mtcpd/server.toml").is_file(),
        "uninstall keeps the configuration"
    );
}

/// A unit file as sections of `key → values` (a key may repeat).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line.split_once('=').expect("key=value");
        assert!(!section.is_empty(), "{line} outside a section");
        unit.entry(section.clone())
            .or_default()
            .entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    unit
}

/// The single value of `[Service] key`.
fn service<'a>(unit: &'a Unit, key: &str) -> &'a str {
    let values = unit
        .get("Service")
        .and_then(|service| service.get(key))
        .unwrap_or_else(|| panic!("[Service] has no {key}"));
    assert_eq!(values.len(), 1, "{key} is set {} times", values.len());
    &values[0]
}

fn seconds(value: &str) -> Duration {
    let number = value.strip_suffix('s').unwrap_or(value);
    Duration::from_secs(number.parse().expect("a number of seconds"))
}

/// Installs with PREFIX and SYSCONFDIR inside a temporary directory (so that ExecStart names a
/// binary that exists), then checks each unit against the binary and the engine's defaults.
#[test]
fn the_installed_units_start_the_installed_binary_with_a_config_it_loads() {
    if !have("make", "the unit checks") {
        return;
    }
    let dir = TempDir::new("units");
    let prefix = dir.0.join("usr");
    let sysconf = dir.0.join("etc");
    make(
        "install",
        &[
            format!("PREFIX={}", prefix.display()),
            format!("SYSCONFDIR={}", sysconf.display()),
        ],
    );
    let binary = prefix.join("bin/mtcpd");
    // The starter configs read the key next to them.
    let key = sysconf.join("mtcpd/mtcpd.psk");
    let config_for = |role: &str| sysconf.join(format!("mtcpd/{role}.toml"));
    let without_key = run(
        &binary,
        &["check", "-c", config_for("server").to_str().expect("utf-8")],
    );
    assert_eq!(
        without_key.status.code(),
        Some(i32::from(exit_code::CONFIG)),
        "no key yet: a configuration error, which the unit does not restart on: {}",
        text(&without_key.stderr)
    );
    let genkey = run(&binary, &["genkey", "--out", key.to_str().expect("utf-8")]);
    assert!(genkey.status.success(), "{}", text(&genkey.stderr));

    let drain = RuntimeOptions::for_role(Role::Server).drain_timeout;
    let mut unit_paths = Vec::new();
    for role in ["server", "client"] {
        let path = prefix.join(format!("lib/systemd/system/mtcpd-{role}.service"));
        let unit = parse_unit(&std::fs::read_to_string(&path).expect("installed unit"));
        unit_paths.push(path);

        let exec_start: Vec<&str> = service(&unit, "ExecStart").split_whitespace().collect();
        assert_eq!(
            Path::new(exec_start[0]),
            binary,
            "{role}: ExecStart's program"
        );
        let config = config_for(role);
        assert_eq!(
            exec_start[1..],
            [role, "-c", config.to_str().expect("utf-8")],
            "{role}"
        );
        // Every flag is one the binary accepts (clap stops at the first it does not know)...
        let mut with_help: Vec<&str> = exec_start[1..].to_vec();
        with_help.push("--help");
        let help = run(&binary, &with_help);
        assert!(help.status.success(), "{role}: {}", text(&help.stderr));
        // ...and the config it names loads for that role.
        let mut check = vec!["check", "--role"];
        check.extend_from_slice(&exec_start[1..]);
        let check = run(&binary, &check);
        assert!(check.status.success(), "{role}: {}", text(&check.stderr));

        for (key, expected) in [
            ("User", "mtcpd"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("CapabilityBoundingSet", ""),
            ("Restart", "on-failure"),
            ("ExecReload", "/bin/kill -HUP $MAINPID"),
            ("ConfigurationDirectory", "mtcpd"),
        ] {
            assert_eq!(service(&unit, key), expected, "{role}: {key}");
        }
        assert_eq!(
            service(&unit, "RestartPreventExitStatus"),
            exit_code::CONFIG.to_string(),
            "{role}: a configuration error is not restarted"
        );
        let nofile: u64 = service(&unit, "LimitNOFILE").parse().expect("a number");
        assert!(nofile >= 65_536, "{role}: LimitNOFILE {nofile}");
        let stop = seconds(service(&unit, "TimeoutStopSec"));
        assert!(
            stop > drain,
            "{role}: TimeoutStopSec {stop:?} must outlast drain_timeout {drain:?}"
        );
    }
    let server = parse_unit(&std::fs::read_to_string(&unit_paths[0]).expect("unit"));
    assert_eq!(
        service(&server, "StateDirectory"),
        "mtcpd",
        "the server keeps its TLS key pair in $STATE_DIRECTORY"
    );

    if !have("systemd-analyze", "systemd-analyze verify") {
        return;
    }
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .args(&unit_paths)
        .output()
        .expect("run systemd-analyze");
    assert!(
        verify.status.success() && verify.stderr.is_empty() && verify.stdout.is_empty(),
        "systemd-analyze verify: {}{}",
        text(&verify.stdout),
        text(&verify.stderr)
    );
}

#[test]
fn config_reference_prints_the_example_file_which_loads_for_either_role() {
    let binary = Path::new(env!("CARGO_BIN_EXE_mtcpd"));
    let output = run(binary, &["config-reference"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let printed = text(&output.stdout);
    assert_eq!(printed, example_file());
    let dir = TempDir::new("reference");
    let path = dir.file("reference.toml", &printed);
    for role in ["server", "client"] {
        let check = run(
            binary,
            &["check", "--role", role, "-c", path.to_str().expect("utf-8")],
        );
        assert!(check.status.success(), "{role}: {}", text(&check.stderr));
    }
    let help = text(&run(binary, &["--help"]).stdout);
    assert!(help.contains("mtcpd config-reference"), "{help}");
    assert!(!help.contains("config/mtcpd.example.toml"), "{help}");
}

/// Under the unit, systemd sets STATE_DIRECTORY (StateDirectory=mtcpd), the one directory the
/// service may write with ProtectSystem=strict: the generated key pair goes there, private.
#[test]
fn the_server_keeps_its_generated_key_pair_in_the_state_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("state");
    let state = dir.0.join("state");
    std::fs::create_dir(&state).expect("state dir");
    let config = dir.file("s.toml", "mode = \"server\"\n[server]\n");
    let fingerprint = |state: &Path| {
        Command::new(env!("CARGO_BIN_EXE_mtcpd"))
            .args(["fingerprint", "-c", config.to_str().expect("utf-8")])
            .env("STATE_DIRECTORY", state)
            .env_remove("MTCPD_CONFIG")
            .output()
            .expect("run mtcpd fingerprint")
    };
    let first = fingerprint(&state);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(text(&first.stderr).contains(state.to_str().expect("utf-8")));
    let private_key = state.join(mtcpd_engine::tls::identity::KEY_FILE_NAME);
    let mode = std::fs::metadata(&private_key)
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{}: mode {mode:o}", private_key.display());
    // A restart finds the same identity: a pinned fingerprint stays valid.
    let second = fingerprint(&state);
    assert_eq!(text(&second.stdout), text(&first.stdout));
}
