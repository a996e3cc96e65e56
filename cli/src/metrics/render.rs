//! The Prometheus text exposition (format 0.0.4) of a runtime's stats snapshot.
//!
//! Owns: metric names, help texts, types and labels, and the escaping of label values. Must not
//! touch: how the figures are gathered (the engine's `RuntimeStats`) or served (`http`).
//!
//! A small renderer rather than the `prometheus-client` crate: every figure already arrives as
//! one snapshot per scrape (the engine sums its workers), so a registry of live metric objects
//! would only be filled and emptied again on every scrape; what is left is writing lines and
//! escaping three characters.

use std::fmt::Write;

use mtcpd_engine::Role;
use mtcpd_engine::runtime::stats::{REJECTION_REASONS, RuntimeStats, TUNNEL_LOSS_REASONS};
use mtcpd_engine::session::CoupledStats;

/// What a scrape names besides the snapshot.
#[derive(Debug, Clone)]
pub struct ExpositionContext {
    /// This daemon's role (a label of `mtcpd_build_info`).
    pub role: Role,
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes the exposition, one family after the other.
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// The exposition of `stats`.
pub fn render(stats: &RuntimeStats, context: &ExpositionContext) -> String {
    let mut out = Exposition {
        text: String::with_capacity(4096),
    };
    let role = context.role.as_str();
    out.family(
        "mtcpd_build_info",
        "gauge",
        "Always 1; the labels say which mtcpd runs, on which I/O driver and in which role.",
    );
    out.sample(
        "mtcpd_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("io", stats.io),
            ("role", role),
        ],
        1,
    );
    out.family(
        "mtcpd_scrape_workers_missing",
        "gauge",
        "Workers that did not answer this scrape in time (their figures are missing).",
    );
    out.sample("mtcpd_scrape_workers_missing", &[], stats.workers_missing);
    out.family("mtcpd_sessions", "gauge", "Live sessions.");
    out.sample("mtcpd_sessions", &[], stats.sessions.len());
    out.family("mtcpd_streams", "gauge", "Live streams, all sessions.");
    out.sample("mtcpd_streams", &[], stats.streams());
    let c = &stats.counters;
    out.family(
        "mtcpd_streams_opened_total",
        "counter",
        "Streams opened by either end.",
    );
    out.sample("mtcpd_streams_opened_total", &[], c.streams_opened);
    out.family(
        "mtcpd_stream_bytes_total",
        "counter",
        "Stream bytes carried, by direction (to_peer: sent to the other mtcpd).",
    );
    out.sample(
        "mtcpd_stream_bytes_total",
        &[("direction", "to_peer")],
        c.stream_bytes_to_peer,
    );
    out.sample(
        "mtcpd_stream_bytes_total",
        &[("direction", "from_peer")],
        c.stream_bytes_from_peer,
    );
    out.family(
        "mtcpd_frames_resent_total",
        "counter",
        "Frames re-sent on another tunnel because theirs died.",
    );
    out.sample("mtcpd_frames_resent_total", &[], c.frames_resent);
    out.family(
        "mtcpd_stream_credit_waits_total",
        "counter",
        "Times a stream had data to send and the peer's stream credit was used up.",
    );
    out.sample(
        "mtcpd_stream_credit_waits_total",
        &[],
        c.stream_credit_waits,
    );
    out.family(
        "mtcpd_stream_window_growths_total",
        "counter",
        "Times a stream's receive window was doubled because its sender ran out of credit behind a hole.",
    );
    out.sample(
        "mtcpd_stream_window_growths_total",
        &[],
        c.stream_window_growths,
    );
    out.family(
        "mtcpd_hol_relief_total",
        "counter",
        "Head-of-line relief (hol_relief): HOL_REPORTs sent, dropped (queue full), received \
         and ignored; frames and bytes re-sent for them; frames and bytes copied off a tunnel \
         whose congestion window collapsed (handoff_*).",
    );
    for (kind, n) in c.relief.by_kind() {
        out.sample("mtcpd_hol_relief_total", &[("kind", kind)], n);
    }
    out.family(
        "mtcpd_tunnels_lost_total",
        "counter",
        "Tunnels lost, by reason.",
    );
    for reason in TUNNEL_LOSS_REASONS {
        let n = c.tunnels_lost.get(reason).copied().unwrap_or(0);
        out.sample("mtcpd_tunnels_lost_total", &[("reason", reason)], n);
    }
    out.family(
        "mtcpd_handshakes_rejected_total",
        "counter",
        "Server: tunnel handshakes refused, by reason.",
    );
    for reason in REJECTION_REASONS {
        let n = c.handshakes_rejected.get(reason).copied().unwrap_or(0);
        out.sample("mtcpd_handshakes_rejected_total", &[("reason", reason)], n);
    }
    out.family(
        "mtcpd_reorder_buffered_bytes",
        "gauge",
        "Out-of-order bytes held in reorder buffers, all sessions.",
    );
    out.sample(
        "mtcpd_reorder_buffered_bytes",
        &[],
        stats.reorder_buffered_bytes(),
    );
    render_sessions(&mut out, stats);
    render_tunnels(&mut out, stats);
    render_forwards(&mut out, stats);
    out.text
}

