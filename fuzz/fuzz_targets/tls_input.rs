//! Arbitrary bytes into a server tunnel connection's TLS record layer and, through it, the
//! server [`Endpoint`], fed as the runtime's event loop feeds them: received bytes go through
//! `TunnelTls::read` (rustls for the handshake, then the in-place record layer), TLS's own
//! output is taken, and once the TLS handshake is done the
//! plaintext goes to `handshake_input` with the connection's channel binding, whose output is
//! sealed.
//!
//! Modes (bits of the first byte):
//! - bit 0 clear: the bytes are the raw ciphertext a client sent (a ClientHello, garbage, a
//!   plaintext mtcpd client): rustls's parsing and the error path;
//! - bit 0 set: an in-process TLS client completes the handshake first and seals the fuzzed
//!   bytes as application data, so they reach the endpoint (the mtcpd handshake inside TLS);
//! - bit 1, with bit 0: one bit of the sealed records is flipped at a fuzzed position.
//!
//! Checks: no panic; the plaintext the server gets is always a prefix of what the client
//! sealed (a tampered record never yields altered plaintext); with no tampering, all of it
//! arrives; the plaintext buffered before the endpoint consumes it stays within the input's
//! size (memory is bounded by what was sent, never by a length the peer claims).
//!
//! Input layout: `[mode][chunk seed][flip position: 2][bytes...]`.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mtcpd_engine::Config;
use mtcpd_engine::endpoint::{Endpoint, HandshakeOutcome, SessionBudget};
use mtcpd_engine::tls::records::{HEADER_LEN, MAX_CIPHERTEXT};
use mtcpd_engine::tls::{ServerIdentity, TlsSetup, TunnelTls};

/// Client and server setups, built once (generating a key pair per input would dominate).
fn setups() -> &'static (TlsSetup, TlsSetup) {
    static SETUPS: OnceLock<(TlsSetup, TlsSetup)> = OnceLock::new();
    SETUPS.get_or_init(|| {
        let identity = ServerIdentity::generate().expect("a generated identity");
        (
            TlsSetup::client_accepting_any().expect("a client setup"),
            TlsSetup::server(identity).expect("a server setup"),
        )
    })
}

/// Runs the TLS handshake between two in-memory ends.
fn handshake(client: &mut TunnelTls, server: &mut TunnelTls) {
    let mut wire = BytesMut::new();
    let mut none = BytesMut::new();
    for _ in 0..8 {
        client.take_output(|c| wire.extend_from_slice(&c));
        server
            .read(&mut wire, &mut none)
            .expect("server side of an honest handshake");
        server.take_output(|c| wire.extend_from_slice(&c));
        client
            .read(&mut wire, &mut none)
            .expect("client side of an honest handshake");
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
}

fuzz_target!(|data: &[u8]| {
    let [mode, chunk_seed, flip_hi, flip_lo, payload @ ..] = data else {
        return;
    };
    let (client_setup, server_setup) = setups();
    let now = Instant::now();
    let config = Arc::new(Config {
        psk: b"fuzz key".to_vec(),
        ..Config::default()
    });
    let mut endpoint: Endpoint = Endpoint::server(config, SessionBudget::new(4), [7; 32]);
    let Some(key) = endpoint.accept_connection(now) else {
        return;
    };
    let mut server = server_setup.connection().expect("a server connection");

    // What arrives at the server's socket, and the plaintext the client meant.
    let (wire, sealed_plaintext) = if mode & 1 == 0 {
        (payload.to_vec(), None)
    } else {
        let mut client = client_setup.connection().expect("a client connection");
        handshake(&mut client, &mut server);
        let mut wire = Vec::new();
        client
            .seal([Bytes::copy_from_slice(payload)], |c| {
                wire.extend_from_slice(&c)
            })
            .expect("sealing");
        if mode & 2 != 0 && !wire.is_empty() {
            let at = usize::from(u16::from_be_bytes([*flip_hi, *flip_lo])) % wire.len();
            wire[at] ^= 1 << (flip_lo % 8);
        }
        (wire, Some(payload))
    };
    let tampered = mode & 3 == 3;

    // Fed in pieces, as reads from a socket come.
    let mut received = BytesMut::new();
    let mut plain = BytesMut::new();
    let mut delivered: Vec<u8> = Vec::new();
    let mut out: Vec<Bytes> = Vec::new();
    let mut rest = &wire[..];
    let mut step = usize::from(*chunk_seed % 64) + 1;
    let mut failed = false;
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at(step.min(rest.len()));
        rest = tail;
        step = step * 7 % 61 + 1;
        received.extend_from_slice(piece);
        let before = plain.len();
        if server.read(&mut received, &mut plain).is_err() {
            failed = true;
            break;
        }
        assert!(
            received.len() < HEADER_LEN + MAX_CIPHERTEXT,
            "every whole record is taken; at most the start of one waits"
        );
        delivered.extend_from_slice(&plain[before..]);
        assert!(
            plain.len() <= wire.len(),
            "plaintext buffered ({}) beyond what was sent ({})",
            plain.len(),
            wire.len()
        );
        server.take_output(|c| out.push(c));
        let Some(&binding) = server.binding() else {
            continue;
        };
        if plain.is_empty() {
            continue;
        }
        let result = endpoint.handshake_input(now, key, &mut plain, &binding);
        server
            .seal([result.output.freeze()], |c| out.push(c))
            .expect("sealing the endpoint's answer");
        if !matches!(result.outcome, HandshakeOutcome::Pending) {
            break;
        }
    }
    if let Some(meant) = sealed_plaintext {
        assert!(
            meant.starts_with(&delivered),
            "the server got plaintext the client never sealed"
        );
        if !tampered && !failed && rest.is_empty() {
            assert_eq!(
                delivered.len(),
                meant.len(),
                "untampered records all arrive"
            );
        }
    }
});
