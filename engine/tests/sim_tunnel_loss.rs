//! Losing tunnels loses no data; losing all of them for longer than the grace period closes the
//! session with a clear error, and nothing hangs.

mod support;

use std::time::Duration;

use mtcpd_engine::Config;
use mtcpd_engine::error::{SessionError, TunnelError};
use mtcpd_engine::session::Event;
use mtcpd_engine::sim::{LinkSpec, Side, SimPair};
use support::{FlowSpec, Workload};

const MIB: u64 = 1 << 20;

fn config() -> Config {
    Config {
        psk: b"k".to_vec(),
        ..Config::default()
    }
}

fn links() -> Vec<LinkSpec> {
    (0..8).map(|i| LinkSpec::new(5 + 5 * i, 100.0)).collect()
}

/// Sends 64 MiB up and 8 MiB down; when the server has 32 MiB, `fault` runs once.
fn transfer_with_fault(mut fault: impl FnMut(&mut SimPair)) -> (SimPair, Workload) {
    let mut pair = SimPair::new(config(), config(), &links(), 7);
    let mut w = Workload::new(vec![FlowSpec::bulk(64 * MIB, 8 * MIB)]);
    let mut fired = false;
    let done = pair.run(Duration::from_secs(600), |p| {
        if !fired && w.server_received(0) >= 32 * MIB {
            fired = true;
            fault(p);
        }
        w.step(p)
    });
    assert!(fired, "the fault never fired");
    assert!(done, "transfer did not finish: {:?}", w.errors);
    w.verify().unwrap();
    (pair, w)
}

fn resent(pair: &SimPair) -> u64 {
    pair.client.stats().frames_resent + pair.server().map_or(0, |s| s.stats().frames_resent)
}

#[test]
fn killing_one_of_eight_tunnels_mid_transfer_loses_nothing() {
    let (pair, _) = transfer_with_fault(|p| p.kill(3));
    assert!(
        resent(&pair) > 0,
        "the killed tunnel had frames in flight to resend"
    );
    let downs = pair
        .log
        .iter()
        .filter(|(s, e)| *s == Side::Client && matches!(e, Event::TunnelDown { tunnel: 3, .. }))
        .count();
    assert_eq!(downs, 1);
    // The client re-dialed the slot.
    let ups = pair
        .log
        .iter()
        .filter(|(s, e)| *s == Side::Client && matches!(e, Event::TunnelUp { tunnel: 3, .. }))
        .count();
    assert_eq!(ups, 2, "tunnel 3 came up, died, and came up again");
}

#[test]
fn cutting_seven_of_eight_tunnels_mid_transfer_loses_nothing() {
    let (pair, _) = transfer_with_fault(|p| {
        for t in 1..8 {
            p.cut(t);
        }
    });
    assert!(resent(&pair) > 0);
    assert_eq!(pair.client.stats().active_tunnels, 1);
}

#[test]
fn stalled_tunnel_is_declared_dead_and_its_frames_resent() {
    let cfg = Config {
        tunnel_idle_timeout: Duration::from_secs(2),
        keepalive_interval: Duration::from_millis(500),
        ..config()
    };
    let mut pair = SimPair::new(cfg.clone(), cfg, &links(), 9);
    let mut w = Workload::new(vec![FlowSpec::bulk(32 * MIB, 0)]);
    let mut fired = false;
    let done = pair.run(Duration::from_secs(600), |p| {
        if !fired && w.server_received(0) >= 8 * MIB {
            fired = true;
            let until = p.now + Duration::from_secs(3600);
            p.stall(2, until);
        }
        w.step(p)
    });
    assert!(done, "{:?}", w.errors);
    w.verify().unwrap();
    // A stalled tunnel both receives nothing and acknowledges nothing: whichever timeout of the
    // two comes first (the oldest frame in flight usually predates the last one received).
    assert!(pair.log.iter().any(|(_, e)| matches!(
        e,
        Event::TunnelDown {
            tunnel: 2,
            reason: TunnelError::IdleTimeout(_) | TunnelError::Unacknowledged(_)
        }
    )));
}

#[test]
fn all_tunnels_dead_beyond_grace_closes_the_session_on_both_sides() {
    let cfg = Config {
        session_grace: Duration::from_secs(5),
        tunnel_idle_timeout: Duration::from_secs(2),
        keepalive_interval: Duration::from_millis(500),
        ..config()
    };
    let mut pair = SimPair::new(cfg.clone(), cfg, &links(), 11);
    let mut w = Workload::new(vec![FlowSpec::bulk(64 * MIB, 0)]);
    let mut fired = false;
    // Finishes when both sessions report closure; bounded by virtual time.
    let finished = pair.run(Duration::from_secs(120), |p| {
        if !fired && w.server_received(0) >= 4 * MIB {
            fired = true;
            for t in 0..8 {
                p.cut(t);
            }
        }
        w.step(p);
        p.client.is_closed() && server_close_reason(p).is_some()
    });
    assert!(finished, "sessions did not close");
    let grace = Duration::from_secs(5);
    assert_eq!(
        pair.client.close_reason(),
        Some(&SessionError::AllTunnelsLost(grace))
    );
    // The server removed its closed session, as the daemon does; its event says why.
    assert!(pair.server().is_none());
    assert_eq!(
        server_close_reason(&pair),
        Some(SessionError::AllTunnelsLost(grace))
    );
    assert!(
        pair.elapsed() < Duration::from_secs(30),
        "closed about one grace period after the cut"
    );
    // The closed session refuses work with a clear error instead of hanging.
    assert!(pair.client.open_stream(None).is_err());
    assert_eq!(pair.client.poll_timeout(), None);
}

#[test]
fn server_down_at_start_client_retries_with_backoff_then_works() {
    let mut pair = SimPair::new(config(), config(), &links()[..2], 13);
    pair.set_server_up(false);
    let mut w = Workload::new(vec![FlowSpec::bulk(MIB, MIB)]);
    // Ten seconds with the server down: dials fail, nothing is established.
    assert!(!pair.run(Duration::from_secs(10), |p| w.step(p)));
    let dials = pair
        .log
        .iter()
        .filter(|(_, e)| matches!(e, Event::Dial { .. }))
        .count();
    assert!(dials > 4, "re-dialed: {dials}");
    assert!(dials < 60, "backoff keeps re-dials sparse: {dials}");
    pair.set_server_up(true);
    assert!(
        pair.run(Duration::from_secs(60), |p| w.step(p)),
        "{:?}",
        w.errors
    );
    w.verify().unwrap();
}

#[test]
fn server_restart_mid_session_is_reported_as_session_lost() {
    let mut pair = SimPair::new(config(), config(), &links()[..2], 17);
    let mut w = Workload::new(vec![FlowSpec::bulk(8 * MIB, 0)]);
    let mut fired = false;
    let finished = pair.run(Duration::from_secs(120), |p| {
        if !fired && w.server_received(0) >= MIB {
            fired = true;
            p.set_server_up(false);
            p.set_server_up(true);
        }
        w.step(p);
        p.client.is_closed()
    });
    assert!(finished);
    assert_eq!(pair.client.close_reason(), Some(&SessionError::SessionLost));
}

/// Why the server's session closed, from its `SessionClosed` event.
fn server_close_reason(pair: &SimPair) -> Option<SessionError> {
    pair.log.iter().find_map(|(side, ev)| match (side, ev) {
        (Side::Server, Event::SessionClosed { reason }) => Some(reason.clone()),
        _ => None,
    })
}
