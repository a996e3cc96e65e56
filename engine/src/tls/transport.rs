//! One tunnel connection's record layer: plaintext, or TLS 1.3 — rustls for the handshake,
//! then the in-place record layer of [`super::records`] on the keys rustls negotiated.
//!
//! Owns: turning received ciphertext into plaintext, sealing plaintext chunks into records, the
//! TLS handshake's own output, the channel binding once the handshake is done, and the switch
//! from rustls to [`RecordLayer`] (once the handshake is done and rustls has nothing left to
//! send; rustls is fed whole records only, so it never holds a piece of one at the switch).
//! Must not touch: what the plaintext means (the session and the endpoint parse it) or the
//! socket (the caller reads and writes it).

use std::io::{BufRead, IoSlice, Write};

use bytes::{Bytes, BytesMut};
use rustls::{ClientConnection, ServerConnection};

use super::records::{HEADER_LEN, RecordLayer, whole_record};
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
    /// Bytes fed to rustls before the channel binding existed (what it may be holding for a
    /// handshake message in progress): the pre-auth input cap counts these, not only what is
    /// left over in the caller's buffers.
    before_binding: usize,
    /// Records each key may protect, when lower than its suite's limit (tests).
    record_limit: Option<u64>,
}

#[derive(Debug)]
enum Inner {
    Plaintext,
    Client(Box<ClientConnection>),
    Server(Box<ServerConnection>),
    /// After the handshake: records sealed and opened in place.
    Records(Box<RecordLayer>),
    /// The switch to the record layer failed: nothing more passes.
    Broken,
}

/// rustls's shared connection state, whichever side.
macro_rules! with_conn {
    ($inner:expr, $c:ident => $body:expr, other => $other:expr) => {
        match $inner {
            Inner::Client($c) => $body,
            Inner::Server($c) => $body,
            _ => $other,
        }
    };
}

impl TunnelTls {
    /// No TLS: bytes pass unchanged, and the binding is [`PLAINTEXT_BINDING`].
    pub fn plaintext() -> Self {
        Self::with_inner(Inner::Plaintext, Some(PLAINTEXT_BINDING))
    }

    /// The client end of a new connection (its ClientHello is ready in [`Self::take_output`]).
    pub(crate) fn client(mut conn: ClientConnection) -> Self {
        conn.set_buffer_limit(None);
        Self::with_inner(Inner::Client(Box::new(conn)), None)
    }

    /// The server end of a new connection.
    pub(crate) fn server(mut conn: ServerConnection) -> Self {
        conn.set_buffer_limit(None);
        Self::with_inner(Inner::Server(Box::new(conn)), None)
    }

    fn with_inner(inner: Inner, binding: Option<ChannelBinding>) -> Self {
        Self {
            inner,
            binding,
            received_any: false,
            before_binding: 0,
            record_limit: None,
        }
    }

    /// Lowers the number of records each key may protect below its cipher suite's limit (the
    /// AES-GCM suites: 2^24), so that tests reach it. Takes effect at the switch to the record
    /// layer, so set it before the handshake ends.
    #[doc(hidden)]
    pub fn set_record_limit(&mut self, records: u64) {
        self.record_limit = Some(records);
    }

    /// True without TLS.
    pub fn is_plaintext(&self) -> bool {
        matches!(self.inner, Inner::Plaintext)
    }

    /// True until the TLS handshake is done (never for plaintext).
    pub fn is_handshaking(&self) -> bool {
        self.binding.is_none()
    }

    /// True once rustls has handed over to the in-place record layer (after the handshake).
    pub fn uses_record_layer(&self) -> bool {
        matches!(self.inner, Inner::Records(_))
    }