fn render_sessions(out: &mut Exposition, stats: &RuntimeStats) {
    out.family(
        "mtcpd_session_streams",
        "gauge",
        "Live streams of each session.",
    );
    for s in &stats.sessions {
        out.sample("mtcpd_session_streams", &[("session", &s.id)], s.streams);
    }
    out.family(
        "mtcpd_session_frames_resent_total",
        "counter",
        "Frames each live session re-sent because their tunnel died.",
    );
    for s in &stats.sessions {
        out.sample(
            "mtcpd_session_frames_resent_total",
            &[("session", &s.id)],
            s.frames_resent,
        );
    }
    out.family(
        "mtcpd_session_adaptive_pool_tunnels",
        "gauge",
        "Tunnels the adaptive pool (connection_pool_size = \"auto\") keeps now, per session.",
    );
    for s in &stats.sessions {
        if let Some(n) = s.adaptive_pool {
            out.sample(
                "mtcpd_session_adaptive_pool_tunnels",
                &[("session", &s.id)],
                n,
            );
        }
    }
    render_coupled(out, stats);
}

/// The coupled cap of each session (`coupled_pacing`, docs/PROTOCOL.md §10); a figure that has
/// no value yet (no RTT, no rate sample, a cap that does not bind) is left out.
fn render_coupled(out: &mut Exposition, stats: &RuntimeStats) {
    type Figure = fn(&CoupledStats) -> Option<f64>;
    let families: [(&str, &str, &str, Figure); 6] = [
        (
            "mtcpd_session_coupled_cap_binding",
            "gauge",
            "1 while the session's coupled cap binds (a queue built), 0 while its tunnels run as independent windows.",
            |c| Some(f64::from(u8::from(c.binding))),
        ),
        (
            "mtcpd_session_coupled_cap_bytes",
            "gauge",
            "The most the session keeps on the path while its coupled cap binds, bytes.",
            |c| c.cap_bytes.map(|b| b as f64),
        ),
        (
            "mtcpd_session_bytes_on_path",
            "gauge",
            "The session's bytes in flight or waiting to enter the path (kernel and driver queues), bytes.",
            |c| Some(c.bytes_on_path as f64),
        ),
        (
            "mtcpd_session_delivery_rate_bytes_per_second",
            "gauge",
            "The session's delivery rate over all its tunnels (what the coupled cap scales), bytes per second.",
            |c| c.delivery_rate,
        ),
        (
            "mtcpd_session_path_rtt_seconds",
            "gauge",
            "The path RTT the coupled cap uses (measured by its RTT probes, else the tunnels' minimum RTT).",
            |c| c.path_rtt.map(|r| r.as_secs_f64()),
        ),
        (
            "mtcpd_session_rtt_probes_total",
            "counter",
            "RTT probes the session's coupled cap ran (0.6x for 2 RTTs every 10 s while it binds).",
            |c| Some(c.rtt_probes as f64),
        ),
    ];
    for (name, kind, help, figure) in families {
        out.family(name, kind, help);
        for s in &stats.sessions {
            if let Some(v) = s.coupled.as_ref().and_then(figure) {
                out.sample(name, &[("session", &s.id)], v);
            }
        }
    }
}

