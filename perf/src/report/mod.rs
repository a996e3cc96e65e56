//! `mtcp-perf report`: turns a grid's `grid.json` into `grid.csv`, `ttfb.csv`, SVG plots
//! (plotters, SVG backend only) and a markdown section (`summary.md`), and rewrites that section
//! of a markdown file between `<!-- perf-grid:MODE:begin -->` and `<!-- perf-grid:MODE:end -->`
//! (appending it when the markers are missing). `mtcp-perf grid` calls it at the end; run it
//! by hand to regenerate the outputs from saved results.
//!
//! Layout: this module (the command, shared lookups and formatting), [`csv`], [`charts`],
//! [`tables`] and [`markdown`] (the section), [`doc`] (rewriting the section in a file). The
//! grid's results are read with serde into `crate::grid::results::GridResults`, the type the
//! grid writes.

mod charts;
mod csv;
mod doc;
mod markdown;
mod tables;

use crate::grid::results::{GridResults, PathResult, RunResult, Spread};
use anyhow::{Context, Result};
use charts::{scaling_chart, throughput_chart, ttfb_chart};
use clap::Args;
use csv::{runs_csv, ttfb_csv};
use doc::update_doc;
use markdown::markdown;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

#[derive(Args)]
pub struct ReportArgs {
    /// The grid's results.
    #[arg(long, default_value = "results/grid.json")]
    results: PathBuf,
    /// Folder for CSV, SVG and summary.md (default: the folder of --results).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Markdown file whose generated section to rewrite (e.g. docs/BENCHMARKS.md).
    #[arg(long)]
    doc: Option<PathBuf>,
}

pub fn main(a: ReportArgs) -> Result<i32> {
    let text = std::fs::read_to_string(&a.results)
        .with_context(|| format!("reading {}", a.results.display()))?;
    let res: GridResults =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", a.results.display()))?;
    let out = a.out.clone().unwrap_or_else(|| {
        a.results
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    });
    generate(&res, &out, a.doc.as_deref())?;
    Ok(0)
}

/// Write every output of a grid into `out`, and the markdown section into `doc` if given.
pub fn generate(res: &GridResults, out: &Path, doc: Option<&Path>) -> Result<()> {
    std::fs::create_dir_all(out)?;
    // The CSV keeps every repeat; tables and plots show each cell's median.
    std::fs::write(out.join("grid.csv"), runs_csv(res))?;
    std::fs::write(out.join("ttfb.csv"), ttfb_csv(res))?;
    let folded = fold_repeats(res);
    let res = &folded;
    let mut plots = Vec::new();
    for cc in ccs(res) {
        let f = format!("throughput-{cc}.svg");
        if throughput_chart(res, &cc, &out.join(&f))? {
            plots.push((format!("throughput, {cc} (log scale)"), f));
        }
    }
    for p in &res.paths {
        let f = format!("scaling-{}.svg", p.id);
        if scaling_chart(p, &out.join(&f))? {
            plots.push((format!("mtcpd vs tunnels, {}", p.label), f));
        }
    }
    if ttfb_chart(res, &out.join("ttfb.svg"))? {
        plots.push(("time to first byte".into(), "ttfb.svg".into()));
    }
    let summary = markdown(res, out, out, &plots);
    std::fs::write(out.join("summary.md"), &summary)?;
    if let Some(doc) = doc {
        let base = doc.parent().unwrap_or(Path::new("."));
        let section = markdown(res, out, base, &plots);
        update_doc(doc, &res.mode, &section)?;
        eprintln!(
            "report: updated the {} section of {}",
            res.mode,
            doc.display()
        );
    }
    eprintln!(
        "report: wrote grid.csv, ttfb.csv, summary.md and {} plot(s) to {}",
        plots.len(),
        out.display()
    );
    Ok(())
}

