//! The runtime in-process on each I/O driver: a client and a server on loopback carry echo
//! streams byte-exact, then stop cleanly (which drops the driver with sockets and operations
//! still open: the io_uring driver must cancel and reap them). `auto` is checked too.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use mtcpd_engine::runtime::{self, ClientForward, IoChoice, RuntimeOptions};
use mtcpd_testkit::{Driver, backends, driver_tests, pattern};

/// The kit's driver names are the engine's `IoChoice` names.
fn choice(driver: Driver) -> IoChoice {
    driver.name().parse().expect("a driver name")
}

fn opts(io: IoChoice) -> RuntimeOptions {
    let mut o = RuntimeOptions {
        io,
        drain_timeout: Duration::from_secs(2),
        ..RuntimeOptions::default()
    };
    o.engine.psk = b"runtime-driver-test-key, at least 32 bytes".to_vec();
    o.engine.pool_size = 4;
    o.tunnel_sockets.congestion = None;
    o
}

fn echo_through(io: IoChoice) {
    let backend = backends::echo_backend();
    let server = runtime::spawn_server(
        opts(io),
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(move |_| runtime::Route::Connect(backend)),
    )
    .unwrap();
    let client = runtime::spawn_client(
        opts(io),
        server.local_addrs()[0],
        &[ClientForward {
            listen: "127.0.0.1:0".parse().unwrap(),
            target: None,
            name: None,
        }],
    )
    .unwrap();
    let app = client.local_addrs()[0];
    let handles: Vec<_> = (0..8u64)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(app).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let data = pattern::bytes(i, 1_000_000);
                let mut r = s.try_clone().unwrap();
                let expected = data.clone();
                let reader = std::thread::spawn(move || {
                    let mut got = vec![0; expected.len()];
                    r.read_exact(&mut got).unwrap();
                    assert!(got == expected, "stream {i}: echo differs");
                });
                s.write_all(&data).unwrap();
                reader.join().unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    client.shutdown();
    server.shutdown();
    client.join();
    server.join();
}

driver_tests! {
    /// Eight 1 MB echo streams through client and server on the driver, then a clean stop.
    #[within(120)]
    fn carries_echo_streams_and_stops(io) {
        echo_through(choice(io));
    }
}

#[test]
fn auto_picks_a_driver_that_works() {
    echo_through(IoChoice::Auto);
}
