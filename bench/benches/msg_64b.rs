//! The per-message fast paths of the in-process library API: `write_64b` (the application
//! writes 64-byte messages into one stream until all of them reached the server's reader) and
//! `read_64b` (the server writes 64-byte messages, the application reads them 64 bytes at a
//! time). Each through the readiness API (`PolledStream::try_write` / `try_read`, `Poller`)
//! and, as the baseline in the same run, through the blocking `MtcpStream`. One client and one
//! server runtime (one worker each, mio) in this process; the figure is time per message.
//!
//! Run: `cargo bench -p mtcpd-bench --bench msg_64b`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mtcpd_engine::runtime::{
    Client, Events, IoChoice, MtcpStream, Poller, RuntimeOptions, Server, Token,
};

const MSG: [u8; 64] = [0x42; 64];
const T: Duration = Duration::from_secs(30);

fn pair() -> (Server, Client) {
    let mut o = RuntimeOptions {
        io: IoChoice::Mio,
        drain_timeout: Duration::from_secs(1),
        ..RuntimeOptions::default()
    };
    o.engine.psk = b"msg_64b bench, a key of 32 bytes or more".to_vec();
    o.engine.pool_size = 2;
    let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    let server = Server::accept_all(o.clone(), any).expect("server");
    let client = Client::start(o, server.local_addr()).expect("client");
    (server, client)
}

/// A fresh stream and the server's end of it.
fn stream(server: &Server, client: &Client) -> (MtcpStream, MtcpStream) {
    let mine = client.open_stream(None).expect("open");
    // The OPEN travels with the first bytes: one byte, read at the far end, opens it.
    let mut mine = mine;
    mine.write_all(b"!").expect("write");
    let mut theirs = server.accept_timeout(T).expect("accept").stream;
    theirs.read_exact(&mut [0u8; 1]).expect("read");
    theirs.set_read_timeout(Some(T)).expect("timeout");
    mine.set_read_timeout(Some(T)).expect("timeout");
    (mine, theirs)
}

/// Reads until the end of the stream; the byte count.
fn drain(mut s: MtcpStream) -> u64 {
    let mut n = 0;
    loop {
        match s.read_bytes() {
            Ok(b) if b.is_empty() => return n,
            Ok(b) => n += b.len() as u64,
            Err(e) => panic!("drain: {e}"),
        }
    }
}

fn write_64b(c: &mut Criterion) {
    let (server, client) = pair();
    let mut g = c.benchmark_group("write_64b");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.bench_function("poll", |b| {
        b.iter_custom(|iters| {
            let (mine, theirs) = stream(&server, &client);
            let reader = std::thread::spawn(move || drain(theirs));
            let mut poller = Poller::new();
            let mut s = poller.register(mine, Token(0));
            let mut events = Events::with_capacity(4);
            let total = iters * MSG.len() as u64;
            let t = Instant::now();
            let mut sent = 0u64;
            while sent < total {
                let at = (sent % MSG.len() as u64) as usize;
                match s.try_write(&MSG[at..]) {
                    Ok(n) => sent += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        poller.poll(&mut events, Some(T)).expect("poll");
                    }
                    Err(e) => panic!("write: {e}"),
                }
            }
            s.shutdown_write().expect("shutdown");
            assert_eq!(reader.join().expect("reader"), total);
            t.elapsed()
        })
    });
    g.bench_function("blocking", |b| {
        b.iter_custom(|iters| {
            let (mut mine, theirs) = stream(&server, &client);
            let reader = std::thread::spawn(move || drain(theirs));
            let t = Instant::now();
            for _ in 0..iters {
                mine.write_all(&MSG).expect("write");
            }
            mine.shutdown_write().expect("shutdown");
            assert_eq!(reader.join().expect("reader"), iters * MSG.len() as u64);
            t.elapsed()
        })
    });
    g.finish();
    drop(client);
    drop(server);
}

fn read_64b(c: &mut Criterion) {
    let (server, client) = pair();
    let mut g = c.benchmark_group("read_64b");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    let writer = |mut s: MtcpStream, iters: u64| {
        std::thread::spawn(move || {
            for _ in 0..iters {
                s.write_all(&MSG).expect("write");
            }
            s.shutdown_write().expect("shutdown");
        })
    };
    g.bench_function("poll", |b| {
        b.iter_custom(|iters| {
            let (mine, theirs) = stream(&server, &client);
            let mut poller = Poller::new();
            let mut s = poller.register(mine, Token(0));
            let mut events = Events::with_capacity(4);
            let mut buf = [0u8; 64];
            let t = Instant::now();
            let w = writer(theirs, iters);
            let mut got = 0u64;
            loop {
                match s.try_read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        poller.poll(&mut events, Some(T)).expect("poll");
                    }
                    Err(e) => panic!("read: {e}"),
                }
            }
            let took = t.elapsed();
            w.join().expect("writer");
            assert_eq!(got, iters * MSG.len() as u64);
            took
        })
    });
    g.bench_function("blocking", |b| {
        b.iter_custom(|iters| {
            let (mut mine, theirs) = stream(&server, &client);
            let mut buf = [0u8; 64];
            let t = Instant::now();
            let w = writer(theirs, iters);
            let mut got = 0u64;
            loop {
                match mine.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got += n as u64,
                    Err(e) => panic!("read: {e}"),
                }
            }
            let took = t.elapsed();
            w.join().expect("writer");
            assert_eq!(got, iters * MSG.len() as u64);
            took
        })
    });
    g.finish();
    drop(client);
    drop(server);
}

criterion_group!(benches, write_64b, read_64b);
criterion_main!(benches);
