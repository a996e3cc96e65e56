//! Tunnel handshake: the three messages that open every tunnel connection, the pre-shared-key
//! proofs, and the server's per-connection handshake state machine.
//!
//! Owns: the handshake byte layouts (docs/PROTOCOL.md §2), HMAC-SHA256 challenge–response, and
//! [`ServerHandshake`], which runs on a fresh server connection before it is known which session it
//! belongs to. Must not touch: sessions or streams — the server's handshake hands an
//! [`AcceptedTunnel`] to whoever owns the sessions; the client half lives in the session's tunnel
//! state and only calls the message and proof helpers here.
//!
//! The key never crosses the wire: each side proves knowledge of it by an HMAC over both nonces,
//! the session id, the tunnel index and the server's status, with a label per direction so one
//! proof cannot be replayed as the other.

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
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

/// ClientHello size on the wire.
pub const CLIENT_HELLO_LEN: usize = 48 + PARAMS_LEN;
/// ServerHello size on the wire.
pub const SERVER_HELLO_LEN: usize = 64 + PARAMS_LEN;
/// ClientAuth size on the wire.
pub const CLIENT_AUTH_LEN: usize = 40;

const MSG_CLIENT_HELLO: u8 = 1;
const MSG_SERVER_HELLO: u8 = 2;
const MSG_CLIENT_AUTH: u8 = 3;

/// ClientHello flag: the client already has this session established at the server.
pub const HELLO_FLAG_RESUME: u16 = 0x0001;

/// A 128-bit session id.
pub type SessionId = [u8; SESSION_ID_LEN];

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
            _ => return None,
        })
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
    /// The peer's proof of the pre-shared key did not verify: the keys differ.
    #[error("pre-shared key mismatch: the peer's proof did not verify")]
    WrongKey,
    /// The server refused the tunnel.
    #[error("server refused the tunnel: {0:?}")]
    Refused(HelloStatus),
    /// The handshake did not finish in time.
    #[error("handshake timed out")]
    Timeout,
}

/// The first message on a tunnel, client to server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// Protocol version the client speaks.
    pub version: u8,
    /// Flags ([`HELLO_FLAG_RESUME`]).
    pub flags: u16,
    /// The session this tunnel joins.
    pub session_id: SessionId,
    /// This tunnel's slot in the pool.
    pub tunnel_index: u16,
    /// Pool size the client would like.
    pub pool_size: u16,
    /// Capability bits (none defined in version 1; must be ignored when unknown).
    pub capabilities: u32,
    /// Client's challenge.
    pub nonce: [u8; NONCE_LEN],
    /// The client's limits.
    pub params: TransportParams,
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    /// Protocol version the server speaks.
    pub version: u8,
    /// Proceed or why not.
    pub status: HelloStatus,
    /// Negotiated pool size: min(client's wish, server's cap).
    pub pool_size: u16,
    /// Capability bits.
    pub capabilities: u32,
    /// Server's challenge.
    pub nonce: [u8; NONCE_LEN],
    /// HMAC proving the server knows the key, over the status too (zero only in an
    /// UnsupportedVersion refusal, which cannot be signed).
    pub proof: [u8; PROOF_LEN],
    /// The server's limits.
    pub params: TransportParams,
}

impl ClientHello {
    /// Appends the message to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_slice(&MAGIC);
        out.put_u8(self.version);
        out.put_u8(MSG_CLIENT_HELLO);
        out.put_u16(self.flags);
        out.put_slice(&self.session_id);
        out.put_u16(self.tunnel_index);
        out.put_u16(self.pool_size);
        out.put_u32(self.capabilities);
        out.put_slice(&self.nonce);
        self.params.encode(out);
    }

    /// Parses from the front of `buf`; `Ok(None)` while incomplete. The version is checked after
    /// the magic and before anything else, so an unknown version is reported as such.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Self>, HandshakeError> {
        check_prefix(buf, MSG_CLIENT_HELLO)?;
        if buf.len() < CLIENT_HELLO_LEN {
            return Ok(None);
        }
        let mut m = buf.split_to(CLIENT_HELLO_LEN);
        m.advance(4);
        let version = m.get_u8();
        m.advance(1);
        let flags = m.get_u16();
        let mut session_id = [0; SESSION_ID_LEN];
        m.copy_to_slice(&mut session_id);
        let tunnel_index = m.get_u16();
        let pool_size = m.get_u16();
        let capabilities = m.get_u32();
        let mut nonce = [0; NONCE_LEN];
        m.copy_to_slice(&mut nonce);
        let params = TransportParams::decode(&mut m);
        Ok(Some(Self {
            version,
            flags,
            session_id,
            tunnel_index,
            pool_size,
            capabilities,
            nonce,
            params,
        }))
    }
}

