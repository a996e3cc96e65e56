//! A client given several servers (`Client::start_with_servers`), on each I/O driver: a first
//! address that refuses is left for the next, whose session carries a stream (checksummed both
//! ways); and when the server of a working session goes away, the client's next session is
//! served by the other server, every tunnel of it there, and new streams carry bytes; a first
//! server that refuses the client's key is left for the next after the refusal's wait.

mod runtime_support;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use mtcpd_engine::runtime::stats::RuntimeStats;
use mtcpd_engine::runtime::{Client, RuntimeOptions, Server};
use mtcpd_testkit::pattern::{read_to_end_checksum, write_pattern};
use mtcpd_testkit::{Driver, driver_tests};

const T: Duration = Duration::from_secs(30);
const POOL: u16 = 4;
const SIZE: u64 = 2 * 1024 * 1024 + 5;

driver_tests! {
    #[within(90)]
    fn a_dead_first_server_is_left_for_the_next(io) { dead_first_server(io) }
    #[within(90)]
    fn a_session_whose_server_went_away_moves_to_the_next(io) { server_goes_away(io) }
    #[within(90)]
    fn a_server_that_refuses_the_key_is_left_for_the_next(io) { refusing_first_server(io) }
}

fn opts(io: Driver) -> RuntimeOptions {
    let mut o = runtime_support::options(
        io,
        b"runtime-failover-test-key, 32 bytes at least",
        POOL,
        Duration::from_millis(500),
    );
    o.engine.session_grace = Duration::from_secs(1);
    o
}

/// An address nothing listens on (bound once to pick it, then closed: connections are refused).
fn dead_address() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Polls `stats` until `done` holds or the deadline passes.
fn wait_for(
    stats: impl Fn() -> RuntimeStats,
    done: impl Fn(&RuntimeStats) -> bool,
) -> RuntimeStats {
    let deadline = Instant::now() + T;
    loop {
        let s = stats();
        if done(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The client's tunnels that are up, and their peers.
fn peers_up(s: &RuntimeStats) -> Vec<Option<SocketAddr>> {
    s.sessions
        .iter()
        .flat_map(|session| session.tunnels.iter())
        .filter(|t| t.up)
        .map(|t| t.peer)
        .collect()
}

/// Every tunnel of the client's one session is up and goes to `server`.
fn all_tunnels_on(s: &RuntimeStats, server: SocketAddr) -> bool {
    let peers = peers_up(s);
    s.sessions.len() == 1
        && peers.len() == usize::from(POOL)
        && peers.iter().all(|p| *p == Some(server))
}

/// One stream through `client` to `server`: `SIZE` pattern bytes up, half as many down, both
/// checksummed.
fn transfer(client: &Client, server: &Server, seed: u64) {
    let mut stream = client.open_stream(None).unwrap();
    stream.set_read_timeout(Some(T)).unwrap();
    let accepted = server
        .accept_timeout(T)
        .expect("the server takes the stream");
    let far = std::thread::spawn(move || {
        let mut s = accepted.stream;
        s.set_read_timeout(Some(T)).unwrap();
        let got = read_to_end_checksum(&mut s).unwrap();
        let sent = write_pattern(&mut s, seed + 1, SIZE / 2).unwrap();
        s.shutdown_write().unwrap();
        (got, sent)
    });
    let up = write_pattern(&mut stream, seed, SIZE).unwrap();
    stream.shutdown_write().unwrap();
    let down = read_to_end_checksum(&mut stream).unwrap();
    let (got, sent) = far.join().unwrap();
    assert_eq!((got.len(), got.digest()), (SIZE, up), "bytes up");
    assert_eq!((down.len(), down.digest()), (SIZE / 2, sent), "bytes down");
}

fn dead_first_server(io: Driver) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let live = Server::accept_all(opts(io), any).unwrap();
    let dead = dead_address();
    let client = Client::start_with_servers(opts(io), &[dead, live.local_addr()]).unwrap();
    transfer(&client, &live, 11);
    let s = wait_for(|| client.stats(), |s| all_tunnels_on(s, live.local_addr()));
    assert!(all_tunnels_on(&s, live.local_addr()), "{s:#?}");
    let l = live.stats();
    assert_eq!(l.sessions.len(), 1, "{l:#?}");
}

fn server_goes_away(io: Driver) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let first = Server::accept_all(opts(io), any).unwrap();
    let second = Server::accept_all(opts(io), any).unwrap();
    let (a, b) = (first.local_addr(), second.local_addr());
    let client = Client::start_with_servers(opts(io), &[a, b]).unwrap();
    transfer(&client, &first, 21);
    let s = wait_for(|| client.stats(), |s| all_tunnels_on(s, a));
    assert!(
        all_tunnels_on(&s, a),
        "the first server serves first: {s:#?}"
    );
    assert!(
        second.stats().sessions.is_empty(),
        "nothing on the second yet"
    );

    // The first server goes away (its listener closes; the session ends with it).
    first.shutdown();
    first.join();
    let s = wait_for(|| client.stats(), |s| all_tunnels_on(s, b));
    assert!(
        all_tunnels_on(&s, b),
        "the next session is on the second server: {s:#?}"
    );
    let on_b = wait_for(
        || second.stats(),
        |s| s.sessions.len() == 1 && s.tunnels_up() == usize::from(POOL),
    );
    assert_eq!(on_b.sessions.len(), 1, "{on_b:#?}");
    assert_eq!(on_b.tunnels_up(), usize::from(POOL), "{on_b:#?}");
    transfer(&client, &second, 31);
    transfer(&client, &second, 41);
}

fn refusing_first_server(io: Driver) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut other_key = opts(io);
    other_key.engine.psk = b"another key entirely, also 32 bytes or more".to_vec();
    let refusing = Server::accept_all(other_key, any).unwrap();
    let live = Server::accept_all(opts(io), any).unwrap();
    let client =
        Client::start_with_servers(opts(io), &[refusing.local_addr(), live.local_addr()]).unwrap();
    let s = wait_for(|| client.stats(), |s| all_tunnels_on(s, live.local_addr()));
    assert!(all_tunnels_on(&s, live.local_addr()), "{s:#?}");
    let r = refusing.stats();
    assert!(r.sessions.is_empty(), "{r:#?}");
    assert!(
        !r.counters.handshakes_rejected.is_empty(),
        "it was tried: {r:#?}"
    );
    transfer(&client, &live, 51);
}
