//! The pre-shared-key proofs: HMAC-SHA256 over both nonces, the session id, the tunnel index and
//! the server's status, labelled per direction.
//!
//! Owns: computing and verifying proofs. Must not touch: message layouts or handshake state.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{ChannelBinding, HelloStatus, NONCE_LEN, PROOF_LEN, SessionId};

/// Which side a proof speaks for.
#[derive(Debug, Clone, Copy)]
pub enum ProofLabel {
    /// Proof sent by the server in ServerHello.
    Server,
    /// Proof sent by the client in ClientAuth.
    Client,
}

/// HMAC-SHA256(key, label ‖ channel binding ‖ session id ‖ tunnel index ‖ client nonce ‖ server nonce ‖ status).
/// The status is the ServerHello's (the client's proof uses `Ok`), so refusals are signed too.
#[allow(clippy::too_many_arguments)]
pub fn proof(
    key: &[u8],
    label: ProofLabel,
    binding: &ChannelBinding,
    session_id: &SessionId,
    tunnel_index: u16,
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
    status: HelloStatus,
) -> [u8; PROOF_LEN] {
    let mac = proof_mac(
        key,
        label,
        binding,
        session_id,
        tunnel_index,
        client_nonce,
        server_nonce,
        status,
    );
    let mut out = [0; PROOF_LEN];
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// Constant-time check of a received proof.
#[allow(clippy::too_many_arguments)]
pub fn verify_proof(
    key: &[u8],
    label: ProofLabel,
    binding: &ChannelBinding,
    session_id: &SessionId,
    tunnel_index: u16,
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
    status: HelloStatus,
    received: &[u8; PROOF_LEN],
) -> bool {
    let mac = proof_mac(
        key,
        label,
        binding,
        session_id,
        tunnel_index,
        client_nonce,
        server_nonce,
        status,
    );
    mac.verify_slice(received).is_ok()
}

/// The HMAC both [`proof`] and [`verify_proof`] finish: keyed, labelled, fed every input.
#[allow(clippy::too_many_arguments)]
fn proof_mac(
    key: &[u8],
    label: ProofLabel,
    binding: &ChannelBinding,
    session_id: &SessionId,
    tunnel_index: u16,
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
    status: HelloStatus,
) -> Hmac<Sha256> {
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(match label {
        ProofLabel::Server => b"mtcpd v1 server proof",
        ProofLabel::Client => b"mtcpd v1 client proof",
    });
    mac.update(binding);
    mac.update(session_id);
    mac.update(&tunnel_index.to_be_bytes());
    mac.update(client_nonce);
    mac.update(server_nonce);
    mac.update(&(status as u16).to_be_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_depend_on_every_input() {
        let ok = HelloStatus::Ok;
        let p = |key: &[u8], label, idx, cn: u8, sn: u8, status| {
            proof(
                key, label, &[0; 32], &[1; 16], idx, &[cn; 16], &[sn; 16], status,
            )
        };
        let base = p(b"key", ProofLabel::Server, 0, 2, 3, ok);
        assert_ne!(base, p(b"kez", ProofLabel::Server, 0, 2, 3, ok));
        assert_ne!(base, p(b"key", ProofLabel::Client, 0, 2, 3, ok));
        assert_ne!(base, p(b"key", ProofLabel::Server, 1, 2, 3, ok));
        assert_ne!(base, p(b"key", ProofLabel::Server, 0, 9, 3, ok));
        assert_ne!(base, p(b"key", ProofLabel::Server, 0, 2, 9, ok));
        assert_ne!(
            base,
            p(
                b"key",
                ProofLabel::Server,
                0,
                2,
                3,
                HelloStatus::UnknownSession
            )
        );
        let label = ProofLabel::Server;
        assert!(verify_proof(
            b"key", label, &[0; 32], &[1; 16], 0, &[2; 16], &[3; 16], ok, &base
        ));
        assert!(!verify_proof(
            b"key", label, &[1; 32], &[1; 16], 0, &[2; 16], &[3; 16], ok, &base
        ));
    }
}
