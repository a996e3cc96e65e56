//! The handshake messages on the wire: ClientHello, ServerHello and ClientAuth (docs/PROTOCOL.md
//! §2), encoded and decoded, plus the early read of a ClientHello's session id used for routing.
//!
//! Owns: byte layouts only. Must not touch: proofs (`proof`) or any decision about what a message
//! means (`server`, `client`).

use bytes::{Buf, BufMut, BytesMut};

use super::{
    CLIENT_AUTH_LEN, CLIENT_HELLO_LEN, HandshakeError, HelloStatus, MAGIC, MSG_CLIENT_AUTH,
    MSG_CLIENT_HELLO, MSG_SERVER_HELLO, NONCE_LEN, PROOF_LEN, SERVER_HELLO_LEN, SESSION_ID_LEN,
    SessionId, TransportParams,
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
}
