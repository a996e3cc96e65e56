//! `mtcp-perf grid`: the WAN benchmark grid of issue 4 (`make perf`, `make perf-quick`).
//!
//! For each emulated path (one lab per path, reused by every contender), it runs, one after the
//! other and on the same path: one direct TCP flow, N parallel direct flows, ONE application
//! stream through mtcpd with N tunnels, kernel MPTCP with N subflows (`mptcpize`) and kcptun,
//! with the congestion control set per socket; samples `ss` mid-run to record what every socket
//! really used; measures time to first byte direct and through mtcpd; and writes `grid.json`
//! after every run. `mtcp-perf report` ([`crate::report`]) turns that into CSV, SVG plots and
//! the markdown section of docs/BENCHMARKS.md.
//!
//! Everything runs inside the lab's namespaces (servers and daemons in B, clients in A), so the
//! lab's tear-down (on success, error, panic or signal) kills whatever is left.
//!
//! Throughput is measured in the download direction (the server in B sends, the client in A
//! counts): the receiver's per-second counts give the goodput over exactly the first `--time`
//! of each run, whatever a tunnel still holds in its buffers when the sender stops.

pub mod procs;
pub mod results;

use crate::wan::{self, RunningLab, netns};
use anyhow::{Context, Result, bail};
use clap::Args;
use mtcpd_common::units::parse_duration_or_seconds;
use procs::{Proc, Sock, count_cc, ns_command, ns_output, run_bounded, ss_mptcp, ss_tcp, which};
use results::{GridResults, Machine, PathResult, RunResult, Settings, TcpSample, TtfbResult};
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

#[derive(Args)]
pub struct GridArgs {
    /// Reduced set: the 100 ms / 1 % path and the per-flow-capped path, bbr and cubic, the
    /// contenders behind each target, and TTFB (under 3 minutes).
    #[arg(long)]
    quick: bool,
    /// Results folder (default: results, or results/quick with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Length of each throughput run (default 8s; 6s with --quick).
    #[arg(long, value_parser = parse_duration_or_seconds)]
    time: Option<Duration>,
    /// Extra time a run may take to drain its tail (not counted).
    #[arg(long, default_value = "1s", value_parser = parse_duration_or_seconds)]
    drain: Duration,
    /// Start of the "steady" window inside each run.
    #[arg(long, default_value = "2s", value_parser = parse_duration_or_seconds)]
    warmup: Duration,
    /// The mtcpd binary.
    #[arg(long, default_value = "target/release/mtcpd")]
    mtcpd: PathBuf,
    /// Only paths whose id contains one of these (comma-separated), e.g. rtt100-loss1.
    #[arg(long)]
    paths: Option<String>,
    /// Only these contenders (comma-separated ids), e.g. direct-1,direct-8,mtcpd-8,kcptun.
    #[arg(long)]
    runs: Option<String>,
    /// Only these congestion controls (comma-separated): bbr, cubic.
    #[arg(long)]
    cc: Option<String>,
    /// Skip the time-to-first-byte measurements.
    #[arg(long)]
    no_ttfb: bool,
    /// TTFB samples per contender.
    #[arg(long, default_value_t = 20)]
    ttfb_samples: u64,
    /// Lab name prefix (namespaces PREFIX<k>-a / PREFIX<k>-b).
    #[arg(long, default_value = "grid")]
    name: String,
    /// Seed of the emulator's random choices (same on every path).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Markdown file whose generated section to rewrite (e.g. docs/BENCHMARKS.md).
    #[arg(long)]
    doc: Option<PathBuf>,
    /// Print the plan and the time it should take, run nothing.
    #[arg(long)]
    list: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Direct,
    Mtcpd,
    Mptcp,
    Kcptun,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Mtcpd => "mtcpd",
            Kind::Mptcp => "mptcp",
            Kind::Kcptun => "kcptun",
        }
    }
}

#[derive(Clone, Debug)]
struct Spec {
    kind: Kind,
    flows: u32,
    cc: Option<&'static str>,
}

impl Spec {
    fn id(&self) -> String {
        match self.kind {
            Kind::Kcptun => "kcptun".into(),
            k => format!("{}-{}", k.name(), self.flows),
        }
    }
}

#[derive(Clone, Debug)]
struct PathPlan {
    id: String,
    label: String,
    rtt_ms: u32,
    loss_pct: f64,
    flow_cap_mbit: Option<u32>,
    runs: Vec<Spec>,
    ttfb: bool,
}

const RATE_MBIT: u32 = 1000;
const CCS: [&str; 2] = ["bbr", "cubic"];
const TUNNELS: [u32; 5] = [1, 2, 4, 8, 16];
/// Parallel direct flows and MPTCP subflows (the "ideal aggregation" comparison).
const N_PARALLEL: u32 = 8;
const PERF_PORT: u16 = 5201;
const MPTCP_PORT: u16 = 5202;
/// MPTCP signal endpoints (extra server ports) start above this.
const MPTCP_EXTRA_BASE: u16 = 5210;
const KCPTUN_ARGS: &str = "--mode fast3 --sndwnd 8192 --rcvwnd 8192 --crypt none --nocomp --quiet";
const PSK: &str = "grid-benchmark-key-0123456789abcdef";

fn path(rtt_ms: u32, loss_pct: f64, cap: Option<u32>, runs: Vec<Spec>, ttfb: bool) -> PathPlan {
    let (id, label) = match cap {
        Some(c) => (
            format!("rtt{rtt_ms}-cap{c}"),
            format!("{rtt_ms} ms, {c} Mbit/s per flow"),
        ),
        None => (
            format!("rtt{rtt_ms}-loss{loss_pct}"),
            format!("{rtt_ms} ms, {loss_pct} % loss"),
        ),
    };
    PathPlan {
        id,
        label,
        rtt_ms,
        loss_pct,
        flow_cap_mbit: cap,
        runs,
        ttfb,
    }
}

fn spec(kind: Kind, flows: u32, cc: Option<&'static str>) -> Spec {
    Spec { kind, flows, cc }
}

fn full_runs() -> Vec<Spec> {
    let mut v = Vec::new();
    for cc in CCS {
        v.push(spec(Kind::Direct, 1, Some(cc)));
        v.push(spec(Kind::Direct, N_PARALLEL, Some(cc)));
        for n in TUNNELS {
            v.push(spec(Kind::Mtcpd, n, Some(cc)));
        }
        v.push(spec(Kind::Mptcp, N_PARALLEL, Some(cc)));
    }
    v.push(spec(Kind::Kcptun, 1, None));
    v
}

