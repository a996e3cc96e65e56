//! Support for the runtime tests: the options every in-process client–server pair starts from.
#![allow(dead_code)]

use std::time::Duration;

use mtcpd_engine::runtime::RuntimeOptions;
use mtcpd_testkit::Driver;

/// Options for one end of an in-process pair on `io`: the test's key `psk`, `pool` tunnels,
/// `drain` to stop, and no congestion control asked of the tunnels (the host's default: not
/// every test host offers bbr).
pub fn options(io: Driver, psk: &[u8], pool: u16, drain: Duration) -> RuntimeOptions {
    let mut o = RuntimeOptions {
        // The kit's driver names are the engine's `IoChoice` names.
        io: io.name().parse().expect("a driver name"),
        drain_timeout: drain,
        ..RuntimeOptions::default()
    };
    o.engine.psk = psk.to_vec();
    o.engine.pool_size = pool;
    o.tunnel_sockets.congestion = None;
    o
}
