//! Head-of-line relief (issue 13 item 3): a stream stalled behind a tunnel in a long recovery
//! gets its hole re-sent on another tunnel when the receiver reports it, and recovers sooner;
//! a clean path sends no report; every byte still arrives exactly once and in order.

mod support;

use std::time::{Duration, Instant};

use mtcpd_engine::Config;
use mtcpd_engine::error::SessionError;
use mtcpd_engine::handshake::CAP_HOL_REPORT;
use mtcpd_engine::session::ReliefStats;
use mtcpd_engine::sim::bottleneck::BottleneckSpec;
use mtcpd_engine::sim::{LinkSpec, SimPair};
use mtcpd_engine::wire::Frame;
use support::direct::{inject, server_session, transmit};
use support::{FlowSpec, Workload};

const MIB: u64 = 1 << 20;

fn config(relief: bool) -> Config {
    Config {
        psk: b"k".to_vec(),
        hol_relief: relief,
        ..Config::default()
    }
}

struct Outcome {
    /// When the receiver had every byte (the whole run also waits for the stalled tunnel's
    /// acknowledgements).
    elapsed: Duration,
    /// The client's (the sender's) relief counters.
    sender: ReliefStats,
    /// The server's (the receiver's).
    receiver: ReliefStats,
}

/// 24 MiB up over 4 tunnels (20 ms each way, 100 Mbit/s each); once the server has 8 MiB,
/// tunnel 1 holds everything for `stall` (a TCP retransmission timeout, or a burst of losses).
fn stalled_transfer(relief: bool, stall: Option<Duration>, seed: u64) -> Outcome {
    let links = vec![LinkSpec::new(20, 100.0); 4];
    let mut pair = SimPair::new(config(relief), config(relief), &links, seed).plaintext();
    let mut w = Workload::new(vec![FlowSpec::bulk(24 * MIB, 0)]);
    let mut fired = false;
    let mut delivered = None;
    let start = pair.now;
    let done = pair.run(Duration::from_secs(120), |p| {
        if !fired && w.server_received(0) >= 8 * MIB {
            fired = true;
            if let Some(d) = stall {
                let until = p.now + d;
                p.stall(1, until);
            }
        }
        let finished = w.step(p);
        if delivered.is_none() && w.server_received(0) == 24 * MIB {
            delivered = Some(p.now - start);
        }
        finished
    });
    assert!(done, "transfer did not finish: {:?}", w.errors);
    w.verify().unwrap();
    let receiver = pair.server().map(|s| s.stats().relief).unwrap_or_default();
    Outcome {
        elapsed: delivered.unwrap_or_default(),
        sender: pair.client.stats().relief,
        receiver,
    }
}

#[test]
fn a_stream_stalled_behind_a_recovering_tunnel_recovers_sooner_with_relief() {
    let stall = Some(Duration::from_millis(800));
    let off = stalled_transfer(false, stall, 1);
    let on = stalled_transfer(true, stall, 1);
    eprintln!(
        "800 ms stall: off {:?}, on {:?}; sender {:?}; receiver {:?}",
        off.elapsed, on.elapsed, on.sender, on.receiver
    );
    assert_eq!(off.sender, ReliefStats::default(), "off sends no relief");
    assert!(on.receiver.reports_sent > 0, "{:?}", on.receiver);
    assert!(on.sender.frames_resent > 0, "{:?}", on.sender);
    // The stall costs the transfer ~460 ms without relief (clean: ~604 ms); with it, the hole
    // is re-sent about one wait (1.25 × srtt) plus one round trip after it opened.
    assert!(
        on.elapsed + Duration::from_millis(250) < off.elapsed,
        "relief {:?} vs none {:?}",
        on.elapsed,
        off.elapsed
    );
    // Bounded: at most 1/8 of the stream bytes (plus the saved-up cap) are re-sent.
    assert!(on.sender.bytes_resent <= 24 * MIB / 8 + (4 << 20));
}

#[test]
fn a_clean_path_sends_no_report_and_loses_nothing() {
    let off = stalled_transfer(false, None, 2);
    let on = stalled_transfer(true, None, 2);
    eprintln!("clean: off {:?}, on {:?}", off.elapsed, on.elapsed);
    assert_eq!(on.receiver.reports_sent, 0, "{:?}", on.receiver);
    assert_eq!(on.sender.frames_resent, 0);
    assert_eq!(on.elapsed, off.elapsed, "the clean path is unchanged");
}

#[test]
fn relief_needs_both_ends() {
    // Only the server announces it: the client neither reports nor is reported to.
    let links = vec![LinkSpec::new(20, 100.0); 4];
    let mut pair = SimPair::new(config(false), config(true), &links, 3).plaintext();
    let mut w = Workload::new(vec![FlowSpec::bulk(16 * MIB, 4 * MIB)]);
    let mut fired = false;
    let done = pair.run(Duration::from_secs(120), |p| {
        if !fired && w.server_received(0) >= 4 * MIB {
            fired = true;
            let until = p.now + Duration::from_millis(800);
            p.stall(1, until);
        }
        w.step(p)
    });
    assert!(done, "{:?}", w.errors);
    w.verify().unwrap();
    let server = pair.server().map(|s| s.stats().relief).unwrap_or_default();
    assert_eq!(server, ReliefStats::default());
    assert_eq!(pair.client.stats().relief, ReliefStats::default());
}

