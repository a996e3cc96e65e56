//! The TLS 1.3 record layer after the handshake (RFC 8446 §5), in user space: what kernel TLS
//! would do, on the keys rustls negotiated.
//!
//! Owns: sealing plaintext chunks into application_data records and opening received records,
//! in place (ring's AEAD over the caller's buffers: the payload is copied once, into the record
//! it is sealed in, and opened where it arrived), the per-direction sequence numbers, the checks
//! every received record passes, and the per-key record limit. Must not touch: the handshake
//! (rustls runs it, then hands over its secrets), what the plaintext means, or the socket.
//!
//! Wire format (standard TLS 1.3, nothing mtcpd-specific): a 5-byte header `0x17 0x03 0x03
//! len`, then the AEAD ciphertext of `data || 0x17 || zero padding` and its 16-byte tag; the
//! nonce is the traffic IV XOR the record's sequence number (big-endian, left-padded); the
//! header is the additional data.
//!
//! Strict by design: both ends are mtcpd, and after the handshake neither sends anything but
//! application data (no tickets, no KeyUpdate), so a record that fails to open, a malformed
//! header or length, or any inner content type other than application_data ends the tunnel.
//! A close_notify alert is the one orderly ending. A key seals at most its suite's
//! confidentiality limit of records; the tunnel is closed before that and the client dials a
//! fresh one (its unacknowledged frames go out on the other tunnels meanwhile).

use bytes::{BufMut, Bytes, BytesMut};
use ring::aead::{self, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;

use super::TlsError;

/// Bytes of a record header.
pub const HEADER_LEN: usize = 5;
/// Most plaintext bytes in one record (2^14).
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// Most bytes after a record's header (2^14 + 256).
pub const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// The AEAD tag of every suite TLS 1.3 offers here.
const TAG_LEN: usize = 16;
/// Bytes a sealed record adds to its data: header, inner content type, tag.
pub const RECORD_OVERHEAD: usize = HEADER_LEN + 1 + TAG_LEN;

const APPLICATION_DATA: u8 = 0x17;
const ALERT: u8 = 0x15;
const HANDSHAKE: u8 = 0x16;
const CLOSE_NOTIFY: u8 = 0;
const LEGACY_VERSION: [u8; 2] = [0x03, 0x03];

/// The length of the record at the front of `received` (header included) once all of it is
/// there, `None` while it is not. Errs on a length no TLS 1.3 record may have.
pub fn whole_record(received: &[u8]) -> Result<Option<usize>, TlsError> {
    let Some(header) = received.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len > MAX_CIPHERTEXT {
        return Err(TlsError::BadRecord("a record longer than 2^14 + 256 bytes"));
    }
    Ok((received.len() >= HEADER_LEN + len).then_some(HEADER_LEN + len))
}

/// One direction's key, IV and next sequence number.
struct Direction {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl Direction {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Self, TlsError> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => {
                return Err(TlsError::BadRecord(
                    "a cipher suite this record layer lacks",
                ));
            }
        };
        Self::from_parts(algorithm, key.as_ref(), iv.as_ref(), seq)
    }

    fn from_parts(
        algorithm: &'static aead::Algorithm,
        key: &[u8],
        iv: &[u8],
        seq: u64,
    ) -> Result<Self, TlsError> {
        let key = UnboundKey::new(algorithm, key)
            .map_err(|_| TlsError::BadRecord("a traffic key of the wrong length"))?;
        let iv = iv
            .try_into()
            .map_err(|_| TlsError::BadRecord("a traffic IV of the wrong length"))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// The next record's nonce: the IV XOR the sequence number (RFC 8446 §5.3).
    fn nonce(&self) -> Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[NONCE_LEN - 8..]
            .iter_mut()
            .zip(self.seq.to_be_bytes())
        {
            *n ^= s;
        }
        Nonce::assume_unique_for_key(nonce)
    }
}

impl std::fmt::Debug for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the IV.
        f.debug_struct("Direction")
            .field("algorithm", self.key.algorithm())
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// Both directions of one connection's records after the handshake.
#[derive(Debug)]
pub struct RecordLayer {
    tx: Direction,
    rx: Direction,
    /// Records a key may protect (the suite's confidentiality limit, or less in tests).
    limit: u64,
    /// Set by a failure: nothing more is read or sealed.
    broken: bool,
}

