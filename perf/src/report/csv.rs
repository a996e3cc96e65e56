//! The CSV outputs: `grid.csv` (one line per run) and `ttfb.csv` (one line per TTFB
//! measurement). Their columns are a format other tools read: add columns at the end only.
//!
//! Owns: the two CSV files' columns and quoting. Must not touch: markdown or plots.

use super::{cc_map, fmt_opt};
use crate::grid::results::GridResults;

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub(super) fn runs_csv(res: &GridResults) -> String {
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

pub(super) fn ttfb_csv(res: &GridResults) -> String {
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