/// A server session with 4 tunnels whose client announced `caps`, relief on here as `relief`.
#[test]
fn hostile_reports_change_nothing_and_cost_bounded_work() {
    let now = Instant::now();
    let mut s = server_session(config(true), CAP_HOL_REPORT, now);
    let streams: Vec<u64> = (0..2).map(|_| s.open_stream(None).unwrap()).collect();
    let chunk = vec![0x5a; 64 * 1024];
    for &id in &streams {
        for _ in 0..16 {
            s.write_slice(id, &chunk).unwrap();
        }
    }
    transmit(&mut s, now);
    let sent = s.stats().stream_bytes_sent;
    assert_eq!(
        sent,
        2 << 20,
        "everything framed and retained, none acknowledged"
    );
    let retained = s.stats().retained_bytes;
    // Bogus: a stream never opened, the peer's own parity, offsets beyond what was sent,
    // u64::MAX everywhere, a zero length.
    let bogus = [
        (u64::MAX, 0, 1),
        (1 << 40, 0, 1 << 20),
        (streams[0] + 1, 0, 1 << 20),
        (streams[0], sent, 1),
        (streams[0], u64::MAX, u64::MAX),
    ];
    for (stream, offset, length) in bogus {
        inject(
            &mut s,
            now,
            1,
            &[Frame::HolReport {
                stream,
                offset,
                length,
            }],
        )
        .unwrap();
    }
    let r = s.relief_stats();
    assert_eq!((r.reports_received, r.reports_ignored), (5, 5), "{r:?}");
    assert_eq!(r.frames_resent, 0);
    assert_eq!(transmit(&mut s, now), 0, "nothing to send for them");
    // A flood of plausible reports, every offset of both streams, over and over.
    let flood: Vec<Frame> = (0..20_000u64)
        .map(|i| Frame::HolReport {
            stream: streams[(i % 2) as usize],
            offset: (i * 4099) % (1 << 20),
            length: u64::MAX,
        })
        .collect();
    let started = std::time::Instant::now();
    inject(&mut s, now, 2, &flood).unwrap();
    let resent = transmit(&mut s, now) as u64;
    let r = s.relief_stats();
    eprintln!(
        "flood: {r:?}, {resent} bytes re-sent, handled in {:?}",
        started.elapsed()
    );
    assert_eq!(r.reports_received, 5 + 20_000);
    // Paid from a credit of 1/8 of what was sent: at most 256 KiB re-sent, each frame at most
    // once, the retention unchanged beyond those copies.
    assert!(r.bytes_resent <= sent / 8, "{r:?}");
    assert_eq!(resent, r.bytes_resent);
    assert!(s.stats().retained_bytes <= retained + sent / 8);
    assert!(r.reports_ignored >= 20_000 - 20, "{r:?}");
    assert!(s.stats().active_tunnels == 4, "no tunnel or session lost");
}

#[test]
fn a_report_without_the_capability_breaks_the_protocol() {
    let now = Instant::now();
    let mut s = server_session(config(false), CAP_HOL_REPORT, now);
    let report = Frame::HolReport {
        stream: 0,
        offset: 0,
        length: 1,
    };
    assert!(matches!(
        inject(&mut s, now, 0, &[report]),
        Err(SessionError::Protocol(_))
    ));
}

#[test]
fn relief_is_off_unless_the_peer_announced_it() {
    // Relief on here, not announced by the peer: a hole is never reported.
    let now = Instant::now();
    let mut s = server_session(config(true), 0, now);
    let data = |offset: u64| Frame::Data {
        stream: 0,
        offset,
        fin: false,
        payload: bytes::Bytes::from(vec![1u8; 1000]),
    };
    inject(
        &mut s,
        now,
        0,
        &[
            Frame::Open {
                stream: 0,
                target: None,
            },
            data(1000),
        ],
    )
    .unwrap();
    let later = now + Duration::from_secs(5);
    s.handle_timeout(later);
    assert_eq!(s.relief_stats(), ReliefStats::default());
    assert!(
        s.poll_timeout()
            .is_some_and(|t| t > now + Duration::from_secs(1))
    );
}

