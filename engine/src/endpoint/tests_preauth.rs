//! Unit tests of the endpoint's pre-auth caps: per endpoint (worker), per source network shared
//! between endpoints, places given back however a handshake ends, the server's own deadline,
//! and the staleness check of hand-offs.

use super::*;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::handshake::PLAINTEXT_BINDING;

fn config(max_handshakes: u32, per_source: u32) -> Arc<Config> {
    Arc::new(Config {
        psk: b"endpoint preauth test".to_vec(),
        pool_size: 2,
        max_handshakes,
        max_handshakes_per_source: per_source,
        ..Config::default()
    })
}

fn server(max_handshakes: u32, per_source: u32) -> Endpoint {
    Endpoint::server(
        config(max_handshakes, per_source),
        SessionBudget::new(16),
        [3; 32],
    )
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

#[test]
fn one_source_network_is_capped_and_others_still_get_in() {
    let now = Instant::now();
    let mut ep = server(100, 3);
    for host in 1..=3 {
        ep.accept_connection_from(now, ip(203, 0, 113, host))
            .expect("under the cap");
    }
    // A fourth address of the same /24 is refused, whatever its last byte.
    let refused = ep.accept_connection_from(now, ip(203, 0, 113, 200));
    assert!(
        matches!(
            refused,
            Err(PreauthRefusal::TooManyFromSource { limit: 3, .. })
        ),
        "{refused:?}"
    );
    // So is its IPv4-mapped IPv6 form.
    let mapped = IpAddr::V6(Ipv4Addr::new(203, 0, 113, 9).to_ipv6_mapped());
    assert!(ep.accept_connection_from(now, mapped).is_err());
    // Another /24 is not affected.
    ep.accept_connection_from(now, ip(203, 0, 114, 1))
        .expect("another network");
    assert_eq!(ep.handshakes_in_progress(), 4);
}

#[test]
fn an_endpoint_is_capped_whatever_the_sources() {
    let now = Instant::now();
    let mut ep = server(5, 100);
    let keys: Vec<HandshakeKey> = (0..5)
        .map(|n| {
            ep.accept_connection_from(now, ip(10, n, 0, 1))
                .expect("under the cap")
        })
        .collect();
    assert_eq!(
        ep.accept_connection_from(now, ip(10, 99, 0, 1)),
        Err(PreauthRefusal::TooManyHandshakes { limit: 5 })
    );
    // One ends: one more gets in.
    ep.abandon_handshake(keys[0]);
    ep.accept_connection_from(now, ip(10, 99, 0, 1))
        .expect("a place was given back");
    // A client endpoint accepts nothing.
    let mut client = Endpoint::<()>::client(config(5, 5), now, [1; 32]);
    assert_eq!(
        client.accept_connection_from(now, ip(10, 0, 0, 1)),
        Err(PreauthRefusal::NotAServer)
    );
}

#[test]
fn the_source_cap_is_shared_by_the_endpoints_of_a_runtime() {
    let now = Instant::now();
    let shared = SourceBudget::new(2);
    let mut a = server(100, 2);
    let mut b = server(100, 2);
    a.share_source_budget(shared.clone());
    b.share_source_budget(shared.clone());
    let first = a.accept_connection_from(now, ip(198, 51, 100, 1)).unwrap();
    b.accept_connection_from(now, ip(198, 51, 100, 2)).unwrap();
    assert!(a.accept_connection_from(now, ip(198, 51, 100, 3)).is_err());
    assert!(b.accept_connection_from(now, ip(198, 51, 100, 4)).is_err());
    // A hand-off from `a` to `b`: the place moves with it (under `b`'s caps).
    let handshake = a.take_handshake(first).expect("in progress");
    assert_eq!(shared.held(SourcePrefix::of(ip(198, 51, 100, 1))), 1);
    let adopted = b
        .adopt_handshake_from(handshake, ip(198, 51, 100, 1))
        .unwrap();
    assert_eq!(shared.held(SourcePrefix::of(ip(198, 51, 100, 1))), 2);
    b.abandon_handshake(adopted);
    assert_eq!(shared.held(SourcePrefix::of(ip(198, 51, 100, 1))), 1);
}

#[test]
fn a_hand_off_to_a_worker_at_its_cap_is_refused() {
    let now = Instant::now();
    // Many accepting workers aiming at one: the receiving worker's cap still holds.
    let mut home = server(1, 100);
    let mut accepting = server(100, 100);
    home.accept_connection_from(now, ip(203, 0, 113, 1))
        .unwrap();
    let key = accepting
        .accept_connection_from(now, ip(198, 51, 100, 7))
        .unwrap();
    let handshake = accepting.take_handshake(key).expect("in progress");
    assert!(matches!(
        home.adopt_handshake_from(handshake, ip(198, 51, 100, 7)),
        Err(PreauthRefusal::TooManyHandshakes { limit: 1 })
    ));
    assert_eq!(
        home.source_budget()
            .held(SourcePrefix::of(ip(198, 51, 100, 7))),
        0
    );
}

#[test]
fn places_come_back_on_timeout_failure_and_authentication() {
    let start = Instant::now();
    let mut ep = server(100, 1);
    let net = SourcePrefix::of(ip(192, 0, 2, 1));
    // Timed out at the server's own deadline (preauth_timeout, not the client's 10 s).
    let key = ep.accept_connection_from(start, ip(192, 0, 2, 1)).unwrap();
    assert_eq!(
        ep.poll_handshake_timeout(),
        Some(start + Config::default().preauth_timeout)
    );
    assert_eq!(
        ep.handshake_timeout(start + Duration::from_secs(3)),
        vec![key]
    );
    assert_eq!(ep.source_budget().held(net), 0);
    // Failed on garbage.
    let key = ep.accept_connection_from(start, ip(192, 0, 2, 1)).unwrap();
    let mut garbage = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n................................................................................."[..]);
    let step = ep.handshake_input(start, key, &mut garbage, &PLAINTEXT_BINDING);
    assert!(matches!(step.outcome, HandshakeOutcome::Failed(_)));
    assert_eq!(ep.source_budget().held(net), 0);
    // Authenticated: the tunnel is no longer pre-auth.
    let key = ep.accept_connection_from(start, ip(192, 0, 2, 1)).unwrap();
    let mut client = Session::client(config(100, 1), start, 5);
    client.tunnel_connected(start, 0, &PLAINTEXT_BINDING);
    let mut outcome = HandshakeOutcome::Pending;
    for _ in 0..2 {
        let mut out = Vec::new();
        client.poll_transmit(start, 0, 1 << 20, &mut out);
        let mut to_server = BytesMut::new();
        for chunk in out {
            to_server.extend_from_slice(&chunk);
        }
        let step = ep.handshake_input(start, key, &mut to_server, &PLAINTEXT_BINDING);
        let mut back = step.output;
        let _ = client.handle_input(start, 0, &mut back);
        outcome = step.outcome;
        // Version 2 settles in one round trip: nothing more to feed once attached.
        if !matches!(outcome, HandshakeOutcome::Pending) {
            break;
        }
    }
    assert!(
        matches!(outcome, HandshakeOutcome::Attached { .. }),
        "{outcome:?}"
    );
    assert_eq!(ep.source_budget().held(net), 0);
    assert_eq!(ep.source_budget().sources(), 0);
}

#[test]
fn a_hand_off_is_stale_once_the_preauth_deadline_has_passed() {
    let ep = server(10, 10);
    let accepted = Instant::now();
    let deadline = Config::default().preauth_timeout;
    assert!(!ep.preauth_expired(accepted, accepted + deadline - Duration::from_millis(1)));
    assert!(ep.preauth_expired(accepted, accepted + deadline));
}
