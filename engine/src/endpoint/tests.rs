//! Unit tests of the endpoint: admission, overshoot, resume refusal, create-or-attach, removal
//! of closed sessions, and the client's restart. Clients are real [`Session`]s, so the bytes are
//! the protocol's.

use super::*;
use std::time::Duration;

use crate::handshake::{
    ClientHello, HELLO_FLAG_RESUME, HandshakeError, PLAINTEXT_BINDING, PROOF_LEN, ServerHello,
    SessionSecret, mask_session_secret,
};

const KEY: &[u8] = b"endpoint test";

fn config(pool: u16) -> Arc<Config> {
    Arc::new(Config {
        psk: KEY.to_vec(),
        pool_size: pool,
        ..Config::default()
    })
}

fn server(limit: usize) -> (Endpoint, SessionBudget) {
    let budget = SessionBudget::new(limit);
    (Endpoint::server(config(4), budget.clone(), [7; 32]), budget)
}

/// One client session's tunnel `t` talking to the endpoint over an in-memory connection.
struct Dial {
    key: HandshakeKey,
    t: usize,
    to_server: BytesMut,
}

fn client(seed: u64, now: Instant) -> Session {
    Session::client(config(4), now, seed)
}

/// The client connects tunnel `t`; the server accepts the connection. Nothing is sent yet.
fn connect(ep: &mut Endpoint, c: &mut Session, t: usize, now: Instant) -> Dial {
    c.tunnel_connected(now, t, &PLAINTEXT_BINDING);
    let key = ep.accept_connection(now).expect("a server accepts");
    Dial {
        key,
        t,
        to_server: BytesMut::new(),
    }
}

/// Moves what the client has for the tunnel to the server and the server's answer back.
fn exchange(ep: &mut Endpoint, c: &mut Session, d: &mut Dial, now: Instant) -> HandshakeOutcome {
    exchange_part(ep, c, d, now, usize::MAX)
}

/// [`exchange`], but the server reads at most `limit` of the bytes it has so far (the rest
/// waits for the next exchange).
fn exchange_part(
    ep: &mut Endpoint,
    c: &mut Session,
    d: &mut Dial,
    now: Instant,
    limit: usize,
) -> HandshakeOutcome {
    let mut out = Vec::new();
    c.poll_transmit(now, d.t, 1 << 20, &mut out);
    for chunk in out {
        d.to_server.extend_from_slice(&chunk);
    }
    let mut readable = d.to_server.split_to(limit.min(d.to_server.len()));
    let step = ep.handshake_input(now, d.key, &mut readable, &PLAINTEXT_BINDING);
    readable.unsplit(d.to_server.split());
    d.to_server = readable;
    let mut back = step.output;
    if !back.is_empty() {
        let _ = c.handle_input(now, d.t, &mut back);
    }
    step.outcome
}

/// Runs tunnel `t`'s whole handshake (one ClientHello, one ServerHello).
fn handshake(ep: &mut Endpoint, c: &mut Session, t: usize, now: Instant) -> HandshakeOutcome {
    let mut d = connect(ep, c, t, now);
    match exchange(ep, c, &mut d, now) {
        HandshakeOutcome::Pending => exchange(ep, c, &mut d, now),
        other => other,
    }
}

fn refused(outcome: &HandshakeOutcome) -> Option<HelloStatus> {
    match outcome {
        HandshakeOutcome::Failed(HandshakeError::Refused(s)) => Some(*s),
        _ => None,
    }
}

#[test]
fn first_tunnel_creates_the_session_and_the_others_attach() {
    let now = Instant::now();
    let (mut ep, budget) = server(4);
    let mut c = client(1, now);
    let HandshakeOutcome::Attached {
        session, created, ..
    } = handshake(&mut ep, &mut c, 0, now)
    else {
        panic!("first tunnel not attached");
    };
    assert!(created);
    for t in 1..4 {
        match handshake(&mut ep, &mut c, t, now) {
            HandshakeOutcome::Attached {
                session: s,
                created,
                tunnel,
            } => {
                assert_eq!(s, session);
                assert!(!created);
                assert_eq!(usize::from(tunnel.tunnel_index), t);
            }
            other => panic!("tunnel {t}: {other:?}"),
        }
    }
    assert_eq!(ep.len(), 1);
    assert_eq!(ep.find(c.id()), Some(session));
    assert_eq!(ep[session].session().id(), c.id());
    assert_eq!(budget.taken(), 1);
    assert_eq!(ep.handshakes_in_progress(), 0);
}

