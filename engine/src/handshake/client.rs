//! The client half of a tunnel's handshake: [`ClientHandshake`] writes the signed ClientHello
//! (with the session's masked secret) and checks the server's answer (version, proof, status,
//! limits).
//!
//! Owns: the client's per-connection handshake state (the hash of the hello it sent and when it
//! started). Must not touch: the session — the session's tunnel drives this, and decides what an
//! answer means for the session (established, retired slot, re-dial, session lost, refused).

use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::RngCore;

use super::{
    ChannelBinding, ClientHello, HELLO_FLAG_RESUME, HandshakeError, HelloStatus, NONCE_LEN,
    PROOF_LEN, ProofLabel, SERVER_HELLO_LEN, ServerHello, SessionId, SessionSecret,
    TransportParams, mask_session_secret, transcript_hash, verify_proof,
};
use crate::wire::PROTOCOL_VERSION;

/// What a client asks for on one tunnel connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOffer {
    /// The session the tunnel joins.
    pub session_id: SessionId,
    /// The session's secret: the server lets the tunnel join only if it matches.
    pub session_secret: SessionSecret,
    /// The tunnel's slot in the pool.
    pub tunnel_index: u16,
    /// The session is already established at the server (set [`HELLO_FLAG_RESUME`]).
    pub resume: bool,
    /// Pool size the client would like.
    pub pool_size: u16,
    /// The client's limits.
    pub params: TransportParams,
    /// Capability bits the client announces ([`super::CAP_HOL_REPORT`]).
    pub capabilities: u32,
}

/// What the server granted when it accepted the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerAccepted {
    /// Negotiated pool size (never 0): slots at or beyond it are not used.
    pub pool_size: u16,
    /// The server's limits, already validated.
    pub params: TransportParams,
    /// Round trip measured across ClientHello → ServerHello.
    pub rtt: Duration,
    /// Capability bits the server announced.
    pub capabilities: u32,
}

/// Progress of a [`ClientHandshake`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientProgress {
    /// More bytes are needed.
    Pending,
    /// The server proved the key and accepted. Bytes after ServerHello remain in the caller's
    /// buffer and are frames; the client may send frames now.
    Accepted(ServerAccepted),
}

/// Client side of one tunnel connection's handshake (sans-IO).
///
/// [`ClientHandshake::start`] writes the ClientHello; feed the server's bytes to
/// [`ClientHandshake::handle_input`] until it accepts or fails. On failure drop the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHandshake {
    /// SHA-256 of the whole ClientHello sent: the server's proof covers it.
    hello_hash: [u8; 32],
    binding: ChannelBinding,
    started: Instant,
}

