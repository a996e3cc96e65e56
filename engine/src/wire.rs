//! Frame layer of the tunnel protocol: parse and emit frames over byte buffers without copying
//! payloads.
//!
//! Owns: the byte layout of every frame after the handshake (docs/PROTOCOL.md §3), the frame size
//! limits, and the errors a malformed frame produces. Must not touch: stream or session state —
//! it knows nothing of what a frame means, only how it looks on the wire.
//!
//! Parsing works on a `BytesMut` that the caller filled from a socket: a complete frame is split
//! off the front and frozen, and payloads are `Bytes` slices of it, so the data path never copies
//! a payload. Parsing never panics and never allocates: a declared length is checked against the
//! configured limit before anything waits for it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u8 = 2;

/// Size of the fixed frame header: type, flags, reserved, body length.
pub const FRAME_HEADER_LEN: usize = 8;

/// The largest frame body any implementation may declare (1 MiB); configured limits are lower.
pub const ABSOLUTE_MAX_FRAME_BODY: u32 = 1 << 20;

/// The longest OPEN target (`host:port`) accepted.
pub const MAX_TARGET_LEN: usize = 1024;

/// The longest CLOSE reason accepted.
pub const MAX_REASON_LEN: usize = 512;

/// Fixed body part of a DATA frame: stream id and offset.
pub const DATA_FIXED_LEN: usize = 16;

/// The largest EXPOSE body: it fits within the smallest `max_frame_body` a peer may announce
/// (docs/PROTOCOL.md §2.2), so it never needs splitting.
pub const MAX_EXPOSE_BODY: usize = 1024;

/// The longest name of an exposed service.
pub const MAX_EXPOSE_NAME: usize = 63;

/// Flag on DATA: the sender's direction of the stream ends after this frame's payload.
pub const FLAG_FIN: u8 = 0x01;

/// Frame type codes (docs/PROTOCOL.md §3.2).
#[allow(missing_docs)]
pub mod frame_type {
    pub const DATA: u8 = 0x01;
    pub const OPEN: u8 = 0x02;
    pub const RESET: u8 = 0x03;
    pub const STREAM_WINDOW: u8 = 0x04;
    pub const SESSION_WINDOW: u8 = 0x05;
    pub const MAX_STREAMS: u8 = 0x06;
    pub const ACK: u8 = 0x07;
    pub const PING: u8 = 0x08;
    pub const PONG: u8 = 0x09;
    pub const GO_AWAY: u8 = 0x0A;
    pub const CLOSE: u8 = 0x0B;
    pub const EXPOSE: u8 = 0x0C;
    pub const HOL_REPORT: u8 = 0x0D;
    pub const TUNNEL_DRAIN: u8 = 0x0E;
}

/// Why a frame could not be parsed. Any of these ends the session (docs/PROTOCOL.md §9).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The header declares a body longer than the receiver's limit.
    #[error("frame body of {declared} bytes exceeds the limit of {limit}")]
    Oversize {
        /// Declared body length.
        declared: u32,
        /// The receiver's limit.
        limit: u32,
    },
    /// The frame type code is not defined in this protocol version.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// The body is shorter than the fixed fields its type requires, or longer where it may not be.
    #[error("malformed {kind} frame: body of {len} bytes")]
    BadLength {
        /// Frame kind.
        kind: &'static str,
        /// Actual body length.
        len: usize,
    },
    /// Reserved bits or undefined flags were set.
    #[error("reserved bits set in frame header (flags 0x{flags:02x}, reserved 0x{reserved:04x})")]
    Reserved {
        /// Flags byte.
        flags: u8,
        /// Reserved field.
        reserved: u16,
    },
    /// A text field (OPEN target, CLOSE reason) is not UTF-8 or too long.
    #[error("invalid {0} text")]
    BadText(&'static str),
    /// A field holds a value its type does not define.
    #[error("invalid {kind} value {value}")]
    BadValue {
        /// Frame kind.
        kind: &'static str,
        /// The value received.
        value: u64,
    },
}