#[test]
fn a_second_session_beyond_max_sessions_is_refused() {
    let now = Instant::now();
    let (mut ep, budget) = server(1);
    let mut a = client(1, now);
    assert!(matches!(
        handshake(&mut ep, &mut a, 0, now),
        HandshakeOutcome::Attached { .. }
    ));
    let mut b = client(2, now);
    let outcome = handshake(&mut ep, &mut b, 0, now);
    assert_eq!(refused(&outcome), Some(HelloStatus::TooManySessions));
    // The refused client learns why.
    assert!(b.poll_event().is_some());
    assert_eq!(budget.taken(), 1);
    assert_eq!(ep.len(), 1);
}

#[test]
fn handshakes_of_new_sessions_cannot_overshoot() {
    let now = Instant::now();
    let (mut ep, budget) = server(2);
    // Four new sessions, two tunnels each, arrive while the budget holds two.
    let mut verdicts = Vec::new();
    for session in 0..4u8 {
        for tunnel in 0..2 {
            let key = ep.accept_connection(now).expect("a server accepts");
            let mut hello = hello_bytes([session; 16], [session; 32], tunnel, 0);
            let outcome = ep
                .handshake_input(now, key, &mut hello, &PLAINTEXT_BINDING)
                .outcome;
            verdicts.push((session, outcome));
        }
    }
    let attached: Vec<u8> = verdicts
        .iter()
        .filter(|(_, v)| matches!(v, HandshakeOutcome::Attached { .. }))
        .map(|(s, _)| *s)
        .collect();
    // Two sessions, both tunnels each: one place per session, not per tunnel.
    assert_eq!(attached, vec![0, 0, 1, 1]);
    assert!(
        verdicts
            .iter()
            .filter(|(s, _)| *s >= 2)
            .all(|(_, v)| refused(v) == Some(HelloStatus::TooManySessions))
    );
    assert_eq!(budget.taken(), 2);
    // A hello still arriving holds no place; a removed session gives its place back.
    let key = ep.accept_connection(now).expect("a server accepts");
    let mut half = hello_bytes([7; 16], [7; 32], 0, 0).split_to(60);
    assert!(matches!(
        ep.handshake_input(now, key, &mut half, &PLAINTEXT_BINDING)
            .outcome,
        HandshakeOutcome::Pending
    ));
    assert_eq!(budget.taken(), 2);
    ep.abandon_handshake(key);
    let first = ep.find(&[0; 16]).expect("session 0 exists");
    ep.remove(first);
    assert_eq!(budget.taken(), 1);
    // Real clients finish their handshakes against the rest of the budget.
    let mut c = client(1, now);
    assert!(matches!(
        handshake(&mut ep, &mut c, 0, now),
        HandshakeOutcome::Attached { created: true, .. }
    ));
    assert_eq!(budget.taken(), 2);
    let mut d = client(2, now);
    let outcome = handshake(&mut ep, &mut d, 0, now);
    assert_eq!(refused(&outcome), Some(HelloStatus::TooManySessions));
}

/// A ClientHello as a client with the endpoint's key would send it for a session with this id
/// and secret.
fn hello_bytes(
    session_id: SessionId,
    secret: SessionSecret,
    tunnel_index: u16,
    flags: u16,
) -> BytesMut {
    let nonce = [5; crate::handshake::NONCE_LEN];
    let mut hello = ClientHello {
        version: crate::wire::PROTOCOL_VERSION,
        flags,
        session_id,
        tunnel_index,
        pool_size: 4,
        capabilities: 0,
        nonce,
        params: config(4).transport_params(),
        masked_secret: mask_session_secret(KEY, &PLAINTEXT_BINDING, &nonce, &secret),
        proof: [0; PROOF_LEN],
    };
    hello.sign(KEY, &PLAINTEXT_BINDING);
    let mut out = BytesMut::new();
    hello.encode(&mut out);
    out
}

