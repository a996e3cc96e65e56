//! `enable_zero_rtt = false` in the real runtime, on each I/O driver: the client dials nothing
//! while no stream is wanted, and the first stream — an application's TCP connection to a
//! forward, or an in-process stream — dials the pool, waits for it, and is carried whole.
//! Every test runs under a watchdog and every blocking read has a timeout.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use mtcpd_engine::runtime::{Client, ClientForward, IoChoice, RuntimeOptions, Server};
use mtcpd_testkit::{Driver, driver_tests, pattern};

const T: Duration = Duration::from_secs(30);

driver_tests! {
    /// A TCP connection to a forward of an idle zero_rtt = false client dials the pool.
    #[within(60)]
    fn first_tcp_connection_dials_the_pool(io) {
        first_tcp_connection_dials_the_pool(choice(io));
    }
}

driver_tests! {
    /// The first in-process stream of an idle zero_rtt = false client dials the pool.
    #[within(60)]
    fn first_in_process_stream_dials_the_pool(io) {
        first_in_process_stream_dials_the_pool(choice(io));
    }
}

/// The kit's driver names are the engine's `IoChoice` names.
fn choice(driver: Driver) -> IoChoice {
    driver.name().parse().expect("a driver name")
}

fn opts(io: IoChoice, zero_rtt: bool) -> RuntimeOptions {
    let mut o = RuntimeOptions {
        io,
        drain_timeout: Duration::from_secs(2),
        ..RuntimeOptions::default()
    };
    o.engine.psk = b"zero-rtt-runtime-test-key, 32 bytes or more".to_vec();
    o.engine.pool_size = 3;
    o.engine.zero_rtt = zero_rtt;
    o.tunnel_sockets.congestion = None;
    o
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
    s.write_all(&pattern::sha256(&got)).unwrap();
    got
}

fn first_tcp_connection_dials_the_pool(io: IoChoice) {
    let forward = ClientForward {
        listen: "127.0.0.1:0".parse().unwrap(),
        target: Some("first".into()),
        name: None,
    };
    let (client, addr) =
        idle_watch(|addr| Client::start_with_forwards(opts(io, false), addr, &[forward]).unwrap());
    let server = Server::accept_all(opts(io, true), addr).unwrap();
    let mut app = TcpStream::connect(client.local_addrs()[0]).unwrap();
    app.set_read_timeout(Some(T)).unwrap();
    let data = pattern::bytes(21, 2 << 20);
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
    assert_eq!(answer, pattern::sha256(&data).as_slice());
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
    let data = pattern::bytes(22, 2 << 20);
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
    assert_eq!(answer, pattern::sha256(&data).as_slice());
    drop(rd);
    client.shutdown();
    server.shutdown();
    client.join();
    server.join();
}
