//! Server-opened streams (what a reverse tunnel carries) over the simulated network: ordering
//! and integrity both ways, tunnel loss, resets from either end, the client's stream limit, and
//! the client's EXPOSE announcement.

mod support;

use std::time::Duration;

use mtcpd_engine::Config;
use mtcpd_engine::StreamError;
use mtcpd_engine::session::Event;
use mtcpd_engine::sim::{LinkSpec, Side, SimPair};
use support::{FlowSpec, Workload};

fn keyed() -> Config {
    Config {
        psk: b"correct horse battery staple".to_vec(),
        ..Config::default()
    }
}

fn four_links() -> [LinkSpec; 4] {
    [
        LinkSpec::new(5, 100.0),
        LinkSpec::new(20, 50.0),
        LinkSpec::new(40, 20.0),
        LinkSpec::new(10, 100.0),
    ]
}

#[test]
fn a_server_opened_stream_carries_both_directions_in_order() {
    let mut pair = SimPair::new(keyed(), keyed(), &four_links(), 11);
    let mut spec = FlowSpec::server_opened(3 << 20, 2 << 20);
    spec.target = Some("web".into());
    let mut w = Workload::new(vec![spec, FlowSpec::bulk(1 << 20, 1 << 20)]);
    let done = pair.run(Duration::from_secs(60), |p| w.step(p));
    assert!(done, "not finished: {:?}", w.errors);
    w.verify().unwrap();
    // The server's stream has the server's parity (odd), the client's the client's (even).
    assert_eq!(w.stream_of(0).map(|id| id & 1), Some(1));
    assert_eq!(w.stream_of(1).map(|id| id & 1), Some(0));
    assert!(pair.log.iter().any(|(side, e)| *side == Side::Client
        && matches!(e, Event::StreamOpened { target: Some(t), .. } if t == "web")));
}

#[test]
fn server_opened_streams_survive_tunnel_loss() {
    let mut pair = SimPair::new(keyed(), keyed(), &four_links(), 12);
    let mut w = Workload::new(vec![
        FlowSpec::server_opened(4 << 20, 4 << 20),
        FlowSpec::server_opened(1 << 20, 0),
    ]);
    let mut killed = false;
    let done = pair.run(Duration::from_secs(120), |p| {
        // Mid-transfer, two tunnels die; their unacknowledged frames go on the others.
        if !killed && w.client_received(0) > (1 << 20) {
            p.kill(0);
            p.kill(2);
            killed = true;
        }
        w.step(p)
    });
    assert!(done, "not finished: {:?}", w.errors);
    assert!(killed, "the tunnels were killed mid-transfer");
    w.verify().unwrap();
    assert!(pair.server().unwrap().stats().frames_resent > 0);
}

#[test]
fn server_opened_streams_reset_by_either_end_leave_exact_prefixes() {
    let mut pair = SimPair::new(keyed(), keyed(), &four_links(), 13);
    let mut by_client = FlowSpec::server_opened(1 << 20, 1 << 20);
    by_client.reset = Some((Side::Client, 100_000));
    let mut by_server = FlowSpec::server_opened(1 << 20, 1 << 20);
    by_server.reset = Some((Side::Server, 200_000));
    let mut w = Workload::new(vec![
        by_client,
        by_server,
        FlowSpec::server_opened(5000, 7000),
    ]);
    let done = pair.run(Duration::from_secs(60), |p| w.step(p));
    assert!(done, "not finished: {:?}", w.errors);
    w.verify().unwrap();
    let resets_seen = |side| {
        pair.log
            .iter()
            .filter(|(s, e)| *s == side && matches!(e, Event::StreamReset { code: 42, .. }))
            .count()
    };
    // The server resets its stream in the same step it opened it, so the RESET may overtake the
    // OPEN: then the client never sees the stream at all (PROTOCOL.md §4.6).
    assert!(resets_seen(Side::Client) <= 1);
    assert_eq!(
        resets_seen(Side::Server),
        1,
        "the client's reset reached the server"
    );
    assert!(!pair.client.is_closed());
}

