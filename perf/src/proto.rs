//! The tool's own tiny wire framing between `mtcp-perf client` and `mtcp-perf server`.
//!
//! Every test connection starts with a header from the client: the 4-byte magic `MTPF`, a
//! big-endian `u32` length and that many bytes of JSON ([`Header`]). Bulk connections get a
//! [`Hello`] frame back (`u32` length + JSON) before any data, and bulk uploads end with a
//! [`UpResult`] frame after the client's half-close. Echo connections (rr, ttfb, churn, idle)
//! carry raw fixed-size messages after the header. Being ordinary stream bytes, all of this passes
//! transparently through any TCP tunnel.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

pub const MAGIC: &[u8; 4] = b"MTPF";
/// Upper bound on any control frame, so a peer can never make us allocate much.
pub const MAX_FRAME: u32 = 64 * 1024;
/// Upper bound on an echo message size.
pub const MAX_MSG: u32 = 16 * 1024 * 1024;

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Client sends, server counts (and verifies), then reports an [`UpResult`].
    BulkUp,
    /// Server sends for `duration_ms` or `bytes`, then half-closes.
    BulkDown,
    /// Server reads `req` bytes, writes `resp` bytes, repeatedly, until EOF.
    Echo,
}

/// The per-connection header sent by the client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub mode: Mode,
    /// Bulk: stop after this many bytes.
    #[serde(default)]
    pub bytes: Option<u64>,
    /// Bulk download: stop after this long.
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// Bulk: the data carries the verification pattern with this seed.
    #[serde(default)]
    pub verify_seed: Option<u64>,
    /// Congestion control the server should set on its socket.
    #[serde(default)]
    pub cc: Option<String>,
    /// Echo: request size.
    #[serde(default)]
    pub req: u32,
    /// Echo: response size.
    #[serde(default)]
    pub resp: u32,
    /// How long the server waits for the next bytes before giving up on the connection.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
}

impl Header {
    pub fn new(mode: Mode) -> Self {
        Header {
            mode,
            bytes: None,
            duration_ms: None,
            verify_seed: None,
            cc: None,
            req: 0,
            resp: 0,
            idle_timeout_ms: None,
        }
    }

    /// The encoded header (magic + length + JSON).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(self).context("encoding header")?;
        let mut out = Vec::with_capacity(8 + json.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(json.len() as u32).to_be_bytes());
        out.extend_from_slice(&json);
        Ok(out)
    }

    /// Read and validate a header from the start of a connection.
    pub fn read_from(r: &mut impl Read) -> Result<Self> {
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic).context("reading header magic")?;
        if &magic != MAGIC {
            bail!("bad magic {magic:02x?}: not an mtcp-perf client");
        }
        let h: Header = read_json_body(r).context("reading header")?;
        if h.mode == Mode::Echo && (h.req == 0 || h.req > MAX_MSG || h.resp > MAX_MSG) {
            bail!("echo sizes out of range (req {}, resp {})", h.req, h.resp);
        }
        Ok(h)
    }
}

/// Server's answer to a bulk header, before any data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Hello {
    /// Congestion control the server's socket really uses.
    pub cc: Option<String>,
    /// Set when the server refuses the request.
    pub error: Option<String>,
}

/// Server's report at the end of a bulk upload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpResult {
    pub bytes: u64,
    pub seconds: f64,
    /// `None` when not verifying; `Some(false)` on a mismatch.
    pub verified: Option<bool>,
    pub error: Option<String>,
}

fn read_json_body<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).context("reading frame length")?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        bail!("control frame of {len} bytes exceeds the {MAX_FRAME}-byte limit");
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).context("reading frame body")?;
    serde_json::from_slice(&body).context("decoding frame JSON")
}

/// Write a length-prefixed JSON frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, v: &T) -> Result<()> {
    let json = serde_json::to_vec(v).context("encoding frame")?;
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    w.write_all(&out).context("writing frame")
}

/// Read a length-prefixed JSON frame.
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<T> {
    read_json_body(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_rejects() {
        let mut h = Header::new(Mode::Echo);
        h.req = 64;
        h.resp = 64;
        let enc = h.encode().unwrap();
        let back = Header::read_from(&mut &enc[..]).unwrap();
        assert_eq!(back.mode, Mode::Echo);
        assert_eq!(back.req, 64);
        assert!(Header::read_from(&mut &b"GET / HTTP/1.1\r\n"[..]).is_err());
        let mut big = MAGIC.to_vec();
        big.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(Header::read_from(&mut &big[..]).is_err());
        assert!(Header::read_from(&mut &enc[..enc.len() - 1]).is_err());
    }
}
