//! `mtcp-perf report`: turns a grid's `grid.json` into `grid.csv`, `ttfb.csv`, SVG plots
//! (plotters, SVG backend only) and a markdown section (`summary.md`), and rewrites that section
//! of a markdown file between `<!-- perf-grid:MODE:begin -->` and `<!-- perf-grid:MODE:end -->`
//! (appending it when the markers are missing). `mtcp-perf grid` calls it at the end; run it
//! by hand to regenerate the outputs from saved results.

use crate::grid::results::{GridResults, PathResult, RunResult, TtfbResult};
use anyhow::{Context, Result};
use clap::Args;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
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
    std::fs::write(out.join("grid.csv"), runs_csv(res))?;
    std::fs::write(out.join("ttfb.csv"), ttfb_csv(res))?;
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

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn cc_map(m: &BTreeMap<String, u32>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} x{v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn runs_csv(res: &GridResults) -> String {
    let mut s = String::from(
        "path,rtt_ms,loss_pct,flow_cap_mbit,contender,kind,flows,cc,status,mbit_s,steady_mbit_s,tool_mbit_s,cc_seen_client_ns,cc_seen_server_ns,cc_readback,udp_sockets,mptcp_subflows,load_before,cpu_machine_busy_pct,cpu_emulator_core_pct,cpu_daemons_core_pct,reason,notes\n",
    );
    for p in &res.paths {
        for r in &p.runs {
            let row = [
                p.id.clone(),
                p.rtt_ms.to_string(),
                p.loss_pct.to_string(),
                p.flow_cap_mbit.map(|c| c.to_string()).unwrap_or_default(),
                r.id.clone(),
                r.kind.clone(),
                r.flows.to_string(),
                r.cc.clone().unwrap_or_default(),
                r.status.clone(),
                fmt_opt(r.mbit_s, 3),
                fmt_opt(r.steady_mbit_s, 3),
                fmt_opt(r.tool_mbit_s, 3),
                cc_map(&r.cc_seen.client_ns),
                cc_map(&r.cc_seen.server_ns),
                cc_map(&r.cc_seen.readback),
                r.cc_seen.udp_sockets.to_string(),
                r.mptcp_subflows.map(|n| n.to_string()).unwrap_or_default(),
                fmt_opt(r.load_before, 2),
                fmt_opt(r.cpu.machine_busy_pct, 0),
                fmt_opt(r.cpu.emulator_core_pct, 0),
                fmt_opt(r.cpu.daemons_core_pct, 0),
                r.reason.clone().unwrap_or_default(),
                r.notes.join("; "),
            ];
            let row: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
            s += &row.join(",");
            s.push('\n');
        }
    }
    s
}

fn ttfb_csv(res: &GridResults) -> String {
    let mut s = String::from(
        "path,rtt_ms,loss_pct,via,status,samples,failures,connect_p50_ms,ttfb_min_ms,ttfb_p50_ms,ttfb_p90_ms,ttfb_p99_ms,ttfb_max_ms,reason\n",
    );
    for p in &res.paths {
        for t in &p.ttfb {
            let row = [
                p.id.clone(),
                p.rtt_ms.to_string(),
                p.loss_pct.to_string(),
                t.via.clone(),
                t.status.clone(),
                t.samples.to_string(),
                t.failures.to_string(),
                fmt_opt(t.connect_p50_ms, 2),
                fmt_opt(t.ttfb_min_ms, 2),
                fmt_opt(t.ttfb_p50_ms, 2),
                fmt_opt(t.ttfb_p90_ms, 2),
                fmt_opt(t.ttfb_p99_ms, 2),
                fmt_opt(t.ttfb_max_ms, 2),
                t.reason.clone().unwrap_or_default(),
            ];
            let row: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
            s += &row.join(",");
            s.push('\n');
        }
    }
    s
}

fn short_label(p: &PathResult) -> String {
    match p.flow_cap_mbit {
        Some(c) => format!("{}ms cap{c}", p.rtt_ms),
        None => format!("{}ms {}%", p.rtt_ms, p.loss_pct),
    }
}

fn io_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing: {e:?}")
}

/// Width of the legend column right of each chart.
const LEGEND_W: u32 = 200;

/// A legend entry: a filled box (bars) or a line.
type Key = (String, RGBAColor, bool);

/// Draw the legend in its own column, so that it never hides data.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    items: &[Key],
) -> Result<()> {
    for (i, (name, color, line)) in items.iter().enumerate() {
        let y = 50 + i as i32 * 20;
        if *line {
            area.draw(&PathElement::new(
                vec![(4, y), (20, y)],
                color.stroke_width(2),
            ))
            .map_err(io_err)?;
        } else {
            area.draw(&Rectangle::new([(6, y - 5), (16, y + 5)], color.filled()))
                .map_err(io_err)?;
        }
        area.draw(&Text::new(
            name.clone(),
            (26, y - 6),
            ("sans-serif", 12).into_font(),
        ))
        .map_err(io_err)?;
    }
    Ok(())
}

