//! Clamping of everything a peer announces: its TransportParams and every later credit frame
//! (STREAM_WINDOW, SESSION_WINDOW, MAX_STREAMS), driven as raw frames into a server session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::Session;
use crate::config::{Config, range};
use crate::handshake::{AcceptedTunnel, TransportParams};
use crate::wire::Frame;

fn hostile_server(now: Instant) -> Session {
    let accepted = AcceptedTunnel {
        session_id: [4; 16],
        tunnel_index: 0,
        pool_size: 1,
        session_secret: [5; 32],
        resume: false,
        peer_params: TransportParams {
            max_frame_body: u32::MAX,
            stream_window: u64::MAX,
            session_window: 1 << 62,
            max_streams: u64::MAX,
        },
        peer_capabilities: 0,
        rtt: Duration::from_millis(1),
    };
    Session::server(Arc::new(Config::default()), now, &accepted, 3)
}

fn inject(s: &mut Session, now: Instant, frame: Frame) {
    let mut buf = BytesMut::from(&frame.to_bytes()[..]);
    s.handle_input(now, 0, &mut buf).unwrap();
}

#[test]
fn announced_transport_params_are_clamped_to_local_maxima() {
    let s = hostile_server(Instant::now());
    let p = s.peer_params.unwrap();
    assert_eq!(p.max_frame_body, *range::MAX_FRAME_BODY.end());
    assert_eq!(p.stream_window, *range::STREAM_WINDOW.end());
    assert_eq!(p.session_window, *range::SESSION_WINDOW.end());
    assert_eq!(p.max_streams, *range::MAX_STREAMS.end());
    assert_eq!(s.peer_max_data, *range::SESSION_WINDOW.end());
    assert_eq!(s.local_stream_limit, *range::MAX_STREAMS.end());
}

#[test]
fn credit_frames_are_clamped_to_local_maxima_beyond_what_was_used() {
    let now = Instant::now();
    let mut s = hostile_server(now);
    let id = s.open_stream(None).unwrap();
    assert_eq!(s.streams[&id].send_max, *range::STREAM_WINDOW.end());
    inject(
        &mut s,
        now,
        Frame::StreamWindow {
            stream: id,
            max_offset: u64::MAX,
        },
    );
    assert_eq!(s.streams[&id].send_max, *range::STREAM_WINDOW.end());
    inject(&mut s, now, Frame::SessionWindow { max_data: u64::MAX });
    assert_eq!(s.peer_max_data, *range::SESSION_WINDOW.end());
    inject(&mut s, now, Frame::MaxStreams { count: u64::MAX });
    assert_eq!(s.local_stream_limit, 1 + *range::MAX_STREAMS.end());
    // Credit beyond what was sent grows with what is sent, never past the local maximum.
    s.write(id, bytes::Bytes::from(vec![0u8; 100_000])).unwrap();
    let mut out = Vec::new();
    s.poll_transmit(now, 0, 1 << 20, &mut out);
    let sent = s.streams[&id].send_offset;
    assert_eq!(sent, 100_000);
    inject(
        &mut s,
        now,
        Frame::StreamWindow {
            stream: id,
            max_offset: u64::MAX,
        },
    );
    assert_eq!(s.streams[&id].send_max, sent + *range::STREAM_WINDOW.end());
    inject(&mut s, now, Frame::SessionWindow { max_data: u64::MAX });
    assert_eq!(s.peer_max_data, sent + *range::SESSION_WINDOW.end());
    // A smaller honest update is still taken as it is (only raises count).
    inject(&mut s, now, Frame::SessionWindow { max_data: 5 });
    assert_eq!(s.peer_max_data, sent + *range::SESSION_WINDOW.end());
}

#[test]
fn a_stream_is_confirmed_once_by_the_peers_first_window_or_data() {
    let now = Instant::now();
    let mut s = hostile_server(now);
    let confirmed = |s: &mut Session| {
        std::iter::from_fn(|| s.poll_event())
            .filter(|e| matches!(e, super::Event::StreamConfirmed { .. }))
            .count()
    };
    let id = s.open_stream(Some("a:1")).unwrap();
    assert_eq!(confirmed(&mut s), 0, "opening confirms nothing");
    // A STREAM_WINDOW that changes no credit (what a server sends once connected) confirms.
    let max_offset = s.streams[&id].send_max;
    inject(
        &mut s,
        now,
        Frame::StreamWindow {
            stream: id,
            max_offset,
        },
    );
    assert_eq!(confirmed(&mut s), 1);
    inject(
        &mut s,
        now,
        Frame::StreamWindow {
            stream: id,
            max_offset,
        },
    );
    assert_eq!(confirmed(&mut s), 0, "once per stream");
    // DATA confirms a stream that had no window first.
    let other = s.open_stream(Some("b:1")).unwrap();
    let data = Frame::Data {
        stream: other,
        offset: 0,
        fin: false,
        payload: bytes::Bytes::from_static(b"x"),
    };
    inject(&mut s, now, data);
    let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
    let first = events
        .iter()
        .position(|e| matches!(e, super::Event::StreamConfirmed { stream } if *stream == other));
    let readable = events
        .iter()
        .position(|e| matches!(e, super::Event::StreamReadable { stream } if *stream == other));
    assert!(first.is_some() && first < readable, "{events:?}");
}

#[test]
fn confirming_a_peer_stream_sends_a_window_that_changes_no_credit() {
    let now = Instant::now();
    let mut s = hostile_server(now);
    let peer_stream = 0; // client parity
    inject(
        &mut s,
        now,
        Frame::Open {
            stream: peer_stream,
            target: None,
        },
    );
    let limit = s.streams[&peer_stream].recv_max_advertised;
    s.confirm_stream(peer_stream);
    s.confirm_stream(peer_stream);
    let own = s.open_stream(None).unwrap();
    s.confirm_stream(own);
    let mut out = Vec::new();
    s.poll_transmit(now, 0, 1 << 20, &mut out);
    let mut wire = BytesMut::new();
    for chunk in out {
        wire.extend_from_slice(&chunk);
    }
    let mut windows = Vec::new();
    while let Ok(Some(frame)) = crate::wire::decode(&mut wire, u32::MAX) {
        if let Frame::StreamWindow { stream, max_offset } = frame {
            windows.push((stream, max_offset));
        }
    }
    assert_eq!(
        windows,
        [(peer_stream, limit)],
        "one window, for the peer's stream only"
    );
}
