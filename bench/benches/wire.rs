//! Frame layer: `Frame::encode` (vectored, into a `Vec<Bytes>`), `Frame::to_bytes` (one
//! contiguous buffer) and `wire::decode`, for DATA frames of 64 B, 1 KiB and 16 KiB payloads and
//! for small control frames (ACK, STREAM_WINDOW).
//!
//! Run: `cargo bench -p mtcpd-bench --bench wire`.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mtcpd_engine::Config;
use mtcpd_engine::wire::{self, Frame};

/// Throughput of handling `frames` copies of `frame`: bytes for DATA, frames for control.
fn throughput(frame: &Frame, frames: usize) -> Throughput {
    if matches!(frame, Frame::Data { .. }) {
        Throughput::Bytes((frame.encoded_len() * frames) as u64)
    } else {
        Throughput::Elements(frames as u64)
    }
}

/// Frames per decode batch: decoding is measured over a buffer holding this many frames.
const BATCH: usize = 64;

fn data_frame(len: usize) -> Frame {
    Frame::Data {
        stream: 42,
        offset: 1 << 30,
        fin: false,
        payload: Bytes::from(vec![0x5a; len]),
    }
}

/// The frames measured. DATA frames report bytes/s, control frames frames/s.
fn cases() -> Vec<(&'static str, Frame)> {
    vec![
        ("data_64B", data_frame(64)),
        ("data_1KiB", data_frame(1024)),
        ("data_16KiB", data_frame(16 * 1024)),
        ("ack", Frame::Ack { frames: 123_456 }),
        (
            "stream_window",
            Frame::StreamWindow {
                stream: 8,
                max_offset: 1 << 34,
            },
        ),
    ]
}

fn encode(c: &mut Criterion) {
    let copy_below = Config::default().copy_threshold;
    let mut g = c.benchmark_group("wire/encode");
    for (name, frame) in cases() {
        g.throughput(throughput(&frame, 1));
        let mut scratch = BytesMut::with_capacity(4096);
        let mut out = Vec::with_capacity(4);
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                black_box(&frame).encode(&mut scratch, copy_below, &mut out);
                black_box(&out);
            })
        });
    }
    g.finish();
}

fn to_bytes(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire/to_bytes");
    for (name, frame) in cases() {
        g.throughput(throughput(&frame, 1));
        g.bench_function(name, |b| b.iter(|| black_box(&frame).to_bytes()));
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let max_body = Config::default().max_frame_body;
    let mut g = c.benchmark_group("wire/decode");
    for (name, frame) in cases() {
        let one = frame.to_bytes();
        let mut wire_buf = Vec::with_capacity(one.len() * BATCH);
        for _ in 0..BATCH {
            wire_buf.extend_from_slice(&one);
        }
        g.throughput(throughput(&frame, BATCH));
        g.bench_function(format!("{name}_x{BATCH}"), |b| {
            b.iter_batched_ref(
                || BytesMut::from(&wire_buf[..]),
                |buf| {
                    while let Ok(Some(f)) = wire::decode(buf, max_body) {
                        black_box(f);
                    }
                },
                BatchSize::SmallInput,
            )
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
    targets = encode, to_bytes, decode
}
criterion_main!(benches);