#[test]
fn a_budget_shared_by_two_endpoints_is_not_overshot() {
    let now = Instant::now();
    let budget = SessionBudget::new(1);
    let mut one: Endpoint = Endpoint::server(config(4), budget.clone(), [1; 32]);
    let mut two: Endpoint = Endpoint::server(config(4), budget.clone(), [2; 32]);
    let (mut a, mut b) = (client(1, now), client(2, now));
    let mut da = connect(&mut one, &mut a, 0, now);
    let mut db = connect(&mut two, &mut b, 0, now);
    assert!(matches!(
        exchange(&mut one, &mut a, &mut da, now),
        HandshakeOutcome::Attached { created: true, .. }
    ));
    let second = exchange(&mut two, &mut b, &mut db, now);
    assert_eq!(refused(&second), Some(HelloStatus::TooManySessions));
    assert_eq!(budget.taken(), 1);
}

#[test]
fn failed_and_timed_out_handshakes_hold_no_place() {
    let now = Instant::now();
    let (mut ep, budget) = server(1);
    // Half a ClientHello, then the connection goes away.
    let mut a = client(1, now);
    let mut d = connect(&mut ep, &mut a, 0, now);
    assert!(matches!(
        exchange_part(&mut ep, &mut a, &mut d, now, 70),
        HandshakeOutcome::Pending
    ));
    assert_eq!(budget.taken(), 0);
    ep.abandon_handshake(d.key);
    // Half a ClientHello, then silent past the deadline.
    let mut b = client(2, now);
    let mut d = connect(&mut ep, &mut b, 0, now);
    assert!(matches!(
        exchange_part(&mut ep, &mut b, &mut d, now, 70),
        HandshakeOutcome::Pending
    ));
    let deadline = ep.poll_handshake_timeout().expect("a deadline");
    assert!(
        ep.handshake_timeout(deadline - Duration::from_millis(1))
            .is_empty()
    );
    assert_eq!(ep.handshake_timeout(deadline), vec![d.key]);
    assert_eq!(ep.handshakes_in_progress(), 0);
    assert_eq!(budget.taken(), 0);
    // The place is free for a third session.
    let mut c = client(3, now);
    assert!(matches!(
        handshake(&mut ep, &mut c, 0, now),
        HandshakeOutcome::Attached { created: true, .. }
    ));
    // A wrong proof is refused before admission, unsigned, and takes no place.
    let (mut ep, budget) = server(1);
    let key = ep.accept_connection(now).expect("a server accepts");
    let mut bytes = hello_bytes([9; 16], [9; 32], 0, 0);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let step = ep.handshake_input(now, key, &mut bytes, &PLAINTEXT_BINDING);
    assert!(
        matches!(
            step.outcome,
            HandshakeOutcome::Failed(HandshakeError::WrongKey)
        ),
        "{:?}",
        step.outcome
    );
    let answer = ServerHello::decode(&mut step.output.clone())
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, HelloStatus::AuthFailed);
    assert_eq!(
        answer.proof, [0; PROOF_LEN],
        "nothing signed for an unproved peer"
    );
    assert_eq!(budget.taken(), 0);
    assert_eq!(ep.handshakes_in_progress(), 0);
}

