//! The grid's surroundings: the one-grid-per-prefix lock, the tools it finds ([`Ctx`]), the
//! machine it runs on ([`machine`]), and the lab of each path brought up with its servers and
//! torn down again ([`PathLab`]).
//!
//! Owns: lab bring-up and tear-down and the temporary folder. Must not touch: what a contender
//! runs (its own module) or how results are summarised.

use super::mptcp::mptcp_setup;
use super::plan::{GridArgs, Kind, PathPlan, RATE_MBIT};
use super::procs::{Proc, ns_output, which};
use super::results::{GridResults, Machine};
use super::s;
use super::sampling;
use crate::wan::{self, DirStats, RunningLab};
use anyhow::{Context, Result, bail};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// Port of the path's mtcp-perf server in namespace B.
pub(super) const PERF_PORT: u16 = 5201;

/// Paths and tools shared by every run.
pub(super) struct Ctx {
    pub(super) perf: PathBuf,
    pub(super) mtcpd: Option<PathBuf>,
    pub(super) mtcpd_missing: String,
    /// Extra top-level config lines for both daemons (`--mtcpd-set`).
    pub(super) mtcpd_set: String,
    pub(super) kcptun: Option<(PathBuf, PathBuf)>,
    pub(super) mptcpize: Option<PathBuf>,
    pub(super) known_cc: Vec<String>,
    pub(super) secs: Duration,
    pub(super) drain: Duration,
    pub(super) warmup: Duration,
    pub(super) ttfb_samples: u64,
    pub(super) tmp: PathBuf,
    pub(super) next_port: std::cell::Cell<u16>,
}

/// The lab of one path, as the runs see it.
pub(super) struct Env {
    pub(super) ns_a: String,
    pub(super) ns_b: String,
    pub(super) addr_a: String,
    pub(super) addr_b: String,
    pub(super) rtt: Duration,
}

/// The temporary folder of one grid (configs, daemon logs); removed on drop.
pub(super) struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Takes the lock of grid prefix `name`, so that a second grid cannot take the first one's
/// namespaces for leftovers and remove them. The lock goes with the process (also on kill -9);
/// keep the file open for as long as the grid runs.
pub(super) fn lock_grid(name: &str) -> Result<std::fs::File> {
    let lock_path = std::env::temp_dir().join(format!("mtcp-perf-grid-{name}.lock"));
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    // SAFETY: flock(2) on a file descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another grid with --name {name} is running (lock {}); wait for it or use another --name",
            lock_path.display()
        );
    }
    Ok(lock)
}

