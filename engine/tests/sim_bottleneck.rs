//! The simulator's shared bottleneck: N tunnels behind one drop-tail queue fill it and lose
//! segments to it; random loss drops about its share; every byte still arrives intact and in
//! order (the TCP model retransmits), and no more than the link rate gets through.

mod support;

use std::time::Duration;

use mtcpd_engine::handshake::CAP_TUNNEL_DRAIN;
use mtcpd_engine::sim::bottleneck::{BottleneckSpec, BottleneckStats};
use mtcpd_engine::sim::{LinkSpec, SimPair};
use mtcpd_engine::wire::Frame;
use mtcpd_engine::{Config, Session, TcpReport};
use support::{DAEMON_UNSENT, FlowSpec, Workload, eight_active_tunnels};

/// Eight active tunnels, `coupled_pacing` as given, every other key at its default.
fn eight_tunnels_coupled(coupled: bool) -> SimPair {
    eight_tunnels_unsent(coupled, Config::default().tunnel_unsent_bytes)
}

/// As [`eight_tunnels_coupled`], with sockets that hold `unsent` bytes unsent at most.
fn eight_tunnels_unsent(coupled: bool, unsent: u32) -> SimPair {
    eight_active_tunnels(Config {
        psk: b"k".to_vec(),
        coupled_pacing: coupled,
        tunnel_unsent_bytes: unsent,
        ..Config::default()
    })
}

struct Outcome {
    stats: BottleneckStats,
    elapsed: Duration,
    retransmits: u64,
}

/// Sends `bytes` client→server over `tunnels` tunnels (50 ms each way) behind `spec`.
fn bulk(tunnels: usize, spec: BottleneckSpec, bytes: u64, seed: u64) -> Outcome {
    let config = Config {
        psk: b"k".to_vec(),
        stream_window: 32 << 20,
        session_window: 64 << 20,
        ..Config::default()
    };
    let links = vec![LinkSpec::new(50, 100.0); tunnels];
    let mut pair = SimPair::new(config.clone(), config, &links, seed)
        .plaintext()
        .with_bottleneck(spec);
    let mut w = Workload::new(vec![FlowSpec::bulk(bytes, 0)]);
    assert!(
        pair.run(Duration::from_secs(300), |p| w.step(p)),
        "transfer did not finish: {:?}",
        w.errors
    );
    w.verify().unwrap();
    let retransmits = (0..tunnels)
        .filter_map(|t| pair.tunnel_tcp(t, 0))
        .map(|(r, _)| r)
        .sum();
    Outcome {
        stats: pair.bottleneck_stats(0).unwrap(),
        elapsed: pair.elapsed(),
        retransmits,
    }
}

#[test]
fn eight_tunnels_fill_a_shared_drop_tail_queue_and_lose_segments_to_it() {
    // 50 Mbit/s, a 20 ms queue (125 kB), no random loss: eight slow starts overrun it.
    let spec = BottleneckSpec::new(50.0, 20, 0.0);
    let o = bulk(8, spec, 16 << 20, 1);
    eprintln!(
        "8 tunnels: {:?} in {:?}, {} retransmits",
        o.stats, o.elapsed, o.retransmits
    );
    assert_eq!(o.stats.drops_loss, 0);
    assert!(o.stats.drops_queue > 0, "{:?}", o.stats);
    assert!(
        o.stats.max_queue + spec.mss > spec.queue,
        "the queue never filled: {:?}",
        o.stats
    );
    assert!(o.stats.max_queue <= spec.queue);
    assert_eq!(o.retransmits, o.stats.drops_queue);
    // Never faster than the link: 16 MiB at 50 Mbit/s takes at least 2.7 s.
    let floor = (16u64 << 20) as f64 / spec.rate;
    assert!(o.elapsed.as_secs_f64() > floor, "{:?}", o.elapsed);
}

