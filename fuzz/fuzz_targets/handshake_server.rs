//! Arbitrary bytes as one tunnel connection's input to a server [`Endpoint`], fed as the
//! runtime's event loop feeds it: `accept_connection`, then `handshake_input` per piece read, and
//! once the tunnel is attached the rest goes to its session's `handle_input`.
//!
//! Modes (bits of the first byte):
//! - bit 0, valid prefix: a well-formed ClientHello (protocol version 2) built from fuzzed
//!   fields comes first, so the fuzzer reaches past the magic without having to find it;
//! - bit 1, with bit 0: the hello is signed with the server's key (else with another key, so
//!   the unsigned AuthFailed path is taken), and its session secret masked with it; the accepted
//!   path (create-or-attach) and the session's frame input after it are reached;
//! - bit 2: a session (id `EXISTING`, secret `EXISTING_SECRET`) was created by a valid tunnel 0
//!   beforehand, so a hello can join it, resume it, or name it with the wrong secret;
//! - bit 3: a companion connection of the same session sent half of its ClientHello before the
//!   fuzzed one, and sends the rest or is dropped afterwards.
//!
//! Checks: no panic; every output is empty or exactly one ServerHello per connection: an
//! unsigned refusal (zero proof, zero limits) exactly when the hello's version is foreign or its
//! proof does not verify with the key, else signed over the whole ClientHello and the
//! ServerHello, with the negotiated pool size; a refusal's status is the error's; a tunnel that
//! names an existing session with another secret is refused `SessionSecretMismatch` and
//! replaces nothing; an attached tunnel's session is found by its id, holds the unmasked secret,
//! the tunnel is active and `created` is true exactly when the session did not exist; a
//! finished handshake is gone from the endpoint; and with no handshake in progress the session
//! budget holds exactly one place per session, and none once every session is removed.
//!
//! Input layout: `[mode][chunk seed][shape][hello fields: 12][client nonce: 16][bytes...]`
//! (hello fields and nonce only in valid-prefix mode). `shape`: bits 0-1 the budget (0-3
//! sessions), bits 2-4 the server's pool size (1-8), bit 5 the companion finishes its handshake
//! (else it is abandoned), bit 6 what is still pending ends by the handshake deadline (else by
//! abandonment), bit 7 the companion's tunnel index. Hello field 4: bit 7 names `EXISTING`
//! (bit 6 then gives it the wrong secret).
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mtcpd_engine::Config;
use mtcpd_engine::endpoint::{Endpoint, HandshakeKey, HandshakeOutcome, SessionBudget};
use mtcpd_engine::handshake::{
    CLIENT_HELLO_LEN, ClientHello, HELLO_FLAG_RESUME, HandshakeError, HelloStatus, NONCE_LEN,
    PLAINTEXT_BINDING, PROOF_LEN, ProofLabel, SERVER_HELLO_LEN, ServerHello, SessionId,
    SessionSecret, mask_session_secret, transcript_hash, verify_proof,
};
use mtcpd_engine::wire::PROTOCOL_VERSION;

const KEY: &[u8] = b"fuzz key";
const OTHER_KEY: &[u8] = b"not the fuzz key";
/// The session that exists before the fuzzed connection (mode bit 2), and its secret.
const EXISTING: SessionId = [0xe5; 16];
const EXISTING_SECRET: SessionSecret = [0x5e; 32];
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// One tunnel connection to the endpoint, from the client's side of the socket.
struct Conn {
    key: HandshakeKey,
    /// Every byte sent so far: the ClientHello is read back from its front to check the answer.
    sent: BytesMut,
    /// Bytes the endpoint has not consumed yet (the socket's receive buffer at the server).
    unread: BytesMut,
    server_hello: Option<ServerHello>,
    /// The handshake attached or failed; later bytes are the session's (or go nowhere).
    finished: bool,
}

