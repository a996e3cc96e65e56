//! The server's admission, as the daemon runs it, through the simulator: the simulated server
//! is a real `Endpoint`, so `max_sessions` and resume refusal are the daemon's own.

use std::time::Duration;

use mtcpd_engine::Config;
use mtcpd_engine::handshake::{HandshakeError, HelloStatus};
use mtcpd_engine::sim::{LinkSpec, SimPair};

fn keyed() -> Config {
    Config {
        psk: b"admission".to_vec(),
        ..Config::default()
    }
}

fn refusals(pair: &SimPair, status: HelloStatus) -> usize {
    pair.handshake_errors
        .iter()
        .filter(|e| **e == HandshakeError::Refused(status))
        .count()
}

fn established_pair(max_sessions: usize) -> SimPair {
    let links = [LinkSpec::new(5, 100.0); 2];
    let mut pair = SimPair::with_max_sessions(keyed(), keyed(), &links, 21, max_sessions);
    assert!(pair.run(Duration::from_secs(5), |p| {
        p.client.is_established() && p.server().is_some_and(|s| s.stats().active_tunnels == 2)
    }));
    pair
}

#[test]
fn a_second_client_session_beyond_max_sessions_is_refused() {
    let mut pair = established_pair(1);
    // A new client process: a new session id, while the old session still holds the one place.
    pair.restart_client(22);
    assert!(pair.run(Duration::from_secs(5), |p| {
        refusals(p, HelloStatus::TooManySessions) > 0
    }));
    assert!(pair.server().is_none(), "the new client got no session");
    assert_eq!(pair.server.len(), 1);
    assert!(!pair.client.is_established());
}

#[test]
fn a_second_client_session_within_max_sessions_is_admitted() {
    let mut pair = established_pair(2);
    pair.restart_client(22);
    assert!(pair.run(Duration::from_secs(5), |p| p.server().is_some()
        && p.client.is_established()));
    assert_eq!(pair.server.len(), 2);
    assert_eq!(refusals(&pair, HelloStatus::TooManySessions), 0);
}

#[test]
fn resuming_a_session_the_server_lost_is_refused() {
    let mut pair = established_pair(4);
    // The server restarts: it forgets the session the client still holds.
    pair.set_server_up(false);
    pair.set_server_up(true);
    assert!(pair.run(Duration::from_secs(5), |p| {
        refusals(p, HelloStatus::UnknownSession) > 0
    }));
    assert!(pair.server().is_none());
    assert!(
        pair.server.is_empty(),
        "a refused resume creates no session"
    );
}
