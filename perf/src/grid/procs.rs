//! Processes the grid starts inside the lab's namespaces (`ip netns exec NS …`, which execs, so
//! the child's pid is the program's), each stopped by its own pid when its guard drops, bounded
//! commands, and the CPU they use.
//!
//! Owns: process lifetimes and CPU accounting. Must not touch: `ss` sampling (`sampling`).

use crate::wan;
use anyhow::{Context, Result, bail};
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A long-running process in a namespace; SIGTERM, then SIGKILL, when dropped.
pub struct Proc {
    child: Option<Child>,
}

/// `ip netns exec NS ARGS…` with extra environment variables.
pub fn ns_command(ns: &str, args: &[String], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

impl Proc {
    /// Start `args` in namespace `ns`, stdout discarded, stderr to `log` (or discarded).
    pub fn spawn(
        name: &str,
        ns: &str,
        args: &[String],
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Result<Proc> {
        let mut c = ns_command(ns, args, env);
        c.stdin(Stdio::null()).stdout(Stdio::null());
        match log {
            Some(p) => {
                let f = File::create(p).with_context(|| format!("creating {}", p.display()))?;
                c.stderr(f);
            }
            None => {
                c.stderr(Stdio::null());
            }
        }
        let child = c
            .spawn()
            .with_context(|| format!("starting {name}: {}", args.join(" ")))?;
        Ok(Proc { child: Some(child) })
    }

    /// CPU time (user + system) the process has used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.child
            .as_ref()
            .and_then(|c| proc_cpu_seconds(&format!("/proc/{}/stat", c.id())))
    }

    /// Resident memory (VmRSS) in MiB.
    pub fn rss_mib(&self) -> Option<f64> {
        let c = self.child.as_ref()?;
        let t = std::fs::read_to_string(format!("/proc/{}/status", c.id())).ok()?;
        let kb: f64 = t
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; always reaps.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let Ok(None) = c.try_wait() {
            // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < grace {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
        }
        let _ = c.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
    }
}

/// utime + stime of a `/proc/…/stat` file, in seconds.
pub fn proc_cpu_seconds(path: &str) -> Option<f64> {
    let t = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &t[t.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

/// Machine-wide CPU counters from /proc/stat: (busy, total) in ticks.
pub fn machine_cpu() -> Option<(u64, u64)> {
    let t = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = t
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// CPU use over an interval: the machine's, the grid process's own (the emulator's forwarder
/// threads live there) and that of the contender's daemons.
pub struct CpuMeter {
    t0: Instant,
    machine0: Option<(u64, u64)>,
    own0: Option<f64>,
    daemons0: Option<f64>,
}

impl CpuMeter {
    pub fn start(daemons: &[&Proc]) -> CpuMeter {
        CpuMeter {
            t0: Instant::now(),
            machine0: machine_cpu(),
            own0: proc_cpu_seconds("/proc/self/stat"),
            daemons0: daemon_cpu(daemons),
        }
    }

    pub fn finish(&self, daemons: &[&Proc]) -> crate::grid::results::CpuUse {
        let wall = self.t0.elapsed().as_secs_f64().max(1e-3);
        let machine = match (self.machine0, machine_cpu()) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some((b1 - b0) as f64 / (t1 - t0) as f64 * 100.0)
            }
            _ => None,
        };
        let pct = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / wall * 100.0);
        crate::grid::results::CpuUse {
            machine_busy_pct: machine,
            emulator_core_pct: pct(self.own0, proc_cpu_seconds("/proc/self/stat")),
            daemons_core_pct: if daemons.is_empty() {
                None
            } else {
                pct(self.daemons0, daemon_cpu(daemons))
            },
        }
    }
}

fn daemon_cpu(d: &[&Proc]) -> Option<f64> {
    d.iter().map(|p| p.cpu_seconds()).sum()
}

/// Output of a bounded command.
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub code: Option<i32>,
    pub timed_out: bool,
    pub interrupted: bool,
}

/// Run a command to completion, at most `timeout`; `at(i)` is called once when `marks[i]`
/// has passed since the start (mid-run samples). Stops early (killing the child) on
/// SIGINT/SIGTERM.
pub fn run_bounded(
    mut c: Command,
    timeout: Duration,
    marks: &[Duration],
    mut at: impl FnMut(usize),
) -> Result<Output> {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().context("starting the client")?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let to = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let te = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let t0 = Instant::now();
    let mut next_mark = 0;
    let (mut timed_out, mut interrupted) = (false, false);
    let code = loop {
        if let Some(st) = child.try_wait().context("waiting for the client")? {
            break st.code();
        }
        while next_mark < marks.len() && t0.elapsed() >= marks[next_mark] {
            at(next_mark);
            next_mark += 1;
        }
        if t0.elapsed() > timeout || wan::stop_requested() {
            timed_out = t0.elapsed() > timeout;
            interrupted = !timed_out;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        stdout: to.join().unwrap_or_default(),
        stderr: te.join().unwrap_or_default(),
        code,
        timed_out,
        interrupted,
    })
}

/// Run a short command in a namespace and return its stdout (error on failure).
pub fn ns_output(ns: &str, args: &[&str]) -> Result<String> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let o = ns_command(ns, &args, &[])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} in {ns}", args.join(" ")))?;
    if !o.status.success() {
        bail!(
            "{} in {ns}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Find `prog` on PATH (or as given, when it contains a slash).
pub fn which(prog: &str) -> Option<std::path::PathBuf> {
    if prog.contains('/') {
        let p = Path::new(prog);
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(prog))
            .find(|p| p.is_file())
    })
}