#[test]
fn random_loss_drops_about_its_share_with_a_queue_that_never_fills() {
    // A queue far larger than 8 windows can fill here: only random loss drops.
    let spec = BottleneckSpec {
        queue: 64 << 20,
        ..BottleneckSpec::new(50.0, 0, 0.01)
    };
    let o = bulk(8, spec, 8 << 20, 2);
    eprintln!("1 % loss: {:?} in {:?}", o.stats, o.elapsed);
    assert_eq!(o.stats.drops_queue, 0);
    let share = o.stats.drops_loss as f64 / o.stats.segments as f64;
    assert!((0.004..0.02).contains(&share), "loss share {share}");
    assert_eq!(o.retransmits, o.stats.drops_loss);
}

#[test]
fn the_bottleneck_is_deterministic_for_a_seed() {
    let spec = BottleneckSpec::new(50.0, 20, 0.005);
    let a = bulk(4, spec, 4 << 20, 7);
    let b = bulk(4, spec, 4 << 20, 7);
    assert_eq!(a.stats, b.stats);
    assert_eq!(a.elapsed, b.elapsed);
}

/// Sends `bytes` client→server over `tunnels` tunnels of `link` behind `spec`, with or
/// without coupled pacing; the bottleneck's counters and the goodput (bytes/s).
fn coupled_run(
    coupled: bool,
    tunnels: usize,
    spec: BottleneckSpec,
    bytes: u64,
    seed: u64,
    link: LinkSpec,
) -> (BottleneckStats, f64) {
    let config = Config {
        psk: b"k".to_vec(),
        stream_window: 32 << 20,
        session_window: 64 << 20,
        // Both contenders start from the same modest assumption (the daemon reads TCP_INFO).
        initial_rate: 1e6,
        coupled_pacing: coupled,
        ..Config::default()
    };
    let links = vec![link; tunnels];
    let mut pair = SimPair::new(config.clone(), config, &links, seed)
        .plaintext()
        .with_bottleneck(spec);
    let mut w = Workload::new(vec![FlowSpec::bulk(bytes, 0)]);
    assert!(
        pair.run(Duration::from_secs(600), |p| w.step(p)),
        "{:?}",
        w.errors
    );
    w.verify().unwrap();
    let stats = pair.bottleneck_stats(0).unwrap();
    (stats, bytes as f64 / pair.elapsed().as_secs_f64())
}

/// Uncoupled and coupled side by side for each seed: (queue drops, goodput) of each.
fn side_by_side(
    label: &str,
    tunnels: usize,
    spec: BottleneckSpec,
    bytes: u64,
    seeds: &[u64],
) -> Vec<((u64, f64), (u64, f64))> {
    side_by_side_on(label, tunnels, spec, bytes, seeds, LinkSpec::new(50, 100.0))
}

/// [`side_by_side`] over tunnels of `link`.
fn side_by_side_on(
    label: &str,
    tunnels: usize,
    spec: BottleneckSpec,
    bytes: u64,
    seeds: &[u64],
    link: LinkSpec,
) -> Vec<((u64, f64), (u64, f64))> {
    seeds
        .iter()
        .map(|&seed| {
            let (u, ug) = coupled_run(false, tunnels, spec, bytes, seed, link);
            let (c, cg) = coupled_run(true, tunnels, spec, bytes, seed, link);
            eprintln!(
                "{label} seed {seed}: uncoupled {} queue drops {} lost {:.2} Mbit/s; coupled {} \
                 queue drops {} lost {:.2} Mbit/s ({:.3}x)",
                u.drops_queue,
                u.drops_loss,
                ug * 8e-6,
                c.drops_queue,
                c.drops_loss,
                cg * 8e-6,
                cg / ug
            );
            ((u.drops_queue, ug), (c.drops_queue, cg))
        })
        .collect()
}

#[test]
fn coupled_pacing_drops_far_fewer_at_a_clean_shared_bottleneck_without_losing_goodput() {
    let spec = BottleneckSpec::new(50.0, 50, 0.0);
    // No random draws without loss: one seed is every seed.
    for ((ud, ug), (cd, cg)) in side_by_side("clean", 8, spec, 48 << 20, &[3]) {
        assert!(cd * 4 < ud, "coupled {cd} vs uncoupled {ud} queue drops");
        assert!(cg >= ug * 0.97, "goodput coupled {cg} vs uncoupled {ug}");
    }
}

