//! What 100,000 idle streams cost an active one: client and server in this process (one worker
//! each, pool 4) hold N idle in-process streams (N = 0 and 100,000) while one stream does
//! 64-byte ping-pong; the figure is the round-trip time. Every round trip is at least one turn
//! of each loop (wake-up, timers, servicing); a loop whose turn or timer tick scanned its
//! streams would pay for the idle ones on each. Idle streams have no timers of their own.
//!
//! Run: `cargo bench -p mtcpd-bench --bench idle_timer_tick_100k`.

use std::io::{Read, Write};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mtcpd_engine::runtime::{Client, RuntimeOptions, Server};

const IDLE: [usize; 2] = [0, 100_000];
const MESSAGE: [u8; 64] = [0x42; 64];

fn options() -> RuntimeOptions {
    let mut o = RuntimeOptions {
        workers: 1,
        drain_timeout: Duration::from_secs(10),
        ..RuntimeOptions::default()
    };
    o.engine.psk = b"idle timer tick bench, a key of 32+ bytes".to_vec();
    o.engine.pool_size = 4;
    o.engine.max_streams = 200_000;
    o
}

fn tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("idle_timer_tick_100k");
    for idle in IDLE {
        let server = Server::accept_all(options(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let client = Client::start(options(), server.local_addr()).unwrap();
        let mut held = Vec::with_capacity(2 * idle);
        for _ in 0..idle {
            held.push(client.open_stream(None).unwrap());
        }
        for _ in 0..idle {
            held.push(server.accept().unwrap().stream);
        }
        let mut active = client.open_stream(None).unwrap();
        let mut echo = server.accept().unwrap().stream;
        let mut buf = [0u8; 64];
        group.bench_with_input(BenchmarkId::new("ping_pong_64B", idle), &idle, |b, _| {
            b.iter(|| {
                active.write_all(&MESSAGE).unwrap();
                echo.read_exact(&mut buf).unwrap();
                echo.write_all(&buf).unwrap();
                active.read_exact(&mut buf).unwrap();
            })
        });
        drop((active, echo, held));
        client.shutdown();
        server.shutdown();
        client.join();
        server.join();
    }
    group.finish();
}

criterion_group!(benches, tick);
criterion_main!(benches);
