//! Shared helpers for the integration tests: the binary's path, a server process stopped when
//! its test ends (the test kit's `ChildGuard`), and running a client with `--json`.
#![allow(dead_code)]

use mtcpd_testkit::process::ChildGuard;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_mtcp-perf");

/// A running `mtcp-perf server`; stopped on drop, even when its test fails.
pub struct Server {
    pub process: ChildGuard,
    pub addr: String,
}

impl Server {
    /// Start a server on an ephemeral loopback port and learn its address.
    pub fn start() -> Server {
        let (process, addr) =
            spawn_listening(&["server", "-l", "127.0.0.1:0", "--max-time", "120s"]);
        Server { process, addr }
    }
}

/// Runs `mtcp-perf ARGS` (a command listening on 127.0.0.1:0) and reads the address from its
/// first line, "mtcp-perf <command> listening on ADDR ...". Stopped on drop.
pub fn spawn_listening(args: &[&str]) -> (ChildGuard, String) {
    let mut process = ChildGuard::spawn(Command::new(BIN).args(args).stdout(Stdio::piped()))
        .expect("spawn mtcp-perf")
        .with_grace(Duration::from_secs(2));
    let out = process
        .child_mut()
        .and_then(|child| child.stdout.take())
        .expect("its stdout");
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    let addr = line
        .split_whitespace()
        .nth(4)
        .expect("listening line")
        .to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{line}");
    (process, addr)
}

/// Run a client against `addr` with `--json` and return (success, parsed JSON).
pub fn client_json(addr: &str, args: &[&str]) -> (bool, Value) {
    let mut cmd = Command::new(BIN);
    cmd.args(["client", "-c", addr, "--json"]).args(args);
    run_json(cmd)
}

/// Run a prepared command that prints one JSON document.
pub fn run_json(mut cmd: Command) -> (bool, Value) {
    let out = cmd.output().expect("run client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "client output is not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

pub fn secs(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}
