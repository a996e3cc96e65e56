//! Shared helpers for the mtcpd criterion benchmarks (see `benches/`) and the fuzz targets.
//!
//! The main piece is [`MemPair`]: a client [`Session`] and a server [`Session`] joined by
//! in-memory tunnels, driven by a direct pump instead of the event loop of
//! [`mtcpd_engine::sim`], so that what a benchmark measures is the protocol processing itself
//! (framing, scheduling, acknowledgement, reordering, flow control) and one copy per byte per
//! direction — the copy a socket would make — and nothing else.
//!
//! Owns: the in-memory pump and bulk-transfer helpers. Must not touch: protocol logic; it calls
//! the sans-IO API exactly as a driver would (see the driver contract in
//! [`mtcpd_engine::session`]).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mtcpd_engine::endpoint::{Endpoint, HandshakeKey, HandshakeOutcome, SessionBudget, SessionKey};
use mtcpd_engine::handshake::{HandshakeError, PLAINTEXT_BINDING};
use mtcpd_engine::tls::{ServerIdentity, TlsSetup, TunnelTls};
use mtcpd_engine::{Config, Event, ReadOutcome, Session, SessionError, StreamError, StreamId};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use thiserror::Error;

/// Rounds [`MemPair::new`] allows for every tunnel's handshake to finish.
const SETUP_ROUNDS: usize = 64;

/// Consecutive rounds without any progress after which a transfer is declared stuck.
const STALL_ROUNDS: usize = 1000;

/// Why a [`MemPair`] could not be built or driven.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PairError {
    /// The server's handshake refused or failed a tunnel.
    #[error("server handshake on tunnel {tunnel} failed: {source}")]
    Handshake {
        /// Tunnel index.
        tunnel: usize,
        /// What went wrong.
        source: HandshakeError,
    },
    /// Not every tunnel was established within the setup rounds.
    #[error("tunnels not established after {0} rounds")]
    SetupTimeout(usize),
    /// A session ended (the peer broke the protocol, or a local close).
    #[error("{side:?} session closed: {reason}")]
    Closed {
        /// Which end.
        side: Side,
        /// Why.
        reason: SessionError,
    },
    /// TLS could not be set up between the in-memory ends.
    #[error("TLS: {0}")]
    Tls(String),
    /// The client asked to (re)dial a tunnel: the in-memory pair does not model tunnel loss.
    #[error("client asked to dial tunnel {0} after setup (tunnel loss is not modelled)")]
    Redial(u16),
    /// A stream call failed.
    #[error("stream call failed: {0}")]
    Stream(#[from] StreamError),
    /// Nothing moved for many rounds while a transfer was unfinished.
    #[error("transfer stalled at {received} of {total} bytes")]
    Stalled {
        /// Bytes delivered so far.
        received: u64,
        /// Bytes asked for.
        total: u64,
    },
}

/// Which end of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client session.
    Client,
    /// The server session.
    Server,
}