/// Random loss at an empty queue: the first loss at low RTT inflation takes the cap off, and
/// the tunnels run as N independent windows (the cap, always on, cost 0.91× here).
#[test]
fn coupled_pacing_gets_out_of_the_way_of_random_loss() {
    let spec = BottleneckSpec::new(50.0, 50, 0.01);
    // The two runs draw their losses at different moments, so one seed's ratio moves by a few
    // percent either way (uncoupled alone spans 12.2..12.8 Mbit/s over these seeds): the bar is
    // on the mean ratio, with a looser one per seed.
    let runs = side_by_side("1 %", 8, spec, 24 << 20, &[4, 6, 8, 11]);
    let ratios: Vec<f64> = runs.iter().map(|((_, ug), (_, cg))| cg / ug).collect();
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    eprintln!("1 %: coupled / uncoupled goodput {ratios:.3?}, mean {mean:.3}");
    assert!(mean >= 0.97, "{ratios:?}");
    assert!(ratios.iter().all(|&r| r >= 0.93), "{ratios:?}");
}

/// Issue 13's second grid anomaly on the simulator: 16 tunnels at 0.1 % loss overfill the
/// shared queue (the loss is too rare to hold 16 windows below it); coupled, the queue's
/// drops fall far while goodput does not. Since the coupled start-up ramps about as fast as
/// slow start (`StartUp`), its end overshoots the queue once, as slow start's does (about 90
/// drops here, against 0-4 with the slow ramp before and ~700 uncoupled). Goodput is held to
/// uncoupled's on average over the seeds and within a tenth on each: since the cap's rate
/// counts what the kernel saw delivered rather than ACK frames (which a hole bunches, and
/// which read high), this Reno-like model's coupled runs read 0.95×, 0.91× and 1.06× (the
/// same seeds read 0.98×, 0.97×, 1.03× on the inflated rate).
#[test]
fn sixteen_coupled_tunnels_do_not_overfill_the_queue_at_a_tenth_of_a_percent_loss() {
    let spec = BottleneckSpec::new(50.0, 50, 0.001);
    let link = LinkSpec {
        buffer: DAEMON_UNSENT,
        ..LinkSpec::new(50, 100.0)
    };
    let runs = side_by_side_on("16 @ 0.1 %", 16, spec, 48 << 20, &[9, 10, 12], link);
    let ratios: Vec<f64> = runs.iter().map(|((_, ug), (_, cg))| cg / ug).collect();
    for ((ud, ug), (cd, cg)) in runs {
        assert!(cd * 4 < ud, "coupled {cd} vs uncoupled {ud} queue drops");
        assert!(cg >= ug * 0.9, "goodput coupled {cg} vs uncoupled {ug}");
    }
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    assert!(mean >= 0.97, "{ratios:?}");
}

/// The cap is the session's measured delivery rate times the RTT, and that rate trails what
/// the tunnels send by about an RTT: with the steady gain the bytes on the path grew 1.16× per
/// RTT, where slow start doubles them (on the emulator at 250 ms, 0.77× of one TCP flow over
/// 20 s). With the start-up gain, coupled tunnels reach the link about as fast as uncoupled
/// ones, and once the queue builds the steady cap keeps them out of it (here 1.02× of
/// uncoupled goodput with no queue drop against 6,666; with the steady gain from the start,
/// 0.86×).
#[test]
fn coupled_tunnels_fill_a_long_fat_path_about_as_fast_as_uncoupled_ones() {
    let spec = BottleneckSpec::new(200.0, 100, 0.0);
    let link = LinkSpec {
        buffer: DAEMON_UNSENT,
        ..LinkSpec::new(125, 1000.0)
    };
    for ((ud, ug), (cd, cg)) in side_by_side_on("250 ms", 8, spec, 64 << 20, &[5], link) {
        assert!(cg >= ug * 0.9, "goodput coupled {cg} vs uncoupled {ug}");
        assert!(cd <= ud, "coupled {cd} vs uncoupled {ud} queue drops");
    }
}

