//! Shutting down with many streams: 60,000 in-process streams are closed and both runtimes are
//! stopped at once; both joins must finish well inside the drain timeout. Regression test for
//! issue 10's "io_uring drain stall": the server's final CLOSE was cut off (an in-flight send
//! cancelled, then a reset for unread bytes), so the client waited out its whole drain timeout.
//! The drain timeout here is 30 s and the bound 10 s, so the test cannot pass by timing out.

mod runtime_support;

use std::time::{Duration, Instant};

use mtcpd_engine::runtime::{Client, RuntimeOptions, Server};
use mtcpd_testkit::{Driver, driver_tests};

fn opts(io: Driver) -> RuntimeOptions {
    runtime_support::options(
        io,
        b"runtime-api-shutdown-test, 32 bytes or more",
        4,
        Duration::from_secs(30),
    )
}

driver_tests! {
    #[within(120)]
    fn closing_60k_streams_and_stopping_both_ends_finishes_promptly(io) {
        closing_many_streams_and_stopping(io, 60_000);
    }
}

fn closing_many_streams_and_stopping(io: Driver, streams: usize) {
    let server = Server::accept_all(opts(io), "127.0.0.1:0".parse().unwrap()).unwrap();
    let client = Client::start(opts(io), server.local_addr()).unwrap();
    let timeout = Duration::from_secs(30);
    let mut held = Vec::with_capacity(2 * streams);
    for _ in 0..streams {
        held.push(client.open_stream(None).unwrap());
    }
    for _ in 0..streams {
        held.push(server.accept_timeout(timeout).unwrap().stream);
    }
    let started = Instant::now();
    drop(held);
    client.shutdown();
    server.shutdown();
    let (c, s) = std::thread::scope(|scope| {
        let c = scope.spawn(move || {
            client.join();
            started.elapsed()
        });
        let s = scope.spawn(move || {
            server.join();
            started.elapsed()
        });
        (c.join().unwrap(), s.join().unwrap())
    });
    println!("{io}: {streams} streams closed; client joined after {c:?}, server after {s:?}");
    assert!(
        c < Duration::from_secs(10) && s < Duration::from_secs(10),
        "{io}: shutdown with {streams} streams took client {c:?}, server {s:?} (drain timeout 30 s)"
    );
}
