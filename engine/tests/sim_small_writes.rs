//! Many small writes striped round-robin over two tunnels of different delays: the case
//! `sim_props` found (100 B writes on 21 / 45 ms links) where every frame carried one write, the
//! receiver held thousands of tiny out-of-order ranges (past `max_pending_ranges`, which closes
//! the session) and spent its time merging them. Small writes now share chunks at the sender
//! (`engine/src/chunks.rs`). (These loads pass either way in the simulator, 5x slower before;
//! the collapse shows through the runtime: docs/BENCHMARKS.md, *Scale: message rate*.)

mod support;

use std::time::Duration;

use mtcpd_engine::Config;
use mtcpd_engine::scheduler::SchedulerKind;
use mtcpd_engine::sim::{LinkSpec, SimPair};
use support::{FlowSpec, Workload};

fn run(write_chunk: usize, links: &[LinkSpec], seed: u64) {
    let config = Config {
        psk: b"k".to_vec(),
        scheduler: SchedulerKind::RoundRobin,
        ..Config::default()
    };
    let mut pair = SimPair::new(config.clone(), config, links, seed);
    let flows = (0..6).map(|_| FlowSpec::bulk(400_000, 400_000)).collect();
    let mut w = Workload::new(flows);
    w.write_chunk = write_chunk;
    let done = pair.run(Duration::from_secs(600), |p| w.step(p));
    assert!(done, "did not finish: errors {:?}", w.errors);
    w.verify().unwrap();
}

#[test]
fn hundred_byte_writes_round_robin_on_uneven_links() {
    for seed in 0..4 {
        run(
            100,
            &[LinkSpec::new(21, 100.0), LinkSpec::new(45, 100.0)],
            seed,
        );
    }
}

#[test]
fn sixty_four_byte_writes_over_four_uneven_links() {
    let links = [
        LinkSpec::new(5, 50.0),
        LinkSpec::new(21, 100.0),
        LinkSpec::new(45, 20.0),
        LinkSpec::new(80, 200.0),
    ];
    for seed in 0..2 {
        run(64, &links, seed);
    }
}