/// HyStart++'s delay threshold ends the start-up (RFC 9406 §4.2, `StartUp::exit_queue`: an
/// eighth of the RTT within 4 to 16 ms). At 250 ms a queue of 17 ms, under the fifth of the RTT
/// that engages the cap, takes the cap from the start-up's gain (2) to the steady one (1.25)
/// while the rate still doubles every RTT; 15 ms does not. The cap stays engaged throughout.
/// (On the emulator at 250 ms the start-up had overrun the path by the time the queue read a
/// fifth: 26-48k queue drops, none with this.)
#[test]
fn a_queue_of_16_ms_ends_the_start_up_at_250_ms() {
    let ms = Duration::from_millis;
    let report = |srtt, delivered_bytes| TcpReport {
        srtt,
        min_rtt: ms(250),
        retransmits: 0,
        held_bytes: 0,
        cwnd_bytes: 0,
        unsent_bytes: 0,
        delivered_bytes,
    };
    let mut pair = eight_tunnels_coupled(true);
    let mut now = pair.now;
    let c = &mut pair.client;
    let id = c.open_stream(None).unwrap();
    c.write(id, bytes::Bytes::from(vec![7u8; 1 << 20])).unwrap();
    // Each tunnel's peer receives at a rate that doubles every RTT, for 2 s.
    let (mut delivered, mut rate) = ([1u64; 8], 100e3);
    for _ in 0..200 {
        now += ms(10);
        rate *= 2f64.powf(10.0 / 250.0);
        for (t, d) in delivered.iter_mut().enumerate() {
            *d += (rate * 0.01) as u64;
            c.set_tunnel_tcp_info(t, now, report(ms(250), *d));
        }
    }
    let cap = |c: &Session| c.coupled_stats().and_then(|s| s.cap_bytes).unwrap() as f64;
    let start_up = cap(c);
    let mut after = Vec::new();
    for queue in [15, 17] {
        for (t, &d) in delivered.iter().enumerate() {
            c.set_tunnel_tcp_info(t, now, report(ms(250 + queue), d));
        }
        assert!(c.coupled_cap_engaged(), "{queue} ms");
        after.push(cap(c) / start_up);
    }
    assert_eq!(after[0], 1.0, "15 ms: still the start-up's gain");
    // 1.25 / 2 of the BDP part; the tunnels' unsent allowance (1 MiB) is the same in both.
    assert!(after[1] > 0.6 && after[1] < 0.66, "{after:?}");
}

/// The decision itself, driven by hand through the API a driver uses: off until the driver
/// reports TCP_INFO, engaged by the first report;
/// one tunnel's loss at an empty queue is not enough, a quarter of the tunnels' is; a queue
/// of a fifth of the RTT engages it again; without `coupled_pacing` it never binds, and the
/// driver is not asked for TCP_INFO.
#[test]
fn the_coupled_cap_follows_the_queue_and_comes_off_after_quiet_losses() {
    let ms = Duration::from_millis;
    let report = |srtt, min_rtt, retransmits| TcpReport {
        srtt,
        min_rtt,
        retransmits,
        held_bytes: 0,
        cwnd_bytes: 0,
        unsent_bytes: 0,
        delivered_bytes: 0,
    };
    for coupled in [true, false] {
        let mut pair = eight_tunnels_coupled(coupled);
        let now = pair.now;
        let c = &mut pair.client;
        assert!(!c.coupled_cap_engaged(), "nothing reported yet");
        assert!(
            !c.wants_tcp_info(0, now),
            "no stream data waits: no system call"
        );
        let id = c.open_stream(None).unwrap();
        c.write(id, bytes::Bytes::from(vec![7u8; 1 << 20])).unwrap();
        assert_eq!(c.wants_tcp_info(0, now), coupled);
        // Every tunnel measured at an empty queue: no loss yet, engaged.
        for t in 0..8 {
            c.set_tunnel_tcp_info(t, now, report(ms(102), ms(100), 0));
        }
        assert!(!c.wants_tcp_info(0, now), "just reported");
        assert_eq!(c.wants_tcp_info(0, now + ms(10)), coupled);
        assert_eq!(c.coupled_cap_engaged(), coupled);
        c.set_tunnel_tcp_info(3, now, report(ms(102), ms(100), 1));
        assert_eq!(c.coupled_cap_engaged(), coupled, "one tunnel's loss");
        c.set_tunnel_tcp_info(3, now, report(ms(102), ms(100), 2));
        assert_eq!(c.coupled_cap_engaged(), coupled, "the same tunnel again");
        c.set_tunnel_tcp_info(5, now, report(ms(102), ms(100), 1));
        assert!(
            !c.coupled_cap_engaged(),
            "two of eight lost at an empty queue"
        );
        // The queue builds: half the tunnels at +15 ms is not yet a fifth of the RTT...
        for t in 0..4 {
            c.set_tunnel_tcp_info(t, now, report(ms(115), ms(100), 2));
        }
        assert!(!c.coupled_cap_engaged());
        // ... the median at +25 ms is.
        for t in 0..8 {
            c.set_tunnel_tcp_info(t, now, report(ms(125), ms(100), 2));
        }
        assert_eq!(c.coupled_cap_engaged(), coupled, "the queue engages it");
        // Losses while the queue is there are the queue's: it stays engaged.
        for t in 0..8 {
            c.set_tunnel_tcp_info(t, now, report(ms(125), ms(100), 5));
        }
        assert_eq!(c.coupled_cap_engaged(), coupled);
        // The queue drains to +15 ms (between the thresholds): losses do not release it yet.
        for t in 0..8 {
            c.set_tunnel_tcp_info(t, now, report(ms(115), ms(100), 6));
        }
        assert_eq!(c.coupled_cap_engaged(), coupled);
        // A short path (loopback: tens of microseconds) with no queue: off, losses or not.
        let us = Duration::from_micros;
        for t in 0..8 {
            c.set_tunnel_tcp_info(t, now, report(us(80), us(30), 6));
        }
        assert!(!c.coupled_cap_engaged(), "a short path");
    }
}

