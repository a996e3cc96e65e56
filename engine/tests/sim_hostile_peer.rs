//! An authenticated but hostile peer, driven frame by frame against a server session: what it
//! can make this end hold is bounded by the configured caps, and the figures are measured.
//!
//! A counting global allocator (this test binary only) measures the heap the session holds;
//! the tests take turns (a lock) so that nothing else allocates while one measures. Run with
//! `--nocapture` to see the figures.

use mtcpd_testkit::alloc::{CountingAlloc, live_bytes};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mtcpd_engine::Config;
use mtcpd_engine::error::{SessionError, TunnelError, code};
use mtcpd_engine::handshake::{AcceptedTunnel, TransportParams};
use mtcpd_engine::reorder::PIECE_OVERHEAD;
use mtcpd_engine::session::{Event, Session};
use mtcpd_engine::wire::Frame;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Held while measuring: the tests of this binary must not overlap.
static MEASURING: Mutex<()> = Mutex::new(());

fn alone() -> MutexGuard<'static, ()> {
    MEASURING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn live() -> isize {
    live_bytes()
}

const MIB: u64 = 1024 * 1024;

/// What the hostile client announces: every limit as large as the wire can carry.
fn enormous_params() -> TransportParams {
    TransportParams {
        max_frame_body: u32::MAX,
        stream_window: 1 << 62,
        session_window: 1 << 62,
        max_streams: 1 << 62,
    }
}

fn accepted(index: u16, pool: u16, params: TransportParams) -> AcceptedTunnel {
    AcceptedTunnel {
        session_id: [9; 16],
        tunnel_index: index,
        pool_size: pool,
        session_secret: [5; 32],
        resume: index > 0,
        peer_params: params,
        peer_capabilities: 0,
        rtt: Duration::from_millis(10),
    }
}

/// A server session with `pool` tunnels attached by a client that announced `params`.
fn server_session(config: Config, now: Instant, pool: u16, params: TransportParams) -> Session {
    let mut s = Session::server(Arc::new(config), now, &accepted(0, pool, params), 1);
    for t in 1..pool {
        s.attach_tunnel(now, &accepted(t, pool, params));
    }
    s
}

/// Feeds `frames` to the session as if read from tunnel `t` in one buffer.
fn inject(s: &mut Session, now: Instant, t: usize, frames: &[Frame]) -> Result<(), SessionError> {
    let mut buf = BytesMut::new();
    for f in frames {
        buf.extend_from_slice(&f.to_bytes());
    }
    s.handle_input(now, t, &mut buf)
}

/// Writes as much as the streams take, then takes everything each tunnel will send. Returns
/// the bytes framed.
fn push_and_transmit(s: &mut Session, now: Instant, streams: &[u64], chunk: &[u8]) -> usize {
    for &id in streams {
        while s.write_slice(id, chunk).unwrap_or(0) == chunk.len() {}
    }
    let mut out = Vec::new();
    let mut sent = 0;
    for t in 0..s.tunnel_count() {
        sent += s.poll_transmit(now, t, 1 << 22, &mut out);
        out.clear();
    }
    sent
}