impl TmpDir {
    /// A fresh folder for this grid process.
    pub(super) fn create() -> Result<TmpDir> {
        let dir = TmpDir(std::env::temp_dir().join(format!("mtcp-grid-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;
        Ok(dir)
    }
}

impl Ctx {
    /// Finds the tools; a missing one is announced and its runs are reported as skipped.
    pub(super) fn new(a: &GridArgs, secs: Duration, tmp: &TmpDir) -> Result<Ctx> {
        let mtcpd = std::fs::canonicalize(&a.mtcpd).ok().filter(|p| p.is_file());
        let kcptun = which("kcptun-client").zip(which("kcptun-server"));
        let mptcpize = which("mptcpize");
        let ctx = Ctx {
            perf: std::env::current_exe().context("locating mtcp-perf")?,
            mtcpd_missing: format!(
                "mtcpd binary {} not found (cargo build --release -p mtcpd)",
                a.mtcpd.display()
            ),
            mtcpd: mtcpd.clone(),
            mtcpd_set: a.mtcpd_set.iter().map(|l| format!("{l}\n")).collect(),
            kcptun: kcptun.clone(),
            mptcpize: mptcpize.clone(),
            known_cc: sampling::known_cc(),
            secs,
            drain: a.drain,
            warmup: a.warmup,
            ttfb_samples: a.ttfb_samples,
            tmp: tmp.0.clone(),
            next_port: std::cell::Cell::new(1),
        };
        for (what, missing) in [
            ("mtcpd", mtcpd.is_none()),
            ("kcptun (kcptun-client/kcptun-server)", kcptun.is_none()),
            ("MPTCP (mptcpize)", mptcpize.is_none()),
        ] {
            if missing {
                eprintln!(
                    "grid: {what} not available: its runs are reported as skipped (`make perf-deps` installs kcptun and mptcpd)"
                );
            }
        }
        Ok(ctx)
    }

    /// The next port offset (1..=900) for a contender's daemons, so that a run never reuses
    /// the ports of the previous one while they may still be in TIME_WAIT.
    pub(super) fn port(&self) -> u16 {
        let k = self.next_port.get();
        self.next_port.set(if k >= 900 { 1 } else { k + 1 });
        k
    }
}

/// The machine the grid runs on and the versions of the tools it found.
pub(super) fn machine(ctx: &Ctx) -> Machine {
    let (mtcpd, kcptun, mptcpize) = (&ctx.mtcpd, &ctx.kcptun, &ctx.mptcpize);
    Machine {
        kernel: first_line_of("uname", &["-r"]).unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg_start: loadavg(),
        git_commit: first_line_of("git", &["rev-parse", "--short=12", "HEAD"])
            .filter(|s| s.chars().all(|c| c.is_ascii_hexdigit())),
        mtcpd: mtcpd
            .as_ref()
            .and_then(|m| first_line_of(&m.to_string_lossy(), &["--version"])),
        kcptun: kcptun.as_ref().and_then(|(c, _)| {
            first_line_of(&c.to_string_lossy(), &["--version"])
                .map(|v| format!("{v} (Debian package kcptun)"))
        }),
        mptcpize: mptcpize.as_ref().and_then(|m| {
            first_line_of("dpkg-query", &["-W", "-f=${Version}", "mptcpd"])
                .map(|v| format!("{} (mptcpd {v})", m.display()))
        }),
        ..Machine::default()
    }
}

/// The lab of one path with the servers every contender of the path talks to (mtcp-perf's, and
/// MPTCP's when the path has an MPTCP run). Dropping it stops the servers, then the lab.
pub(super) struct PathLab {
    /// Declared first so that the servers stop before the lab's namespaces go.
    servers: Vec<Proc>,
    lab: RunningLab,
    pub(super) env: Env,
    /// Whether MPTCP could be set up on this path (the reason when not).
    pub(super) mptcp_ready: Result<(), String>,
}

impl PathLab {
    /// Brings up the lab of path `p` and its servers; records the impairment in
    /// `res.paths[idx]` and the namespaces' TCP buffer limits in `res.machine`.
    pub(super) fn up(
        ctx: &Ctx,
        p: &PathPlan,
        lab_name: &str,
        seed: u64,
        res: &mut GridResults,
        idx: usize,
    ) -> Result<PathLab> {
        let delay = format!("{}us", p.rtt_ms as u64 * 500);
        let loss = format!("{}%", p.loss_pct);
        let rate = format!("{RATE_MBIT}mbit");
        let cap = p.flow_cap_mbit.map(|c| format!("{c}mbit"));
        let mut imp: Vec<(&str, &str)> = vec![("delay", &delay), ("rate", &rate)];
        if p.loss_pct > 0.0 {
            imp.push(("loss", &loss));
        }
        if let Some(c) = &cap {
            imp.push(("flow-cap", c));
        }
        let lab = RunningLab::up(lab_name, 1500, seed, &imp)?;
        res.paths[idx].impairment = lab.description.clone();
        let env = Env {
            ns_a: lab.addrs.ns_a.clone(),
            ns_b: lab.addrs.ns_b.clone(),
            addr_a: lab.addrs.addr_a.clone(),
            addr_b: lab.addrs.addr_b.clone(),
            rtt: Duration::from_millis(p.rtt_ms as u64),
        };
        if res.machine.tcp_wmem.is_none() {
            res.machine.tcp_wmem = ns_output(&env.ns_a, &["cat", "/proc/sys/net/ipv4/tcp_wmem"])
                .ok()
                .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "));
            res.machine.tcp_rmem = ns_output(&env.ns_a, &["cat", "/proc/sys/net/ipv4/tcp_rmem"])
                .ok()
                .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        // Servers for the whole path, in namespace B.
        let perf = ctx.perf.to_string_lossy().into_owned();
        let mut servers: Vec<Proc> = vec![Proc::spawn(
            "mtcp-perf server",
            &env.ns_b,
            &[
                perf.clone(),
                s("server"),
                s("-l"),
                format!("{}:{PERF_PORT}", env.addr_b),
                s("--max-time"),
                s("3h"),
            ],
            &[],
            None,
        )?];
        let mptcp_ready = if p.runs.iter().any(|r| r.kind == Kind::Mptcp) {
            match mptcp_setup(ctx, &env, &perf) {
                Ok(pr) => {
                    servers.push(pr);
                    Ok(())
                }
                Err(e) => Err(format!("{e:#}")),
            }
        } else {
            Ok(())
        };
        wait_listening(&env.ns_b, PERF_PORT, Duration::from_secs(5))?;
        Ok(PathLab {
            servers,
            lab,
            env,
            mptcp_ready,
        })
    }

    /// The emulator's counters of the data direction (B→A) so far.
    pub(super) fn counters(&self) -> wan::LiveCounters {
        self.lab.b2a_counters()
    }

    /// Whether the emulator stopped on its own (a run on this lab would measure nothing).
    pub(super) fn failed(&self) -> bool {
        self.lab.failed()
    }

    /// Stops the servers and tears the lab down; returns the emulator's counters.
    pub(super) fn finish(self) -> Vec<DirStats> {
        drop(self.servers);
        self.lab.finish()
    }
}

/// The current time in UTC, ISO 8601 (`2026-12-02T02:44:18Z`).
pub(super) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(super) fn load1() -> Option<f64> {
    loadavg().split_whitespace().next()?.parse().ok()
}

pub(super) fn first_line_of(cmd: &str, args: &[&str]) -> Option<String> {
    let o = std::process::Command::new(cmd).args(args).output().ok()?;
    let s = String::from_utf8_lossy(&o.stdout);
    let s2 = String::from_utf8_lossy(&o.stderr);
    s.lines()
        .chain(s2.lines())
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

/// Wait until something listens on TCP `port` in `ns`.
pub(super) fn wait_listening(ns: &str, port: u16, max: Duration) -> Result<()> {
    let t = Instant::now();
    loop {
        let out = ns_output(ns, &["ss", "-tlnH"]).unwrap_or_default();
        if out.lines().any(|l| {
            l.split_whitespace()
                .nth(3)
                .is_some_and(|a| a.ends_with(&format!(":{port}")))
        }) {
            return Ok(());
        }
        if t.elapsed() > max || wan::stop_requested() {
            bail!("nothing listens on port {port} in {ns} after {max:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats() {
        let t = utc_now();
        assert_eq!(t.len(), 20);
        assert!(t.ends_with('Z'));
    }
}
