//! The pre-shared-key computations of protocol version 2: the two proofs (HMAC-SHA256 over a
//! label, the channel binding and SHA-256 hashes of the hello bytes they cover) and the pad that
//! masks the session secret.
//!
//! Owns: computing and verifying proofs, hashing hello bytes, the secret's mask. Must not touch:
//! message layouts or handshake state (callers pass the bytes to cover).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::{ChannelBinding, NONCE_LEN, PROOF_LEN, SESSION_SECRET_LEN, SessionSecret};

/// Which side a proof speaks for.
#[derive(Debug, Clone, Copy)]
pub enum ProofLabel {
    /// Proof sent by the server in ServerHello: covers the hash of the whole ClientHello, then
    /// the hash of the ServerHello before its proof.
    Server,
    /// Proof sent by the client in ClientHello: covers the hash of the ClientHello before its
    /// proof.
    Client,
}

impl ProofLabel {
    fn text(self) -> &'static [u8] {
        match self {
            Self::Server => b"mtcpd v2 server proof",
            Self::Client => b"mtcpd v2 client proof",
        }
    }
}

/// SHA-256 of hello bytes, as a proof covers them.
pub fn transcript_hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// HMAC-SHA256(key, label ‖ channel binding ‖ each of `hashes` in order). `hashes` are
/// [`transcript_hash`]es of the hello bytes the proof covers (see [`ProofLabel`]).
pub fn proof(
    key: &[u8],
    label: ProofLabel,
    binding: &ChannelBinding,
    hashes: &[[u8; 32]],
) -> [u8; PROOF_LEN] {
    let mut out = [0; PROOF_LEN];
    out.copy_from_slice(
        &proof_mac(key, label, binding, hashes)
            .finalize()
            .into_bytes(),
    );
    out
}

/// Constant-time check of a received [`proof`].
pub fn verify_proof(
    key: &[u8],
    label: ProofLabel,
    binding: &ChannelBinding,
    hashes: &[[u8; 32]],
    received: &[u8; PROOF_LEN],
) -> bool {
    proof_mac(key, label, binding, hashes)
        .verify_slice(received)
        .is_ok()
}

/// `secret` XOR HMAC-SHA256(key, "mtcpd v2 session secret" ‖ binding ‖ client nonce): masks a
/// session secret for a ClientHello, and unmasks a received one (XOR is its own inverse). Only a
/// holder of the key, on this connection, with this nonce, can unmask it.
pub fn mask_session_secret(
    key: &[u8],
    binding: &ChannelBinding,
    client_nonce: &[u8; NONCE_LEN],
    secret: &SessionSecret,
) -> SessionSecret {
    let mut mac = keyed(key);
    mac.update(b"mtcpd v2 session secret");
    mac.update(binding);
    mac.update(client_nonce);
    let pad = mac.finalize().into_bytes();
    let mut out = [0; SESSION_SECRET_LEN];
    for (o, (s, p)) in out.iter_mut().zip(secret.iter().zip(pad.iter())) {
        *o = s ^ p;
    }
    out
}

/// The HMAC both [`proof`] and [`verify_proof`] finish: keyed, labelled, fed every input.
fn proof_mac(
    key: &[u8],
    label: ProofLabel,
    binding: &ChannelBinding,
    hashes: &[[u8; 32]],
) -> Hmac<Sha256> {
    let mut mac = keyed(key);
    mac.update(label.text());
    mac.update(binding);
    for hash in hashes {
        mac.update(hash);
    }
    mac
}

fn keyed(key: &[u8]) -> Hmac<Sha256> {
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_depend_on_every_input() {
        let h = |b: u8| transcript_hash(&[b]);
        let p = |key: &[u8], label, binding: u8, hashes: &[[u8; 32]]| {
            proof(key, label, &[binding; 32], hashes)
        };
        let base = p(b"key", ProofLabel::Server, 0, &[h(1), h(2)]);
        assert_ne!(base, p(b"kez", ProofLabel::Server, 0, &[h(1), h(2)]));
        assert_ne!(base, p(b"key", ProofLabel::Client, 0, &[h(1), h(2)]));
        assert_ne!(base, p(b"key", ProofLabel::Server, 1, &[h(1), h(2)]));
        assert_ne!(base, p(b"key", ProofLabel::Server, 0, &[h(3), h(2)]));
        assert_ne!(base, p(b"key", ProofLabel::Server, 0, &[h(1), h(3)]));
        assert_ne!(base, p(b"key", ProofLabel::Server, 0, &[h(1)]));
        let label = ProofLabel::Server;
        assert!(verify_proof(b"key", label, &[0; 32], &[h(1), h(2)], &base));
        assert!(!verify_proof(b"key", label, &[1; 32], &[h(1), h(2)], &base));
    }

    #[test]
    fn the_secret_mask_is_an_involution_bound_to_key_binding_and_nonce() {
        let secret = [0x5a; 32];
        let masked = mask_session_secret(b"key", &[0; 32], &[1; 16], &secret);
        assert_ne!(masked, secret);
        assert_eq!(
            mask_session_secret(b"key", &[0; 32], &[1; 16], &masked),
            secret
        );
        assert_ne!(
            mask_session_secret(b"kez", &[0; 32], &[1; 16], &masked),
            secret
        );
        assert_ne!(
            mask_session_secret(b"key", &[2; 32], &[1; 16], &masked),
            secret
        );
        assert_ne!(
            mask_session_secret(b"key", &[0; 32], &[2; 16], &masked),
            secret
        );
    }
}
