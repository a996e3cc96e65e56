//! Tunnel handshake: the two messages that open every tunnel connection, the pre-shared-key
//! proofs, the masked session secret, and both ends' per-connection handshake state machines.
//!
//! Owns: the handshake byte layouts (docs/PROTOCOL.md §2, in `messages`), HMAC-SHA256
//! challenge–response (`proof`), the server's [`ServerHandshake`], which runs on a fresh server
//! connection before it is known which session it belongs to, and the client's
//! [`ClientHandshake`], which the session's tunnel drives. Must not touch: sessions or streams —
//! the server's handshake hands an [`AcceptedTunnel`] to whoever owns the sessions, the client's
//! hands a [`ServerAccepted`] back to the session's tunnel; neither knows what happens next.
//!
//! The key never crosses the wire. Protocol version 2 (docs/PROTOCOL.md §2): the client proves
//! first, in its ClientHello, with an HMAC over the connection's [`ChannelBinding`] and a hash of
//! every byte of the hello before the proof; the server checks it before it computes anything
//! with the key, so a peer that proved nothing gets no HMAC of the key to attack offline (it gets
//! an unsigned [`HelloStatus::AuthFailed`]). Only then does the server answer with its own proof,
//! over the binding, the whole ClientHello and its ServerHello. Every field of both hellos is
//! thereby covered, and a label per direction keeps one proof from passing for the other. The
//! ClientHello also carries the session's secret, masked with a key-derived pad, which the server
//! compares before it lets a tunnel join an existing session: the session id names a session, the
//! secret is the capability.
//!
//! This module holds what both halves share: constants, [`TransportParams`], [`HelloStatus`] and
//! [`HandshakeError`].

mod client;
mod messages;
mod proof;
mod server;
#[cfg(test)]
mod tests;

pub use client::{ClientHandshake, ClientOffer, ClientProgress, ServerAccepted};
pub use messages::{ClientHello, ServerHello, client_hello_session_id};
pub use proof::{ProofLabel, mask_session_secret, proof, transcript_hash, verify_proof};
pub use server::{AcceptedTunnel, Admission, ServerHandshake, ServerProgress};

use bytes::{Buf, BufMut, BytesMut};
use thiserror::Error;

use crate::wire::PROTOCOL_VERSION;

/// First four bytes of every handshake message.
pub const MAGIC: [u8; 4] = *b"MTCP";
/// Length of a session id (random, chosen by the client).
pub const SESSION_ID_LEN: usize = 16;
/// Length of a handshake nonce.
pub const NONCE_LEN: usize = 16;
/// Length of a proof (HMAC-SHA256).
pub const PROOF_LEN: usize = 32;

/// Length of a session secret.
pub const SESSION_SECRET_LEN: usize = 32;

/// ClientHello size on the wire (the proof is its last [`PROOF_LEN`] bytes).
pub const CLIENT_HELLO_LEN: usize = 48 + PARAMS_LEN + SESSION_SECRET_LEN + PROOF_LEN;
/// ServerHello size on the wire (the proof is its last [`PROOF_LEN`] bytes).
pub const SERVER_HELLO_LEN: usize = 64 + PARAMS_LEN;

const MSG_CLIENT_HELLO: u8 = 1;
const MSG_SERVER_HELLO: u8 = 2;

/// ClientHello flag: the client already has this session established at the server.
pub const HELLO_FLAG_RESUME: u16 = 0x0001;

/// Capability bit (both hellos): this end understands HOL_REPORT frames and answers them
/// (docs/PROTOCOL.md §2.1, §6.2). An end sends HOL_REPORT only when both hellos carry the bit.
pub const CAP_HOL_REPORT: u32 = 0x0000_0001;

/// Capability bit (both hellos): this end understands TUNNEL_DRAIN frames (docs/PROTOCOL.md
/// §6.4). Always announced by this implementation; a client tells a server of its retiring
/// tunnels only when the ServerHello carries the bit.
pub const CAP_TUNNEL_DRAIN: u32 = 0x0000_0002;

/// A 128-bit session id.
pub type SessionId = [u8; SESSION_ID_LEN];

/// The secret a client session proves on every tunnel: drawn at random when the session starts,
/// sent masked in each ClientHello ([`mask_session_secret`]), kept by the server from the tunnel
/// that created the session and compared in constant time for every later one.
pub type SessionSecret = [u8; SESSION_SECRET_LEN];

/// Compares two session secrets in time independent of where they differ.
pub fn session_secrets_equal(a: &SessionSecret, b: &SessionSecret) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Length of a [`ChannelBinding`].
pub const CHANNEL_BINDING_LEN: usize = 32;