/// Grouped bars: one group per path, one bar per contender, log scale. False when no data.
fn throughput_chart(res: &GridResults, cc: &str, file: &Path) -> Result<bool> {
    let cols = columns(res);
    // Paths that ran this congestion control; each contender keeps its colour in every chart.
    let paths: Vec<&PathResult> = res
        .paths
        .iter()
        .filter(|p| p.runs.iter().any(|r| r.cc.as_deref() == Some(cc)))
        .collect();
    let groups: Vec<String> = paths.iter().map(|p| short_label(p)).collect();
    let series: Vec<(usize, String, Vec<Option<f64>>)> = cols
        .iter()
        .enumerate()
        .map(|(ci, id)| {
            let v = paths.iter().map(|p| ok_mbit(find(p, id, cc))).collect();
            let title = if id == "kcptun" {
                "kcptun (UDP)".into()
            } else {
                col_title(id)
            };
            (ci, title, v)
        })
        .filter(|(_, _, v): &(usize, String, Vec<Option<f64>>)| v.iter().any(Option::is_some))
        .collect();
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().flatten().copied())
        .collect();
    if all.is_empty() {
        return Ok(false);
    }
    // Whole decades, so that the log axis has labels at both ends.
    let hi = all.iter().copied().fold(1.0, f64::max) * 1.3;
    let lo = all.iter().copied().fold(f64::MAX, f64::min).max(0.01) / 1.5;
    let ymax = 10f64.powf(hi.log10().ceil());
    let ymin = 10f64.powf(lo.log10().floor());
    let root = SVGBackend::new(file, (1100 + LEGEND_W, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(io_err)?;
    let (plot, side) = root.split_horizontally(1100);
    let mut keys: Vec<Key> = Vec::new();
    let n = groups.len() as f64;
    let mut chart = ChartBuilder::on(&plot)
        .caption(
            format!(
                "One application stream (direct: 1 and 8 flows), {cc}, Mbit/s ({} mode, {} s runs)",
                res.mode, res.settings.seconds
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5f64..(n - 0.5), (ymin..ymax).log_scale())
        .map_err(io_err)?;
    let g2 = groups.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len() + 1)
        .x_label_formatter(&move |x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 && (i as usize) < g2.len() {
                g2[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| fmt_mbit(*y))
        .y_desc("Mbit/s (receiver goodput)")
        .draw()
        .map_err(io_err)?;
    let k = series.len() as f64;
    let w = 0.84 / k;
    for (si, (ci, name, vals)) in series.iter().enumerate() {
        let color = Palette99::pick(*ci).to_rgba();
        let bars: Vec<Rectangle<(f64, f64)>> = vals
            .iter()
            .enumerate()
            .filter_map(|(gi, v)| {
                let v = (*v)?;
                let x0 = gi as f64 - 0.42 + si as f64 * w;
                Some(Rectangle::new(
                    [(x0, ymin), (x0 + w * 0.9, v.max(ymin))],
                    color.filled(),
                ))
            })
            .collect();
        let values: Vec<Text<'_, (f64, f64), String>> = vals
            .iter()
            .enumerate()
            .filter_map(|(gi, v)| {
                let v = (*v)?;
                let x0 = gi as f64 - 0.42 + si as f64 * w;
                Some(Text::new(
                    fmt_mbit(v),
                    (x0, (v * 1.12).max(ymin)),
                    ("sans-serif", 10).into_font(),
                ))
            })
            .collect();
        chart.draw_series(bars).map_err(io_err)?;
        keys.push((name.clone(), color, false));
        chart.draw_series(values).map_err(io_err)?;
    }
    legend(&side, &keys)?;
    root.present().map_err(io_err)?;
    Ok(true)
}

/// mtcpd throughput against the number of tunnels on one path, with the direct flows as
/// horizontal references. False when the path has fewer than two tunnel counts.
fn scaling_chart(p: &PathResult, file: &Path) -> Result<bool> {
    let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut refs: Vec<(String, f64)> = Vec::new();
    for cc in ["bbr", "cubic"] {
        let mut pts: Vec<(f64, f64)> = p
            .runs
            .iter()
            .filter(|r| r.kind == "mtcpd" && r.cc.as_deref() == Some(cc) && r.status == "ok")
            .filter_map(|r| Some((r.flows as f64, r.mbit_s?)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        if pts.len() >= 2 {
            lines.push((format!("mtcpd, 1 stream, {cc} tunnels"), pts));
        }
        for r in p
            .runs
            .iter()
            .filter(|r| r.kind == "direct" && r.cc.as_deref() == Some(cc) && r.status == "ok")
        {
            if let Some(m) = r.mbit_s {
                refs.push((format!("{} direct {cc}", r.flows), m));
            }
        }
    }
    if lines.is_empty() {
        return Ok(false);
    }
    // x is log2(tunnels); y is logarithmic with whole decades (bbr and cubic differ ~50×).
    let all: Vec<f64> = lines
        .iter()
        .flat_map(|(_, v)| v.iter().map(|x| x.1))
        .chain(refs.iter().map(|r| r.1))
        .filter(|v| *v > 0.0)
        .collect();
    let hi = all.iter().copied().fold(1.0, f64::max) * 1.3;
    let lo = all.iter().copied().fold(f64::MAX, f64::min).max(0.01) / 1.5;
    let (ymin, ymax) = (
        10f64.powf(lo.log10().floor()),
        10f64.powf(hi.log10().ceil()),
    );
    let xmax = lines
        .iter()
        .flat_map(|(_, v)| v.iter().map(|x| x.0.log2()))
        .fold(1.0, f64::max);
    let lines: Vec<(String, Vec<(f64, f64)>)> = lines
        .into_iter()
        .map(|(n, v)| (n, v.into_iter().map(|(x, y)| (x.log2(), y)).collect()))
        .collect();
    let root = SVGBackend::new(file, (800 + LEGEND_W, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(io_err)?;
    let (plot, side) = root.split_horizontally(800);
    let mut keys: Vec<Key> = Vec::new();
    let mut chart = ChartBuilder::on(&plot)
        .caption(
            format!("mtcpd: one stream over N tunnels, {}", p.label),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.3f64..xmax + 0.3, (ymin..ymax).log_scale())
        .map_err(io_err)?;
    chart
        .configure_mesh()
        .x_desc("tunnels")
        .y_desc("Mbit/s")
        .x_labels(xmax as usize + 2)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                format!("{}", 2u32.pow(i as u32))
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| fmt_mbit(*y))
        .draw()
        .map_err(io_err)?;
    let mut si = 0;
    for (name, pts) in &lines {
        let color = Palette99::pick(si).to_rgba();
        si += 1;
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(io_err)?;
        keys.push((name.clone(), color, true));
        chart
            .draw_series(
                pts.iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )
            .map_err(io_err)?;
    }
    for (name, v) in &refs {
        let color = Palette99::pick(si).to_rgba();
        si += 1;
        chart
            .draw_series(LineSeries::new(
                vec![(0.8, *v), (20.0, *v)],
                color.stroke_width(1),
            ))
            .map_err(io_err)?;
        keys.push((name.clone(), color, true));
    }
    legend(&side, &keys)?;
    root.present().map_err(io_err)?;
    Ok(true)
}

/// TTFB p50 bars (direct and mtcpd) per path, whiskers min..p90, the target as a line.
fn ttfb_chart(res: &GridResults, file: &Path) -> Result<bool> {
    let paths: Vec<&PathResult> = res.paths.iter().filter(|p| !p.ttfb.is_empty()).collect();
    let get = |p: &PathResult, via: &str| -> Option<TtfbResult> {
        p.ttfb
            .iter()
            .find(|t| t.via == via && t.status == "ok")
            .cloned()
    };
    let ymax = paths
        .iter()
        .flat_map(|p| p.ttfb.iter().filter_map(|t| t.ttfb_p90_ms))
        .fold(0.0, f64::max);
    if paths.is_empty() || ymax <= 0.0 {
        return Ok(false);
    }
    let root = SVGBackend::new(file, (800 + LEGEND_W, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(io_err)?;
    let (plot, side) = root.split_horizontally(800);
    let mut keys: Vec<Key> = Vec::new();
    let n = paths.len() as f64;
    let labels: Vec<String> = paths.iter().map(|p| short_label(p)).collect();
    let mut chart = ChartBuilder::on(&plot)
        .caption(
            "Time to first byte, 64 B request on a new connection (p50; whiskers min..p90)",
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5f64..(n - 0.5), 0f64..ymax * 1.2)
        .map_err(io_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(paths.len() + 1)
        .x_label_formatter(&move |x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 && (i as usize) < labels.len() {
                labels[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_desc("ms")
        .draw()
        .map_err(io_err)?;
    for (si, via) in ["direct", "mtcpd"].iter().enumerate() {
        let color = Palette99::pick(si).to_rgba();
        let mut bars = Vec::new();
        let mut whiskers = Vec::new();
        for (gi, p) in paths.iter().enumerate() {
            if let Some(t) = get(p, via)
                && let Some(v) = t.ttfb_p50_ms
            {
                let x0 = gi as f64 - 0.35 + si as f64 * 0.35;
                bars.push(Rectangle::new([(x0, 0.0), (x0 + 0.3, v)], color.filled()));
                let xm = x0 + 0.15;
                whiskers.push(PathElement::new(
                    vec![
                        (xm, t.ttfb_min_ms.unwrap_or(v)),
                        (xm, t.ttfb_p90_ms.unwrap_or(v)),
                    ],
                    BLACK.stroke_width(1),
                ));
            }
        }
        chart.draw_series(bars).map_err(io_err)?;
        keys.push((format!("{via} p50"), color, false));
        chart.draw_series(whiskers).map_err(io_err)?;
    }
    let red = RED.stroke_width(2);
    chart
        .draw_series(paths.iter().enumerate().map(|(gi, p)| {
            let t = p.rtt_ms as f64 + 5.0;
            PathElement::new(vec![(gi as f64 - 0.45, t), (gi as f64 + 0.45, t)], red)
        }))
        .map_err(io_err)?;
    keys.push(("target for mtcpd: 1 RTT + 5 ms".into(), RED.to_rgba(), true));
    legend(&side, &keys)?;
    root.present().map_err(io_err)?;
    Ok(true)
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

fn ratio_verdict(measured: f64, target: f64) -> String {
    if measured >= target {
        "met".into()
    } else {
        format!(
            "**missed** by {:.2}× ({:.0} % short)",
            target - measured,
            (1.0 - measured / target) * 100.0
        )
    }
}

fn abs_verdict(measured: f64, target: f64) -> String {
    if measured >= target {
        "met".into()
    } else {
        format!(
            "**missed** by {:.1} Mbit/s ({:.0} % short)",
            target - measured,
            (1.0 - measured / target) * 100.0
        )
    }
}

fn steady(r: Option<&RunResult>) -> Option<f64> {
    r.filter(|r| r.status == "ok").and_then(|r| r.steady_mbit_s)
}

fn cpu_note(r: Option<&RunResult>) -> String {
    let Some(r) = r else { return String::new() };
    let c = &r.cpu;
    let mut v = Vec::new();
    if let Some(m) = c.machine_busy_pct {
        v.push(format!("machine {m:.0} % busy"));
    }
    if let Some(d) = c.daemons_core_pct {
        v.push(format!("{} {d:.0} % of a core", r.kind));
    }
    if v.is_empty() {
        String::new()
    } else {
        format!("<br>CPU during the {} run: {}", r.id, v.join(", "))
    }
}

/// One throughput target: `num` (÷ `den` when given) ≥ `target`, judged on the whole run and
/// on its steady part.
fn throughput_row(
    res: &GridResults,
    what: String,
    num: Option<&RunResult>,
    den: Option<&RunResult>,
    target: f64,
    context: String,
) -> Option<[String; 3]> {
    let n = ok_mbit(num)?;
    let warm = res.settings.warmup_seconds;
    let (measured, verdict, steady_part) = match den {
        Some(_) => {
            let d = ok_mbit(den).filter(|d| *d > 0.0)?;
            let st = match (steady(num), steady(den)) {
                (Some(x), Some(y)) if y > 0.0 => Some((x, y, x / y)),
                _ => None,
            };
            (
                format!("{} / {} Mbit/s = {:.2}×", fmt_mbit(n), fmt_mbit(d), n / d),
                ratio_verdict(n / d, target),
                st.map(|(x, y, q)| {
                    (
                        format!("{} / {} = {q:.2}×", fmt_mbit(x), fmt_mbit(y)),
                        ratio_verdict(q, target),
                    )
                }),
            )
        }
        None => (
            format!("{} Mbit/s", fmt_mbit(n)),
            abs_verdict(n, target),
            steady(num).map(|x| (format!("{} Mbit/s", fmt_mbit(x)), abs_verdict(x, target))),
        ),
    };
    let (m2, v2) = match steady_part {
        Some((m, v)) => (
            format!("{measured}<br>from {warm} s on: {m}"),
            format!("{verdict}<br>from {warm} s on: {v}"),
        ),
        None => (measured, verdict),
    };
    Some([what, format!("{m2}{context}{}", cpu_note(num)), v2])
}

fn target_rows(res: &GridResults) -> Vec<[String; 3]> {
    let mut rows = Vec::new();
    let lossy = res
        .paths
        .iter()
        .find(|p| p.rtt_ms == 100 && p.loss_pct == 1.0 && p.flow_cap_mbit.is_none());
    if let Some(p) = lossy {
        let mut extra = String::new();
        if let Some(k) = ok_mbit(find(p, "kcptun", "bbr")) {
            extra += &format!("; kcptun {}", fmt_mbit(k));
        }
        if let Some(mp) = ok_mbit(find(p, "mptcp-8", "bbr")) {
            extra += &format!("; MPTCP 8 bbr {}", fmt_mbit(mp));
        }
        rows.extend(throughput_row(
            res,
            "100 ms, 1 %: mtcpd, 1 stream over 8 bbr tunnels ≥ 0.9 × 8 direct bbr flows".into(),
            find(p, "mtcpd-8", "bbr"),
            find(p, "direct-8", "bbr"),
            0.9,
            if extra.is_empty() {
                extra
            } else {
                format!("<br>{}", extra.trim_start_matches("; "))
            },
        ));
        let d8 = ok_mbit(find(p, "direct-8", "cubic"))
            .map(|d8| format!("<br>8 direct cubic flows {}", fmt_mbit(d8)))
            .unwrap_or_default();
        rows.extend(throughput_row(
            res,
            "100 ms, 1 %: mtcpd, 1 stream over 8 cubic tunnels ≥ 6 × 1 direct cubic flow".into(),
            find(p, "mtcpd-8", "cubic"),
            find(p, "direct-1", "cubic"),
            6.0,
            d8,
        ));
    }
    for p in res.paths.iter().filter(|p| p.flow_cap_mbit.is_some()) {
        for cc in ["bbr", "cubic"] {
            let d = ok_mbit(find(p, "direct-8", cc))
                .map(|d| format!("<br>8 direct {cc} flows {}", fmt_mbit(d)))
                .unwrap_or_default();
            rows.extend(throughput_row(
                res,
                format!("{}: mtcpd, 8 {cc} tunnels ≥ 150 Mbit/s", p.label),
                find(p, "mtcpd-8", cc),
                None,
                150.0,
                d,
            ));
        }
    }
    // TTFB on a 100 ms path without loss (the capped one in quick mode).
    let clean = res
        .paths
        .iter()
        .filter(|p| p.rtt_ms == 100 && p.loss_pct == 0.0)
        .min_by_key(|p| p.flow_cap_mbit.is_some());
    if let Some(p) = clean
        && let Some(t) = p.ttfb.iter().find(|t| t.via == "mtcpd" && t.status == "ok")
        && let Some(v) = t.ttfb_p50_ms
    {
        let target = p.rtt_ms as f64 + 5.0;
        let direct = p
            .ttfb
            .iter()
            .find(|t| t.via == "direct")
            .and_then(|t| t.ttfb_p50_ms)
            .map(|d| format!("<br>direct p50 {d:.1} ms"))
            .unwrap_or_default();
        rows.push([
            format!(
                "TTFB through mtcpd ≤ 1 RTT + 5 ms = {target:.0} ms (p50, {})",
                p.label
            ),
            format!(
                "p50 {v:.1} ms, p90 {:.1} ms, max {:.1} ms{direct}",
                t.ttfb_p90_ms.unwrap_or(0.0),
                t.ttfb_max_ms.unwrap_or(0.0)
            ),
            if v <= target {
                "met".into()
            } else {
                format!("**missed** by {:.1} ms", v - target)
            },
        ]);
    }
    rows
}

fn markdown(res: &GridResults, out: &Path, base: &Path, plots: &[(String, String)]) -> String {
    let mut s = String::new();
    let quick = res.mode == "quick";
    let cmd = if quick {
        "make perf-quick"
    } else {
        "make perf"
    };
    let _ = writeln!(
        s,
        "### {} — generated by `mtcp-perf report` from `{}`\n",
        if quick {
            "Quick mode (`make perf-quick`)"
        } else {
            "Full grid (`make perf`)"
        },
        relative(&out.join("grid.json"), Path::new(".")).display()
    );
    if !res.complete {
        let _ = writeln!(
            s,
            "**Incomplete run** (interrupted, or a path failed): the tables show what was measured.\n"
        );
    }
    let m = &res.machine;
    let _ = writeln!(
        s,
        "Run {} → {} ({:.0} s wall), commit {}, kernel {}, {} CPUs, load average {} at the start, {} at the end \
         (a shared machine: the contenders of a row ran one after the other on the same path). \
         Command: `{}`{}.\n",
        res.started_utc,
        res.finished_utc.as_deref().unwrap_or("?"),
        res.wall_seconds,
        m.git_commit.as_deref().unwrap_or("?"),
        m.kernel,
        m.cpus,
        m.loadavg_start,
        m.loadavg_end.as_deref().unwrap_or("?"),
        res.command
            .split_whitespace()
            .enumerate()
            .map(|(i, w)| if i == 0 {
                w.rsplit('/').next().unwrap_or(w)
            } else {
                w
            })
            .collect::<Vec<_>>()
            .join(" "),
        if res.command.contains("--doc") {
            format!(" (what `{cmd}` runs)")
        } else {
            String::new()
        }
    );
    let st = &res.settings;
    let _ = writeln!(
        s,
        "Method: each run is {} s of download (the server in namespace B sends, the client in A \
         counts); the figure is the receiver's goodput over those {} s, slow start included \
         (\"steady\", from {} s on, is in grid.csv). Paths: `mtcp-perf wan` with a 1 Gbit/s \
         bottleneck (100 ms drop-tail queue), delay = RTT/2 each way, Bernoulli loss both ways, \
         seed {}, MTU 1500; the capped path polices every 5-tuple to 20 Mbit/s. tcp_wmem {}, \
         tcp_rmem {}. mtcpd: {}. MPTCP: {}. kcptun {}: `{}`.\n",
        st.seconds,
        st.seconds,
        st.warmup_seconds,
        st.seed,
        m.tcp_wmem.as_deref().unwrap_or("?"),
        m.tcp_rmem.as_deref().unwrap_or("?"),
        st.mtcpd_config,
        st.mptcp_setup,
        m.kcptun.as_deref().unwrap_or("(not installed)"),
        st.kcptun_args
    );
    // Throughput table.
    let cols = columns(res);
    let mut foot: Vec<String> = Vec::new();
    let _ = writeln!(
        s,
        "#### Throughput, Mbit/s (one application stream; \"8 direct\" is 8 parallel flows)\n"
    );
    let mut hdr = String::from("| path | cc |");
    let mut sep = String::from("|---|---|");
    for c in &cols {
        hdr += &format!(" {} |", col_title(c));
        sep += "---|";
    }
    let ratio = cols.iter().any(|c| c == "mtcpd-8") && cols.iter().any(|c| c == "direct-8");
    if ratio {
        hdr += " mtcpd 8 ÷ 8 direct |";
        sep += "---|";
    }
    let _ = writeln!(s, "{hdr}\n{sep}");
    for p in &res.paths {
        if let Some(e) = &p.error {
            foot.push(format!("{}: path failed: {e}", p.id));
        }
        for cc in ccs(res) {
            if !p.runs.iter().any(|r| r.cc.as_deref() == Some(cc.as_str())) {
                continue;
            }
            let mut row = format!("| {} | {cc} |", p.label);
            for c in &cols {
                let cell = match find(p, c, &cc) {
                    None => String::new(),
                    Some(r) if r.status == "ok" => {
                        let mut v = r.mbit_s.map(fmt_mbit).unwrap_or_default();
                        if let Some(n) = r.mptcp_subflows {
                            v += &format!(" ({n} sf)");
                        } else if r.kind == "mptcp" {
                            v += " (no MPTCP)";
                        }
                        v
                    }
                    Some(r) => {
                        // Keyed by contender and reason, so a missing tool is one note.
                        let note = format!("{}: {}", r.id, r.reason.as_deref().unwrap_or(""));
                        let k = match foot.iter().position(|f| f == &note) {
                            Some(k) => k,
                            None => {
                                foot.push(note);
                                foot.len() - 1
                            }
                        };
                        format!("{} [{}]", r.status, k + 1)
                    }
                };
                row += &format!(" {cell} |");
            }
            if ratio {
                let m = ok_mbit(find(p, "mtcpd-8", &cc));
                let d = ok_mbit(find(p, "direct-8", &cc));
                row += &match (m, d) {
                    (Some(m), Some(d)) if d > 0.0 => format!(" {:.2}× |", m / d),
                    _ => " |".into(),
                };
            }
            let _ = writeln!(s, "{row}");
        }
    }
    if cols.iter().any(|c| c == "kcptun") {
        let _ = writeln!(
            s,
            "\nkcptun rides UDP, so TCP congestion control does not apply: it ran once per path and \
             appears in every row of that path. \"sf\": MPTCP subflows seen by `ss -Mi` mid-run."
        );
    }
    if !foot.is_empty() {
        let _ = writeln!(s);
        for (i, f) in foot.iter().enumerate() {
            let _ = writeln!(s, "[{}] {f}  ", i + 1);
        }
    }
    // Targets.
    let rows = target_rows(res);
    if !rows.is_empty() {
        let _ = writeln!(
            s,
            "\n#### Targets (issue 4)\n\n| target | measured | verdict |\n|---|---|---|"
        );
        for r in rows {
            let _ = writeln!(s, "| {} | {} | {} |", r[0], r[1], r[2]);
        }
    }
    // Where the time goes, on the paths behind the targets.
    let focus: Vec<&PathResult> = res
        .paths
        .iter()
        .filter(|p| p.rtt_ms == 100 && (p.loss_pct == 1.0 || p.flow_cap_mbit.is_some()))
        .collect();
    if focus
        .iter()
        .any(|p| p.runs.iter().any(|r| r.status == "ok"))
    {
        let _ = writeln!(
            s,
            "\n#### Profile of the target paths (CPU over each run, `ss -ti` of the sending side at ¼, ½ and ¾ of it)\n\n\
             \"app-limited\": sender sockets (of N) whose last delivery-rate sample found nothing to send, mean of the samples; \
             \"rate est.\": the sum of their delivery-rate estimates (what the flows could carry); \
             \"rwnd\"/\"sndbuf\": share of busy time limited by the receive window / the send buffer; \
             \"rx RSS\": resident memory of the receiving daemon (its reorder and credit buffers live there).\n\n\
             | path | cc | contender | Mbit/s | machine busy | daemons (core) | emulator (core) | app-limited | rate est. | rwnd | sndbuf | rx RSS |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        let pc = |v: Option<f64>| v.map(|x| format!("{x:.0} %")).unwrap_or_default();
        for p in &focus {
            for r in p.runs.iter().filter(|r| r.status == "ok") {
                let t = &r.tcp;
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    p.label,
                    r.cc.as_deref().unwrap_or("(udp)"),
                    col_title(&r.id),
                    r.mbit_s.map(fmt_mbit).unwrap_or_default(),
                    pc(r.cpu.machine_busy_pct),
                    pc(r.cpu.daemons_core_pct),
                    pc(r.cpu.emulator_core_pct),
                    if t.samples > 0 && t.sender_sockets > 0 {
                        format!("{:.1} / {}", t.sender_app_limited, t.sender_sockets)
                    } else {
                        String::new()
                    },
                    t.sender_delivery_mbit_sum.map(fmt_mbit).unwrap_or_default(),
                    pc(t.sender_rwnd_limited_pct_mean),
                    pc(t.sender_sndbuf_limited_pct_mean),
                    t.receiver_daemon_rss_mib_max
                        .map(|m| format!("{m:.0} MiB"))
                        .unwrap_or_default(),
                );
            }
        }
    }
    // TTFB.
    if res.paths.iter().any(|p| !p.ttfb.is_empty()) {
        let _ = writeln!(
            s,
            "\n#### Time to first byte (new connection, 64 B request, 64 B response)\n\n\
             | path | via | samples (failures) | connect p50 | TTFB min | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|---|---|---|"
        );
        for p in &res.paths {
            for t in &p.ttfb {
                if t.status != "ok" {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {}: {} | | | | | | |",
                        p.label,
                        t.via,
                        t.status,
                        t.reason.as_deref().unwrap_or("")
                    );
                    continue;
                }
                let f = |v: Option<f64>| v.map(|x| format!("{x:.1} ms")).unwrap_or_default();
                let _ = writeln!(
                    s,
                    "| {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} |",
                    p.label,
                    t.via,
                    t.samples,
                    t.failures,
                    f(t.connect_p50_ms),
                    f(t.ttfb_min_ms),
                    f(t.ttfb_p50_ms),
                    f(t.ttfb_p90_ms),
                    f(t.ttfb_p99_ms),
                    f(t.ttfb_max_ms)
                );
            }
        }
        let _ = writeln!(
            s,
            "\nThrough mtcpd, \"connect\" is the local connect to the mtcpd client (its tunnels are already open)."
        );
    }
    // Congestion control actually used.
    let _ = writeln!(
        s,
        "\n#### Congestion control each socket really used\n\n\
         `ss -ti` sampled in both namespaces halfway through every run (the contender's sockets only), \
         and the tools' own getsockopt(TCP_CONGESTION) read-back (mtcp-perf's `cc_client`/`cc_server`; \
         mtcpd's \"tunnel established\" log line).\n\n\
         | asked | contender | runs | sockets seen, client ns | server ns | read-back |\n|---|---|---|---|---|---|"
    );
    let mut agg: BTreeMap<(String, String), CcAgg> = BTreeMap::new();
    for p in &res.paths {
        for r in p.runs.iter().filter(|r| r.status == "ok") {
            let e = agg
                .entry((
                    r.cc.clone().unwrap_or_else(|| "(none: UDP)".into()),
                    r.kind.clone(),
                ))
                .or_default();
            e.0 += 1;
            for (k, v) in &r.cc_seen.client_ns {
                *e.1.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &r.cc_seen.server_ns {
                *e.2.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &r.cc_seen.readback {
                *e.3.entry(k.clone()).or_default() += v;
            }
            if r.cc_seen.udp_sockets > 0 {
                *e.1.entry("UDP sockets (kcptun, both ns)".into())
                    .or_default() += r.cc_seen.udp_sockets;
            }
        }
    }
    let mut mismatch = 0;
    for ((cc, kind), (n, a, b, rb)) in &agg {
        for m in [a, b] {
            mismatch += m
                .iter()
                .filter(|(k, _)| k.as_str() != cc && !k.starts_with("UDP"))
                .map(|(_, v)| v)
                .sum::<u32>();
        }
        let _ = writeln!(
            s,
            "| {cc} | {kind} | {n} | {} | {} | {} |",
            cc_map(a),
            cc_map(b),
            cc_map(rb)
        );
    }
    let _ = writeln!(
        s,
        "\n{}",
        if mismatch == 0 {
            "Every sampled TCP socket used the congestion control asked for.".to_string()
        } else {
            format!(
                "{mismatch} sampled socket(s) did NOT use the congestion control asked for (\"?\" = `ss` showed none): see grid.csv."
            )
        }
    );
    // Emulator counters.
    let _ = writeln!(
        s,
        "\n#### Emulator counters (whole path, all contenders)\n\n| path | direction | packets out | loss drops | queue drops | flow-cap drops | TUN ring drops (not modelled) |\n|---|---|---|---|---|---|---|"
    );
    for p in &res.paths {
        for d in &p.emulator {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                p.label,
                if d.direction == "b2a" {
                    "B→A (data)"
                } else {
                    "A→B (acks)"
                },
                d.packets_out,
                d.drop_loss,
                d.drop_queue,
                d.drop_flow,
                d.tun_ring_drops
                    .map(|x| x.to_string())
                    .unwrap_or("?".into())
            );
        }
    }
    if !plots.is_empty() {
        let _ = writeln!(s, "\n#### Plots\n");
        for (title, f) in plots {
            let _ = writeln!(s, "![{title}]({})", relative(&out.join(f), base).display());
        }
    }
    let _ = writeln!(
        s,
        "\nFiles: {}, {} (every run, with notes and reasons), {}.",
        relative(&out.join("grid.json"), base).display(),
        relative(&out.join("grid.csv"), base).display(),
        relative(&out.join("ttfb.csv"), base).display()
    );
    s
}

/// Runs, and sockets by algorithm: client namespace, server namespace, read-back.
type CcAgg = (
    u32,
    BTreeMap<String, u32>,
    BTreeMap<String, u32>,
    BTreeMap<String, u32>,
);

fn markers(mode: &str) -> (String, String) {
    (
        format!(
            "<!-- perf-grid:{mode}:begin (generated by `mtcp-perf report`; edits inside are overwritten) -->"
        ),
        format!("<!-- perf-grid:{mode}:end -->"),
    )
}

/// Replace the text between the mode's markers (appending both when missing).
fn update_doc(doc: &Path, mode: &str, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(doc).unwrap_or_default();
    let new = replace_section(&old, mode, section);
    std::fs::write(doc, new).with_context(|| format!("writing {}", doc.display()))
}

fn replace_section(old: &str, mode: &str, section: &str) -> String {
    let (b, e) = markers(mode);
    let begin_key = format!("<!-- perf-grid:{mode}:begin");
    let body = format!("{b}\n\n{}\n{e}", section.trim_end());
    match (old.find(&begin_key), old.find(&e)) {
        (Some(i), Some(j)) if j > i => format!("{}{body}{}", &old[..i], &old[j + e.len()..]),
        _ => {
            let mut s = old.trim_end().to_string();
            s += "\n\n";
            s += &body;
            s.push('\n');
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_is_replaced_between_markers_only() {
        let s1 = replace_section("# B\n\nintro\n", "quick", "one");
        assert!(s1.starts_with("# B\n\nintro\n\n<!-- perf-grid:quick:begin"));
        assert!(s1.contains("\none\n<!-- perf-grid:quick:end -->"));
        let s2 = replace_section(&(s1.clone() + "\ntail\n"), "quick", "two");
        assert!(s2.contains("two") && !s2.contains("one"));
        assert!(s2.ends_with("\ntail\n"));
        assert!(s2.starts_with("# B\n\nintro\n"));
        let s3 = replace_section(&s2, "full", "F");
        assert!(s3.contains("two") && s3.contains("F"));
    }

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

    #[test]
    fn verdicts() {
        assert_eq!(ratio_verdict(0.95, 0.9), "met");
        assert!(ratio_verdict(0.81, 0.9).contains("10 % short"));
    }
}
