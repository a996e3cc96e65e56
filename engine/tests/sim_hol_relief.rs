//! Head-of-line relief (issue 13 item 3): a stream stalled behind a tunnel in a long recovery
//! gets its hole re-sent on another tunnel when the receiver reports it, and recovers sooner;
//! a clean path sends no report; every byte still arrives exactly once and in order.

mod support;

use std::time::Duration;

use mtcpd_engine::Config;
use mtcpd_engine::session::ReliefStats;
use mtcpd_engine::sim::bottleneck::BottleneckSpec;
use mtcpd_engine::sim::{LinkSpec, SimPair};
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