/// A kernel report of a tunnel behind a queue of 30 % of its 100 ms RTT, 4 MiB on the path,
/// no retransmission, `delivered_bytes` delivered so far.
fn queue_of_30_percent(delivered_bytes: u64) -> TcpReport {
    TcpReport {
        srtt: Duration::from_millis(130),
        min_rtt: Duration::from_millis(100),
        retransmits: 0,
        held_bytes: 4 << 20,
        cwnd_bytes: 0,
        unsent_bytes: 0,
        delivered_bytes,
    }
}

/// What the metrics show of the coupled cap: whether it binds, the cap (gain × the session's
/// delivery rate × the path RTT), the rate over all tunnels and the RTT; nothing with
/// `coupled_pacing` off.
#[test]
fn the_coupled_stats_show_the_cap_its_rate_and_its_rtt() {
    let ms = Duration::from_millis;
    // 8 tunnels delivering 12.5 MB/s each: the session's rate is 100 MB/s (800 Mbit/s).
    const PER_TUNNEL_PER_10MS: u64 = 125_000;
    let report = queue_of_30_percent;
    // Sockets that hold the daemon's default unsent (128 KiB), or a configured 256 KiB; 512 KiB
    // (together 0.42 of the BDP, as eight sockets' share of a 20 ms path at 1 Gbit/s) or 1 MiB
    // (more than half the BDP, where the bound applies).
    for (coupled, unsent) in [
        (true, 128 << 10),
        (true, 256 << 10),
        (true, 512 << 10),
        (true, 1 << 20),
        (false, 128 << 10),
    ] {
        let mut pair = eight_tunnels_unsent(coupled, unsent);
        let start = pair.now;
        let c = &mut pair.client;
        if !coupled {
            assert_eq!(c.coupled_stats(), None);
            continue;
        }
        let before = c.coupled_stats().unwrap();
        assert!(!before.binding && before.cap_bytes.is_none(), "{before:?}");
        assert_eq!((before.delivery_rate, before.rtt_probes), (None, 0));
        let id = c.open_stream(None).unwrap();
        c.write(id, bytes::Bytes::from(vec![7u8; 1 << 20])).unwrap();
        for step in 1..=100u64 {
            for t in 0..8 {
                let at = start + ms(10 * step);
                c.set_tunnel_tcp_info(t, at, report(step * PER_TUNNEL_PER_10MS));
            }
        }
        let x = c.coupled_stats().unwrap();
        assert!(x.binding, "a queue of 30 % of the RTT: {x:?}");
        assert_eq!(
            x.path_rtt,
            Some(ms(100)),
            "no probe yet: the kernel's minimum"
        );
        assert_eq!(
            x.bytes_on_path, 0,
            "the kernel's count, never more than what is unacknowledged (nothing framed here)"
        );
        let rate = x.delivery_rate.expect("measured");
        assert!((rate / 100e6 - 1.0).abs() < 0.05, "{rate}");
        // The steady gain (the queue ended the start-up): 1.25 × 100 MB/s × 100 ms, and
        // room for what each tunnel's socket may hold unsent, together at most half the BDP.
        let cap = x.cap_bytes.expect("binds") as f64;
        let bdp = rate * 0.1;
        let expected = 1.25 * bdp + (8.0 * f64::from(unsent)).min(bdp / 2.0);
        assert!(
            (cap / expected - 1.0).abs() < 0.01,
            "{unsent} B sockets: {cap} vs {expected}"
        );
    }
}