/// A client and a server session over in-memory tunnels, pumped directly on one thread.
///
/// Every [`MemPair::pump`] round advances a fake clock by [`MemPair::tick`] and fires due timers;
/// it then delivers to each side, tunnel by tunnel, the bytes the other side wrote in the
/// previous round (`handle_input`), and finally asks each side for up to [`MemPair::budget`] bytes
/// per tunnel (`poll_transmit`), copying them into the peer's receive buffer for that tunnel —
/// the one copy a socket would make. Delivery is lossless and in order within a tunnel, with one
/// round of latency and unlimited bandwidth: the protocol's own processing is the only cost.
/// The latency matters: acknowledgements lag by a round, so the scheduler spreads frames over
/// the tunnels as on a real network (with same-round delivery every ACK would return before the
/// next tunnel is polled, and the earliest-delivery scheduler would put everything on one
/// tunnel, one frame per round). [`MemPair::tunnel_bytes`] counts what each tunnel carried.
/// Events are collected into
/// [`MemPair::client_events`] and [`MemPair::server_events`] for the caller to drain; a closed
/// session or a re-dial request is reported as an error.
///
/// ```
/// use bytes::Bytes;
/// use mtcpd_bench::MemPair;
/// use mtcpd_engine::Config;
///
/// let mut pair = MemPair::new(Config { pool_size: 4, ..Config::default() }, 1).unwrap();
/// let id = pair.client.open_stream(None).unwrap();
/// let chunk = Bytes::from(vec![7u8; 65536]);
/// let got = pair.transfer(&[id], 1 << 20, &chunk, |_, _, _| {}).unwrap();
/// assert_eq!(got, 1 << 20);
/// ```
#[derive(Debug)]
pub struct MemPair {
    /// The fake clock (starts at the real `Instant::now()` at construction).
    pub now: Instant,
    /// How far the clock advances each round.
    pub tick: Duration,
    /// Bytes asked of `poll_transmit` per tunnel per round (the socket's free send space).
    pub budget: usize,
    /// The client session.
    pub client: Session,
    /// The server session.
    pub server: Session,
    /// Client events not yet drained by the caller.
    pub client_events: Vec<Event>,
    /// Server events not yet drained by the caller.
    pub server_events: Vec<Event>,
    /// Bytes written on each tunnel since construction: `[client→server, server→client]`.
    pub tunnel_bytes: Vec<[u64; 2]>,
    to_server: Vec<BytesMut>,
    to_client: Vec<BytesMut>,
    out: Vec<Bytes>,
    /// With TLS: each tunnel's record layers (client end, server end), once dialed.
    records: Option<Vec<Option<Records>>>,
}

/// One in-memory tunnel's TLS: both ends' record layers and the ciphertext between them.
#[derive(Debug)]
struct Records {
    client: TunnelTls,
    server: TunnelTls,
    wire: BytesMut,
}

impl Records {
    /// Both ends of a new TLS connection, handshake done.
    fn connect() -> Result<Self, PairError> {
        static SETUPS: OnceLock<Result<(TlsSetup, TlsSetup), String>> = OnceLock::new();
        let (client_setup, server_setup) = SETUPS
            .get_or_init(|| {
                let server = ServerIdentity::generate()
                    .and_then(TlsSetup::server)
                    .map_err(|e| e.to_string())?;
                let client = TlsSetup::client_accepting_any().map_err(|e| e.to_string())?;
                Ok((client, server))
            })
            .clone()
            .map_err(PairError::Tls)?;
        let tls = |e: mtcpd_engine::tls::TlsError| PairError::Tls(e.to_string());
        let mut r = Self {
            client: client_setup.connection().map_err(tls)?,
            server: server_setup.connection().map_err(tls)?,
            wire: BytesMut::new(),
        };
        let mut ignored = BytesMut::new();
        for _ in 0..8 {
            r.client.take_output(|c| r.wire.extend_from_slice(&c));
            r.server.read(&mut r.wire, &mut ignored).map_err(tls)?;
            r.server.take_output(|c| r.wire.extend_from_slice(&c));
            r.client.read(&mut r.wire, &mut ignored).map_err(tls)?;
        }
        if r.client.is_handshaking() || r.server.is_handshaking() {
            return Err(PairError::Tls("TLS handshake did not finish".into()));
        }
        Ok(r)
    }

    /// Seals `chunks` at one end and opens them at the other, appending the plaintext to `to`.
    fn carry(&mut self, client_to_server: bool, chunks: &[Bytes], to: &mut BytesMut) {
        let (from, into) = if client_to_server {
            (&mut self.client, &mut self.server)
        } else {
            (&mut self.server, &mut self.client)
        };
        let wire = &mut self.wire;
        // In memory, with both ends ours: neither can fail short of a bug, which the
        // transfer's checks then show as missing bytes.
        let mut sealed = Vec::new();
        let _ = from.seal(chunks.iter().cloned(), |c| sealed.push(c));
        // The socket's copy, into a receive buffer placed so that the opened plaintext joins
        // what the session left in `to` (as the event loop reads).
        let total = sealed.iter().map(Bytes::len).sum();
        TunnelTls::reserve_receive(wire, to, total);
        for c in &sealed {
            wire.extend_from_slice(c);
        }
        let _ = into.read(wire, to);
    }
}

