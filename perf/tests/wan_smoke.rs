//! CI smoke test of the WAN emulator: the lab comes up with 20 ms each way, traffic passes,
//! the measured RTT is about 2 × delay, and everything is torn down (no namespace with the
//! test's prefix remains, no process left) on a clean stop, on SIGINT and on a failing command.
//! Skips with a clear message when namespaces cannot be made here (not root, no /dev/net/tun,
//! no `ip`).

mod common;

use common::BIN;
use mtcpd_testkit::process::ChildGuard;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` not found".into());
    }
    // Can we really create a namespace (containers may forbid it)?
    static PROBE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = PROBE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let probe = format!("mtpskip{}-{k}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &probe])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    if !ok {
        return Some("cannot create network namespaces".into());
    }
    None
}

macro_rules! skip_unless_lab {
    () => {
        if let Some(why) = skip_reason() {
            eprintln!("skipped: WAN emulator test needs namespaces: {why}");
            return;
        }
    };
}

/// Namespaces of the lab called `prefix` (`prefix-a`, `prefix-b`).
fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_owned)
        .collect()
}

fn ns_has_process(ns: &str) -> bool {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| o.status.success() && !o.stdout.is_empty())
        .unwrap_or(false)
}

/// Owns a `wan up`/`wan run` child; on drop stops it (SIGTERM first, so that `wan run` also
/// ends its command's process group; SIGKILL after 10 s) and removes any leftovers.
struct LabGuard {
    name: String,
    child: Option<ChildGuard>,
}

impl LabGuard {
    fn spawn(name: &str, args: &[&str]) -> (LabGuard, mpsc::Receiver<String>) {
        let mut child = ChildGuard::spawn(
            Command::new(BIN)
                .arg("wan")
                .arg(args[0])
                .args(["--name", name])
                .args(&args[1..])
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        )
        .expect("spawn wan");
        let out = child
            .child_mut()
            .and_then(|c| c.stdout.take())
            .expect("the emulator's stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (
            LabGuard {
                name: name.into(),
                child: Some(child),
            },
            rx,
        )
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            c.signal(sig);
        }
    }

    /// Wait for the child to exit (bounded); returns its exit code.
    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let status = self.child.as_mut()?.wait_timeout(limit)?;
        self.child = None;
        Some(status.code().unwrap_or(-1))
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        // The child first (its guard stops it), then whatever it left behind.
        drop(self.child.take());
        let _ = Command::new(BIN)
            .args(["wan", "down", "--name", &self.name])
            .output();
    }
}

fn ready(rx: &mpsc::Receiver<String>) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("no ready line from the emulator");
        if let Some(rest) = line.strip_prefix("ready: ") {
            return rest
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        }
    }
}

fn get<'a>(kv: &'a [(String, String)], k: &str) -> &'a str {
    &kv.iter().find(|(key, _)| key == k).unwrap().1
}

#[test]
fn rtt_is_twice_the_delay_and_teardown_is_clean() {
    skip_unless_lab!();
    let name = format!("smk{}", std::process::id());
    let (mut lab, rx) = LabGuard::spawn(&name, &["up", "--delay", "20ms", "--max-time", "60s"]);
    let kv = ready(&rx);
    let (ns_a, ns_b, addr_b) = (get(&kv, "ns_a"), get(&kv, "ns_b"), get(&kv, "addr_b"));
    assert_eq!(namespaces_with_prefix(&name).len(), 2);

    let target = format!("{addr_b}:5201");
    let _server = ChildGuard::spawn(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                ns_b,
                BIN,
                "server",
                "-l",
                &target,
                "--max-time",
                "30s",
            ])
            .stdout(Stdio::null()),
    )
    .unwrap()
    .with_grace(Duration::from_secs(2));
    // Wait until the server answers (its start is asynchronous).
    let t = Instant::now();
    let (ok, v) = loop {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns", "exec", ns_a, BIN, "client", "-c", &target, "--json", "rr", "-n", "20",
        ]);
        let out = cmd.output().unwrap();
        if out.status.success() || t.elapsed() > Duration::from_secs(5) {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            break (out.status.success(), v);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(ok, "rr through the emulator failed: {v:#}");
    let p50 = v["result"]["latency"]["p50_us"].as_f64().unwrap() / 1000.0;
    let max = v["result"]["latency"]["max_us"].as_f64().unwrap() / 1000.0;
    eprintln!("rr p50 {p50:.2} ms, max {max:.2} ms (expected ≈ 40 ms)");
    assert!(
        (39.0..50.0).contains(&p50),
        "RTT p50 {p50} ms not ≈ 2×20 ms"
    );

    let mut cmd = Command::new("ip");
    cmd.args([
        "netns", "exec", ns_a, BIN, "client", "-c", &target, "--json", "ttfb", "-n", "5",
    ]);
    let (ok, v) = common::run_json(cmd);
    assert!(ok, "{v:#}");
    let conn = v["result"]["connect"]["p50_us"].as_f64().unwrap() / 1000.0;
    let ttfb = v["result"]["ttfb"]["p50_us"].as_f64().unwrap() / 1000.0;
    eprintln!("connect p50 {conn:.2} ms, ttfb p50 {ttfb:.2} ms");
    assert!((39.0..50.0).contains(&conn), "connect {conn} ms");
    assert!(
        (78.0..95.0).contains(&ttfb),
        "ttfb {ttfb} ms (2 RTT expected)"
    );

    lab.signal(libc::SIGTERM);
    let code = lab
        .wait(Duration::from_secs(15))
        .expect("emulator did not stop on SIGTERM");
    assert_eq!(code, 0);
    assert!(
        namespaces_with_prefix(&name).is_empty(),
        "namespaces left behind"
    );
}

#[test]
fn run_propagates_exit_code_and_cleans_up() {
    skip_unless_lab!();
    let name = format!("smr{}", std::process::id());
    let (mut lab, _rx) = LabGuard::spawn(
        &name,
        &[
            "run",
            "--delay",
            "1ms",
            "--",
            "sh",
            "-c",
            "ip netns exec $MTCP_WAN_NS_A true && exit 3",
        ],
    );
    let code = lab
        .wait(Duration::from_secs(20))
        .expect("wan run did not finish");
    assert_eq!(code, 3);
    assert!(
        namespaces_with_prefix(&name).is_empty(),
        "namespaces left behind"
    );
}

#[test]
fn sigint_tears_down_run_and_its_processes() {
    skip_unless_lab!();
    let name = format!("smi{}", std::process::id());
    // The command starts a long-lived process inside namespace A, then waits.
    let (mut lab, _rx) = LabGuard::spawn(
        &name,
        &[
            "run",
            "--",
            "sh",
            "-c",
            "ip netns exec $MTCP_WAN_NS_A sleep 300 & sleep 300",
        ],
    );
    // `run` prints its ready line on stderr; wait for the process inside namespace A.
    let t = Instant::now();
    while !ns_has_process(&format!("{name}-a")) {
        assert!(t.elapsed() < Duration::from_secs(15), "lab never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    lab.signal(libc::SIGINT);
    let code = lab
        .wait(Duration::from_secs(15))
        .expect("wan run did not stop on SIGINT");
    assert_ne!(code, 0);
    assert!(
        namespaces_with_prefix(&name).is_empty(),
        "namespaces left behind"
    );
}

#[test]
fn panic_and_setup_failure_leave_nothing_behind() {
    skip_unless_lab!();
    // A panic with the lab up still tears it down.
    let name = format!("smp{}", std::process::id());
    let (mut lab, _rx) = LabGuard::spawn(&name, &["up", "--test-panic"]);
    let code = lab
        .wait(Duration::from_secs(15))
        .expect("wan up did not exit after a panic");
    assert_ne!(code, 0);
    assert!(
        namespaces_with_prefix(&name).is_empty(),
        "namespaces left behind after a panic"
    );

    // A set-up failure (B's namespace already exists) removes what was created (A) and leaves
    // the pre-existing namespace alone.
    let name = format!("smf{}", std::process::id());
    let theirs = format!("{name}-b");
    assert!(
        Command::new("ip")
            .args(["netns", "add", &theirs])
            .status()
            .unwrap()
            .success()
    );
    let (mut lab, _rx) = LabGuard::spawn(&name, &["up"]);
    let code = lab
        .wait(Duration::from_secs(15))
        .expect("wan up did not fail");
    assert_ne!(code, 0);
    assert_eq!(namespaces_with_prefix(&name), vec![theirs.clone()]);
    drop(lab); // `wan down` removes the rest
    assert!(namespaces_with_prefix(&name).is_empty());
}

#[test]
fn lossy_jittery_path_delivers_verified_bytes() {
    skip_unless_lab!();
    let name = format!("sml{}", std::process::id());
    // Server in B, client in A: 2 MiB each way with the verification pattern over a path with
    // loss, jitter, a bottleneck and Gilbert–Elliott bursts; TCP must repair all of it.
    let script = format!(
        "ip netns exec $MTCP_WAN_NS_B {BIN} server -l $MTCP_WAN_ADDR_B:5201 --max-time 30s >/dev/null 2>&1 & \
         sleep 0.3; ip netns exec $MTCP_WAN_NS_A {BIN} client -c $MTCP_WAN_ADDR_B:5201 --json \
         bulk -n 2M --bidir --verify -i 0"
    );
    let mut cmd = Command::new(BIN);
    cmd.args([
        "wan", "run", "--name", &name, "--delay", "5ms", "--jitter", "2ms", "--loss", "1%",
    ])
    .args([
        "--ge", "0.5%:30%", "--rate", "100mbit", "--seed", "7", "--", "sh", "-c", &script,
    ])
    .stderr(Stdio::null());
    let guard = LabGuard {
        name: name.clone(),
        child: None,
    };
    let (ok, v) = common::run_json(cmd);
    assert!(ok, "{v:#}");
    let r = &v["result"];
    assert_eq!(r["all_verified"], true, "{v:#}");
    assert_eq!(r["sum_up"]["bytes"], 2 * 1024 * 1024);
    assert_eq!(r["sum_down"]["bytes"], 2 * 1024 * 1024);
    assert!(
        namespaces_with_prefix(&name).is_empty(),
        "namespaces left behind"
    );
    drop(guard);
}
