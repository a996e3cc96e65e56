//! Time to first byte, direct and through mtcpd: `mtcp-perf client --json ttfb` in namespace A,
//! its JSON output read back with serde.
//!
//! Owns: the TTFB measurement of a path. Must not touch: throughput runs.

use super::environment::{Ctx, Env, PERF_PORT};
use super::mtcpd::{daemon_warnings, start_mtcpd, wait_tunnels};
use super::procs::{ns_command, run_bounded};
use super::results::TtfbResult;
use super::s;
use serde::Deserialize;
use std::time::Duration;

/// The parts of `mtcp-perf client --json ttfb` output the grid reads (the client writes
/// `crate::latency::TtfbReport` under `result`; a NaN percentile is written as `null`).
#[derive(Deserialize)]
struct ClientOutput {
    result: TtfbOutput,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TtfbOutput {
    samples: u64,
    failures: u64,
    connect: LatencyOutput,
    ttfb: LatencyOutput,
    errors: Vec<String>,
}

/// Latency percentiles in µs, as `crate::stats::LatSummary` writes them.
#[derive(Deserialize, Default)]
#[serde(default)]
struct LatencyOutput {
    min_us: Option<f64>,
    p50_us: Option<f64>,
    p90_us: Option<f64>,
    p99_us: Option<f64>,
    max_us: Option<f64>,
}

fn ms(us: Option<f64>) -> Option<f64> {
    us.map(|u| u / 1000.0)
}

pub(super) fn run_ttfb(ctx: &Ctx, env: &Env, via: &str) -> TtfbResult {
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
            match serde_json::from_str::<ClientOutput>(o.stdout.trim()) {
                Ok(ClientOutput { result: x }) => {
                    r.samples = x.samples;
                    r.failures = x.failures;
                    r.connect_p50_ms = ms(x.connect.p50_us);
                    r.ttfb_min_ms = ms(x.ttfb.min_us);
                    r.ttfb_p50_ms = ms(x.ttfb.p50_us);
                    r.ttfb_p90_ms = ms(x.ttfb.p90_us);
                    r.ttfb_p99_ms = ms(x.ttfb.p99_us);
                    r.ttfb_max_ms = ms(x.ttfb.max_us);
                    notes.extend(x.errors);
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

    /// The grid reads what the client really writes: a `TtfbReport`, where a percentile of no
    /// sample is NaN and so `null` in JSON.
    #[test]
    fn reads_what_the_ttfb_client_writes() {
        use crate::latency::TtfbReport;
        use crate::stats::LatSummary;
        let ttfb = LatSummary {
            count: 3,
            min_us: 100_500.0,
            p50_us: 101_000.0,
            max_us: f64::NAN,
            ..LatSummary::default()
        };
        let report = TtfbReport {
            samples: 3,
            failures: 1,
            connect: LatSummary::default(),
            ttfb,
            errors: vec!["connection refused".into()],
        };
        let json = serde_json::json!({"tool": "mtcp-perf", "result": report}).to_string();
        let ClientOutput { result } = serde_json::from_str(&json).unwrap();
        assert_eq!((result.samples, result.failures), (3, 1));
        assert_eq!(ms(result.ttfb.p50_us), Some(101.0));
        assert_eq!(ms(result.ttfb.min_us), Some(100.5));
        assert_eq!(result.ttfb.max_us, None);
        assert_eq!(result.errors, ["connection refused"]);
    }
}