/// One gauge or counter per tunnel, TCP_INFO figures only for tunnels with a connection.
fn render_tunnels(out: &mut Exposition, stats: &RuntimeStats) {
    struct Row<'a> {
        session: &'a str,
        index: String,
        peer: String,
        tunnel: &'a mtcpd_engine::runtime::stats::TunnelStats,
    }
    let rows: Vec<Row<'_>> = stats
        .sessions
        .iter()
        .flat_map(|s| {
            s.tunnels.iter().map(move |t| Row {
                session: &s.id,
                index: t.index.to_string(),
                peer: t.peer.map(|p| p.to_string()).unwrap_or_default(),
                tunnel: t,
            })
        })
        .collect();
    type Pick = fn(&mtcpd_engine::runtime::stats::TunnelStats) -> Option<String>;
    let families: [(&str, &str, &str, Pick); 9] = [
        (
            "mtcpd_tunnel_up",
            "gauge",
            "1 while the tunnel carries frames, else 0.",
            |t| Some(u8::from(t.up).to_string()),
        ),
        (
            "mtcpd_tunnel_rtt_seconds",
            "gauge",
            "Smoothed round-trip time (TCP_INFO, read at scrape time).",
            |t| t.tcp.as_ref().map(|x| x.rtt.as_secs_f64().to_string()),
        ),
        (
            "mtcpd_tunnel_min_rtt_seconds",
            "gauge",
            "Smallest round-trip time seen on the connection (TCP_INFO).",
            |t| t.tcp.as_ref().map(|x| x.min_rtt.as_secs_f64().to_string()),
        ),
        (
            "mtcpd_tunnel_cwnd_segments",
            "gauge",
            "Congestion window, segments (TCP_INFO).",
            |t| t.tcp.as_ref().map(|x| x.cwnd_segments.to_string()),
        ),
        (
            "mtcpd_tunnel_unsent_limit_bytes",
            "gauge",
            "Unsent bytes the tunnel's socket may hold (TCP_NOTSENT_LOWAT read back): the configured socket_notsent_lowat, or 4 ms of mtcpd's delivery-rate estimate for the tunnel when more (up to 16 MiB); 0: never set (net.ipv4.tcp_notsent_lowat applies).",
            |t| t.tcp.as_ref().map(|x| x.unsent_limit_bytes.to_string()),
        ),
        (
            "mtcpd_tunnel_delivery_rate_bytes_per_second",
            "gauge",
            "The kernel's latest delivery-rate estimate (TCP_INFO).",
            |t| {
                t.tcp
                    .as_ref()
                    .map(|x| x.delivery_rate_bytes_per_second.to_string())
            },
        ),
        (
            "mtcpd_tunnel_retransmitted_segments_total",
            "counter",
            "Segments the kernel retransmitted on the current connection (TCP_INFO).",
            |t| t.tcp.as_ref().map(|x| x.retransmitted_segments.to_string()),
        ),
        (
            "mtcpd_tunnel_sent_bytes_total",
            "counter",
            "Frame bytes (before TLS) sent on the tunnel slot, across its connections.",
            |t| Some(t.sent_bytes.to_string()),
        ),
        (
            "mtcpd_tunnel_received_bytes_total",
            "counter",
            "Frame bytes (after TLS) received on the tunnel slot, across its connections.",
            |t| Some(t.received_bytes.to_string()),
        ),
    ];
    for (name, kind, help, pick) in families {
        out.family(name, kind, help);
        for row in &rows {
            if let Some(value) = pick(row.tunnel) {
                let labels = [
                    ("session", row.session),
                    ("tunnel", row.index.as_str()),
                    ("peer", row.peer.as_str()),
                ];
                out.sample(name, &labels, value);
            }
        }
    }
    out.family(
        "mtcpd_tunnel_congestion_info",
        "gauge",
        "1, labelled with the congestion control the tunnel's connection really runs \
         (TCP_CONGESTION read back).",
    );
    for row in &rows {
        if let Some(tcp) = row.tunnel.tcp.as_ref().filter(|x| !x.congestion.is_empty()) {
            let labels = [
                ("session", row.session),
                ("tunnel", row.index.as_str()),
                ("peer", row.peer.as_str()),
                ("algorithm", tcp.congestion.as_str()),
            ];
            out.sample("mtcpd_tunnel_congestion_info", &labels, "1".to_owned());
        }
    }
}

/// The `forward` label of each forward (its name, else its listen address) with its figures;
/// forwards that share a label (a reload removed one and added another under the same name)
/// are one series, summed, so a label never appears twice.
fn forwards_by_label(stats: &RuntimeStats) -> Vec<(String, u64, u64, u64)> {
    let mut out: Vec<(String, u64, u64, u64)> = Vec::new();
    for f in &stats.forwards {
        let label = f.name.clone().unwrap_or_else(|| f.listen.to_string());
        match out.iter_mut().find(|(l, ..)| *l == label) {
            Some(sum) => {
                sum.1 += f.connections;
                sum.2 += f.bytes_to_peer;
                sum.3 += f.bytes_from_peer;
            }
            None => out.push((label, f.connections, f.bytes_to_peer, f.bytes_from_peer)),
        }
    }
    out
}