impl Conn {
    fn accept(ep: &mut Endpoint, now: Instant) -> Self {
        let key = ep
            .accept_connection(now)
            .expect("a server endpoint accepts");
        Self {
            key,
            sent: BytesMut::new(),
            unread: BytesMut::new(),
            server_hello: None,
            finished: false,
        }
    }

    /// Sends `bytes` and lets the endpoint read everything it has; checks what comes back.
    fn send(&mut self, ep: &mut Endpoint, now: Instant, bytes: &[u8]) -> HandshakeOutcome {
        self.sent.extend_from_slice(bytes);
        self.unread.extend_from_slice(bytes);
        self.read(ep, now)
    }

    /// The endpoint reads what it has of this connection; checks what comes back.
    fn read(&mut self, ep: &mut Endpoint, now: Instant) -> HandshakeOutcome {
        let in_progress = ep.handshakes_in_progress();
        let existed = self.hello().and_then(|h| ep.find(&h.session_id));
        let active_before: Vec<bool> = existed.map_or_else(Vec::new, |k| {
            let s = ep[k].session();
            (0..s.tunnel_count())
                .map(|t| s.tunnel_is_active(t))
                .collect()
        });
        let step = ep.handshake_input(now, self.key, &mut self.unread, &PLAINTEXT_BINDING);
        self.check_answer(step.output, ep.config().pool_size);
        match &step.outcome {
            HandshakeOutcome::Pending => {
                assert_eq!(ep.handshakes_in_progress(), in_progress);
            }
            HandshakeOutcome::Attached {
                session,
                created,
                tunnel,
            } => {
                self.finished = true;
                assert_eq!(ep.handshakes_in_progress(), in_progress - 1);
                let hello = self.hello().expect("attached after a ClientHello");
                let answer = self
                    .server_hello
                    .as_ref()
                    .expect("attached after a ServerHello");
                assert_eq!(answer.status, HelloStatus::Ok);
                assert_eq!(tunnel.session_id, hello.session_id);
                assert_eq!(tunnel.tunnel_index, hello.tunnel_index);
                assert_eq!(tunnel.pool_size, answer.pool_size);
                assert_eq!(tunnel.resume, hello.flags & HELLO_FLAG_RESUME != 0);
                let secret = mask_session_secret(
                    KEY,
                    &PLAINTEXT_BINDING,
                    &hello.nonce,
                    &hello.masked_secret,
                );
                assert_eq!(tunnel.session_secret, secret);
                assert!(ep[*session].session().secret_matches(&secret));
                assert_eq!(
                    *created,
                    existed.is_none(),
                    "created iff the session was new"
                );
                if let Some(before) = existed {
                    assert_eq!(before, *session);
                }
                assert_eq!(ep.find(&hello.session_id), Some(*session));
                let s = ep[*session].session();
                assert!(!s.is_closed());
                assert!(s.tunnel_is_active(usize::from(tunnel.tunnel_index)));
            }
            HandshakeOutcome::Failed(e) => {
                self.finished = true;
                assert_eq!(ep.handshakes_in_progress(), in_progress - 1);
                if let Some(k) = existed {
                    // A refused tunnel replaced none of the session's.
                    let s = ep[k].session();
                    for (t, was) in active_before.iter().enumerate() {
                        assert_eq!(s.tunnel_is_active(t), *was, "tunnel {t}");
                    }
                }
                if *e == HandshakeError::Refused(HelloStatus::SessionSecretMismatch) {
                    let hello = self.hello().expect("a hello was refused");
                    let secret = mask_session_secret(
                        KEY,
                        &PLAINTEXT_BINDING,
                        &hello.nonce,
                        &hello.masked_secret,
                    );
                    let k = existed.expect("only an existing session's secret can mismatch");
                    assert!(!ep[k].session().secret_matches(&secret));
                }
                if let Some(answer) = &self.server_hello {
                    match answer.status {
                        HelloStatus::Ok => {}
                        HelloStatus::UnsupportedVersion => {
                            assert!(matches!(e, HandshakeError::UnsupportedVersion { .. }));
                        }
                        HelloStatus::AuthFailed => assert_eq!(*e, HandshakeError::WrongKey),
                        refused => assert_eq!(*e, HandshakeError::Refused(refused)),
                    }
                }
            }
        }
        if self.finished {
            // The key is gone: nothing more reaches a finished handshake.
            let again = ep.handshake_input(
                now,
                self.key,
                &mut BytesMut::from(&b"MTCP"[..]),
                &PLAINTEXT_BINDING,
            );
            assert!(again.output.is_empty());
            assert!(matches!(again.outcome, HandshakeOutcome::Failed(_)));
        }
        step.outcome
    }

