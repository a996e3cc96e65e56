//! Engine configuration: every limit and timer the protocol core uses, with its default and its
//! valid range, stated once.
//!
//! Owns: [`Config`], its defaults, the ranges in [`range`] and [`Config::validate`], the
//! pre-shared key's accepted length ([`check_psk`]), and the names of [`Role`] as written in
//! configs. Must not touch: file formats (the CLI maps its TOML onto this and adds only
//! file-level concerns) or sockets (socket options and the runtime's own settings are
//! [`crate::runtime::RuntimeOptions`]). docs/PROTOCOL.md §10 prints these defaults and ranges; a
//! test compares the two.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

use crate::handshake::TransportParams;
use crate::scheduler::SchedulerKind;
use crate::session::Role;
use crate::settings::{Setting, SettingValue};
use crate::wire::{ABSOLUTE_MAX_FRAME_BODY, DATA_FIXED_LEN};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const ONE_DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// `connection_pool_size = "auto"`: the smallest pool ([`Config::pool_min`]), what an idle
/// client holds: [`crate::pool_control::BUSY_START`], where a busy session's measuring starts.
/// Pre-opened, those tunnels carry a session from its first byte; a smaller idle pool first
/// ran a whole measuring window below it and then six new tunnels' handshakes and slow starts
/// (the 2026-12-03 grid, docs/BENCHMARKS.md: 0.66× of the best fixed pool at 250 ms).
pub const AUTO_POOL_MIN: u16 = crate::pool_control::BUSY_START as u16;
/// `connection_pool_size = "auto"`: the largest pool ([`Config::pool_size`]).
pub const AUTO_POOL_MAX: u16 = 32;

/// The valid range of every [`Config`] field that has one (both ends inclusive). Rules that
/// relate two fields are in [`Config::validate`].
pub mod range {
    use super::*;

    /// [`Config::pool_size`].
    pub const POOL_SIZE: RangeInclusive<u16> = 1..=256;
    /// [`Config::pool_min`]; also at most `pool_size` when `pool_auto` is on.
    pub const POOL_MIN: RangeInclusive<u16> = 1..=256;
    /// [`Config::max_frame_body`].
    pub const MAX_FRAME_BODY: RangeInclusive<u32> = 4096..=ABSOLUTE_MAX_FRAME_BODY;
    /// [`Config::max_frame_payload`]; also at most `stream_window`.
    pub const MAX_FRAME_PAYLOAD: RangeInclusive<u32> = 512..=256 * 1024;
    /// [`Config::stream_window`].
    pub const STREAM_WINDOW: RangeInclusive<u64> = 4 * KIB..=4 * GIB;
    /// [`Config::session_window`]; also at least `stream_window`.
    pub const SESSION_WINDOW: RangeInclusive<u64> = 4 * KIB..=64 * GIB;
    /// [`Config::stream_send_buffer`].
    pub const STREAM_SEND_BUFFER: RangeInclusive<usize> = 4096..=GIB as usize;
    /// [`Config::max_streams`].
    pub const MAX_STREAMS: RangeInclusive<u64> = 1..=1 << 24;
    /// [`Config::max_unacked_bytes`].
    pub const MAX_UNACKED_BYTES: RangeInclusive<u64> = 64 * KIB..=64 * GIB;
    /// [`Config::max_tunnel_unacked_bytes`]; also at most `max_unacked_bytes`.
    pub const MAX_TUNNEL_UNACKED_BYTES: RangeInclusive<u64> = 64 * KIB..=64 * GIB;
    /// [`Config::max_pending_ranges`].
    pub const MAX_PENDING_RANGES: RangeInclusive<u64> = 16..=1 << 20;
    /// [`Config::handshake_timeout`].
    pub const HANDSHAKE_TIMEOUT: RangeInclusive<Duration> =
        Duration::from_millis(100)..=Duration::from_secs(300);
    /// [`Config::preauth_timeout`]: long enough for a TLS and an mtcpd handshake across a
    /// slow WAN path, short enough that a half-open connection is not held for long.
    pub const PREAUTH_TIMEOUT: RangeInclusive<Duration> =
        Duration::from_millis(100)..=Duration::from_secs(60);
    /// [`Config::max_handshakes`].
    pub const MAX_HANDSHAKES: RangeInclusive<u32> = 1..=1_000_000;
    /// [`Config::max_handshakes_per_source`].
    pub const MAX_HANDSHAKES_PER_SOURCE: RangeInclusive<u32> = 1..=1_000_000;
    /// [`Config::tunnel_idle_timeout`]; also longer than `keepalive_interval`.
    pub const TUNNEL_IDLE_TIMEOUT: RangeInclusive<Duration> = Duration::from_secs(1)..=ONE_DAY;
    /// [`Config::keepalive_interval`]; also shorter than `tunnel_idle_timeout`.
    pub const KEEPALIVE_INTERVAL: RangeInclusive<Duration> =
        Duration::from_millis(100)..=Duration::from_secs(3600);
    /// [`Config::session_grace`].
    pub const SESSION_GRACE: RangeInclusive<Duration> = Duration::from_millis(100)..=ONE_DAY;
    /// [`Config::redial_backoff_min`].
    pub const REDIAL_BACKOFF_MIN: RangeInclusive<Duration> =
        Duration::from_millis(10)..=Duration::from_secs(3600);
    /// [`Config::redial_backoff_max`]; also at least `redial_backoff_min`.
    pub const REDIAL_BACKOFF_MAX: RangeInclusive<Duration> = Duration::from_millis(10)..=ONE_DAY;
    /// [`Config::refused_backoff_max`].
    pub const REFUSED_BACKOFF_MAX: RangeInclusive<Duration> = Duration::from_secs(1)..=ONE_DAY;
    /// Length of a configured pre-shared key, in bytes ([`super::check_psk`]): 32 random
    /// bytes (`mtcpd genkey`) at least. The sans-IO engine itself takes any key up to the
    /// maximum (its tests use short ones; empty means none); a runtime checks this range at
    /// start ([`Config::check_key`]).
    pub const PSK_LEN: RangeInclusive<usize> = 32..=1024;
}