/// The median of `v` (the mean of the middle two for an even count); `None` when empty.
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// `res` with the repeats of every cell (same path, contender and congestion control) folded
/// into one run: the figures are the medians of the successful repeats, `spread` says how many
/// there were and their range. A cell whose repeats all failed keeps its first run.
fn fold_repeats(res: &GridResults) -> GridResults {
    let mut out = res.clone();
    for p in &mut out.paths {
        let mut folded: Vec<RunResult> = Vec::new();
        for r in &p.runs {
            if folded.iter().any(|f| f.id == r.id && f.cc == r.cc) {
                continue;
            }
            let group: Vec<&RunResult> = p
                .runs
                .iter()
                .filter(|x| x.id == r.id && x.cc == r.cc)
                .collect();
            let ok: Vec<&RunResult> = group
                .iter()
                .copied()
                .filter(|x| x.status == "ok" && x.mbit_s.is_some())
                .collect();
            if group.len() < 2 || ok.is_empty() {
                folded.push(r.clone());
                continue;
            }
            let whole: Vec<f64> = ok.iter().filter_map(|x| x.mbit_s).collect();
            let steady: Vec<f64> = ok.iter().filter_map(|x| x.steady_mbit_s).collect();
            let m = median(whole.clone()).unwrap_or_default();
            // The run closest to the median stands for the cell (profile, sockets, CPU).
            let mut rep = ok
                .iter()
                .min_by(|a, b| {
                    let d = |x: &RunResult| (x.mbit_s.unwrap_or_default() - m).abs();
                    d(a).total_cmp(&d(b))
                })
                .map(|x| (*x).clone())
                .unwrap_or_else(|| r.clone());
            rep.mbit_s = Some(m);
            rep.steady_mbit_s = median(steady.clone());
            let drops: Vec<f64> = ok
                .iter()
                .filter_map(|x| x.bottleneck.map(|b| b.drop_queue as f64))
                .collect();
            let mm = |v: &[f64]| {
                (
                    v.iter().copied().reduce(f64::min),
                    v.iter().copied().reduce(f64::max),
                )
            };
            let (lo, hi) = mm(&whole);
            let (slo, shi) = mm(&steady);
            rep.spread = Some(Spread {
                runs: ok.len() as u32,
                mbit_min: lo.unwrap_or_default(),
                mbit_max: hi.unwrap_or_default(),
                steady_min: slo,
                steady_max: shi,
                queue_drops_median: median(drops).map(|d| d.round() as u64),
            });
            let failed = group.len() - ok.len();
            if failed > 0 {
                rep.notes
                    .push(format!("{failed} of {} repeats failed", group.len()));
            }
            folded.push(rep);
        }
        p.runs = folded;
    }
    out
}

fn ccs(res: &GridResults) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for p in &res.paths {
        for r in &p.runs {
            if let Some(cc) = &r.cc
                && !v.contains(cc)
            {
                v.push(cc.clone());
            }
        }
    }
    v
}

/// Column ids in display order, as present in the results.
fn columns(res: &GridResults) -> Vec<String> {
    let order = |id: &str| -> (u32, u32) {
        let (kind, n) = id.split_once('-').unwrap_or((id, "0"));
        let k = match kind {
            "direct" => 0,
            "mtcpd" => 1,
            "mptcp" => 2,
            _ => 3,
        };
        (k, n.parse().unwrap_or(0))
    };
    let mut v: Vec<String> = Vec::new();
    for p in &res.paths {
        for r in &p.runs {
            if !v.contains(&r.id) {
                v.push(r.id.clone());
            }
        }
    }
    v.sort_by_key(|id| order(id));
    v
}

fn col_title(id: &str) -> String {
    match id.split_once('-') {
        Some(("direct", n)) => format!("{n} direct"),
        Some(("mtcpd", n)) => format!("mtcpd {n}"),
        Some(("mptcp", n)) => format!("MPTCP {n}"),
        _ => id.to_string(),
    }
}

fn fmt_mbit(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}")).unwrap_or_default()
}

/// The run of `id` on path `p` with congestion control `cc` (kcptun has none: any row).
fn find<'a>(p: &'a PathResult, id: &str, cc: &str) -> Option<&'a RunResult> {
    p.runs
        .iter()
        .find(|r| r.id == id && r.cc.as_deref().is_none_or(|c| c == cc))
}

fn ok_mbit(r: Option<&RunResult>) -> Option<f64> {
    r.filter(|r| r.status == "ok").and_then(|r| r.mbit_s)
}

