//! One tunnel connection's record layer: plaintext, or a rustls client or server connection.
//!
//! Owns: turning received ciphertext into plaintext, sealing plaintext chunks into records, the
//! TLS handshake's own output, and the channel binding once the handshake is done. Must not
//! touch: what the plaintext means (the session and the endpoint parse it) or the socket (the
//! caller reads and writes it).

use std::io::{BufRead, IoSlice, Write};

use bytes::{Bytes, BytesMut};
use rustls::{ClientConnection, ServerConnection};

use super::{CHANNEL_BINDING_LABEL, TlsError, looks_like_tls};
use crate::handshake::{ChannelBinding, PLAINTEXT_BINDING};

/// The record layer of one tunnel connection.
#[derive(Debug)]
pub struct TunnelTls {
    inner: Inner,
    /// Set once the handshake is done (plaintext: at once).
    binding: Option<ChannelBinding>,
    /// Bytes already received (to tell a peer that does not speak TLS from a corrupt record).
    received_any: bool,
    /// Bytes fed in before the channel binding existed (what TLS may be holding for a
    /// handshake message in progress, up to 64 KiB in rustls): the pre-auth input cap counts
    /// these, not only what is left over.
    before_binding: usize,
}

#[derive(Debug)]
enum Inner {
    Plaintext,
    Client(Box<ClientConnection>),
    Server(Box<ServerConnection>),
}

/// rustls's shared connection state, whichever side.
macro_rules! with_conn {
    ($inner:expr, $c:ident => $body:expr, plain => $plain:expr) => {
        match $inner {
            Inner::Plaintext => $plain,
            Inner::Client($c) => $body,
            Inner::Server($c) => $body,
        }
    };
}

impl TunnelTls {
    /// No TLS: bytes pass unchanged, and the binding is [`PLAINTEXT_BINDING`].
    pub fn plaintext() -> Self {
        Self {
            inner: Inner::Plaintext,
            binding: Some(PLAINTEXT_BINDING),
            received_any: false,
            before_binding: 0,
        }
    }

    /// The client end of a new connection (its ClientHello is ready in [`Self::take_output`]).
    pub(crate) fn client(mut conn: ClientConnection) -> Self {
        conn.set_buffer_limit(None);
        Self {
            inner: Inner::Client(Box::new(conn)),
            binding: None,
            received_any: false,
            before_binding: 0,
        }
    }

    /// The server end of a new connection.
    pub(crate) fn server(mut conn: ServerConnection) -> Self {
        conn.set_buffer_limit(None);
        Self {
            inner: Inner::Server(Box::new(conn)),
            binding: None,
            received_any: false,
            before_binding: 0,
        }
    }

    /// True without TLS.
    pub fn is_plaintext(&self) -> bool {
        matches!(self.inner, Inner::Plaintext)
    }

    /// True until the TLS handshake is done (never for plaintext).
    pub fn is_handshaking(&self) -> bool {
        self.binding.is_none()
    }

    /// True when TLS has records of its own to send (handshake messages, alerts).
    pub fn wants_write(&self) -> bool {
        with_conn!(&self.inner, c => c.wants_write(), plain => false)
    }

    /// Bytes read in before the TLS handshake was done (zero for plaintext).
    pub fn bytes_before_binding(&self) -> usize {
        self.before_binding
    }

    /// The channel binding: the TLS exporter once the handshake is done
    /// ([`PLAINTEXT_BINDING`] without TLS), `None` before.
    pub fn binding(&self) -> Option<&ChannelBinding> {
        self.binding.as_ref()
    }

    /// Takes every received byte from `received` and appends the plaintext it carries to
    /// `plain`. Without TLS the bytes move over unchanged (no copy when `plain` is empty).
    pub fn read(&mut self, received: &mut BytesMut, plain: &mut BytesMut) -> Result<(), TlsError> {
        if received.is_empty() {
            return Ok(());
        }
        let first = !self.received_any;
        self.received_any = true;
        if self.binding.is_none() {
            self.before_binding = self.before_binding.saturating_add(received.len());
        }
        let result = with_conn!(&mut self.inner,
            c => read_records(&mut ***c, received, plain),
            plain => {
                if first && looks_like_tls(received) {
                    return Err(TlsError::PeerSpeaksTls);
                }
                if plain.is_empty() {
                    *plain = received.split();
                } else {
                    plain.extend_from_slice(received);
                    received.clear();
                }
                return Ok(());
            }
        );
        if let Err(e) = result {
            // Garbage at the very start is a peer that does not speak TLS, not a bad record.
            return Err(if first && !looks_like_tls(received) {
                TlsError::PeerSpeaksPlaintext
            } else {
                e
            });
        }
        received.clear();
        if self.binding.is_none() {
            self.binding = with_conn!(&self.inner, c => export_binding(&***c)?, plain => None);
        }
        Ok(())
    }