#[test]
fn resuming_an_unknown_session_is_refused() {
    let now = Instant::now();
    let (mut ep, budget) = server(4);
    let mut c = client(1, now);
    assert!(matches!(
        handshake(&mut ep, &mut c, 0, now),
        HandshakeOutcome::Attached { .. }
    ));
    // A client that believes its session lives here (a restarted server, say) asks to resume
    // one this endpoint does not know.
    let key = ep.accept_connection(now).expect("a server accepts");
    let mut resume = hello_bytes([42; 16], [42; 32], 1, HELLO_FLAG_RESUME);
    let outcome = ep.handshake_input(now, key, &mut resume, &PLAINTEXT_BINDING);
    assert_eq!(refused(&outcome.outcome), Some(HelloStatus::UnknownSession));
    assert!(!outcome.output.is_empty(), "the refusal is sent");
    assert_eq!(budget.taken(), 1);
    assert_eq!(ep.len(), 1);
    // Its own client resuming it attaches.
    assert!(matches!(
        handshake(&mut ep, &mut c, 1, now),
        HandshakeOutcome::Attached { created: false, .. }
    ));
}

#[test]
fn knowing_a_session_id_is_not_enough_to_join_it_or_take_over_a_slot() {
    let now = Instant::now();
    let (mut ep, budget) = server(4);
    let mut victim = client(1, now);
    let HandshakeOutcome::Attached { session, .. } = handshake(&mut ep, &mut victim, 0, now) else {
        panic!("not attached");
    };
    assert!(matches!(
        handshake(&mut ep, &mut victim, 1, now),
        HandshakeOutcome::Attached { .. }
    ));
    while ep[session].session_mut().poll_event().is_some() {}
    // Another client with the same key, which saw the victim's id (in a plaintext hello),
    // tries to join with its own secret, to take over slot 0, and to add slot 2.
    let id = *victim.id();
    for (tunnel, flags) in [
        (0, HELLO_FLAG_RESUME),
        (0, 0),
        (2, HELLO_FLAG_RESUME),
        (2, 0),
    ] {
        let key = ep.accept_connection(now).expect("a server accepts");
        let mut hello = hello_bytes(id, [0xa7; 32], tunnel, flags);
        let step = ep.handshake_input(now, key, &mut hello, &PLAINTEXT_BINDING);
        assert_eq!(
            refused(&step.outcome),
            Some(HelloStatus::SessionSecretMismatch),
            "tunnel {tunnel} flags {flags}"
        );
        assert!(!step.output.is_empty(), "the refusal is sent (signed)");
    }
    let s = ep[session].session_mut();
    assert!(s.tunnel_is_active(0) && s.tunnel_is_active(1));
    assert!(!s.tunnel_is_active(2));
    assert!(
        s.poll_event().is_none(),
        "no tunnel of the victim went down"
    );
    assert_eq!(
        (ep.len(), budget.taken(), ep.handshakes_in_progress()),
        (1, 1, 0)
    );
    eprintln!(
        "server held {} session(s), {} handshake(s) in progress, {} bytes buffered after 4 \
         takeover attempts",
        ep.len(),
        ep.handshakes_in_progress(),
        ep[session].session().stats().buffered_bytes
    );
}

#[test]
fn removing_a_closed_session_gives_its_place_back() {
    let now = Instant::now();
    let (mut ep, budget) = server(1);
    let mut a = client(1, now);
    let HandshakeOutcome::Attached { session, .. } = handshake(&mut ep, &mut a, 0, now) else {
        panic!("not attached");
    };
    assert_eq!(ep.reap(now, session), Reaped::Open);
    assert_eq!(budget.taken(), 1);
    ep[session]
        .session_mut()
        .close(crate::error::code::NO_ERROR, "done");
    assert_eq!(ep.reap(now, session), Reaped::Removed { replacement: None });
    assert_eq!(budget.taken(), 0);
    assert!(ep.get(session).is_none());
    assert_eq!(ep.find(a.id()), None);
    let mut b = client(2, now);
    assert!(matches!(
        handshake(&mut ep, &mut b, 0, now),
        HandshakeOutcome::Attached { created: true, .. }
    ));
}

