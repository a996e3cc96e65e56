//! Arbitrary bytes as one tunnel connection's input to a server [`Endpoint`], fed as the
//! runtime's event loop feeds it: `accept_connection`, then `handshake_input` per piece read, and
//! once the tunnel is attached the rest goes to its session's `handle_input`.
//!
//! Modes (bits of the first byte):
//! - bit 0, valid prefix: a well-formed ClientHello built from fuzzed fields comes first, so the
//!   fuzzer reaches past the magic without having to find it;
//! - bit 1, with bit 0: an `Ok` ServerHello is answered with the correct ClientAuth, so the
//!   accepted path (create-or-attach) and the session's frame input after it are reached;
//! - bit 2: a session (id `EXISTING`) was created by a valid tunnel 0 beforehand, so a hello can
//!   join it, resume it or collide with it;
//! - bit 3: a companion connection of the same session sent its ClientHello before the fuzzed one
//!   (two handshakes sharing one budget place), and is finished or dropped afterwards.
//!
//! Checks: no panic; every output is empty or exactly one ServerHello per connection, signed for
//! the ClientHello it answers, with the negotiated pool size; a refusal's status is the error's;
//! an attached tunnel's session is found by its id, the tunnel is active and `created` is true
//! exactly when the session did not exist; a finished handshake is gone from the endpoint; and
//! with no handshake in progress the session budget holds exactly one place per session, and
//! none once every session is removed.
//!
//! Input layout: `[mode][chunk seed][shape][hello fields: 12][client nonce: 16][bytes...]`
//! (hello fields and nonce only in valid-prefix mode). `shape`: bits 0-1 the budget (0-3
//! sessions), bits 2-4 the server's pool size (1-8), bit 5 the companion finishes its handshake
//! (else it is abandoned), bit 6 what is still pending ends by the handshake deadline (else by
//! abandonment), bit 7 the companion's tunnel index.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mtcpd_engine::Config;
use mtcpd_engine::endpoint::{Endpoint, HandshakeKey, HandshakeOutcome, SessionBudget};
use mtcpd_engine::handshake::{
    ClientHello, HELLO_FLAG_RESUME, HandshakeError, HelloStatus, NONCE_LEN, PLAINTEXT_BINDING,
    PROOF_LEN, ProofLabel, ServerHello, SessionId, encode_client_auth, proof, verify_proof,
};
use mtcpd_engine::wire::PROTOCOL_VERSION;

