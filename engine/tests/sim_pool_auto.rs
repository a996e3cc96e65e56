//! The adaptive pool (`Config::pool_auto`) on the simulated network: where each tunnel is its
//! own capped pipe (a per-flow rate cap, as a policer or a per-connection shaper makes), auto
//! grows to many tunnels and gets within 10 % of the best fixed pool; behind one clean shared
//! bottleneck it stays small; a download grows it as an upload does. Every byte arrives intact
//! either way (the workload checks the pattern), including across the graceful retirement of
//! extra tunnels.

mod support;

use std::time::Duration;

use mtcpd_engine::Config;
use mtcpd_engine::sim::bottleneck::BottleneckSpec;
use mtcpd_engine::sim::{LinkSpec, SimPair};
use support::{FlowSpec, Workload};

/// How long each contender runs (virtual time), and the tail over which goodput is measured
/// (after auto has had time to probe).
const RUN: Duration = Duration::from_secs(12);
const TAIL: Duration = Duration::from_secs(4);

#[derive(Debug, Clone, Copy)]
enum Path {
    /// Every tunnel its own 3 Mbit/s pipe, 25 ms each way.
    PerFlowCap,
    /// One clean 40 Mbit/s bottleneck (50 ms queue, no random loss) shared by every tunnel.
    SharedClean,
}

struct Outcome {
    /// Stream bytes/s received by the server over the last [`TAIL`].
    goodput: f64,
    /// The adaptive pool's size at the end (`None`: fixed).
    chosen: Option<usize>,
    /// Every size the adaptive pool took, in order.
    sizes: Vec<usize>,
}

/// The client's config (adaptive or not, smallest pool 2) and the server's, which grants up
/// to `grant` tunnels per session.
fn configs(auto: bool, grant: u16) -> (Config, Config) {
    let client = Config {
        psk: b"k".to_vec(),
        pool_auto: auto,
        pool_min: 2,
        ..Config::default()
    };
    let server = Config {
        pool_size: grant,
        pool_auto: false,
        ..client.clone()
    };
    (client, server)
}

/// One backlogged upload for [`RUN`] over `slots` tunnel slots, adaptive or fixed.
fn run(path: Path, slots: usize, auto: bool, seed: u64) -> Outcome {
    let links = match path {
        Path::PerFlowCap => vec![LinkSpec::new(25, 3.0); slots],
        Path::SharedClean => vec![LinkSpec::new(25, 1000.0); slots],
    };
    // The server grants up to 32 tunnels (its default is 8).
    let (config, server) = configs(auto, 32);
    let mut pair = SimPair::new(config, server, &links, seed).plaintext();
    if let Path::SharedClean = path {
        pair = pair.with_bottleneck(BottleneckSpec::new(40.0, 50, 0.0));
    }
    // Far more than the run can carry: the session stays backlogged throughout.
    let mut w = Workload::new(vec![FlowSpec::bulk(1 << 40, 0)]);
    let mut sizes = Vec::new();
    let mut tail_start = None;
    let finished = pair.run(RUN, |p| {
        if let Some(n) = p.client.adaptive_pool_target()
            && sizes.last() != Some(&n)
        {
            sizes.push(n);
        }
        if tail_start.is_none() && p.elapsed() >= RUN - TAIL {
            tail_start = Some(w.server_received(0));
        }
        w.step(p)
    });
    assert!(!finished || !w.errors.is_empty(), "the flow cannot finish");
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    let tail = w.server_received(0) - tail_start.expect("the tail was reached");
    Outcome {
        goodput: tail as f64 / TAIL.as_secs_f64(),
        chosen: pair.client.adaptive_pool_target(),
        sizes,
    }
}

/// The best fixed pool of `candidates` on `path`: (size, goodput).
fn best_fixed(path: Path, candidates: &[usize]) -> (usize, f64) {
    let mut best = (0, 0.0);
    for &n in candidates {
        let g = run(path, n, false, 11).goodput;
        eprintln!("{path:?}: fixed {n}: {:.1} Mbit/s", g * 8e-6);
        if g > best.1 {
            best = (n, g);
        }
    }
    best
}

/// The adaptive pool over `slots` slots on `path` beside the best of the fixed pools
/// `candidates`: (auto's outcome, the best fixed goodput), with one line saying how they compare.
fn auto_against_best_fixed(
    path: Path,
    slots: usize,
    seed: u64,
    candidates: &[usize],
) -> (Outcome, f64) {
    let auto = run(path, slots, true, seed);
    let (best_n, best) = best_fixed(path, candidates);
    eprintln!(
        "{path:?}: auto chose {:?} (sizes {:?}): {:.1} Mbit/s = {:.2}x of the best fixed \
         pool ({best_n}: {:.1} Mbit/s)",
        auto.chosen,
        auto.sizes,
        auto.goodput * 8e-6,
        auto.goodput / best,
        best * 8e-6
    );
    (auto, best)
}

#[test]
fn with_a_per_flow_cap_auto_grows_to_many_tunnels_within_a_tenth_of_the_best_fixed_pool() {
    let (auto, best) = auto_against_best_fixed(Path::PerFlowCap, 16, 11, &[2, 8, 16]);
    assert_eq!(
        auto.sizes.first(),
        Some(&2),
        "starts small: {:?}",
        auto.sizes
    );
    assert_eq!(
        auto.chosen,
        Some(16),
        "grew to every slot: {:?}",
        auto.sizes
    );
    assert!(auto.goodput >= 0.9 * best, "{} vs {best}", auto.goodput);
}

#[test]
fn a_download_grows_the_pool_too() {
    // The backlog is on the server; the client sees stream data arriving at every tick.
    let (config, server) = configs(true, 32);
    let links = vec![LinkSpec::new(25, 3.0); 16];
    let mut pair = SimPair::new(config, server, &links, 14).plaintext();
    let mut w = Workload::new(vec![FlowSpec::bulk(0, 1 << 40)]);
    pair.run(RUN, |p| w.step(p));
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    assert_eq!(pair.client.adaptive_pool_target(), Some(16));
}

#[test]
fn the_server_grant_caps_the_adaptive_pool() {
    // A server that grants 8 of the 16 proposed: auto never dials beyond them.
    let (config, server) = configs(true, 8);
    let links = vec![LinkSpec::new(25, 3.0); 16];
    let mut pair = SimPair::new(config, server, &links, 13).plaintext();
    let mut w = Workload::new(vec![FlowSpec::bulk(1 << 40, 0)]);
    let mut most = 0;
    pair.run(RUN, |p| {
        most = most.max(p.client.active_tunnels());
        w.step(p)
    });
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    assert_eq!(pair.client.adaptive_pool_target(), Some(8));
    assert_eq!(most, 8);
    assert_eq!(pair.client.granted_tunnels(), 8);
}

#[test]
fn behind_a_clean_shared_bottleneck_auto_stays_small_and_loses_nothing() {
    let (auto, best) = auto_against_best_fixed(Path::SharedClean, 16, 12, &[2, 8]);
    assert!(auto.chosen <= Some(4), "stayed small: {:?}", auto.sizes);
    assert!(auto.goodput >= 0.9 * best, "{} vs {best}", auto.goodput);
}
