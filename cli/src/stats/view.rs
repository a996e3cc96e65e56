//! What `mtcpd stats` shows: a daemon's figures built from its metrics' samples, rates from two
//! readings, and their table and JSON forms.
//!
//! Owns: [`View`] (per tunnel, per session, per forward and process totals) and its text
//! rendering. Must not touch: fetching or parsing (`exposition`), or the terminal loop (`mod`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use super::exposition::Sample;

/// One tunnel.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TunnelView {
    /// Session short id.
    pub session: String,
    /// Slot index.
    pub tunnel: u32,
    /// Far end ("" without a connection).
    pub peer: String,
    /// Carries frames.
    pub up: bool,
    /// Smoothed RTT, ms.
    pub rtt_ms: Option<f64>,
    /// Smallest RTT, ms.
    pub min_rtt_ms: Option<f64>,
    /// Congestion window, segments.
    pub cwnd_segments: Option<u64>,
    /// The kernel's delivery-rate estimate, bytes/s.
    pub delivery_rate_bytes_per_second: Option<u64>,
    /// Segments retransmitted by TCP on the current connection.
    pub retransmitted_segments: Option<u64>,
    /// The congestion control the connection really runs.
    pub congestion: Option<String>,
    /// Frame bytes sent.
    pub sent_bytes: u64,
    /// Frame bytes received.
    pub received_bytes: u64,
    /// Sent bytes per second over the last interval.
    pub send_bytes_per_second: Option<f64>,
    /// Received bytes per second over the last interval.
    pub receive_bytes_per_second: Option<f64>,
}

/// One session: its tunnels summed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SessionView {
    /// Short id.
    pub session: String,
    /// Live streams.
    pub streams: u64,
    /// Frames re-sent on other tunnels.
    pub frames_resent: u64,
    /// Tunnels up / slots.
    pub tunnels_up: u32,
    /// Slots.
    pub tunnels: u32,
    /// Frame bytes sent, all tunnels.
    pub sent_bytes: u64,
    /// Frame bytes received, all tunnels.
    pub received_bytes: u64,
    /// Sent bytes per second.
    pub send_bytes_per_second: Option<f64>,
    /// Received bytes per second.
    pub receive_bytes_per_second: Option<f64>,
}

/// One client forward.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ForwardView {
    /// Its name or listen address.
    pub forward: String,
    /// Connections accepted.
    pub connections: u64,
    /// Stream bytes to the peer.
    pub bytes_to_peer: u64,
    /// Stream bytes from the peer.
    pub bytes_from_peer: u64,
    /// Bytes to the peer per second.
    pub to_peer_bytes_per_second: Option<f64>,
    /// Bytes from the peer per second.
    pub from_peer_bytes_per_second: Option<f64>,
}

/// Everything shown.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct View {
    /// mtcpd version.
    pub version: String,
    /// I/O driver.
    pub io: String,
    /// client or server.
    pub role: String,
    /// Live sessions.
    pub sessions: u64,
    /// Live streams.
    pub streams: u64,
    /// Streams opened since start.
    pub streams_opened: u64,
    /// Stream bytes sent to the peer since start.
    pub bytes_to_peer: u64,
    /// Stream bytes received from the peer since start.
    pub bytes_from_peer: u64,
    /// Frames re-sent since start.
    pub frames_resent: u64,
    /// Tunnels lost since start, all reasons.
    pub tunnels_lost: u64,
    /// Handshakes refused since start, all reasons.
    pub handshakes_rejected: u64,
    /// Head-of-line relief since start: HOL_REPORTs this end sent and received.
    pub relief_reports: (u64, u64),
    /// Frames re-sent as head-of-line relief since start.
    pub relief_resent: u64,
    /// Bytes in reorder buffers now.
    pub reorder_buffered_bytes: u64,
    /// Per session.
    pub session_list: Vec<SessionView>,
    /// Per tunnel.
    pub tunnel_list: Vec<TunnelView>,
    /// Per forward.
    pub forward_list: Vec<ForwardView>,
}

fn count(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v as u64
    } else {
        0
    }
}

fn rate(now: u64, before: Option<u64>, elapsed: Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    let before = before?;
    (secs > 0.0).then(|| now.saturating_sub(before) as f64 / secs)
}