/// Moves `chunks` onto tunnel `t` towards the server (`client_to_server`) or the client:
/// through TLS when the pair has it, else one copy as into a socket.
fn carry(
    records: &mut Option<Vec<Option<Records>>>,
    t: usize,
    client_to_server: bool,
    chunks: &[Bytes],
    to: &mut BytesMut,
) {
    match records {
        Some(records) => {
            if let Some(r) = records.get_mut(t).and_then(Option::as_mut) {
                r.carry(client_to_server, chunks, to);
            }
        }
        None => {
            for chunk in chunks {
                to.extend_from_slice(chunk);
            }
        }
    }
}

impl MemPair {
    /// Builds a pair with the same configuration on both ends (pool size from `config`) and runs
    /// every tunnel's handshake. The PSK of `config` is used by both.
    pub fn new(config: Config, seed: u64) -> Result<Self, PairError> {
        Self::with_configs(config.clone(), config, seed)
    }

    /// Builds a pair from separate client and server configurations and runs every tunnel's
    /// handshake, as a driver would: the server side is the engine's [`Endpoint`] (one session
    /// allowed), which runs a handshake per accepted connection and creates or joins the session
    /// when one finishes. Once every tunnel is up the session is taken out of the endpoint and
    /// pumped directly.
    pub fn with_configs(client: Config, server: Config, seed: u64) -> Result<Self, PairError> {
        Self::build(client, server, seed, false)
    }

    /// [`MemPair::new`] with TLS on every tunnel: each tunnel's TLS handshake runs when it is
    /// dialed, the mtcpd handshakes are bound to its exporter, and every byte is sealed and
    /// opened (what a benchmark then measures includes the crypto).
    pub fn with_tls(config: Config, seed: u64) -> Result<Self, PairError> {
        Self::build(config.clone(), config, seed, true)
    }

    fn build(client: Config, server: Config, seed: u64, tls: bool) -> Result<Self, PairError> {
        let mut now = Instant::now();
        let tick = Duration::from_micros(10);
        let budget = 256 * 1024;
        let mut endpoint_seed = [0; 32];
        StdRng::seed_from_u64(seed ^ 0x5eed).fill_bytes(&mut endpoint_seed);
        let mut endpoint: Endpoint =
            Endpoint::server(Arc::new(server), SessionBudget::new(1), endpoint_seed);
        let mut client = Session::client(Arc::new(client), now, seed);
        let n = client.tunnel_count();
        let mut handshakes: Vec<Option<HandshakeKey>> = vec![None; n];
        let mut attached = vec![false; n];
        let mut server: Option<SessionKey> = None;
        let mut to_server = vec![BytesMut::new(); n];
        let mut to_client = vec![BytesMut::new(); n];
        let mut out = Vec::new();
        let mut records: Option<Vec<Option<Records>>> = tls.then(|| (0..n).map(|_| None).collect());
        let mut bindings = vec![PLAINTEXT_BINDING; n];

        for _ in 0..SETUP_ROUNDS {
            while let Some(ev) = client.poll_event() {
                match ev {
                    Event::Dial { tunnel } => {
                        let t = usize::from(tunnel);
                        handshakes[t] = endpoint.accept_connection(now);
                        attached[t] = false;
                        if let Some(records) = &mut records {
                            let r = Records::connect()?;
                            if let Some(binding) = r.client.binding() {
                                bindings[t] = *binding;
                            }
                            records[t] = Some(r);
                        }
                        client.tunnel_connected(now, t, &bindings[t]);
                    }
                    Event::SessionClosed { reason } => {
                        return Err(PairError::Closed {
                            side: Side::Client,
                            reason,
                        });
                    }
                    _ => {}
                }
            }
            if let Some(s) = server.and_then(|k| endpoint.get_mut(k)) {
                while let Some(ev) = s.session_mut().poll_event() {
                    if let Event::SessionClosed { reason } = ev {
                        return Err(PairError::Closed {
                            side: Side::Server,
                            reason,
                        });
                    }
                }
            }
            if let Some(key) = server {
                let client_up = (0..n).all(|t| client.tunnel_is_active(t));
                let server_up =
                    (0..n).all(|t| attached[t] && endpoint[key].session().tunnel_is_active(t));
                if client_up
                    && server_up
                    && let Some(s) = endpoint.remove(key)
                {
                    let s = s.into_session();
                    let mut pair = Self {
                        now,
                        tick,
                        budget,
                        client,
                        server: s,
                        client_events: Vec::new(),
                        server_events: Vec::new(),
                        tunnel_bytes: vec![[0; 2]; n],
                        to_server,
                        to_client,
                        out,
                        records,
                    };
                    // Flush what the handshakes left (acks, first pings) before handing over.
                    pair.pump()?;
                    pair.client_events.clear();
                    pair.server_events.clear();
                    return Ok(pair);
                }
            }
            for t in 0..n {
                out.clear();
                client.poll_transmit(now, t, budget, &mut out);
                carry(&mut records, t, true, &out, &mut to_server[t]);
                if let Some(key) = handshakes[t]
                    && !to_server[t].is_empty()
                {
                    let step = endpoint.handshake_input(now, key, &mut to_server[t], &bindings[t]);
                    carry(
                        &mut records,
                        t,
                        false,
                        &[step.output.freeze()],
                        &mut to_client[t],
                    );
                    match step.outcome {
                        HandshakeOutcome::Pending => {}
                        HandshakeOutcome::Attached { session, .. } => {
                            handshakes[t] = None;
                            attached[t] = true;
                            server = Some(session);
                        }
                        HandshakeOutcome::Failed(source) => {
                            return Err(PairError::Handshake { tunnel: t, source });
                        }
                    }
                }
                if let Some(s) = server.and_then(|k| endpoint.get_mut(k)) {
                    let s = s.session_mut();
                    if attached[t] && !to_server[t].is_empty() {
                        s.handle_input(now, t, &mut to_server[t])
                            .map_err(|reason| PairError::Closed {
                                side: Side::Server,
                                reason,
                            })?;
                    }
                    out.clear();
                    s.poll_transmit(now, t, budget, &mut out);
                    carry(&mut records, t, false, &out, &mut to_client[t]);
                }
                if !to_client[t].is_empty() {
                    client
                        .handle_input(now, t, &mut to_client[t])
                        .map_err(|reason| PairError::Closed {
                            side: Side::Client,
                            reason,
                        })?;
                }
            }
            now += tick;
        }
        Err(PairError::SetupTimeout(SETUP_ROUNDS))
    }

