//! A slow reader on one stream neither slows the others nor holds more memory than its window.

mod support;

use std::time::Duration;

use mtcpd_engine::Config;
use mtcpd_engine::sim::{LinkSpec, SimPair};
use support::{FlowSpec, Workload};

const MIB: u64 = 1 << 20;

fn config() -> Config {
    Config {
        psk: b"k".to_vec(),
        stream_window: 2 * MIB,
        session_window: 16 * MIB,
        stream_send_buffer: 512 * 1024,
        ..Config::default()
    }
}

fn links() -> Vec<LinkSpec> {
    vec![LinkSpec::new(10, 100.0); 4]
}

/// Simulated seconds for flows 1..=3 (8 MiB each) to finish, with flow 0 (64 MiB) never read
/// (`stalled`) or absent.
fn time_for_fast_flows(stalled: bool) -> (Duration, SimPair, Workload) {
    let mut flows = vec![FlowSpec::bulk(8 * MIB, 0); 3];
    if stalled {
        flows.insert(0, FlowSpec::bulk(64 * MIB, 0));
    }
    let mut pair = SimPair::new(config(), config(), &links(), 21);
    let mut w = Workload::new(flows);
    if stalled {
        w.paused_readers.push(0);
    }
    let fast: Vec<usize> = if stalled {
        vec![1, 2, 3]
    } else {
        vec![0, 1, 2]
    };
    let mut peak_slow_recv = 0usize;
    let mut peak_slow_send = 0usize;
    let done = pair.run(Duration::from_secs(120), |p| {
        w.step(p);
        if stalled && let (Some(id), Some(server)) = (w.stream_of(0), p.server()) {
            if let Some((_, recv)) = server.stream_buffered(id) {
                peak_slow_recv = peak_slow_recv.max(recv);
            }
            if let Some((send, _)) = p.client.stream_buffered(id) {
                peak_slow_send = peak_slow_send.max(send);
            }
        }
        fast.iter().all(|&i| w.flow_done(i))
    });
    assert!(done, "fast flows did not finish: {:?}", w.errors);
    if stalled {
        let cfg = config();
        assert!(
            peak_slow_recv as u64 <= cfg.stream_window,
            "slow stream held {peak_slow_recv} bytes at the receiver, window is {}",
            cfg.stream_window
        );
        assert!(peak_slow_send <= cfg.stream_send_buffer);
        assert!(
            peak_slow_recv as u64 >= cfg.stream_window / 2,
            "the window was used"
        );
    }
    (pair.elapsed(), pair, w)
}

#[test]
fn a_stalled_reader_does_not_slow_other_streams_and_stays_within_its_window() {
    let (alone, _, _) = time_for_fast_flows(false);
    let (with_stalled, pair, mut w) = time_for_fast_flows(true);
    let ratio = with_stalled.as_secs_f64() / alone.as_secs_f64();
    eprintln!(
        "fast flows: alone {alone:?}, beside a stalled reader {with_stalled:?} ({ratio:.2}x)"
    );
    // The stalled stream may take its window (2 MiB of 24 MiB) of the capacity once; no more.
    assert!(ratio < 1.25, "fast flows slowed by {ratio:.2}x");
    // Whole-session memory stays bounded too: windows and buffers, not the 64 MiB.
    let held = pair.client.stats().buffered_bytes + pair.server().unwrap().stats().buffered_bytes;
    assert!(held < 8 * MIB, "held {held} bytes");
    // Released, the slow reader gets everything, byte-exact.
    w.paused_readers.clear();
    let mut pair = pair;
    assert!(
        pair.run(Duration::from_secs(120), |p| w.step(p)),
        "{:?}",
        w.errors
    );
    w.verify().unwrap();
}
