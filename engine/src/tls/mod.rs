//! The TLS 1.3 layer under every tunnel: the mtcpd handshake and frames travel inside it.
//!
//! Owns: the per-connection record layer ([`TunnelTls`]: plaintext or a rustls connection, fed
//! ciphertext and asked for ciphertext, sans-IO), the channel binding it exports for the mtcpd
//! proofs, the server's identity ([`identity`]: files, or a key pair kept in a state directory),
//! how a client checks that identity ([`verify`]: CA and name, a pinned fingerprint, or the PSK
//! proof alone), and the settings that choose among them ([`TlsOptions`]). Must not touch: the
//! mtcpd handshake or frames (it carries their bytes without reading them), sockets (the event
//! loop, the simulator and the benches move the bytes).
//!
//! Why the binding matters: the mtcpd proofs cover the TLS exporter
//! ([`CHANNEL_BINDING_LABEL`]), which is a function of both TLS handshakes' secrets. A man in the
//! middle that terminates TLS toward each side has two different TLS connections, so the
//! exporters differ and neither side's proof verifies at the other, even when the client accepts
//! any certificate.
//!
//! By concept: [`transport`] (one connection's records: rustls for the handshake, then
//! [`records`], the TLS 1.3 record layer in place on the extracted keys), [`identity`] (certificate and key),
//! [`verify`] (the client's certificate checks), [`options`] (settings, validation, and the
//! per-runtime [`TlsSetup`] that makes transports).

pub mod identity;
pub mod options;
pub mod records;
pub mod transport;
pub mod verify;

#[cfg(test)]
mod tests;

pub use identity::{IdentitySource, ServerIdentity, fingerprint_of};
pub use options::{TlsOptions, TlsSetup};
pub use transport::TunnelTls;

/// The ALPN protocol every mtcpd tunnel negotiates: a TLS peer that is not mtcpd fails early.
pub const ALPN: &[u8] = b"mtcpd";

/// The exporter label (RFC 8446 §7.5) of the channel binding; no context.
pub const CHANNEL_BINDING_LABEL: &[u8] = b"EXPORTER-mtcpd-channel-binding";

/// Why a tunnel's TLS layer failed, or why a TLS setting cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A record failed authentication: tampered with or corrupted in transit.
    #[error("a TLS record failed authentication (tampered with or corrupted in transit)")]
    Tampered,
    /// The peer sent bytes that are not TLS where TLS was expected.
    #[error(
        "the peer does not speak TLS (it may have insecure_plaintext set): set \
         insecure_plaintext on both ends or neither"
    )]
    PeerSpeaksPlaintext,
    /// A plaintext end received a TLS handshake.
    #[error("the peer speaks TLS: set insecure_plaintext on both ends or neither")]
    PeerSpeaksTls,
    /// Any other TLS failure (certificate refused, handshake alert, protocol error).
    #[error("TLS: {0}")]
    Protocol(#[from] rustls::Error),
    /// A record after the handshake was malformed (header, length, content type).
    #[error("a malformed TLS record: {0}")]
    BadRecord(&'static str),
    /// After the handshake the peer sent a record neither mtcpd end ever sends then.
    #[error("the peer sent a TLS {0} after the handshake, which mtcpd never sends")]
    UnexpectedRecord(&'static str),
    /// The peer ended TLS in order (a close_notify alert).
    #[error("the peer closed TLS (close_notify)")]
    PeerClosed,
    /// The connection's keys protected as many records as their cipher suite allows: the
    /// tunnel is closed and the client dials a fresh one (new keys).
    #[error(
        "the TLS keys protected {records} records and may protect at most {limit}: tunnel \
         closed, a fresh one replaces it"
    )]
    KeyLimit {
        /// Records protected by the key.
        records: u64,
        /// Records the key may protect.
        limit: u64,
    },
    /// A certificate or key file could not be read or used.
    #[error("{path}: {problem}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        problem: String,
    },
}

impl TlsError {
    /// The error of a rustls failure, with record authentication failures named as such.
    pub(crate) fn from_rustls(e: rustls::Error) -> Self {
        match e {
            rustls::Error::DecryptError
            | rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac) => {
                Self::Tampered
            }
            other => Self::Protocol(other),
        }
    }
}

/// The first bytes of a TLS record carrying a handshake (a ClientHello or ServerHello) or an
/// alert: what a plaintext end sees when its peer speaks TLS.
pub fn looks_like_tls(received: &[u8]) -> bool {
    matches!(received, [0x16 | 0x15, 0x03, ..])
}
