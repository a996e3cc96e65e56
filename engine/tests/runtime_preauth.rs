//! What an unauthenticated flood makes a server hold, measured on each I/O driver: 5,000
//! half-open connections from one /24 (127.0.5.0/24; half send nothing, half a partial
//! ClientHello), then a real client from another /24 (127.0.0.1) connects and echoes 1 MiB
//! checksummed within a second; and, with the per-source cap lifted, what one half-open
//! connection costs while the per-worker cap binds. A counting global allocator (this test binary only) sees every
//! heap byte the server holds for the flood; the process's RSS is read around it too. Only this
//! scenario is in this binary, and its runs take turns (a lock), so nothing else allocates
//! meanwhile.

mod runtime_support;

use mtcpd_testkit::alloc::{CountingAlloc, live_bytes};
use std::io::Write;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mtcpd_engine::runtime::{self, ClientForward, RuntimeOptions};
use mtcpd_testkit::{Driver, backends, driver_tests, pattern};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Held while measuring: the two drivers' runs must not overlap.
static MEASURING: Mutex<()> = Mutex::new(());

/// Connections of the flood (the test process holds one descriptor each: it stays far below
/// its 20,000).
const HALF_OPEN: usize = 5_000;
/// What the server may hold on the heap for the whole flood: with the default caps only 64
/// connections of one /24 are in their handshake at once (16 KiB of input at most each, 4 KiB
/// receive buffers), the rest are reset at accept.
const HEAP_BUDGET: isize = 4 * 1024 * 1024;
/// What the process's resident set may grow by meanwhile (allocator slack and thread stacks
/// included).
const RSS_BUDGET: isize = 16 * 1024 * 1024;

fn opts(io: Driver) -> RuntimeOptions {
    let mut o = runtime_support::options(
        io,
        b"runtime-preauth-test-key-0123456789abcdef",
        4,
        Duration::from_secs(2),
    );
    o.workers = 2;
    o
}

/// The process's resident set, from /proc.
fn rss_bytes() -> isize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<isize>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// Opens `count` connections to `server` from addresses of 127.0.5.0/24; every other one sends
/// the first bytes of a ClientHello, then nothing more.
fn flood(server: SocketAddr, count: usize) -> Vec<Socket> {
    let mut held = Vec::with_capacity(count);
    for n in 0..count {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        let source = SocketAddrV4::new(Ipv4Addr::new(127, 0, 5, 1 + (n % 250) as u8), 0);
        sock.bind(&SockAddr::from(source)).unwrap();
        match sock.connect_timeout(&SockAddr::from(server), Duration::from_secs(5)) {
            Ok(()) => {}
            // Reset by the server's accept before the connect was seen to complete: a socket
            // reset like the others (kept, so `closed_by_server` counts it).
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("flood connection {n}: {e}"),
        }
        if n % 2 == 1 {
            // The header of a TLS handshake record announcing 512 bytes, then silence.
            let _ = sock.send(&[0x16, 0x03, 0x01, 0x02, 0x00]);
        }
        held.push(sock);
    }
    held
}

/// The flood connections the server has reset or closed by now.
fn closed_by_server(held: &[Socket]) -> usize {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 16];
    held.iter()
        .filter(|sock| {
            sock.set_nonblocking(true).unwrap();
            match sock.recv(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            }
        })
        .count()
}

/// One stream through a fresh client: 1 MiB echoed, checked by SHA-256.
fn echo_through_new_client(io: Driver, server: SocketAddr) -> (runtime::RuntimeHandle, Duration) {
    let started = Instant::now();
    let client = runtime::spawn_client(
        RuntimeOptions {
            workers: 1,
            ..opts(io)
        },
        server,
        &[ClientForward {
            listen: "127.0.0.1:0".parse().unwrap(),
            target: None,
            name: None,
        }],
    )
    .unwrap();
    let mut app = TcpStream::connect(client.local_addrs()[0]).unwrap();
    app.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = app.try_clone().unwrap();
    let echo = std::thread::spawn(move || pattern::read_to_end_checksum(&mut reader).unwrap());
    let sent = pattern::write_pattern(&mut app, 7, 1 << 20).unwrap();
    app.flush().unwrap();
    app.shutdown(Shutdown::Write).unwrap();
    let got = echo.join().unwrap();
    assert_eq!(got.len(), 1 << 20, "{io}: echo length");
    assert_eq!(got.digest(), sent, "{io}: echo checksum");
    (client, started.elapsed())
}

driver_tests! {
    /// A TLS handshake message may announce 64 KiB, which TLS would buffer: a peer that
    /// trickles one in below the per-read cap is still cut off at 16 KiB of pre-auth input.
    #[within(60)]
    fn a_trickled_oversized_tls_hello_is_cut_off(io) {
        let backend = backends::echo_backend();
        let server = runtime::spawn_server(
            opts(io),
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(move |_| runtime::Route::Connect(backend)),
        )
        .unwrap();
        let mut conn = TcpStream::connect(server.local_addrs()[0]).unwrap();
        // A handshake record announcing 65,000 bytes, then a ClientHello header announcing
        // most of them, sent 2 KiB at a time.
        conn.write_all(&[0x16, 0x03, 0x01, 0xfd, 0xe8, 0x01, 0x00, 0xfd, 0xe4]).unwrap();
        let mut sent = 9;
        let closed = (0..40).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            if conn.write_all(&[0u8; 2048]).is_err() {
                return true;
            }
            sent += 2048;
            false
        });
        assert!(closed, "{io}: still open after {sent} bytes of one TLS hello");
        assert!(
            sent <= 32 * 1024,
            "{io}: the server took {sent} bytes before closing"
        );
        server.shutdown();
        server.join();
    }

    #[within(120)]
    fn a_half_open_flood_from_one_network_leaves_room_for_a_real_client(io) {
        let _alone = MEASURING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        half_open_flood(io);
    }

    /// With the per-source cap out of the way, the per-worker cap binds, and what each
    /// half-open connection costs shows: no bulk receive buffer (io_uring used to keep 64 KiB
    /// in flight for each).
    #[within(120)]
    fn a_half_open_connection_holds_no_bulk_buffer(io) {
        let _alone = MEASURING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        half_open_cost(io);
    }
}

