//! The markdown tables of the report section: throughput, targets, profile, TTFB, congestion
//! control seen, emulator counters; and the verdicts of the targets.
//!
//! Owns: each table's columns, rows and verdicts. Must not touch: the section around them
//! (`markdown`), CSV or plots.

use super::{cc_map, ccs, col_title, columns, find, fmt_mbit, ok_mbit};
use crate::grid::results::{GridResults, PathResult, RunResult};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The throughput table: one row per path and congestion control, one column per contender, failures as numbered notes.
pub(super) fn throughput_table(s: &mut String, res: &GridResults) {
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
                        if let Some(sp) = &r.spread {
                            v += &format!(
                                " ({}–{}, {} runs)",
                                fmt_mbit(sp.mbit_min),
                                fmt_mbit(sp.mbit_max),
                                sp.runs
                            );
                        }
                        // The one-flow bbr contender beside every mtcpd cell: the best a
                        // single connection gets on this path.
                        if r.kind == "mtcpd"
                            && let (Some(m), Some(one)) =
                                (r.mbit_s, ok_mbit(find(p, "direct-1", "bbr")))
                            && one > 0.0
                        {
                            v += &format!("<br>{:.2}× 1 bbr flow", m / one);
                        }
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
}

/// The targets of issue 4, each with what was measured and a verdict.
pub(super) fn targets_table(s: &mut String, res: &GridResults) {
    let rows = target_rows(res);
    if !rows.is_empty() {
        let _ = writeln!(
            s,
            "\n#### Targets (issues 4 and 13)\n\n| target | measured | verdict |\n|---|---|---|"
        );
        for r in rows {
            let _ = writeln!(s, "| {} | {} | {} |", r[0], r[1], r[2]);
        }
    }
}

/// Where the time goes on the paths behind the targets: CPU and the `ss` profile of each run.
pub(super) fn profile_table(s: &mut String, res: &GridResults) {
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
}

/// Time to first byte per path, direct and through mtcpd.
pub(super) fn ttfb_table(s: &mut String, res: &GridResults) {
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
}

/// The congestion control each socket really used, against the one asked for.
pub(super) fn congestion_table(s: &mut String, res: &GridResults) {
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
}

/// The emulator's counters per path and direction.
pub(super) fn emulator_table(s: &mut String, res: &GridResults) {
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
}

/// Runs, and sockets by algorithm: client namespace, server namespace, read-back.
pub(super) type CcAgg = (
    u32,
    BTreeMap<String, u32>,
    BTreeMap<String, u32>,
    BTreeMap<String, u32>,
);

pub(super) fn ratio_verdict(measured: f64, target: f64) -> String {
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

pub(super) fn abs_verdict(measured: f64, target: f64) -> String {
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

pub(super) fn steady(r: Option<&RunResult>) -> Option<f64> {
    r.filter(|r| r.status == "ok").and_then(|r| r.steady_mbit_s)
}

pub(super) fn cpu_note(r: Option<&RunResult>) -> String {
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
pub(super) fn throughput_row(
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
    let spread = [num, den]
        .into_iter()
        .flatten()
        .filter_map(|r| {
            r.spread.as_ref().map(|sp| {
                format!(
                    "{} median of {}: {}–{}{}",
                    col_title(&r.id),
                    sp.runs,
                    fmt_mbit(sp.mbit_min),
                    fmt_mbit(sp.mbit_max),
                    match (sp.steady_min, sp.steady_max) {
                        (Some(a), Some(b)) => format!(" (steady {}–{})", fmt_mbit(a), fmt_mbit(b)),
                        _ => String::new(),
                    }
                )
            })
        })
        .collect::<Vec<_>>();
    let spread = if spread.is_empty() {
        String::new()
    } else {
        format!("<br>{}", spread.join("; "))
    };
    Some([what, format!("{m2}{spread}{context}{}", cpu_note(num)), v2])
}

/// Payload share of the bottleneck's bits: 1448 bytes of TCP payload per 1500-byte packet
/// (MTU 1500, IPv4 + TCP with timestamps); the emulator's rate counts IP packets.
const PAYLOAD_SHARE: f64 = 1448.0 / 1500.0;

/// Bottleneck-queue drops per contender (the data direction, during its own runs only): how
/// hard each one overfills the shared drop-tail queue.
pub(super) fn queue_table(s: &mut String, res: &GridResults) {
    let rows: Vec<(&PathResult, &RunResult)> = res
        .paths
        .iter()
        .flat_map(|p| p.runs.iter().map(move |r| (p, r)))
        .filter(|(_, r)| r.status == "ok" && r.bottleneck.is_some())
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\n#### Bottleneck drops per run (data direction B→A; median of the repeats where a cell has them)\n\n\
         | path | cc | contender | Mbit/s | packets out | queue drops | random-loss drops | flow-cap drops |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for (p, r) in rows {
        let Some(b) = r.bottleneck else { continue };
        let q = r
            .spread
            .as_ref()
            .and_then(|sp| sp.queue_drops_median)
            .unwrap_or(b.drop_queue);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            p.label,
            r.cc.as_deref().unwrap_or("(udp)"),
            col_title(&r.id),
            r.mbit_s.map(fmt_mbit).unwrap_or_default(),
            b.packets_out,
            q,
            b.drop_loss,
            b.drop_flow
        );
    }
}

pub(super) fn target_rows(res: &GridResults) -> Vec<[String; 3]> {
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
            "100 ms, 1 %: mtcpd, 1 stream over 8 bbr tunnels ≥ 0.95 × 8 direct bbr flows (issue 13)"
                .into(),
            find(p, "mtcpd-8", "bbr"),
            find(p, "direct-8", "bbr"),
            0.95,
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
    // Issue 13: the link's payload limit (1448 of every 1500 bytes on the wire, less the ACKs'
    // share of nothing: the data direction carries data only).
    for p in res
        .paths
        .iter()
        .filter(|p| p.rtt_ms == 100 && p.flow_cap_mbit.is_none())
    {
        let limit = p.rate_mbit as f64 * PAYLOAD_SHARE;
        let share = if p.loss_pct == 0.0 { 0.95 } else { 0.9 };
        rows.extend(throughput_row(
            res,
            format!(
                "{}: mtcpd 8 bbr tunnels ≥ {share} × the link's payload limit ({:.0} Mbit/s) (issue 13)",
                p.label,
                share * limit
            ),
            find(p, "mtcpd-8", "bbr"),
            None,
            share * limit,
            String::new(),
        ));
    }
    // Issue 13: on every path, mtcpd with its default pool (8) ≥ one bbr flow.
    for p in &res.paths {
        rows.extend(throughput_row(
            res,
            format!(
                "{}: mtcpd 8 bbr tunnels ≥ 1.0 × 1 direct bbr flow (issue 13)",
                p.label
            ),
            find(p, "mtcpd-8", "bbr"),
            find(p, "direct-1", "bbr"),
            1.0,
            String::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(ratio_verdict(0.95, 0.9), "met");
        assert!(ratio_verdict(0.81, 0.9).contains("10 % short"));
    }
}
