//! How a client checks the server's certificate when no CA is configured.
//!
//! Owns: [`PinnedOrAny`], the certificate verifier for "pin this fingerprint" and for "accept
//! any certificate". In both, the TLS 1.3 handshake signature is still verified with the
//! certificate's key, so the peer holds the key of the certificate it showed. Verification by a
//! CA and a name is rustls's own WebPKI verifier (see [`super::options`]). Must not touch:
//! anything after the handshake.
//!
//! Accepting any certificate is safe for mtcpd's purpose because the PSK proofs cover the TLS
//! exporter: a man in the middle with its own certificate ends up with different exporters on
//! its two sides and cannot produce either proof. What it loses is only that a client without a
//! key learns nothing about the server's identity.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::SignatureScheme;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls13_signature};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::fingerprint_of;

/// The server showed another certificate than the pinned one.
#[derive(Debug, thiserror::Error)]
#[error("the server's certificate is {seen}, not the pinned server_fingerprint {pinned}")]
pub struct PinMismatch {
    /// The fingerprint of the certificate the server showed.
    pub seen: String,
    /// The configured `server_fingerprint`.
    pub pinned: String,
}

/// Accepts the server certificate whose fingerprint is `pin`, or any when `pin` is `None`.
#[derive(Debug)]
pub struct PinnedOrAny {
    /// `sha256:<hex>`, lowercase.
    pin: Option<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedOrAny {
    /// A verifier for `pin` (`None`: any certificate) with the provider's signature algorithms.
    pub fn new(pin: Option<String>, provider: &Arc<rustls::crypto::CryptoProvider>) -> Self {
        Self {
            pin: pin.map(|p| p.to_ascii_lowercase()),
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for PinnedOrAny {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pin) = &self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        let seen = fingerprint_of(end_entity);
        if &seen == pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch {
                    seen,
                    pinned: pin.clone(),
                }))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is enabled; a TLS 1.2 handshake never reaches this.
        Err(rustls::Error::General("TLS 1.2 is not enabled".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
