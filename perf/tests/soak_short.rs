//! The soak, bounded (issue 10 item 6): `mtcp-perf soak` for 12 s of churn (200 connections in
//! flight, 64 KiB each way, verified), a peak of 1,000 for 4 s and 8 s quiet, through a real
//! mtcpd pair on each I/O driver. Checks: every connection verified, and both daemons' RSS and
//! descriptors back to their steady level once the peak is over. (Flatness over time is the
//! long run's, `make soak`: over 12 s a sample moves with the load more than any leak could.)
//!
//! The `mtcpd` binary is the one built next to `mtcp-perf` (the workspace test run builds
//! both); the test fails, naming it, when it is missing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use mtcpd_testkit::daemon::Daemon;
use mtcpd_testkit::driver_tests;
use mtcpd_testkit::ports::{listening_within, reserve_port};
use mtcpd_testkit::process::ChildGuard;
use mtcpd_testkit::tempdir::TempDir;

const PERF: &str = env!("CARGO_BIN_EXE_mtcp-perf");
const KEY: &str = "soak-test-key-0123456789abcdef-0123456789";

fn mtcpd() -> PathBuf {
    let path = std::path::Path::new(PERF).with_file_name("mtcpd");
    assert!(
        path.exists(),
        "{} is missing: build the workspace's binaries (cargo build -p mtcpd with this profile)",
        path.display()
    );
    path
}

fn wait_listening(addr: SocketAddr) {
    assert!(
        listening_within(addr, Duration::from_secs(20)),
        "nothing listens on {addr}"
    );
}

driver_tests! {
    /// Churn, a peak and a quiet spell: nothing fails and the peak's memory goes back.
    #[within(90)]
    fn soak_short_memory_goes_back(io) {
        let dir = TempDir::new("soak");
        let ports = [reserve_port(), reserve_port(), reserve_port()];
        let (echo, tunnel, app) = (ports[0].port(), ports[1].port(), ports[2].port());
        let _echo = ChildGuard::spawn(
            Command::new(PERF)
                .args(["echo-mio", "-l", &format!("127.0.0.1:{echo}"), "--max-time", "90s"])
                .stdout(Stdio::null()),
        )
        .expect("spawn echo-mio");
        let server = format!(
            "mode = \"server\"\npsk = \"{KEY}\"\n[server]\nlisten_ip = \"127.0.0.1\"\n\
             listen_port = {tunnel}\nbackend_ip = \"127.0.0.1\"\nbackend_port = {echo}\n"
        );
        let client = format!(
            "mode = \"client\"\npsk = \"{KEY}\"\n[client]\nlocal_listen_ip = \"127.0.0.1\"\n\
             local_listen_port = {app}\nserver_ip = \"127.0.0.1\"\nserver_port = {tunnel}\n"
        );
        let daemon = |role: &str, config: &str| {
            Daemon::launch(mtcpd(), &dir, role, role, config)
                .io(io)
                .log_filter("warn")
                .spawn()
        };
        let server = daemon("server", &server);
        wait_listening(SocketAddr::from(([127, 0, 0, 1], tunnel)));
        let client = daemon("client", &client);
        wait_listening(SocketAddr::from(([127, 0, 0, 1], app)));
        let csv = dir.0.join("soak.csv");
        let out = ChildGuard::spawn(
            Command::new(PERF)
                .args(["soak", "-c", &format!("127.0.0.1:{app}")])
                .args(["--client-pid", &client.pid().expect("pid").to_string()])
                .args(["--server-pid", &server.pid().expect("pid").to_string()])
                .args(["--concurrency", "200", "-t", "12s", "--interval", "1s"])
                .args(["--peak-concurrency", "1000", "--peak-time", "4s", "--quiet", "8s"])
                .arg("--csv")
                .arg(&csv)
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        )
        .expect("spawn soak")
        .output_within(Duration::from_secs(80))
        .expect("soak output");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let verdict = |what: &str| {
            text.lines()
                .filter(|l| l.contains(what))
                .map(|l| l.starts_with("ok"))
                .collect::<Vec<_>>()
        };
        assert_eq!(verdict("verified"), [true], "{text}");
        assert_eq!(verdict("RSS went back after the peak"), [true, true], "{text}");
        assert_eq!(verdict("descriptors back after the peak"), [true, true], "{text}");
        let rows = std::fs::read_to_string(&csv).expect("csv").lines().count();
        assert!(rows >= 20, "a sample a second: {rows} rows\n{text}");
    }
}