fn plan(quick: bool) -> Vec<PathPlan> {
    if quick {
        let lossy = vec![
            spec(Kind::Direct, 1, Some("bbr")),
            spec(Kind::Direct, N_PARALLEL, Some("bbr")),
            spec(Kind::Mtcpd, 8, Some("bbr")),
            spec(Kind::Mptcp, N_PARALLEL, Some("bbr")),
            spec(Kind::Direct, 1, Some("cubic")),
            spec(Kind::Direct, N_PARALLEL, Some("cubic")),
            spec(Kind::Mtcpd, 8, Some("cubic")),
            spec(Kind::Kcptun, 1, None),
        ];
        let capped = vec![
            spec(Kind::Direct, 1, Some("bbr")),
            spec(Kind::Direct, N_PARALLEL, Some("bbr")),
            spec(Kind::Mtcpd, 8, Some("bbr")),
        ];
        return vec![
            path(100, 1.0, None, lossy, true),
            path(100, 0.0, Some(20), capped, true),
        ];
    }
    let mut v = Vec::new();
    for rtt in [20, 100, 250] {
        for loss in [0.0, 0.1, 1.0] {
            v.push(path(rtt, loss, None, full_runs(), rtt == 100));
        }
    }
    v.push(path(100, 0.0, Some(20), full_runs(), true));
    v
}

fn list_filter(s: &Option<String>) -> Option<Vec<String>> {
    s.as_ref().map(|s| {
        s.split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect()
    })
}

fn filtered_plan(a: &GridArgs) -> Vec<PathPlan> {
    let (paths, runs, ccs) = (
        list_filter(&a.paths),
        list_filter(&a.runs),
        list_filter(&a.cc),
    );
    let mut v = plan(a.quick);
    if let Some(p) = &paths {
        v.retain(|x| p.iter().any(|f| x.id.contains(f.as_str())));
    }
    for p in &mut v {
        p.runs.retain(|s| {
            runs.as_ref().is_none_or(|r| r.contains(&s.id()))
                && ccs
                    .as_ref()
                    .is_none_or(|c| s.cc.is_none_or(|cc| c.iter().any(|x| x == cc)))
        });
        p.ttfb &= !a.no_ttfb;
    }
    v.retain(|p| !p.runs.is_empty() || p.ttfb);
    v
}

/// Seconds a plan should take: each run is `time` + its drain + start-up; TTFB about 3 RTT
/// per sample over two contenders; one second per lab.
fn estimate(plan: &[PathPlan], secs: f64, drain: f64, samples: u64) -> f64 {
    plan.iter()
        .map(|p| {
            let runs = p.runs.len() as f64 * (secs + drain + 1.0 + 3.0 * p.rtt_ms as f64 / 1e3);
            let ttfb = if p.ttfb {
                samples as f64 * 3.0 * p.rtt_ms as f64 / 1e3 + 3.0
            } else {
                0.0
            };
            runs + ttfb + 1.5
        })
        .sum()
}

/// Paths and tools shared by every run.
struct Ctx {
    perf: PathBuf,
    mtcpd: Option<PathBuf>,
    mtcpd_missing: String,
    kcptun: Option<(PathBuf, PathBuf)>,
    mptcpize: Option<PathBuf>,
    known_cc: Vec<String>,
    secs: Duration,
    drain: Duration,
    warmup: Duration,
    ttfb_samples: u64,
    tmp: PathBuf,
    next_port: std::cell::Cell<u16>,
}

impl Ctx {
    fn port(&self) -> u16 {
        let k = self.next_port.get();
        self.next_port.set(if k >= 900 { 1 } else { k + 1 });
        k
    }
}

/// The lab of one path, as the runs see it.
struct Env {
    ns_a: String,
    ns_b: String,
    addr_a: String,
    addr_b: String,
    rtt: Duration,
}