impl RecordLayer {
    /// The record layer of secrets rustls extracted at the end of its handshake; each key
    /// protects at most `limit` records.
    pub fn new(secrets: rustls::ExtractedSecrets, limit: u64) -> Result<Self, TlsError> {
        Ok(Self {
            tx: Direction::new(secrets.tx)?,
            rx: Direction::new(secrets.rx)?,
            limit,
            broken: false,
        })
    }

    /// A record layer from raw keys and IVs, `(sequence, key, iv)` per direction (tests: every
    /// suite without a handshake per suite).
    #[cfg(test)]
    pub(crate) fn from_keys(
        algorithm: &'static aead::Algorithm,
        tx: (u64, &[u8], &[u8]),
        rx: (u64, &[u8], &[u8]),
        limit: u64,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            tx: Direction::from_parts(algorithm, tx.1, tx.2, tx.0)?,
            rx: Direction::from_parts(algorithm, rx.1, rx.2, rx.0)?,
            limit,
            broken: false,
        })
    }

    /// Records sealed and opened so far under the current keys (sequence numbers).
    pub fn sequence_numbers(&self) -> (u64, u64) {
        (self.tx.seq, self.rx.seq)
    }

    /// Seals `chunks` into records of up to [`MAX_PLAINTEXT`] bytes, back to back in one
    /// buffer: each chunk's bytes are copied once, into the record, and encrypted there. `None`
    /// when there was nothing to seal. Refuses (before sealing anything) what would take the
    /// key past its record limit.
    pub fn seal(
        &mut self,
        chunks: impl IntoIterator<Item = Bytes>,
    ) -> Result<Option<Bytes>, TlsError> {
        if self.broken {
            return Err(TlsError::BadRecord("the record layer failed earlier"));
        }
        let chunks: Vec<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let total: usize = chunks.iter().map(Bytes::len).sum();
        if total == 0 {
            return Ok(None);
        }
        let records = total.div_ceil(MAX_PLAINTEXT);
        if self.tx.seq.saturating_add(records as u64) > self.limit {
            self.broken = true;
            return Err(TlsError::KeyLimit {
                records: self.tx.seq,
                limit: self.limit,
            });
        }
        let mut out = BytesMut::with_capacity(total + records * RECORD_OVERHEAD);
        let (mut at, mut offset) = (0, 0);
        let mut left = total;
        while left > 0 {
            let data = left.min(MAX_PLAINTEXT);
            left -= data;
            let len = (data + 1 + TAG_LEN) as u16;
            let [hi, lo] = len.to_be_bytes();
            let header = [
                APPLICATION_DATA,
                LEGACY_VERSION[0],
                LEGACY_VERSION[1],
                hi,
                lo,
            ];
            out.put_slice(&header);
            let start = out.len();
            let mut want = data;
            while want > 0 {
                let piece = &chunks[at][offset..];
                let n = piece.len().min(want);
                out.put_slice(&piece[..n]);
                want -= n;
                offset += n;
                if offset == chunks[at].len() {
                    (at, offset) = (at + 1, 0);
                }
            }
            out.put_u8(APPLICATION_DATA);
            let tag = self
                .tx
                .key
                .seal_in_place_separate_tag(self.tx.nonce(), Aad::from(header), &mut out[start..])
                .map_err(|_| TlsError::BadRecord("sealing failed"))?;
            out.put_slice(tag.as_ref());
            self.tx.seq += 1;
        }
        Ok(Some(out.freeze()))
    }

    /// Opens every whole record at the front of `received` in place and appends their data to
    /// `plain`; a partial record stays in `received` for the next call.
    ///
    /// No copy of the data: each record is decrypted where it arrived, shifted left over the
    /// headers and tags before it in the same pass, so the data of consecutive records ends up
    /// contiguous at the front of `received` and is split off into `plain` (joined without a
    /// copy when `plain` ends where `received` starts, see
    /// [`super::TunnelTls::reserve_receive`]). Only the partial record after the last whole one
    /// is moved, to close the gap the headers and tags left.
    pub fn open(&mut self, received: &mut BytesMut, plain: &mut BytesMut) -> Result<(), TlsError> {
        if self.broken {
            return Err(TlsError::BadRecord("the record layer failed earlier"));
        }
        let result = self.open_records(received);
        let (read, written) = match result {
            Ok(positions) => positions,
            Err(e) => {
                self.broken = true;
                return Err(e);
            }
        };
        if read == 0 {
            return Ok(());
        }
        let partial = received.len() - read;
        received.copy_within(read.., written);
        received.truncate(written + partial);
        plain.unsplit(received.split_to(written));
        Ok(())
    }

    /// Opens the whole records of `buf` in place, their data compacted to its front. Returns
    /// (bytes of records consumed, bytes of data at the front).
    fn open_records(&mut self, buf: &mut [u8]) -> Result<(usize, usize), TlsError> {
        let (mut read, mut written) = (0, 0);
        while let Some(len) = whole_record(&buf[read..])? {
            let header: [u8; HEADER_LEN] = [
                buf[read],
                buf[read + 1],
                buf[read + 2],
                buf[read + 3],
                buf[read + 4],
            ];
            if header[0] != APPLICATION_DATA {
                return Err(TlsError::BadRecord(
                    "an outer content type other than application_data",
                ));
            }
            if header[1..3] != LEGACY_VERSION {
                return Err(TlsError::BadRecord("a record version other than 0x0303"));
            }
            if len < HEADER_LEN + TAG_LEN + 1 {
                return Err(TlsError::BadRecord("a record too short for its tag"));
            }
            if self.rx.seq >= self.limit {
                return Err(TlsError::KeyLimit {
                    records: self.rx.seq,
                    limit: self.limit,
                });
            }
            let nonce = self.rx.nonce();
            let opened = self
                .rx
                .key
                .open_within(
                    nonce,
                    Aad::from(header),
                    &mut buf[written..read + len],
                    read + HEADER_LEN - written..,
                )
                .map_err(|_| TlsError::Tampered)?;
            self.rx.seq += 1;
            if opened.len() > MAX_PLAINTEXT + 1 {
                return Err(TlsError::BadRecord(
                    "a record with more than 2^14 bytes inside",
                ));
            }
            // The content type is the last non-zero byte; zeros after it are padding.
            let Some(type_at) = opened.iter().rposition(|&b| b != 0) else {
                return Err(TlsError::BadRecord("a record without a content type"));
            };
            match opened[type_at] {
                APPLICATION_DATA => written += type_at,
                ALERT if type_at == 2 && opened[1] == CLOSE_NOTIFY => {
                    return Err(TlsError::PeerClosed);
                }
                ALERT => {
                    return Err(TlsError::UnexpectedRecord("alert"));
                }
                HANDSHAKE => {
                    return Err(TlsError::UnexpectedRecord(
                        "handshake message (KeyUpdate or NewSessionTicket)",
                    ));
                }
                _ => return Err(TlsError::BadRecord("an unknown inner content type")),
            }
            read += len;
        }
        Ok((read, written))
    }

    /// Seals a close_notify alert (tests, and a peer that wants to end a tunnel politely).
    #[cfg(test)]
    pub(crate) fn seal_alert(&mut self, description: u8) -> Bytes {
        self.seal_inner(&[1, description], ALERT)
    }

    /// Seals `data` with inner content type `kind` (tests: what a misbehaving peer sends).
    #[cfg(test)]
    pub(crate) fn seal_inner(&mut self, data: &[u8], kind: u8) -> Bytes {
        let len = (data.len() + 1 + TAG_LEN) as u16;
        let [hi, lo] = len.to_be_bytes();
        let header = [APPLICATION_DATA, 3, 3, hi, lo];
        let mut out = BytesMut::from(&header[..]);
        out.put_slice(data);
        out.put_u8(kind);
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(self.tx.nonce(), Aad::from(header), &mut out[HEADER_LEN..])
            .expect("sealing");
        out.put_slice(tag.as_ref());
        self.tx.seq += 1;
        out.freeze()
    }
}

#[cfg(test)]
#[path = "records_tests.rs"]
mod tests;
