//! The per-stream fast path of a stream's life through the library API: open a stream on a
//! client, accept it on the server, write one byte and read it on the far side (so the stream
//! is really carried), then drop both ends (a graceful close, finished by the loops in the
//! background). Client and server in this process, one worker each, pool 4.
//!
//! Run: `cargo bench -p mtcpd-bench --bench stream_open_close`.

use std::io::{Read, Write};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use mtcpd_engine::runtime::{Client, RuntimeOptions, Server};

fn options() -> RuntimeOptions {
    let mut o = RuntimeOptions {
        workers: 1,
        drain_timeout: Duration::from_secs(5),
        ..RuntimeOptions::default()
    };
    o.engine.psk = b"stream open/close bench, a key of 32+ bytes".to_vec();
    o.engine.pool_size = 4;
    o
}

fn open_close(c: &mut Criterion) {
    let server = Server::accept_all(options(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let client = Client::start(options(), server.local_addr()).unwrap();
    let mut byte = [0u8; 1];
    c.bench_function("stream_open_close", |b| {
        b.iter(|| {
            let mut s = client.open_stream(None).unwrap();
            s.write_all(b"x").unwrap();
            let mut peer = server.accept().unwrap().stream;
            peer.read_exact(&mut byte).unwrap();
            drop(s);
            drop(peer);
        })
    });
    client.shutdown();
    server.shutdown();
    client.join();
    server.join();
}

criterion_group!(benches, open_close);
criterion_main!(benches);