fn cc_map(m: &BTreeMap<String, u32>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} x{v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn short_label(p: &PathResult) -> String {
    match p.flow_cap_mbit {
        Some(c) => format!("{}ms cap{c}", p.rtt_ms),
        None => format!("{}ms {}%", p.rtt_ms, p.loss_pct),
    }
}

/// `path` relative to folder `base` (both taken from the current directory when relative).
fn relative(path: &Path, base: &Path) -> PathBuf {
    let abs = |p: &Path| -> Vec<String> {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        let mut v: Vec<String> = Vec::new();
        for c in p.components() {
            match c {
                Component::ParentDir => {
                    v.pop();
                }
                Component::Normal(s) => v.push(s.to_string_lossy().into_owned()),
                _ => {}
            }
        }
        v
    };
    let (p, b) = (abs(path), abs(base));
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut r = PathBuf::new();
    for _ in common..b.len() {
        r.push("..");
    }
    for s in &p[common..] {
        r.push(s);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative(Path::new("results/quick/a.svg"), Path::new("docs")),
            PathBuf::from("../results/quick/a.svg")
        );
        assert_eq!(
            relative(Path::new("results/a.svg"), Path::new("results")),
            PathBuf::from("a.svg")
        );
    }

    /// A made-up full grid (test data, never written into results/): every output is
    /// produced and the markdown has one row per path and congestion control.
    #[test]
    fn generates_every_output_for_a_full_grid() {
        use crate::grid::results::*;
        let run = |id: &str, kind: &str, n: u32, cc: Option<&str>, v: f64| {
            let mut r = RunResult::skipped(id, kind, n, cc, "");
            r.status = "ok".into();
            r.reason = None;
            r.mbit_s = Some(v);
            r.steady_mbit_s = Some(v * 1.1);
            r
        };
        let mut paths = Vec::new();
        for (rtt, loss, cap) in [(20, 0.0, None), (100, 1.0, None), (100, 0.0, Some(20))] {
            let mut runs = Vec::new();
            for cc in ["bbr", "cubic"] {
                runs.push(run("direct-1", "direct", 1, Some(cc), 10.0));
                runs.push(run("direct-8", "direct", 8, Some(cc), 80.0));
                for n in [1, 2, 4, 8, 16] {
                    runs.push(run(
                        &format!("mtcpd-{n}"),
                        "mtcpd",
                        n,
                        Some(cc),
                        9.0 * n as f64,
                    ));
                }
                runs.push(RunResult::skipped(
                    "mptcp-8",
                    "mptcp",
                    8,
                    Some(cc),
                    "no mptcpize",
                ));
            }
            runs.push(run("kcptun", "kcptun", 1, None, 30.0));
            let mut t = TtfbResult::skipped("mtcpd", "ok", "");
            t.ttfb_p50_ms = Some(rtt as f64 + 1.0);
            t.ttfb_p90_ms = Some(rtt as f64 + 2.0);
            paths.push(PathResult {
                id: format!("p{rtt}-{loss}"),
                label: format!("{rtt} ms {loss} {cap:?}"),
                rtt_ms: rtt,
                loss_pct: loss,
                rate_mbit: 1000,
                flow_cap_mbit: cap,
                impairment: String::new(),
                lab: String::new(),
                error: None,
                emulator: Vec::new(),
                runs,
                ttfb: vec![t],
            });
        }
        let res = GridResults {
            schema: SCHEMA,
            mode: "full".into(),
            started_utc: String::new(),
            finished_utc: None,
            wall_seconds: 0.0,
            complete: true,
            command: "mtcp-perf grid".into(),
            machine: Machine::default(),
            settings: Settings {
                seconds: 8.0,
                drain_seconds: 1.0,
                warmup_seconds: 2.0,
                repeats: 1,
                ttfb_samples: 20,
                seed: 1,
                direction: String::new(),
                mtcpd_config: String::new(),
                kcptun_args: String::new(),
                mptcp_setup: String::new(),
            },
            paths,
        };
        let dir = std::env::temp_dir().join(format!("mtcp-report-test-{}", std::process::id()));
        let doc = dir.join("doc.md");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&doc, "# Doc\n").unwrap();
        generate(&res, &dir, Some(&doc)).unwrap();
        for f in [
            "grid.csv",
            "ttfb.csv",
            "summary.md",
            "throughput-bbr.svg",
            "throughput-cubic.svg",
            "scaling-p100-1.svg",
            "ttfb.svg",
        ] {
            assert!(dir.join(f).is_file(), "{f} missing");
        }
        let md = std::fs::read_to_string(&doc).unwrap();
        assert!(md.starts_with("# Doc\n"));
        assert_eq!(md.matches("| 100 ms 1 None | bbr | 10.0 |").count(), 1);
        assert_eq!(md.matches("skipped [1]").count(), 6);
        assert!(!md.contains("skipped [2]"));
        assert!(md.contains("mtcpd, 8 bbr tunnels ≥ 150 Mbit/s"));
        let csv = std::fs::read_to_string(dir.join("grid.csv")).unwrap();
        assert_eq!(csv.lines().count(), 1 + 3 * 17);
        if std::env::var_os("KEEP_REPORT_TEST").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// Repeats fold into their median with the range as the spread; a single run stays as is.
    #[test]
    fn repeats_fold_into_median_and_spread() {
        use crate::grid::results::*;
        let run = |id: &str, v: f64, q: u64| {
            let mut r = RunResult::skipped(id, "mtcpd", 8, Some("bbr"), "");
            r.status = "ok".into();
            r.mbit_s = Some(v);
            r.steady_mbit_s = Some(v + 1.0);
            r.bottleneck = Some(crate::wan::LiveCounters {
                drop_queue: q,
                ..Default::default()
            });
            r
        };
        let mut failed = run("mtcpd-8", 1.0, 0);
        failed.status = "failed".into();
        let path = PathResult {
            id: "p".into(),
            label: "p".into(),
            rtt_ms: 100,
            loss_pct: 0.0,
            rate_mbit: 1000,
            flow_cap_mbit: None,
            impairment: String::new(),
            lab: String::new(),
            error: None,
            emulator: Vec::new(),
            runs: vec![
                run("mtcpd-8", 300.0, 10),
                run("direct-1", 50.0, 1),
                run("mtcpd-8", 100.0, 30),
                run("mtcpd-8", 200.0, 20),
                failed,
            ],
            ttfb: Vec::new(),
        };
        let res = GridResults {
            schema: SCHEMA,
            mode: "quick".into(),
            started_utc: String::new(),
            finished_utc: None,
            wall_seconds: 0.0,
            complete: true,
            command: String::new(),
            machine: Machine::default(),
            settings: Settings {
                seconds: 20.0,
                drain_seconds: 1.0,
                warmup_seconds: 5.0,
                repeats: 3,
                ttfb_samples: 0,
                seed: 1,
                direction: String::new(),
                mtcpd_config: String::new(),
                kcptun_args: String::new(),
                mptcp_setup: String::new(),
            },
            paths: vec![path],
        };
        let f = fold_repeats(&res);
        let runs = &f.paths[0].runs;
        assert_eq!(runs.len(), 2);
        let m = &runs[0];
        assert_eq!(m.mbit_s, Some(200.0));
        assert_eq!(m.steady_mbit_s, Some(201.0));
        let sp = m.spread.as_ref().unwrap();
        assert_eq!((sp.runs, sp.mbit_min, sp.mbit_max), (3, 100.0, 300.0));
        assert_eq!(sp.queue_drops_median, Some(20));
        assert!(m.notes.iter().any(|n| n.contains("1 of 4 repeats failed")));
        assert!(runs[1].spread.is_none());
        assert_eq!(median(vec![1.0, 4.0, 2.0, 3.0]), Some(2.5));
        let mut md = String::new();
        tables::throughput_table(&mut md, &f);
        assert!(
            md.contains("200 (100–300, 3 runs)<br>4.00× 1 bbr flow"),
            "{md}"
        );
    }

    /// `grid.json` files written by earlier grids (committed under results/) still load, and
    /// give the CSV files committed next to them, byte for byte.
    #[test]
    fn committed_results_load_and_reproduce_their_csv() {
        let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
        for sub in ["", "quick"] {
            let folder = results.join(sub);
            let text = std::fs::read_to_string(folder.join("grid.json")).unwrap();
            let res: GridResults = serde_json::from_str(&text).unwrap();
            assert!(!res.paths.is_empty(), "{sub}");
            assert_eq!(
                runs_csv(&res),
                std::fs::read_to_string(folder.join("grid.csv")).unwrap(),
                "{sub}/grid.csv"
            );
            assert_eq!(
                ttfb_csv(&res),
                std::fs::read_to_string(folder.join("ttfb.csv")).unwrap(),
                "{sub}/ttfb.csv"
            );
        }
    }
}
