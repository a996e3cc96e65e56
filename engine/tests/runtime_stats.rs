//! The library's stats snapshot (`Client::stats`, `Server::stats`) after a transfer of known
//! size on each I/O driver: sessions, tunnels up with TCP_INFO, bytes each way, counters, and a
//! stopped runtime answering at once with every worker missing.

mod runtime_support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mtcpd_engine::runtime::stats::RuntimeStats;
use mtcpd_engine::runtime::{Client, RuntimeOptions, Server};
use mtcpd_testkit::{Driver, driver_tests};

const T: Duration = Duration::from_secs(30);
const POOL: u16 = 4;
const SIZE: usize = 3 * 1024 * 1024 + 17;

driver_tests! {
    #[within(90)]
    fn stats_after_a_known_transfer(io) { stats_after_a_known_transfer(io) }
}

fn opts(io: Driver) -> RuntimeOptions {
    runtime_support::options(
        io,
        b"runtime-stats-test-key, 32 bytes at least",
        POOL,
        Duration::from_secs(2),
    )
}

/// Polls `stats` until `done` holds (tunnels come up and counters settle asynchronously).
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

fn stats_after_a_known_transfer(io: Driver) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = Server::accept_all(opts(io), any).unwrap();
    let client = Client::start(opts(io), server.local_addr()).unwrap();
    let mut stream = client.open_stream(None).unwrap();
    stream.set_read_timeout(Some(T)).unwrap();
    let accepted = server.accept_timeout(T).unwrap();
    // The server sends back one byte per 64 received.
    let echo = std::thread::spawn(move || {
        let mut s = accepted.stream;
        s.set_read_timeout(Some(T)).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(&got[..got.len() / 64]).unwrap();
        s.shutdown_write().unwrap();
        got.len()
    });
    stream.write_all(&vec![0x5a; SIZE]).unwrap();
    stream.shutdown_write().unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).unwrap();
    assert_eq!(echo.join().unwrap(), SIZE);
    assert_eq!(back.len(), SIZE / 64);
    drop(stream);

    let c = wait_for(
        || client.stats(),
        |s| s.tunnels_up() == POOL as usize && s.streams() == 0,
    );
    assert_eq!(c.io, io.name());
    assert_eq!((c.workers, c.workers_missing), (1, 0));
    assert_eq!(c.sessions.len(), 1, "{c:#?}");
    assert_eq!(c.tunnels_up(), POOL as usize, "{c:#?}");
    assert_eq!(c.counters.streams_opened, 1);
    assert_eq!(c.counters.stream_bytes_to_peer, SIZE as u64);
    assert_eq!(c.counters.stream_bytes_from_peer, (SIZE / 64) as u64);
    let session = &c.sessions[0];
    assert_eq!(session.id.len(), 12);
    let sent: u64 = session.tunnels.iter().map(|t| t.sent_bytes).sum();
    assert!(
        sent > SIZE as u64,
        "frames carry the bytes plus headers: {sent}"
    );
    for t in &session.tunnels {
        assert!(t.up && t.peer == Some(server.local_addr()), "{t:?}");
        let tcp = t.tcp.as_ref().expect("TCP_INFO of a live tunnel");
        assert!(tcp.rtt > Duration::ZERO && tcp.cwnd_segments > 0, "{tcp:?}");
    }

    let s = wait_for(
        || server.stats(),
        |s| s.counters.stream_bytes_to_peer == (SIZE / 64) as u64 && s.streams() == 0,
    );
    assert_eq!(s.io, io.name());
    assert_eq!(s.sessions.len(), 1);
    assert_eq!(
        s.sessions[0].id, session.id,
        "both ends name the session alike"
    );
    assert_eq!(s.counters.streams_opened, 1);
    assert_eq!(s.counters.stream_bytes_from_peer, SIZE as u64);
    assert_eq!(s.counters.stream_bytes_to_peer, (SIZE / 64) as u64);
    assert!(s.counters.handshakes_rejected.is_empty(), "{s:?}");
    let received: u64 = s.sessions[0].tunnels.iter().map(|t| t.received_bytes).sum();
    assert!(
        received > SIZE as u64,
        "the server read the frames: {received}"
    );

    // A stopped runtime: nobody answers, and the probe says so without waiting.
    let probe = client.runtime().stats_probe();
    client.shutdown();
    client.join();
    let started = Instant::now();
    let gone = probe.snapshot(Duration::from_secs(5));
    assert_eq!(gone.workers_missing, 1);
    assert!(started.elapsed() < Duration::from_secs(1));
}
