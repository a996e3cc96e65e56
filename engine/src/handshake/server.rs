//! The server half of a tunnel's handshake: [`ServerHandshake`] verifies the client's proof in its
//! ClientHello, unmasks the session secret, asks its owner whether the session may take the
//! tunnel, and answers.
//!
//! Owns: the server's per-connection handshake state. Must not touch: sessions (admission is
//! the caller's closure; the result is an [`AcceptedTunnel`] for whoever owns the sessions).
//!
//! Nothing is computed with the key for a peer until its proof verified: a bad proof gets an
//! unsigned [`HelloStatus::AuthFailed`], so the answers of this side are no oracle for guessing
//! the key offline.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::RngCore;

use super::{
    CLIENT_HELLO_LEN, ChannelBinding, ClientHello, HELLO_FLAG_RESUME, HandshakeError, HelloStatus,
    NONCE_LEN, PROOF_LEN, ProofLabel, ServerHello, SessionId, SessionSecret, TransportParams,
    mask_session_secret, transcript_hash, verify_proof,
};
use crate::wire::PROTOCOL_VERSION;

/// What the server's handshake settled: a verified tunnel to attach to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedTunnel {
    /// The session the tunnel belongs to.
    pub session_id: SessionId,
    /// The session's secret, unmasked: a new session keeps it, an existing one must match it.
    pub session_secret: SessionSecret,
    /// Its slot in the pool.
    pub tunnel_index: u16,
    /// Negotiated pool size.
    pub pool_size: u16,
    /// The client believes the session already exists here.
    pub resume: bool,
    /// The client's limits.
    pub peer_params: TransportParams,
    /// Capability bits the client announced.
    pub peer_capabilities: u32,
    /// Round trip measured by the handshake: zero, since version 2 has one message each way
    /// and the server cannot time it (the tunnel's first PING measures it).
    pub rtt: Duration,
}

/// What the server's owner of sessions says about a verified tunnel, before the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Proceed.
    Admit,
    /// Refuse with this status (signed: the client has proved the key).
    Refuse(HelloStatus),
}

/// Progress of a [`ServerHandshake`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerProgress {
    /// More bytes are needed.
    Pending,
    /// The tunnel is verified and the ServerHello written; bytes after the ClientHello remain in
    /// the caller's buffer and belong to the session.
    Accepted(AcceptedTunnel),
}

/// Server side of one tunnel connection's handshake (sans-IO).
///
/// Feed bytes with [`ServerHandshake::handle_input`]; write what [`ServerHandshake::take_output`]
/// returns; drop the connection on an error (after writing any output).
#[derive(Debug)]
pub struct ServerHandshake {
    key: Vec<u8>,
    max_pool: u16,
    params: TransportParams,
    /// Capability bits this server announces in its answers.
    capabilities: u32,
    deadline: Instant,
    server_nonce: [u8; NONCE_LEN],
    output: BytesMut,
    answered: bool,
    finished: bool,
}

impl ServerHandshake {
    /// Starts the handshake of a connection accepted at `now`.
    pub fn new(
        key: &[u8],
        max_pool: u16,
        params: TransportParams,
        timeout: Duration,
        now: Instant,
        rng: &mut impl RngCore,
    ) -> Self {
        let mut server_nonce = [0; NONCE_LEN];
        rng.fill_bytes(&mut server_nonce);
        Self {
            key: key.to_vec(),
            max_pool: max_pool.max(1),
            params,
            capabilities: 0,
            deadline: now + timeout,
            server_nonce,
            output: BytesMut::new(),
            answered: false,
            finished: false,
        }
    }

