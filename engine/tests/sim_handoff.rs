//! Hand-off (`session::handoff`): when the kernel reports that a tunnel's congestion window
//! collapsed (bbr's ProbeRTT, a retransmission timeout), the frames it has not sent yet are
//! copied onto another tunnel and the scheduler leaves it alone until its window reopens; a
//! window that is merely small is left alone; and the copies never make a byte arrive twice.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use mtcpd_engine::session::StreamId;
use mtcpd_engine::sim::SimPair;
use mtcpd_engine::wire::Frame;
use mtcpd_engine::{Config, Session, TcpReport};
use support::direct::frames_sent;
use support::{FlowSpec, Workload, eight_active_tunnels};

const MS: Duration = Duration::from_millis(1);

/// What a driver reads of a tunnel with congestion window `cwnd_bytes` and `unsent_bytes` not
/// sent yet, on a 100 ms path without a queue.
fn report(cwnd_bytes: u64, unsent_bytes: u64) -> TcpReport {
    TcpReport {
        srtt: MS * 100,
        min_rtt: MS * 100,
        retransmits: 0,
        held_bytes: unsent_bytes,
        cwnd_bytes,
        unsent_bytes,
        delivered_bytes: 0,
    }
}

/// Without the coupled cap (it would hold the test's drains to its floor), with 256 KiB
/// written on one stream: the pair, the stream and the bytes framed on tunnel 0 by one
/// transmit. (A stream's first credit is 1 MiB: the tests write little at a time.)
fn session_with_frames_on_tunnel_zero() -> (SimPair, StreamId, u64) {
    let config = Config {
        psk: b"k".to_vec(),
        coupled_pacing: false,
        ..Config::default()
    };
    let mut pair = eight_active_tunnels(config);
    let now = pair.now;
    let c = &mut pair.client;
    let id = c.open_stream(None).unwrap();
    c.write(id, Bytes::from(vec![7u8; 256 << 10])).unwrap();
    let on_zero = framed_on(c, now, 0, 128 << 10);
    assert!(on_zero >= 64 << 10, "{on_zero}: tunnel 0 took stream data");
    c.set_tunnel_tcp_info(0, now, report(1 << 20, on_zero));
    (pair, id, on_zero)
}

/// Stream bytes framed by one transmit of about `max` bytes on tunnel `t`.
fn framed_on(c: &mut Session, now: Instant, t: usize, max: usize) -> u64 {
    let before = c.stats().stream_bytes_sent;
    c.poll_transmit(now, t, max, &mut Vec::new());
    c.stats().stream_bytes_sent - before
}

/// One transmit on every tunnel but 0, as far as they take.
fn transmit_elsewhere(c: &mut Session, now: Instant) {
    for t in 1..8 {
        c.poll_transmit(now, t, 4 << 20, &mut Vec::new());
    }
}

#[test]
fn a_collapsed_window_hands_its_unsent_frames_to_another_tunnel() {
    let (mut pair, id, on_zero) = session_with_frames_on_tunnel_zero();
    let now = pair.now;
    let c = &mut pair.client;
    // ProbeRTT: four segments, everything framed on it still unsent.
    c.set_tunnel_tcp_info(0, now, report(4 * 1448, on_zero));
    transmit_elsewhere(c, now);
    let copied = c.relief_stats().handoff_bytes;
    assert!(
        copied >= on_zero && copied < on_zero + (4 << 10),
        "{copied} bytes copied for {on_zero} unsent"
    );
    assert_eq!(c.relief_stats().frames_resent, 0, "not counted as relief");
    c.write(id, Bytes::from(vec![7u8; 64 << 10])).unwrap();
    assert_eq!(
        framed_on(c, now, 0, 64 << 10),
        0,
        "no new data on the collapsed tunnel"
    );
    // Still collapsed: nothing is copied twice.
    c.set_tunnel_tcp_info(0, now, report(4 * 1448, on_zero));
    transmit_elsewhere(c, now);
    assert_eq!(c.relief_stats().handoff_bytes, copied);
    // The window reopens: the tunnel takes new data again.
    c.write(id, Bytes::from(vec![7u8; 64 << 10])).unwrap();
    c.set_tunnel_tcp_info(0, now, report(1 << 20, 0));
    assert!(framed_on(c, now, 0, 64 << 10) > 0, "back in use");
}

/// A collapsed tunnel with nothing on its path, which the scheduler sidelines, gets a PING:
/// bbr ends ProbeRTT on an ACK or on a restart after idle, and a sidelined tunnel would send
/// nothing to cause either (on the emulator it stayed at four segments until its keepalive).
/// Not while bytes are on its path (their ACKs do it), nor twice before its PONG.
#[test]
fn a_sidelined_tunnel_with_nothing_on_its_path_gets_a_ping() {
    let (mut pair, _, on_zero) = session_with_frames_on_tunnel_zero();
    let now = pair.now;
    let c = &mut pair.client;
    let pings = |frames: Vec<Frame>| {
        frames
            .iter()
            .filter(|f| matches!(f, Frame::Ping { .. }))
            .count()
    };
    c.set_tunnel_tcp_info(0, now, report(4 * 1448, on_zero));
    transmit_elsewhere(c, now);
    assert_eq!(pings(frames_sent(c, now, 0)), 0, "bytes on its path");
    // ProbeRTT drained it: nothing in flight, nothing unsent.
    let later = now + MS * 10;
    c.set_tunnel_tcp_info(0, later, report(4 * 1448, 0));
    assert!(c.wants_transmit(0));
    assert_eq!(pings(frames_sent(c, later, 0)), 1);
    let later = later + MS * 10;
    c.set_tunnel_tcp_info(0, later, report(4 * 1448, 0));
    assert_eq!(pings(frames_sent(c, later, 0)), 0, "one until its PONG");
    // An open window with nothing on its path is only idle.
    c.set_tunnel_tcp_info(1, later, report(1 << 20, 0));
    assert_eq!(pings(frames_sent(c, later, 1)), 0, "an idle tunnel");

    // With every window collapsed no tunnel is sidelined: frames still go, and no PING.
    let (mut pair, _, _) = session_with_frames_on_tunnel_zero();
    let now = pair.now;
    let c = &mut pair.client;
    for t in (1..8).chain([0]) {
        c.set_tunnel_tcp_info(t, now, report(1 << 20, 0));
        c.set_tunnel_tcp_info(t, now, report(4 * 1448, 0));
    }
    assert_eq!(pings(frames_sent(c, now, 0)), 0, "not sidelined");
}