    /// Number of tunnels.
    pub fn tunnels(&self) -> usize {
        self.to_server.len()
    }

    /// One round: advance the clock, fire due timers, move bytes both ways on every tunnel,
    /// collect events. Returns the bytes moved (both directions).
    pub fn pump(&mut self) -> Result<usize, PairError> {
        self.now += self.tick;
        let now = self.now;
        if self.client.poll_timeout().is_some_and(|at| at <= now) {
            self.client.handle_timeout(now);
        }
        if self.server.poll_timeout().is_some_and(|at| at <= now) {
            self.server.handle_timeout(now);
        }
        // Deliver what was written last round...
        for t in 0..self.to_server.len() {
            if !self.to_server[t].is_empty() {
                self.server
                    .handle_input(now, t, &mut self.to_server[t])
                    .map_err(|reason| PairError::Closed {
                        side: Side::Server,
                        reason,
                    })?;
            }
            if !self.to_client[t].is_empty() {
                self.client
                    .handle_input(now, t, &mut self.to_client[t])
                    .map_err(|reason| PairError::Closed {
                        side: Side::Client,
                        reason,
                    })?;
            }
        }
        // ...then write this round's bytes (one copy, as into a socket).
        let mut moved = 0;
        for t in 0..self.to_server.len() {
            self.out.clear();
            let n = self
                .client
                .poll_transmit(now, t, self.budget, &mut self.out);
            carry(
                &mut self.records,
                t,
                true,
                &self.out,
                &mut self.to_server[t],
            );
            self.tunnel_bytes[t][0] += n as u64;
            moved += n;
            self.out.clear();
            let n = self
                .server
                .poll_transmit(now, t, self.budget, &mut self.out);
            carry(
                &mut self.records,
                t,
                false,
                &self.out,
                &mut self.to_client[t],
            );
            self.tunnel_bytes[t][1] += n as u64;
            moved += n;
        }
        while let Some(ev) = self.client.poll_event() {
            match ev {
                Event::Dial { tunnel } => return Err(PairError::Redial(tunnel)),
                Event::SessionClosed { reason } => {
                    return Err(PairError::Closed {
                        side: Side::Client,
                        reason,
                    });
                }
                ev => self.client_events.push(ev),
            }
        }
        while let Some(ev) = self.server.poll_event() {
            match ev {
                Event::SessionClosed { reason } => {
                    return Err(PairError::Closed {
                        side: Side::Server,
                        reason,
                    });
                }
                ev => self.server_events.push(ev),
            }
        }
        Ok(moved)
    }

