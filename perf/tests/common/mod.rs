//! Shared helpers for the integration tests: the binary's path, a server process guard that
//! always kills its child, and running a client with `--json`.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_mtcp-perf");

/// A running `mtcp-perf server`; killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Server {
    /// Start a server on an ephemeral loopback port and learn its address.
    pub fn start() -> Server {
        let mut child = Command::new(BIN)
            .args(["server", "-l", "127.0.0.1:0", "--max-time", "120s"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let out = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .expect("listening line")
            .to_string();
        assert!(addr.starts_with("127.0.0.1:"), "{line}");
        Server { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
