//! `enable_zero_rtt = false` in the real runtime, on each I/O driver: the client dials nothing
//! while no stream is wanted, and the first stream — an application's TCP connection to a
//! forward, or an in-process stream — dials the pool, waits for it, and is carried whole.
//! Every test runs under a watchdog and every blocking read has a timeout.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use mtcpd_engine::runtime::{Client, ClientForward, IoChoice, RuntimeOptions, Server};
use sha2::{Digest, Sha256};

const T: Duration = Duration::from_secs(30);

/// Runs `f` on its own thread; fails the test if it takes longer than `secs`.
fn within<R: Send + 'static>(secs: u64, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(r) => {
            let _ = worker.join();
            r
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker neither answered nor panicked"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test did not finish within {secs} s"),
    }
}

/// Declares `mio` and `uring` tests for a scenario taking the driver.
macro_rules! on_both_drivers {
    ($($name:ident: $secs:expr;)*) => {$(
        mod $name {
            #[test]
            fn mio() {
                super::within($secs, || super::$name(super::IoChoice::Mio));
            }
            #[test]
            #[cfg(target_os = "linux")]
            fn uring() {
                super::within($secs, || super::$name(super::IoChoice::Uring));
            }
        }
    )*};
}

on_both_drivers! {
    first_tcp_connection_dials_the_pool: 60;
    first_in_process_stream_dials_the_pool: 60;
}

fn opts(io: IoChoice, zero_rtt: bool) -> RuntimeOptions {
    let mut o = RuntimeOptions {
        io,
        drain_timeout: Duration::from_secs(2),
        ..RuntimeOptions::default()
    };
    o.engine.psk = b"zero-rtt-runtime-test-key".to_vec();
    o.engine.pool_size = 3;
    o.engine.zero_rtt = zero_rtt;
    o.tunnel_sockets.congestion = None;
    o
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A listener on the server's future address that records whether anything connected while
/// the client was idle; it gives the address up to the real server afterwards.
fn idle_watch(client_start: impl FnOnce(SocketAddr) -> Client) -> (Client, SocketAddr) {
    let watch = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = watch.local_addr().unwrap();
    watch.set_nonblocking(true).unwrap();
    let client = client_start(addr);
    std::thread::sleep(Duration::from_millis(500));
    match watch.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the idle client dialed a tunnel: {other:?}"),
    }
    (client, addr)
}

/// Server side of one stream: reads everything, answers with its SHA-256.
fn answer_with_digest(server: &Server) -> Vec<u8> {
    let accepted = server.accept_timeout(T).unwrap();
    let mut s = accepted.stream;
    s.set_read_timeout(Some(T)).unwrap();
    s.set_write_timeout(Some(T)).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    s.write_all(&Sha256::digest(&got)).unwrap();
    got
}

fn first_tcp_connection_dials_the_pool(io: IoChoice) {
    let forward = ClientForward {
        listen: "127.0.0.1:0".parse().unwrap(),
        target: Some("first".into()),
    };
    let (client, addr) =
        idle_watch(|addr| Client::start_with_forwards(opts(io, false), addr, &[forward]).unwrap());
    let server = Server::accept_all(opts(io, true), addr).unwrap();
    let mut app = TcpStream::connect(client.local_addrs()[0]).unwrap();
    app.set_read_timeout(Some(T)).unwrap();
    let data = pattern(21, 2 << 20);
    let writer = {
        let mut app = app.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || {
            app.write_all(&data).unwrap();
            app.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let got = answer_with_digest(&server);
    writer.join().unwrap();
    assert!(got == data, "bytes differ");
    let mut answer = Vec::new();
    app.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, Sha256::digest(&data).as_slice());
    client.shutdown();
    server.shutdown();
    client.join();
    server.join();
}

fn first_in_process_stream_dials_the_pool(io: IoChoice) {
    let (client, addr) = idle_watch(|addr| Client::start(opts(io, false), addr).unwrap());
    let server = Server::accept_all(opts(io, true), addr).unwrap();
    let mut s = client.open_stream(Some("first")).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.set_write_timeout(Some(T)).unwrap();
    let (mut rd, mut wr) = s.into_split();
    let data = pattern(22, 2 << 20);
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || {
            wr.write_all(&data).unwrap();
            wr.shutdown_write().unwrap();
        })
    };
    let got = answer_with_digest(&server);
    writer.join().unwrap();
    assert!(got == data, "bytes differ");
    let mut answer = Vec::new();
    rd.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, Sha256::digest(&data).as_slice());
    drop(rd);
    client.shutdown();
    server.shutdown();
    client.join();
    server.join();
}