/// A value both ends of one tunnel connection share and nobody else knows: the TLS exporter
/// (RFC 8446 §7.5) of the connection the handshake runs inside. Every proof covers it, so a
/// proof made on one connection is worthless on another (a relay that terminates TLS on both
/// sides holds two connections with two different values). Plaintext tunnels use
/// [`PLAINTEXT_BINDING`].
pub type ChannelBinding = [u8; CHANNEL_BINDING_LEN];

/// The binding of a tunnel without TLS (`insecure_plaintext`): a constant, so such a tunnel's
/// proofs bind nothing beyond their nonces.
pub const PLAINTEXT_BINDING: ChannelBinding = [0; CHANNEL_BINDING_LEN];

/// Limits each side announces in its hello: the peer's initial credits for this side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportParams {
    /// Largest frame body this side accepts.
    pub max_frame_body: u32,
    /// Initial credit of every new stream (bytes the peer may send on it before an update).
    pub stream_window: u64,
    /// Initial session credit (stream bytes in total).
    pub session_window: u64,
    /// How many streams the peer may open before a MAX_STREAMS update (cumulative count).
    pub max_streams: u64,
}

impl TransportParams {
    /// Checks a peer's announced limits: every one must let traffic flow.
    pub fn validate(&self) -> Result<(), HandshakeError> {
        if self.max_frame_body < 1024 || self.max_frame_body > crate::wire::ABSOLUTE_MAX_FRAME_BODY
        {
            return Err(HandshakeError::Malformed("max_frame_body out of range"));
        }
        if self.stream_window < 1024 {
            return Err(HandshakeError::Malformed("stream_window below 1024"));
        }
        if self.session_window < self.stream_window {
            return Err(HandshakeError::Malformed(
                "session_window below stream_window",
            ));
        }
        if self.max_streams == 0 {
            return Err(HandshakeError::Malformed("max_streams is 0"));
        }
        Ok(())
    }
}

/// Encoded size of [`TransportParams`].
pub const PARAMS_LEN: usize = 28;

impl TransportParams {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.max_frame_body);
        out.put_u64(self.stream_window);
        out.put_u64(self.session_window);
        out.put_u64(self.max_streams);
    }

    fn decode(m: &mut BytesMut) -> Self {
        Self {
            max_frame_body: m.get_u32(),
            stream_window: m.get_u64(),
            session_window: m.get_u64(),
            max_streams: m.get_u64(),
        }
    }
}

/// The server's answer status in ServerHello (docs/PROTOCOL.md §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum HelloStatus {
    /// Proceed.
    Ok = 0,
    /// The client's protocol version is not spoken here.
    UnsupportedVersion = 1,
    /// The tunnel index is not below the negotiated pool size.
    TunnelIndexOutOfRange = 2,
    /// The server holds its maximum number of sessions.
    TooManySessions = 3,
    /// The client asked to resume a session the server does not know (the server restarted).
    UnknownSession = 4,
    /// The server is shutting down.
    ShuttingDown = 5,
    /// The client's proof did not verify (its key differs from the server's, or one end has
    /// none). Unsigned: the server does not use the key for a peer that proved nothing.
    AuthFailed = 6,
    /// The session exists but the ClientHello did not carry its secret: the tunnel may not
    /// join it (nor replace one of its tunnels).
    SessionSecretMismatch = 7,
}

impl HelloStatus {
    fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            0 => Self::Ok,
            1 => Self::UnsupportedVersion,
            2 => Self::TunnelIndexOutOfRange,
            3 => Self::TooManySessions,
            4 => Self::UnknownSession,
            5 => Self::ShuttingDown,
            6 => Self::AuthFailed,
            7 => Self::SessionSecretMismatch,
            _ => return None,
        })
    }

    /// Whether a ServerHello with this status carries the server's proof. The two that do not
    /// are decided before the client has proved the key (its hello's version, its proof).
    pub fn is_signed(self) -> bool {
        !matches!(self, Self::UnsupportedVersion | Self::AuthFailed)
    }
}

/// Why a tunnel handshake failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The first bytes were not an mtcpd handshake (garbage, or another protocol).
    #[error("not an mtcpd handshake (bad magic)")]
    BadMagic,
    /// The peer speaks a protocol version this build does not.
    #[error("unsupported protocol version {peer} (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The peer's version.
        peer: u8,
    },
    /// A message had the wrong type or impossible fields.
    #[error("malformed handshake: {0}")]
    Malformed(&'static str),
    /// The peer's proof of the pre-shared key did not verify: the keys differ. (A client whose
    /// own proof the server rejected gets [`HandshakeError::Refused`] with
    /// [`HelloStatus::AuthFailed`] instead.)
    #[error("pre-shared key mismatch: the peer's proof did not verify")]
    WrongKey,
    /// The server refused the tunnel.
    #[error("server refused the tunnel: {0:?}")]
    Refused(HelloStatus),
    /// The handshake did not finish in time.
    #[error("handshake timed out")]
    Timeout,
}
