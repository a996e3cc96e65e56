//! Byte-exact transfers over the simulated network: the basics.

mod support;

use std::time::Duration;

use mtcpd_engine::Config;
use mtcpd_engine::sim::{LinkSpec, SimPair};
use support::{FlowSpec, Workload};

fn keyed() -> Config {
    Config {
        psk: b"correct horse battery staple".to_vec(),
        ..Config::default()
    }
}

#[test]
fn one_stream_both_directions_over_four_tunnels() {
    let links = [
        LinkSpec::new(5, 100.0),
        LinkSpec::new(20, 50.0),
        LinkSpec::new(40, 20.0),
        LinkSpec::new(10, 100.0),
    ];
    let mut pair = SimPair::new(keyed(), keyed(), &links, 1);
    let mut w = Workload::new(vec![FlowSpec::bulk(3 << 20, 2 << 20)]);
    let done = pair.run(Duration::from_secs(60), |p| w.step(p));
    assert!(done, "not finished: {:?}", w.errors);
    w.verify().unwrap();
}

#[test]
fn open_target_reaches_the_server() {
    let links = [LinkSpec::new(5, 100.0)];
    let mut pair = SimPair::new(keyed(), keyed(), &links, 2);
    let mut spec = FlowSpec::bulk(10, 10);
    spec.target = Some("db.internal:5432".into());
    let mut w = Workload::new(vec![spec, FlowSpec::bulk(0, 0)]);
    assert!(pair.run(Duration::from_secs(10), |p| w.step(p)));
    w.verify().unwrap();
    assert!(
        w.targets_seen
            .contains(&Some("db.internal:5432".to_string()))
    );
    assert!(w.targets_seen.contains(&None));
}

#[test]
fn bulk_uses_every_tunnel_and_runs_near_their_sum() {
    // 4 × 50 Mbit/s = 25 MB/s: 16 MiB needs ~0.67 s plus start-up.
    let links = [LinkSpec::new(10, 50.0); 4];
    let mut pair = SimPair::new(keyed(), keyed(), &links, 3);
    let mut w = Workload::new(vec![FlowSpec::bulk(16 << 20, 0)]);
    assert!(pair.run(Duration::from_secs(60), |p| w.step(p)));
    w.verify().unwrap();
    let secs = pair.elapsed().as_secs_f64();
    eprintln!("16 MiB in {secs:.3}s simulated");
    assert!(
        secs < 1.2,
        "16 MiB over 4×50 Mbit/s took {secs:.2}s of simulated time"
    );
    for t in 0..4 {
        let rate = pair.client.tunnel_path(t).unwrap().rate();
        assert!(
            rate > 1e6,
            "tunnel {t} carried little: rate estimate {rate}"
        );
    }
}