#[test]
fn the_server_opens_no_more_streams_than_the_client_allows() {
    // The client accepts 2 streams at a time: the server's third open waits for MAX_STREAMS.
    let client = Config {
        max_streams: 2,
        ..keyed()
    };
    let mut pair = SimPair::new(client, keyed(), &[LinkSpec::new(5, 100.0)], 14);
    assert!(pair.run(Duration::from_secs(10), |p| p.server().is_some()));
    let server = pair.server_mut().unwrap();
    let first = server.open_stream(Some("web")).unwrap();
    let second = server.open_stream(Some("web")).unwrap();
    assert_eq!(
        server.open_stream(Some("web")),
        Err(StreamError::StreamLimit)
    );
    // Once the client has closed one, the server may open another.
    for id in [first, second] {
        server.shutdown(id).unwrap();
    }
    let mut opened = None;
    let done = pair.run(Duration::from_secs(10), |p| {
        for (side, e) in p.events.drain(..).collect::<Vec<_>>() {
            if side == Side::Client
                && let Event::StreamOpened { stream, .. } = e
            {
                let _ = p.client.shutdown(stream);
            }
            if side == Side::Client
                && let Event::StreamReadable { stream } = e
            {
                while let Ok(mtcpd_engine::ReadOutcome::Data(_)) = p.client.read(stream, 1 << 16) {}
            }
        }
        opened = p.server_mut().and_then(|s| s.open_stream(Some("web")).ok());
        opened.is_some()
    });
    assert!(
        done,
        "the client's MAX_STREAMS let the server open a third stream"
    );
    assert_eq!(opened.map(|id| id >> 1), Some(2), "index 2, the third");
}

#[test]
fn many_server_opened_streams_with_small_windows() {
    let small = Config {
        stream_window: 16 * 1024,
        session_window: 48 * 1024,
        stream_send_buffer: 8 * 1024,
        max_frame_payload: 1024,
        max_streams: 3,
        ..keyed()
    };
    let links = [LinkSpec::new(5, 50.0), LinkSpec::new(30, 20.0)];
    let mut pair = SimPair::new(small.clone(), small, &links, 15);
    let flows = (0..12)
        .map(|i| {
            if i % 3 == 0 {
                FlowSpec::bulk(50_000, 20_000)
            } else {
                FlowSpec::server_opened(30_000 + i * 1000, 60_000)
            }
        })
        .collect();
    let mut w = Workload::new(flows);
    let done = pair.run(Duration::from_secs(120), |p| w.step(p));
    assert!(done, "not finished: {:?}", w.errors);
    w.verify().unwrap();
}

#[test]
fn the_server_learns_the_exposed_names_once_even_across_tunnel_loss() {
    let links = [LinkSpec::new(5, 100.0), LinkSpec::new(5, 100.0)];
    let mut pair = SimPair::new(keyed(), keyed(), &links, 16);
    pair.client.expose(&["web", "ssh"]).unwrap();
    let exposed = |p: &SimPair| {
        p.log
            .iter()
            .filter(|(s, e)| *s == Side::Server && matches!(e, Event::PeerExposed { .. }))
            .count()
    };
    assert!(pair.run(Duration::from_secs(10), |p| exposed(p) == 1));
    assert_eq!(pair.server().unwrap().peer_exposed(), ["web", "ssh"]);
    // The tunnel that carried it dies before anything is acknowledged: a resend, no new event.
    pair.kill(0);
    pair.kill(1);
    pair.run(Duration::from_secs(5), |_| false);
    assert_eq!(exposed(&pair), 1);
    // A new set replaces the old one.
    pair.client.expose(&["web"]).unwrap();
    assert!(pair.run(Duration::from_secs(10), |p| exposed(p) == 2));
    assert_eq!(pair.server().unwrap().peer_exposed(), ["web"]);
    assert!(pair.log.iter().any(|(s, e)| *s == Side::Server
        && *e
            == Event::PeerExposed {
                names: vec!["web".into()]
            }));
    // Only a client exposes, and only good names.
    assert!(pair.server_mut().unwrap().expose(&["web"]).is_err());
    assert!(pair.client.expose(&["no spaces"]).is_err());
    assert!(!pair.client.is_closed());
}

#[test]
fn exposing_dials_a_client_whose_zero_rtt_is_off() {
    let lazy = Config {
        zero_rtt: false,
        ..keyed()
    };
    let mut pair = SimPair::new(lazy, keyed(), &[LinkSpec::new(5, 100.0)], 17);
    // Nothing dials while nothing is wanted...
    pair.run(Duration::from_secs(2), |_| false);
    assert!(
        pair.server().is_none(),
        "a lazy client dialed with nothing to do"
    );
    // ...but a client that exposes services must be reachable.
    pair.client.expose(&["web"]).unwrap();
    assert!(pair.run(Duration::from_secs(10), |p| {
        p.server().is_some_and(|s| s.peer_exposed() == ["web"])
    }));
}
