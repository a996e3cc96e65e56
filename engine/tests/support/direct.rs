//! A server session driven by hand, with no network: its tunnels attached at once, frames
//! injected as if read from a tunnel, and what it would write taken (as bytes or as frames).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mtcpd_engine::Config;
use mtcpd_engine::error::SessionError;
use mtcpd_engine::handshake::{AcceptedTunnel, TransportParams};
use mtcpd_engine::session::Session;
use mtcpd_engine::wire::{self, Frame};

/// A server session with `config` and four active tunnels, whose client announced `caps`.
pub fn server_session(config: Config, caps: u32, now: Instant) -> Session {
    server_session_with(config, caps, 4, now)
}

/// A server session with `config` and `tunnels` active tunnels (1 to 4), whose client
/// announced `caps`.
pub fn server_session_with(config: Config, caps: u32, tunnels: u16, now: Instant) -> Session {
    let accepted = |index: u16| AcceptedTunnel {
        session_id: [9; 16],
        tunnel_index: index,
        pool_size: tunnels,
        session_secret: [5; 32],
        resume: index > 0,
        peer_params: TransportParams {
            max_frame_body: 16384,
            stream_window: 1 << 30,
            session_window: 1 << 30,
            max_streams: 100,
        },
        peer_capabilities: caps,
        rtt: Duration::from_millis(10),
    };
    let mut s = Session::server(Arc::new(config), now, &accepted(0), 1);
    for t in 1..tunnels {
        s.attach_tunnel(now, &accepted(t));
    }
    s
}

/// Feeds `frames` to `s` as read from tunnel `t`.
pub fn inject(
    s: &mut Session,
    now: Instant,
    t: usize,
    frames: &[Frame],
) -> Result<(), SessionError> {
    let mut buf = BytesMut::new();
    for f in frames {
        buf.extend_from_slice(&f.to_bytes());
    }
    s.handle_input(now, t, &mut buf)
}

/// Takes everything the tunnels will send now; the bytes.
pub fn transmit(s: &mut Session, now: Instant) -> usize {
    let mut out = Vec::new();
    (0..s.tunnel_count())
        .map(|t| s.poll_transmit(now, t, 1 << 24, &mut out))
        .sum()
}

/// Takes everything tunnel `t` will send now (up to 16 MiB), decoded.
pub fn frames_sent(s: &mut Session, now: Instant, t: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    s.poll_transmit(now, t, 1 << 24, &mut out);
    let mut buf: BytesMut = out.iter().flat_map(|b| b.iter().copied()).collect();
    let mut frames = Vec::new();
    while let Some(f) = wire::decode(&mut buf, 1 << 20).expect("the session's own frames") {
        frames.push(f);
    }
    frames
}
