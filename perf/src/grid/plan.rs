//! What the grid runs: the command line ([`GridArgs`]), the contenders ([`Kind`], [`Spec`]),
//! the emulated paths ([`PathPlan`]) of the full and quick grids, the filters of `--paths`,
//! `--runs` and `--cc`, and the time estimate.
//!
//! Owns: the plan only. Must not touch: labs, processes or results (the other grid modules).

use clap::Args;
use mtcpd_common::units::parse_duration_or_seconds;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct GridArgs {
    /// Reduced set: the three 100 ms paths behind the targets (clean, 1 % loss, 20 Mbit/s per
    /// flow), their contenders (one bbr flow, 8 parallel bbr flows, mtcpd with 8 bbr tunnels,
    /// mtcpd-auto with the adaptive pool) each `--repeats` times, and TTFB (about 14 minutes at
    /// the default 20 s runs).
    #[arg(long)]
    pub(super) quick: bool,
    /// Results folder (default: results, or results/quick with --quick).
    #[arg(long)]
    pub(super) out: Option<PathBuf>,
    /// Length of each throughput run: long enough for a 250 ms path to leave slow start.
    #[arg(long, default_value = "20s", value_parser = parse_duration_or_seconds)]
    pub(super) time: Duration,
    /// Repeats of each cell behind a target (reported as median and spread); other cells run
    /// once. The repeats are interleaved (A B C A B C …) so that a noisy moment hits every
    /// contender alike.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub(super) repeats: u32,
    /// Extra time a run may take to drain its tail (not counted).
    #[arg(long, default_value = "1s", value_parser = parse_duration_or_seconds)]
    pub(super) drain: Duration,
    /// Start of the "steady" window inside each run: after slow start (one flow needs about
    /// 16 RTTs to fill 1 Gbit/s × 250 ms, i.e. 4 s).
    #[arg(long, default_value = "5s", value_parser = parse_duration_or_seconds)]
    pub(super) warmup: Duration,
    /// Extra top-level mtcpd config lines for both daemons, e.g. `coupled_pacing = true`
    /// (repeatable; recorded in the results' settings).
    #[arg(long = "mtcpd-set", value_name = "KEY = VALUE")]
    pub(super) mtcpd_set: Vec<String>,
    /// The mtcpd binary.
    #[arg(long, default_value = "target/release/mtcpd")]
    pub(super) mtcpd: PathBuf,
    /// Only paths whose id contains one of these (comma-separated), e.g. rtt100-loss1.
    #[arg(long)]
    pub(super) paths: Option<String>,
    /// Only these contenders (comma-separated ids), e.g. direct-1,direct-8,mtcpd-8,kcptun.
    #[arg(long)]
    pub(super) runs: Option<String>,
    /// Only these congestion controls (comma-separated): bbr, cubic.
    #[arg(long)]
    pub(super) cc: Option<String>,
    /// Skip the time-to-first-byte measurements.
    #[arg(long)]
    pub(super) no_ttfb: bool,
    /// TTFB samples per contender.
    #[arg(long, default_value_t = 20)]
    pub(super) ttfb_samples: u64,
    /// Lab name prefix (namespaces PREFIX<k>-a / PREFIX<k>-b).
    #[arg(long, default_value = "grid")]
    pub(super) name: String,
    /// Seed of the emulator's random choices (same on every path).
    #[arg(long, default_value_t = 1)]
    pub(super) seed: u64,
    /// Markdown file whose generated section to rewrite (e.g. docs/BENCHMARKS.md).
    #[arg(long)]
    pub(super) doc: Option<PathBuf>,
    /// Print the plan and the time it should take, run nothing.
    #[arg(long)]
    pub(super) list: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    Direct,
    Mtcpd,
    Mptcp,
    Kcptun,
}

impl Kind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Mtcpd => "mtcpd",
            Kind::Mptcp => "mptcp",
            Kind::Kcptun => "kcptun",
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct Spec {
    pub(super) kind: Kind,
    pub(super) flows: u32,
    pub(super) cc: Option<&'static str>,
    /// Runs of this cell (more than one for the cells behind a target).
    pub(super) repeats: u32,
}

/// `Spec::flows` of the contender "mtcpd-auto": `connection_pool_size = "auto"`.
pub(super) const AUTO: u32 = 0;

