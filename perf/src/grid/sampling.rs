//! What the sockets of a run did: `ss -tin` / `ss -Mi` / `ss -uap` samples in both namespaces
//! (parsed into [`Sock`]), and the per-contender profile the report shows (congestion control
//! seen, TCP state averaged over the samples, the receiving daemon's memory).
//!
//! Owns: parsing `ss` and summarising samples. Must not touch: processes (`procs`) or the
//! measurement window (`throughput`).

use super::environment::{Ctx, Env};
use super::procs::{Proc, ns_output};

use super::results::{RunResult, TcpSample};
use std::collections::BTreeMap;

#[derive(Default)]
pub(super) struct Snap {
    pub(super) a: Vec<Sock>,
    pub(super) b: Vec<Sock>,
    pub(super) mptcp_a: Vec<Sock>,
    pub(super) udp_kcptun: u32,
    /// Resident memory of the receiving daemon (the first of the run's daemons).
    pub(super) rss_mib: Option<f64>,
}

pub(super) fn snap(ctx: &Ctx, env: &Env, daemons: &[&Proc]) -> Snap {
    Snap {
        rss_mib: daemons.first().and_then(|d| d.rss_mib()),
        a: ss_tcp(&env.ns_a, &ctx.known_cc),
        b: ss_tcp(&env.ns_b, &ctx.known_cc),
        mptcp_a: ss_mptcp(&env.ns_a),
        udp_kcptun: ss_udp_count(&env.ns_a, "kcptun") + ss_udp_count(&env.ns_b, "kcptun"),
    }
}

/// Summarise the contender's sockets: `sender` in namespace B, `receiver` in A.
pub(super) fn tcp_sample(sender: &[&Sock], receiver: &[&Sock]) -> TcpSample {
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
pub(super) fn average(v: &[TcpSample]) -> TcpSample {
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
pub(super) fn record_socks(
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

/// One established TCP socket as `ss -tin` shows it.
#[derive(Debug, Clone, Default)]
pub struct Sock {
    pub local_ip: String,
    pub local_port: u16,
    pub peer_ip: String,
    pub peer_port: u16,
    pub cc: Option<String>,
    pub mptcp_subflow: bool,
    /// `ss -Mi` only: additional subflows of an MPTCP connection.
    pub subflows: Option<u32>,
    pub recv_q: u64,
    pub send_q: u64,
    /// The sender had nothing to send when the last delivery-rate sample was taken.
    pub app_limited: bool,
    /// Share of the socket's busy time limited by the peer's receive window / own send buffer.
    pub rwnd_limited_pct: Option<f64>,
    pub sndbuf_limited_pct: Option<f64>,
    pub delivery_bps: Option<f64>,
    pub cwnd: Option<u32>,
    pub retrans_total: Option<u32>,
}

fn split_addr(s: &str) -> Option<(String, u16)> {
    let (ip, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    Some((
        ip.trim_start_matches('[')
            .trim_end_matches(']')
            .split('%')
            .next()?
            .to_string(),
        port,
    ))
}

/// Parse `ss -tinH` / `ss -MiH` output: a socket line, then indented information lines.
pub fn parse_ss(text: &str, known_cc: &[String]) -> Vec<Sock> {
    let mut socks: Vec<Sock> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            let addrs: Vec<(String, u16)> =
                line.split_whitespace().filter_map(split_addr).collect();
            // Recv-Q and Send-Q: the numbers before the first address.
            let queues: Vec<u64> = line
                .split_whitespace()
                .take_while(|t| split_addr(t).is_none())
                .filter_map(|t| t.parse().ok())
                .collect();
            if addrs.len() >= 2 {
                socks.push(Sock {
                    local_ip: addrs[0].0.clone(),
                    local_port: addrs[0].1,
                    peer_ip: addrs[1].0.clone(),
                    peer_port: addrs[1].1,
                    recv_q: queues.first().copied().unwrap_or(0),
                    send_q: queues.get(1).copied().unwrap_or(0),
                    ..Sock::default()
                });
            }
            continue;
        }
        let Some(s) = socks.last_mut() else { continue };
        let pct =
            |v: &str| -> Option<f64> { v.split_once('(')?.1.strip_suffix("%)")?.parse().ok() };
        let toks: Vec<&str> = line.split_whitespace().collect();
        for (i, tok) in toks.iter().copied().enumerate() {
            match tok {
                "app_limited" => s.app_limited = true,
                "delivery_rate" => {
                    s.delivery_bps = toks
                        .get(i + 1)
                        .and_then(|v| v.strip_suffix("bps"))
                        .and_then(|v| v.parse().ok())
                }
                _ => {}
            }
            if let Some(v) = tok.strip_prefix("rwnd_limited:") {
                s.rwnd_limited_pct = pct(v);
            }
            if let Some(v) = tok.strip_prefix("sndbuf_limited:") {
                s.sndbuf_limited_pct = pct(v);
            }
            if let Some(v) = tok.strip_prefix("cwnd:") {
                s.cwnd = v.parse().ok();
            }
            if let Some(v) = tok.strip_prefix("retrans:") {
                s.retrans_total = v.split('/').nth(1).and_then(|x| x.parse().ok());
            }
            if s.cc.is_none() && known_cc.iter().any(|k| k == tok) {
                s.cc = Some(tok.to_string());
            }
            if tok == "tcp-ulp-mptcp" {
                s.mptcp_subflow = true;
            }
            if let Some(n) = tok.strip_prefix("subflows:") {
                s.subflows = n.parse().ok();
            }
        }
    }
    socks
}

/// Established TCP sockets in `ns` with their congestion control.
pub fn ss_tcp(ns: &str, known_cc: &[String]) -> Vec<Sock> {
    ns_output(ns, &["ss", "-tinH", "state", "established"])
        .map(|t| parse_ss(&t, known_cc))
        .unwrap_or_default()
}

/// Established MPTCP connections in `ns` (`ss -Mi`).
pub fn ss_mptcp(ns: &str) -> Vec<Sock> {
    ns_output(ns, &["ss", "-MiH", "state", "established"])
        .map(|t| parse_ss(&t, &[]))
        .unwrap_or_default()
}

/// UDP sockets in `ns` owned by a process whose name contains `prog` (`ss -uanp`).
pub fn ss_udp_count(ns: &str, prog: &str) -> u32 {
    ns_output(ns, &["ss", "-uanpH"])
        .map(|t| t.lines().filter(|l| l.contains(prog)).count() as u32)
        .unwrap_or(0)
}

/// Count sockets by congestion control ("?" when `ss` showed none).
pub fn count_cc<'a>(socks: impl Iterator<Item = &'a Sock>) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for s in socks {
        *m.entry(s.cc.clone().unwrap_or_else(|| "?".into()))
            .or_insert(0) += 1;
    }
    m
}

