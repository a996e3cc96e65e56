//! What an idle in-process stream costs in memory, measured: a counting global allocator (this
//! test binary only) sees every heap byte the client and the server runtimes hold for 20,000
//! idle streams (both ends: the sessions' stream state, the loops' entries and maps, the shared
//! state and queues), plus the application's two `MtcpStream` objects, on each I/O driver. The
//! budget is issue 10's: at most 1 KiB per end, 2 KiB for client and server together
//! (docs/ARCHITECTURE.md, "Memory per idle stream"). Only this scenario is in this binary, and
//! its runs take turns (a lock), so nothing else allocates meanwhile.

mod runtime_support;

use mtcpd_testkit::alloc::{CountingAlloc, live_bytes};
use std::sync::Mutex;
use std::time::Duration;

use mtcpd_engine::runtime::{Client, MtcpStream, RuntimeOptions, Server};
use mtcpd_testkit::{Driver, driver_tests};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Held while measuring: the two drivers' runs must not overlap.
static MEASURING: Mutex<()> = Mutex::new(());

fn opts(io: Driver) -> RuntimeOptions {
    runtime_support::options(
        io,
        b"runtime-api-memory-test, 32 bytes or more",
        4,
        Duration::from_secs(2),
    )
}

driver_tests! {
    #[within(120)]
    fn idle_in_process_stream_footprint(io) {
        let _alone = MEASURING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        idle_in_process_stream_footprint(io);
    }
}

fn idle_in_process_stream_footprint(io: Driver) {
    const STREAMS: usize = 20_000;
    /// Client and server ends together, the application's objects included.
    const BUDGET: isize = 2048;
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
    // The application's objects live in `held`, allocated before the first reading.
    let handles = 2 * size_of::<MtcpStream>() as isize;
    let per_stream = (after - before) / STREAMS as isize + handles;
    println!(
        "{io}: {STREAMS} idle in-process streams: {per_stream} bytes each, both ends together \
         ({handles} of them the two MtcpStream objects)"
    );
    assert!(
        per_stream <= BUDGET,
        "{io}: an idle stream costs {per_stream} bytes (both ends), over the {BUDGET} B budget"
    );
    drop(held);
    client.shutdown();
    server.shutdown();
    client.join();
    server.join();
}