/// Limits and timers of a session. Both ends may differ; what matters to the peer is announced
/// in the handshake. `Debug` never shows the key.
#[derive(Clone)]
pub struct Config {
    /// Pre-shared key both ends prove knowledge of. Empty means "no key" (still challenge–
    /// response, but anyone can compute it): a runtime refuses to start on it unless
    /// [`Config::allow_unauthenticated`] is set.
    pub psk: Vec<u8>,
    /// Client: tunnels to open (with [`Config::pool_auto`], the most it opens; the server's
    /// grant may lower it). Server: the most tunnels it lets one session have.
    pub pool_size: u16,
    /// Client: adapt the number of open tunnels between [`Config::pool_min`] and
    /// [`Config::pool_size`] ([`crate::pool_control`]): start small, add tunnels while a
    /// backlogged session's goodput keeps rising, retire the extras when it does not. Ignored by
    /// a server (its `pool_size` stays the cap it grants).
    pub pool_auto: bool,
    /// Client with [`Config::pool_auto`]: the tunnels it starts with and never goes below.
    pub pool_min: u16,
    /// Largest DATA payload this end sends.
    pub max_frame_payload: u32,
    /// Largest frame body this end accepts.
    pub max_frame_body: u32,
    /// Receive credit each stream starts with: the most unread bytes it may hold here until
    /// auto-tuning grows it. A stream whose bytes held beyond a hole nearly fill its window
    /// (a tunnel in a long loss recovery holds its next offset) has the window doubled, up to
    /// [`Config::stream_window_ceiling`] (docs/PROTOCOL.md §5.1).
    pub stream_window: u64,
    /// Receive credit of the whole session.
    pub session_window: u64,
    /// Bytes a local writer may queue on a stream beyond what is in flight.
    pub stream_send_buffer: usize,
    /// How many streams the peer may have open at once, and how many this end keeps open
    /// that it opened (more fail at once: [`crate::StreamError::LocalStreamLimit`]).
    pub max_streams: u64,
    /// Bytes of reliable frames this end keeps for resend (sent and not yet acknowledged, or
    /// waiting to be sent again), across the session. No new DATA is framed at the cap; resends
    /// and control frames still go. Bounds what a peer that never acknowledges makes us hold.
    pub max_unacked_bytes: u64,
    /// The same cap for one tunnel: no new DATA is framed on a tunnel holding this much
    /// unacknowledged.
    pub max_tunnel_unacked_bytes: u64,
    /// Separate ranges of out-of-order bytes (each behind its own hole) one stream may hold; more
    /// is a flow-control violation that closes the session. Each stored piece is also charged
    /// [`crate::reorder::PIECE_OVERHEAD`] bytes against the session window.
    pub max_pending_ranges: u64,
    /// Client: a tunnel must be dialed and finish its handshake within this (the server's
    /// deadline is [`Config::preauth_timeout`]).
    pub handshake_timeout: Duration,
    /// Server: a connection must finish its handshake within this after it was accepted, or
    /// it is closed (what an unauthenticated peer can hold a connection for).
    pub preauth_timeout: Duration,
    /// Server: most handshakes in progress at once per endpoint (each worker of a runtime has
    /// one); connections beyond it are closed at once. A runtime lowers it so that handshakes
    /// never hold more than a quarter of the open-file limit.
    pub max_handshakes: u32,
    /// Server: most handshakes in progress at once from one source network (an IPv4 /24, an
    /// IPv6 /64), across all workers of a runtime; connections beyond it are closed at once.
    pub max_handshakes_per_source: u32,
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
    /// Client: longest wait before a new session after the server refused the last ones for
    /// good (wrong or missing key, another protocol). The wait starts at 1 s and doubles.
    pub refused_backoff_max: Duration,
    /// Rate assumed for a tunnel before it has been measured, bytes/s.
    pub initial_rate: f64,
    /// Which scheduler picks tunnels.
    pub scheduler: SchedulerKind,
    /// Payloads shorter than this are copied next to their header (one chunk instead of two).
    pub copy_threshold: usize,
    /// Client: dial the tunnel pool as soon as the session starts, so a stream's first bytes
    /// leave with no handshake across the WAN (0-RTT). When false, the pool is dialed when the
    /// first stream opens.
    pub zero_rtt: bool,
    /// Couples the tunnels while a shared bottleneck queue builds: the session then keeps at
    /// most its measured bandwidth-delay product (with a 1.25 gain) of stream data
    /// unacknowledged across all of them, so N tunnels fill the queue like one flow instead of
    /// N; after losses at an empty queue (random loss) the tunnels run as N independent
    /// windows. The queue signal is the kernel's RTT per tunnel, which the driver reports
    /// ([`crate::session::Session::set_tunnel_tcp_info`]). On by default (issue 13; see
    /// docs/BENCHMARKS.md).
    pub coupled_pacing: bool,
    /// Head-of-line relief (issue 13 item 3): announces [`crate::handshake::CAP_HOL_REPORT`];
    /// when both ends do, a receiver whose stream has waited past a threshold for a hole reports
    /// it (HOL_REPORT), and the sender re-sends the frames covering it on the fastest other
    /// tunnel, within a budget of 1/8 of the stream data it sends (docs/PROTOCOL.md §6.2).
    pub hol_relief: bool,
    /// Lets a runtime start without a key (empty [`Config::psk`]): anyone who can reach the
    /// server then passes the handshake. Off by default, so that forgetting the key is an error
    /// ([`Config::check_key`]) and never a silently open tunnel. Not a config-file key: the
    /// daemon sets it itself for the cases it allows (a server with only its default backend,
    /// a client), with a warning.
    pub allow_unauthenticated: bool,
    /// The least each tunnel's socket may hold unsent (its TCP_NOTSENT_LOWAT; a faster tunnel
    /// may hold more, [`crate::Session::tunnel_unsent_limit`]), which the coupled cap leaves
    /// room for (see `session::coupled`). Not a config-file key: the runtime sets it from
    /// [`crate::runtime::TunnelSocketOptions::notsent_lowat`] (0 there, the kernel's default,
    /// is no bound: `u32::MAX` here).
    pub tunnel_unsent_bytes: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            psk: Vec::new(),
            pool_size: 8,
            pool_auto: false,
            pool_min: AUTO_POOL_MIN,
            max_frame_payload: 16 * 1024,
            max_frame_body: 256 * 1024,
            // Sized for the WAN: one tunnel in loss recovery holds the stream's head back for
            // about an RTT while the others keep delivering, so the window must cover the
            // whole pool's bandwidth for a few RTTs (measured: 16 MiB gave 0.43x of eight direct
            // flows at 100 ms / 1 %, 64 MiB 0.81x). At 1 Gbit/s and 250 ms the bytes in flight
            // (a BDP and the coupled cap's quarter) and those held behind one tunnel's hole for
            // an RTT pass 64 MiB, and the sender stalled on credit at every loss, without the
            // auto-tuning's trigger (half the window beyond the hole) ever met; 128 MiB on the
            // emulator: 100 ms / 1 % 874, 871 against 830, 790 Mbit/s, 250 ms / 0.1 % 732, 736
            // against 598, 684 (docs/BENCHMARKS.md). Credit, not allocation: only a stream
            // with data waiting behind a gap holds memory, and `session_window` still bounds
            // the session.
            stream_window: 128 * MIB,
            session_window: 256 * 1024 * 1024,
            stream_send_buffer: 1024 * 1024,
            max_streams: 131_072,
            // Far above what the windows keep in flight on a healthy path (the bandwidth-delay
            // product plus the kernel's socket buffers), so the caps only bite when the peer
            // stops acknowledging.
            max_unacked_bytes: 128 * MIB,
            // One tunnel holds what bbr keeps in flight (up to 2 BDP) and the bytes whose ACK
            // frame is on its way (an RTT's worth behind a lost segment): at 1 Gbit/s and
            // 100 ms, 32 MiB ran out, the socket ran empty and bbr never left its start-up
            // (session/unsent.rs). The session's cap above still bounds the whole.
            max_tunnel_unacked_bytes: 64 * MIB,
            max_pending_ranges: 1024,
            handshake_timeout: Duration::from_secs(10),
            preauth_timeout: Duration::from_secs(3),
            max_handshakes: 1024,
            max_handshakes_per_source: 64,
            tunnel_idle_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(10),
            session_grace: Duration::from_secs(60),
            redial_backoff_min: Duration::from_millis(100),
            redial_backoff_max: Duration::from_secs(10),
            refused_backoff_max: Duration::from_secs(300),
            initial_rate: 125e6,
            scheduler: SchedulerKind::EarliestDelivery,
            copy_threshold: 256,
            zero_rtt: true,
            coupled_pacing: true,
            hol_relief: false,
            allow_unauthenticated: false,
            tunnel_unsent_bytes: crate::runtime::options::DEFAULT_NOTSENT_LOWAT,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut fields = out.debug_struct("Config");
        for setting in self.settings() {
            fields.field(setting.key, &format_args!("{}", setting.value));
        }
        fields.finish()
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
    /// Every field with its value and bounds, in declaration order: what `mtcpd check` prints
    /// and what [`Config::validate`] checks. The key is never shown, only its length.
    pub fn settings(&self) -> Vec<Setting> {
        // Destructured so that a new field cannot be forgotten here.
        let Config {
            psk,
            pool_size,
            pool_auto,
            pool_min,
            max_frame_payload,
            max_frame_body,
            stream_window,
            session_window,
            stream_send_buffer,
            max_streams,
            max_unacked_bytes,
            max_tunnel_unacked_bytes,
            max_pending_ranges,
            handshake_timeout,
            preauth_timeout,
            max_handshakes,
            max_handshakes_per_source,
            tunnel_idle_timeout,
            keepalive_interval,
            session_grace,
            redial_backoff_min,
            redial_backoff_max,
            refused_backoff_max,
            initial_rate,
            scheduler,
            copy_threshold,
            zero_rtt,
            coupled_pacing,
            hol_relief,
            // A decision of the embedding program, not a setting: never printed.
            allow_unauthenticated: _,
            // Derived from the runtime's socket options, which print it.
            tunnel_unsent_bytes: _,
        } = self;
        vec![
            Setting::unbounded("psk", SettingValue::Secret { len: psk.len() }),
            Setting::count("pool_size", *pool_size, range::POOL_SIZE),
            Setting::unbounded("pool_auto", SettingValue::Flag(*pool_auto)),
            Setting::count("pool_min", *pool_min, range::POOL_MIN),
            Setting::bytes(
                "max_frame_payload",
                *max_frame_payload,
                range::MAX_FRAME_PAYLOAD,
            ),
            Setting::bytes("max_frame_body", *max_frame_body, range::MAX_FRAME_BODY),
            Setting::bytes("stream_window", *stream_window, range::STREAM_WINDOW),
            Setting::bytes("session_window", *session_window, range::SESSION_WINDOW),
            Setting::bytes(
                "stream_send_buffer",
                *stream_send_buffer,
                range::STREAM_SEND_BUFFER,
            ),
            Setting::count("max_streams", *max_streams, range::MAX_STREAMS),
            Setting::bytes(
                "max_unacked_bytes",
                *max_unacked_bytes,
                range::MAX_UNACKED_BYTES,
            ),
            Setting::bytes(
                "max_tunnel_unacked_bytes",
                *max_tunnel_unacked_bytes,
                range::MAX_TUNNEL_UNACKED_BYTES,
            ),
            Setting::count(
                "max_pending_ranges",
                *max_pending_ranges,
                range::MAX_PENDING_RANGES,
            ),
            Setting::duration(
                "handshake_timeout",
                *handshake_timeout,
                range::HANDSHAKE_TIMEOUT,
            ),
            Setting::duration("preauth_timeout", *preauth_timeout, range::PREAUTH_TIMEOUT),
            Setting::count("max_handshakes", *max_handshakes, range::MAX_HANDSHAKES),
            Setting::count(
                "max_handshakes_per_source",
                *max_handshakes_per_source,
                range::MAX_HANDSHAKES_PER_SOURCE,
            ),
            Setting::duration(
                "tunnel_idle_timeout",
                *tunnel_idle_timeout,
                range::TUNNEL_IDLE_TIMEOUT,
            ),
            Setting::duration(
                "keepalive_interval",
                *keepalive_interval,
                range::KEEPALIVE_INTERVAL,
            ),
            Setting::duration("session_grace", *session_grace, range::SESSION_GRACE),
            Setting::duration(
                "redial_backoff_min",
                *redial_backoff_min,
                range::REDIAL_BACKOFF_MIN,
            ),
            Setting::duration(
                "redial_backoff_max",
                *redial_backoff_max,
                range::REDIAL_BACKOFF_MAX,
            ),
            Setting::duration(
                "refused_backoff_max",
                *refused_backoff_max,
                range::REFUSED_BACKOFF_MAX,
            ),
            Setting::unbounded("initial_rate", SettingValue::BytesPerSecond(*initial_rate)),
            Setting::unbounded(
                "scheduler",
                SettingValue::Name(scheduler_name(*scheduler).into()),
            ),
            Setting::unbounded(
                "copy_threshold",
                SettingValue::Bytes(*copy_threshold as u64),
            ),
            Setting::unbounded("zero_rtt", SettingValue::Flag(*zero_rtt)),
            Setting::unbounded("coupled_pacing", SettingValue::Flag(*coupled_pacing)),
            Setting::unbounded("hol_relief", SettingValue::Flag(*hol_relief)),
        ]
    }

