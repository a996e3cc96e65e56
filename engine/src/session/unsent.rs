//! How many unsent bytes each tunnel's socket may hold (its TCP_NOTSENT_LOWAT), which the
//! driver applies.
//!
//! Owns: [`Session::tunnel_unsent_limit`] and its constants. Must not touch: the socket (the
//! driver sets the option) or the coupled cap (which leaves room for the configured value
//! only, see `coupled`).
//!
//! Why it follows the tunnel's rate. A small limit keeps the scheduler's choice of tunnel late:
//! data is not committed to a tunnel long before it can leave. But a socket whose unsent bytes
//! run out between two refills by the event loop sends everything it has and is marked
//! application-limited by the kernel, and a bbr tunnel whose rounds are application-limited
//! never leaves its start-up (it cannot tell a full pipe from a quiet sender): it keeps
//! pacing at 2.89× its rate with a window of 2.89× its BDP, and overfills the bottleneck
//! whenever it has data. One tunnel carrying 1 Gbit/s drains 128 KiB in a millisecond. On the
//! emulator (100 ms, 1 Gbit/s, `coupled_pacing = false`) one tunnel with 128 KiB stayed in
//! start-up for the whole run: 818 Mbit/s with 217k queue drops on the clean path, where one
//! direct bbr flow got 890 with 16k; with 512 KiB (4 ms of 1 Gbit/s) it left start-up and got
//! 895 (16k drops), at 0.1 % loss 850 against 862 direct (1 MiB: 903 and 870). So a tunnel
//! may hold [`UNSENT_TIME`] of its measured delivery rate (mtcpd's own estimate from its ACK
//! frames, [`crate::path::PathEstimate::measured_rate`]), never less than the configured limit
//! ([`crate::Config::tunnel_unsent_bytes`]) and, above it, never more than [`UNSENT_LIMIT_MAX`].
//! A peer that acknowledges in bursts can raise a tunnel's limit to that maximum; what it then
//! holds is still counted in `max_unacked_bytes`, as every sent frame is.
//! Eight tunnels sharing 1 Gbit/s stay at the configured 128 KiB (that needs 262 Mbit/s on
//! one tunnel), so the default pool keeps its late choice there.

use std::time::Duration;

use super::Session;

/// A tunnel may hold this long of its measured delivery rate unsent: several refills by an
/// event loop that shares its core with other work.
const UNSENT_TIME: Duration = Duration::from_millis(4);
/// The most a tunnel's socket is allowed to hold unsent, however fast it is (4 ms of
/// 32 Gbit/s).
const UNSENT_LIMIT_MAX: u32 = 16 * 1024 * 1024;

impl Session {
    /// The unsent bytes tunnel `t`'s socket may hold now (TCP_NOTSENT_LOWAT): the configured
    /// [`crate::Config::tunnel_unsent_bytes`], or 4 ms of the tunnel's measured delivery rate
    /// rounded up to a power of two (so the option changes seldom) when that is more, at most
    /// 16 MiB (or the configured value, if larger). `u32::MAX` when the configuration sets no
    /// bound (leave the kernel's default); the configured value for an unknown tunnel. A driver
    /// applies it whenever it changes.
    pub fn tunnel_unsent_limit(&self, t: usize) -> u32 {
        let floor = self.config.tunnel_unsent_bytes;
        let rate = self.tunnels.get(t).and_then(|tun| tun.path.measured_rate());
        let Some(rate) = rate.filter(|_| floor != u32::MAX) else {
            return floor;
        };
        // At most the maximum, itself a power of two, so rounding up cannot pass it.
        let wanted = (rate * UNSENT_TIME.as_secs_f64()).min(f64::from(UNSENT_LIMIT_MAX));
        (wanted as u32)
            .checked_next_power_of_two()
            .unwrap_or(UNSENT_LIMIT_MAX)
            .max(floor)
    }
}