impl View {
    /// The view of `samples`; rates against `previous`, read `elapsed` earlier.
    pub fn build(samples: &[Sample], previous: Option<&View>, elapsed: Duration) -> View {
        let mut view = View::default();
        let mut tunnels: BTreeMap<(String, u32), TunnelView> = BTreeMap::new();
        let mut session_streams: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut forwards: BTreeMap<String, ForwardView> = BTreeMap::new();
        for s in samples {
            let v = s.value;
            match s.name.as_str() {
                "mtcpd_build_info" => {
                    view.version = s.label("version").to_owned();
                    view.io = s.label("io").to_owned();
                    view.role = s.label("role").to_owned();
                }
                "mtcpd_sessions" => view.sessions = count(v),
                "mtcpd_streams" => view.streams = count(v),
                "mtcpd_streams_opened_total" => view.streams_opened = count(v),
                "mtcpd_stream_bytes_total" => match s.label("direction") {
                    "to_peer" => view.bytes_to_peer = count(v),
                    "from_peer" => view.bytes_from_peer = count(v),
                    _ => {}
                },
                "mtcpd_frames_resent_total" => view.frames_resent = count(v),
                "mtcpd_tunnels_lost_total" => view.tunnels_lost += count(v),
                "mtcpd_handshakes_rejected_total" => view.handshakes_rejected += count(v),
                "mtcpd_reorder_buffered_bytes" => view.reorder_buffered_bytes = count(v),
                "mtcpd_hol_relief_total" => match s.label("kind") {
                    "reports_sent" => view.relief_reports.0 = count(v),
                    "reports_received" => view.relief_reports.1 = count(v),
                    "frames_resent" => view.relief_resent = count(v),
                    _ => {}
                },
                "mtcpd_session_streams" => {
                    session_streams
                        .entry(s.label("session").into())
                        .or_default()
                        .0 = count(v)
                }
                "mtcpd_session_frames_resent_total" => {
                    session_streams
                        .entry(s.label("session").into())
                        .or_default()
                        .1 = count(v)
                }
                "mtcpd_forward_connections_total" => {
                    forwards
                        .entry(s.label("forward").into())
                        .or_default()
                        .connections = count(v)
                }
                "mtcpd_forward_bytes_total" => {
                    let f = forwards.entry(s.label("forward").into()).or_default();
                    match s.label("direction") {
                        "to_peer" => f.bytes_to_peer = count(v),
                        "from_peer" => f.bytes_from_peer = count(v),
                        _ => {}
                    }
                }
                name if name.starts_with("mtcpd_tunnel_") => {
                    let Ok(index) = s.label("tunnel").parse::<u32>() else {
                        continue;
                    };
                    let t = tunnels
                        .entry((s.label("session").to_owned(), index))
                        .or_default();
                    t.session = s.label("session").to_owned();
                    t.tunnel = index;
                    t.peer = s.label("peer").to_owned();
                    match name {
                        "mtcpd_tunnel_up" => t.up = v >= 1.0,
                        "mtcpd_tunnel_rtt_seconds" => t.rtt_ms = Some(v * 1000.0),
                        "mtcpd_tunnel_min_rtt_seconds" => t.min_rtt_ms = Some(v * 1000.0),
                        "mtcpd_tunnel_cwnd_segments" => t.cwnd_segments = Some(count(v)),
                        "mtcpd_tunnel_delivery_rate_bytes_per_second" => {
                            t.delivery_rate_bytes_per_second = Some(count(v))
                        }
                        "mtcpd_tunnel_retransmitted_segments_total" => {
                            t.retransmitted_segments = Some(count(v))
                        }
                        "mtcpd_tunnel_congestion_info" => {
                            t.congestion = Some(s.label("algorithm").to_owned())
                        }
                        "mtcpd_tunnel_sent_bytes_total" => t.sent_bytes = count(v),
                        "mtcpd_tunnel_received_bytes_total" => t.received_bytes = count(v),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        view.tunnel_list = tunnels.into_values().collect();
        view.forward_list = forwards
            .into_iter()
            .map(|(name, f)| ForwardView { forward: name, ..f })
            .collect();
        let mut sessions: BTreeMap<String, SessionView> = BTreeMap::new();
        for (id, (streams, resent)) in session_streams {
            let s = sessions.entry(id.clone()).or_default();
            s.session = id;
            s.streams = streams;
            s.frames_resent = resent;
        }
        for t in &view.tunnel_list {
            let s = sessions.entry(t.session.clone()).or_default();
            s.session = t.session.clone();
            s.tunnels += 1;
            s.tunnels_up += u32::from(t.up);
            s.sent_bytes += t.sent_bytes;
            s.received_bytes += t.received_bytes;
        }
        view.session_list = sessions.into_values().collect();
        if let Some(before) = previous {
            view.rates_since(before, elapsed);
        }
        view
    }

    fn rates_since(&mut self, before: &View, elapsed: Duration) {
        for t in &mut self.tunnel_list {
            let old = before
                .tunnel_list
                .iter()
                .find(|o| o.session == t.session && o.tunnel == t.tunnel);
            t.send_bytes_per_second = rate(t.sent_bytes, old.map(|o| o.sent_bytes), elapsed);
            t.receive_bytes_per_second =
                rate(t.received_bytes, old.map(|o| o.received_bytes), elapsed);
        }
        for s in &mut self.session_list {
            let old = before.session_list.iter().find(|o| o.session == s.session);
            s.send_bytes_per_second = rate(s.sent_bytes, old.map(|o| o.sent_bytes), elapsed);
            s.receive_bytes_per_second =
                rate(s.received_bytes, old.map(|o| o.received_bytes), elapsed);
        }
        for f in &mut self.forward_list {
            let old = before.forward_list.iter().find(|o| o.forward == f.forward);
            f.to_peer_bytes_per_second =
                rate(f.bytes_to_peer, old.map(|o| o.bytes_to_peer), elapsed);
            f.from_peer_bytes_per_second =
                rate(f.bytes_from_peer, old.map(|o| o.bytes_from_peer), elapsed);
        }
    }

    /// The table `mtcpd stats` prints.
    pub fn table(&self, source: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "mtcpd {} {} (io {}) at {source}",
            self.version, self.role, self.io
        );
        let _ = writeln!(
            out,
            "sessions {}  streams {}  opened {}  to peer {}  from peer {}  resent {}  \
             tunnels lost {}  handshakes rejected {}  reordering {}  \
             hol relief {} sent/{} received/{} resent",
            self.sessions,
            self.streams,
            self.streams_opened,
            bytes(self.bytes_to_peer),
            bytes(self.bytes_from_peer),
            self.frames_resent,
            self.tunnels_lost,
            self.handshakes_rejected,
            bytes(self.reorder_buffered_bytes),
            self.relief_reports.0,
            self.relief_reports.1,
            self.relief_resent
        );
        let _ = writeln!(
            out,
            "\n{:<12} {:>3} {:<22} {:>2} {:<6} {:>8} {:>8} {:>6} {:>11} {:>7} {:>11} {:>11}",
            "SESSION",
            "TUN",
            "PEER",
            "UP",
            "CC",
            "RTT ms",
            "MIN ms",
            "CWND",
            "DELIVERY",
            "RETRANS",
            "SEND",
            "RECEIVE"
        );
        for t in &self.tunnel_list {
            let _ = writeln!(
                out,
                "{:<12} {:>3} {:<22} {:>2} {:<6} {:>8} {:>8} {:>6} {:>11} {:>7} {:>11} {:>11}",
                t.session,
                t.tunnel,
                if t.peer.is_empty() { "-" } else { &t.peer },
                if t.up { "1" } else { "0" },
                t.congestion.as_deref().unwrap_or("-"),
                opt_f(t.rtt_ms),
                opt_f(t.min_rtt_ms),
                opt_u(t.cwnd_segments),
                opt_rate(t.delivery_rate_bytes_per_second.map(|r| r as f64)),
                opt_u(t.retransmitted_segments),
                opt_rate(t.send_bytes_per_second),
                opt_rate(t.receive_bytes_per_second)
            );
        }
        let _ = writeln!(
            out,
            "\n{:<12} {:>7} {:>7} {:>7} {:>11} {:>11} {:>11} {:>11}",
            "SESSION", "STREAMS", "TUNNELS", "RESENT", "SENT", "RECEIVED", "SEND", "RECEIVE"
        );
        for s in &self.session_list {
            let _ = writeln!(
                out,
                "{:<12} {:>7} {:>7} {:>7} {:>11} {:>11} {:>11} {:>11}",
                s.session,
                s.streams,
                format!("{}/{}", s.tunnels_up, s.tunnels),
                s.frames_resent,
                bytes(s.sent_bytes),
                bytes(s.received_bytes),
                opt_rate(s.send_bytes_per_second),
                opt_rate(s.receive_bytes_per_second)
            );
        }
        if !self.forward_list.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<24} {:>11} {:>11} {:>11} {:>11} {:>11}",
                "FORWARD", "CONNECTIONS", "TO PEER", "FROM PEER", "TO PEER/s", "FROM PEER/s"
            );
            for f in &self.forward_list {
                let _ = writeln!(
                    out,
                    "{:<24} {:>11} {:>11} {:>11} {:>11} {:>11}",
                    f.forward,
                    f.connections,
                    bytes(f.bytes_to_peer),
                    bytes(f.bytes_from_peer),
                    opt_rate(f.to_peer_bytes_per_second),
                    opt_rate(f.from_peer_bytes_per_second)
                );
            }
        }
        out
    }
}

