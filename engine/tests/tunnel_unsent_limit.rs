//! How many unsent bytes each tunnel's socket may hold (`Session::tunnel_unsent_limit`, the
//! TCP_NOTSENT_LOWAT a driver applies): the configured value, or 4 ms of the tunnel's measured
//! delivery rate rounded up to a power of two when that is more, at most 16 MiB.

mod support;

use std::time::{Duration, Instant};

use mtcpd_engine::Config;
use support::direct::server_session_with;

const KIB: u32 = 1024;

/// The limit of a one-tunnel session whose sockets hold `configured` unsent, with the
/// tunnel's rate (bytes/s) set to each of `rates` in turn.
fn limits(configured: u32, rates: &[f64]) -> Vec<u32> {
    let now = Instant::now();
    let config = Config {
        psk: b"k".to_vec(),
        tunnel_unsent_bytes: configured,
        ..Config::default()
    };
    let mut s = server_session_with(config, 0, 1, now);
    let mut out = vec![s.tunnel_unsent_limit(0)];
    for &rate in rates {
        s.set_tunnel_path(0, Duration::from_millis(100), rate, now);
        out.push(s.tunnel_unsent_limit(0));
    }
    out
}

#[test]
fn a_fast_tunnel_may_hold_four_milliseconds_of_its_rate() {
    // Unmeasured, 80 Mbit/s, 1 Gbit/s (4 ms is 500 kB), 1 Tbit/s, and back to 80 Mbit/s.
    let rates = [10e6, 125e6, 125e9, 10e6];
    assert_eq!(
        limits(128 * KIB, &rates),
        [128 * KIB, 128 * KIB, 512 * KIB, 16 * 1024 * KIB, 128 * KIB]
    );
    // A larger configured value stays the least.
    assert_eq!(
        limits(1024 * KIB, &rates),
        [
            1024 * KIB,
            1024 * KIB,
            1024 * KIB,
            16 * 1024 * KIB,
            1024 * KIB
        ]
    );
    // Configured above the maximum: the configured value, however fast.
    assert!(limits(32 << 20, &rates).iter().all(|&x| x == 32 << 20));
    // No bound configured (the kernel's default): none, however fast.
    assert!(limits(u32::MAX, &rates).iter().all(|&x| x == u32::MAX));
}

#[test]
fn an_unknown_tunnel_gets_the_configured_limit() {
    let s = server_session_with(Config::default(), 0, 1, Instant::now());
    assert_eq!(
        s.tunnel_unsent_limit(7),
        Config::default().tunnel_unsent_bytes
    );
}
