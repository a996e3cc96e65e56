//! Arbitrary bytes, in arbitrary chunkings, into `ServerHandshake::handle_input`.
//!
//! Two modes, chosen by the first byte: raw bytes from the start (garbage, truncated or
//! malformed hellos), or a well-formed ClientHello built from fuzzed fields followed by fuzzed
//! bytes, and — in a sub-mode — a valid ClientAuth computed from the server's real nonce, so the
//! accepted path and the bytes after it are reached too.
//!
//! Checks: no panic; after an error or acceptance every further call is an error; output is
//! empty or a parseable ServerHello; an accepted tunnel's index is below its pool size.
//!
//! Input layout: `[mode: u8][chunk seed: u8][max_pool: u8][hello fields or bytes...]`.
#![no_main]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mtcpd_engine::handshake::{
    Admission, ClientHello, HelloStatus, NONCE_LEN, ProofLabel, ServerHandshake, ServerHello,
    ServerProgress, TransportParams, encode_client_auth, proof,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

const KEY: &[u8] = b"fuzz key";
const PARAMS: TransportParams = TransportParams {
    max_frame_body: 256 * 1024,
    stream_window: 16 << 20,
    session_window: 64 << 20,
    max_streams: 1024,
};

/// Splits `bytes` into pieces whose lengths follow a tiny xorshift seeded by `seed`.
fn chunks(bytes: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut x = u32::from(seed) | 0x100;
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = if seed == 0 {
            rest.len()
        } else {
            (x % 97) as usize + 1
        };
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
    }
    out
}

fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0; N];
    let n = N.min(data.len());
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (mode, seed, max_pool) = (data[0], data[1], u16::from(data[2]));
    let mut rest = &data[3..];
    let now = Instant::now();
    let mut rng = StdRng::seed_from_u64(7);
    let mut hs = ServerHandshake::new(KEY, max_pool, PARAMS, Duration::from_secs(5), now, &mut rng);
    let admission = match mode >> 4 {
        0 => Admission::Refuse(HelloStatus::TooManySessions),
        1 => Admission::Refuse(HelloStatus::UnknownSession),
        _ => Admission::Admit,
    };

    let mut buf = BytesMut::new();
    let mut hello_nonce = None;
    if mode & 1 == 1 {
        // A well-formed ClientHello with fuzzed fields.
        let f: [u8; 12] = take(&mut rest);
        let nonce: [u8; NONCE_LEN] = take(&mut rest);
        let hello = ClientHello {
            version: if f[0] == 0xff { f[1] } else { 1 },
            flags: u16::from_be_bytes([f[2], f[3]]),
            session_id: [f[4]; 16],
            tunnel_index: u16::from_be_bytes([f[5], f[6]]) % 300,
            pool_size: u16::from_be_bytes([f[7], f[8]]),
            capabilities: u32::from(f[9]),
            nonce,
            params: TransportParams {
                max_frame_body: u32::from(f[10]) << 12,
                stream_window: u64::from(f[11]) << 16,
                ..PARAMS
            },
        };
        hello.encode(&mut buf);
        hello_nonce = Some(hello);
    }

    let mut finished = false;
    let mut auth_sent = false;
    let pieces = chunks(rest, seed);
    let mut pieces = pieces.into_iter();
    loop {
        let result = hs.handle_input(now, &mut buf, |_| admission);
        let mut out = hs.take_output();
        if !out.is_empty() {
            let sh = ServerHello::decode(&mut out)
                .expect("server output parses")
                .expect("server output is a whole ServerHello");
            assert!(out.is_empty(), "one ServerHello at most");
            // Sub-mode: answer with the correct proof, then the fuzzed bytes follow.
            if mode & 2 == 2
                && !auth_sent
                && sh.status == HelloStatus::Ok
                && let Some(hello) = &hello_nonce
            {
                auth_sent = true;
                let p = proof(
                    KEY,
                    ProofLabel::Client,
                    &hello.session_id,
                    hello.tunnel_index,
                    &hello.nonce,
                    &sh.nonce,
                );
                let mut auth = BytesMut::new();
                encode_client_auth(&p, &mut auth);
                auth.extend_from_slice(&buf);
                buf = auth;
                continue;
            }
        }
        match result {
            Ok(ServerProgress::Pending) => {}
            Ok(ServerProgress::Accepted(acc)) => {
                assert!(acc.tunnel_index < acc.pool_size);
                assert!(acc.pool_size >= 1 && acc.pool_size <= max_pool.max(1));
                finished = true;
            }
            Err(_) => finished = true,
        }
        if finished {
            break;
        }
        match pieces.next() {
            Some(p) => buf.extend_from_slice(p),
            None => break,
        }
    }
    if finished {
        assert!(
            hs.handle_input(now, &mut buf, |_| Admission::Admit)
                .is_err()
        );
    }
    let _ = hs.handle_timeout(now + Duration::from_secs(6));
});
