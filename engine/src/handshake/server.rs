//! The server half of a tunnel's handshake: [`ServerHandshake`] answers a ClientHello, asks its
//! owner whether the session may take the tunnel, and verifies the client's proof.
//!
//! Owns: the server's per-connection handshake state. Must not touch: sessions (admission is
//! the caller's closure; the result is an [`AcceptedTunnel`] for whoever owns the sessions).

use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::RngCore;

use super::{
    ChannelBinding, ClientHello, HELLO_FLAG_RESUME, HandshakeError, HelloStatus, NONCE_LEN,
    PROOF_LEN, ProofLabel, ServerHello, SessionId, TransportParams, decode_client_auth, proof,
    verify_proof,
};
use crate::wire::PROTOCOL_VERSION;

/// What the server's handshake settled: a verified tunnel to attach to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedTunnel {
    /// The session the tunnel belongs to.
    pub session_id: SessionId,
    /// Its slot in the pool.
    pub tunnel_index: u16,
    /// Negotiated pool size.
    pub pool_size: u16,
    /// The client believes the session already exists here.
    pub resume: bool,
    /// The client's limits.
    pub peer_params: TransportParams,
    /// Round trip measured across ServerHello → ClientAuth.
    pub rtt: Duration,
}

/// What the server's owner of sessions says about a ClientHello, before the server answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Proceed.
    Admit,
    /// Refuse with this status.
    Refuse(HelloStatus),
}

/// Progress of a [`ServerHandshake`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerProgress {
    /// More bytes are needed.
    Pending,
    /// The tunnel is verified; bytes after ClientAuth remain in the caller's buffer and belong to
    /// the session.
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
    deadline: Instant,
    server_nonce: [u8; NONCE_LEN],
    hello: Option<(ClientHello, u16, Instant)>,
    binding: ChannelBinding,
    output: BytesMut,
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
            deadline: now + timeout,
            server_nonce,
            hello: None,
            binding: [0; super::CHANNEL_BINDING_LEN],
            output: BytesMut::new(),
            finished: false,
        }
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

    /// Whether our ServerHello (with its proof) has been written: a client that hangs up after
    /// it could not verify the proof.
    pub fn answered(&self) -> bool {
        self.hello.is_some()
    }

    /// Bytes to write to the connection (ServerHello, or a refusal).
    pub fn take_output(&mut self) -> BytesMut {
        self.output.split()
    }

    /// Consumes handshake bytes from the front of `buf`, read from a connection whose
    /// [`ChannelBinding`] is `binding`. `admit` is asked once, with the ClientHello, whether the
    /// session may take this tunnel.
    pub fn handle_input(
        &mut self,
        now: Instant,
        buf: &mut BytesMut,
        binding: &ChannelBinding,
        admit: impl FnOnce(&ClientHello) -> Admission,
    ) -> Result<ServerProgress, HandshakeError> {
        if self.finished {
            return Err(HandshakeError::Malformed("handshake already finished"));
        }
        if self.hello.is_none() {
            self.binding = *binding;
            let hello = match ClientHello::decode(buf) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(ServerProgress::Pending),
                Err(HandshakeError::UnsupportedVersion { peer }) => {
                    // A foreign version's hello need not have our layout, so the refusal cannot
                    // be signed; a client takes it as final only before its session is
                    // established.
                    self.finished = true;
                    ServerHello {
                        version: PROTOCOL_VERSION,
                        status: HelloStatus::UnsupportedVersion,
                        pool_size: 0,
                        capabilities: 0,
                        nonce: self.server_nonce,
                        proof: [0; PROOF_LEN],
                        params: self.params,
                    }
                    .encode(&mut self.output);
                    return Err(HandshakeError::UnsupportedVersion { peer });
                }
                Err(e) => {
                    self.finished = true;
                    return Err(e);
                }
            };
            if let Err(e) = hello.params.validate() {
                self.finished = true;
                return Err(e);
            }
            let pool = hello.pool_size.clamp(1, self.max_pool);
            if hello.tunnel_index >= pool {
                self.refuse(&hello, HelloStatus::TunnelIndexOutOfRange, pool);
                return Err(HandshakeError::Refused(HelloStatus::TunnelIndexOutOfRange));
            }
            if let Admission::Refuse(status) = admit(&hello) {
                self.refuse(&hello, status, pool);
                return Err(HandshakeError::Refused(status));
            }
            self.answer(&hello, HelloStatus::Ok, pool);
            self.hello = Some((hello, pool, now));
        }
        let Some((hello, pool, sent_at)) = &self.hello else {
            return Ok(ServerProgress::Pending);
        };
        let client_proof = match decode_client_auth(buf) {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(ServerProgress::Pending),
            Err(e) => {
                self.finished = true;
                return Err(e);
            }
        };
        self.finished = true;
        if !verify_proof(
            &self.key,
            ProofLabel::Client,
            &self.binding,
            &hello.session_id,
            hello.tunnel_index,
            &hello.nonce,
            &self.server_nonce,
            HelloStatus::Ok,
            &client_proof,
        ) {
            return Err(HandshakeError::WrongKey);
        }
        Ok(ServerProgress::Accepted(AcceptedTunnel {
            session_id: hello.session_id,
            tunnel_index: hello.tunnel_index,
            pool_size: *pool,
            resume: hello.flags & HELLO_FLAG_RESUME != 0,
            peer_params: hello.params,
            rtt: now.saturating_duration_since(*sent_at),
        }))
    }

    fn refuse(&mut self, hello: &ClientHello, status: HelloStatus, pool: u16) {
        self.finished = true;
        self.answer(hello, status, pool);
    }

    /// Writes the ServerHello with `status`, signed with the server's proof (refusals too).
    fn answer(&mut self, hello: &ClientHello, status: HelloStatus, pool: u16) {
        let proof = proof(
            &self.key,
            ProofLabel::Server,
            &self.binding,
            &hello.session_id,
            hello.tunnel_index,
            &hello.nonce,
            &self.server_nonce,
            status,
        );
        ServerHello {
            version: PROTOCOL_VERSION,
            status,
            pool_size: pool,
            capabilities: 0,
            nonce: self.server_nonce,
            proof,
            params: self.params,
        }
        .encode(&mut self.output);
    }
}

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