    /// True when TLS has records of its own to send (handshake messages, alerts).
    pub fn wants_write(&self) -> bool {
        with_conn!(&self.inner, c => c.wants_write(), other => false)
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

    /// Makes room for `additional` more received bytes in `received` so that the plaintext
    /// [`Self::read`] splits off it joins `plain` without a copy: when `received` lacks the
    /// room, one new buffer takes what `plain` still holds (a partial frame), then what
    /// `received` holds (a partial record), then the room. Call it before reading the socket
    /// into `received`; without it everything still works, with a copy of the plaintext
    /// whenever `plain` was not empty.
    pub fn reserve_receive(received: &mut BytesMut, plain: &mut BytesMut, additional: usize) {
        if received.capacity() - received.len() >= additional {
            return;
        }
        let mut fresh = BytesMut::with_capacity(plain.len() + received.len() + additional);
        fresh.extend_from_slice(plain);
        fresh.extend_from_slice(received);
        *plain = fresh.split_to(plain.len());
        *received = fresh;
    }

    /// Takes every whole record from the front of `received` and appends the plaintext they
    /// carry to `plain`; a partial record stays in `received` for the next call (append the
    /// next bytes read to it). Without TLS every byte moves over unchanged. No copy after the
    /// handshake: records are opened where they arrived (see [`Self::reserve_receive`]).
    pub fn read(&mut self, received: &mut BytesMut, plain: &mut BytesMut) -> Result<(), TlsError> {
        if received.is_empty() {
            return Ok(());
        }
        let first = !self.received_any;
        self.received_any = true;
        let result = match &mut self.inner {
            Inner::Plaintext => {
                if first && looks_like_tls(received) {
                    return Err(TlsError::PeerSpeaksTls);
                }
                plain.unsplit(received.split());
                return Ok(());
            }
            Inner::Records(records) => return records.open(received, plain),
            Inner::Broken => return Err(broken()),
            Inner::Client(c) => read_handshake(&mut **c, received, plain),
            Inner::Server(c) => read_handshake(&mut **c, received, plain),
        };
        let fed = match result {
            Ok(fed) => fed,
            // Garbage at the very start is a peer that does not speak TLS, not a bad record.
            Err(e) => {
                return Err(if first && !looks_like_tls(received) {
                    TlsError::PeerSpeaksPlaintext
                } else {
                    e
                });
            }
        };
        if self.binding.is_none() {
            self.before_binding = self.before_binding.saturating_add(fed);
            self.binding = with_conn!(&self.inner, c => export_binding(&***c)?, other => None);
        }
        self.switch_when_done()
    }

    /// Seals plaintext chunks into records, passing the ciphertext to `emit` (with TLS records
    /// of its own that were waiting). Without TLS the chunks pass unchanged (no copy).
    pub fn seal(
        &mut self,
        chunks: impl IntoIterator<Item = Bytes>,
        mut emit: impl FnMut(Bytes),
    ) -> Result<(), TlsError> {
        self.switch_when_done()?;
        match &mut self.inner {
            Inner::Plaintext => {
                for chunk in chunks {
                    emit(chunk);
                }
                return Ok(());
            }
            Inner::Records(records) => {
                if let Some(sealed) = records.seal(chunks)? {
                    emit(sealed);
                }
                return Ok(());
            }
            Inner::Broken => return Err(broken()),
            Inner::Client(c) => write_plaintext(&mut **c, chunks)?,
            Inner::Server(c) => write_plaintext(&mut **c, chunks)?,
        }
        self.take_output(emit);
        Ok(())
    }

    /// Passes the records TLS wants to send (handshake messages, alerts, sealed data) to
    /// `emit`, one chunk per call: a record leaves as soon as it is sealed, never held back
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
        }, other => {});
        // A client's last flight is out: its record layer takes over. (A failed switch shows
        // at the next read or seal.)
        let _ = self.switch_when_done();
    }

    /// Hands the connection from rustls to the in-place record layer once the handshake is
    /// done, the binding exported and rustls has nothing left to send. rustls holds no
    /// received bytes then (it is fed whole records, and their plaintext is always drained),
    /// and the sequence numbers carry over.
    fn switch_when_done(&mut self) -> Result<(), TlsError> {
        let ready = self.binding.is_some()
            && with_conn!(&self.inner, c => !c.is_handshaking() && !c.wants_write(), other => false);
        if !ready {
            return Ok(());
        }
        let suite_limit = with_conn!(&self.inner,
            c => c.negotiated_cipher_suite().and_then(|s| s.tls13()).map(|s| s.common.confidentiality_limit),
            other => None)
        .unwrap_or(u64::MAX);
        let limit = self
            .record_limit
            .map_or(suite_limit, |l| l.min(suite_limit));
        let secrets = match std::mem::replace(&mut self.inner, Inner::Broken) {
            Inner::Client(c) => c.dangerous_extract_secrets(),
            Inner::Server(c) => c.dangerous_extract_secrets(),
            _ => return Ok(()),
        }?;
        self.inner = Inner::Records(Box::new(RecordLayer::new(secrets, limit)?));
        Ok(())
    }
}

fn broken() -> TlsError {
    TlsError::BadRecord("the connection failed to switch to its record layer")
}

/// Writes plaintext chunks into rustls (before the switch: a seal during the handshake).
fn write_plaintext<D>(
    conn: &mut rustls::ConnectionCommon<D>,
    chunks: impl IntoIterator<Item = Bytes>,
) -> Result<(), TlsError> {
    // One vectored write: rustls fills whole records across the chunks (a frame's header and
    // payload share a record) instead of one record per chunk.
    let chunks: Vec<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
    let mut writer = conn.writer();
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
    Ok(())
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

/// Feeds the whole records at the front of `received` through `conn` (a partial one stays in
/// `received`: rustls never holds a piece of a record, so nothing is lost at the switch to
/// the record layer), appending the plaintext to `plain`. Returns the bytes fed.
///
/// rustls's deframer takes at most 4 KiB per `read_tls` (growing up to one largest record), so
/// each round fills it as far as it goes before one `process_new_packets`.
fn read_handshake<D>(
    conn: &mut rustls::ConnectionCommon<D>,
    received: &mut BytesMut,
    plain: &mut BytesMut,
) -> Result<usize, TlsError> {
    let mut whole = 0;
    while let Some(header) = received.get(whole..whole + HEADER_LEN) {
        // Not a TLS 1.x record at all, or longer than any: said at once, not after waiting
        // for a length, and through rustls, so that its alert tells the peer (a plaintext
        // mtcpd end names the mismatch from it).
        let valid = (0x14..=0x17).contains(&header[0]) && header[1] == 0x03;
        match whole_record(&received[whole..]) {
            Ok(Some(len)) if valid => whole += len,
            Ok(None) if valid => break,
            _ => return Err(refuse_through_rustls(conn, &received[whole..])),
        }
    }
    let mut input: &[u8] = &received[..whole];
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
            return Err(TlsError::PeerClosed);
        }
    }
    let _ = received.split_to(whole);
    Ok(whole)
}

/// Hands bytes that cannot be a TLS record to rustls, whose error queues the alert that tells
/// the peer; the error to report.
fn refuse_through_rustls<D>(conn: &mut rustls::ConnectionCommon<D>, mut bytes: &[u8]) -> TlsError {
    let fed = conn.read_tls(&mut bytes);
    match fed.map(|_| conn.process_new_packets()) {
        Ok(Err(e)) => TlsError::from_rustls(e),
        _ => TlsError::BadRecord("not a TLS record"),
    }
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