    /// Announces `capabilities` in the (signed) answer; none unless set.
    pub fn with_capabilities(mut self, capabilities: u32) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// When the handshake times out.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Fails with [`HandshakeError::Timeout`] once `now` passes the deadline.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), HandshakeError> {
        if !self.finished && now >= self.deadline {
            self.finished = true;
            return Err(HandshakeError::Timeout);
        }
        Ok(())
    }

    /// Whether a ServerHello has been written (an answer or a refusal). In version 2 that is
    /// also the end of the handshake.
    pub fn answered(&self) -> bool {
        self.answered
    }

    /// Bytes to write to the connection (ServerHello, or a refusal).
    pub fn take_output(&mut self) -> BytesMut {
        self.output.split()
    }

    /// Consumes the ClientHello from the front of `buf`, read from a connection whose
    /// [`ChannelBinding`] is `binding`. Once its proof verified, `admit` is asked once, with the
    /// tunnel it would accept, whether the session may take it.
    pub fn handle_input(
        &mut self,
        _now: Instant,
        buf: &mut BytesMut,
        binding: &ChannelBinding,
        admit: impl FnOnce(&AcceptedTunnel) -> Admission,
    ) -> Result<ServerProgress, HandshakeError> {
        if self.finished {
            return Err(HandshakeError::Malformed("handshake already finished"));
        }
        let (hello, raw) = match ClientHello::decode_with_bytes(buf) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(ServerProgress::Pending),
            Err(HandshakeError::UnsupportedVersion { peer }) => {
                // A foreign version's hello need not have our layout, so the refusal cannot
                // be signed; a client takes it as final only before its session is
                // established.
                self.refuse_unsigned(HelloStatus::UnsupportedVersion);
                return Err(HandshakeError::UnsupportedVersion { peer });
            }
            Err(e) => {
                self.finished = true;
                return Err(e);
            }
        };
        let covered = [transcript_hash(&raw[..CLIENT_HELLO_LEN - PROOF_LEN])];
        if !verify_proof(
            &self.key,
            ProofLabel::Client,
            binding,
            &covered,
            &hello.proof,
        ) {
            self.refuse_unsigned(HelloStatus::AuthFailed);
            return Err(HandshakeError::WrongKey);
        }
        if let Err(e) = hello.params.validate() {
            self.finished = true;
            return Err(e);
        }
        let pool = hello.pool_size.clamp(1, self.max_pool);
        if hello.tunnel_index >= pool {
            self.answer(&raw, binding, HelloStatus::TunnelIndexOutOfRange, pool);
            return Err(HandshakeError::Refused(HelloStatus::TunnelIndexOutOfRange));
        }
        let tunnel = AcceptedTunnel {
            session_id: hello.session_id,
            session_secret: mask_session_secret(
                &self.key,
                binding,
                &hello.nonce,
                &hello.masked_secret,
            ),
            tunnel_index: hello.tunnel_index,
            pool_size: pool,
            resume: hello.flags & HELLO_FLAG_RESUME != 0,
            peer_params: hello.params,
            peer_capabilities: hello.capabilities,
            rtt: Duration::ZERO,
        };
        if let Admission::Refuse(status) = admit(&tunnel) {
            self.answer(&raw, binding, status, pool);
            return Err(HandshakeError::Refused(status));
        }
        self.answer(&raw, binding, HelloStatus::Ok, pool);
        Ok(ServerProgress::Accepted(tunnel))
    }

    /// Writes a refusal decided before the client proved the key: no proof, no limits.
    fn refuse_unsigned(&mut self, status: HelloStatus) {
        self.finished = true;
        self.answered = true;
        ServerHello {
            version: PROTOCOL_VERSION,
            status,
            pool_size: 0,
            capabilities: 0,
            nonce: [0; NONCE_LEN],
            params: UNSIGNED_PARAMS,
            proof: [0; PROOF_LEN],
        }
        .encode(&mut self.output);
    }

    /// Writes the ServerHello with `status`, signed with the server's proof (refusals too), for
    /// the ClientHello whose bytes are `client_hello`. Ends the handshake.
    fn answer(
        &mut self,
        client_hello: &[u8],
        binding: &ChannelBinding,
        status: HelloStatus,
        pool: u16,
    ) {
        self.finished = true;
        self.answered = true;
        let mut hello = ServerHello {
            version: PROTOCOL_VERSION,
            status,
            pool_size: pool,
            capabilities: self.capabilities,
            nonce: self.server_nonce,
            params: self.params,
            proof: [0; PROOF_LEN],
        };
        hello.sign(&self.key, binding, client_hello);
        hello.encode(&mut self.output);
    }
}

/// The limits field of an unsigned refusal: all zero (nothing is told to an unproved peer).
const UNSIGNED_PARAMS: TransportParams = TransportParams {
    max_frame_body: 0,
    stream_window: 0,
    session_window: 0,
    max_streams: 0,
};

#[cfg(test)]
mod tests {
    use super::super::messages::tests::{PARAMS, hello};
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn wrong_version_is_refused_with_a_status() {
        let mut rng = StdRng::seed_from_u64(1);
        let now = Instant::now();
        let mut hs = ServerHandshake::new(b"k", 8, PARAMS, Duration::from_secs(5), now, &mut rng);
        let mut buf = BytesMut::new();
        hello(9).encode(&mut buf);
        let err = hs
            .handle_input(now, &mut buf, &[0; 32], |_| Admission::Admit)
            .unwrap_err();
        assert_eq!(err, HandshakeError::UnsupportedVersion { peer: 9 });
        let mut out = hs.take_output();
        let sh = ServerHello::decode(&mut out).unwrap().unwrap();
        assert_eq!(sh.status, HelloStatus::UnsupportedVersion);
    }

    #[test]
    fn garbage_is_bad_magic_at_the_first_wrong_byte() {
        let mut rng = StdRng::seed_from_u64(1);
        let now = Instant::now();
        let mut hs = ServerHandshake::new(b"k", 8, PARAMS, Duration::from_secs(5), now, &mut rng);
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert_eq!(
            hs.handle_input(now, &mut buf, &[0; 32], |_| Admission::Admit),
            Err(HandshakeError::BadMagic)
        );
        assert!(hs.take_output().is_empty(), "no answer to garbage");
    }
}
