//! A client the server refuses for good (wrong key, no key) over the simulated network: it is
//! replaced as the daemon replaces it, but each new session waits longer (1 s, doubling, up to
//! `refused_backoff_max`), and the refusal is reported as news once.

use std::time::Duration;

use mtcpd_engine::Config;
use mtcpd_engine::endpoint::{Refusal, RefusalReport};
use mtcpd_engine::session::Event;
use mtcpd_engine::sim::{LinkSpec, Side, SimPair};

const LINKS: [LinkSpec; 2] = [
    LinkSpec {
        delay: Duration::from_millis(10),
        rate: 12.5e6,
        buffer: 64 * 1024,
    },
    LinkSpec {
        delay: Duration::from_millis(15),
        rate: 12.5e6,
        buffer: 64 * 1024,
    },
];

fn keyed(key: &[u8]) -> Config {
    Config {
        psk: key.to_vec(),
        ..Config::default()
    }
}

fn dials(pair: &SimPair) -> usize {
    pair.log
        .iter()
        .filter(|(side, ev)| *side == Side::Client && matches!(ev, Event::Dial { .. }))
        .count()
}

/// Runs a refused client for a minute of virtual time.
fn refused_for_a_minute(client: Config, server: Config) -> SimPair {
    let mut pair = SimPair::new(client, server, &LINKS, 11);
    pair.restart_closed_client();
    pair.run(Duration::from_secs(60), |_| false);
    pair
}

#[test]
fn a_wrong_key_backs_off_and_is_reported_once() {
    let pair = refused_for_a_minute(
        keyed(b"the client's key, 32 bytes long!"),
        keyed(b"the server's key, 32 bytes long!"),
    );
    // Re-dialing at once would refuse a session every round trip (about 3 000 in a minute);
    // waiting 1 s, 2 s, 4 s … leaves about six.
    let sessions = pair.refusals.len();
    assert!((4..=8).contains(&sessions), "{sessions} refused sessions");
    assert!(
        dials(&pair) <= LINKS.len() * (sessions + 1),
        "{} dials for {sessions} sessions",
        dials(&pair)
    );
    for (i, refused) in pair.refusals.iter().enumerate() {
        assert_eq!(refused.refusal, Refusal::KeyRejected);
        assert_eq!(refused.in_a_row as usize, i + 1);
        let expected = if i == 0 {
            RefusalReport::First
        } else {
            RefusalReport::Repeated
        };
        assert_eq!(refused.report, expected, "refusal {i}");
        let ceiling = Duration::from_secs(1 << i);
        assert!(
            refused.retry_in >= ceiling / 2 && refused.retry_in <= ceiling,
            "refusal {i}: retry in {:?}",
            refused.retry_in
        );
    }
}

#[test]
fn a_client_without_a_key_learns_the_server_requires_one() {
    let pair = refused_for_a_minute(
        Config::default(),
        keyed(b"the server's key, 32 bytes long!"),
    );
    let first = pair.refusals.first().expect("refused");
    assert_eq!(first.refusal, Refusal::KeyRequired);
    assert_eq!(first.report, RefusalReport::First);
}

#[test]
fn the_wait_stops_growing_at_refused_backoff_max_and_summaries_come_every_ten_minutes() {
    let mut client = keyed(b"the client's key, 32 bytes long!");
    client.refused_backoff_max = Duration::from_secs(30);
    let mut pair = SimPair::new(
        client,
        keyed(b"the server's key, 32 bytes long!"),
        &LINKS,
        5,
    );
    pair.restart_closed_client();
    pair.run(Duration::from_secs(3600), |_| false);
    let longest = pair.refusals.iter().map(|r| r.retry_in).max();
    assert!(longest.is_some_and(|d| d <= Duration::from_secs(30)));
    // At 15..30 s per attempt, an hour holds 120 to 240 refusals …
    let n = pair.refusals.len();
    assert!((100..=250).contains(&n), "{n} refusals in an hour");
    // … but only one error and one summary per ten minutes.
    let loud: Vec<_> = pair
        .refusals
        .iter()
        .filter(|r| r.report != RefusalReport::Repeated)
        .collect();
    assert_eq!(loud[0].report, RefusalReport::First);
    assert!((5..=7).contains(&loud.len()), "{} reports", loud.len());
    let counted: u32 = loud
        .iter()
        .skip(1)
        .map(|r| match r.report {
            RefusalReport::StillRefused { since_last_report } => since_last_report,
            other => panic!("{other:?}"),
        })
        .sum();
    let last_loud = pair
        .refusals
        .iter()
        .rposition(|r| r.report != RefusalReport::Repeated)
        .unwrap_or(0);
    assert_eq!(counted as usize, last_loud, "summaries count every refusal");
}

#[test]
fn a_client_with_the_right_key_is_not_refused() {
    let key = b"the same key on both, 32 bytes!!";
    let mut pair = SimPair::new(keyed(key), keyed(key), &LINKS, 3);
    pair.restart_closed_client();
    pair.run(Duration::from_secs(5), |_| false);
    assert!(pair.refusals.is_empty());
    assert!(pair.client.is_established());
    assert_eq!(dials(&pair), LINKS.len());
}
