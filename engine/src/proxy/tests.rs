//! The proxy handshakes on good, bad, split and random input.

use proptest::prelude::*;

use super::*;

fn socks(creds: Option<(&str, &str)>) -> ProxyHandshake {
    ProxyHandshake::Socks5(Socks5Handshake::new(creds.map(|(u, p)| {
        Socks5Credentials {
            username: u.into(),
            password: p.into(),
        }
    })))
}

/// Feeds `bytes` one at a time; the outcome must not depend on how the input is split.
fn feed_bytewise(
    h: &mut ProxyHandshake,
    bytes: &[u8],
) -> (Result<Step, ProxyFailure>, Vec<u8>, Vec<u8>) {
    let mut input = Vec::new();
    let mut out = Vec::new();
    for &b in bytes {
        input.push(b);
        match h.advance(&mut input, &mut out) {
            Ok(Step::NeedMore) => {}
            other => return (other, out, input),
        }
    }
    (Ok(Step::NeedMore), out, input)
}

#[test]
fn socks5_connect_by_name_without_auth() {
    let mut h = socks(None);
    let mut bytes = vec![5, 1, 0, 5, 1, 0, 3, 9];
    bytes.extend_from_slice(b"LocalHost");
    bytes.extend_from_slice(&8080u16.to_be_bytes());
    bytes.extend_from_slice(b"early");
    let mut input = bytes;
    let mut out = Vec::new();
    let step = h.advance(&mut input, &mut out).unwrap();
    assert_eq!(out, [5, 0]);
    let Step::Request(r) = step else {
        panic!("{step:?}")
    };
    assert_eq!(r.target, "localhost:8080");
    assert_eq!(r.reply, ReplyKind::Socks5);
    assert_eq!(input, b"early", "bytes after the request are the stream's");
}