/// Congestion control algorithms this kernel knows (for recognising them in `ss` output).
pub fn known_cc() -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
    for k in ["cubic", "bbr", "reno"] {
        if !v.iter().any(|x| x == k) {
            v.push(k.into());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ss_tcp_and_mptcp() {
        let cc = vec!["reno".to_string(), "bbr".into(), "cubic".into()];
        let t = "0      0      10.200.84.1:38585 10.200.84.2:5211\n\t ts sack bbr wscale:10,10 rto:304 tcp-ulp-mptcp flags:Jjecv\n\
                 ESTAB 0 0 10.200.84.1:40000 10.200.84.2:5201\n\t cubic wscale:7,7 rto:204\n";
        let s = parse_ss(t, &cc);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].peer_port, 5211);
        assert_eq!(s[0].cc.as_deref(), Some("bbr"));
        assert!(s[0].mptcp_subflow);
        assert_eq!(s[1].local_ip, "10.200.84.1");
        assert_eq!(s[1].cc.as_deref(), Some("cubic"));
        assert!(!s[1].mptcp_subflow);
        let t = "0 3203012 10.200.84.2:5215 10.200.84.1:35759\n\t bbr wscale:10,10 cwnd:4422 delivery_rate 135655752bps busy:1940ms rwnd_limited:20ms(1.0%) sndbuf_limited:564ms(40.1%) retrans:9/52 app_limited\n";
        let s = parse_ss(t, &cc);
        assert_eq!((s[0].recv_q, s[0].send_q), (0, 3_203_012));
        assert_eq!(s[0].cwnd, Some(4422));
        assert_eq!(s[0].delivery_bps, Some(135_655_752.0));
        assert_eq!(s[0].rwnd_limited_pct, Some(1.0));
        assert_eq!(s[0].sndbuf_limited_pct, Some(40.1));
        assert_eq!(s[0].retrans_total, Some(52));
        assert!(s[0].app_limited);
        let m = "ESTAB 6487808 0 10.200.84.1:48668 10.200.84.2:5202\n\t subflows:7 add_addr_accepted:7 subflows_max:8\n";
        let s = parse_ss(m, &[]);
        assert_eq!(s[0].subflows, Some(7));
        assert_eq!(s[0].recv_q, 6_487_808);
        assert_eq!(s[0].peer_port, 5202);
        let c = count_cc(s.iter());
        assert_eq!(c.get("?"), Some(&1));
    }
}