    /// Writes `total` bytes from the client, split evenly over `streams` (which the client
    /// opened), and reads them at the server until all have arrived. Each stream's bytes are
    /// `chunk` repeated: writes are `Bytes` slices of `chunk` (zero-copy), as long as the send
    /// buffer takes them. `sink(stream, offset, bytes)` sees every piece the server reads, in
    /// stream order. Returns the bytes read. Client and server events are consumed.
    pub fn transfer(
        &mut self,
        streams: &[StreamId],
        total: u64,
        chunk: &Bytes,
        mut sink: impl FnMut(StreamId, u64, &Bytes),
    ) -> Result<u64, PairError> {
        if streams.is_empty() || chunk.is_empty() {
            return Ok(0);
        }
        let n = streams.len() as u64;
        let chunk_len = chunk.len() as u64;
        // (stream, bytes still to write, offset within `chunk`, bytes read so far)
        let mut state: Vec<(StreamId, u64, u64, u64)> = streams
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let share = total / n + u64::from((i as u64) < total % n);
                (id, share, 0, 0)
            })
            .collect();
        let index: HashMap<StreamId, usize> =
            streams.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        let mut received = 0u64;
        let mut idle_rounds = 0;
        let mut readable: Vec<StreamId> = Vec::new();
        while received < total {
            let mut progress = false;
            for (id, left, off, _) in &mut state {
                while *left > 0 {
                    let take = (chunk_len - *off).min(*left) as usize;
                    let start = *off as usize;
                    let written = self.client.write(*id, chunk.slice(start..start + take))?;
                    *left -= written as u64;
                    *off = (*off + written as u64) % chunk_len;
                    progress |= written > 0;
                    if written < take {
                        break;
                    }
                }
            }
            let moved = self.pump()?;
            progress |= moved > 0;
            self.client_events.clear();
            readable.clear();
            for ev in self.server_events.drain(..) {
                if let Event::StreamReadable { stream } = ev {
                    readable.push(stream);
                }
            }
            for &id in &readable {
                let Some(&i) = index.get(&id) else {
                    continue;
                };
                while let ReadOutcome::Data(b) = self.server.read(id, usize::MAX)? {
                    let at = state[i].3;
                    state[i].3 += b.len() as u64;
                    received += b.len() as u64;
                    sink(id, at, &b);
                    progress = true;
                }
            }
            if progress {
                idle_rounds = 0;
            } else {
                idle_rounds += 1;
                if idle_rounds >= STALL_ROUNDS {
                    return Err(PairError::Stalled { received, total });
                }
            }
        }
        Ok(received)
    }

    /// Opens `count` client streams, announcing them to the server (one round each batch).
    pub fn open_streams(&mut self, count: usize) -> Result<Vec<StreamId>, PairError> {
        let ids = (0..count)
            .map(|_| self.client.open_stream(None))
            .collect::<Result<Vec<_>, _>>()?;
        self.pump()?;
        self.client_events.clear();
        self.server_events.clear();
        Ok(ids)
    }
}