/// Heap the server may hold per half-open connection: a 4 KiB receive buffer (io_uring), the
/// TLS server state (rustls: about 4 KiB before the peer's ClientHello is complete), the
/// handshake state and the loop's entry. Measured: about 4.4 KiB on mio, 8.8 KiB on io_uring.
const PER_CONNECTION_BUDGET: isize = 12 * 1024;

fn half_open_cost(io: Driver) {
    let mut server_opts = opts(io);
    server_opts.engine.max_handshakes_per_source = 1_000_000;
    server_opts.engine.max_handshakes = 1_000;
    let backend = backends::echo_backend();
    let server = runtime::spawn_server(
        server_opts,
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(move |_| runtime::Route::Connect(backend)),
    )
    .unwrap();
    let addr = server.local_addrs()[0];
    let (warm, _) = echo_through_new_client(io, addr);
    warm.shutdown();
    warm.join();
    std::thread::sleep(Duration::from_millis(300));
    let heap_before = live_bytes();
    let held = flood(addr, HALF_OPEN);
    std::thread::sleep(Duration::from_millis(300));
    let heap = live_bytes() - heap_before;
    let kept = HALF_OPEN - closed_by_server(&held);
    let per_connection = heap / kept.max(1) as isize;
    eprintln!(
        "{io}: per-source cap lifted: {kept} of {HALF_OPEN} half-open connections held \
         (2 workers x max_handshakes 1000), server heap +{} KiB, {per_connection} bytes each \
         (budget {PER_CONNECTION_BUDGET})",
        heap / 1024
    );
    assert!(
        (1_000..=2_000).contains(&kept),
        "{io}: {kept} held; the per-worker cap is 1000 on each of 2 workers"
    );
    assert!(
        per_connection < PER_CONNECTION_BUDGET,
        "{io}: a half-open connection costs {per_connection} bytes"
    );
    drop(held);
    server.shutdown();
    server.join();
}

fn half_open_flood(io: Driver) {
    let backend = backends::echo_backend();
    let server = runtime::spawn_server(
        opts(io),
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(move |_| runtime::Route::Connect(backend)),
    )
    .unwrap();
    let addr = server.local_addrs()[0];
    // Warm up the server's own tables and the allocator with one real session first.
    let (warm, _) = echo_through_new_client(io, addr);
    warm.shutdown();
    warm.join();
    std::thread::sleep(Duration::from_millis(300));
    let (heap_before, rss_before) = (live_bytes(), rss_bytes());

    let flood_started = Instant::now();
    let held = flood(addr, HALF_OPEN);
    let flood_took = flood_started.elapsed();
    // Let the server accept and sort out the last ones.
    std::thread::sleep(Duration::from_millis(300));
    let heap = live_bytes() - heap_before;
    let rss = rss_bytes() - rss_before;
    let reset = closed_by_server(&held);
    eprintln!(
        "{io}: {HALF_OPEN} half-open connections from 127.0.5.0/24 (opened in {flood_took:?}): \
         server heap +{} KiB (budget {} KiB), process RSS +{} KiB (budget {} KiB); {reset} \
         reset at accept, {} held in their handshake",
        heap / 1024,
        HEAP_BUDGET / 1024,
        rss / 1024,
        RSS_BUDGET / 1024,
        HALF_OPEN - reset,
    );
    assert!(
        heap < HEAP_BUDGET,
        "{io}: the flood holds {heap} bytes of heap"
    );
    assert!(
        rss < RSS_BUDGET,
        "{io}: the flood grew the RSS by {rss} bytes"
    );
    let per_source = RuntimeOptions::default().engine.max_handshakes_per_source as usize;
    assert!(
        HALF_OPEN - reset <= per_source,
        "{io}: {} flood connections held, more than the per-source cap {per_source}",
        HALF_OPEN - reset
    );

    // A real client from 127.0.0.0/24 is not affected.
    let (client, took) = echo_through_new_client(io, addr);
    eprintln!("{io}: a real client connected and echoed 1 MiB in {took:?} during the flood");
    assert!(
        took < Duration::from_secs(1),
        "{io}: the real client took {took:?}"
    );

    // The flood's handshakes time out at the server's pre-auth deadline (3 s).
    std::thread::sleep(Duration::from_millis(3_300));
    assert_eq!(
        closed_by_server(&held),
        HALF_OPEN,
        "{io}: every flood connection is closed after the pre-auth deadline"
    );
    drop(held);
    client.shutdown();
    server.shutdown();
    client.join();
    server.join();
}
