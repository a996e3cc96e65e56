//! Reorder buffer: insert 16 KiB pieces of a 4 MiB stream and read what becomes readable after
//! each insert, in order and shuffled within windows of 8 and 64 pieces.
//!
//! Run: `cargo bench -p mtcpd-bench --bench reorder`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mtcpd_engine::reorder::ReorderBuffer;

const PIECE: usize = 16 * 1024;
const PIECES: usize = 256;

/// Piece indices, shuffled (Fisher–Yates, xorshift) within consecutive windows of `window`.
fn arrival_order(window: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..PIECES).collect();
    let mut x = seed | 1;
    for block in order.chunks_mut(window.max(1)) {
        for i in (1..block.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            block.swap(i, (x % (i as u64 + 1)) as usize);
        }
    }
    order
}

fn reorder(c: &mut Criterion) {
    let data = Bytes::from(vec![0x33u8; PIECE * PIECES]);
    let mut g = c.benchmark_group("reorder/16KiB_pieces");
    g.throughput(Throughput::Bytes((PIECE * PIECES) as u64));
    for (name, window) in [("in_order", 1), ("shuffled_w8", 8), ("shuffled_w64", 64)] {
        let order = arrival_order(window, 0x9e37_79b9);
        let pieces: Vec<(u64, Bytes)> = order
            .iter()
            .map(|&i| ((i * PIECE) as u64, data.slice(i * PIECE..(i + 1) * PIECE)))
            .collect();
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut buf = ReorderBuffer::new();
                let mut read = 0usize;
                for (off, piece) in &pieces {
                    buf.insert(*off, piece.clone());
                    while let Some(chunk) = buf.read(usize::MAX) {
                        read += chunk.len();
                    }
                }
                assert_eq!(read, PIECE * PIECES);
                black_box(buf)
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = reorder
}
criterion_main!(benches);
