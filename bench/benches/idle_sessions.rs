//! The cost of idle sessions to an active one: a server runtime with one worker holds N idle
//! client sessions (N = 0 and 1,000) while one in-process client does 64-byte ping-pong on one
//! stream; the figure is the round-trip time. A loop that services every session on every
//! wake-up pays for the idle ones on each round trip; one that services only sessions with work
//! (a ready list and a timer heap) does not.
//!
//! The idle sessions are raw client [`Session`]s, one tunnel each, driven here over real
//! loopback sockets only through their handshake and then left alone (the server's keepalive
//! and idle timers are set beyond the bench's length, so none of them has anything to do). Only
//! API that predates the event loop's redesign is used, so the same bench runs on both.
//!
//! Run: `cargo bench -p mtcpd-bench --bench idle_sessions`. File descriptors: two per idle
//! session plus a few (about 2,010 at N = 1,000).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mtcpd_engine::handshake::PLAINTEXT_BINDING;
use mtcpd_engine::runtime::{Client, RuntimeOptions, Server};
use mtcpd_engine::{Config, Session};

const IDLE: [usize; 2] = [0, 1000];
const MESSAGE: [u8; 64] = [0x42; 64];
const PSK: &[u8] = b"idle sessions bench, a key of 32+ bytes";

fn engine_config(pool_size: u16) -> Config {
    Config {
        psk: PSK.to_vec(),
        pool_size,
        // Nothing idle may wake during the bench: no keepalives, no idle timeouts.
        keepalive_interval: Duration::from_secs(3000),
        tunnel_idle_timeout: Duration::from_secs(3600),
        ..Config::default()
    }
}

fn options(pool_size: u16) -> RuntimeOptions {
    RuntimeOptions {
        engine: engine_config(pool_size),
        workers: 1,
        max_sessions: 4096,
        ..RuntimeOptions::default()
    }
}

/// One idle client session: its tunnel's socket (kept open) and the session.
struct Idle {
    _sock: TcpStream,
    _session: Session,
}

/// Connects a raw client session with one tunnel and runs its handshake to the end.
fn idle_session(server: SocketAddr, seed: u64) -> Idle {
    let now = Instant::now();
    let mut session = Session::client(Arc::new(engine_config(1)), now, seed);
    let mut sock = TcpStream::connect(server).expect("connect");
    sock.set_nodelay(true).expect("nodelay");
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    session.tunnel_connected(now, 0, &PLAINTEXT_BINDING);
    let mut rx = BytesMut::new();
    let mut buf = [0u8; 4096];
    let mut out = Vec::new();
    let deadline = now + Duration::from_secs(10);
    loop {
        out.clear();
        session.poll_transmit(Instant::now(), 0, 1 << 16, &mut out);
        for chunk in &out {
            sock.write_all(chunk).expect("write");
        }
        // Established once ServerHello verified and ClientAuth (just written) went out.
        if session.is_established() && session.tunnel_is_active(0) && out.is_empty() {
            return Idle {
                _sock: sock,
                _session: session,
            };
        }
        assert!(Instant::now() < deadline, "idle session handshake stuck");
        match sock.read(&mut buf) {
            Ok(0) => panic!("server closed an idle session's tunnel"),
            Ok(n) => {
                rx.extend_from_slice(&buf[..n]);
                session
                    .handle_input(Instant::now(), 0, &mut rx)
                    .expect("handshake input");
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("idle session read: {e}"),
        }
    }
}

fn ping_pong(c: &mut Criterion) {
    let mut g = c.benchmark_group("idle_sessions/ping_pong_64B");
    for idle in IDLE {
        let server =
            Server::accept_all(options(1), "127.0.0.1:0".parse().expect("addr")).expect("server");
        let addr = server.local_addr();
        let idles: Vec<Idle> = (0..idle)
            .map(|i| idle_session(addr, i as u64 + 1))
            .collect();
        let client = Client::start(options(1), addr).expect("client");
        let mut stream = client.open_stream(None).expect("open");
        stream.write_all(&MESSAGE).expect("first write");
        let mut peer = server
            .accept_timeout(Duration::from_secs(10))
            .expect("accept")
            .stream;
        let echo = std::thread::spawn(move || {
            let mut msg = [0u8; 64];
            while peer.read_exact(&mut msg).is_ok() {
                if peer.write_all(&msg).is_err() {
                    break;
                }
            }
        });
        let mut back = [0u8; 64];
        stream.read_exact(&mut back).expect("first echo");
        g.bench_with_input(BenchmarkId::from_parameter(idle), &idle, |b, _| {
            b.iter(|| {
                stream.write_all(&MESSAGE).expect("write");
                stream.read_exact(&mut back).expect("read");
            })
        });
        drop(stream);
        client.shutdown();
        client.join();
        let _ = echo.join();
        drop(idles);
        server.shutdown();
        server.join();
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = ping_pong
}
criterion_main!(benches);