/// (a) The peer announces enormous windows, never acknowledges, and keeps every tunnel alive
/// with PINGs while this end has far more to send than the caps.
fn never_acknowledging_peer(pool: u16, session_cap: u64, tunnel_cap: u64) {
    let config = Config {
        max_unacked_bytes: session_cap,
        max_tunnel_unacked_bytes: tunnel_cap,
        ..Config::default()
    };
    let idle = config.tunnel_idle_timeout;
    let start = Instant::now();
    let before = live();
    let mut s = server_session(config, start, pool, enormous_params());
    let streams: Vec<u64> = (0..16).map(|_| s.open_stream(None).unwrap()).collect();
    let chunk = vec![0x5a; 64 * 1024];
    let mut now = start;
    let mut first_sent = None;
    let mut most_retained = 0;
    let mut died = Vec::new();
    while died.len() < pool as usize && now < start + idle * 2 {
        let sent = push_and_transmit(&mut s, now, &streams, &chunk);
        if sent > 0 && first_sent.is_none() {
            first_sent = Some(now);
        }
        most_retained = most_retained.max(s.stats().retained_bytes);
        for t in 0..pool as usize {
            // Alive, answering nothing but PINGs of its own.
            let _ = inject(&mut s, now, t, &[Frame::Ping { token: 1 }]);
        }
        now += Duration::from_millis(250);
        s.handle_timeout(now);
        while let Some(e) = s.poll_event() {
            if let Event::TunnelDown { tunnel, reason } = e {
                assert_eq!(reason, TunnelError::Unacknowledged(idle));
                died.push((tunnel, now));
            }
        }
    }
    let stats = s.stats();
    let held = live() - before;
    let tunnels_bound = u64::from(pool) * tunnel_cap;
    eprintln!(
        "never-acknowledging peer, {pool} tunnels, caps {} MiB/session {} MiB/tunnel: most \
         retained for resend {} B ({:.2} MiB), after the tunnels died {} B; session heap {} B \
         ({:.2} MiB, including 16 full 1 MiB send buffers); tunnels declared dead {:?} after \
         the first unacknowledged frame",
        session_cap / MIB,
        tunnel_cap / MIB,
        most_retained,
        most_retained as f64 / MIB as f64,
        stats.retained_bytes,
        held,
        held as f64 / MIB as f64,
        died.iter()
            .map(|(_, at)| at.duration_since(first_sent.unwrap_or(start)))
            .collect::<Vec<_>>(),
    );
    // One frame may overshoot each cap (the check comes before the frame).
    let frame = 64 * 1024;
    assert!(
        most_retained <= session_cap.min(tunnels_bound) + u64::from(pool) * frame,
        "retained {most_retained}"
    );
    assert!(
        most_retained >= session_cap.min(tunnels_bound) / 2,
        "the caps, not something else, stopped the data: {most_retained}"
    );
    assert!(stats.retained_bytes <= most_retained);
    assert_eq!(died.len(), pool as usize, "every tunnel was declared dead");
    let first = first_sent.expect("data was sent");
    // A tunnel dies an idle timeout after its own oldest unacknowledged frame: the first
    // ones at once, a tunnel that only got frames as resends from the dead ones a timeout later.
    let slack = Duration::from_secs(1);
    for (tunnel, at) in &died {
        let after = at.duration_since(first);
        assert!(
            after >= idle && after <= 2 * idle + slack,
            "tunnel {tunnel} died {after:?} after the first frame"
        );
    }
    assert!(
        died.iter()
            .any(|(_, at)| at.duration_since(first) <= idle + slack)
    );
    // The heap: the retained frames and the send buffers, nothing unbounded.
    let send_buffers = 16 * Config::default().stream_send_buffer as isize;
    assert!(
        held <= (most_retained as isize) * 2 + send_buffers + 4 * MIB as isize,
        "heap {held}"
    );
}

#[test]
fn a_peer_that_never_acknowledges_holds_at_most_the_session_cap() {
    let _alone = alone();
    // Eight tunnels could hold 8 × 4 MiB; the session's 8 MiB binds first.
    never_acknowledging_peer(8, 8 * MIB, 4 * MIB);
}

#[test]
fn a_peer_that_never_acknowledges_holds_at_most_the_tunnel_cap_on_each() {
    let _alone = alone();
    // Two tunnels of 2 MiB each bind before the session's 16 MiB.
    never_acknowledging_peer(2, 16 * MIB, 2 * MIB);
}

#[test]
fn resends_and_acknowledged_traffic_still_flow_at_the_cap() {
    let _alone = alone();
    let config = Config {
        max_unacked_bytes: MIB,
        max_tunnel_unacked_bytes: MIB,
        ..Config::default()
    };
    let now = Instant::now();
    let mut s = server_session(config, now, 1, enormous_params());
    let id = s.open_stream(None).unwrap();
    let chunk = vec![1u8; 64 * 1024];
    push_and_transmit(&mut s, now, &[id], &chunk);
    let held = s.stats().retained_bytes;
    assert!(held >= MIB, "at the cap: {held}");
    // At the cap nothing more goes out...
    assert_eq!(push_and_transmit(&mut s, now, &[id], &chunk), 0);
    // ...until the peer acknowledges (the OPEN and nine 16 KiB DATA frames): then data flows
    // again, up to the cap.
    inject(&mut s, now, 0, &[Frame::Ack { frames: 10 }]).unwrap();
    assert!(s.stats().retained_bytes < held);
    assert!(push_and_transmit(&mut s, now, &[id], &chunk) > 0);
    assert!(s.stats().retained_bytes <= MIB + 17 * 1024);
}