impl ClientHandshake {
    /// Starts the handshake of a connection established at `now`, whose [`ChannelBinding`] is
    /// `binding`: appends the ClientHello, signed with `key`, to `out`.
    pub fn start(
        offer: ClientOffer,
        key: &[u8],
        binding: &ChannelBinding,
        now: Instant,
        rng: &mut impl RngCore,
        out: &mut BytesMut,
    ) -> Self {
        let mut nonce = [0; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let mut hello = ClientHello {
            version: PROTOCOL_VERSION,
            flags: if offer.resume { HELLO_FLAG_RESUME } else { 0 },
            session_id: offer.session_id,
            tunnel_index: offer.tunnel_index,
            pool_size: offer.pool_size,
            capabilities: offer.capabilities,
            nonce,
            params: offer.params,
            masked_secret: mask_session_secret(key, binding, &nonce, &offer.session_secret),
            proof: [0; PROOF_LEN],
        };
        hello.sign(key, binding);
        let start = out.len();
        hello.encode(out);
        Self {
            hello_hash: transcript_hash(&out[start..]),
            binding: *binding,
            started: now,
        }
    }

    /// When the ClientHello went out (the handshake timeout counts from here).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Consumes the ServerHello from the front of `buf` once it is complete. `key` is the
    /// pre-shared key.
    pub fn handle_input(
        &mut self,
        key: &[u8],
        now: Instant,
        buf: &mut BytesMut,
    ) -> Result<ClientProgress, HandshakeError> {
        let Some((hello, raw)) = ServerHello::decode_with_bytes(buf)? else {
            return Ok(ClientProgress::Pending);
        };
        if hello.version != PROTOCOL_VERSION || hello.status == HelloStatus::UnsupportedVersion {
            return Err(HandshakeError::UnsupportedVersion {
                peer: hello.version,
            });
        }
        if hello.status == HelloStatus::AuthFailed {
            // Unsigned by design (the server does not use its key for a peer that proved
            // nothing); only the caller's policy decides how final it is.
            return Err(HandshakeError::Refused(HelloStatus::AuthFailed));
        }
        // Every other answer is signed, refusals too, so nobody without the key can end a
        // session by injecting one, nor alter a field of either hello.
        let covered = [
            self.hello_hash,
            transcript_hash(&raw[..SERVER_HELLO_LEN - PROOF_LEN]),
        ];
        if !verify_proof(
            key,
            ProofLabel::Server,
            &self.binding,
            &covered,
            &hello.proof,
        ) {
            return Err(HandshakeError::WrongKey);
        }
        if hello.status != HelloStatus::Ok {
            return Err(HandshakeError::Refused(hello.status));
        }
        if hello.pool_size == 0 {
            return Err(HandshakeError::Malformed("ServerHello pool size 0"));
        }
        hello.params.validate()?;
        Ok(ClientProgress::Accepted(ServerAccepted {
            pool_size: hello.pool_size,
            params: hello.params,
            rtt: now.saturating_duration_since(self.started),
            capabilities: hello.capabilities,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{Admission, ServerHandshake, ServerProgress};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const PARAMS: TransportParams = TransportParams {
        max_frame_body: 65536,
        stream_window: 65536,
        session_window: 1 << 20,
        max_streams: 3,
    };

    fn offer(tunnel_index: u16) -> ClientOffer {
        ClientOffer {
            session_id: [5; 16],
            session_secret: [6; 32],
            tunnel_index,
            resume: true,
            pool_size: 8,
            params: PARAMS,
            capabilities: 0,
        }
    }

    /// Runs one handshake between a client with `client_key` and a server with `server_key`
    /// that answers `admission`; returns both ends' outcomes.
    fn run(
        client_key: &[u8],
        server_key: &[u8],
        admission: Admission,
    ) -> (
        Result<ClientProgress, HandshakeError>,
        Result<ServerProgress, HandshakeError>,
    ) {
        let mut rng = StdRng::seed_from_u64(7);
        let t0 = Instant::now();
        let mut to_server = BytesMut::new();
        let mut client =
            ClientHandshake::start(offer(1), client_key, &[0; 32], t0, &mut rng, &mut to_server);
        let mut server =
            ServerHandshake::new(server_key, 4, PARAMS, Duration::from_secs(5), t0, &mut rng);
        let server_end = server.handle_input(t0, &mut to_server, &[0; 32], |_| admission);
        let mut to_client = server.take_output();
        let t1 = t0 + Duration::from_millis(30);
        // Byte by byte: the client waits for the whole ServerHello.
        let whole = to_client.split();
        let mut progress = Ok(ClientProgress::Pending);
        for b in whole.iter() {
            assert_eq!(progress, Ok(ClientProgress::Pending));
            to_client.extend_from_slice(&[*b]);
            progress = client.handle_input(client_key, t1, &mut to_client);
        }
        (progress, server_end)
    }

    #[test]
    fn accepted_by_a_server_with_the_same_key() {
        let (client, server) = run(b"key", b"key", Admission::Admit);
        let Ok(ClientProgress::Accepted(granted)) = client else {
            panic!("client: {client:?}");
        };
        assert_eq!(granted.pool_size, 4, "the server caps the pool");
        assert_eq!(granted.params, PARAMS);
        assert_eq!(granted.rtt, Duration::from_millis(30));
        let Ok(ServerProgress::Accepted(tunnel)) = server else {
            panic!("server: {server:?}");
        };
        assert_eq!(tunnel.session_id, [5; 16]);
        assert_eq!(tunnel.session_secret, [6; 32], "the secret is unmasked");
        assert_eq!(tunnel.tunnel_index, 1);
        assert!(tunnel.resume);
    }

    #[test]
    fn keys_that_differ_are_refused_by_the_server_before_it_signs_anything() {
        for (client_key, server_key) in [(&b"key"[..], &b"other"[..]), (b"", b"key"), (b"key", b"")]
        {
            let (client, server) = run(client_key, server_key, Admission::Admit);
            assert_eq!(
                client,
                Err(HandshakeError::Refused(HelloStatus::AuthFailed)),
                "{client_key:?} vs {server_key:?}"
            );
            assert_eq!(server, Err(HandshakeError::WrongKey));
        }
    }

    #[test]
    fn a_signed_refusal_is_reported() {
        let refuse = Admission::Refuse(HelloStatus::TooManySessions);
        let (client, _) = run(b"key", b"key", refuse);
        assert_eq!(
            client,
            Err(HandshakeError::Refused(HelloStatus::TooManySessions))
        );
    }

    #[test]
    fn garbage_from_the_server_is_bad_magic() {
        let mut rng = StdRng::seed_from_u64(1);
        let now = Instant::now();
        let mut out = BytesMut::new();
        let mut client =
            ClientHandshake::start(offer(0), b"key", &[0; 32], now, &mut rng, &mut out);
        let mut reply = BytesMut::from(&b"HTTP/1.1 400 Bad Request\r\n"[..]);
        assert_eq!(
            client.handle_input(b"key", now, &mut reply),
            Err(HandshakeError::BadMagic)
        );
    }
}