/// Goodput (bytes/s) of `bytes` up over 8 tunnels (`one_way_ms` each way) behind `spec`, relief
/// on or off, and the sender's relief counters.
fn bottleneck_goodput(
    relief: bool,
    spec: BottleneckSpec,
    one_way_ms: u64,
    bytes: u64,
    seed: u64,
) -> (f64, ReliefStats) {
    let c = Config {
        stream_window: 32 << 20,
        session_window: 64 << 20,
        initial_rate: 1e6,
        ..config(relief)
    };
    let links = vec![LinkSpec::new(one_way_ms, 100.0); 8];
    let mut pair = SimPair::new(c.clone(), c, &links, seed)
        .plaintext()
        .with_bottleneck(spec);
    let mut w = Workload::new(vec![FlowSpec::bulk(bytes, 0)]);
    let mut delivered = None;
    let start = pair.now;
    let done = pair.run(Duration::from_secs(900), |p| {
        let finished = w.step(p);
        if delivered.is_none() && w.server_received(0) == bytes {
            delivered = Some(p.now - start);
        }
        finished
    });
    assert!(done, "{:?}", w.errors);
    w.verify().unwrap();
    let secs = delivered.unwrap_or_default().as_secs_f64();
    (bytes as f64 / secs, pair.client.stats().relief)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Relief on vs off on one path, seeds 1..=3: (median off, median on, each run's ratio).
fn compare(name: &str, spec: BottleneckSpec, one_way_ms: u64, bytes: u64) -> (f64, f64) {
    let (mut offs, mut ons, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for seed in 1..=3 {
        let (off, _) = bottleneck_goodput(false, spec, one_way_ms, bytes, seed);
        let (on, r) = bottleneck_goodput(true, spec, one_way_ms, bytes, seed);
        eprintln!(
            "{name} seed {seed}: off {:.1} Mbit/s, on {:.1} Mbit/s ({:.3}x); {r:?}",
            off * 8e-6,
            on * 8e-6,
            on / off
        );
        offs.push(off);
        ons.push(on);
        ratios.push(on / off);
    }
    let (off, on) = (median(offs), median(ons));
    ratios.sort_by(f64::total_cmp);
    eprintln!(
        "{name}: median off {:.1}, on {:.1} Mbit/s; ratio median {:.3}x, range {:.3}..{:.3}",
        off * 8e-6,
        on * 8e-6,
        median(ratios.clone()),
        ratios[0],
        ratios[ratios.len() - 1]
    );
    (off, on)
}

#[test]
fn relief_costs_little_under_random_loss_and_nothing_on_a_clean_path() {
    // 100 Mbit/s shared, 50 ms each way, 1 % random loss, a lost retransmission waits 200 ms.
    // In this Reno-like model the tunnels are window-bound at 1 % (~12 Mbit/s in all), not
    // waiting on the stream's holes, so relief cannot raise goodput here (0.93-1.01x measured,
    // docs/BENCHMARKS.md); what it must not do is waste it: its copies are capped at 1/8.
    let rto = BottleneckSpec {
        rto: Duration::from_millis(200),
        queue: 8 << 20,
        ..BottleneckSpec::new(100.0, 0, 0.01)
    };
    let (off, on) = compare("1 % loss, RTO 200 ms", rto, 50, 24 << 20);
    assert!(on > off * 0.85, "relief {on} vs none {off}");
    // Clean paths with a queue of 0.4 to 1 BDP: the coupled cap leaves room for the sockets'
    // unsent bytes (up to half a BDP on top of its 1.25), so a shallow queue takes a few
    // drops, and relief copies for their holes (about 1 % of the bytes). Without random loss
    // this model is deterministic, and one run moves by several percent with any change of
    // timing: relief on against off read 0.91-1.04x over these six queues and delays with a
    // quarter BDP of room, 0.94-1.09x with half. So the median of the six must hold.
    let mut ratios = Vec::new();
    for (queue_ms, one_way_ms) in [(50, 50), (40, 50), (60, 50), (50, 45), (50, 55), (100, 50)] {
        let clean = BottleneckSpec::new(100.0, queue_ms, 0.0);
        let (off, _) = bottleneck_goodput(false, clean, one_way_ms, 24 << 20, 1);
        let (on, r) = bottleneck_goodput(true, clean, one_way_ms, 24 << 20, 1);
        eprintln!(
            "clean, queue {queue_ms} ms, {one_way_ms} ms each way: {:.3}x; {r:?}",
            on / off
        );
        ratios.push(on / off);
    }
    let ratio = median(ratios.clone());
    assert!(ratio >= 0.975, "median {ratio}: {ratios:?}");
}

/// The figures for docs/BENCHMARKS.md (slow: run with --run-ignored).
#[test]
#[ignore]
fn relief_goodput_figures() {
    let lossy = BottleneckSpec {
        queue: 8 << 20,
        ..BottleneckSpec::new(100.0, 0, 0.01)
    };
    compare("1 % loss, fast retransmit", lossy, 50, 32 << 20);
    let rto = BottleneckSpec {
        rto: Duration::from_millis(200),
        ..lossy
    };
    compare("1 % loss, RTO 200 ms", rto, 50, 32 << 20);
    compare("250 ms RTT, 1 % loss, RTO 200 ms", rto, 125, 32 << 20);
    compare(
        "clean, 50 ms queue",
        BottleneckSpec::new(100.0, 50, 0.0),
        50,
        32 << 20,
    );
}
