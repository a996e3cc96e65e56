//! Attacks on the handshake by an on-path device or a replayer: every byte of either hello
//! altered, a ClientHello replayed on another connection. Sans-IO: both halves are driven with
//! in-memory bytes.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;

const KEY: &[u8] = b"a key of thirty-two bytes, or so";
const PARAMS: TransportParams = TransportParams {
    max_frame_body: 65536,
    stream_window: 65536,
    session_window: 1 << 20,
    max_streams: 3,
};

/// Names the ClientHello field at byte `i` (docs/PROTOCOL.md §2.2).
fn client_field(i: usize) -> &'static str {
    match i {
        0..4 => "magic",
        4 => "version",
        5 => "type",
        6..8 => "flags",
        8..24 => "session id",
        24..26 => "tunnel index",
        26..28 => "pool size",
        28..32 => "capabilities",
        32..48 => "nonce",
        48..76 => "params",
        76..108 => "masked secret",
        _ => "proof",
    }
}

/// Names the ServerHello field at byte `i` (docs/PROTOCOL.md §2.3).
fn server_field(i: usize) -> &'static str {
    match i {
        0..4 => "magic",
        4 => "version",
        5 => "type",
        6..8 => "status",
        8..10 => "pool size",
        10..12 => "reserved",
        12..16 => "capabilities",
        16..32 => "nonce",
        32..60 => "params",
        _ => "proof",
    }
}

fn client_start(binding: &ChannelBinding, out: &mut BytesMut) -> ClientHandshake {
    let offer = ClientOffer {
        session_id: [5; 16],
        session_secret: [6; 32],
        tunnel_index: 1,
        resume: false,
        pool_size: 4,
        params: PARAMS,
        capabilities: 0,
    };
    let mut rng = StdRng::seed_from_u64(3);
    ClientHandshake::start(offer, KEY, binding, Instant::now(), &mut rng, out)
}

fn server() -> ServerHandshake {
    let mut rng = StdRng::seed_from_u64(4);
    ServerHandshake::new(
        KEY,
        8,
        PARAMS,
        Duration::from_secs(5),
        Instant::now(),
        &mut rng,
    )
}

/// The server's verdict on `hello` read from a connection with `binding`, and its answer.
fn serve(
    mut hello: BytesMut,
    binding: &ChannelBinding,
) -> (Result<ServerProgress, HandshakeError>, BytesMut) {
    let mut hs = server();
    let verdict = hs.handle_input(Instant::now(), &mut hello, binding, |_| Admission::Admit);
    (verdict, hs.take_output())
}

#[test]
fn every_client_hello_byte_altered_on_path_is_refused_unsigned() {
    let mut hello = BytesMut::new();
    client_start(&PLAINTEXT_BINDING, &mut hello);
    assert!(matches!(
        serve(hello.clone(), &PLAINTEXT_BINDING).0,
        Ok(ServerProgress::Accepted(_))
    ));
    for i in 6..CLIENT_HELLO_LEN {
        for bit in [0x01, 0x80] {
            let mut altered = hello.clone();
            altered[i] ^= bit;
            let (verdict, mut answer) = serve(altered, &PLAINTEXT_BINDING);
            let field = client_field(i);
            assert_eq!(verdict, Err(HandshakeError::WrongKey), "{field} (byte {i})");
            let answer = ServerHello::decode(&mut answer).unwrap().unwrap();
            assert_eq!(answer.status, HelloStatus::AuthFailed, "{field}");
            assert_eq!(answer.proof, [0; PROOF_LEN], "{field}: nothing signed");
        }
    }
}