    /// The ClientHello at the front of what was sent, if it is one.
    fn hello(&self) -> Option<ClientHello> {
        ClientHello::decode(&mut self.sent.clone()).ok().flatten()
    }

    /// The bytes of the ClientHello at the front of what was sent, if it is one.
    fn hello_bytes(&self) -> Option<BytesMut> {
        ClientHello::decode_with_bytes(&mut self.sent.clone())
            .ok()
            .flatten()
            .map(|(_, raw)| raw)
    }

    fn check_answer(&mut self, mut output: BytesMut, pool_cap: u16) {
        if output.is_empty() {
            return;
        }
        let (answer, answer_bytes) = ServerHello::decode_with_bytes(&mut output)
            .expect("server output parses")
            .expect("server output is a whole ServerHello");
        assert!(output.is_empty(), "nothing but a ServerHello");
        assert!(
            self.server_hello.is_none(),
            "one ServerHello per connection"
        );
        assert_eq!(answer.version, PROTOCOL_VERSION);
        let proved = self.hello_bytes().is_some_and(|raw| {
            let covered = [transcript_hash(&raw[..CLIENT_HELLO_LEN - PROOF_LEN])];
            let hello = self.hello().expect("decoded above");
            verify_proof(
                KEY,
                ProofLabel::Client,
                &PLAINTEXT_BINDING,
                &covered,
                &hello.proof,
            )
        });
        match answer.status {
            HelloStatus::UnsupportedVersion | HelloStatus::AuthFailed => {
                // Decided before the client proved the key: nothing signed, nothing told.
                assert_eq!(answer.proof, [0; PROOF_LEN]);
                assert_eq!(answer.params.max_frame_body, 0);
                assert_eq!(answer.pool_size, 0);
                if answer.status == HelloStatus::UnsupportedVersion {
                    assert!(matches!(
                        ClientHello::decode(&mut self.sent.clone()),
                        Err(HandshakeError::UnsupportedVersion { .. })
                    ));
                } else {
                    assert!(!proved, "a proved hello is never refused AuthFailed");
                }
            }
            _ => {
                assert!(proved, "only a proved hello gets a signed answer");
                let hello = self.hello().expect("a ServerHello answers a ClientHello");
                let raw = self.hello_bytes().expect("decoded above");
                let covered = [
                    transcript_hash(&raw),
                    transcript_hash(&answer_bytes[..SERVER_HELLO_LEN - PROOF_LEN]),
                ];
                assert!(
                    verify_proof(
                        KEY,
                        ProofLabel::Server,
                        &PLAINTEXT_BINDING,
                        &covered,
                        &answer.proof,
                    ),
                    "the server signs every answer to a proved hello, refusals too"
                );
                assert_eq!(answer.pool_size, hello.pool_size.clamp(1, pool_cap.max(1)));
                if answer.status == HelloStatus::Ok {
                    assert!(hello.tunnel_index < answer.pool_size);
                }
            }
        }
        self.server_hello = Some(answer);
    }
}

