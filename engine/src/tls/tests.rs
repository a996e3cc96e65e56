//! The record layer end to end in memory: handshake, binding, sealing, tampering, mismatches.

use bytes::{Bytes, BytesMut};

use super::*;

/// Moves every pending byte between two record layers until neither has anything to say;
/// returns the plaintext each received.
fn pump(a: &mut TunnelTls, b: &mut TunnelTls) -> Result<(BytesMut, BytesMut), TlsError> {
    let (mut a_plain, mut b_plain) = (BytesMut::new(), BytesMut::new());
    for _ in 0..10 {
        let mut a_out = BytesMut::new();
        a.take_output(|c| a_out.extend_from_slice(&c));
        let mut b_out = BytesMut::new();
        b.take_output(|c| b_out.extend_from_slice(&c));
        if a_out.is_empty() && b_out.is_empty() {
            break;
        }
        b.read(&mut a_out, &mut b_plain)?;
        a.read(&mut b_out, &mut a_plain)?;
    }
    Ok((a_plain, b_plain))
}

fn server_setup() -> TlsSetup {
    TlsSetup::server(ServerIdentity::generate().unwrap()).unwrap()
}

fn pair(server: &TlsSetup, client: &TlsSetup) -> (TunnelTls, TunnelTls) {
    (client.connection().unwrap(), server.connection().unwrap())
}

#[test]
fn handshake_gives_both_ends_the_same_binding_and_data_crosses() {
    let server = server_setup();
    let (mut c, mut s) = pair(&server, &TlsSetup::client_accepting_any().unwrap());
    assert!(c.is_handshaking() && s.is_handshaking());
    pump(&mut c, &mut s).unwrap();
    assert!(!c.is_handshaking() && !s.is_handshaking());
    assert_eq!(c.binding(), s.binding());
    assert_ne!(c.binding(), Some(&crate::handshake::PLAINTEXT_BINDING));
    // Another connection to the same server exports another binding.
    let (mut c2, mut s2) = pair(&server, &TlsSetup::client_accepting_any().unwrap());
    pump(&mut c2, &mut s2).unwrap();
    assert_ne!(c.binding(), c2.binding());

    let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let mut wire = BytesMut::new();
    c.seal(
        [
            Bytes::from(payload[..1000].to_vec()),
            Bytes::from(payload[1000..].to_vec()),
        ],
        |chunk| wire.extend_from_slice(&chunk),
    )
    .unwrap();
    assert!(wire.len() > payload.len(), "sealed records carry overhead");
    assert!(
        c.uses_record_layer() && s.uses_record_layer(),
        "both ends left rustls for the in-place record layer"
    );
    let mut plain = BytesMut::new();
    // Arrives in odd pieces, as from a socket: a partial record waits in `received`.
    let mut received = BytesMut::new();
    for piece in wire.chunks(777) {
        received.extend_from_slice(piece);
        s.read(&mut received, &mut plain).unwrap();
    }
    assert!(received.is_empty());
    assert_eq!(&plain[..], &payload[..]);
    assert!(
        !s.wants_write(),
        "no session tickets: the server writes nothing after its flight"
    );
}

#[test]
fn a_flipped_bit_is_a_tampered_record() {
    let (mut c, mut s) = pair(&server_setup(), &TlsSetup::client_accepting_any().unwrap());
    pump(&mut c, &mut s).unwrap();
    let mut wire = BytesMut::new();
    s.seal([Bytes::from_static(&[7; 5000])], |chunk| {
        wire.extend_from_slice(&chunk)
    })
    .unwrap();
    wire[2000] ^= 0x10;
    let err = c.read(&mut wire, &mut BytesMut::new()).unwrap_err();
    assert!(matches!(err, TlsError::Tampered), "{err}");
}

#[test]
fn a_pinned_fingerprint_must_match() {
    let identity = ServerIdentity::generate().unwrap();
    let right = identity.fingerprint();
    let server = TlsSetup::server(identity).unwrap();
    let pinned = |pin: &str| {
        TlsOptions {
            server_fingerprint: Some(pin.to_owned()),
            ..TlsOptions::default()
        }
        .client_setup()
        .unwrap()
    };
    let (mut c, mut s) = pair(&server, &pinned(&right));
    pump(&mut c, &mut s).unwrap();
    assert!(!c.is_handshaking());

    let wrong = format!("sha256:{}", "ab".repeat(32));
    let (mut c, mut s) = pair(&server, &pinned(&wrong));
    let err = pump(&mut c, &mut s).unwrap_err().to_string();
    assert!(err.contains(&right) && err.contains(&wrong), "{err}");
}