fn render_forwards(out: &mut Exposition, stats: &RuntimeStats) {
    let forwards = forwards_by_label(stats);
    out.family(
        "mtcpd_forward_connections_total",
        "counter",
        "Client: application connections accepted, per forward.",
    );
    for (name, connections, ..) in &forwards {
        out.sample(
            "mtcpd_forward_connections_total",
            &[("forward", name)],
            *connections,
        );
    }
    out.family(
        "mtcpd_forward_bytes_total",
        "counter",
        "Client: stream bytes of each forward's connections, by direction.",
    );
    for (name, _, to_peer, from_peer) in &forwards {
        out.sample(
            "mtcpd_forward_bytes_total",
            &[("forward", name), ("direction", "to_peer")],
            *to_peer,
        );
        out.sample(
            "mtcpd_forward_bytes_total",
            &[("forward", name), ("direction", "from_peer")],
            *from_peer,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtcpd_engine::runtime::stats::{
        Counters, ForwardStats, SessionStatsSnapshot, TcpStats, TunnelStats,
    };
    use mtcpd_engine::session::ReliefStats;
    use std::time::Duration;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn a_snapshot_renders_every_family_with_its_labels() {
        let stats = RuntimeStats {
            io: "mio",
            workers: 1,
            sessions: vec![SessionStatsSnapshot {
                id: "00aa11bb22cc".into(),
                streams: 2,
                tunnels: vec![
                    TunnelStats {
                        index: 0,
                        peer: Some("127.0.0.1:8000".parse().unwrap()),
                        up: true,
                        tcp: Some(TcpStats {
                            rtt: Duration::from_micros(1500),
                            cwnd_segments: 10,
                            ..TcpStats::default()
                        }),
                        sent_bytes: 100,
                        received_bytes: 50,
                    },
                    TunnelStats {
                        index: 1,
                        ..TunnelStats::default()
                    },
                ],
                adaptive_pool: Some(4),
                coupled: Some(CoupledStats {
                    binding: true,
                    cap_bytes: Some(37_500_000),
                    bytes_on_path: 36_000_000,
                    delivery_rate: Some(120e6),
                    path_rtt: Some(Duration::from_millis(250)),
                    rtt_probes: 2,
                }),
                ..SessionStatsSnapshot::default()
            }],
            forwards: vec![
                ForwardStats {
                    listen: "127.0.0.1:7000".parse().unwrap(),
                    name: Some("web \"main\"".into()),
                    connections: 3,
                    bytes_to_peer: 7,
                    bytes_from_peer: 8,
                },
                // A reload removed "web" and added it again elsewhere: one series.
                ForwardStats {
                    listen: "127.0.0.1:7001".parse().unwrap(),
                    name: Some("web \"main\"".into()),
                    connections: 1,
                    bytes_to_peer: 1,
                    bytes_from_peer: 2,
                },
                ForwardStats {
                    listen: "127.0.0.1:7002".parse().unwrap(),
                    name: None,
                    connections: 0,
                    bytes_to_peer: 0,
                    bytes_from_peer: 0,
                },
            ],
            counters: Counters {
                relief: ReliefStats {
                    reports_received: 3,
                    ..ReliefStats::default()
                },
                ..Counters::default()
            },
            ..RuntimeStats::default()
        };
        let context = ExpositionContext { role: Role::Client };
        let text = render(&stats, &context);
        assert!(text.contains("mtcpd_build_info{version=\""));
        assert!(text.contains("io=\"mio\",role=\"client\"} 1\n"));
        assert!(text.contains(
            "mtcpd_tunnel_rtt_seconds{session=\"00aa11bb22cc\",tunnel=\"0\",peer=\"127.0.0.1:8000\"} 0.0015\n"
        ));
        assert!(
            text.contains("mtcpd_tunnel_up{session=\"00aa11bb22cc\",tunnel=\"1\",peer=\"\"} 0\n")
        );
        assert!(!text.contains("mtcpd_tunnel_cwnd_segments{session=\"00aa11bb22cc\",tunnel=\"1\""));
        assert!(text.contains("mtcpd_streams 2\n"));
        assert!(text.contains("mtcpd_session_adaptive_pool_tunnels{session=\"00aa11bb22cc\"} 4\n"));
        for (name, value) in [
            ("coupled_cap_binding", "1"),
            ("coupled_cap_bytes", "37500000"),
            ("bytes_on_path", "36000000"),
            ("delivery_rate_bytes_per_second", "120000000"),
            ("path_rtt_seconds", "0.25"),
            ("rtt_probes_total", "2"),
        ] {
            let line = format!("mtcpd_session_{name}{{session=\"00aa11bb22cc\"}} {value}\n");
            assert!(text.contains(&line), "{line}");
        }
        assert!(text.contains("mtcpd_tunnels_lost_total{reason=\"idle_timeout\"} 0\n"));
        assert!(text.contains("mtcpd_hol_relief_total{kind=\"reports_received\"} 3\n"));
        assert!(text.contains("mtcpd_hol_relief_total{kind=\"bytes_resent\"} 0\n"));
        assert!(text.contains(
            "mtcpd_forward_bytes_total{forward=\"web \\\"main\\\"\",direction=\"from_peer\"} 10\n"
        ));
        assert_eq!(text.matches("mtcpd_forward_connections_total{").count(), 2);
        assert!(text.contains("mtcpd_forward_connections_total{forward=\"127.0.0.1:7002\"} 0\n"));
        // Every sample line belongs to a family announced before it.
        let mut announced = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                announced.push(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(announced.last().map(String::as_str), Some(name), "{line}");
            }
        }
    }
}