/// A ClientHello signed with `key`, for session `session_id` with `secret`.
#[allow(clippy::too_many_arguments)]
fn signed_hello(
    key: &[u8],
    version: u8,
    flags: u16,
    (session_id, secret): (SessionId, SessionSecret),
    tunnel_index: u16,
    pool_size: u16,
    capabilities: u32,
    nonce: [u8; NONCE_LEN],
    params: mtcpd_engine::handshake::TransportParams,
) -> BytesMut {
    let mut hello = ClientHello {
        version,
        flags,
        session_id,
        tunnel_index,
        pool_size,
        capabilities,
        nonce,
        params,
        masked_secret: mask_session_secret(key, &PLAINTEXT_BINDING, &nonce, &secret),
        proof: [0; PROOF_LEN],
    };
    hello.sign(key, &PLAINTEXT_BINDING);
    let mut out = BytesMut::new();
    hello.encode(&mut out);
    out
}

/// The secret a real client of session `id` holds.
fn secret_of(id: SessionId) -> SessionSecret {
    if id == EXISTING {
        EXISTING_SECRET
    } else {
        [id[0] ^ 0x33; 32]
    }
}

/// A ClientHello as a real client sends it.
fn client_hello(ep: &Endpoint, session_id: SessionId, tunnel_index: u16, nonce: u8) -> BytesMut {
    let config = ep.config();
    let flags = if ep.find(&session_id).is_some() {
        HELLO_FLAG_RESUME
    } else {
        0
    };
    signed_hello(
        KEY,
        PROTOCOL_VERSION,
        flags,
        (session_id, secret_of(session_id)),
        tunnel_index,
        config.pool_size,
        0,
        [nonce; NONCE_LEN],
        config.transport_params(),
    )
}

/// A ClientHello from fuzzed fields: mostly sane, with every field free to be wrong; signed
/// with the server's key when `proved`.
fn fuzzed_hello(data: &mut &[u8], defaults: &Config, proved: bool) -> BytesMut {
    let f: [u8; 12] = take(data);
    let nonce: [u8; NONCE_LEN] = take(data);
    let mut params = defaults.transport_params();
    params.max_frame_body = u32::from(f[10]) << 12;
    params.stream_window = u64::from(f[11]) << 16;
    let session_id = if f[4] & 0x80 != 0 {
        EXISTING
    } else {
        [f[4]; 16]
    };
    let mut secret = secret_of(session_id);
    if f[4] & 0x40 != 0 {
        secret[0] ^= 1;
    }
    signed_hello(
        if proved { KEY } else { OTHER_KEY },
        if f[0] == 0xff { f[1] } else { PROTOCOL_VERSION },
        u16::from_be_bytes([f[2], f[3]]),
        (session_id, secret),
        u16::from_be_bytes([f[5], f[6]]) % 16,
        u16::from_be_bytes([f[7], f[8]]),
        u32::from(f[9]),
        nonce,
        params,
    )
}

/// Splits `bytes` into pieces whose lengths follow a tiny xorshift seeded by `seed` (0: whole).
fn chunks(bytes: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut x = u32::from(seed) | 0x100;
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = if seed == 0 {
            rest.len()
        } else {
            (x % 97) as usize + 1
        };
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
    }
    out
}

fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0; N];
    let n = N.min(data.len());
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

/// Runs a whole valid handshake on a new connection.
fn establish(ep: &mut Endpoint, now: Instant, id: SessionId, tunnel: u16) -> HandshakeOutcome {
    let mut conn = Conn::accept(ep, now);
    let hello = client_hello(ep, id, tunnel, 0x11);
    conn.send(ep, now, &hello)
}