/// (b) 1-byte pieces at scattered offsets on many streams: each costs a charged piece; the
/// pieces' overhead stays within the session window, the heap within the charge, and the
/// window ends the session with FLOW_CONTROL.
#[test]
fn scattered_one_byte_pieces_stay_within_the_session_window() {
    let _alone = alone();
    let window = 16 * MIB;
    let config = Config {
        session_window: window,
        stream_window: 4 * MIB,
        ..Config::default()
    };
    let per_stream = config.max_pending_ranges - 1;
    let now = Instant::now();
    let mut s = server_session(config, now, 1, Config::default().transport_params());
    let before = live();
    let mut result = Ok(());
    let mut streams = 0u64;
    let mut most_held = 0u64;
    let mut most_charged = 0u64;
    while result.is_ok() {
        let stream = streams * 2;
        // Bytes 1, 3, 5, ...: never adjacent, never readable (byte 0 never comes).
        let frames: Vec<Frame> = (0..per_stream)
            .map(|k| Frame::Data {
                stream,
                offset: 2 * k + 1,
                fin: false,
                payload: Bytes::from_static(b"x"),
            })
            .collect();
        let charged_before = s.stats().reorder_charged;
        result = inject(&mut s, now, 0, &frames);
        if result.is_ok() {
            streams += 1;
            let stats = s.stats();
            assert_eq!(
                stats.reorder_charged - charged_before,
                per_stream * (1 + PIECE_OVERHEAD)
            );
            let held = (live() - before) as u64;
            // The charge bounds the pieces; each stream's own state (bounded by max_streams)
            // comes on top.
            assert!(
                held <= stats.reorder_charged + streams * 16 * 1024,
                "heap {held} for a charge of {}",
                stats.reorder_charged
            );
            most_held = most_held.max(held);
            most_charged = stats.reorder_charged;
        }
    }
    let pieces = streams * per_stream;
    let held_at_end = live() - before;
    eprintln!(
        "scattered 1-byte pieces: {pieces} pieces on {streams} streams accepted, charged \
         {most_charged} B ({} per piece; overhead {} B against a {} MiB session window); most \
         heap held {most_held} B ({:.2} MiB, {:.0} B per piece with the streams' state); then \
         {:?}; heap held by the session after it closed: {held_at_end} B",
        1 + PIECE_OVERHEAD,
        pieces * PIECE_OVERHEAD,
        window / MIB,
        most_held as f64 / MIB as f64,
        most_held as f64 / pieces as f64,
        result,
    );
    let err = result.unwrap_err();
    assert!(matches!(err, SessionError::ReorderCharge { .. }), "{err:?}");
    assert_eq!(err.code(), code::FLOW_CONTROL);
    assert!(pieces * PIECE_OVERHEAD <= window);
    assert!(pieces * PIECE_OVERHEAD > window - per_stream * PIECE_OVERHEAD);
    assert!(held_at_end < MIB as isize, "everything freed at close");
}