#[test]
fn a_client_restarts_its_lost_session_until_stopping() {
    let now = Instant::now();
    let mut ep: Endpoint = Endpoint::client(config(2), now, [3; 32]);
    let first = ep.client_session().expect("a client starts with a session");
    let first_id = *ep[first].session().id();
    assert!(
        ep.accept_connection(now).is_none(),
        "a client accepts no tunnels"
    );
    ep[first]
        .session_mut()
        .close(crate::error::code::NO_ERROR, "lost");
    let Reaped::Removed {
        replacement: Some(second),
    } = ep.reap(now, first)
    else {
        panic!("no fresh session");
    };
    assert_eq!(ep.len(), 1);
    assert_eq!(ep.client_session(), Some(second));
    assert_ne!(*ep[second].session().id(), first_id);
    // The fresh session dials its pool.
    assert!(matches!(
        ep[second].session_mut().poll_event(),
        Some(crate::session::Event::Dial { .. })
    ));
    ep.set_stopping();
    ep[second]
        .session_mut()
        .close(crate::error::code::NO_ERROR, "lost");
    assert_eq!(ep.reap(now, second), Reaped::Removed { replacement: None });
    assert!(ep.is_empty());
}

#[test]
fn a_tunnel_of_a_session_that_ends_mid_handshake_creates_nothing() {
    let now = Instant::now();
    let (mut ep, budget) = server(4);
    let mut c = client(1, now);
    let HandshakeOutcome::Attached { session, .. } = handshake(&mut ep, &mut c, 0, now) else {
        panic!("not attached");
    };
    // Tunnels 1 and 2 of the established session (their hellos say "resume") are half-way in...
    let mut d1 = connect(&mut ep, &mut c, 1, now);
    let mut d = connect(&mut ep, &mut c, 2, now);
    for d in [&mut d1, &mut d] {
        assert!(matches!(
            exchange_part(&mut ep, &mut c, d, now, 70),
            HandshakeOutcome::Pending
        ));
    }
    // ...when the session closes: closed, not yet reaped.
    ep[session]
        .session_mut()
        .close(crate::error::code::NO_ERROR, "done");
    let outcome = exchange(&mut ep, &mut c, &mut d1, now);
    assert_eq!(refused(&outcome), Some(HelloStatus::UnknownSession));
    // And once it is reaped, a resuming tunnel still never creates a session.
    assert_eq!(ep.reap(now, session), Reaped::Removed { replacement: None });
    let outcome = exchange(&mut ep, &mut c, &mut d, now);
    assert_eq!(refused(&outcome), Some(HelloStatus::UnknownSession));
    assert_eq!(ep.len(), 0);
    assert_eq!(budget.taken(), 0);
}

#[test]
fn a_refused_client_session_is_reported_once_and_replaced_by_one_that_waits() {
    let now = Instant::now();
    let mut client_ep: Endpoint = Endpoint::client(config(1), now, [4; 32]);
    let another_key = Arc::new(Config {
        psk: b"another key".to_vec(),
        ..Config::default()
    });
    let mut server_ep: Endpoint = Endpoint::server(another_key, SessionBudget::new(4), [5; 32]);
    let first = client_ep
        .client_session()
        .expect("a client starts with a session");
    let c = client_ep[first].session_mut();
    while c.poll_event().is_some() {}
    let mut d = connect(&mut server_ep, c, 0, now);
    exchange(&mut server_ep, c, &mut d, now);
    assert!(c.is_closed(), "the server rejected our key");
    let Reaped::Removed {
        replacement: Some(second),
    } = client_ep.reap(now, first)
    else {
        panic!("no fresh session");
    };
    let refused = client_ep.take_refusal().expect("the refusal is reported");
    assert_eq!(refused.refusal, Refusal::KeyRejected);
    assert_eq!(refused.report, RefusalReport::First);
    assert_eq!(refused.in_a_row, 1);
    assert!(client_ep.take_refusal().is_none(), "once");
    let fresh = client_ep[second].session_mut();
    assert!(fresh.poll_event().is_none(), "no dial at once");
    let at = fresh.poll_timeout().expect("a dial is scheduled");
    assert_eq!(at, now + refused.retry_in);
    assert!(refused.retry_in >= FIRST_RETRY / 2 && refused.retry_in <= FIRST_RETRY);
    fresh.handle_timeout(at);
    assert!(matches!(
        fresh.poll_event(),
        Some(crate::session::Event::Dial { .. })
    ));
}