impl ServerHello {
    /// Appends the message to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_slice(&MAGIC);
        out.put_u8(self.version);
        out.put_u8(MSG_SERVER_HELLO);
        out.put_u16(self.status as u16);
        out.put_u16(self.pool_size);
        out.put_u16(0);
        out.put_u32(self.capabilities);
        out.put_slice(&self.nonce);
        out.put_slice(&self.proof);
        self.params.encode(out);
    }

    /// Parses from the front of `buf`; `Ok(None)` while incomplete.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Self>, HandshakeError> {
        check_prefix(buf, MSG_SERVER_HELLO)?;
        if buf.len() < SERVER_HELLO_LEN {
            return Ok(None);
        }
        let mut m = buf.split_to(SERVER_HELLO_LEN);
        m.advance(4);
        let version = m.get_u8();
        m.advance(1);
        let status = HelloStatus::from_u16(m.get_u16())
            .ok_or(HandshakeError::Malformed("unknown ServerHello status"))?;
        let pool_size = m.get_u16();
        m.advance(2);
        let capabilities = m.get_u32();
        let mut nonce = [0; NONCE_LEN];
        m.copy_to_slice(&mut nonce);
        let mut proof = [0; PROOF_LEN];
        m.copy_to_slice(&mut proof);
        let params = TransportParams::decode(&mut m);
        Ok(Some(Self {
            version,
            status,
            pool_size,
            capabilities,
            nonce,
            proof,
            params,
        }))
    }
}

/// The session a tunnel asks to join, read from the first bytes of its ClientHello before the
/// rest has arrived: `Ok(None)` while fewer than the 24 bytes that carry it are here, an error
/// when the bytes cannot be a ClientHello. Used to route a tunnel to its session's worker before
/// the handshake proper runs there.
pub fn client_hello_session_id(buf: &[u8]) -> Result<Option<SessionId>, HandshakeError> {
    check_prefix(buf, MSG_CLIENT_HELLO)?;
    const START: usize = 8;
    let Some(id) = buf.get(START..START + SESSION_ID_LEN) else {
        return Ok(None);
    };
    let mut out = [0; SESSION_ID_LEN];
    out.copy_from_slice(id);
    Ok(Some(out))
}

/// Encodes ClientAuth (the client's proof).
pub fn encode_client_auth(proof: &[u8; PROOF_LEN], out: &mut BytesMut) {
    out.put_slice(&MAGIC);
    out.put_u8(PROTOCOL_VERSION);
    out.put_u8(MSG_CLIENT_AUTH);
    out.put_u16(0);
    out.put_slice(proof);
}

/// Parses ClientAuth from the front of `buf`; `Ok(None)` while incomplete.
pub fn decode_client_auth(buf: &mut BytesMut) -> Result<Option<[u8; PROOF_LEN]>, HandshakeError> {
    check_prefix(buf, MSG_CLIENT_AUTH)?;
    if buf.len() < CLIENT_AUTH_LEN {
        return Ok(None);
    }
    let mut m = buf.split_to(CLIENT_AUTH_LEN);
    m.advance(8);
    let mut proof = [0; PROOF_LEN];
    m.copy_to_slice(&mut proof);
    Ok(Some(proof))
}

/// Checks magic, version and message type as far as bytes are available.
fn check_prefix(buf: &[u8], msg: u8) -> Result<(), HandshakeError> {
    let n = buf.len().min(4);
    if buf[..n] != MAGIC[..n] {
        return Err(HandshakeError::BadMagic);
    }
    if let Some(&v) = buf.get(4)
        && v != PROTOCOL_VERSION
    {
        return Err(HandshakeError::UnsupportedVersion { peer: v });
    }
    if let Some(&t) = buf.get(5)
        && t != msg
    {
        return Err(HandshakeError::Malformed(
            "unexpected handshake message type",
        ));
    }
    Ok(())
}

/// Which side a proof speaks for.
#[derive(Debug, Clone, Copy)]
pub enum ProofLabel {
    /// Proof sent by the server in ServerHello.
    Server,
    /// Proof sent by the client in ClientAuth.
    Client,
}

