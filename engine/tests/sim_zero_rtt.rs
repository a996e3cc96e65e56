//! `Config::zero_rtt` over the simulated network: on, the client's pool is up before any stream
//! exists; off, nothing is dialed until the first stream is tried, and that stream's bytes still
//! arrive whole once the tunnels are up.

mod support;

use std::time::Duration;

use mtcpd_engine::session::Event;
use mtcpd_engine::sim::{LinkSpec, Side, SimPair};
use mtcpd_engine::{Config, StreamError};
use support::{FlowSpec, Workload};

fn keyed(zero_rtt: bool) -> Config {
    Config {
        psk: b"zero-rtt test key".to_vec(),
        zero_rtt,
        ..Config::default()
    }
}

const LINKS: [LinkSpec; 3] = [
    LinkSpec {
        delay: Duration::from_millis(20),
        rate: 12.5e6,
        buffer: 64 * 1024,
    },
    LinkSpec {
        delay: Duration::from_millis(35),
        rate: 6.25e6,
        buffer: 64 * 1024,
    },
    LinkSpec {
        delay: Duration::from_millis(50),
        rate: 12.5e6,
        buffer: 64 * 1024,
    },
];

fn dials(pair: &SimPair) -> usize {
    pair.log
        .iter()
        .filter(|(side, ev)| *side == Side::Client && matches!(ev, Event::Dial { .. }))
        .count()
}

fn active_tunnels(pair: &SimPair) -> usize {
    (0..pair.client.tunnel_count())
        .filter(|&t| pair.client.tunnel_is_active(t))
        .count()
}

#[test]
fn without_zero_rtt_the_pool_is_dialed_by_the_first_stream() {
    let mut pair = SimPair::new(keyed(false), keyed(true), &LINKS, 11);
    // A long idle start: nothing may be dialed while no stream is wanted.
    assert!(!pair.run(Duration::from_secs(5), |_| false));
    assert_eq!(dials(&pair), 0, "dialed before any stream: {:?}", pair.log);
    assert!(pair.server().is_none(), "the server saw a tunnel");
    assert_eq!(active_tunnels(&pair), 0);

    // The first stream is refused for now, and that is what dials the pool.
    let idle_until = pair.elapsed();
    assert_eq!(pair.client.open_stream(None), Err(StreamError::NotReady));
    let mut w = Workload::new(vec![FlowSpec::bulk(1 << 20, 256 << 10)]);
    let done = pair.run(Duration::from_secs(30), |p| w.step(p));
    assert!(done, "not finished: {:?}", w.errors);
    w.verify().unwrap();
    assert_eq!(dials(&pair), LINKS.len(), "every slot dialed once");
    // The slowest slot's TLS and mtcpd handshakes may still be under way after 1 MiB.
    let all_up = pair.run(Duration::from_secs(2), |p| active_tunnels(p) == LINKS.len());
    assert!(all_up, "not every slot came up: {:?}", pair.log);
    assert_eq!(dials(&pair), LINKS.len(), "and none was dialed twice");
    // The stream waited for a handshake across the WAN: at least the fastest tunnel's RTT.
    let took = pair.elapsed() - idle_until;
    assert!(
        took >= LINKS[0].delay * 2,
        "the stream finished in {took:?}, faster than a handshake"
    );
}

#[test]
fn with_zero_rtt_the_pool_is_up_before_any_stream() {
    let mut pair = SimPair::new(keyed(true), keyed(true), &LINKS, 12);
    assert_eq!(
        pair.client.open_stream(None),
        Err(StreamError::NotReady),
        "no tunnel is up at the very start"
    );
    assert!(!pair.run(Duration::from_secs(1), |_| false));
    assert_eq!(dials(&pair), LINKS.len());
    assert_eq!(active_tunnels(&pair), LINKS.len(), "{:?}", pair.log);
    let server = pair.server().expect("the server has the session");
    assert_eq!(server.stream_ids().count(), 0, "no stream was opened yet");

    let mut w = Workload::new(vec![FlowSpec::bulk(1 << 20, 256 << 10)]);
    let done = pair.run(Duration::from_secs(30), |p| w.step(p));
    assert!(done, "not finished: {:?}", w.errors);
    w.verify().unwrap();
    assert_eq!(dials(&pair), LINKS.len(), "no re-dial was needed");
}
