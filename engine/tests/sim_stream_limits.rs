//! An opener's own stream limit over the simulated network: a session keeps at most its own
//! `max_streams` streams it opened, refuses the next at once (`LocalStreamLimit`, never queued),
//! and opens again once one of them is forgotten.

use std::time::Duration;

use mtcpd_engine::session::Event;
use mtcpd_engine::sim::{LinkSpec, Side, SimPair};
use mtcpd_engine::{Config, ReadOutcome, StreamError};

fn keyed() -> Config {
    Config {
        psk: b"correct horse battery staple".to_vec(),
        ..Config::default()
    }
}

#[test]
fn the_client_opens_no_more_streams_than_its_own_max_streams() {
    // The server would allow 131072; the client caps itself at 2.
    let client = Config {
        max_streams: 2,
        ..keyed()
    };
    let mut pair = SimPair::new(client, keyed(), &[LinkSpec::new(5, 100.0)], 7);
    assert!(pair.run(Duration::from_secs(10), |p| p.server().is_some()
        && p.client.is_established()));
    let first = pair.client.open_stream(None).unwrap();
    let second = pair.client.open_stream(None).unwrap();
    assert_eq!(
        pair.client.open_stream(None),
        Err(StreamError::LocalStreamLimit(2))
    );
    assert_eq!(
        StreamError::LocalStreamLimit(2).to_string(),
        "stream limit reached: max_streams 2"
    );
    // Both ends finish the first; once the client forgets it, a third opens.
    pair.client.shutdown(first).unwrap();
    let mut opened = None;
    let done = pair.run(Duration::from_secs(10), |p| {
        for (side, e) in p.events.drain(..).collect::<Vec<_>>() {
            match (side, e) {
                (Side::Server, Event::StreamOpened { stream, .. }) if stream == first => {
                    let _ = p.server_mut().map(|s| s.shutdown(stream));
                }
                (Side::Server, Event::StreamReadable { stream }) => {
                    if let Some(s) = p.server_mut() {
                        while let Ok(ReadOutcome::Data(_)) = s.read(stream, 1 << 16) {}
                    }
                }
                (Side::Client, Event::StreamReadable { stream }) => {
                    while let Ok(ReadOutcome::Data(_)) = p.client.read(stream, 1 << 16) {}
                }
                _ => {}
            }
        }
        opened = p.client.open_stream(None).ok();
        opened.is_some()
    });
    assert!(
        done,
        "the client opened again after one of its streams closed"
    );
    assert_ne!(opened, Some(second));
}