    /// Checks every value; a session must never start on a config that fails this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for setting in self.settings() {
            setting.check()?;
        }
        if self.psk.len() > *range::PSK_LEN.end() {
            return Err(bad(
                "psk",
                format!("must be at most {} bytes", range::PSK_LEN.end()),
            ));
        }
        if self.pool_auto && self.pool_min > self.pool_size {
            return Err(bad(
                "pool_min",
                format!(
                    "must be at most pool_size ({}), the largest adaptive pool",
                    self.pool_size
                ),
            ));
        }
        if self.session_window < self.stream_window {
            return Err(bad(
                "session_window",
                format!(
                    "must be at least stream_window ({})",
                    SettingValue::Bytes(self.stream_window)
                ),
            ));
        }
        if u64::from(self.max_frame_payload) > self.stream_window {
            return Err(bad(
                "max_frame_payload",
                format!(
                    "must be at most stream_window ({})",
                    SettingValue::Bytes(self.stream_window)
                ),
            ));
        }
        if self.max_tunnel_unacked_bytes > self.max_unacked_bytes {
            return Err(bad(
                "max_tunnel_unacked_bytes",
                format!(
                    "must be at most max_unacked_bytes ({})",
                    SettingValue::Bytes(self.max_unacked_bytes)
                ),
            ));
        }
        if self.keepalive_interval >= self.tunnel_idle_timeout {
            return Err(bad(
                "keepalive_interval",
                format!(
                    "must be shorter than tunnel_idle_timeout ({}), or idle tunnels time out",
                    SettingValue::Duration(self.tunnel_idle_timeout)
                ),
            ));
        }
        if self.redial_backoff_max < self.redial_backoff_min {
            return Err(bad(
                "redial_backoff_max",
                format!(
                    "must be at least redial_backoff_min ({})",
                    SettingValue::Duration(self.redial_backoff_min)
                ),
            ));
        }
        if !(self.initial_rate.is_finite() && self.initial_rate > 0.0) {
            return Err(bad("initial_rate", "must be a positive number"));
        }
        Ok(())
    }

    /// Checks the key a runtime is about to run on: [`range::PSK_LEN`] bytes, or none with
    /// [`Config::allow_unauthenticated`] set.
    pub fn check_key(&self) -> Result<(), ConfigError> {
        if self.psk.is_empty() {
            if self.allow_unauthenticated {
                return Ok(());
            }
            return Err(bad(
                "psk",
                "no pre-shared key: anyone who reaches the server could use the tunnel. Make \
                 one with `mtcpd genkey` and give it to both ends (psk or psk_file), or opt in \
                 to running without one (Config::allow_unauthenticated)",
            ));
        }
        check_psk(&self.psk)
    }

    /// The most a stream's receive window grows to by auto-tuning: half the session window
    /// (so that one stalled stream leaves the session credit for others, and the session's own
    /// update, due at half of it, never binds first), and never less than `stream_window`.
    pub fn stream_window_ceiling(&self) -> u64 {
        (self.session_window / 2).max(self.stream_window)
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

    /// The capability bits this end announces in its hello.
    pub fn capabilities(&self) -> u32 {
        let hol = if self.hol_relief {
            crate::handshake::CAP_HOL_REPORT
        } else {
            0
        };
        hol | crate::handshake::CAP_TUNNEL_DRAIN
    }

    /// The peer's announced limits, each clamped to the most this end would ever announce
    /// ([`range`]): an announced 2^62 means no more than the largest valid local value.
    pub(crate) fn clamp_peer_params(p: TransportParams) -> TransportParams {
        TransportParams {
            max_frame_body: p.max_frame_body.min(*range::MAX_FRAME_BODY.end()),
            stream_window: p.stream_window.min(*range::STREAM_WINDOW.end()),
            session_window: p.session_window.min(*range::SESSION_WINDOW.end()),
            max_streams: p.max_streams.min(*range::MAX_STREAMS.end()),
        }
    }

    /// Largest DATA payload that fits in a peer's frame-body limit.
    pub(crate) fn payload_limit(&self, peer_max_body: u32) -> usize {
        (self.max_frame_payload as usize)
            .min((peer_max_body as usize).saturating_sub(DATA_FIXED_LEN))
    }
}

