//! Whole protocol processing on one core: a client and a server session over 8 in-memory tunnels
//! ([`mtcpd_bench::MemPair`]), bulk data on 1 and on 64 streams (bytes/s), each in plaintext and
//! over TLS 1.3 (AES-128-GCM: `_tls`, both ends' crypto on the one core), and 64-byte messages
//! on 256 streams (messages/s). Each iteration moves a fixed amount over long-lived streams of one
//! pair built once; the handshake is not measured.
//!
//! Run: `cargo bench -p mtcpd-bench --bench session_pair`.

use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mtcpd_bench::{MemPair, bench_config};

const TUNNELS: u16 = 8;
/// Bytes per iteration of the bulk benchmarks.
const BULK: u64 = 16 << 20;
/// Messages per iteration of the message benchmark.
const MESSAGES: u64 = 16 * 1024;
const MESSAGE_LEN: usize = 64;

fn bulk(c: &mut Criterion) {
    let chunk = Bytes::from(vec![0xa5u8; 64 * 1024]);
    let mut g = c.benchmark_group("session_pair/bulk_8_tunnels");
    g.throughput(Throughput::Bytes(BULK));
    // Plaintext (`insecure_plaintext`) and TLS side by side in one group, so the ratio shows.
    for (streams, tls) in [(1usize, false), (1, true), (64, false), (64, true)] {
        let mut pair = if tls {
            MemPair::with_tls(bench_config(TUNNELS), 1)
        } else {
            MemPair::new(bench_config(TUNNELS), 1)
        }
        .expect("pair");
        let ids = pair.open_streams(streams).expect("streams");
        let name = if tls {
            format!("{streams}_streams_tls")
        } else {
            format!("{streams}_streams")
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                let n = pair
                    .transfer(&ids, BULK, &chunk, |_, _, _| {})
                    .expect("transfer");
                assert_eq!(n, BULK);
            })
        });
    }
    g.finish();
}

fn messages(c: &mut Criterion) {
    let msg = Bytes::from(vec![0x5au8; MESSAGE_LEN]);
    let mut g = c.benchmark_group("session_pair/messages_64B");
    g.throughput(Throughput::Elements(MESSAGES));
    let mut pair = MemPair::new(bench_config(TUNNELS), 2).expect("pair");
    let ids = pair.open_streams(256).expect("streams");
    g.bench_function("256_streams", |b| {
        b.iter(|| {
            let total = MESSAGES * MESSAGE_LEN as u64;
            let n = pair
                .transfer(&ids, total, &msg, |_, _, _| {})
                .expect("transfer");
            assert_eq!(n, total);
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bulk, messages
}
criterion_main!(benches);
