//! Limits say so (issue 10 item 4), through the in-process library API on each I/O driver: an
//! open beyond the client's own `max_streams` fails at once from `Client::open_stream` with
//! [`STREAM_LIMIT_KIND`] and a [`StreamLimitError`] inside, and succeeds again once a stream is
//! released; an open beyond the server's `max_streams` fails the stream promptly with the same
//! kind instead of waiting. Every test runs under a watchdog and every read has a timeout.

mod runtime_support;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mtcpd_engine::runtime::{Client, MtcpStream, RuntimeOptions, Server, StreamFailure};
use mtcpd_engine::{STREAM_LIMIT_KIND, StreamLimitError};
use mtcpd_testkit::{Driver, driver_tests};

const T: Duration = Duration::from_secs(30);
/// Far below any timeout in the engine (connect_wait 5 s, the old silent wait: minutes).
const AT_ONCE: Duration = Duration::from_secs(2);
const LIMIT: u64 = 64;

driver_tests! {
    #[within(90)]
    fn open_beyond_max_streams_fails_at_once(io) { open_beyond_max_streams(io) }
    #[within(90)]
    fn open_beyond_the_peers_limit_fails_promptly(io) { open_beyond_peer_limit(io) }
}

fn opts(io: Driver, max_streams: Option<u64>) -> RuntimeOptions {
    let mut o = runtime_support::options(
        io,
        b"runtime-limits-test-key, 32 bytes at least",
        2,
        Duration::from_secs(2),
    );
    if let Some(n) = max_streams {
        o.engine.max_streams = n;
    }
    o
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Opens a stream, writes one byte and has the server accept it (so it is really open).
fn open_held(client: &Client, server: &Server) -> (MtcpStream, MtcpStream) {
    let mut s = client.open_stream(None).expect("an open under the limit");
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"x").unwrap();
    let mut a = server.accept_timeout(T).expect("accepted").stream;
    a.set_read_timeout(Some(T)).unwrap();
    let mut b = [0u8; 1];
    a.read_exact(&mut b).unwrap();
    (s, a)
}

fn limit_error(e: &io::Error) -> Option<StreamLimitError> {
    let inner = e.get_ref()?;
    inner
        .downcast_ref::<StreamLimitError>()
        .copied()
        .or_else(|| match inner.downcast_ref::<StreamFailure>() {
            Some(StreamFailure::Limit(l)) => Some(*l),
            _ => None,
        })
}

fn stop(server: Server, client: Client) {
    client.shutdown();
    server.shutdown();
    client.join();
    server.join();
}

fn open_beyond_max_streams(io: Driver) {
    let server = Server::accept_all(opts(io, None), any_port()).unwrap();
    let client = Client::start(opts(io, Some(LIMIT)), server.local_addr()).unwrap();
    let mut held: Vec<_> = (0..LIMIT).map(|_| open_held(&client, &server)).collect();

    let t0 = Instant::now();
    let e = client
        .open_stream(None)
        .expect_err("the open beyond max_streams");
    let took = t0.elapsed();
    assert!(took < AT_ONCE, "refused after {took:?}");
    assert_eq!(e.kind(), STREAM_LIMIT_KIND);
    assert_eq!(e.kind(), io::ErrorKind::QuotaExceeded);
    assert_eq!(limit_error(&e), Some(StreamLimitError::Local(LIMIT)));
    assert_eq!(
        e.to_string(),
        format!("stream limit reached: max_streams {LIMIT}")
    );

    // Close one (both directions end), and an open succeeds again.
    let (mut s, mut a) = held.pop().unwrap();
    s.shutdown_write().unwrap();
    let mut rest = Vec::new();
    a.read_to_end(&mut rest).unwrap();
    drop(a);
    assert_eq!(s.read(&mut [0u8; 8]).unwrap(), 0);
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.open_stream(None) {
            Ok(mut s) => {
                // Really carried: the server gets it and its byte.
                s.write_all(b"y").unwrap();
                let mut a = server
                    .accept_timeout(T)
                    .expect("the new stream accepted")
                    .stream;
                a.set_read_timeout(Some(T)).unwrap();
                let mut b = [0u8; 1];
                a.read_exact(&mut b).unwrap();
                assert_eq!(&b, b"y");
                break;
            }
            Err(e) if e.kind() == STREAM_LIMIT_KIND && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("the open after a close: {e}"),
        }
    }
    drop(held);
    stop(server, client);
}

fn open_beyond_peer_limit(io: Driver) {
    let server = Server::accept_all(opts(io, Some(8)), any_port()).unwrap();
    let client = Client::start(opts(io, None), server.local_addr()).unwrap();
    let held: Vec<_> = (0..8).map(|_| open_held(&client, &server)).collect();

    // The client's own limit is far away: the open returns, and the stream fails as soon as
    // the loop sees the server allows no more, rather than waiting for a grant.
    let t0 = Instant::now();
    let mut s = client.open_stream(None).expect("open returns");
    s.set_read_timeout(Some(T)).unwrap();
    let e = s
        .read(&mut [0u8; 8])
        .expect_err("a stream beyond the peer's limit");
    let took = t0.elapsed();
    assert!(took < AT_ONCE, "failed after {took:?}");
    assert_eq!(e.kind(), STREAM_LIMIT_KIND, "{e}");
    assert_eq!(limit_error(&e), Some(StreamLimitError::Peer));
    assert!(server.try_accept().unwrap().is_none());
    drop(s);
    drop(held);
    stop(server, client);
}