/// The coupled cap weighs the kernel's count of bytes on the path, not the bytes waiting for
/// the peer's ACK frame: data the kernel reports off the path (in the receiver, behind a hole
/// or with its ACK frame on the way back) makes room for new data at once; data the kernel
/// still holds does not.
#[test]
fn the_coupled_cap_weighs_the_kernels_bytes_on_the_path() {
    let ms = Duration::from_millis;
    let config = Config {
        psk: b"k".to_vec(),
        // A cap at its floor, 8 × 64 KiB (1.25 × 8 tunnels × 0.3 MB/s × 100 ms, and half of
        // that for the sockets, is less): under half the first stream credit (1 MiB), so
        // credit does not stop the second drain.
        initial_rate: 0.3e6,
        ..Config::default()
    };
    let mut pair = eight_active_tunnels(config);
    let now = pair.now;
    let c = &mut pair.client;
    let id = c.open_stream(None).unwrap();
    c.write(id, bytes::Bytes::from(vec![7u8; 8 << 20])).unwrap();
    let report = |held_bytes| TcpReport {
        srtt: ms(130),
        min_rtt: ms(100),
        retransmits: 0,
        held_bytes,
        cwnd_bytes: 0,
        unsent_bytes: 0,
        delivered_bytes: 0,
    };
    // Stream bytes framed on any tunnel until none takes more.
    let drain = |c: &mut Session| {
        let before = c.stats().stream_bytes_sent;
        for _ in 0..1_000 {
            let mut n = 0;
            for t in 0..8 {
                n += c.poll_transmit(now, t, 1 << 20, &mut Vec::new());
            }
            if n == 0 {
                break;
            }
        }
        c.stats().stream_bytes_sent - before
    };
    for t in 0..8 {
        c.set_tunnel_tcp_info(t, now, report(0));
    }
    assert!(c.coupled_cap_engaged(), "a queue of 30 % of the RTT");
    let first = drain(c);
    assert!(
        (256 << 10..1 << 20).contains(&first),
        "{first}: the cap binds"
    );
    assert_eq!(drain(c), 0, "nothing acknowledged or reported since");
    for t in 0..8 {
        c.set_tunnel_tcp_info(t, now, report(u64::MAX));
    }
    assert_eq!(drain(c), 0, "the kernel still holds it all");
    for t in 0..8 {
        c.set_tunnel_tcp_info(t, now, report(0));
    }
    let second = drain(c);
    assert!(
        second > first / 2,
        "{second} after {first}: off the path, though not acknowledged"
    );
}

