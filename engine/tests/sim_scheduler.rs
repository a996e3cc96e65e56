//! Earliest-delivery scheduling against blind round-robin over tunnels of very different delay.

mod support;

use std::time::Duration;

use mtcpd_engine::Config;
use mtcpd_engine::scheduler::SchedulerKind;
use mtcpd_engine::sim::{LinkSpec, SimPair};
use support::{FlowSpec, Workload};

fn transfer_time(scheduler: SchedulerKind) -> Duration {
    let config = Config {
        psk: b"k".to_vec(),
        scheduler,
        // Both schedulers at the same fixed 1 MiB window: half the session window is no
        // larger, so auto-tuning (which would grow round-robin's more) cannot change it.
        stream_window: 1 << 20,
        session_window: 2 << 20,
        ..Config::default()
    };
    let links = [LinkSpec::new(10, 100.0), LinkSpec::new(200, 100.0)];
    // Plaintext: this compares schedulers, and the TLS handshake's extra round trip (400 ms on
    // the slow tunnel) would keep the slow tunnel out of round-robin's way at the start.
    let mut pair = SimPair::new(config.clone(), config, &links, 5).plaintext();
    let mut w = Workload::new(vec![FlowSpec::bulk(16 << 20, 0)]);
    assert!(
        pair.run(Duration::from_secs(600), |p| w.step(p)),
        "{:?}",
        w.errors
    );
    w.verify().unwrap();
    pair.elapsed()
}

#[test]
fn earliest_delivery_beats_round_robin_over_10ms_and_200ms_tunnels() {
    let edf = transfer_time(SchedulerKind::EarliestDelivery);
    let rr = transfer_time(SchedulerKind::RoundRobin);
    let ratio = edf.as_secs_f64() / rr.as_secs_f64();
    eprintln!("16 MiB: earliest-delivery {edf:?}, round-robin {rr:?}, ratio {ratio:.2}");
    assert!(ratio < 0.5, "earliest-delivery/round-robin = {ratio:.2}");
}
