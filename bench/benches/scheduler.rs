//! Tunnel schedulers: one `pick` over 2, 8 and 16 paths, for `EarliestDelivery` and `RoundRobin`
//! (which also advances with `on_sent`, as the session does).
//!
//! Run: `cargo bench -p mtcpd-bench --bench scheduler`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mtcpd_engine::scheduler::{EarliestDelivery, PathView, RoundRobin, Scheduler};

/// A DATA frame with a 16 KiB payload.
const FRAME_LEN: usize = 16 * 1024 + 24;

/// `n` varied paths: different backlogs, rates and RTTs; one in five unusable.
fn paths(n: usize) -> Vec<PathView> {
    (0..n)
        .map(|i| PathView {
            usable: i % 5 != 4,
            unacked_bytes: ((i * 7919) % 13) as u64 * 16_408,
            rate: 10e6 + (i % 3) as f64 * 5e6,
            rtt: Duration::from_millis(20 + (i as u64 * 37) % 180),
            waiting_bytes: if i % 2 == 0 { 0 } else { 1 << 20 },
        })
        .collect()
}

fn schedulers(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler/pick");
    g.throughput(Throughput::Elements(1));
    for n in [2usize, 8, 16] {
        let views = paths(n);
        let mut ed = EarliestDelivery;
        g.bench_function(format!("earliest_delivery/{n}"), |b| {
            b.iter(|| ed.pick(black_box(&views), black_box(FRAME_LEN)))
        });
        let mut rr = RoundRobin::default();
        g.bench_function(format!("round_robin/{n}"), |b| {
            b.iter(|| {
                let t = rr.pick(black_box(&views), black_box(FRAME_LEN));
                if let Some(t) = t {
                    rr.on_sent(t);
                }
                t
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
    targets = schedulers
}
criterion_main!(benches);