/// A tunnel that joins a session in full flight (here: its slot could not connect until the
/// session had carried a transfer; the adaptive pool's growth is the same case) is in slow
/// start: the scheduler counts on what its congestion window sends per RTT, as the kernel
/// reports it, not on the optimistic initial rate. Assumed at that rate, it drew every frame
/// the measured tunnels could not deliver at once, frames that then waited in its socket for
/// RTTs while the receiver's stream waited for them.
#[test]
fn a_tunnel_joining_a_session_in_flight_is_given_what_its_window_sends() {
    let ms = Duration::from_millis;
    // Without the coupled cap, so that only the scheduler decides.
    let config = Config {
        psk: b"k".to_vec(),
        coupled_pacing: false,
        ..Config::default()
    };
    let framed_on_the_newcomer = |report_window: bool| {
        let links = vec![LinkSpec::new(50, 100.0); 8];
        let mut pair = SimPair::new(config.clone(), config.clone(), &links, 1).plaintext();
        pair.cut(7);
        assert!(pair.run(Duration::from_secs(10), |p| {
            (0..7).all(|t| p.client.tunnel_is_active(t))
        }));
        // A transfer long enough (several RTTs) that the session's delivery rate is measured.
        let mut w = Workload::new(vec![FlowSpec::bulk(32 << 20, 0)]);
        assert!(pair.run(Duration::from_secs(30), |p| w.step(p)));
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        pair.restore(7);
        assert!(pair.run(Duration::from_secs(30), |p| p.client.tunnel_is_active(7)));
        let now = pair.now;
        let c = &mut pair.client;
        // Seven measured tunnels at 4 Mbit/s, 100 ms; the eighth not measured yet.
        for t in 0..7 {
            c.set_tunnel_path(t, ms(100), 0.5e6, now);
        }
        assert!(!c.tunnel_path(7).unwrap().is_measured());
        if report_window {
            // Ten segments, the handshake's RTT.
            let report = TcpReport {
                srtt: ms(100),
                min_rtt: ms(100),
                retransmits: 0,
                held_bytes: 0,
                cwnd_bytes: 14_480,
                unsent_bytes: 0,
                delivered_bytes: 0,
            };
            c.set_tunnel_tcp_info(7, now, report);
        }
        let id = c.open_stream(None).unwrap();
        c.write(id, bytes::Bytes::from(vec![7u8; 8 << 20])).unwrap();
        let mut framed = [0usize; 8];
        for _ in 0..1_000 {
            let mut n = 0;
            for (t, f) in framed.iter_mut().enumerate() {
                let k = c.poll_transmit(now, t, 1 << 20, &mut Vec::new());
                *f += k;
                n += k;
            }
            if n == 0 {
                break;
            }
        }
        eprintln!("window reported: {report_window}: framed per tunnel {framed:?}");
        framed[7]
    };
    let assumed = framed_on_the_newcomer(false);
    let windowed = framed_on_the_newcomer(true);
    assert!(
        assumed > 200 << 10,
        "{assumed}: the assumption draws a socket-full"
    );
    assert!(windowed < 64 << 10, "{windowed}: about its window");
}

/// The coupled cap needs two active tunnels: one tunnel is one flow, and its own congestion
/// control is the well-behaved flow the cap imitates. The same reports (a queue of 30 % of the
/// RTT) engage it with two tunnels, not with one, nor while one of the two drains (it takes
/// nothing new), nor once one of the two is lost.
#[test]
fn one_tunnel_is_never_coupled() {
    let ms = Duration::from_millis;
    let now = std::time::Instant::now();
    let queue = queue_of_30_percent(0);
    let config = Config {
        psk: b"k".to_vec(),
        ..Config::default()
    };
    for tunnels in [1u16, 2] {
        let mut s =
            support::direct::server_session_with(config.clone(), CAP_TUNNEL_DRAIN, tunnels, now);
        for t in 0..usize::from(tunnels) {
            s.set_tunnel_tcp_info(t, now, queue);
        }
        let coupled = tunnels >= 2;
        assert_eq!(s.coupled_cap_engaged(), coupled, "{tunnels} tunnel(s)");
        let stats = s.coupled_stats().expect("coupled_pacing is on");
        assert_eq!(stats.binding, coupled, "{tunnels} tunnel(s): {stats:?}");
        if coupled {
            let drain = |draining| [Frame::TunnelDrain { draining }];
            support::direct::inject(&mut s, now, 1, &drain(true)).unwrap();
            assert!(!s.coupled_cap_engaged(), "one of two draining");
            support::direct::inject(&mut s, now, 1, &drain(false)).unwrap();
            assert!(s.coupled_cap_engaged(), "both in use again");
            s.tunnel_lost(now, 1, "test");
            s.set_tunnel_tcp_info(0, now + ms(10), queue);
            assert!(!s.coupled_cap_engaged(), "one tunnel left");
            assert!(!s.coupled_stats().unwrap().binding);
        }
    }
}