/// The name a scheduler goes by in logs and docs (the same as its [`crate::scheduler::Scheduler::name`]).
fn scheduler_name(kind: SchedulerKind) -> &'static str {
    match kind {
        SchedulerKind::EarliestDelivery => "earliest-delivery",
        SchedulerKind::RoundRobin => "round-robin",
    }
}

/// Checks a pre-shared key an operator configured: [`range::PSK_LEN`] bytes. (The engine takes
/// shorter keys, and an empty one means "no key"; a daemon refuses to run on a guessable one.)
pub fn check_psk(psk: &[u8]) -> Result<(), ConfigError> {
    if range::PSK_LEN.contains(&psk.len()) {
        Ok(())
    } else {
        Err(bad(
            "psk",
            format!(
                "the pre-shared key must be {} to {} bytes long, got {} bytes; make a random \
                 one with `mtcpd genkey`",
                range::PSK_LEN.start(),
                range::PSK_LEN.end(),
                psk.len()
            ),
        ))
    }
}

/// A name that is not one of the accepted words (a role, an I/O driver).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("unknown {what} \"{given}\", expected one of: {}", expected.join(", "))]
pub struct UnknownName {
    /// What was being named ("role", "I/O driver").
    pub what: &'static str,
    /// What was written.
    pub given: String,
    /// The accepted words.
    pub expected: &'static [&'static str],
}

