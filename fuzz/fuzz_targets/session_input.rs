//! Arbitrary bytes into an established session's `handle_input`, on the server and the client.
//!
//! An established pair ([`mtcpd_bench::MemPair`], 2 tunnels) is built, each side opens a stream
//! and sends some bytes, so there is stream, flow-control and retransmission state to hit. Then
//! the fuzzed bytes, cut into pieces, are fed to one side's tunnel; errors are fine (they close
//! the session), panics are not. Afterwards `poll_transmit`, `poll_event`, `handle_timeout`,
//! stream reads and writes, and further pump rounds must not panic either.
//!
//! Input layout: `[target: u8][chunk seed: u8][bytes...]`; `target` bit 0 picks the side
//! (server/client), bit 1 the tunnel, bit 2 whether the peer's own traffic is interleaved.
#![no_main]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mtcpd_bench::{MemPair, bench_config};
use mtcpd_engine::{Config, Session};

fn config() -> Config {
    Config {
        stream_window: 64 * 1024,
        session_window: 256 * 1024,
        max_streams: 16,
        ..bench_config(2)
    }
}

fn exercise(s: &mut Session, now: std::time::Instant, out: &mut Vec<Bytes>) {
    for t in 0..s.tunnel_count() + 1 {
        out.clear();
        s.poll_transmit(now, t, 64 * 1024, out);
    }
    while s.poll_event().is_some() {}
    let _ = s.poll_timeout();
    s.handle_timeout(now);
    let ids: Vec<_> = s.stream_ids().collect();
    for id in ids {
        let _ = s.read(id, usize::MAX);
        let _ = s.write(id, Bytes::from_static(b"after"));
    }
    let _ = s.stats();
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (target, seed) = (data[0], data[1]);
    let input = &data[2..];
    let Ok(mut pair) = MemPair::new(config(), 5) else {
        panic!("setup of the established pair failed");
    };
    // Stream state on both sides: client stream 0 and server stream 1, some bytes each way.
    let c = pair
        .client
        .open_stream(Some("example.org:80"))
        .expect("client stream");
    pair.client
        .write(c, Bytes::from_static(&[1; 3000]))
        .expect("write");
    pair.pump().expect("pump");
    let s = pair.server.open_stream(None).expect("server stream");
    pair.server
        .write(s, Bytes::from_static(&[2; 2000]))
        .expect("write");
    pair.pump().expect("pump");
    pair.client_events.clear();
    pair.server_events.clear();

    let server_side = target & 1 == 0;
    let t = usize::from((target >> 1) & 1);
    let interleave = target & 4 != 0;
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut x = u32::from(seed) | 0x100;
    let mut rest = input;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = if seed == 0 {
            rest.len()
        } else {
            (x % 61) as usize + 1
        };
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        buf.extend_from_slice(piece);
        pair.now += Duration::from_millis(u64::from(x % 5));
        let now = pair.now;
        let victim = if server_side {
            &mut pair.server
        } else {
            &mut pair.client
        };
        if victim.handle_input(now, t, &mut buf).is_err() {
            assert!(victim.is_closed(), "an input error closes the session");
        }
        if interleave {
            let _ = pair.pump();
        }
    }
    let now = pair.now;
    exercise(&mut pair.server, now, &mut out);
    exercise(&mut pair.client, now, &mut out);
    for _ in 0..3 {
        let _ = pair.pump();
    }
    let later = pair.now + Duration::from_secs(120);
    pair.server.handle_timeout(later);
    pair.client.handle_timeout(later);
    exercise(&mut pair.server, later, &mut out);
    exercise(&mut pair.client, later, &mut out);
});
