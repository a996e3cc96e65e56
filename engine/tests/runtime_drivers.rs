//! The runtime in-process on each I/O driver: a client and a server on loopback carry echo
//! streams byte-exact, then stop cleanly (which drops the driver with sockets and operations
//! still open: the io_uring driver must cancel and reap them).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use mtcpd_engine::runtime::{self, ClientForward, IoChoice, RuntimeOptions};

fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0; 64 * 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn opts(io: IoChoice) -> RuntimeOptions {
    let mut o = RuntimeOptions {
        io,
        drain_timeout: Duration::from_secs(2),
        ..RuntimeOptions::default()
    };
    o.engine.psk = b"runtime-driver-test-key".to_vec();
    o.engine.pool_size = 4;
    o.tunnel_sockets.congestion = None;
    o
}

fn echo_through(io: IoChoice) {
    let backend = echo_backend();
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
        }],
    )
    .unwrap();
    let app = client.local_addrs()[0];
    let handles: Vec<_> = (0..8u8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(app).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let data: Vec<u8> = (0..1_000_000u32)
                    .map(|k| (k as u8).wrapping_mul(31) ^ i)
                    .collect();
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

#[test]
fn mio_carries_echo_streams_and_stops() {
    echo_through(IoChoice::Mio);
}

#[test]
#[cfg(target_os = "linux")]
fn uring_carries_echo_streams_and_stops() {
    echo_through(IoChoice::Uring);
}

#[test]
fn auto_picks_a_driver_that_works() {
    echo_through(IoChoice::Auto);
}