impl Role {
    /// Both roles, by the name configs and command lines use.
    pub const NAMES: &'static [&'static str] = &["server", "client"];

    /// `"server"` or `"client"`, as written in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        out.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UnknownName;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "server" => Ok(Role::Server),
            "client" => Ok(Role::Client),
            _ => Err(UnknownName {
                what: "role",
                given: name.to_owned(),
                expected: Role::NAMES,
            }),
        }
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

    #[test]
    fn ranges_and_cross_rules_name_the_key() {
        let c = Config {
            stream_window: 8 * GIB,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "stream_window");
        let c = Config {
            max_tunnel_unacked_bytes: 256 * MIB,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "max_tunnel_unacked_bytes");
        let c = Config {
            max_pending_ranges: 1,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "max_pending_ranges");
        let c = Config {
            session_window: 8 * KIB,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "session_window");
        let c = Config {
            redial_backoff_min: Duration::from_secs(60),
            redial_backoff_max: Duration::from_secs(1),
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "redial_backoff_max");
        let error = Config {
            handshake_timeout: Duration::from_secs(3600),
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "handshake_timeout: must be between 100 ms and 5 min, got 1 h"
        );
    }

    #[test]
    fn debug_never_shows_the_key_and_psk_length_is_checked() {
        let c = Config {
            psk: b"correct horse battery staple".to_vec(),
            ..Config::default()
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("horse") && shown.contains("redacted"),
            "{shown}"
        );
        assert_eq!(check_psk(&c.psk).unwrap_err().key, "psk", "28 bytes");
        check_psk(&[7; 32]).unwrap();
        let short = check_psk(&[7; 31]).unwrap_err();
        assert!(short.problem.contains("mtcpd genkey"), "{short}");
        assert_eq!(check_psk(&[7; 1025]).unwrap_err().key, "psk");
    }

    #[test]
    fn running_without_a_key_needs_an_explicit_opt_in() {
        let keyless = Config::default();
        let error = keyless.check_key().unwrap_err();
        assert_eq!(error.key, "psk");
        assert!(error.problem.contains("mtcpd genkey"), "{error}");
        let opted_in = Config {
            allow_unauthenticated: true,
            ..Config::default()
        };
        opted_in.check_key().unwrap();
        let short = Config {
            psk: b"short".to_vec(),
            allow_unauthenticated: true,
            ..Config::default()
        };
        assert_eq!(short.check_key().unwrap_err().key, "psk");
        let keyed = Config {
            psk: vec![1; 32],
            ..Config::default()
        };
        keyed.check_key().unwrap();
    }

    #[test]
    fn roles_parse_from_their_names() {
        for name in Role::NAMES {
            assert_eq!(name.parse::<Role>().unwrap().to_string(), *name);
        }
        assert!("both".parse::<Role>().is_err());
    }
}