/// The temporary folder of one grid (configs, daemon logs); removed on drop.
struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn utc_now() -> String {
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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn load1() -> Option<f64> {
    loadavg().split_whitespace().next()?.parse().ok()
}

fn first_line_of(cmd: &str, args: &[&str]) -> Option<String> {
    let o = std::process::Command::new(cmd).args(args).output().ok()?;
    let s = String::from_utf8_lossy(&o.stdout);
    let s2 = String::from_utf8_lossy(&o.stderr);
    s.lines()
        .chain(s2.lines())
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

fn secs_arg(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn s(x: impl ToString) -> String {
    x.to_string()
}

pub fn main(a: GridArgs) -> Result<i32> {
    let plan = filtered_plan(&a);
    let secs = a
        .time
        .unwrap_or(Duration::from_secs(if a.quick { 6 } else { 8 }));
    let est = estimate(
        &plan,
        secs.as_secs_f64(),
        a.drain.as_secs_f64(),
        a.ttfb_samples,
    );
    let nruns: usize = plan.iter().map(|p| p.runs.len()).sum();
    eprintln!(
        "grid ({}): {} path(s), {nruns} throughput run(s) of {:?}, TTFB on {} path(s); about {:.0} min",
        if a.quick { "quick" } else { "full" },
        plan.len(),
        secs,
        plan.iter().filter(|p| p.ttfb).count(),
        est / 60.0
    );
    if a.list {
        for p in &plan {
            let ids: Vec<String> = p
                .runs
                .iter()
                .map(|s| match s.cc {
                    Some(cc) => format!("{}/{cc}", s.id()),
                    None => s.id(),
                })
                .collect();
            println!(
                "{:<14} {:<28} ttfb={} runs: {}",
                p.id,
                p.label,
                p.ttfb,
                ids.join(" ")
            );
        }
        return Ok(0);
    }
    if plan.is_empty() {
        bail!("nothing to run (check --paths / --runs / --cc)");
    }
    if let Some(why) = netns::unavailable() {
        bail!("the grid needs the WAN lab, which cannot be built here: {why}");
    }
    // One grid per lab prefix at a time: a second one would take the first one's namespaces
    // for leftovers and remove them. The lock goes with the process (also on kill -9).
    let lock_path = std::env::temp_dir().join(format!("mtcp-perf-grid-{}.lock", a.name));
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    // SAFETY: flock(2) on a file descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another grid with --name {} is running (lock {}); wait for it or use another --name",
            a.name,
            lock_path.display()
        );
    }
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(if a.quick { "results/quick" } else { "results" }));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let tmp = TmpDir(std::env::temp_dir().join(format!("mtcp-grid-{}", std::process::id())));
    std::fs::create_dir_all(&tmp.0)?;

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
        kcptun: kcptun.clone(),
        mptcpize: mptcpize.clone(),
        known_cc: procs::known_cc(),
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
    wan::install_signals();
    let t0 = Instant::now();
    let mut res = GridResults {
        schema: results::SCHEMA,
        mode: if a.quick { "quick" } else { "full" }.into(),
        started_utc: utc_now(),
        finished_utc: None,
        wall_seconds: 0.0,
        complete: false,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine {
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
        },
        settings: Settings {
            seconds: secs.as_secs_f64(),
            drain_seconds: a.drain.as_secs_f64(),
            warmup_seconds: a.warmup.as_secs_f64(),
            ttfb_samples: a.ttfb_samples,
            seed: a.seed,
            direction: "download: server in namespace B sends, client in A receives and counts"
                .into(),
            mtcpd_config: "psk; congestion = <cc>; connection_pool_size = N on both ends; every other key at its default (stream_window 64MiB, session_window 256MiB, enable_zero_rtt = true); RUST_LOG=info"
                .into(),
            kcptun_args: KCPTUN_ARGS.into(),
            mptcp_setup: format!(
                "ip mptcp limits set subflows 8 add_addr_accepted 8 (both namespaces); N-1 `signal` endpoints on server ports {}..; client and server under `mptcpize run`",
                MPTCP_EXTRA_BASE + 1
            ),
        },
        paths: Vec::new(),
    };
    let json_path = out.join("grid.json");
    let save = |r: &GridResults| -> Result<()> {
        let tmp = json_path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(r)?)?;
        std::fs::rename(&tmp, &json_path)?;
        Ok(())
    };
    let mut code = 0;
    for (k, p) in plan.iter().enumerate() {
        if wan::stop_requested() {
            code = 130;
            break;
        }
        let lab_name = format!("{}{k}", a.name);
        if let Ok(removed) = netns::down(&lab_name)
            && !removed.is_empty()
        {
            eprintln!(
                "grid: removed leftovers of an earlier run: {}",
                removed.join(", ")
            );
        }
        eprintln!(
            "== path {} ({}) [{:.0}s elapsed]",
            p.id,
            p.label,
            t0.elapsed().as_secs_f64()
        );
        let idx = res.paths.len();
        res.paths.push(PathResult {
            id: p.id.clone(),
            label: p.label.clone(),
            rtt_ms: p.rtt_ms,
            loss_pct: p.loss_pct,
            rate_mbit: RATE_MBIT,
            flow_cap_mbit: p.flow_cap_mbit,
            impairment: String::new(),
            lab: lab_name.clone(),
            error: None,
            emulator: Vec::new(),
            runs: Vec::new(),
            ttfb: Vec::new(),
        });
        let r = run_path(&ctx, p, &lab_name, a.seed, &mut res, idx, &save);
        if let Err(e) = r {
            eprintln!("grid: path {}: {e:#}", p.id);
            res.paths[idx].error = Some(format!("{e:#}"));
            code = 1;
        }
        res.wall_seconds = t0.elapsed().as_secs_f64();
        save(&res)?;
    }
    if wan::stop_requested() {
        code = 130;
    }
    res.complete = code == 0;
    res.finished_utc = Some(utc_now());
    res.machine.loadavg_end = Some(loadavg());
    res.wall_seconds = t0.elapsed().as_secs_f64();
    save(&res)?;
    eprintln!(
        "grid: {} in {:.0} s; results in {}",
        if res.complete { "done" } else { "INCOMPLETE" },
        res.wall_seconds,
        json_path.display()
    );
    // An interrupted grid keeps its results but leaves the document alone.
    let doc = a.doc.as_deref().filter(|_| !wan::stop_requested());
    if let (Some(d), None) = (&a.doc, doc) {
        eprintln!(
            "grid: interrupted, so {} is left as it was (`mtcp-perf report --results {} --doc {}` updates it anyway)",
            d.display(),
            json_path.display(),
            d.display()
        );
    }
    crate::report::generate(&res, &out, doc)?;
    Ok(code)
}

fn run_path(
    ctx: &Ctx,
    p: &PathPlan,
    lab_name: &str,
    seed: u64,
    res: &mut GridResults,
    idx: usize,
    save: &dyn Fn(&GridResults) -> Result<()>,
) -> Result<()> {
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
    for spec in &p.runs {
        if wan::stop_requested() {
            break;
        }
        if lab.failed() {
            bail!("the emulator stopped unexpectedly");
        }
        let t = Instant::now();
        let load = load1();
        eprint!("   {:<10} {:<6} ", spec.id(), spec.cc.unwrap_or("(udp)"));
        let mut r = match spec.kind {
            Kind::Direct => run_direct(ctx, &env, spec),
            Kind::Mtcpd => run_mtcpd(ctx, &env, spec),
            Kind::Mptcp => match &mptcp_ready {
                Ok(()) => run_mptcp(ctx, &env, spec),
                Err(e) => RunResult::skipped(&spec.id(), spec.kind.name(), spec.flows, spec.cc, e),
            },
            Kind::Kcptun => run_kcptun(ctx, &env, spec),
        };
        if wan::stop_requested() && r.status != "skipped" {
            r.status = "failed".into();
            r.reason = Some("interrupted (SIGINT/SIGTERM)".into());
        }
        r.load_before = load;
        r.seconds_taken = t.elapsed().as_secs_f64();
        eprintln!("{}", run_line(&r));
        res.paths[idx].runs.push(r);
        save(res)?;
        // Let the path's queues empty before the next contender.
        std::thread::sleep(Duration::from_millis(300));
    }
    if p.ttfb && !wan::stop_requested() {
        for via in ["direct", "mtcpd"] {
            let r = run_ttfb(ctx, &env, via);
            eprintln!(
                "   ttfb {via:<7} {}",
                match r.ttfb_p50_ms {
                    Some(v) => format!(
                        "p50 {v:.1} ms, p90 {:.1} ms, max {:.1} ms ({} samples, {} failures)",
                        r.ttfb_p90_ms.unwrap_or(0.0),
                        r.ttfb_max_ms.unwrap_or(0.0),
                        r.samples,
                        r.failures
                    ),
                    None => format!("{}: {}", r.status, r.reason.clone().unwrap_or_default()),
                }
            );
            res.paths[idx].ttfb.push(r);
            save(res)?;
        }
    }
    drop(servers);
    res.paths[idx].emulator = lab.finish();
    Ok(())
}