/// HMAC-SHA256(key, label ‖ session id ‖ tunnel index ‖ client nonce ‖ server nonce ‖ status).
/// The status is the ServerHello's (the client's proof uses `Ok`), so refusals are signed too.
pub fn proof(
    key: &[u8],
    label: ProofLabel,
    session_id: &SessionId,
    tunnel_index: u16,
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
    status: HelloStatus,
) -> [u8; PROOF_LEN] {
    let mut mac = proof_mac(key, label);
    proof_input(
        &mut mac,
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
    session_id: &SessionId,
    tunnel_index: u16,
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
    status: HelloStatus,
    received: &[u8; PROOF_LEN],
) -> bool {
    let mut mac = proof_mac(key, label);
    proof_input(
        &mut mac,
        session_id,
        tunnel_index,
        client_nonce,
        server_nonce,
        status,
    );
    mac.verify_slice(received).is_ok()
}

fn proof_mac(key: &[u8], label: ProofLabel) -> Hmac<Sha256> {
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(match label {
        ProofLabel::Server => b"mtcpd v1 server proof",
        ProofLabel::Client => b"mtcpd v1 client proof",
    });
    mac
}

fn proof_input(
    mac: &mut Hmac<Sha256>,
    session_id: &SessionId,
    tunnel_index: u16,
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
    status: HelloStatus,
) {
    mac.update(session_id);
    mac.update(&tunnel_index.to_be_bytes());
    mac.update(client_nonce);
    mac.update(server_nonce);
    mac.update(&(status as u16).to_be_bytes());
}

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

    /// Bytes to write to the connection (ServerHello, or a refusal).
    pub fn take_output(&mut self) -> BytesMut {
        self.output.split()
    }

    /// Consumes handshake bytes from the front of `buf`. `admit` is asked once, with the
    /// ClientHello, whether the session may take this tunnel.
    pub fn handle_input(
        &mut self,
        now: Instant,
        buf: &mut BytesMut,
        admit: impl FnOnce(&ClientHello) -> Admission,
    ) -> Result<ServerProgress, HandshakeError> {
        if self.finished {
            return Err(HandshakeError::Malformed("handshake already finished"));
        }
        if self.hello.is_none() {
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
            let proof = proof(
                &self.key,
                ProofLabel::Server,
                &hello.session_id,
                hello.tunnel_index,
                &hello.nonce,
                &self.server_nonce,
                HelloStatus::Ok,
            );
            ServerHello {
                version: PROTOCOL_VERSION,
                status: HelloStatus::Ok,
                pool_size: pool,
                capabilities: 0,
                nonce: self.server_nonce,
                proof,
                params: self.params,
            }
            .encode(&mut self.output);
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
        let proof = proof(
            &self.key,
            ProofLabel::Server,
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
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn hello(version: u8) -> ClientHello {
        ClientHello {
            version,
            flags: 0,
            session_id: [9; 16],
            tunnel_index: 1,
            pool_size: 4,
            capabilities: 0,
            nonce: [1; 16],
            params: PARAMS,
        }
    }

    const PARAMS: TransportParams = TransportParams {
        max_frame_body: 65536,
        stream_window: 65536,
        session_window: 1 << 20,
        max_streams: 3,
    };

    #[test]
    fn messages_have_their_documented_sizes() {
        let mut b = BytesMut::new();
        hello(1).encode(&mut b);
        assert_eq!(b.len(), CLIENT_HELLO_LEN);
        b.clear();
        ServerHello {
            version: 1,
            status: HelloStatus::Ok,
            pool_size: 1,
            capabilities: 0,
            nonce: [0; 16],
            proof: [0; 32],
            params: PARAMS,
        }
        .encode(&mut b);
        assert_eq!(b.len(), SERVER_HELLO_LEN);
        b.clear();
        encode_client_auth(&[0; 32], &mut b);
        assert_eq!(b.len(), CLIENT_AUTH_LEN);
    }

    #[test]
    fn session_id_is_read_from_the_first_24_bytes() {
        let mut b = BytesMut::new();
        let mut h = hello(PROTOCOL_VERSION);
        h.session_id = [7; 16];
        h.encode(&mut b);
        for n in 0..24 {
            assert_eq!(client_hello_session_id(&b[..n]).unwrap(), None, "{n} bytes");
        }
        assert_eq!(client_hello_session_id(&b[..24]).unwrap(), Some([7; 16]));
        assert_eq!(client_hello_session_id(&b).unwrap(), Some([7; 16]));
        assert!(client_hello_session_id(b"GET / HTTP/1.1\r\n").is_err());
    }

    #[test]
    fn wrong_version_is_refused_with_a_status() {
        let mut rng = StdRng::seed_from_u64(1);
        let now = Instant::now();
        let mut hs = ServerHandshake::new(b"k", 8, PARAMS, Duration::from_secs(5), now, &mut rng);
        let mut buf = BytesMut::new();
        hello(9).encode(&mut buf);
        let err = hs
            .handle_input(now, &mut buf, |_| Admission::Admit)
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
            hs.handle_input(now, &mut buf, |_| Admission::Admit),
            Err(HandshakeError::BadMagic)
        );
        assert!(hs.take_output().is_empty(), "no answer to garbage");
    }

    #[test]
    fn proofs_depend_on_every_input() {
        let ok = HelloStatus::Ok;
        let p = |key: &[u8], label, idx, cn: u8, sn: u8, status| {
            proof(key, label, &[1; 16], idx, &[cn; 16], &[sn; 16], status)
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
            b"key", label, &[1; 16], 0, &[2; 16], &[3; 16], ok, &base
        ));
    }
}