/// One protocol frame. Payload-carrying variants hold `Bytes` that share the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Stream bytes at `offset`; `fin` ends the sender's direction after them.
    Data {
        /// Stream id.
        stream: u64,
        /// Offset of the first payload byte in the stream.
        offset: u64,
        /// End of the sender's direction after this payload.
        fin: bool,
        /// The bytes.
        payload: Bytes,
    },
    /// The sender opened `stream`; `target` is an optional `host:port` for the far end to reach.
    Open {
        /// Stream id.
        stream: u64,
        /// Optional target, UTF-8, at most [`MAX_TARGET_LEN`] bytes.
        target: Option<Bytes>,
    },
    /// Abort both directions of `stream`; `final_offset` is how far the sender had sent.
    Reset {
        /// Stream id.
        stream: u64,
        /// Bytes the sender had sent on the stream before resetting.
        final_offset: u64,
        /// Application error code.
        code: u32,
    },
    /// The sender may now send up to `max_offset` on `stream`.
    StreamWindow {
        /// Stream id.
        stream: u64,
        /// Absolute credit limit.
        max_offset: u64,
    },
    /// The sender may now send up to `max_data` new stream bytes in total on the session.
    SessionWindow {
        /// Absolute session credit limit.
        max_data: u64,
    },
    /// The sender may now have opened up to `count` streams in total (cumulative).
    MaxStreams {
        /// Cumulative stream count allowed.
        count: u64,
    },
    /// Cumulative count of reliable frames received on this tunnel connection.
    Ack {
        /// Reliable frames received so far on this tunnel connection.
        frames: u64,
    },
    /// Liveness and RTT probe; answered by a PONG with the same token.
    Ping {
        /// Opaque token.
        token: u64,
    },
    /// Answer to a PING.
    Pong {
        /// The PING's token.
        token: u64,
    },
    /// No new streams will be accepted; existing streams finish.
    GoAway {
        /// Reason code.
        code: u32,
    },
    /// The session ends now.
    Close {
        /// Error code (docs/PROTOCOL.md §9).
        code: u32,
        /// Human-readable reason, UTF-8.
        reason: Bytes,
    },
    /// Client: the names of the services it connects server-opened streams to (reverse
    /// tunnels); the body as on the wire, checked by [`expose_names`] when parsed.
    Expose {
        /// The encoded names (each a length byte and the name).
        names: Bytes,
    },
    /// Receiver → sender, only to a peer that announced
    /// [`CAP_HOL_REPORT`](crate::handshake::CAP_HOL_REPORT): `stream` has waited past the
    /// threshold for the `length` bytes at `offset` (the hole before the data it already holds).
    /// Unreliable, like ACK: a lost or late report costs nothing.
    HolReport {
        /// Stream id (the sender's direction of it).
        stream: u64,
        /// The first byte the receiver is missing.
        offset: u64,
        /// Length of the hole (up to the next byte held).
        length: u64,
    },
    /// Client → server, only to a server that announced
    /// [`CAP_TUNNEL_DRAIN`](crate::handshake::CAP_TUNNEL_DRAIN), on the tunnel it is about: the
    /// client's adaptive pool is retiring this tunnel (`draining`: send no new frames on it; the
    /// client closes it once its own frames on it are acknowledged) or took it back into use.
    /// Unreliable, like ACK: it travels on the tunnel it describes, so the last one read wins.
    TunnelDrain {
        /// True: retiring; false: in use again.
        draining: bool,
    },
}

impl Frame {
    /// True for frames that the receiver counts and acknowledges, and the sender retains for
    /// resend (everything except ACK, PING, PONG, HOL_REPORT, TUNNEL_DRAIN, and CLOSE, which
    /// ends the session).
    pub fn is_reliable(&self) -> bool {
        !matches!(
            self,
            Frame::Ack { .. }
                | Frame::Ping { .. }
                | Frame::Pong { .. }
                | Frame::HolReport { .. }
                | Frame::TunnelDrain { .. }
                | Frame::Close { .. }
        )
    }

