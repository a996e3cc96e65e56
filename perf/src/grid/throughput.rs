//! One throughput run: the bulk client (`mtcp-perf client --json bulk -R`) in namespace A with
//! `ss` samples and CPU accounting mid-run, and its JSON output read back with serde into the
//! window the grid reports.
//!
//! Owns: the measurement window (the first `--time` of the run, the tail excluded) and a
//! run's status and reason. Must not touch: which sockets belong to a contender (its module
//! and [`super::sampling`]).

use super::environment::{Ctx, Env};
use super::plan::{Kind, Spec};
use super::procs::{self, Proc, ns_command, run_bounded};
use super::results::RunResult;
use super::sampling::{Snap, snap};
use super::{s, secs_arg};
use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Parsed `mtcp-perf client --json bulk -R` output.
pub(super) struct Bulk {
    pub(super) mbit: Option<f64>,
    pub(super) steady: Option<f64>,
    pub(super) tool: Option<f64>,
    pub(super) bytes: u64,
    pub(super) intervals: Vec<f64>,
    pub(super) readback: BTreeMap<String, u32>,
    pub(super) errors: Vec<String>,
}

/// The parts of `mtcp-perf client --json bulk` output the grid reads (the client writes
/// `crate::bulk::BulkReport` under `result`; fields it does not need are ignored, and missing or
/// `null` ones, such as a NaN rate, read as absent).
#[derive(Deserialize)]
struct ClientOutput {
    result: BulkOutput,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct BulkOutput {
    intervals: Vec<IntervalOutput>,
    streams: Vec<StreamOutput>,
    sum: SumOutput,
}

#[derive(Deserialize)]
struct IntervalOutput {
    start: Option<f64>,
    end: Option<f64>,
    bytes: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StreamOutput {
    cc_client: Option<String>,
    cc_server: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SumOutput {
    bits_per_second: Option<f64>,
}

pub(super) fn parse_bulk(stdout: &str, secs: f64, warm: f64) -> Result<Bulk> {
    let output: ClientOutput =
        serde_json::from_str(stdout.trim()).context("parsing the client's JSON")?;
    let r = output.result;
    let mut iv: Vec<(f64, f64, u64)> = r
        .intervals
        .iter()
        .filter_map(|i| Some((i.start?, i.end?, i.bytes?)))
        .collect();
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
    for st in &r.streams {
        for (side, cc) in [("client", &st.cc_client), ("server", &st.cc_server)] {
            if let Some(cc) = cc {
                *readback.entry(format!("{side}:{cc}")).or_insert(0) += 1;
            }
        }
        if let Some(e) = &st.error
            && !errors.contains(e)
        {
            errors.push(e.clone());
        }
    }
    Ok(Bulk {
        mbit: all.map(|x| x.0),
        steady,
        tool: r.sum.bits_per_second.map(|b| b / 1e6),
        bytes: all.map_or(0, |x| x.1),
        intervals: iv
            .iter()
            .map(|i| i.2 as f64 * 8.0 / (i.1 - i.0).max(1e-9) / 1e6)
            .collect(),
        readback,
        errors,
    })
}

pub(super) const TAIL_CUT: &str = "download did not finish in time";

/// Run the bulk client (`args` after `client`) in namespace A, sampling `ss` mid-run, and turn
/// its output into a [`RunResult`] (cc fields left for the caller).
pub(super) fn bulk_run(
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The grid reads what the client really writes: a `BulkReport` serialised as `--json` does.
    #[test]
    fn reads_what_the_bulk_client_writes() {
        use crate::bulk::{BulkReport, Dir, Interval, StreamResult, Sum};
        let sum = Sum {
            bytes: 3_000_000,
            seconds: 2.0,
            bits_per_second: 12e6,
            gbit_per_second: 0.012,
        };
        let report = BulkReport {
            streams: vec![StreamResult {
                id: 0,
                direction: Dir::Down,
                bytes: 3_000_000,
                bytes_written: 0,
                seconds: 2.0,
                bits_per_second: f64::NAN,
                gbit_per_second: 0.012,
                server_bytes: None,
                cc_client: Some("cubic".into()),
                cc_server: None,
                tcp_info: Some(mtcpd_common::sockopt::TcpInfo::default()),
                verified: None,
                error: None,
            }],
            intervals: (0..2)
                .map(|i| Interval {
                    start: i as f64,
                    end: i as f64 + 1.0,
                    bytes: 1_500_000,
                    bits_per_second: 12e6,
                    streams: vec![1_500_000],
                })
                .collect(),
            sum_up: None,
            sum_down: Some(sum.clone()),
            sum,
            all_verified: None,
            errors: 0,
        };
        let json = serde_json::json!({"tool": "mtcp-perf", "mode": "bulk", "result": report});
        let b = parse_bulk(&json.to_string(), 2.0, 1.0).unwrap();
        assert!((b.mbit.unwrap() - 12.0).abs() < 1e-9);
        assert!((b.tool.unwrap() - 12.0).abs() < 1e-9);
        assert_eq!(b.bytes, 3_000_000);
        assert_eq!(b.intervals.len(), 2);
        assert_eq!(b.readback.get("client:cubic"), Some(&1));
        assert!(b.errors.is_empty());
        assert!(parse_bulk("{\"result\": 3}", 2.0, 1.0).is_err());
    }
}
