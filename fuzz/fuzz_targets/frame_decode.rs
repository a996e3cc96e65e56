//! Arbitrary bytes into `wire::decode`, repeatedly, with a fuzzed frame-body limit.
//!
//! Checks: no panic; every decoded frame re-encodes (`to_bytes`, and vectored `encode`) to
//! exactly the bytes it was parsed from (the encoding is canonical) and decodes back to itself;
//! and feeding the same bytes in small pieces gives the same frames and the same error.
//!
//! Input layout: `[limit: u32 BE][piece: u8][wire bytes...]`.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mtcpd_engine::wire::{self, ABSOLUTE_MAX_FRAME_BODY, Frame, FrameError};

/// Decodes everything in `buf`: the frames, with the wire bytes each came from, and how it ended.
fn decode_all(mut buf: BytesMut, max_body: u32) -> (Vec<(Frame, Bytes)>, Option<FrameError>) {
    let mut frames = Vec::new();
    loop {
        let before = buf.clone().freeze();
        match wire::decode(&mut buf, max_body) {
            Ok(Some(frame)) => {
                let used = before.len() - buf.len();
                frames.push((frame, before.slice(..used)));
            }
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let raw_limit = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    // Mostly realistic limits, sometimes anything (decode clamps to the absolute maximum).
    let max_body = if raw_limit & 0x8000_0000 != 0 {
        raw_limit
    } else {
        raw_limit % (ABSOLUTE_MAX_FRAME_BODY + 2)
    };
    let piece = usize::from(data[4]).max(1);
    let input = &data[5..];

    let (frames, error) = decode_all(BytesMut::from(input), max_body);
    for (frame, wire_bytes) in &frames {
        let encoded = frame.to_bytes();
        assert_eq!(encoded.len(), frame.encoded_len());
        assert_eq!(
            &encoded[..],
            &wire_bytes[..],
            "non-canonical encoding of {frame:?}"
        );
        let mut scratch = BytesMut::new();
        let mut out = Vec::new();
        frame.encode(&mut scratch, usize::from(data[4]), &mut out);
        let joined: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(&joined[..], &encoded[..], "vectored encoding differs");
        let mut again = BytesMut::from(&encoded[..]);
        assert_eq!(wire::decode(&mut again, max_body), Ok(Some(frame.clone())));
        assert!(again.is_empty());
    }

    // The same bytes dribbled in `piece`-sized reads decode to the same frames and error.
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut got_error = None;
    'feed: for part in input.chunks(piece) {
        buf.extend_from_slice(part);
        loop {
            match wire::decode(&mut buf, max_body) {
                Ok(Some(f)) => got.push(f),
                Ok(None) => break,
                Err(e) => {
                    got_error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    let whole: Vec<Frame> = frames.into_iter().map(|(f, _)| f).collect();
    assert_eq!(got, whole);
    assert_eq!(got_error, error);
});