    /// Encoded size on the wire, header included.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN + self.body_len()
    }

    fn body_len(&self) -> usize {
        match self {
            Frame::Data { payload, .. } => DATA_FIXED_LEN + payload.len(),
            Frame::Open { target, .. } => 8 + target.as_ref().map_or(0, |t| t.len()),
            Frame::Reset { .. } => 20,
            Frame::StreamWindow { .. } => 16,
            Frame::SessionWindow { .. }
            | Frame::MaxStreams { .. }
            | Frame::Ack { .. }
            | Frame::Ping { .. }
            | Frame::Pong { .. } => 8,
            Frame::GoAway { .. } => 4,
            Frame::Close { reason, .. } => 4 + reason.len(),
            Frame::Expose { names } => names.len(),
            Frame::HolReport { .. } => 24,
            Frame::TunnelDrain { .. } => 1,
        }
    }

    /// Appends the frame as wire chunks to `out`. Fixed fields are written into `scratch` and
    /// split off; a payload larger than `copy_below` is appended as its own `Bytes` (no copy),
    /// a smaller one is copied next to the header so tiny frames stay one chunk.
    pub fn encode(&self, scratch: &mut BytesMut, copy_below: usize, out: &mut Vec<Bytes>) {
        let body_len = self.body_len();
        scratch.reserve(FRAME_HEADER_LEN + body_len.min(copy_below.saturating_add(32)));
        let (ty, flags) = match self {
            Frame::Data { fin, .. } => (frame_type::DATA, if *fin { FLAG_FIN } else { 0 }),
            Frame::Open { .. } => (frame_type::OPEN, 0),
            Frame::Reset { .. } => (frame_type::RESET, 0),
            Frame::StreamWindow { .. } => (frame_type::STREAM_WINDOW, 0),
            Frame::SessionWindow { .. } => (frame_type::SESSION_WINDOW, 0),
            Frame::MaxStreams { .. } => (frame_type::MAX_STREAMS, 0),
            Frame::Ack { .. } => (frame_type::ACK, 0),
            Frame::Ping { .. } => (frame_type::PING, 0),
            Frame::Pong { .. } => (frame_type::PONG, 0),
            Frame::GoAway { .. } => (frame_type::GO_AWAY, 0),
            Frame::Close { .. } => (frame_type::CLOSE, 0),
            Frame::Expose { .. } => (frame_type::EXPOSE, 0),
            Frame::HolReport { .. } => (frame_type::HOL_REPORT, 0),
            Frame::TunnelDrain { .. } => (frame_type::TUNNEL_DRAIN, 0),
        };
        scratch.put_u8(ty);
        scratch.put_u8(flags);
        scratch.put_u16(0);
        // Body lengths are bounded by the frame-size limit (≤ 1 MiB), so they fit in u32.
        scratch.put_u32(body_len as u32);
        let tail: Option<&Bytes> = match self {
            Frame::Data {
                stream,
                offset,
                payload,
                ..
            } => {
                scratch.put_u64(*stream);
                scratch.put_u64(*offset);
                Some(payload)
            }
            Frame::Open { stream, target } => {
                scratch.put_u64(*stream);
                target.as_ref()
            }
            Frame::Reset {
                stream,
                final_offset,
                code,
            } => {
                scratch.put_u64(*stream);
                scratch.put_u64(*final_offset);
                scratch.put_u32(*code);
                None
            }
            Frame::StreamWindow { stream, max_offset } => {
                scratch.put_u64(*stream);
                scratch.put_u64(*max_offset);
                None
            }
            Frame::SessionWindow { max_data: v }
            | Frame::MaxStreams { count: v }
            | Frame::Ack { frames: v }
            | Frame::Ping { token: v }
            | Frame::Pong { token: v } => {
                scratch.put_u64(*v);
                None
            }
            Frame::GoAway { code } => {
                scratch.put_u32(*code);
                None
            }
            Frame::Close { code, reason } => {
                scratch.put_u32(*code);
                Some(reason)
            }
            Frame::Expose { names } => Some(names),
            Frame::HolReport {
                stream,
                offset,
                length,
            } => {
                scratch.put_u64(*stream);
                scratch.put_u64(*offset);
                scratch.put_u64(*length);
                None
            }
            Frame::TunnelDrain { draining } => {
                scratch.put_u8(u8::from(*draining));
                None
            }
        };
        match tail {
            Some(t) if t.len() >= copy_below => {
                out.push(scratch.split().freeze());
                out.push(t.clone());
            }
            Some(t) => {
                scratch.extend_from_slice(t);
                out.push(scratch.split().freeze());
            }
            None => out.push(scratch.split().freeze()),
        }
    }

    /// Encodes into one contiguous buffer (tests, fuzzing, handshake-sized frames).
    pub fn to_bytes(&self) -> Bytes {
        let mut scratch = BytesMut::new();
        let mut out = Vec::new();
        self.encode(&mut scratch, usize::MAX, &mut out);
        out.into_iter().next().unwrap_or_default()
    }
}