impl Spec {
    pub(super) fn id(&self) -> String {
        match self.kind {
            Kind::Kcptun => "kcptun".into(),
            Kind::Mtcpd if self.flows == AUTO => "mtcpd-auto".into(),
            k => format!("{}-{}", k.name(), self.flows),
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct PathPlan {
    pub(super) id: String,
    pub(super) label: String,
    pub(super) rtt_ms: u32,
    pub(super) loss_pct: f64,
    pub(super) flow_cap_mbit: Option<u32>,
    pub(super) runs: Vec<Spec>,
    pub(super) ttfb: bool,
}

pub(super) const RATE_MBIT: u32 = 1000;
pub(super) const CCS: [&str; 2] = ["bbr", "cubic"];
pub(super) const TUNNELS: [u32; 5] = [1, 2, 4, 8, 16];
/// Parallel direct flows and MPTCP subflows (the "ideal aggregation" comparison).
pub(super) const N_PARALLEL: u32 = 8;

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
    Spec {
        kind,
        flows,
        cc,
        repeats: 1,
    }
}

/// Whether cell `s` on path `p` is behind a target of issue 13: one bbr flow, 8 parallel bbr
/// flows and mtcpd with 8 bbr tunnels on the 100 ms paths (clean, 1 % loss, per-flow cap).
pub(super) fn behind_target(p: &PathPlan, s: &Spec) -> bool {
    p.rtt_ms == 100
        && (p.loss_pct == 0.0 || p.loss_pct == 1.0)
        && s.cc == Some("bbr")
        && matches!(
            (s.kind, s.flows),
            (Kind::Direct, 1) | (Kind::Direct, N_PARALLEL) | (Kind::Mtcpd, 8 | AUTO)
        )
}

fn full_runs() -> Vec<Spec> {
    let mut v = Vec::new();
    for cc in CCS {
        v.push(spec(Kind::Direct, 1, Some(cc)));
        v.push(spec(Kind::Direct, N_PARALLEL, Some(cc)));
        for n in TUNNELS {
            v.push(spec(Kind::Mtcpd, n, Some(cc)));
        }
        // The adaptive pool beside the fixed ones (bbr only: the full grid stays near an hour).
        if cc == "bbr" {
            v.push(spec(Kind::Mtcpd, AUTO, Some(cc)));
        }
        v.push(spec(Kind::Mptcp, N_PARALLEL, Some(cc)));
    }
    v.push(spec(Kind::Kcptun, 1, None));
    v
}

fn plan(quick: bool) -> Vec<PathPlan> {
    if quick {
        let target = || {
            vec![
                spec(Kind::Direct, 1, Some("bbr")),
                spec(Kind::Direct, N_PARALLEL, Some("bbr")),
                spec(Kind::Mtcpd, 8, Some("bbr")),
                spec(Kind::Mtcpd, AUTO, Some("bbr")),
            ]
        };
        return vec![
            path(100, 0.0, None, target(), true),
            path(100, 1.0, None, target(), false),
            path(100, 0.0, Some(20), target(), false),
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

pub(super) fn filtered_plan(a: &GridArgs) -> Vec<PathPlan> {
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
        let pc = p.clone();
        for s in &mut p.runs {
            if behind_target(&pc, s) {
                s.repeats = a.repeats;
            }
        }
    }
    v.retain(|p| !p.runs.is_empty() || p.ttfb);
    v
}

/// Seconds a plan should take: each run (repeats counted) is `time` + its drain + start-up;
/// TTFB about 3 RTT per sample over two contenders; one second per lab.
pub(super) fn estimate(plan: &[PathPlan], secs: f64, drain: f64, samples: u64) -> f64 {
    plan.iter()
        .map(|p| {
            let n: u32 = p.runs.iter().map(|s| s.repeats).sum();
            let runs = n as f64 * (secs + drain + 1.3 + 3.0 * p.rtt_ms as f64 / 1e3);
            let ttfb = if p.ttfb {
                samples as f64 * 3.0 * p.rtt_ms as f64 / 1e3 + 3.0
            } else {
                0.0
            };
            runs + ttfb + 1.5
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_have_the_issue_s_shape() {
        let full = plan(false);
        assert_eq!(full.len(), 10);
        assert_eq!(full[0].runs.len(), 2 * (2 + TUNNELS.len() + 1) + 1 + 1);
        assert!(full[0].runs.iter().any(|s| s.id() == "mtcpd-auto"));
        assert!(full.iter().any(|p| p.id == "rtt100-cap20"));
        assert!(full.iter().any(|p| p.id == "rtt250-loss0.1"));
        let mut quick = plan(true);
        assert_eq!(quick[0].id, "rtt100-loss0");
        assert_eq!(quick[1].id, "rtt100-loss1");
        assert_eq!(quick[2].id, "rtt100-cap20");
        for p in &mut quick {
            let pc = p.clone();
            for s in &mut p.runs {
                assert!(behind_target(&pc, s), "{} {}", p.id, s.id());
                s.repeats = 3;
            }
        }
        let est = estimate(&full, 20.0, 1.0, 20);
        assert!(est < 70.0 * 60.0, "full grid estimate {est} s");
        let est = estimate(&quick, 20.0, 1.0, 20);
        // Four contenders (mtcpd-auto beside mtcpd-8) x 3 repeats on three paths.
        assert!(est < 14.0 * 60.0, "quick estimate {est} s");
    }
}
