//! Bad input: wrong key, wrong version, garbage, oversize length, unknown stream, a frame before
//! the handshake ⇒ the right error, no panic, and (through the simulated server) nothing else
//! disturbed.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use mtcpd_engine::Config;
use mtcpd_engine::error::{SessionError, TunnelError};
use mtcpd_engine::handshake::{
    Admission, ClientHello, HandshakeError, HelloStatus, ServerHandshake, ServerHello,
};
use mtcpd_engine::session::{Event, Session};
use mtcpd_engine::sim::{LinkSpec, Side, SimPair};
use mtcpd_engine::wire::{Frame, PROTOCOL_VERSION, frame_type};
use rand::SeedableRng;
use rand::rngs::StdRng;
use support::{FlowSpec, Workload};

fn keyed(key: &[u8]) -> Config {
    Config {
        psk: key.to_vec(),
        ..Config::default()
    }
}

fn server_handshake(now: Instant) -> ServerHandshake {
    let c = keyed(b"server key");
    ServerHandshake::new(
        &c.psk,
        8,
        c.transport_params(),
        c.handshake_timeout,
        now,
        &mut StdRng::seed_from_u64(1),
    )
}

#[test]
fn wrong_key_fails_the_handshake_on_both_ends_with_a_clear_error() {
    let mut pair = SimPair::new(
        keyed(b"client key"),
        keyed(b"server key"),
        &[LinkSpec::new(5, 10.0)],
        1,
    );
    let closed = pair.run(Duration::from_secs(30), |p| p.client.is_closed());
    assert!(closed, "the client gave up");
    let rejected = HandshakeError::Refused(HelloStatus::AuthFailed);
    assert_eq!(
        pair.client.close_reason(),
        Some(&SessionError::Handshake(rejected.clone()))
    );
    assert!(pair.log.iter().any(|(s, e)| *s == Side::Client
        && matches!(
            e,
            Event::TunnelDown {
                reason: TunnelError::Handshake(r),
                ..
            } if *r == rejected
        )));
    assert!(
        pair.server().is_none(),
        "no session was created at the server"
    );

    // The server refused the hello with an unsigned AuthFailed: it computed nothing with its
    // key for a peer that proved nothing.
    let now = Instant::now();
    let mut hs = server_handshake(now);
    let mut buf = BytesMut::new();
    let client_cfg = keyed(b"client key");
    let mut hello = ClientHello {
        version: PROTOCOL_VERSION,
        flags: 0,
        session_id: [7; 16],
        tunnel_index: 0,
        pool_size: 4,
        capabilities: 0,
        nonce: [3; 16],
        params: client_cfg.transport_params(),
        masked_secret: [1; 32],
        proof: [0; 32],
    };
    hello.sign(b"client key", &[0; 32]);
    hello.encode(&mut buf);
    assert_eq!(
        hs.handle_input(now, &mut buf, &[0; 32], |_| Admission::Admit),
        Err(HandshakeError::WrongKey)
    );
    let mut out = hs.take_output();
    let answer = ServerHello::decode(&mut out).unwrap().unwrap();
    assert_eq!(answer.status, HelloStatus::AuthFailed);
    assert_eq!(answer.proof, [0; 32]);
    assert_eq!(answer.nonce, [0; 16]);
    assert!(out.is_empty());
}

#[test]
fn wrong_version_is_refused_and_reported_to_the_client() {
    let now = Instant::now();
    let mut hs = server_handshake(now);
    let mut buf = BytesMut::new();
    buf.put_slice(b"MTCP");
    buf.put_u8(PROTOCOL_VERSION + 1);
    buf.put_slice(&[0u8; 71]);
    assert_eq!(
        hs.handle_input(now, &mut buf, &[0; 32], |_| Admission::Admit),
        Err(HandshakeError::UnsupportedVersion {
            peer: PROTOCOL_VERSION + 1
        })
    );
    // The refusal is readable by any version: magic, version, status.
    let out = hs.take_output();
    assert_eq!(&out[..4], b"MTCP");
    assert_eq!(out[4], PROTOCOL_VERSION);
    assert_eq!(
        u16::from_be_bytes([out[6], out[7]]),
        1,
        "status UnsupportedVersion"
    );
}

#[test]
fn garbage_and_early_frames_are_bad_magic_with_no_answer() {
    let now = Instant::now();
    for input in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0u8; 64][..],
        // A well-formed frame before any handshake.
        &Frame::Ping { token: 1 }.to_bytes()[..],
    ] {
        let mut hs = server_handshake(now);
        let mut buf = BytesMut::from(input);
        assert_eq!(
            hs.handle_input(now, &mut buf, &[0; 32], |_| Admission::Admit),
            Err(HandshakeError::BadMagic),
            "input {input:?}"
        );
        assert!(hs.take_output().is_empty());
    }
    // Silence: the handshake times out.
    let mut hs = server_handshake(now);
    assert_eq!(
        hs.handle_timeout(now + Duration::from_secs(11)),
        Err(HandshakeError::Timeout)
    );
}

