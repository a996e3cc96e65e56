//! The frame layer's unit tests: every kind round-trips, malformed bodies are typed errors.

use super::*;

fn all_kinds() -> Vec<Frame> {
    vec![
        Frame::Data {
            stream: 7,
            offset: 1 << 40,
            fin: true,
            payload: Bytes::from_static(b"hello world"),
        },
        Frame::Data {
            stream: 0,
            offset: 0,
            fin: false,
            payload: Bytes::new(),
        },
        Frame::Open {
            stream: 9,
            target: Some(Bytes::from_static(b"example.org:443")),
        },
        Frame::Open {
            stream: 9,
            target: None,
        },
        Frame::Reset {
            stream: 3,
            final_offset: 99,
            code: 5,
        },
        Frame::StreamWindow {
            stream: 3,
            max_offset: 1 << 33,
        },
        Frame::SessionWindow { max_data: 12345 },
        Frame::MaxStreams { count: 100 },
        Frame::Ack { frames: 42 },
        Frame::Ping { token: 1 },
        Frame::Pong { token: 2 },
        Frame::GoAway { code: 0 },
        Frame::Close {
            code: 2,
            reason: Bytes::from_static(b"bye"),
        },
        Frame::Expose {
            names: encode_expose_names(&["web", "ssh.home"]).unwrap(),
        },
        Frame::HolReport {
            stream: u64::MAX,
            offset: 1 << 50,
            length: 16384,
        },
        Frame::Expose {
            names: Bytes::new(),
        },
        Frame::TunnelDrain { draining: true },
        Frame::TunnelDrain { draining: false },
    ]
}

#[test]
fn expose_names_round_trip_and_bad_ones_are_refused() {
    let body = encode_expose_names(&["web", "a-b_c.d"]).unwrap();
    assert_eq!(expose_names(&body).unwrap(), ["web", "a-b_c.d"]);
    assert!(encode_expose_names(&["web", "web"]).is_none(), "repeated");
    assert!(encode_expose_names(&["we b"]).is_none(), "space");
    assert!(encode_expose_names(&[""]).is_none(), "empty");
    assert!(encode_expose_names(&["x".repeat(64)]).is_none(), "too long");
    // 16 names of 63 bytes: 1024 bytes, the most; one more byte is too much.
    let most: Vec<String> = (0..16).map(|i| format!("{i:x}").repeat(63)).collect();
    assert_eq!(encode_expose_names(&most).unwrap().len(), MAX_EXPOSE_BODY);
    let mut over = most.clone();
    over.push("z".into());
    assert!(encode_expose_names(&over).is_none());
    // On the wire: truncated, empty, non-ASCII and repeated names are frame errors.
    for body in [&b"\x05web"[..], b"\x00", b"\x02\xc3\xa9", b"\x01a\x01a"] {
        let frame = [
            &[frame_type::EXPOSE, 0, 0, 0, 0, 0, 0, body.len() as u8][..],
            body,
        ]
        .concat();
        let mut buf = BytesMut::from(&frame[..]);
        assert_eq!(
            decode(&mut buf, 4096),
            Err(FrameError::BadText("EXPOSE names")),
            "{body:?}"
        );
    }
    let mut oversize = vec![frame_type::EXPOSE, 0, 0, 0, 0, 0, 0x04, 0x01];
    oversize.extend(std::iter::repeat_n(b'a', 1025));
    let mut buf = BytesMut::from(&oversize[..]);
    assert!(matches!(
        decode(&mut buf, 4096),
        Err(FrameError::BadLength { kind: "EXPOSE", .. })
    ));
}

#[test]
fn every_frame_kind_round_trips_whole_and_byte_by_byte() {
    for frame in all_kinds() {
        let wire = frame.to_bytes();
        assert_eq!(wire.len(), frame.encoded_len());
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(decode(&mut buf, 65536).unwrap(), Some(frame.clone()));
        assert!(buf.is_empty());
        // Dribbled in one byte at a time: nothing until the last byte.
        let mut buf = BytesMut::new();
        for (i, b) in wire.iter().enumerate() {
            buf.put_u8(*b);
            let got = decode(&mut buf, 65536).unwrap();
            if i + 1 < wire.len() {
                assert_eq!(got, None);
            } else {
                assert_eq!(got, Some(frame.clone()));
            }
        }
    }
}

#[test]
fn vectored_encoding_keeps_large_payloads_uncopied() {
    let payload = Bytes::from(vec![7u8; 4096]);
    let frame = Frame::Data {
        stream: 1,
        offset: 0,
        fin: false,
        payload: payload.clone(),
    };
    let mut scratch = BytesMut::new();
    let mut out = Vec::new();
    frame.encode(&mut scratch, 256, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].as_ptr(), payload.as_ptr());
}

