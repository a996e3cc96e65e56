//! Engine configuration: every limit and timer the protocol core uses, with defaults.
//!
//! Owns: [`Config`] and its validation. Must not touch: file formats (the CLI maps its TOML onto
//! this) or sockets (socket options belong to the runtime).

use std::time::Duration;

use thiserror::Error;

use crate::handshake::TransportParams;
use crate::scheduler::SchedulerKind;
use crate::wire::{ABSOLUTE_MAX_FRAME_BODY, DATA_FIXED_LEN};

/// Limits and timers of a session. Both ends may differ; what matters to the peer is announced
/// in the handshake.
#[derive(Debug, Clone)]
pub struct Config {
    /// Pre-shared key both ends prove knowledge of. Empty means "no key" (still challenge–
    /// response, but anyone can compute it): the daemon warns about it.
    pub psk: Vec<u8>,
    /// Client: tunnels to open. Server: the most tunnels it lets one session have.
    pub pool_size: u16,
    /// Client: dial the tunnel pool as soon as the session starts, so a stream's first bytes
    /// leave with no handshake across the WAN (0-RTT). When false, the pool is dialed when the
    /// first stream opens.
    pub zero_rtt: bool,
    /// Largest DATA payload this end sends.
    pub max_frame_payload: u32,
    /// Largest frame body this end accepts.
    pub max_frame_body: u32,
    /// Receive credit of each stream: the most unread bytes a stream may hold here.
    pub stream_window: u64,
    /// Receive credit of the whole session.
    pub session_window: u64,
    /// Bytes a local writer may queue on a stream beyond what is in flight.
    pub stream_send_buffer: usize,
    /// How many streams the peer may have open at once.
    pub max_streams: u64,
    /// A tunnel must finish its handshake within this.
    pub handshake_timeout: Duration,
    /// A tunnel that receives nothing for this long is dead.
    pub tunnel_idle_timeout: Duration,
    /// A PING goes out on each idle tunnel this often (keeps the idle timeout from firing and
    /// measures RTT).
    pub keepalive_interval: Duration,
    /// A session with no live tunnel for this long is closed.
    pub session_grace: Duration,
    /// First re-dial delay after a tunnel dies (client).
    pub redial_backoff_min: Duration,
    /// Longest re-dial delay (client).
    pub redial_backoff_max: Duration,
    /// Rate assumed for a tunnel before it has been measured, bytes/s.
    pub initial_rate: f64,
    /// Which scheduler picks tunnels.
    pub scheduler: SchedulerKind,
    /// Payloads shorter than this are copied next to their header (one chunk instead of two).
    pub copy_threshold: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            psk: Vec::new(),
            pool_size: 8,
            zero_rtt: true,
            max_frame_payload: 16 * 1024,
            max_frame_body: 256 * 1024,
            // Sized for the WAN: one tunnel in loss recovery holds the stream's head back for
            // about an RTT while the others keep delivering, so the window must cover the
            // whole pool's bandwidth for a few RTTs (measured: 16 MiB gave 0.43x of eight direct
            // flows at 100 ms / 1 %, 64 MiB 0.81x). Credit, not allocation: only a stream
            // with data waiting behind a gap holds memory.
            stream_window: 64 * 1024 * 1024,
            session_window: 256 * 1024 * 1024,
            stream_send_buffer: 1024 * 1024,
            max_streams: 131_072,
            handshake_timeout: Duration::from_secs(10),
            tunnel_idle_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(10),
            session_grace: Duration::from_secs(60),
            redial_backoff_min: Duration::from_millis(100),
            redial_backoff_max: Duration::from_secs(10),
            initial_rate: 125e6,
            scheduler: SchedulerKind::EarliestDelivery,
            copy_threshold: 256,
        }
    }
}

/// A configuration value out of range.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    /// The offending field.
    pub key: &'static str,
    /// What is wrong.
    pub problem: String,
}

fn bad(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        problem: problem.into(),
    }
}

impl Config {
    /// Checks every value; a session must never start on a config that fails this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.pool_size == 0 || self.pool_size > 256 {
            return Err(bad("pool_size", "must be 1..=256"));
        }
        if self.max_frame_body < 4096 || self.max_frame_body > ABSOLUTE_MAX_FRAME_BODY {
            return Err(bad(
                "max_frame_body",
                format!("must be 4096..={ABSOLUTE_MAX_FRAME_BODY}"),
            ));
        }
        if self.max_frame_payload < 512 || self.max_frame_payload > 256 * 1024 {
            return Err(bad("max_frame_payload", "must be 512..=262144"));
        }
        if self.stream_window < 4096 || self.stream_window > 1 << 32 {
            return Err(bad("stream_window", "must be 4 KiB..=4 GiB"));
        }
        if self.session_window < self.stream_window || self.session_window > 1 << 36 {
            return Err(bad(
                "session_window",
                "must be at least stream_window and at most 64 GiB",
            ));
        }
        if self.stream_send_buffer < 4096 {
            return Err(bad("stream_send_buffer", "must be at least 4096"));
        }
        if self.max_streams == 0 || self.max_streams > 1 << 24 {
            return Err(bad("max_streams", "must be 1..=16777216"));
        }
        for (key, d) in [
            ("handshake_timeout", self.handshake_timeout),
            ("tunnel_idle_timeout", self.tunnel_idle_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("session_grace", self.session_grace),
            ("redial_backoff_min", self.redial_backoff_min),
        ] {
            if d.is_zero() {
                return Err(bad(key, "must be greater than zero"));
            }
        }
        if self.keepalive_interval >= self.tunnel_idle_timeout {
            return Err(bad(
                "keepalive_interval",
                "must be shorter than tunnel_idle_timeout, or idle tunnels time out",
            ));
        }
        if self.redial_backoff_max < self.redial_backoff_min {
            return Err(bad(
                "redial_backoff_max",
                "must be at least redial_backoff_min",
            ));
        }
        if !(self.initial_rate.is_finite() && self.initial_rate > 0.0) {
            return Err(bad("initial_rate", "must be a positive number"));
        }
        Ok(())
    }

    /// What this end announces in its hello.
    pub fn transport_params(&self) -> TransportParams {
        TransportParams {
            max_frame_body: self.max_frame_body,
            stream_window: self.stream_window,
            session_window: self.session_window,
            max_streams: self.max_streams,
        }
    }

    /// Largest DATA payload that fits in a peer's frame-body limit.
    pub(crate) fn payload_limit(&self, peer_max_body: u32) -> usize {
        (self.max_frame_payload as usize)
            .min((peer_max_body as usize).saturating_sub(DATA_FIXED_LEN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_errors_name_the_key() {
        Config::default().validate().unwrap();
        let c = Config {
            keepalive_interval: Duration::from_secs(60),
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "keepalive_interval");
        let c = Config {
            pool_size: 0,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "pool_size");
    }
}