fn run_line(r: &RunResult) -> String {
    match (r.status.as_str(), r.mbit_s) {
        ("ok", Some(m)) => {
            let mut s = format!("{m:8.1} Mbit/s");
            if let Some(st) = r.steady_mbit_s {
                s += &format!(" (steady {st:.1})");
            }
            let seen = |m: &BTreeMap<String, u32>| {
                m.iter()
                    .map(|(k, v)| format!("{k}x{v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            if r.cc_seen.udp_sockets > 0 {
                s += &format!("  udp sockets {}", r.cc_seen.udp_sockets);
            } else {
                s += &format!(
                    "  ss: A {} B {}",
                    seen(&r.cc_seen.client_ns),
                    seen(&r.cc_seen.server_ns)
                );
            }
            if let Some(n) = r.mptcp_subflows {
                s += &format!("  subflows {n}");
            }
            s
        }
        (st, _) => format!("{st}: {}", r.reason.clone().unwrap_or_default()),
    }
}

/// Wait until something listens on TCP `port` in `ns`.
fn wait_listening(ns: &str, port: u16, max: Duration) -> Result<()> {
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

/// MPTCP on this path: limits in both namespaces, N-1 signal endpoints on extra server ports,
/// and an `mptcpize`d server. Returns the server process.
fn mptcp_setup(ctx: &Ctx, env: &Env, perf: &str) -> Result<Proc> {
    let mz = ctx
        .mptcpize
        .as_ref()
        .context("mptcpize not found (Debian package mptcpd; `make perf-deps`)")?;
    for ns in [&env.ns_a, &env.ns_b] {
        let on = ns_output(ns, &["cat", "/proc/sys/net/mptcp/enabled"]).unwrap_or_default();
        if on.trim() != "1" {
            bail!(
                "MPTCP is not enabled in {ns} (net.mptcp.enabled = {:?})",
                on.trim()
            );
        }
        netns::ip(&[
            "-n",
            ns,
            "mptcp",
            "limits",
            "set",
            "subflows",
            "8",
            "add_addr_accepted",
            "8",
        ])?;
    }
    for i in 1..N_PARALLEL {
        netns::ip(&[
            "-n",
            &env.ns_b,
            "mptcp",
            "endpoint",
            "add",
            &env.addr_b,
            "port",
            &(MPTCP_EXTRA_BASE + i as u16).to_string(),
            "signal",
        ])?;
    }
    let pr = Proc::spawn(
        "mptcp server",
        &env.ns_b,
        &[
            mz.to_string_lossy().into_owned(),
            s("run"),
            perf.into(),
            s("server"),
            s("-l"),
            format!("{}:{MPTCP_PORT}", env.addr_b),
            s("--max-time"),
            s("3h"),
        ],
        &[],
        None,
    )?;
    wait_listening(&env.ns_b, MPTCP_PORT, Duration::from_secs(5))?;
    Ok(pr)
}

/// What a mid-run `ss` sample saw in both namespaces.
#[derive(Default)]
struct Snap {
    a: Vec<Sock>,
    b: Vec<Sock>,
    mptcp_a: Vec<Sock>,
    udp_kcptun: u32,
    /// Resident memory of the receiving daemon (the first of the run's daemons).
    rss_mib: Option<f64>,
}

fn snap(ctx: &Ctx, env: &Env, daemons: &[&Proc]) -> Snap {
    Snap {
        rss_mib: daemons.first().and_then(|d| d.rss_mib()),
        a: ss_tcp(&env.ns_a, &ctx.known_cc),
        b: ss_tcp(&env.ns_b, &ctx.known_cc),
        mptcp_a: ss_mptcp(&env.ns_a),
        udp_kcptun: procs::ss_udp_count(&env.ns_a, "kcptun")
            + procs::ss_udp_count(&env.ns_b, "kcptun"),
    }
}

/// Summarise the contender's sockets: `sender` in namespace B, `receiver` in A.
fn tcp_sample(sender: &[&Sock], receiver: &[&Sock]) -> TcpSample {
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let rates: Vec<f64> = sender.iter().filter_map(|x| x.delivery_bps).collect();
    TcpSample {
        samples: 1,
        sender_sockets: sender.len() as u32,
        sender_app_limited: sender.iter().filter(|x| x.app_limited).count() as f64,
        sender_rwnd_limited_pct_mean: mean(
            sender
                .iter()
                .map(|x| x.rwnd_limited_pct.unwrap_or(0.0))
                .collect(),
        ),
        sender_sndbuf_limited_pct_mean: mean(
            sender
                .iter()
                .map(|x| x.sndbuf_limited_pct.unwrap_or(0.0))
                .collect(),
        ),
        sender_delivery_mbit_sum: (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / 1e6),
        sender_send_q_bytes: sender.iter().map(|x| x.send_q).sum(),
        sender_retrans_total: sender
            .iter()
            .map(|x| x.retrans_total.unwrap_or(0) as u64)
            .sum(),
        sender_cwnd_sum: sender.iter().map(|x| x.cwnd.unwrap_or(0) as u64).sum(),
        receiver_recv_q_bytes: receiver.iter().map(|x| x.recv_q).sum(),
        receiver_daemon_rss_mib_max: None,
    }
}

/// Mean of several samples (the maxima stay maxima).
fn average(v: &[TcpSample]) -> TcpSample {
    let n = v.len().max(1) as f64;
    let mean_f = |f: &dyn Fn(&TcpSample) -> f64| v.iter().map(f).sum::<f64>() / n;
    let mean_o = |f: &dyn Fn(&TcpSample) -> Option<f64>| {
        let x: Vec<f64> = v.iter().filter_map(f).collect();
        (!x.is_empty()).then(|| x.iter().sum::<f64>() / x.len() as f64)
    };
    TcpSample {
        samples: v.len() as u32,
        sender_sockets: v.iter().map(|x| x.sender_sockets).max().unwrap_or(0),
        sender_app_limited: mean_f(&|x| x.sender_app_limited),
        sender_rwnd_limited_pct_mean: mean_o(&|x| x.sender_rwnd_limited_pct_mean),
        sender_sndbuf_limited_pct_mean: mean_o(&|x| x.sender_sndbuf_limited_pct_mean),
        sender_delivery_mbit_sum: mean_o(&|x| x.sender_delivery_mbit_sum),
        sender_send_q_bytes: mean_f(&|x| x.sender_send_q_bytes as f64) as u64,
        sender_retrans_total: v.iter().map(|x| x.sender_retrans_total).max().unwrap_or(0),
        sender_cwnd_sum: mean_f(&|x| x.sender_cwnd_sum as f64) as u64,
        receiver_recv_q_bytes: mean_f(&|x| x.receiver_recv_q_bytes as f64) as u64,
        receiver_daemon_rss_mib_max: v
            .iter()
            .filter_map(|x| x.receiver_daemon_rss_mib_max)
            .reduce(f64::max),
    }
}

/// Record the contender's sockets: congestion control from the middle sample, TCP state
/// averaged over all samples. `fa`/`fb` select its sockets in namespaces A and B.
fn record_socks(
    r: &mut RunResult,
    snaps: &[Snap],
    fa: impl Fn(&Sock) -> bool,
    fb: impl Fn(&Sock) -> bool,
) {
    let mut samples = Vec::new();
    for sn in snaps {
        let ca: Vec<&Sock> = sn.a.iter().filter(|x| fa(x)).collect();
        let cb: Vec<&Sock> = sn.b.iter().filter(|x| fb(x)).collect();
        let mut t = tcp_sample(&cb, &ca);
        t.receiver_daemon_rss_mib_max = sn.rss_mib;
        samples.push(t);
    }
    if let Some(mid) = snaps.get(snaps.len() / 2) {
        let ca: Vec<&Sock> = mid.a.iter().filter(|x| fa(x)).collect();
        let cb: Vec<&Sock> = mid.b.iter().filter(|x| fb(x)).collect();
        r.sockets_sampled = (ca.len() + cb.len()) as u32;
        r.cc_seen.client_ns = count_cc(ca.into_iter());
        r.cc_seen.server_ns = count_cc(cb.into_iter());
    }
    if !samples.is_empty() {
        r.tcp = average(&samples);
    }
}

/// Parsed `mtcp-perf client --json bulk -R` output.
struct Bulk {
    mbit: Option<f64>,
    steady: Option<f64>,
    tool: Option<f64>,
    bytes: u64,
    intervals: Vec<f64>,
    readback: BTreeMap<String, u32>,
    errors: Vec<String>,
}

fn parse_bulk(stdout: &str, secs: f64, warm: f64) -> Result<Bulk> {
    let v: Value = serde_json::from_str(stdout.trim()).context("parsing the client's JSON")?;
    let r = &v["result"];
    let mut iv: Vec<(f64, f64, u64)> = r["intervals"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| {
                    Some((
                        i["start"].as_f64()?,
                        i["end"].as_f64()?,
                        i["bytes"].as_u64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    iv.retain(|i| i.1 <= secs + 0.5);
    let rate = |sel: &[(f64, f64, u64)]| -> Option<(f64, u64)> {
        let (f, l) = (sel.first()?, sel.last()?);
        let bytes: u64 = sel.iter().map(|i| i.2).sum();
        let span = l.1 - f.0;
        (span > 0.0).then(|| (bytes as f64 * 8.0 / span / 1e6, bytes))
    };
    let all = rate(&iv);
    let steady_sel: Vec<_> = iv.iter().copied().filter(|i| i.0 >= warm - 0.1).collect();
    let steady = if secs - warm >= 1.0 {
        rate(&steady_sel).map(|x| x.0)
    } else {
        None
    };
    let mut readback = BTreeMap::new();
    let mut errors = Vec::new();
    for st in r["streams"].as_array().into_iter().flatten() {
        for (side, key) in [("client", "cc_client"), ("server", "cc_server")] {
            if let Some(cc) = st[key].as_str() {
                *readback.entry(format!("{side}:{cc}")).or_insert(0) += 1;
            }
        }
        if let Some(e) = st["error"].as_str()
            && !errors.iter().any(|x: &String| x == e)
        {
            errors.push(e.to_string());
        }
    }
    Ok(Bulk {
        mbit: all.map(|x| x.0),
        steady,
        tool: r["sum"]["bits_per_second"].as_f64().map(|b| b / 1e6),
        bytes: all.map_or(0, |x| x.1),
        intervals: iv
            .iter()
            .map(|i| i.2 as f64 * 8.0 / (i.1 - i.0).max(1e-9) / 1e6)
            .collect(),
        readback,
        errors,
    })
}

const TAIL_CUT: &str = "download did not finish in time";

/// Run the bulk client (`args` after `client`) in namespace A, sampling `ss` mid-run, and turn
/// its output into a [`RunResult`] (cc fields left for the caller).
fn bulk_run(
    ctx: &Ctx,
    env: &Env,
    spec: &Spec,
    prefix: &[String],
    target: &str,
    daemons: &[&Proc],
) -> (RunResult, Vec<Snap>) {
    let mut r = RunResult::skipped(&spec.id(), spec.kind.name(), spec.flows, spec.cc, "");
    r.status = "failed".into();
    r.reason = None;
    let mut args: Vec<String> = prefix.to_vec();
    args.extend([
        ctx.perf.to_string_lossy().into_owned(),
        s("client"),
        s("-c"),
        target.into(),
    ]);
    if let (Some(cc), Kind::Direct | Kind::Mptcp) = (spec.cc, spec.kind) {
        args.extend([s("--congestion"), cc.into()]);
    }
    args.extend([
        s("--json"),
        s("bulk"),
        s("-R"),
        s("-P"),
        spec.flows.to_string(),
        s("-t"),
        secs_arg(ctx.secs),
        s("-i"),
        s("1s"),
        s("--drain-timeout"),
        secs_arg(ctx.drain),
    ]);
    if matches!(spec.kind, Kind::Mtcpd | Kind::Mptcp | Kind::Kcptun) {
        // ONE application stream, whatever carries it.
        let i = args.iter().position(|a| a == "-P").unwrap_or(0);
        args[i + 1] = s(1);
    }
    let mut sn = Vec::new();
    let timeout = ctx.secs + ctx.drain + Duration::from_secs(30);
    let meter = procs::CpuMeter::start(daemons);
    let mut cpu = None;
    // Samples at 1/4, 1/2 and 3/4 of the run; CPU over the sending phase only.
    let marks = [ctx.secs / 4, ctx.secs / 2, ctx.secs * 3 / 4, ctx.secs];
    let out = run_bounded(ns_command(&env.ns_a, &args, &[]), timeout, &marks, |i| {
        if i < 3 {
            sn.push(snap(ctx, env, daemons))
        } else {
            cpu = Some(meter.finish(daemons))
        }
    });
    r.cpu = cpu.unwrap_or_else(|| meter.finish(daemons));
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            r.reason = Some(format!("{e:#}"));
            return (r, sn);
        }
    };
    if out.interrupted {
        r.reason = Some("interrupted".into());
        return (r, sn);
    }
    if out.timed_out {
        r.reason = Some(format!("client did not finish within {timeout:?}"));
        return (r, sn);
    }
    match parse_bulk(
        &out.stdout,
        ctx.secs.as_secs_f64(),
        ctx.warmup.as_secs_f64(),
    ) {
        Ok(b) => {
            r.mbit_s = b.mbit;
            r.steady_mbit_s = b.steady;
            r.tool_mbit_s = b.tool;
            r.bytes_in_window = Some(b.bytes);
            r.intervals_mbit = b.intervals;
            r.cc_seen.readback = b.readback;
            let real: Vec<&String> = b.errors.iter().filter(|e| !e.contains(TAIL_CUT)).collect();
            if b.errors.iter().any(|e| e.contains(TAIL_CUT)) {
                r.notes.push(format!(
                    "tail not drained within --drain {:?} (not counted)",
                    ctx.drain
                ));
            }
            if b.mbit.is_none() || (b.bytes == 0 && !real.is_empty()) {
                r.reason = Some(
                    real.first()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "no data in the measurement window".into()),
                );
            } else {
                r.status = "ok".into();
                for e in real {
                    r.notes.push(format!("stream error: {e}"));
                }
            }
        }
        Err(e) => {
            let err = out.stderr.lines().last().unwrap_or("").to_string();
            r.reason = Some(format!("{e:#}; exit {:?}; stderr: {err}", out.code));
        }
    }
    (r, sn)
}

fn run_direct(ctx: &Ctx, env: &Env, spec: &Spec) -> RunResult {
    let target = format!("{}:{PERF_PORT}", env.addr_b);
    let (mut r, sn) = bulk_run(ctx, env, spec, &[], &target, &[]);
    record_socks(
        &mut r,
        &sn,
        |x| x.peer_ip == env.addr_b && x.peer_port == PERF_PORT,
        |x| x.local_port == PERF_PORT && x.local_ip == env.addr_b && x.peer_ip == env.addr_a,
    );
    r
}

fn run_mptcp(ctx: &Ctx, env: &Env, spec: &Spec) -> RunResult {
    let Some(mz) = &ctx.mptcpize else {
        return RunResult::skipped(
            &spec.id(),
            "mptcp",
            spec.flows,
            spec.cc,
            "mptcpize not found",
        );
    };
    let target = format!("{}:{MPTCP_PORT}", env.addr_b);
    let prefix = [mz.to_string_lossy().into_owned(), s("run")];
    let (mut r, sn) = bulk_run(ctx, env, spec, &prefix, &target, &[]);
    let ports =
        |p: u16| p == MPTCP_PORT || (MPTCP_EXTRA_BASE + 1..MPTCP_EXTRA_BASE + 16).contains(&p);
    record_socks(
        &mut r,
        &sn,
        |x| x.peer_ip == env.addr_b && ports(x.peer_port),
        |x| ports(x.local_port) && x.peer_ip == env.addr_a,
    );
    let mid = sn.get(sn.len() / 2);
    let subflow_socks = mid.map_or(0, |m| {
        m.a.iter()
            .filter(|x| x.mptcp_subflow && x.peer_ip == env.addr_b && ports(x.peer_port))
            .count()
    });
    let conn = mid.and_then(|m| {
        m.mptcp_a
            .iter()
            .find(|x| x.peer_port == MPTCP_PORT && x.peer_ip == env.addr_b)
    });
    match conn {
        Some(c) => {
            r.mptcp_subflows = Some(c.subflows.unwrap_or(0) + 1);
            r.notes.push(format!(
                "ss -Mi: subflows:{} (+1 initial); {subflow_socks} TCP subflow sockets in the client namespace",
                c.subflows.unwrap_or(0)
            ));
        }
        None if r.status == "ok" => r
            .notes
            .push("no MPTCP connection in `ss -Mi` at mid-run: it fell back to plain TCP".into()),
        None => {}
    }
    r
}

/// A running mtcpd pair.
struct Mtcpd {
    server: Proc,
    client: Proc,
    client_log: PathBuf,
    server_log: PathBuf,
    tunnel_port: u16,
    app_port: u16,
}

fn start_mtcpd(ctx: &Ctx, env: &Env, n: u32, cc: &str) -> Result<Mtcpd> {
    let bin = ctx.mtcpd.as_ref().context(ctx.mtcpd_missing.clone())?;
    let k = ctx.port();
    let (tport, aport) = (8000 + k, 7000 + k);
    let dir = &ctx.tmp;
    let (sc, cc_path) = (
        dir.join(format!("s{k}.toml")),
        dir.join(format!("c{k}.toml")),
    );
    std::fs::write(
        &sc,
        format!(
            "mode = \"server\"\npsk = \"{PSK}\"\ncongestion = \"{cc}\"\n[server]\nlisten_ip = \"{b}\"\nlisten_port = {tport}\nbackend_ip = \"{b}\"\nbackend_port = {PERF_PORT}\nconnection_pool_size = {n}\n",
            b = env.addr_b
        ),
    )?;
    std::fs::write(
        &cc_path,
        format!(
            "mode = \"client\"\npsk = \"{PSK}\"\ncongestion = \"{cc}\"\n[client]\nlocal_listen_ip = \"127.0.0.1\"\nlocal_listen_port = {aport}\nserver_ip = \"{b}\"\nserver_port = {tport}\nconnection_pool_size = {n}\n",
            b = env.addr_b
        ),
    )?;
    let (slog, clog) = (dir.join(format!("s{k}.log")), dir.join(format!("c{k}.log")));
    let b = bin.to_string_lossy().into_owned();
    let env_vars = [("RUST_LOG", "info")];
    let server = Proc::spawn(
        "mtcpd server",
        &env.ns_b,
        &[
            b.clone(),
            s("server"),
            s("-c"),
            sc.to_string_lossy().into_owned(),
        ],
        &env_vars,
        Some(&slog),
    )?;
    wait_listening(&env.ns_b, tport, Duration::from_secs(5))
        .with_context(|| format!("mtcpd server did not start: {}", log_tail(&slog)))?;
    let client = Proc::spawn(
        "mtcpd client",
        &env.ns_a,
        &[
            b,
            s("client"),
            s("-c"),
            cc_path.to_string_lossy().into_owned(),
        ],
        &env_vars,
        Some(&clog),
    )?;
    Ok(Mtcpd {
        server,
        client,
        client_log: clog,
        server_log: slog,
        tunnel_port: tport,
        app_port: aport,
    })
}

fn strip_ansi(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            o.push(c);
        }
    }
    o
}

fn log_tail(p: &Path) -> String {
    let t = strip_ansi(&std::fs::read_to_string(p).unwrap_or_default());
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// Wait until the client logged `n` "tunnel established" lines; returns the congestion control
/// each reported (read back from the socket by mtcpd).
fn wait_tunnels(m: &mut Mtcpd, n: u32, env: &Env) -> Result<BTreeMap<String, u32>> {
    let max = Duration::from_secs(10) + env.rtt * 20;
    let t = Instant::now();
    loop {
        let log = strip_ansi(&std::fs::read_to_string(&m.client_log).unwrap_or_default());
        let up: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("tunnel established"))
            .collect();
        if up.len() as u32 >= n {
            let mut cc = BTreeMap::new();
            for l in up {
                let c = l
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("congestion="))
                    .unwrap_or("?");
                *cc.entry(format!("tunnel:{c}")).or_insert(0) += 1;
            }
            return Ok(cc);
        }
        if !m.client.alive() || !m.server.alive() {
            bail!(
                "mtcpd exited early; client log: {}; server log: {}",
                log_tail(&m.client_log),
                log_tail(&m.server_log)
            );
        }
        if t.elapsed() > max || wan::stop_requested() {
            bail!(
                "only {} of {n} tunnels established after {max:?}; client log: {}",
                up.len(),
                log_tail(&m.client_log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn daemon_warnings(m: &Mtcpd) -> Vec<String> {
    let mut v = Vec::new();
    for (who, p) in [("client", &m.client_log), ("server", &m.server_log)] {
        let t = strip_ansi(&std::fs::read_to_string(p).unwrap_or_default());
        let mut n = 0;
        for l in t
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        {
            if n < 3 {
                v.push(format!("mtcpd {who}: {}", l.trim()));
            }
            n += 1;
        }
        if n > 3 {
            v.push(format!("mtcpd {who}: {} more warnings", n - 3));
        }
    }
    v
}

fn run_mtcpd(ctx: &Ctx, env: &Env, spec: &Spec) -> RunResult {
    let cc = spec.cc.unwrap_or("bbr");
    let fail = |why: String| {
        let mut r = RunResult::skipped(&spec.id(), "mtcpd", spec.flows, spec.cc, &why);
        r.status = "failed".into();
        r
    };
    if ctx.mtcpd.is_none() {
        return RunResult::skipped(&spec.id(), "mtcpd", spec.flows, spec.cc, &ctx.mtcpd_missing);
    }
    let mut m = match start_mtcpd(ctx, env, spec.flows, cc) {
        Ok(m) => m,
        Err(e) => return fail(format!("{e:#}")),
    };
    let tunnels = match wait_tunnels(&mut m, spec.flows, env) {
        Ok(t) => t,
        Err(e) => return fail(format!("{e:#}")),
    };
    let target = format!("127.0.0.1:{}", m.app_port);
    let (mut r, sn) = bulk_run(ctx, env, spec, &[], &target, &[&m.client, &m.server]);
    let tp = m.tunnel_port;
    record_socks(
        &mut r,
        &sn,
        |x| x.peer_ip == env.addr_b && x.peer_port == tp,
        |x| x.local_port == tp && x.peer_ip == env.addr_a,
    );
    // The app-side socket is loopback; what matters is the tunnels.
    r.cc_seen.readback = tunnels;
    r.notes.extend(daemon_warnings(&m));
    m.client.stop(Duration::from_millis(300));
    m.server.stop(Duration::from_millis(300));
    r
}

fn run_kcptun(ctx: &Ctx, env: &Env, spec: &Spec) -> RunResult {
    let Some((kc, ks)) = &ctx.kcptun else {
        return RunResult::skipped(
            &spec.id(),
            "kcptun",
            1,
            None,
            "kcptun-client/kcptun-server not found (Debian package kcptun; `make perf-deps`)",
        );
    };
    let k = ctx.port();
    let (udp, app) = (4000 + k, 7000 + k);
    let kargs: Vec<String> = KCPTUN_ARGS.split_whitespace().map(str::to_owned).collect();
    let mut sa = vec![
        ks.to_string_lossy().into_owned(),
        s("-t"),
        format!("{}:{PERF_PORT}", env.addr_b),
        s("-l"),
        format!("{}:{udp}", env.addr_b),
    ];
    sa.extend(kargs.iter().cloned());
    let mut ca = vec![
        kc.to_string_lossy().into_owned(),
        s("-r"),
        format!("{}:{udp}", env.addr_b),
        s("-l"),
        format!("127.0.0.1:{app}"),
    ];
    ca.extend(kargs);
    let fail = |why: String| {
        let mut r = RunResult::skipped(&spec.id(), "kcptun", 1, None, &why);
        r.status = "failed".into();
        r
    };
    let slog = ctx.tmp.join(format!("kcps{k}.log"));
    let clog = ctx.tmp.join(format!("kcpc{k}.log"));
    let mut server = match Proc::spawn("kcptun-server", &env.ns_b, &sa, &[], Some(&slog)) {
        Ok(p) => p,
        Err(e) => return fail(format!("{e:#}")),
    };
    let mut client = match Proc::spawn("kcptun-client", &env.ns_a, &ca, &[], Some(&clog)) {
        Ok(p) => p,
        Err(e) => return fail(format!("{e:#}")),
    };
    if let Err(e) = wait_listening(&env.ns_a, app, Duration::from_secs(5)) {
        return fail(format!("{e:#}; kcptun-client log: {}", log_tail(&clog)));
    }
    let (mut r, sn) = bulk_run(
        ctx,
        env,
        spec,
        &[],
        &format!("127.0.0.1:{app}"),
        &[&client, &server],
    );
    // The read-back is of the loopback application sockets, not of anything on the path.
    r.cc_seen.readback.clear();
    let mid = sn.get(sn.len() / 2);
    r.cc_seen.udp_sockets = mid.map_or(0, |m| m.udp_kcptun);
    r.sockets_sampled = r.cc_seen.udp_sockets;
    r.tcp.receiver_daemon_rss_mib_max = sn.iter().filter_map(|x| x.rss_mib).reduce(f64::max);
    r.notes
        .push("rides UDP (KCP): TCP congestion control does not apply".into());
    if !server.alive() || !client.alive() {
        r.notes
            .push("a kcptun process exited during the run".into());
    }
    client.stop(Duration::from_millis(300));
    server.stop(Duration::from_millis(300));
    r
}

fn ms(v: &Value) -> Option<f64> {
    v.as_f64().map(|u| u / 1000.0)
}

fn run_ttfb(ctx: &Ctx, env: &Env, via: &str) -> TtfbResult {
    let mut daemons = None;
    let mut notes = Vec::new();
    let target = if via == "mtcpd" {
        if ctx.mtcpd.is_none() {
            return TtfbResult::skipped(via, "skipped", &ctx.mtcpd_missing);
        }
        let mut m = match start_mtcpd(ctx, env, 8, "bbr") {
            Ok(m) => m,
            Err(e) => return TtfbResult::skipped(via, "failed", &format!("{e:#}")),
        };
        match wait_tunnels(&mut m, 8, env) {
            Ok(t) => notes.push(format!("8 tunnels up before the first sample: {t:?}")),
            Err(e) => return TtfbResult::skipped(via, "failed", &format!("{e:#}")),
        }
        let t = format!("127.0.0.1:{}", m.app_port);
        daemons = Some(m);
        t
    } else {
        format!("{}:{PERF_PORT}", env.addr_b)
    };
    let args = vec![
        ctx.perf.to_string_lossy().into_owned(),
        s("client"),
        s("-c"),
        target,
        s("--json"),
        s("ttfb"),
        s("-n"),
        ctx.ttfb_samples.to_string(),
        s("-s"),
        s("64"),
        s("-t"),
        s("60s"),
    ];
    let out = run_bounded(
        ns_command(&env.ns_a, &args, &[]),
        Duration::from_secs(90),
        &[],
        |_| {},
    );
    let mut r = TtfbResult::skipped(via, "failed", "");
    r.reason = None;
    match out {
        Ok(o) if !o.timed_out && !o.interrupted => {
            match serde_json::from_str::<Value>(o.stdout.trim()) {
                Ok(v) => {
                    let x = &v["result"];
                    r.samples = x["samples"].as_u64().unwrap_or(0);
                    r.failures = x["failures"].as_u64().unwrap_or(0);
                    r.connect_p50_ms = ms(&x["connect"]["p50_us"]);
                    r.ttfb_min_ms = ms(&x["ttfb"]["min_us"]);
                    r.ttfb_p50_ms = ms(&x["ttfb"]["p50_us"]);
                    r.ttfb_p90_ms = ms(&x["ttfb"]["p90_us"]);
                    r.ttfb_p99_ms = ms(&x["ttfb"]["p99_us"]);
                    r.ttfb_max_ms = ms(&x["ttfb"]["max_us"]);
                    for e in x["errors"].as_array().into_iter().flatten() {
                        if let Some(e) = e.as_str() {
                            notes.push(e.to_string());
                        }
                    }
                    if r.samples > 0 {
                        r.status = "ok".into();
                    } else {
                        r.reason = Some("no successful sample".into());
                    }
                }
                Err(e) => r.reason = Some(format!("parsing the client's JSON: {e}")),
            }
        }
        Ok(o) => {
            r.reason = Some(if o.interrupted {
                "interrupted".into()
            } else {
                "timed out".into()
            })
        }
        Err(e) => r.reason = Some(format!("{e:#}")),
    }
    if let Some(mut m) = daemons {
        notes.extend(daemon_warnings(&m));
        m.client.stop(Duration::from_millis(300));
        m.server.stop(Duration::from_millis(300));
    }
    r.notes = notes;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_have_the_issue_s_shape() {
        let full = plan(false);
        assert_eq!(full.len(), 10);
        assert_eq!(full[0].runs.len(), 2 * (2 + TUNNELS.len() + 1) + 1);
        assert!(full.iter().any(|p| p.id == "rtt100-cap20"));
        assert!(full.iter().any(|p| p.id == "rtt250-loss0.1"));
        let quick = plan(true);
        assert_eq!(quick[0].id, "rtt100-loss1");
        let est = estimate(&full, 8.0, 1.0, 20);
        assert!(est < 40.0 * 60.0, "full grid estimate {est} s");
        let est = estimate(&quick, 6.0, 1.0, 20);
        assert!(est < 170.0, "quick estimate {est} s");
    }

    #[test]
    fn bulk_window_excludes_the_tail() {
        let j = r#"{"result":{"intervals":[
            {"start":0.0,"end":1.0,"bytes":1000000},
            {"start":1.0,"end":2.0,"bytes":2000000},
            {"start":2.0,"end":3.0,"bytes":2000000},
            {"start":3.0,"end":4.0,"bytes":9000000}],
            "streams":[{"cc_client":"bbr","cc_server":"bbr","error":"download did not finish in time"}],
            "sum":{"bits_per_second":1.0}}}"#;
        let b = parse_bulk(j, 3.0, 1.0).unwrap();
        assert!((b.mbit.unwrap() - 40.0 / 3.0).abs() < 1e-9);
        assert!((b.steady.unwrap() - 16.0).abs() < 1e-9);
        assert_eq!(b.readback.get("client:bbr"), Some(&1));
        assert_eq!(b.errors.len(), 1);
    }

    #[test]
    fn utc_formats() {
        let t = utc_now();
        assert_eq!(t.len(), 20);
        assert!(t.ends_with('Z'));
    }
}
