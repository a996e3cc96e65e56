//! Keys through the real `mtcpd` binary: `genkey` (stdout, and a 0600 file a config can use),
//! a keyless server with forward targets refused at start, short keys refused with a pointer to
//! `genkey`.

use std::path::Path;
use std::process::{Command, Output};

use mtcpd_testkit::tempdir::TempDir;

fn mtcpd(arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mtcpd"))
        .args(arguments)
        .env_remove("MTCPD_IO")
        .env_remove("MTCPD_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("the mtcpd binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

const SERVER_WITH_FORWARD: &str = "mode = \"server\"\n[server]\nlisten_ip = \"127.0.0.1\"\n\
                                   [[server.forward]]\ntarget = \"127.0.0.1:5432\"\n";

#[test]
fn genkey_prints_a_key_a_config_accepts() {
    let output = mtcpd(&["genkey"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let key = stdout.trim_end();
    assert_eq!(stdout, format!("{key}\n"), "only the key on stdout");
    assert_eq!(key.len(), 64);
    assert!(key.bytes().all(|c| c.is_ascii_hexdigit()), "{key}");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("psk = "), "{stderr}");
    assert!(stderr.contains("both"), "{stderr}");
    assert_ne!(
        text(&mtcpd(&["genkey"]).stdout),
        stdout,
        "a fresh key each time"
    );

    let dir = TempDir::new("keys");
    let config = dir.file("s.toml", &format!("psk = \"{key}\"\n{SERVER_WITH_FORWARD}"));
    let check = mtcpd(&["check", "-c", arg(&config)]);
    assert!(check.status.success(), "{}", text(&check.stderr));
}

#[test]
fn genkey_out_writes_a_private_file_for_psk_file_and_never_overwrites() {
    let dir = TempDir::new("keys");
    let key_file = dir.0.join("mtcpd.psk");
    let output = mtcpd(&["genkey", "--out", arg(&key_file)]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(output.stdout.is_empty(), "the key is not printed");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("psk_file"), "{stderr}");
    assert!(stderr.contains(arg(&key_file)), "{stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file)
            .expect("the key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
    let written = std::fs::read_to_string(&key_file).expect("the key file");
    assert_eq!(written.trim_end().len(), 64);

    let config = dir.file(
        "s.toml",
        &format!("psk_file = \"mtcpd.psk\"\n{SERVER_WITH_FORWARD}"),
    );
    let check = mtcpd(&["check", "-c", arg(&config)]);
    assert!(check.status.success(), "{}", text(&check.stderr));

    let again = mtcpd(&["genkey", "--out", arg(&key_file)]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("must not exist"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(std::fs::read_to_string(&key_file).expect("kept"), written);
}

#[test]
fn a_keyless_server_with_forward_targets_refuses_to_start() {
    let dir = TempDir::new("keys");
    let config = dir.file("s.toml", SERVER_WITH_FORWARD);
    let output = mtcpd(&["server", "-c", arg(&config)]);
    assert_eq!(output.status.code(), Some(78));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("key `psk`"), "{stderr}");
    assert!(stderr.contains("needs a key"), "{stderr}");
    assert!(stderr.contains("mtcpd genkey"), "{stderr}");
    assert!(
        !stderr.contains("I/O driver selected"),
        "stopped before the runtime: {stderr}"
    );
}

#[test]
fn a_short_key_is_refused_with_a_pointer_to_genkey() {
    let dir = TempDir::new("keys");
    let config = dir.file(
        "c.toml",
        "mode = \"client\"\npsk = \"only-thirty-one-bytes-long-key!\"\n[client]\n\
         local_listen_port = 7000\n",
    );
    let output = mtcpd(&["check", "-c", arg(&config)]);
    assert_eq!(output.status.code(), Some(78));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("got 31 bytes"), "{stderr}");
    assert!(stderr.contains("mtcpd genkey"), "{stderr}");
}
