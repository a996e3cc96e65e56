//! What an idle in-process stream costs in memory, measured: a counting global allocator (this
//! test binary only) sees every heap byte the client and the server runtimes and the
//! application objects hold for 10,000 idle streams (both ends, the sessions' stream state
//! included), on each I/O driver. Only this scenario is in this binary, and its runs take turns
//! (a lock), so nothing else allocates meanwhile.

use mtcpd_testkit::alloc::{CountingAlloc, live_bytes};
use std::sync::Mutex;
use std::time::Duration;

use mtcpd_engine::runtime::{Client, RuntimeOptions, Server};
use mtcpd_testkit::{Driver, driver_tests};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Held while measuring: the two drivers' runs must not overlap.
static MEASURING: Mutex<()> = Mutex::new(());

fn opts(io: Driver) -> RuntimeOptions {
    let mut o = RuntimeOptions {
        // The kit's driver names are the engine's `IoChoice` names.
        io: io.name().parse().expect("a driver name"),
        drain_timeout: Duration::from_secs(2),
        ..RuntimeOptions::default()
    };
    o.engine.psk = b"runtime-api-memory-test, 32 bytes or more".to_vec();
    o.engine.pool_size = 4;
    o.tunnel_sockets.congestion = None;
    o
}

driver_tests! {
    #[within(120)]
    fn idle_in_process_stream_footprint(io) {
        let _alone = MEASURING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        idle_in_process_stream_footprint(io);
    }
}

fn idle_in_process_stream_footprint(io: Driver) {
    const STREAMS: usize = 10_000;
    let server = Server::accept_all(opts(io), "127.0.0.1:0".parse().unwrap()).unwrap();
    let client = Client::start(opts(io), server.local_addr()).unwrap();
    let timeout = Duration::from_secs(30);
    let mut held = Vec::with_capacity(2 * (STREAMS + 100));
    let open = |n: usize, held: &mut Vec<_>| {
        for _ in 0..n {
            held.push(client.open_stream(None).unwrap());
        }
        for _ in 0..n {
            held.push(server.accept_timeout(timeout).unwrap().stream);
        }
    };
    // Warm up: tunnels, buffers and tables that do not grow per stream.
    open(100, &mut held);
    std::thread::sleep(Duration::from_millis(200));
    let before = live_bytes();
    open(STREAMS, &mut held);
    // Let acknowledgements settle.
    std::thread::sleep(Duration::from_millis(300));
    let after = live_bytes();
    let per_stream = (after - before) / STREAMS as isize;
    println!(
        "{io}: {STREAMS} idle in-process streams: {} bytes each, both ends together \
         (rings, shared state, loop entries, session stream state, maps)",
        per_stream
    );
    assert!(
        per_stream < 12 * 1024,
        "{io}: an idle stream costs {per_stream} bytes (both ends)"
    );
    drop(held);
    client.shutdown();
    server.shutdown();
    client.join();
    server.join();
}