/// Feeds bytes that arrive after the handshake to the tunnel's session, and lets it answer.
fn session_input(ep: &mut Endpoint, now: Instant, at: (usize, usize), bytes: &mut BytesMut) {
    let (key, t) = at;
    let Some(slot) = ep.get_mut(key) else {
        bytes.clear();
        return;
    };
    let s = slot.session_mut();
    if s.handle_input(now, t, bytes).is_err() {
        assert!(s.is_closed(), "an input error closes the session");
    }
    let mut out = Vec::new();
    s.poll_transmit(now, t, 64 * 1024, &mut out);
    while s.poll_event().is_some() {}
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (mode, seed, shape) = (data[0], data[1], data[2]);
    let mut rest = &data[3..];
    let config = Config {
        psk: KEY.to_vec(),
        pool_size: u16::from((shape >> 2) & 7) + 1,
        handshake_timeout: HANDSHAKE_TIMEOUT,
        preauth_timeout: HANDSHAKE_TIMEOUT,
        ..Config::default()
    };
    let budget = SessionBudget::new(usize::from(shape & 3));
    let mut ep: Endpoint = Endpoint::server(Arc::new(config.clone()), budget.clone(), [9; 32]);
    let now = Instant::now();

    if mode & 4 != 0 {
        let outcome = establish(&mut ep, now, EXISTING, 0);
        if budget.limit() == 0 {
            assert!(matches!(
                outcome,
                HandshakeOutcome::Failed(HandshakeError::Refused(HelloStatus::TooManySessions))
            ));
        } else {
            assert!(matches!(
                outcome,
                HandshakeOutcome::Attached { created: true, .. }
            ));
        }
    }

    let prefix = if mode & 1 != 0 {
        fuzzed_hello(&mut rest, &config, mode & 2 != 0)
    } else {
        BytesMut::new()
    };
    let fuzzed_id = ClientHello::decode(&mut prefix.clone())
        .ok()
        .flatten()
        .map_or(EXISTING, |h| h.session_id);

    let mut companion = (mode & 8 != 0).then(|| {
        let mut c = Conn::accept(&mut ep, now);
        let mut hello = client_hello(&ep, fuzzed_id, u16::from(shape >> 7), 0x22);
        let rest = hello.split_off(hello.len() / 2);
        c.send(&mut ep, now, &hello);
        (c, rest)
    });

    let mut conn = Conn::accept(&mut ep, now);
    let mut attached: Option<(usize, usize)> = None;
    let mut after = BytesMut::new();
    let pieces = std::iter::once(&prefix[..]).chain(chunks(rest, seed));
    for piece in pieces {
        if let Some(at) = attached {
            after.extend_from_slice(piece);
            session_input(&mut ep, now, at, &mut after);
            continue;
        }
        if conn.finished {
            break;
        }
        if let HandshakeOutcome::Attached {
            session, tunnel, ..
        } = conn.send(&mut ep, now, piece)
        {
            let at = (session, usize::from(tunnel.tunnel_index));
            attached = Some(at);
            after = std::mem::take(&mut conn.unread);
            session_input(&mut ep, now, at, &mut after);
        }
    }

    if let Some((c, rest)) = &mut companion
        && !c.finished
        && shape & 0x20 != 0
    {
        c.send(&mut ep, now, rest);
    }

    let in_progress = ep.handshakes_in_progress();
    assert_eq!(ep.poll_handshake_timeout().is_some(), in_progress > 0);
    if shape & 0x40 != 0 {
        assert!(
            ep.poll_handshake_timeout()
                .is_none_or(|at| at <= now + HANDSHAKE_TIMEOUT)
        );
        assert!(
            ep.handshake_timeout(now).is_empty(),
            "nothing expires early"
        );
        let expired = ep.handshake_timeout(now + HANDSHAKE_TIMEOUT);
        assert_eq!(expired.len(), in_progress);
    } else {
        for c in std::iter::once(&conn).chain(companion.as_ref().map(|(c, _)| c)) {
            if !c.finished {
                ep.abandon_handshake(c.key);
            }
        }
    }
    assert_eq!(ep.handshakes_in_progress(), 0);
    assert!(ep.poll_handshake_timeout().is_none());
    assert_eq!(budget.taken(), ep.len(), "one budget place per session");

    // Sessions run on; closed ones are reaped, then all are removed.
    let later = now + Duration::from_secs(120);
    for key in ep.keys() {
        let s = ep[key].session_mut();
        s.handle_timeout(later);
        while s.poll_event().is_some() {}
        ep.reap(later, key);
    }
    assert_eq!(budget.taken(), ep.len());
    for key in ep.keys() {
        ep.remove(key);
    }
    assert_eq!(budget.taken(), 0);
});
