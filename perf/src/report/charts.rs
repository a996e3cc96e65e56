//! The SVG plots (plotters, SVG backend only): throughput per congestion control, mtcpd
//! against the number of tunnels per path, and time to first byte.
//!
//! Owns: the plots' drawing. Must not touch: the data they show (the grid's results).

use super::{col_title, columns, find, fmt_mbit, ok_mbit, short_label};
use crate::grid::results::{GridResults, PathResult, TtfbResult};
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

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
pub(super) fn throughput_chart(res: &GridResults, cc: &str, file: &Path) -> Result<bool> {
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
pub(super) fn scaling_chart(p: &PathResult, file: &Path) -> Result<bool> {
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
pub(super) fn ttfb_chart(res: &GridResults, file: &Path) -> Result<bool> {
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