#[test]
fn oversize_is_refused_before_the_body_arrives() {
    let mut buf = BytesMut::from(&[frame_type::DATA, 0, 0, 0, 0xff, 0xff, 0xff, 0xff][..]);
    assert_eq!(
        decode(&mut buf, 65536),
        Err(FrameError::Oversize {
            declared: u32::MAX,
            limit: 65536
        })
    );
}

#[test]
fn bad_frames_are_typed_errors() {
    let mut buf = BytesMut::from(&[0x7f, 0, 0, 0, 0, 0, 0, 0][..]);
    assert_eq!(decode(&mut buf, 1024), Err(FrameError::UnknownType(0x7f)));
    let mut buf = BytesMut::from(&[frame_type::ACK, 0, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4][..]);
    assert!(matches!(
        decode(&mut buf, 1024),
        Err(FrameError::BadLength { kind: "ACK", .. })
    ));
    let mut buf = BytesMut::from(&[frame_type::PING, 0x80, 0, 0, 0, 0, 0, 8][..]);
    assert!(matches!(
        decode(&mut buf, 1024),
        Err(FrameError::Reserved { .. })
    ));
    let mut bad_utf8 = vec![frame_type::OPEN, 0, 0, 0, 0, 0, 0, 10];
    bad_utf8.extend_from_slice(&[0; 8]);
    bad_utf8.extend_from_slice(&[0xff, 0xfe]);
    let mut buf = BytesMut::from(&bad_utf8[..]);
    assert_eq!(
        decode(&mut buf, 1024),
        Err(FrameError::BadText("OPEN target"))
    );
}

#[test]
fn data_offset_overflow_is_refused() {
    let frame = Frame::Data {
        stream: 1,
        offset: u64::MAX,
        fin: false,
        payload: Bytes::from_static(b"xx"),
    };
    let mut buf = BytesMut::from(&frame.to_bytes()[..]);
    assert!(matches!(
        decode(&mut buf, 1024),
        Err(FrameError::BadLength { .. })
    ));
}

/// A frame of type `ty` with a body of each of `lens` bytes is a BadLength of `kind`.
fn assert_bad_lengths(ty: u8, kind: &'static str, lens: &[u8]) {
    for &len in lens {
        let mut raw = vec![ty, 0, 0, 0, 0, 0, 0, len];
        raw.resize(FRAME_HEADER_LEN + usize::from(len), 7);
        let mut buf = BytesMut::from(&raw[..]);
        assert_eq!(
            decode(&mut buf, 1024),
            Err(FrameError::BadLength {
                kind,
                len: usize::from(len)
            }),
            "{kind}, {len} bytes"
        );
    }
}

#[test]
fn hol_report_is_24_bytes_unreliable_and_exact_length() {
    let f = Frame::HolReport {
        stream: 4,
        offset: 1 << 20,
        length: 65536,
    };
    assert!(!f.is_reliable());
    let bytes = f.to_bytes();
    assert_eq!(bytes.len(), FRAME_HEADER_LEN + 24);
    assert_eq!(bytes[0], frame_type::HOL_REPORT);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(decode(&mut buf, 1024), Ok(Some(f)));
    assert_bad_lengths(frame_type::HOL_REPORT, "HOL_REPORT", &[0, 16, 23, 25, 32]);
    // Flags are reserved on it, as on every frame but DATA.
    let mut raw = bytes.to_vec();
    raw[1] = FLAG_FIN;
    let mut buf = BytesMut::from(&raw[..]);
    assert!(matches!(
        decode(&mut buf, 1024),
        Err(FrameError::Reserved { .. })
    ));
}

#[test]
fn tunnel_drain_is_one_byte_unreliable_and_only_zero_or_one() {
    let f = Frame::TunnelDrain { draining: true };
    assert!(!f.is_reliable());
    let bytes = f.to_bytes();
    assert_eq!(
        &bytes[..],
        &[frame_type::TUNNEL_DRAIN, 0, 0, 0, 0, 0, 0, 1, 1]
    );
    assert_bad_lengths(frame_type::TUNNEL_DRAIN, "TUNNEL_DRAIN", &[0, 2, 8]);
    let mut buf = BytesMut::from(&[frame_type::TUNNEL_DRAIN, 0, 0, 0, 0, 0, 0, 1, 2][..]);
    assert_eq!(
        decode(&mut buf, 1024),
        Err(FrameError::BadValue {
            kind: "TUNNEL_DRAIN",
            value: 2
        })
    );
    // The next code is still unknown.
    let next = frame_type::TUNNEL_DRAIN + 1;
    let mut buf = BytesMut::from(&[next, 0, 0, 0, 0, 0, 0, 0][..]);
    assert_eq!(decode(&mut buf, 1024), Err(FrameError::UnknownType(next)));
}