/// Reads the header at the front of `buf` and, once the whole frame is there, splits it off and
/// parses it. Returns `Ok(None)` while more bytes are needed. `max_body` is the receiver's
/// frame-body limit; a larger declared length is an error before any byte of it is awaited.
pub fn decode(buf: &mut BytesMut, max_body: u32) -> Result<Option<Frame>, FrameError> {
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let ty = header[0];
    let flags = header[1];
    let reserved = u16::from_be_bytes([header[2], header[3]]);
    let declared = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let limit = max_body.min(ABSOLUTE_MAX_FRAME_BODY);
    if declared > limit {
        return Err(FrameError::Oversize { declared, limit });
    }
    let allowed_flags = if ty == frame_type::DATA { FLAG_FIN } else { 0 };
    if reserved != 0 || flags & !allowed_flags != 0 {
        return Err(FrameError::Reserved { flags, reserved });
    }
    if !(frame_type::DATA..=frame_type::TUNNEL_DRAIN).contains(&ty) {
        return Err(FrameError::UnknownType(ty));
    }
    let total = FRAME_HEADER_LEN + declared as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let mut body = buf.split_to(total).freeze();
    body.advance(FRAME_HEADER_LEN);
    parse_body(ty, flags, body).map(Some)
}

fn need(
    kind: &'static str,
    body: &Bytes,
    exact: Option<usize>,
    min: usize,
) -> Result<(), FrameError> {
    let ok = match exact {
        Some(n) => body.len() == n,
        None => body.len() >= min,
    };
    if ok {
        Ok(())
    } else {
        Err(FrameError::BadLength {
            kind,
            len: body.len(),
        })
    }
}