#[test]
fn every_server_hello_byte_altered_on_path_is_never_accepted() {
    let mut hello = BytesMut::new();
    let client = client_start(&PLAINTEXT_BINDING, &mut hello);
    let (verdict, answer) = serve(hello, &PLAINTEXT_BINDING);
    assert!(matches!(verdict, Ok(ServerProgress::Accepted(_))));
    let now = Instant::now();
    assert!(matches!(
        client.clone().handle_input(KEY, now, &mut answer.clone()),
        Ok(ClientProgress::Accepted(_))
    ));
    for i in 6..SERVER_HELLO_LEN {
        for bit in [0x01, 0x02, 0x04, 0x80] {
            let mut altered = answer.clone();
            altered[i] ^= bit;
            let field = server_field(i);
            let result = client.clone().handle_input(KEY, now, &mut altered);
            match result {
                Err(HandshakeError::WrongKey) => {}
                // The status turned into one of the two unsigned refusals, or into no status at
                // all: as final as a cut connection, which an on-path device can always cause
                // (TLS's record MAC stops this before the handshake sees it).
                Err(
                    HandshakeError::Refused(HelloStatus::AuthFailed)
                    | HandshakeError::UnsupportedVersion { .. }
                    | HandshakeError::Malformed(_),
                ) if field == "status" => {}
                other => panic!("{field} (byte {i}, bit {bit:#x}): {other:?}"),
            }
        }
    }
}

#[test]
fn a_client_hello_replayed_on_another_connection_is_refused() {
    let mut hello = BytesMut::new();
    client_start(&[0x11; CHANNEL_BINDING_LEN], &mut hello);
    // Recorded inside one TLS connection, replayed inside another (another exporter).
    let (verdict, mut answer) = serve(hello.clone(), &[0x22; CHANNEL_BINDING_LEN]);
    assert_eq!(verdict, Err(HandshakeError::WrongKey));
    let answer = ServerHello::decode(&mut answer).unwrap().unwrap();
    assert_eq!(answer.status, HelloStatus::AuthFailed);
    // The genuine connection accepts it, with the client's secret.
    let (verdict, _) = serve(hello, &[0x11; CHANNEL_BINDING_LEN]);
    let Ok(ServerProgress::Accepted(tunnel)) = verdict else {
        panic!("{verdict:?}");
    };
    assert_eq!(tunnel.session_secret, [6; 32]);
}

/// Documents the limit of plaintext tunnels: their binding is a constant, so an identical replay
/// of a recorded ClientHello verifies again. The replayer learns nothing from the answer (it
/// cannot check the server's proof without the key, and every frame after it needs the session
/// to trust the connection) but it can make the server take the tunnel slot: plaintext is for
/// benchmarks on trusted paths only (`insecure_plaintext`).
#[test]
fn an_identical_replay_on_a_plaintext_tunnel_verifies_again() {
    let mut hello = BytesMut::new();
    client_start(&PLAINTEXT_BINDING, &mut hello);
    let first = serve(hello.clone(), &PLAINTEXT_BINDING).0;
    let replay = serve(hello, &PLAINTEXT_BINDING).0;
    assert!(matches!(first, Ok(ServerProgress::Accepted(_))));
    assert_eq!(first, replay);
}

#[test]
fn a_server_hello_for_another_client_hello_is_not_believed() {
    // Two clients of one server; an on-path device swaps the answers.
    let (mut hello_a, mut hello_b) = (BytesMut::new(), BytesMut::new());
    let client_a = client_start(&PLAINTEXT_BINDING, &mut hello_a);
    let offer_b = ClientOffer {
        session_id: [8; 16],
        session_secret: [9; 32],
        tunnel_index: 0,
        resume: false,
        pool_size: 4,
        params: PARAMS,
        capabilities: 0,
    };
    let mut rng = StdRng::seed_from_u64(99);
    ClientHandshake::start(
        offer_b,
        KEY,
        &PLAINTEXT_BINDING,
        Instant::now(),
        &mut rng,
        &mut hello_b,
    );
    let (_, mut answer_b) = serve(hello_b, &PLAINTEXT_BINDING);
    assert_eq!(
        client_a
            .clone()
            .handle_input(KEY, Instant::now(), &mut answer_b),
        Err(HandshakeError::WrongKey)
    );
}
