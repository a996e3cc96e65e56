//! The handshake messages on the wire: ClientHello and ServerHello (docs/PROTOCOL.md §2), encoded,
//! signed over their own bytes and decoded (with the bytes a proof covers), plus the early read of
//! a ClientHello's session id used for routing.
//!
//! Owns: byte layouts, and which bytes each proof covers. Must not touch: the MAC itself
//! (`proof`) or any decision about what a message means (`server`, `client`).

use bytes::{Buf, BufMut, BytesMut};

use super::{
    CLIENT_HELLO_LEN, ChannelBinding, HandshakeError, HelloStatus, MAGIC, MSG_CLIENT_HELLO,
    MSG_SERVER_HELLO, NONCE_LEN, PROOF_LEN, ProofLabel, SERVER_HELLO_LEN, SESSION_ID_LEN,
    SESSION_SECRET_LEN, SessionId, TransportParams, proof, transcript_hash,
};
use crate::wire::PROTOCOL_VERSION;

/// The first message on a tunnel, client to server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// Protocol version the client speaks.
    pub version: u8,
    /// Flags ([`HELLO_FLAG_RESUME`](super::HELLO_FLAG_RESUME)).
    pub flags: u16,
    /// The session this tunnel joins.
    pub session_id: SessionId,
    /// This tunnel's slot in the pool.
    pub tunnel_index: u16,
    /// Pool size the client would like.
    pub pool_size: u16,
    /// Capability bits (none defined in version 2; must be ignored when unknown).
    pub capabilities: u32,
    /// Client's nonce: makes every hello, and the mask of its secret, unique.
    pub nonce: [u8; NONCE_LEN],
    /// The client's limits.
    pub params: TransportParams,
    /// The session's secret XOR a pad only key holders on this connection can compute
    /// ([`super::mask_session_secret`]).
    pub masked_secret: [u8; SESSION_SECRET_LEN],
    /// HMAC proving the client knows the key, over the binding and every byte before it
    /// ([`ClientHello::sign`]).
    pub proof: [u8; PROOF_LEN],
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
    /// Server's nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The server's limits (zero in an unsigned refusal).
    pub params: TransportParams,
    /// HMAC proving the server knows the key, over the binding, the whole ClientHello and every
    /// byte of this message before it ([`ServerHello::sign`]); zero in the two unsigned refusals
    /// ([`HelloStatus::is_signed`]).
    pub proof: [u8; PROOF_LEN],
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
        out.put_slice(&self.masked_secret);
        out.put_slice(&self.proof);
    }

    /// Sets [`ClientHello::proof`]: HMAC(key, client label ‖ binding ‖ SHA-256(every byte of the
    /// encoded hello before the proof)).
    pub fn sign(&mut self, key: &[u8], binding: &ChannelBinding) {
        let mut bytes = BytesMut::with_capacity(CLIENT_HELLO_LEN);
        self.encode(&mut bytes);
        let covered = transcript_hash(&bytes[..CLIENT_HELLO_LEN - PROOF_LEN]);
        self.proof = proof(key, ProofLabel::Client, binding, &[covered]);
    }

    /// Parses from the front of `buf`; `Ok(None)` while incomplete. The version is checked after
    /// the magic and before anything else, so an unknown version is reported as such.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Self>, HandshakeError> {
        Ok(Self::decode_with_bytes(buf)?.map(|(hello, _)| hello))
    }

    /// [`ClientHello::decode`], also returning the message's bytes as received (what the proofs
    /// cover).
    pub fn decode_with_bytes(
        buf: &mut BytesMut,
    ) -> Result<Option<(Self, BytesMut)>, HandshakeError> {
        check_prefix(buf, MSG_CLIENT_HELLO)?;
        if buf.len() < CLIENT_HELLO_LEN {
            return Ok(None);
        }
        let raw = buf.split_to(CLIENT_HELLO_LEN);
        let mut m = raw.clone();
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
        let mut masked_secret = [0; SESSION_SECRET_LEN];
        m.copy_to_slice(&mut masked_secret);
        let mut proof = [0; PROOF_LEN];
        m.copy_to_slice(&mut proof);
        let hello = Self {
            version,
            flags,
            session_id,
            tunnel_index,
            pool_size,
            capabilities,
            nonce,
            params,
            masked_secret,
            proof,
        };
        Ok(Some((hello, raw)))
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
        self.params.encode(out);
        out.put_slice(&self.proof);
    }

    /// Sets [`ServerHello::proof`]: HMAC(key, server label ‖ binding ‖ SHA-256(the whole
    /// ClientHello as received) ‖ SHA-256(every byte of this hello before the proof)).
    pub fn sign(&mut self, key: &[u8], binding: &ChannelBinding, client_hello: &[u8]) {
        let mut bytes = BytesMut::with_capacity(SERVER_HELLO_LEN);
        self.encode(&mut bytes);
        let hashes = [
            transcript_hash(client_hello),
            transcript_hash(&bytes[..SERVER_HELLO_LEN - PROOF_LEN]),
        ];
        self.proof = proof(key, ProofLabel::Server, binding, &hashes);
    }

    /// Parses from the front of `buf`; `Ok(None)` while incomplete.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Self>, HandshakeError> {
        Ok(Self::decode_with_bytes(buf)?.map(|(hello, _)| hello))
    }

    /// [`ServerHello::decode`], also returning the message's bytes as received (what the
    /// server's proof covers).
    pub fn decode_with_bytes(
        buf: &mut BytesMut,
    ) -> Result<Option<(Self, BytesMut)>, HandshakeError> {
        check_prefix(buf, MSG_SERVER_HELLO)?;
        if buf.len() < SERVER_HELLO_LEN {
            return Ok(None);
        }
        let raw = buf.split_to(SERVER_HELLO_LEN);
        let mut m = raw.clone();
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
        let params = TransportParams::decode(&mut m);
        let mut proof = [0; PROOF_LEN];
        m.copy_to_slice(&mut proof);
        let hello = Self {
            version,
            status,
            pool_size,
            capabilities,
            nonce,
            params,
            proof,
        };
        Ok(Some((hello, raw)))
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A valid ClientHello of `version` (also used by the server half's tests).
    pub(in crate::handshake) fn hello(version: u8) -> ClientHello {
        ClientHello {
            version,
            flags: 0,
            session_id: [9; 16],
            tunnel_index: 1,
            pool_size: 4,
            capabilities: 0,
            nonce: [1; 16],
            params: PARAMS,
            masked_secret: [3; 32],
            proof: [0; 32],
        }
    }

    pub(in crate::handshake) const PARAMS: TransportParams = TransportParams {
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
            params: PARAMS,
            proof: [0; 32],
        }
        .encode(&mut b);
        assert_eq!(b.len(), SERVER_HELLO_LEN);
        assert_eq!((CLIENT_HELLO_LEN, SERVER_HELLO_LEN), (140, 92));
    }

    #[test]
    fn hellos_round_trip_with_their_bytes() {
        let mut h = hello(PROTOCOL_VERSION);
        h.sign(b"key", &[0; 32]);
        let mut b = BytesMut::new();
        h.encode(&mut b);
        let wire = b.clone();
        let (back, raw) = ClientHello::decode_with_bytes(&mut b).unwrap().unwrap();
        assert_eq!(back, h);
        assert_eq!(raw, wire);
        assert!(b.is_empty());
        let mut sh = ServerHello {
            version: PROTOCOL_VERSION,
            status: HelloStatus::SessionSecretMismatch,
            pool_size: 3,
            capabilities: 9,
            nonce: [4; 16],
            params: PARAMS,
            proof: [0; 32],
        };
        sh.sign(b"key", &[0; 32], &wire);
        assert_ne!(sh.proof, [0; 32]);
        sh.encode(&mut b);
        assert_eq!(ServerHello::decode(&mut b).unwrap().unwrap(), sh);
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
}