#[test]
fn plaintext_against_tls_is_named_on_both_sides() {
    let server = server_setup();
    let mut s = server.connection().unwrap();
    let mut hello = BytesMut::from(&b"MTCP\x01\x01 and the rest of a plaintext hello"[..]);
    let err = s.read(&mut hello, &mut BytesMut::new()).unwrap_err();
    assert!(matches!(err, TlsError::PeerSpeaksPlaintext), "{err}");
    // With an alert for the plaintext peer, which names the mismatch from it.
    let mut alert = BytesMut::new();
    s.take_output(|chunk| alert.extend_from_slice(&chunk));
    let err = TunnelTls::plaintext()
        .read(&mut alert, &mut BytesMut::new())
        .unwrap_err();
    assert!(matches!(err, TlsError::PeerSpeaksTls), "{err}");

    let mut c = TlsSetup::client_accepting_any()
        .unwrap()
        .connection()
        .unwrap();
    let mut client_hello = BytesMut::new();
    c.take_output(|chunk| client_hello.extend_from_slice(&chunk));
    assert!(looks_like_tls(&client_hello), "a plaintext server can tell");
    let mut answer = BytesMut::from(&b"MTCP\x01\x02 plaintext server hello"[..]);
    let err = c.read(&mut answer, &mut BytesMut::new()).unwrap_err();
    assert!(matches!(err, TlsError::PeerSpeaksPlaintext), "{err}");

    // A plaintext end that receives a TLS handshake says so.
    let mut plain_end = TunnelTls::plaintext();
    let err = plain_end
        .read(&mut client_hello, &mut BytesMut::new())
        .unwrap_err();
    assert!(matches!(err, TlsError::PeerSpeaksTls), "{err}");
    let mut mtcp = BytesMut::from(&b"MTCP"[..]);
    let mut got = BytesMut::new();
    TunnelTls::plaintext().read(&mut mtcp, &mut got).unwrap();
    assert_eq!(&got[..], b"MTCP");
}

#[test]
fn options_that_do_not_fit_together_name_their_key() {
    let check = |opts: TlsOptions| opts.validate().map_err(|e| e.key);
    assert_eq!(check(TlsOptions::default()), Ok(()));
    let with = |f: fn(&mut TlsOptions)| {
        let mut o = TlsOptions::default();
        f(&mut o);
        o
    };
    assert_eq!(
        check(with(|o| o.cert_file = Some("c.pem".into()))),
        Err("tls.key_file")
    );
    assert_eq!(
        check(with(|o| o.ca_file = Some("ca.pem".into()))),
        Err("tls.server_name")
    );
    assert_eq!(
        check(with(|o| o.server_fingerprint = Some("sha256:12".into()))),
        Err("tls.server_fingerprint")
    );
    assert_eq!(
        check(with(|o| {
            o.insecure_plaintext = true;
            o.server_fingerprint = Some(format!("sha256:{}", "0".repeat(64)));
        })),
        Err("tls.server_fingerprint")
    );
    assert_eq!(check(with(|o| o.insecure_plaintext = true)), Ok(()));
}

#[test]
fn records_sealed_before_the_switch_and_after_it_all_arrive() {
    // The client seals its first data while rustls still has its Finished to send (as a
    // client pipelines its mtcpd hello): those records come from rustls, the next ones from
    // the record layer, with sequence numbers carried over.
    let (mut c, mut s) = pair(&server_setup(), &TlsSetup::client_accepting_any().unwrap());
    let mut wire = BytesMut::new();
    c.take_output(|chunk| wire.extend_from_slice(&chunk));
    s.read(&mut wire, &mut BytesMut::new()).unwrap();
    s.take_output(|chunk| wire.extend_from_slice(&chunk));
    let mut to_client = std::mem::take(&mut wire);
    c.read(&mut to_client, &mut BytesMut::new()).unwrap();
    assert!(c.wants_write() && !c.uses_record_layer());
    let mut to_server = BytesMut::new();
    c.seal([Bytes::from_static(b"pipelined ")], |chunk| {
        to_server.extend_from_slice(&chunk)
    })
    .unwrap();
    assert!(
        c.uses_record_layer(),
        "the seal flushed rustls, which then handed over"
    );
    c.seal([Bytes::from_static(b"and after")], |chunk| {
        to_server.extend_from_slice(&chunk)
    })
    .unwrap();
    let mut plain = BytesMut::new();
    s.read(&mut to_server, &mut plain).unwrap();
    assert_eq!(&plain[..], b"pipelined and after");
    assert!(s.uses_record_layer());
    assert!(to_server.is_empty());
}

#[test]
fn a_lowered_record_limit_closes_the_connection_before_it_is_passed() {
    let (mut c, mut s) = pair(&server_setup(), &TlsSetup::client_accepting_any().unwrap());
    c.set_record_limit(4);
    pump(&mut c, &mut s).unwrap();
    let mut wire = BytesMut::new();
    c.seal([Bytes::from(vec![1; 3 * 16384])], |chunk| {
        wire.extend_from_slice(&chunk)
    })
    .unwrap();
    let err = c
        .seal([Bytes::from(vec![1; 2 * 16384])], |chunk| {
            wire.extend_from_slice(&chunk)
        })
        .unwrap_err();
    assert!(matches!(err, TlsError::KeyLimit { .. }), "{err}");
    assert!(err.to_string().contains("fresh one"), "{err}");
    let mut plain = BytesMut::new();
    s.read(&mut wire, &mut plain).unwrap();
    assert_eq!(plain.len(), 3 * 16384);
}
