//! Property test: random opens, writes of random sizes, half-closes and resets over 1–16
//! tunnels of different delays and bandwidths ⇒ every stream's bytes arrive exactly once and in
//! order, in both directions, on streams either end opened.

mod support;

use std::time::Duration;

use mtcpd_engine::Config;
use mtcpd_engine::scheduler::SchedulerKind;
use mtcpd_engine::sim::{LinkSpec, Side, SimPair};
use proptest::prelude::*;
use support::{FlowSpec, Workload};

fn flow_strategy() -> impl Strategy<Value = FlowSpec> {
    (
        prop_oneof![Just(0u64), 1u64..2000, 2000u64..300_000],
        prop_oneof![Just(0u64), 1u64..2000, 2000u64..300_000],
        any::<bool>(),
        prop_oneof![
            6 => Just(None),
            1 => (any::<bool>(), 0u64..100_000).prop_map(|(client, at)| Some((
                if client { Side::Client } else { Side::Server },
                at
            ))),
        ],
        prop_oneof![3 => Just(Side::Client), 1 => Just(Side::Server)],
    )
        .prop_map(|(up, down, reply_after_eof, reset, opened_by)| FlowSpec {
            up,
            down,
            reply_after_eof,
            reset,
            target: None,
            opened_by,
        })
}

fn link_strategy() -> impl Strategy<Value = LinkSpec> {
    (1u64..120, 1u64..200).prop_map(|(delay, mbit)| LinkSpec::new(delay, mbit as f64))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn every_byte_arrives_once_and_in_order(
        links in proptest::collection::vec(link_strategy(), 1..=16),
        flows in proptest::collection::vec(flow_strategy(), 1..8),
        small_windows in any::<bool>(),
        round_robin in any::<bool>(),
        write_chunk in prop_oneof![Just(100usize), Just(5000usize), Just(65536usize)],
        seed in any::<u64>(),
    ) {
        let mut config = Config {
            psk: b"k".to_vec(),
            scheduler: if round_robin { SchedulerKind::RoundRobin } else { SchedulerKind::EarliestDelivery },
            ..Config::default()
        };
        if small_windows {
            // Windows smaller than the transfers: credit updates and blocking are exercised.
            config.stream_window = 16 * 1024;
            config.session_window = 48 * 1024;
            config.stream_send_buffer = 8 * 1024;
            config.max_frame_payload = 1024;
            config.max_streams = 3;
        }
        let mut pair = SimPair::new(config.clone(), config, &links, seed);
        let mut w = Workload::new(flows);
        w.write_chunk = write_chunk;
        let done = pair.run(Duration::from_secs(600), |p| w.step(p));
        prop_assert!(done, "did not finish: errors {:?}", w.errors);
        if let Err(e) = w.verify() {
            prop_assert!(false, "{}", e);
        }
    }
}