/// An established pair, and the chance to inject bytes on a tunnel into the server session.
fn established() -> (SimPair, Workload) {
    let mut pair = SimPair::new(keyed(b"k"), keyed(b"k"), &[LinkSpec::new(5, 100.0); 2], 3);
    let mut w = Workload::new(vec![FlowSpec::bulk(1000, 1000)]);
    assert!(pair.run(Duration::from_secs(10), |p| w.step(p)));
    w.verify().unwrap();
    (pair, w)
}

fn inject(pair: &mut SimPair, bytes: &[u8]) -> Result<(), SessionError> {
    let now = pair.now;
    let server = pair.server_mut().unwrap();
    server.handle_input(now, 0, &mut BytesMut::from(bytes))
}

#[test]
fn oversize_frame_closes_the_session_with_a_frame_error() {
    let (mut pair, _) = established();
    let mut b = BytesMut::new();
    b.put_u8(frame_type::DATA);
    b.put_u8(0);
    b.put_u16(0);
    b.put_u32(u32::MAX);
    let err = inject(&mut pair, &b).unwrap_err();
    assert!(
        matches!(err, SessionError::Frame { tunnel: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    let now = pair.now;
    let server = pair.server_mut().unwrap();
    assert!(server.is_closed());
    // The peer is told why: a CLOSE goes out.
    let mut out = Vec::new();
    server.poll_transmit(now, 0, 1 << 16, &mut out);
    let mut wire = BytesMut::new();
    for c in out {
        wire.extend_from_slice(&c);
    }
    let frame = mtcpd_engine::wire::decode(&mut wire, 1 << 16)
        .unwrap()
        .unwrap();
    assert!(matches!(frame, Frame::Close { code: 1, .. }), "{frame:?}");
}

#[test]
fn frame_for_a_stream_the_server_never_opened_is_unknown_stream() {
    let (mut pair, _) = established();
    // Odd ids belong to the server; it never opened stream 1001.
    let f = Frame::Data {
        stream: 1001,
        offset: 0,
        fin: false,
        payload: bytes::Bytes::from_static(b"x"),
    };
    assert_eq!(
        inject(&mut pair, &f.to_bytes()),
        Err(SessionError::UnknownStream(1001))
    );
}

#[test]
fn late_frames_for_finished_streams_are_ignored() {
    let (mut pair, _) = established();
    let f = Frame::Data {
        stream: 0,
        offset: 0,
        fin: false,
        payload: bytes::Bytes::from_static(b"x"),
    };
    assert_eq!(inject(&mut pair, &f.to_bytes()), Ok(()));
    assert!(!pair.server().unwrap().is_closed());
}

#[test]
fn flood_of_opens_beyond_the_limit_is_a_stream_limit_error() {
    let (mut pair, _) = established();
    let limit = Config::default().max_streams;
    let f = Frame::Open {
        stream: limit * 2 + 2,
        target: None,
    };
    assert!(matches!(
        inject(&mut pair, &f.to_bytes()),
        Err(SessionError::StreamLimit { .. })
    ));
}

#[test]
fn data_beyond_the_window_is_a_flow_control_error() {
    let (mut pair, _) = established();
    let f = Frame::Data {
        stream: 2,
        offset: Config::default().stream_window,
        fin: false,
        payload: bytes::Bytes::from_static(b"x"),
    };
    assert!(matches!(
        inject(&mut pair, &f.to_bytes()),
        Err(SessionError::FlowControl { stream: 2, .. })
    ));
}

#[test]
fn a_frame_far_ahead_allocates_only_its_own_stream() {
    let (mut pair, _) = established();
    let f = Frame::Open {
        stream: 2 * 100_000,
        target: None,
    };
    assert_eq!(inject(&mut pair, &f.to_bytes()), Ok(()));
    let server = pair.server().unwrap();
    assert!(server.stats().streams <= 2, "{:?}", server.stats());
}

#[test]
fn the_server_session_survives_a_garbage_connection_beside_it() {
    // A session is established; a separate connection sends garbage to the same server: its
    // handshake fails alone. Then the session still carries a transfer.
    let (mut pair, _) = established();
    let now = pair.now;
    let mut hs = server_handshake(now);
    let mut junk = BytesMut::from(&b"\x16\x03\x01\x02\x00garbage"[..]);
    assert!(
        hs.handle_input(now, &mut junk, &[0; 32], |_| Admission::Admit)
            .is_err()
    );
    let mut w = Workload::new(vec![FlowSpec::bulk(100_000, 100_000)]);
    assert!(pair.run(Duration::from_secs(10), |p| w.step(p)));
    w.verify().unwrap();
}

#[test]
fn a_client_without_any_server_session_refuses_stream_frames() {
    let config = Arc::new(keyed(b"k"));
    let now = Instant::now();
    let mut client = Session::client(config, now, 9);
    // Bytes on a tunnel still dialing are dropped, not parsed.
    let mut buf = BytesMut::from(&Frame::Ping { token: 0 }.to_bytes()[..]);
    assert_eq!(client.handle_input(now, 0, &mut buf), Ok(()));
    // Streams need an established session.
    assert_eq!(
        client.open_stream(None),
        Err(mtcpd_engine::StreamError::NotReady)
    );
}
