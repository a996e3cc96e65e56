//! Memory per byte of window, measured: many streams fill their buffers with 64 B writes to a
//! peer that reads nothing, and a counting global allocator (this test binary only) compares
//! the heap they hold with the bytes buffered. Before small writes shared chunks, each 64 B
//! write cost its own allocation, a queue slot and a shared header (2–5× the window in RSS).

mod runtime_support;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mtcpd_engine::runtime::{Client, Events, Poller, RuntimeOptions, Server, Token};
use mtcpd_testkit::alloc::{CountingAlloc, live_bytes};
use mtcpd_testkit::{Driver, driver_tests};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Held while measuring: the two drivers' runs must not overlap.
static MEASURING: Mutex<()> = Mutex::new(());

driver_tests! {
    #[within(120)]
    fn small_writes_cost_about_their_bytes(io) {
        let _alone = MEASURING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        small_writes(io);
    }
}

const STREAMS: usize = 64;

fn opts(io: Driver) -> RuntimeOptions {
    let mut o = runtime_support::options(
        io,
        b"window-memory-test-key, 32 bytes at least",
        2,
        Duration::from_secs(1),
    );
    o.engine.stream_window = 64 * 1024;
    o.engine.stream_send_buffer = 64 * 1024;
    o
}

fn small_writes(io: Driver) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = Server::accept_all(opts(io), any).unwrap();
    let client = Client::start(opts(io), server.local_addr()).unwrap();
    let mut poller = Poller::new();
    let mut streams: Vec<_> = (0..STREAMS)
        .map(|i| poller.register(client.open_stream(None).unwrap(), Token(i)))
        .collect();
    // Opened and accepted (and never read): from here on only buffered bytes should grow.
    let accepted: Vec<_> = (0..STREAMS)
        .map(|_| server.accept_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = live_bytes();
    let msg = [0x17u8; 64];
    let mut written = 0usize;
    let mut events = Events::with_capacity(256);
    let deadline = Instant::now() + Duration::from_secs(60);
    // One message to each stream in turn until every stream refuses and nothing moves for
    // 300 ms.
    loop {
        assert!(
            Instant::now() < deadline,
            "buffers never filled ({written} bytes)"
        );
        let mut took = 0;
        for s in &mut streams {
            if let Ok(n) = s.try_write(&msg) {
                took += n;
            }
        }
        written += took;
        if took == 0 {
            poller
                .poll(&mut events, Some(Duration::from_millis(300)))
                .unwrap();
            if events.is_empty() {
                break;
            }
        }
    }
    let held = (live_bytes() - before).max(0) as f64;
    let ratio = held / written as f64;
    println!(
        "{}: {STREAMS} streams hold {written} bytes of 64 B writes in {held:.0} heap bytes ({ratio:.2}x)",
        io.name()
    );
    // Per stream the send buffer and the peer's window are full (plus 16 ring chunks each way).
    assert!(
        written >= STREAMS * 2 * 64 * 1024,
        "only {written} bytes buffered"
    );
    assert!(
        ratio <= 1.25,
        "{held} heap bytes for {written} buffered bytes ({ratio:.2}x)"
    );
    drop(streams);
    drop(accepted);
    client.shutdown();
    server.shutdown();
    client.join();
    server.join();
}