#[test]
fn socks5_ipv4_and_ipv6_targets_split_anywhere() {
    let mut v4 = vec![5, 2, 2, 0, 5, 1, 0, 1, 10, 0, 0, 7];
    v4.extend_from_slice(&443u16.to_be_bytes());
    let (step, out, _) = feed_bytewise(&mut socks(None), &v4);
    assert_eq!(out, [5, 0]);
    assert!(matches!(step, Ok(Step::Request(r)) if r.target == "10.0.0.7:443"));
    let mut v6 = vec![5, 1, 0, 5, 1, 0, 4];
    v6.extend_from_slice(&"::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    v6.extend_from_slice(&80u16.to_be_bytes());
    let (step, _, _) = feed_bytewise(&mut socks(None), &v6);
    assert!(matches!(step, Ok(Step::Request(r)) if r.target == "[::1]:80"));
}

#[test]
fn socks5_password_right_and_wrong() {
    let mut ok = vec![5, 1, 2, 1, 5];
    ok.extend_from_slice(b"alice");
    ok.push(6);
    ok.extend_from_slice(b"secret");
    ok.extend_from_slice(&[5, 1, 0, 1, 127, 0, 0, 1, 0, 80]);
    let (step, out, _) = feed_bytewise(&mut socks(Some(("alice", "secret"))), &ok);
    assert_eq!(out, [5, 2, 1, 0]);
    assert!(matches!(step, Ok(Step::Request(r)) if r.target == "127.0.0.1:80"));

    let mut wrong = vec![5, 1, 2, 1, 5];
    wrong.extend_from_slice(b"alice");
    wrong.push(6);
    wrong.extend_from_slice(b"secreT");
    let (step, out, _) = feed_bytewise(&mut socks(Some(("alice", "secret"))), &wrong);
    assert_eq!(out, [5, 2]);
    assert_eq!(step.unwrap_err().reply, [1, 1]);

    // A client that offers no password to a listener that needs one: no acceptable method.
    let (step, _, _) = feed_bytewise(&mut socks(Some(("a", "b"))), &[5, 1, 0]);
    assert_eq!(step.unwrap_err().reply, [5, 0xFF]);
}

#[test]
fn socks5_other_commands_and_address_types_get_their_rep() {
    let (step, _, _) = feed_bytewise(&mut socks(None), &[5, 1, 0, 5, 2, 0, 1, 1, 2, 3, 4, 0, 80]);
    assert_eq!(
        step.unwrap_err().reply,
        socks5::reply(socks5::REP_COMMAND_NOT_SUPPORTED)
    );
    let (step, _, _) = feed_bytewise(&mut socks(None), &[5, 1, 0, 5, 1, 0, 9, 1]);
    assert_eq!(
        step.unwrap_err().reply,
        socks5::reply(socks5::REP_ADDRESS_TYPE_NOT_SUPPORTED)
    );
    let (step, _, _) = feed_bytewise(&mut socks(None), &[4, 1, 0, 80]);
    assert!(
        step.unwrap_err().reply.is_empty(),
        "SOCKS4 gets no SOCKS5 reply"
    );
}

#[test]
fn verdicts_map_to_socks5_and_http_replies() {
    assert_eq!(ReplyKind::Socks5.reply(Verdict::NotAllowed)[1], 0x02);
    assert_eq!(ReplyKind::Socks5.reply(Verdict::ConnectionRefused)[1], 0x05);
    assert_eq!(ReplyKind::Socks5.reply(Verdict::Unreachable)[1], 0x04);
    assert_eq!(ReplyKind::Socks5.reply(Verdict::Connected)[1], 0x00);
    assert!(
        ReplyKind::HttpConnect
            .reply(Verdict::NotAllowed)
            .starts_with(b"HTTP/1.1 403 ")
    );
    assert!(
        ReplyKind::HttpForward
            .reply(Verdict::ConnectionRefused)
            .starts_with(b"HTTP/1.1 502 ")
    );
    assert!(
        ReplyKind::HttpConnect
            .reply(Verdict::Connected)
            .starts_with(b"HTTP/1.1 200 ")
    );
    assert!(ReplyKind::HttpForward.reply(Verdict::Connected).is_empty());
}

fn http() -> ProxyHandshake {
    ProxyHandshake::Http(HttpHandshake::new())
}

#[test]
fn http_connect_keeps_what_follows_the_head() {
    let (step, out, rest) = feed_bytewise(
        &mut http(),
        b"CONNECT Example.COM:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    );
    assert!(out.is_empty());
    let Ok(Step::Request(r)) = step else {
        panic!("{step:?}")
    };
    assert_eq!(
        (r.target.as_str(), r.reply),
        ("example.com:443", ReplyKind::HttpConnect)
    );
    assert!(r.head.is_empty() && rest.is_empty());
    let mut input = b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n\x16\x03\x01".to_vec();
    let step = http().advance(&mut input, &mut Vec::new()).unwrap();
    assert!(matches!(step, Step::Request(r) if r.target == "[::1]:8443"));
    assert_eq!(input, b"\x16\x03\x01");
}

#[test]
fn http_absolute_form_is_rewritten_to_origin_form() {
    let mut input = b"GET http://localhost:8080/a/b?c=d HTTP/1.1\r\nHost: localhost:8080\r\n\
        User-Agent: t\r\nProxy-Connection: Keep-Alive\r\nConnection: keep-alive\r\n\r\n"
        .to_vec();
    let Step::Request(r) = http().advance(&mut input, &mut Vec::new()).unwrap() else {
        panic!()
    };
    assert_eq!(r.target, "localhost:8080");
    assert_eq!(r.reply, ReplyKind::HttpForward);
    assert_eq!(
        String::from_utf8(r.head).unwrap(),
        "GET /a/b?c=d HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: t\r\nConnection: close\r\n\r\n"
    );
    let mut input = b"POST http://10.1.2.3?x HTTP/1.0\r\n\r\nbody".to_vec();
    let Step::Request(r) = http().advance(&mut input, &mut Vec::new()).unwrap() else {
        panic!()
    };
    assert_eq!(r.target, "10.1.2.3:80");
    assert_eq!(
        String::from_utf8(r.head).unwrap(),
        "POST /?x HTTP/1.0\r\nHost: 10.1.2.3\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(input, b"body");
}

#[test]
fn http_bad_requests_get_400_and_big_ones_431() {
    for bad in [
        &b"GET /local HTTP/1.1\r\n\r\n"[..],
        b"GET https://x/ HTTP/1.1\r\n\r\n",
        b"CONNECT host HTTP/1.1\r\n\r\n",
        b"CONNECT host:0 HTTP/1.1\r\n\r\n",
        b"CONNECT a b:1 HTTP/1.1\r\n\r\n",
        b"GET http://x/ HTTP/2\r\n\r\n",
        b"GET http://x/ HTTP/1.1\r\nno colon\r\n\r\n",
    ] {
        let err = http()
            .advance(&mut bad.to_vec(), &mut Vec::new())
            .unwrap_err();
        assert!(
            err.reply.starts_with(b"HTTP/1.1 400 "),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let mut big = b"GET http://x/ HTTP/1.1\r\nX: ".to_vec();
    big.resize(MAX_HANDSHAKE_BYTES, b'a');
    let err = http().advance(&mut big, &mut Vec::new()).unwrap_err();
    assert!(err.reply.starts_with(b"HTTP/1.1 431 "));
    // SOCKS5 is bounded too: a request that never completes is refused at the cap.
    let mut input = vec![5, 255];
    input.resize(MAX_HANDSHAKE_BYTES, 1);
    assert!(socks(None).advance(&mut input, &mut Vec::new()).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// Random bytes, fed in random pieces, never panic and never buffer past the cap.
    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        cut in 1usize..64,
        kind in 0u8..3,
        prefix in 0u8..3,
    ) {
        let mut h = match kind {
            0 => socks(None),
            1 => socks(Some(("u", "p"))),
            _ => http(),
        };
        // Some cases start like a real handshake, so the later states see random bytes too.
        let mut all = match prefix {
            0 => vec![5, 1, if kind == 1 { 2 } else { 0 }],
            1 => b"GET http://".to_vec(),
            _ => Vec::new(),
        };
        all.extend_from_slice(&bytes);
        let mut input = Vec::new();
        let mut out = Vec::new();
        for piece in all.chunks(cut) {
            input.extend_from_slice(piece);
            match h.advance(&mut input, &mut out) {
                Ok(Step::NeedMore) => prop_assert!(input.len() < MAX_HANDSHAKE_BYTES),
                Ok(Step::Request(r)) => {
                    prop_assert!(!r.target.is_empty() && r.target.len() <= 1024);
                    break;
                }
                Err(_) => break,
            }
        }
        prop_assert!(out.len() <= 8);
    }
}