/// The session on `peer_stream_window` credit delivering 10 MB/s for `span` (the kernel's
/// counts on tunnels 1 to 7, while a backlog waits), with stream bytes framed on tunnel 0 and
/// still unsent there when its window collapses: the hand-off copies they made.
fn copies_at_10_mb_s(peer_stream_window: u64, span: Duration) -> u64 {
    let config = Config {
        psk: b"k".to_vec(),
        coupled_pacing: false,
        stream_window: peer_stream_window,
        ..Config::default()
    };
    let mut pair = eight_active_tunnels(config);
    let mut now = pair.now;
    let c = &mut pair.client;
    let id = c.open_stream(None).unwrap();
    c.write(id, Bytes::from(vec![7u8; 4 << 20])).unwrap();
    let on_zero = framed_on(c, now, 0, 128 << 10);
    c.set_tunnel_tcp_info(0, now, report(1 << 20, on_zero));
    let step = MS * 10;
    for i in 1..=(span.as_millis() / 10) as u64 {
        now += step;
        for t in 1..8 {
            let delivered = i * 100_000 / 7 + 1;
            let counted = TcpReport {
                delivered_bytes: delivered,
                ..report(1 << 20, 0)
            };
            c.set_tunnel_tcp_info(t, now, counted);
        }
    }
    c.set_tunnel_tcp_info(0, now, report(4 * 1448, on_zero));
    transmit_elsewhere(c, now);
    c.relief_stats().handoff_bytes
}

/// A copy takes the place of other bytes on the path; it pays only where the stall would use
/// up the peer's credit. After a second at a steady 10 MB/s on a 100 ms path (the start-up is
/// over: the rate stopped growing) a ProbeRTT stall (4 RTTs and 200 ms: 6 MB) leaves the
/// default 128 MiB window far from empty: no copy. (On the emulator under a 20 Mbit/s
/// per-flow cap every copy took the place of another tunnel's own bytes.) Against a 4 MiB
/// window it would run out: the frames are copied. In the start-up (a quarter of a second in),
/// whose rate grows every RTT, they are copied whatever the window. (Before the rate is
/// measured the frames are copied too, so the first case fails unless the counts measured it.)
#[test]
fn a_stall_the_credit_outlasts_copies_nothing() {
    let default_window = Config::default().stream_window;
    let second = Duration::from_secs(1);
    assert_eq!(copies_at_10_mb_s(default_window, second), 0);
    assert!(copies_at_10_mb_s(4 << 20, second) > 64 << 10);
    assert!(copies_at_10_mb_s(default_window, MS * 250) > 64 << 10);
}

#[test]
fn a_window_that_is_only_small_is_no_collapse() {
    let (mut pair, id, on_zero) = session_with_frames_on_tunnel_zero();
    let now = pair.now;
    let c = &mut pair.client;
    // Halved twice by losses on a slow path: 16 → 8 → 4 segments, one report each.
    for segments in [16, 8, 4] {
        c.set_tunnel_tcp_info(0, now, report(segments * 1448, on_zero));
    }
    transmit_elsewhere(c, now);
    assert_eq!(c.relief_stats().handoff_frames, 0);
    c.write(id, Bytes::from(vec![7u8; 64 << 10])).unwrap();
    assert!(framed_on(c, now, 0, 64 << 10) > 0, "still in use");
}

/// Copies arrive beside their originals (the simulated tunnel keeps sending what the report
/// called unsent): every byte still arrives exactly once and in order.
#[test]
fn hand_off_copies_never_deliver_a_byte_twice() {
    // A window the collapses' stalls would use up, so that they copy.
    let config = Config {
        psk: b"k".to_vec(),
        stream_window: 4 << 20,
        session_window: 8 << 20,
        ..Config::default()
    };
    let mut pair = eight_active_tunnels(config);
    let mut w = Workload::new(vec![
        FlowSpec::bulk(24 << 20, 0),
        FlowSpec::bulk(4 << 20, 4 << 20),
    ]);
    let mut steps = 0u64;
    let done = pair.run(Duration::from_secs(120), |p| {
        steps += 1;
        if steps % 200 == 0 {
            // Each tunnel in turn: open, then collapsed with 256 KiB unsent.
            let t = (steps / 200 % 8) as usize;
            let now = p.now;
            p.client.set_tunnel_tcp_info(t, now, report(1 << 20, 0));
            p.client
                .set_tunnel_tcp_info(t, now, report(4 * 1448, 256 << 10));
        }
        w.step(p)
    });
    assert!(done, "{:?}", w.errors);
    w.verify().unwrap();
    let copied = pair.client.relief_stats().handoff_frames;
    assert!(copied > 0, "no copy was made");
    eprintln!("{copied} frames copied");
}
