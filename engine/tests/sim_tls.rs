//! TLS under the simulated tunnels: a flipped bit costs a tunnel, never a byte; plaintext links
//! remain possible.

mod support;

use std::time::Duration;

use mtcpd_engine::Config;
use mtcpd_engine::session::Event;
use mtcpd_engine::sim::{LinkSpec, Side, SimPair};
use mtcpd_engine::tls::TlsError;
use support::{FlowSpec, Workload};

const MIB: u64 = 1 << 20;

fn config() -> Config {
    Config {
        psk: b"k".to_vec(),
        ..Config::default()
    }
}

fn links() -> Vec<LinkSpec> {
    (0..4).map(|i| LinkSpec::new(5 + 10 * i, 100.0)).collect()
}

fn client_events(pair: &SimPair, wanted: impl Fn(&Event) -> bool) -> usize {
    pair.log
        .iter()
        .filter(|(side, ev)| *side == Side::Client && wanted(ev))
        .count()
}

#[test]
fn a_flipped_bit_drops_its_tunnel_and_every_byte_arrives_once() {
    let mut pair = SimPair::new(config(), config(), &links(), 3);
    let mut w = Workload::new(vec![FlowSpec::bulk(16 * MIB, 16 * MIB)]);
    let mut flipped = false;
    let done = pair.run(Duration::from_secs(600), |p| {
        // Mid-transfer, once tunnel 1 carries data towards the client.
        if !flipped && w.server_received(0) >= 4 * MIB {
            flipped = p.flip_bit(1, true);
        }
        w.step(p)
    });
    assert!(flipped, "nothing was in flight on tunnel 1");
    assert!(done, "transfer did not finish: {:?}", w.errors);
    // Every byte, both ways, exactly once and in order (checked against the pattern).
    w.verify().unwrap();
    assert_eq!(pair.tls_errors.len(), 1, "{:?}", pair.tls_errors);
    let (t, error) = &pair.tls_errors[0];
    assert_eq!(*t, 1);
    assert!(matches!(error, TlsError::Tampered), "{error}");
    assert_eq!(
        client_events(&pair, |e| matches!(e, Event::TunnelDown { tunnel: 1, .. })),
        1,
        "the tampered tunnel is dropped"
    );
    assert!(
        client_events(&pair, |e| matches!(e, Event::Dial { tunnel: 1 })) >= 2,
        "and re-dialed"
    );
    let back = pair.run(Duration::from_secs(30), |p| p.client.tunnel_is_active(1));
    assert!(back, "tunnel 1 came back: {:?}", pair.log);
    let resent =
        pair.client.stats().frames_resent + pair.server().map_or(0, |s| s.stats().frames_resent);
    eprintln!("frames resent after the flipped bit: {resent}");
}

#[test]
fn a_tunnel_whose_keys_reach_their_record_limit_is_replaced_and_no_byte_is_lost() {
    // 64 records per key and direction (instead of 2^24): 20 MiB in 16 KiB records takes
    // several fresh connections on every tunnel.
    let mut pair = SimPair::new(config(), config(), &links(), 6).record_limit(64);
    let mut w = Workload::new(vec![FlowSpec::bulk(4 * MIB, 16 * MIB)]);
    let done = pair.run(Duration::from_secs(600), |p| w.step(p));
    assert!(done, "transfer did not finish: {:?}", w.errors);
    // Every byte, both ways, exactly once and in order (checked against the pattern).
    w.verify().unwrap();
    assert!(pair.tls_errors.len() >= 8, "{:?}", pair.tls_errors);
    for (t, error) in &pair.tls_errors {
        assert!(
            matches!(error, TlsError::KeyLimit { records, limit: 64 } if *records <= 64),
            "tunnel {t}: {error}"
        );
    }
    let dials = client_events(&pair, |e| matches!(e, Event::Dial { .. }));
    assert!(
        dials >= 4 + pair.tls_errors.len(),
        "each closed tunnel was dialed again ({dials} dials)"
    );
    assert!(
        pair.client.stats().frames_resent + pair.server().map_or(0, |s| s.stats().frames_resent)
            > 0
            || pair.tls_errors.is_empty(),
        "what was unacknowledged on a closed tunnel went out again"
    );
}

#[test]
fn plaintext_links_carry_the_same_transfer() {
    let mut pair = SimPair::new(config(), config(), &links(), 4).plaintext();
    let mut w = Workload::new(vec![FlowSpec::bulk(4 * MIB, 4 * MIB)]);
    assert!(
        pair.run(Duration::from_secs(600), |p| w.step(p)),
        "{:?}",
        w.errors
    );
    w.verify().unwrap();
    assert!(pair.tls_errors.is_empty());
}

#[test]
fn tls_costs_one_round_trip_before_the_first_tunnel_is_up() {
    let up_after = |pair: SimPair| {
        let mut pair = pair;
        assert!(pair.run(Duration::from_secs(10), |p| p.client.tunnel_is_active(0)));
        pair.elapsed()
    };
    let one = [LinkSpec::new(50, 100.0)];
    let tls = up_after(SimPair::new(config(), config(), &one, 5));
    let plain = up_after(SimPair::new(config(), config(), &one, 5).plaintext());
    eprintln!("first tunnel up: TLS {tls:?}, plaintext {plain:?}");
    let extra = tls - plain;
    assert!(
        extra >= Duration::from_millis(100) && extra < Duration::from_millis(110),
        "TLS 1.3 adds one round trip (100 ms here), not {extra:?}"
    );
}