#[test]
fn too_many_pending_ranges_on_one_stream_is_a_flow_control_error() {
    let _alone = alone();
    let config = Config::default();
    let limit = config.max_pending_ranges;
    let now = Instant::now();
    let mut s = server_session(config, now, 1, Config::default().transport_params());
    let before = live();
    let piece = |k: u64| Frame::Data {
        stream: 0,
        offset: 2 * k + 1,
        fin: false,
        payload: Bytes::from_static(b"x"),
    };
    let frames: Vec<Frame> = (0..limit).map(piece).collect();
    inject(&mut s, now, 0, &frames).unwrap();
    let stats = s.stats();
    let held = live() - before;
    eprintln!(
        "one stream at the range cap: {} pieces, charged {} B, heap {held} B ({:.0} B per piece)",
        stats.reorder_pieces,
        stats.reorder_charged,
        held as f64 / stats.reorder_pieces as f64
    );
    assert_eq!(stats.reorder_pieces, limit);
    // The pieces' charge, plus the stream's own state.
    assert!(held as u64 <= stats.reorder_charged + 16 * 1024);
    let err = inject(&mut s, now, 0, &[piece(limit)]).unwrap_err();
    assert_eq!(err, SessionError::PendingRanges { stream: 0, limit });
    assert_eq!(err.code(), code::FLOW_CONTROL);
    assert!(s.is_closed());
}

#[test]
fn adjacent_small_pieces_cost_one_range_and_are_read_in_order() {
    let _alone = alone();
    let config = Config::default();
    let limit = config.max_pending_ranges;
    let now = Instant::now();
    let mut s = server_session(config, now, 1, Config::default().transport_params());
    // Far more single bytes than the range cap, all behind one gap: they merge.
    let frames: Vec<Frame> = (1..=4 * limit)
        .rev()
        .map(|offset| Frame::Data {
            stream: 0,
            offset,
            fin: false,
            payload: Bytes::copy_from_slice(&[offset as u8]),
        })
        .collect();
    inject(&mut s, now, 0, &frames).unwrap();
    assert!(s.stats().reorder_pieces <= 2, "{:?}", s.stats());
    let first = Frame::Data {
        stream: 0,
        offset: 0,
        fin: false,
        payload: Bytes::from_static(&[0]),
    };
    inject(&mut s, now, 0, &[first]).unwrap();
    let mut got = Vec::new();
    while let Ok(mtcpd_engine::session::ReadOutcome::Data(b)) = s.read(0, 1 << 20) {
        got.extend_from_slice(&b);
    }
    let want: Vec<u8> = (0..=4 * limit).map(|o| o as u8).collect();
    assert_eq!(got, want);
    assert_eq!(s.stats().reorder_charged, 0);
}

#[test]
fn a_peer_that_keeps_a_hole_open_grows_a_stream_window_only_to_its_ceiling() {
    let _alone = alone();
    // Auto-tuning (docs/PROTOCOL.md §5.1) grows a window whose credit the sender used up
    // behind a hole: a peer that never fills byte 0 and sends everything else gets the window
    // doubled up to half the session window, and not one byte more.
    let config = Config {
        stream_window: MIB,
        session_window: 16 * MIB,
        ..Config::default()
    };
    let ceiling = config.stream_window_ceiling();
    assert_eq!(ceiling, 8 * MIB);
    let now = Instant::now();
    let mut s = server_session(config, now, 1, Config::default().transport_params());
    let piece = 128 * 1024;
    let data = |offset: u64, len: u64| Frame::Data {
        stream: 0,
        offset,
        fin: false,
        payload: Bytes::from(vec![0x33; len as usize]),
    };
    let (mut sent, mut limit) = (1u64, MIB);
    while limit <= ceiling {
        let frames: Vec<Frame> = (sent..limit)
            .step_by(piece as usize)
            .map(|o| data(o, piece.min(limit - o)))
            .collect();
        inject(&mut s, now, 0, &frames).unwrap();
        sent = limit;
        limit *= 2;
    }
    let stats = s.stats();
    assert_eq!(stats.window.stream_window_growths, 3, "1 → 2 → 4 → 8 MiB");
    assert_eq!(stats.window.stream_window_peak, ceiling);
    assert!(stats.reorder_charged <= ceiling + stats.reorder_pieces * PIECE_OVERHEAD);
    let err = inject(&mut s, now, 0, &[data(ceiling, 1)]).unwrap_err();
    assert_eq!(
        err,
        SessionError::FlowControl {
            stream: 0,
            offset: ceiling + 1,
            limit: ceiling
        }
    );
    assert_eq!(err.code(), code::FLOW_CONTROL);
}