    /// Seals plaintext chunks into records, passing the ciphertext to `emit` (with TLS records
    /// of its own that were waiting). Without TLS the chunks pass unchanged (no copy).
    pub fn seal(
        &mut self,
        chunks: impl IntoIterator<Item = Bytes>,
        mut emit: impl FnMut(Bytes),
    ) -> Result<(), TlsError> {
        with_conn!(&mut self.inner,
            c => {
                // One vectored write: rustls fills whole records across the chunks (a frame's
                // header and payload share a record) instead of one record per chunk.
                let chunks: Vec<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
                let mut writer = c.writer();
                let (mut at, mut offset) = (0, 0);
                while at < chunks.len() {
                    let slices: Vec<IoSlice<'_>> = std::iter::once(&chunks[at][offset..])
                        .chain(chunks[at + 1..].iter().map(|c| &c[..]))
                        .map(IoSlice::new)
                        .collect();
                    // The buffer limit is off: rustls takes every byte at once.
                    let mut n = writer
                        .write_vectored(&slices)
                        .map_err(|e| TlsError::Protocol(rustls::Error::General(e.to_string())))?;
                    if n == 0 {
                        return Err(TlsError::Protocol(rustls::Error::General(
                            "TLS took no bytes".into(),
                        )));
                    }
                    while at < chunks.len() && n >= chunks[at].len() - offset {
                        n -= chunks[at].len() - offset;
                        (at, offset) = (at + 1, 0);
                    }
                    offset += n;
                }
            },
            plain => {
                for chunk in chunks {
                    emit(chunk);
                }
                return Ok(());
            }
        );
        self.take_output(emit);
        Ok(())
    }

    /// Passes the records TLS wants to send (handshake messages, alerts, sealed data) to
    /// `emit`, one chunk per record: a record leaves as soon as it is sealed, never held back
    /// behind the ones after it (what a simulated link, which delivers whole chunks, relies on).
    pub fn take_output(&mut self, mut emit: impl FnMut(Bytes)) {
        with_conn!(&mut self.inner, c => {
            // Every pending record into one buffer: one allocation and one chunk for the
            // socket, however many records the last seal made.
            let mut out = AllRecords(BytesMut::new());
            while c.wants_write() {
                match c.write_tls(&mut out) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            if !out.0.is_empty() {
                emit(out.0.freeze());
            }
        }, plain => {})
    }
}

/// Collects what rustls writes: every buffer of a vectored write, back to back.
struct AllRecords(BytesMut);

impl Write for AllRecords {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        let total = bufs.iter().map(|b| b.len()).sum();
        self.0.reserve(total);
        for b in bufs {
            self.0.extend_from_slice(b);
        }
        Ok(total)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Feeds `received` through `conn`, appending plaintext to `plain`.
///
/// rustls's deframer takes at most 4 KiB per `read_tls` (growing up to one largest record), so
/// each round fills it as far as it goes before one `process_new_packets`: whole records are
/// decrypted together instead of a round per 4 KiB.
fn read_records<D>(
    conn: &mut rustls::ConnectionCommon<D>,
    received: &BytesMut,
    plain: &mut BytesMut,
) -> Result<(), TlsError> {
    // Plaintext is never longer than the ciphertext carrying it: one allocation at most (not
    // in the handshake, which yields none, so pre-auth input costs no plaintext buffer).
    if !conn.is_handshaking() {
        plain.reserve(received.len());
    }
    let mut input: &[u8] = received;
    while !input.is_empty() {
        let mut fed = 0;
        let mut closed = false;
        while !input.is_empty() {
            match conn.read_tls(&mut input) {
                // The peer closed TLS (close_notify): nothing after it counts.
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => fed += n,
                // The deframer is full: process what it holds, then feed it again.
                Err(_) if fed > 0 => break,
                Err(e) => return Err(TlsError::Protocol(rustls::Error::General(e.to_string()))),
            }
        }
        if fed > 0 {
            conn.process_new_packets().map_err(TlsError::from_rustls)?;
            let mut reader = conn.reader();
            loop {
                match reader.fill_buf() {
                    Ok([]) => break,
                    Ok(bytes) => {
                        let n = bytes.len();
                        plain.extend_from_slice(bytes);
                        reader.consume(n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        return Err(TlsError::Protocol(rustls::Error::General(e.to_string())));
                    }
                }
            }
        }
        if closed {
            break;
        }
    }
    Ok(())
}

/// The exporter, once the handshake is done.
fn export_binding<D>(
    conn: &rustls::ConnectionCommon<D>,
) -> Result<Option<ChannelBinding>, TlsError> {
    if conn.is_handshaking() {
        return Ok(None);
    }
    let binding = conn.export_keying_material(PLAINTEXT_BINDING, CHANNEL_BINDING_LABEL, None)?;
    Ok(Some(binding))
}
