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
//!
//! Layout: [`plan`] (command line, contenders, paths), [`environment`] (lock, tools, labs),
//! [`throughput`] (one bulk run and its window), one module per contender ([`direct`],
//! [`mtcpd`], [`mptcp`], [`kcptun`]), [`ttfb`], [`sampling`] (`ss` samples and the profile),
//! [`procs`] (processes in namespaces, CPU) and [`results`] (`grid.json`). This module owns the
//! order of things: paths one after the other, contenders one after the other on each.

mod direct;
mod environment;
mod kcptun;
mod mptcp;
mod mtcpd;
mod plan;
pub mod procs;
pub mod results;
mod sampling;
mod throughput;
mod ttfb;

pub use plan::GridArgs;

use crate::wan;
use anyhow::{Context, Result, bail};
use environment::{Ctx, PathLab, TmpDir, load1, loadavg, lock_grid, machine, utc_now};
use plan::{Kind, PathPlan, RATE_MBIT, estimate, filtered_plan};
use results::{GridResults, PathResult, RunResult, Settings};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A command-line argument from anything printable.
fn s(x: impl ToString) -> String {
    x.to_string()
}

/// A duration as mtcp-perf's flags take it, in whole milliseconds.
fn secs_arg(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

pub fn main(a: GridArgs) -> Result<i32> {
    let plan = filtered_plan(&a);
    let secs = a.time;
    let est = estimate(
        &plan,
        secs.as_secs_f64(),
        a.drain.as_secs_f64(),
        a.ttfb_samples,
    );
    let nruns: u32 = plan
        .iter()
        .map(|p| p.runs.iter().map(|s| s.repeats).sum::<u32>())
        .sum();
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
    if let Some(why) = wan::netns::unavailable() {
        bail!("the grid needs the WAN lab, which cannot be built here: {why}");
    }
    let _lock = lock_grid(&a.name)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(if a.quick { "results/quick" } else { "results" }));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let tmp = TmpDir::create()?;
    let ctx = Ctx::new(&a, secs, &tmp)?;

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
        machine: machine(&ctx),
        settings: Settings {
            seconds: secs.as_secs_f64(),
            drain_seconds: a.drain.as_secs_f64(),
            warmup_seconds: a.warmup.as_secs_f64(),
            repeats: a.repeats,
            ttfb_samples: a.ttfb_samples,
            seed: a.seed,
            direction: "download: server in namespace B sends, client in A receives and counts"
                .into(),
            mtcpd_config: mtcpd_config_summary(&a.mtcpd_set),
            kcptun_args: kcptun::KCPTUN_ARGS.into(),
            mptcp_setup: format!(
                "ip mptcp limits set subflows 8 add_addr_accepted 8 (both namespaces); N-1 `signal` endpoints on server ports {}..; client and server under `mptcpize run`",
                mptcp::MPTCP_EXTRA_BASE + 1
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
        if let Ok(removed) = wan::netns::down(&lab_name)
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
    let lab = PathLab::up(ctx, p, lab_name, seed, res, idx)?;
    let env = &lab.env;
    let rounds = p.runs.iter().map(|s| s.repeats).max().unwrap_or(1);
    // Repeats interleaved: round k runs every cell that has a k-th repeat.
    let order = (0..rounds).flat_map(|k| {
        p.runs
            .iter()
            .filter(move |s| k < s.repeats)
            .map(move |s| (k, s))
    });
    for (repeat, spec) in order {
        if wan::stop_requested() {
            break;
        }
        if lab.failed() {
            bail!("the emulator stopped unexpectedly");
        }
        let t = Instant::now();
        let load = load1();
        eprint!(
            "   {:<10} {:<6} #{} ",
            spec.id(),
            spec.cc.unwrap_or("(udp)"),
            repeat + 1
        );
        let before = lab.counters();
        let mut r = match spec.kind {
            Kind::Direct => direct::run_direct(ctx, env, spec),
            Kind::Mtcpd => mtcpd::run_mtcpd(ctx, env, spec),
            Kind::Mptcp => match &lab.mptcp_ready {
                Ok(()) => mptcp::run_mptcp(ctx, env, spec),
                Err(e) => RunResult::skipped(&spec.id(), spec.kind.name(), spec.flows, spec.cc, e),
            },
            Kind::Kcptun => kcptun::run_kcptun(ctx, env, spec),
        };
        if wan::stop_requested() && r.status != "skipped" {
            r.status = "failed".into();
            r.reason = Some("interrupted (SIGINT/SIGTERM)".into());
        }
        r.load_before = load;
        r.repeat = repeat;
        r.bottleneck = Some(lab.counters().since(before));
        r.seconds_taken = t.elapsed().as_secs_f64();
        eprintln!("{}", run_line(&r));
        res.paths[idx].runs.push(r);
        save(res)?;
        // Let the path's queues empty before the next contender.
        std::thread::sleep(Duration::from_millis(300));
    }
    if p.ttfb && !wan::stop_requested() {
        for via in ["direct", "mtcpd"] {
            let r = ttfb::run_ttfb(ctx, env, via);
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
            if let Some(b) = &r.bottleneck {
                s += &format!("  queue drops {}", b.drop_queue);
            }
            s
        }
        (st, _) => format!("{st}: {}", r.reason.clone().unwrap_or_default()),
    }
}

/// How the grid configures mtcpd, for the results' settings: the keys it sets, and the
/// defaults the rest take, read from the engine's own defaults.
fn mtcpd_config_summary(extra: &[String]) -> String {
    use mtcpd_common::units::ByteSize;
    let d = mtcpd_engine::Config::default();
    format!(
        "psk; congestion = <cc>; connection_pool_size = N on both ends; {}every other key at its \
         default (stream_window {}, session_window {}, enable_zero_rtt = {}, coupled_pacing = {}); \
         RUST_LOG=info",
        extra.iter().map(|l| format!("{l}; ")).collect::<String>(),
        ByteSize(d.stream_window),
        ByteSize(d.session_window),
        d.zero_rtt,
        d.coupled_pacing
    )
}