/// A config for benchmarks: defaults with `pool_size` tunnels.
pub fn bench_config(pool_size: u16) -> Config {
    Config {
        pool_size,
        ..Config::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test kit's deterministic pattern, so misplaced frames cannot go unseen.
    fn pattern(len: usize, seed: u64) -> Bytes {
        mtcpd_testkit::pattern::bytes(seed, len).into()
    }

    #[test]
    fn pump_moves_8_mib_byte_exact_over_8_tunnels() {
        let mut pair = MemPair::new(bench_config(8), 7).unwrap();
        assert_eq!(pair.tunnels(), 8);
        let id = pair.open_streams(1).unwrap()[0];
        let total = 8 << 20;
        // One chunk as long as the whole transfer: every byte of the stream is distinct data.
        let data = pattern(total, 42);
        let mut got = Vec::with_capacity(total);
        let n = pair
            .transfer(&[id], total as u64, &data, |sid, at, b| {
                assert_eq!(sid, id);
                assert_eq!(at, got.len() as u64);
                got.extend_from_slice(b);
            })
            .unwrap();
        assert_eq!(n, total as u64);
        assert!(got == data[..], "received bytes differ from those sent");
        // The data really was spread over the tunnels, and nothing is left over.
        // At least most of them: see `every_tunnel_carries_bulk_data` for why not all.
        let busy = pair
            .tunnel_bytes
            .iter()
            .filter(|b| b[0] > 256 * 1024)
            .count();
        assert!(
            busy >= 4,
            "data went over {busy} tunnels: {:?}",
            pair.tunnel_bytes
        );
        assert_eq!(pair.client.stats().active_tunnels, 8);
        assert_eq!(pair.server.stats().active_tunnels, 8);
        assert_eq!(pair.server.stream_buffered(id), Some((0, 0)));
    }

    #[test]
    fn tls_pair_moves_8_mib_byte_exact() {
        let mut pair = MemPair::with_tls(bench_config(8), 7).unwrap();
        let id = pair.open_streams(1).unwrap()[0];
        let total = 8 << 20;
        let data = pattern(total, 43);
        let mut got = Vec::with_capacity(total);
        let n = pair
            .transfer(&[id], total as u64, &data, |_, _, b| {
                got.extend_from_slice(b)
            })
            .unwrap();
        assert_eq!(n, total as u64);
        assert!(got == data[..], "received bytes differ from those sent");
        let records = pair.records.as_ref().expect("TLS on");
        assert!(records.iter().flatten().all(|r| !r.client.is_handshaking()));
        // The two ends of each tunnel agree on a binding that is not the plaintext one.
        for r in records.iter().flatten() {
            assert_eq!(r.client.binding(), r.server.binding());
            assert_ne!(r.client.binding(), Some(&PLAINTEXT_BINDING));
        }
    }

    #[test]
    fn pump_moves_many_streams_with_repeated_chunks() {
        let mut pair = MemPair::new(bench_config(8), 9).unwrap();
        let ids = pair.open_streams(64).unwrap();
        let chunk = pattern(65_521, 3);
        let total = 8u64 << 20;
        let mut per_stream = std::collections::HashMap::<StreamId, u64>::new();
        let n = pair
            .transfer(&ids, total, &chunk, |sid, at, b| {
                let seen = per_stream.entry(sid).or_default();
                assert_eq!(at, *seen);
                for (k, &byte) in b.iter().enumerate() {
                    let pos = (at + k as u64) % chunk.len() as u64;
                    assert_eq!(
                        byte,
                        chunk[pos as usize],
                        "stream {sid} offset {}",
                        at + k as u64
                    );
                }
                *seen += b.len() as u64;
            })
            .unwrap();
        assert_eq!(n, total);
        assert_eq!(per_stream.len(), 64);
        assert_eq!(per_stream.values().sum::<u64>(), total);
        // A second transfer on the same streams continues where the first left off.
        let n = pair.transfer(&ids, 1 << 20, &chunk, |_, _, _| {}).unwrap();
        assert_eq!(n, 1 << 20);
    }

    #[test]
    fn small_messages_arrive() {
        let mut pair = MemPair::new(bench_config(8), 11).unwrap();
        let ids = pair.open_streams(256).unwrap();
        let msg = Bytes::from_static(&[0xab; 64]);
        let n = pair.transfer(&ids, 64 * 4096, &msg, |_, _, _| {}).unwrap();
        assert_eq!(n, 64 * 4096);
    }

    #[test]
    fn wrong_key_fails_the_handshake() {
        let client = Config {
            psk: b"one".to_vec(),
            ..bench_config(2)
        };
        let server = Config {
            psk: b"two".to_vec(),
            ..bench_config(2)
        };
        assert!(MemPair::with_configs(client, server, 1).is_err());
    }
}
