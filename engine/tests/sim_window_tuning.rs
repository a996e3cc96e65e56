//! Receive-window auto-tuning (issue 13, docs/PROTOCOL.md §5.1): on a lossy long path with
//! loss-blind (bbr-like) tunnels, a lost retransmission holds the stream's next offset for an RTO
//! while the other tunnels keep delivering; a fixed window fills and the sender runs out of
//! credit. The receiver grows the window (up to half the session window) and goodput follows.
//! A clean path never grows it, and the window never passes its ceiling.

mod support;

use std::time::Duration;

use mtcpd_engine::Config;
use mtcpd_engine::session::WindowStats;
use mtcpd_engine::sim::bottleneck::BottleneckSpec;
use mtcpd_engine::sim::{LinkSpec, SimPair};
use support::{FlowSpec, Workload};

const MIB: u64 = 1 << 20;

struct Outcome {
    /// Stream bytes per second until the receiver had them all.
    goodput: f64,
    /// The sender's (client's) window counters.
    sender: WindowStats,
    /// The receiver's (server's).
    receiver: WindowStats,
}

/// 100 Mbit/s shared by 8 tunnels, 50 ms each way, a 50 ms drop-tail queue; `loss` random loss,
/// a lost retransmission waits a 200 ms RTO; tunnels that ignore random loss, as bbr does.
fn path(loss: f64) -> BottleneckSpec {
    BottleneckSpec {
        rto: Duration::from_millis(200),
        loss_blind: true,
        ..BottleneckSpec::new(100.0, 50, loss)
    }
}

/// `bytes` up over 8 tunnels behind `spec`, with the receive windows given (a stream's window
/// grows up to half the session window).
fn transfer(
    spec: BottleneckSpec,
    stream_window: u64,
    session_window: u64,
    bytes: u64,
    seed: u64,
) -> Outcome {
    let config = Config {
        psk: b"k".to_vec(),
        stream_window,
        session_window,
        ..Config::default()
    };
    let links = vec![LinkSpec::new(50, 100.0); 8];
    let mut pair = SimPair::new(config.clone(), config, &links, seed)
        .plaintext()
        .with_bottleneck(spec);
    let mut w = Workload::new(vec![FlowSpec::bulk(bytes, 0)]);
    let start = pair.now;
    let mut delivered = None;
    let done = pair.run(Duration::from_secs(300), |p| {
        let finished = w.step(p);
        if delivered.is_none() && w.server_received(0) == bytes {
            delivered = Some(p.now - start);
        }
        finished
    });
    assert!(done, "transfer did not finish: {:?}", w.errors);
    w.verify().unwrap();
    let receiver = pair.server().map(|s| s.stats().window).unwrap_or_default();
    let elapsed = delivered.unwrap_or_default().as_secs_f64();
    Outcome {
        goodput: bytes as f64 / elapsed,
        sender: pair.client.stats().window,
        receiver,
    }
}

#[test]
fn a_window_the_lossy_path_fills_grows_and_goodput_follows() {
    let spec = path(0.01);
    // 4 MiB: under the path's bandwidth-delay product plus one RTO of delivery. Fixed (the
    // session window's half is no larger, so it cannot grow: what every stream had before
    // auto-tuning), tuned (it may grow to 32 MiB), and fixed at 32 MiB.
    let fixed = transfer(spec, 4 * MIB, 8 * MIB, 64 * MIB, 1);
    let tuned = transfer(spec, 4 * MIB, 64 * MIB, 64 * MIB, 1);
    let large = transfer(spec, 32 * MIB, 64 * MIB, 64 * MIB, 1);
    eprintln!(
        "1 %: fixed 4 MiB {:.1} Mbit/s ({:?}); tuned from 4 MiB {:.1} ({:?}, {:?}); \
         fixed 32 MiB {:.1} ({:?})",
        fixed.goodput * 8e-6,
        fixed.sender,
        tuned.goodput * 8e-6,
        tuned.sender,
        tuned.receiver,
        large.goodput * 8e-6,
        large.sender,
    );
    assert_eq!(fixed.receiver.stream_window_growths, 0, "at the ceiling");
    assert_eq!(large.receiver.stream_window_growths, 0, "at the ceiling");
    assert!(
        fixed.sender.stream_credit_waits > 0,
        "the window binds here"
    );
    assert!(
        tuned.receiver.stream_window_growths > 0,
        "{:?}",
        tuned.receiver
    );
    assert!(tuned.receiver.stream_window_peak <= 32 * MIB);
    assert!(
        tuned.goodput > 1.25 * fixed.goodput,
        "tuned {:.1} vs fixed {:.1} Mbit/s",
        tuned.goodput * 8e-6,
        fixed.goodput * 8e-6
    );
    assert!(tuned.goodput > 0.85 * large.goodput);
}

#[test]
fn a_path_without_loss_never_grows_the_window() {
    // A queue that never fills: no segment is lost, and the only holes are the tunnels'
    // skew, which a 4 MiB window covers. (Queue drops behind a small queue are losses too, and
    // may grow it: correctly, as a lost retransmission waits an RTO either way.)
    let spec = BottleneckSpec {
        queue: 64 * MIB as usize,
        ..path(0.0)
    };
    let o = transfer(spec, 4 * MIB, 64 * MIB, 32 * MIB, 2);
    eprintln!("no loss: {:.1} Mbit/s, {:?}", o.goodput * 8e-6, o.receiver);
    assert_eq!(o.receiver.stream_window_growths, 0, "{:?}", o.receiver);
    assert_eq!(o.receiver.stream_window_peak, 0);
    assert!(
        o.goodput > 0.8 * spec.rate,
        "{:.1} Mbit/s",
        o.goodput * 8e-6
    );
}