fn parse_body(ty: u8, flags: u8, mut body: Bytes) -> Result<Frame, FrameError> {
    Ok(match ty {
        frame_type::DATA => {
            need("DATA", &body, None, DATA_FIXED_LEN)?;
            let stream = body.get_u64();
            let offset = body.get_u64();
            if offset.checked_add(body.len() as u64).is_none() {
                return Err(FrameError::BadLength {
                    kind: "DATA",
                    len: body.len(),
                });
            }
            Frame::Data {
                stream,
                offset,
                fin: flags & FLAG_FIN != 0,
                payload: body,
            }
        }
        frame_type::OPEN => {
            need("OPEN", &body, None, 8)?;
            let stream = body.get_u64();
            if body.len() > MAX_TARGET_LEN || std::str::from_utf8(&body).is_err() {
                return Err(FrameError::BadText("OPEN target"));
            }
            Frame::Open {
                stream,
                target: (!body.is_empty()).then_some(body),
            }
        }
        frame_type::RESET => {
            need("RESET", &body, Some(20), 0)?;
            Frame::Reset {
                stream: body.get_u64(),
                final_offset: body.get_u64(),
                code: body.get_u32(),
            }
        }
        frame_type::STREAM_WINDOW => {
            need("STREAM_WINDOW", &body, Some(16), 0)?;
            Frame::StreamWindow {
                stream: body.get_u64(),
                max_offset: body.get_u64(),
            }
        }
        frame_type::SESSION_WINDOW => {
            need("SESSION_WINDOW", &body, Some(8), 0)?;
            Frame::SessionWindow {
                max_data: body.get_u64(),
            }
        }
        frame_type::MAX_STREAMS => {
            need("MAX_STREAMS", &body, Some(8), 0)?;
            Frame::MaxStreams {
                count: body.get_u64(),
            }
        }
        frame_type::ACK => {
            need("ACK", &body, Some(8), 0)?;
            Frame::Ack {
                frames: body.get_u64(),
            }
        }
        frame_type::PING => {
            need("PING", &body, Some(8), 0)?;
            Frame::Ping {
                token: body.get_u64(),
            }
        }
        frame_type::PONG => {
            need("PONG", &body, Some(8), 0)?;
            Frame::Pong {
                token: body.get_u64(),
            }
        }
        frame_type::GO_AWAY => {
            need("GO_AWAY", &body, Some(4), 0)?;
            Frame::GoAway {
                code: body.get_u32(),
            }
        }
        frame_type::CLOSE => {
            need("CLOSE", &body, None, 4)?;
            let code = body.get_u32();
            if body.len() > MAX_REASON_LEN || std::str::from_utf8(&body).is_err() {
                return Err(FrameError::BadText("CLOSE reason"));
            }
            Frame::Close { code, reason: body }
        }
        frame_type::EXPOSE => {
            expose_names(&body)?;
            Frame::Expose { names: body }
        }
        frame_type::HOL_REPORT => {
            need("HOL_REPORT", &body, Some(24), 0)?;
            Frame::HolReport {
                stream: body.get_u64(),
                offset: body.get_u64(),
                length: body.get_u64(),
            }
        }
        frame_type::TUNNEL_DRAIN => {
            need("TUNNEL_DRAIN", &body, Some(1), 0)?;
            let draining = match body.get_u8() {
                0 => false,
                1 => true,
                value => {
                    return Err(FrameError::BadValue {
                        kind: "TUNNEL_DRAIN",
                        value: value.into(),
                    });
                }
            };
            Frame::TunnelDrain { draining }
        }
        other => return Err(FrameError::UnknownType(other)),
    })
}

/// A name a client may expose: 1 to [`MAX_EXPOSE_NAME`] bytes of ASCII letters, digits, `.`,
/// `_` and `-` (so it can be logged and written in a config file as it is).
pub fn valid_expose_name(name: &str) -> bool {
    (1..=MAX_EXPOSE_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Encodes exposed names as an EXPOSE body; `None` when a name is not
/// [valid](valid_expose_name), a name repeats, or the body would exceed [`MAX_EXPOSE_BODY`].
pub fn encode_expose_names<S: AsRef<str>>(names: &[S]) -> Option<Bytes> {
    let mut body = BytesMut::new();
    for (i, name) in names.iter().enumerate() {
        let name = name.as_ref();
        if !valid_expose_name(name) || names[..i].iter().any(|n| n.as_ref() == name) {
            return None;
        }
        body.put_u8(name.len() as u8);
        body.extend_from_slice(name.as_bytes());
    }
    (body.len() <= MAX_EXPOSE_BODY).then(|| body.freeze())
}

/// The names in an EXPOSE body, checked: each a length byte and a
/// [valid](valid_expose_name) name, no repeats, the body at most [`MAX_EXPOSE_BODY`].
pub fn expose_names(body: &[u8]) -> Result<Vec<String>, FrameError> {
    let bad = || FrameError::BadText("EXPOSE names");
    if body.len() > MAX_EXPOSE_BODY {
        return Err(FrameError::BadLength {
            kind: "EXPOSE",
            len: body.len(),
        });
    }
    let mut names: Vec<String> = Vec::new();
    let mut rest = body;
    while let Some((&len, tail)) = rest.split_first() {
        let name = tail.get(..usize::from(len)).ok_or_else(bad)?;
        let name = std::str::from_utf8(name).map_err(|_| bad())?;
        if !valid_expose_name(name) || names.iter().any(|n| n == name) {
            return Err(bad());
        }
        names.push(name.to_owned());
        rest = &tail[usize::from(len)..];
    }
    Ok(names)
}

#[cfg(test)]
mod tests;