/// A byte count with a binary unit.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn opt_rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{}/s", bytes(r.max(0.0) as u64)))
}

fn opt_f(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

fn opt_u(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::exposition::parse;

    const FIRST: &str = "mtcpd_build_info{version=\"0.1.0\",io=\"mio\",role=\"client\"} 1\n\
        mtcpd_sessions 1\nmtcpd_streams 2\n\
        mtcpd_stream_bytes_total{direction=\"to_peer\"} 1000\n\
        mtcpd_tunnels_lost_total{reason=\"replaced\"} 1\n\
        mtcpd_tunnels_lost_total{reason=\"idle_timeout\"} 2\n\
        mtcpd_session_streams{session=\"aa\"} 2\n\
        mtcpd_tunnel_up{session=\"aa\",tunnel=\"0\",peer=\"p:1\"} 1\n\
        mtcpd_tunnel_rtt_seconds{session=\"aa\",tunnel=\"0\",peer=\"p:1\"} 0.0125\n\
        mtcpd_tunnel_sent_bytes_total{session=\"aa\",tunnel=\"0\",peer=\"p:1\"} 1000\n\
        mtcpd_tunnel_up{session=\"aa\",tunnel=\"1\",peer=\"\"} 0\n\
        mtcpd_forward_bytes_total{forward=\"web\",direction=\"to_peer\"} 10\n\
        mtcpd_hol_relief_total{kind=\"reports_received\"} 4\n\
        mtcpd_hol_relief_total{kind=\"frames_resent\"} 6\n";

    #[test]
    fn samples_become_tunnels_sessions_and_totals_with_rates() {
        let first = View::build(&parse(FIRST).unwrap(), None, Duration::ZERO);
        assert_eq!((first.io.as_str(), first.role.as_str()), ("mio", "client"));
        assert_eq!(first.tunnels_lost, 3);
        assert_eq!(first.tunnel_list.len(), 2);
        assert_eq!(first.tunnel_list[0].rtt_ms, Some(12.5));
        assert_eq!(first.tunnel_list[0].send_bytes_per_second, None);
        let s = &first.session_list[0];
        assert_eq!(
            (s.streams, s.tunnels_up, s.tunnels, s.sent_bytes),
            (2, 1, 2, 1000)
        );
        let later_text = FIRST
            .replace("peer=\"p:1\"} 1000", "peer=\"p:1\"} 3000")
            .replace("direction=\"to_peer\"} 10", "direction=\"to_peer\"} 510");
        let later = View::build(
            &parse(&later_text).unwrap(),
            Some(&first),
            Duration::from_millis(500),
        );
        assert_eq!(later.tunnel_list[0].send_bytes_per_second, Some(4000.0));
        assert_eq!(later.session_list[0].send_bytes_per_second, Some(4000.0));
        assert_eq!(later.forward_list[0].to_peer_bytes_per_second, Some(1000.0));
        let table = later.table("127.0.0.1:9100");
        assert!(table.contains("12.500"), "{table}");
        assert!(table.contains("3.9 KiB/s"), "{table}");
        assert!(table.contains("web"), "{table}");
        assert_eq!((later.relief_reports, later.relief_resent), ((0, 4), 6));
        assert!(
            table.contains("hol relief 0 sent/4 received/6 resent"),
            "{table}"
        );
    }

    #[test]
    fn byte_counts_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}
