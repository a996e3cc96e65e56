//! Typed errors and the close codes they map to on the wire.
//!
//! Owns: why a session ended ([`SessionError`]), why a tunnel went down ([`TunnelError`]), why a
//! stream call failed ([`StreamError`]), and the numeric close codes of docs/PROTOCOL.md §9.
//! Must not touch: any state.

use std::time::Duration;

use thiserror::Error;

use crate::handshake::HandshakeError;
use crate::wire::FrameError;

/// Close codes carried by CLOSE and GO_AWAY frames.
#[allow(missing_docs)]
pub mod code {
    pub const NO_ERROR: u32 = 0;
    pub const PROTOCOL_VIOLATION: u32 = 1;
    pub const FLOW_CONTROL: u32 = 2;
    pub const STREAM_LIMIT: u32 = 3;
    pub const UNKNOWN_STREAM: u32 = 4;
    pub const INTERNAL: u32 = 5;
    pub const SHUTDOWN: u32 = 6;
    pub const IDLE: u32 = 7;
}

/// Why a session ended.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// A tunnel carried a frame that could not be parsed.
    #[error("malformed frame on tunnel {tunnel}: {source}")]
    Frame {
        /// Tunnel index.
        tunnel: u16,
        /// Parse error.
        source: FrameError,
    },
    /// The peer broke a protocol rule.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer sent beyond the credit it was given.
    #[error("flow control violated on stream {stream}: offset {offset} beyond credit {limit}")]
    FlowControl {
        /// Stream id.
        stream: u64,
        /// End offset the peer sent.
        offset: u64,
        /// Credit it had.
        limit: u64,
    },
    /// The peer sent beyond the session's credit.
    #[error("session flow control violated: {received} bytes received, credit {limit}")]
    SessionFlowControl {
        /// Stream bytes received in total.
        received: u64,
        /// Session credit given.
        limit: u64,
    },
    /// The peer left more separate out-of-order ranges waiting on one stream than this end holds.
    #[error("flow control violated on stream {stream}: more than {limit} out-of-order ranges")]
    PendingRanges {
        /// Stream id.
        stream: u64,
        /// The most separate ranges one stream may hold (`max_pending_ranges`).
        limit: u64,
    },
    /// The peer's out-of-order pieces, charged a fixed overhead each, exceed the session window.
    #[error(
        "flow control violated: out-of-order pieces charged {charged} bytes of overhead, credit {limit}"
    )]
    ReorderCharge {
        /// Overhead charged for every stream's out-of-order pieces.
        charged: u64,
        /// The session window.
        limit: u64,
    },
    /// A tunnel handshake failed in a way retrying cannot fix, before the session was ever
    /// established (wrong key, unsupported version, not an mtcpd server).
    #[error("handshake failed: {0}")]
    Handshake(HandshakeError),
    /// The peer opened more streams than allowed.
    #[error("stream limit exceeded: stream {stream} beyond {limit} allowed")]
    StreamLimit {
        /// Offending stream id.
        stream: u64,
        /// The cumulative limit.
        limit: u64,
    },
    /// A frame named a stream of ours that was never opened.
    #[error("frame for unknown stream {0}")]
    UnknownStream(u64),
    /// Every tunnel was down for longer than the grace period.
    #[error("all tunnels lost for longer than the grace period ({0:?})")]
    AllTunnelsLost(Duration),
    /// The server no longer knows the session (it restarted): its streams are gone.
    #[error("the server no longer knows this session (it restarted?)")]
    SessionLost,
    /// The peer closed the session.
    #[error("closed by peer (code {code}): {reason}")]
    PeerClosed {
        /// Close code.
        code: u32,
        /// Reason text.
        reason: String,
    },
    /// This side closed the session.
    #[error("closed locally (code {code}): {reason}")]
    LocallyClosed {
        /// Close code.
        code: u32,
        /// Reason text.
        reason: String,
    },
}

impl SessionError {
    /// The code sent in CLOSE for this error.
    pub fn code(&self) -> u32 {
        match self {
            Self::Frame { .. } | Self::Protocol(_) => code::PROTOCOL_VIOLATION,
            Self::FlowControl { .. }
            | Self::SessionFlowControl { .. }
            | Self::PendingRanges { .. }
            | Self::ReorderCharge { .. } => code::FLOW_CONTROL,
            Self::Handshake(_) => code::PROTOCOL_VIOLATION,
            Self::StreamLimit { .. } => code::STREAM_LIMIT,
            Self::UnknownStream(_) => code::UNKNOWN_STREAM,
            Self::AllTunnelsLost(_) | Self::SessionLost => code::IDLE,
            Self::PeerClosed { code, .. } | Self::LocallyClosed { code, .. } => *code,
        }
    }
}

/// Why one tunnel went down (the session may live on).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TunnelError {
    /// The handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// Nothing arrived for the idle timeout.
    #[error("no data for {0:?}")]
    IdleTimeout(Duration),
    /// The oldest frame sent on it went unacknowledged for the idle timeout: the peer keeps the
    /// tunnel alive (PINGs) but does not take our data.
    #[error("a frame unacknowledged for {0:?}")]
    Unacknowledged(Duration),
    /// The driver reported the connection closed or failed.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// A new connection took this tunnel's slot.
    #[error("replaced by a new connection for the same slot")]
    Replaced,
    /// Retired on purpose: the negotiated pool is smaller than this slot, or the client's
    /// adaptive pool shrank (and, at the server, the client said so with TUNNEL_DRAIN).
    #[error("retired: beyond the pool's size")]
    Retired,
    /// The session closed.
    #[error("session closed")]
    SessionClosed,
}

/// Why a stream call failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// No such stream (never opened, or already closed and forgotten).
    #[error("unknown stream {0}")]
    UnknownStream(u64),
    /// The stream was reset, by the peer or locally.
    #[error("stream reset (code {0})")]
    Reset(u32),
    /// Write after shutdown.
    #[error("write after shutdown")]
    Finished,
    /// The peer allows no more streams right now.
    #[error("stream limit reached: the peer allows no more streams")]
    StreamLimit,
    /// This end already has its `max_streams` (the value) streams open.
    #[error("stream limit reached: max_streams {0}")]
    LocalStreamLimit(u64),
    /// No tunnel has completed a handshake yet, so the peer's limits are unknown.
    #[error("session not established yet")]
    NotReady,
    /// A GO_AWAY was sent or received: no new streams.
    #[error("session is going away")]
    GoingAway,
    /// The session is closed.
    #[error("session closed")]
    SessionClosed,
    /// The open target is too long.
    #[error("target longer than {0} bytes")]
    TargetTooLong(usize),
}

/// Why an open was refused for a limit: the inner error of the [`STREAM_LIMIT_KIND`]
/// [`std::io::Error`] that `Client::open_stream` returns (or a stream's reads and writes, when
/// the peer refuses it later). Never a wait: the open fails at once.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum StreamLimitError {
    /// This end already has `max_streams` (the value) streams open on the session.
    #[error("stream limit reached: max_streams {0}")]
    Local(u64),
    /// The peer allows no more streams (its `max_streams`, clamped locally, is reached).
    #[error("stream limit reached: the peer allows no more streams")]
    Peer,
}

/// The [`std::io::ErrorKind`] of an open refused for a limit ([`StreamLimitError`] inside).
pub const STREAM_LIMIT_KIND: std::io::ErrorKind = std::io::ErrorKind::QuotaExceeded;

impl From<StreamLimitError> for std::io::Error {
    fn from(e: StreamLimitError) -> Self {
        std::io::Error::new(STREAM_LIMIT_KIND, e)
    }
}