const KEY: &[u8] = b"fuzz key";
/// The session that exists before the fuzzed connection (mode bit 2).
const EXISTING: SessionId = [0xe5; 16];
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

    /// Sends `bytes` ahead of those the endpoint has not read yet, and lets it read.
    fn send_first(&mut self, ep: &mut Endpoint, now: Instant, bytes: &[u8]) -> HandshakeOutcome {
        self.sent.extend_from_slice(bytes);
        let mut unread = BytesMut::from(bytes);
        unread.extend_from_slice(&self.unread);
        self.unread = unread;
        self.read(ep, now)
    }

    /// The endpoint reads what it has of this connection; checks what comes back.
    fn read(&mut self, ep: &mut Endpoint, now: Instant) -> HandshakeOutcome {
        let in_progress = ep.handshakes_in_progress();
        let existed = self.hello().and_then(|h| ep.find(&h.session_id));
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
                if let Some(answer) = &self.server_hello {
                    match answer.status {
                        HelloStatus::Ok => {}
                        HelloStatus::UnsupportedVersion => {
                            assert!(matches!(e, HandshakeError::UnsupportedVersion { .. }));
                        }
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

    fn check_answer(&mut self, mut output: BytesMut, pool_cap: u16) {
        if output.is_empty() {
            return;
        }
        let answer = ServerHello::decode(&mut output)
            .expect("server output parses")
            .expect("server output is a whole ServerHello");
        assert!(output.is_empty(), "nothing but a ServerHello");
        assert!(
            self.server_hello.is_none(),
            "one ServerHello per connection"
        );
        assert_eq!(answer.version, PROTOCOL_VERSION);
        if answer.status == HelloStatus::UnsupportedVersion {
            // A foreign version's hello cannot be signed.
            assert_eq!(answer.proof, [0; PROOF_LEN]);
            assert!(matches!(
                ClientHello::decode(&mut self.sent.clone()),
                Err(HandshakeError::UnsupportedVersion { .. })
            ));
        } else {
            let hello = self.hello().expect("a ServerHello answers a ClientHello");
            assert!(
                verify_proof(
                    KEY,
                    ProofLabel::Server,
                    &PLAINTEXT_BINDING,
                    &hello.session_id,
                    hello.tunnel_index,
                    &hello.nonce,
                    &answer.nonce,
                    answer.status,
                    &answer.proof,
                ),
                "the server signs every answer, refusals too"
            );
            assert_eq!(answer.pool_size, hello.pool_size.clamp(1, pool_cap.max(1)));
            if answer.status == HelloStatus::Ok {
                assert!(hello.tunnel_index < answer.pool_size);
            }
        }
        self.server_hello = Some(answer);
    }

    /// The ClientAuth a client with the key sends after an `Ok` ServerHello.
    fn client_auth(&self) -> Option<BytesMut> {
        let hello = self.hello()?;
        let answer = self.server_hello.as_ref()?;
        if answer.status != HelloStatus::Ok {
            return None;
        }
        let p = proof(
            KEY,
            ProofLabel::Client,
            &PLAINTEXT_BINDING,
            &hello.session_id,
            hello.tunnel_index,
            &hello.nonce,
            &answer.nonce,
            HelloStatus::Ok,
        );
        let mut auth = BytesMut::new();
        encode_client_auth(&p, &mut auth);
        Some(auth)
    }
}

/// A ClientHello as a real client sends it.
fn client_hello(ep: &Endpoint, session_id: SessionId, tunnel_index: u16, nonce: u8) -> BytesMut {
    let config = ep.config();
    let mut out = BytesMut::new();
    ClientHello {
        version: PROTOCOL_VERSION,
        flags: if ep.find(&session_id).is_some() {
            HELLO_FLAG_RESUME
        } else {
            0
        },
        session_id,
        tunnel_index,
        pool_size: config.pool_size,
        capabilities: 0,
        nonce: [nonce; NONCE_LEN],
        params: config.transport_params(),
    }
    .encode(&mut out);
    out
}

/// A ClientHello from fuzzed fields: mostly sane, with every field free to be wrong.
fn fuzzed_hello(data: &mut &[u8], defaults: &Config) -> BytesMut {
    let f: [u8; 12] = take(data);
    let nonce: [u8; NONCE_LEN] = take(data);
    let mut params = defaults.transport_params();
    params.max_frame_body = u32::from(f[10]) << 12;
    params.stream_window = u64::from(f[11]) << 16;
    let mut out = BytesMut::new();
    ClientHello {
        version: if f[0] == 0xff { f[1] } else { PROTOCOL_VERSION },
        flags: u16::from_be_bytes([f[2], f[3]]),
        session_id: if f[4] & 0x80 != 0 {
            EXISTING
        } else {
            [f[4]; 16]
        },
        tunnel_index: u16::from_be_bytes([f[5], f[6]]) % 16,
        pool_size: u16::from_be_bytes([f[7], f[8]]),
        capabilities: u32::from(f[9]),
        nonce,
        params,
    }
    .encode(&mut out);
    out
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
    let outcome = conn.send(ep, now, &hello);
    let Some(auth) = conn.client_auth() else {
        return outcome;
    };
    conn.send(ep, now, &auth)
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
        fuzzed_hello(&mut rest, &config)
    } else {
        BytesMut::new()
    };
    let fuzzed_id = ClientHello::decode(&mut prefix.clone())
        .ok()
        .flatten()
        .map_or(EXISTING, |h| h.session_id);

    let mut companion = (mode & 8 != 0).then(|| {
        let mut c = Conn::accept(&mut ep, now);
        let hello = client_hello(&ep, fuzzed_id, u16::from(shape >> 7), 0x22);
        c.send(&mut ep, now, &hello);
        c
    });

    let mut conn = Conn::accept(&mut ep, now);
    let mut attached: Option<(usize, usize)> = None;
    let mut after = BytesMut::new();
    let mut auth_sent = false;
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
        let mut outcome = conn.send(&mut ep, now, piece);
        if mode & 2 != 0
            && !auth_sent
            && matches!(outcome, HandshakeOutcome::Pending)
            && let Some(auth) = conn.client_auth()
        {
            // The client proves the key; the fuzzed bytes follow its proof.
            auth_sent = true;
            outcome = conn.send_first(&mut ep, now, &auth);
        }
        if let HandshakeOutcome::Attached {
            session, tunnel, ..
        } = outcome
        {
            let at = (session, usize::from(tunnel.tunnel_index));
            attached = Some(at);
            after = std::mem::take(&mut conn.unread);
            session_input(&mut ep, now, at, &mut after);
        }
    }

    if let Some(c) = &mut companion
        && !c.finished
        && shape & 0x20 != 0
        && let Some(auth) = c.client_auth()
    {
        c.send(&mut ep, now, &auth);
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
        for c in std::iter::once(&conn).chain(companion.as_ref()) {
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
