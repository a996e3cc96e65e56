//! The session state machine: one end of a set of tunnels sharing a session id, and the streams
//! multiplexed over them. Sans-IO: the caller passes `now`, feeds bytes read from tunnel `i`,
//! polls bytes to write to tunnel `i`, the next timeout and events, and issues stream commands.
//!
//! Owns: tunnel states (client half of the handshake, liveness, keepalive, re-dial backoff),
//! stream states, credit-based flow control in both directions, per-tunnel acknowledgement and the
//! retention and resend of unacknowledged frames, and session close. Must not touch: sockets,
//! clocks, threads, or the byte layout of frames (that is `wire` and `handshake`).
//!
//! # Driver contract
//! - After any call that may have produced output (input, timeout, a stream command), call
//!   [`Session::poll_transmit`] for every tunnel that can take bytes, and drain
//!   [`Session::poll_event`].
//! - Call [`Session::handle_timeout`] when [`Session::poll_timeout`] is reached.
//! - On [`Event::Dial`] (client), connect that tunnel slot and report [`Session::tunnel_connected`]
//!   or [`Session::tunnel_dial_failed`]. On [`Event::TunnelDown`], close that socket. When a socket
//!   fails, report [`Session::tunnel_lost`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::config::Config;
use crate::error::{SessionError, StreamError, TunnelError, code};
use crate::handshake::{
    AcceptedTunnel, ClientHello, HELLO_FLAG_RESUME, HandshakeError, HelloStatus, NONCE_LEN,
    ProofLabel, ServerHello, SessionId, TransportParams, encode_client_auth, proof, verify_proof,
};
use crate::path::PathEstimate;
use crate::reorder::ReorderBuffer;
use crate::scheduler::{PathView, Scheduler};
use crate::wire::{self, FRAME_HEADER_LEN, Frame, MAX_TARGET_LEN, PROTOCOL_VERSION};

/// Identifies a stream within a session. Client-opened ids are even, server-opened ids odd.
pub type StreamId = u64;

/// Which end of the session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Dials the tunnels, chooses the session id.
    Client,
    /// Accepts the tunnels.
    Server,
}

/// Something the driver or the application should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Client: connect tunnel slot `tunnel` now, then report the outcome.
    Dial {
        /// Slot index.
        tunnel: u16,
    },
    /// A tunnel completed its handshake and carries frames.
    TunnelUp {
        /// Slot index.
        tunnel: u16,
        /// Round trip measured by the handshake.
        rtt: Duration,
    },
    /// A tunnel is dead; its unacknowledged frames will be resent on the others. Close its socket.
    TunnelDown {
        /// Slot index.
        tunnel: u16,
        /// Why.
        reason: TunnelError,
    },
    /// The peer opened a stream (accept it).
    StreamOpened {
        /// Stream id.
        stream: StreamId,
        /// The `host:port` the peer asked for, if any.
        target: Option<String>,
    },
    /// The stream has bytes (or its end) to read.
    StreamReadable {
        /// Stream id.
        stream: StreamId,
    },
    /// The stream's send buffer has room again after a short write.
    StreamWritable {
        /// Stream id.
        stream: StreamId,
    },
    /// The peer reset the stream.
    StreamReset {
        /// Stream id.
        stream: StreamId,
        /// Application code.
        code: u32,
    },
    /// The stream is finished in both directions and forgotten.
    StreamClosed {
        /// Stream id.
        stream: StreamId,
        /// Bytes this end sent.
        sent: u64,
        /// Bytes this end received.
        received: u64,
    },
    /// The peer will accept no new streams.
    GoAway {
        /// Reason code.
        code: u32,
    },
    /// The session ended; every stream with it.
    SessionClosed {
        /// Why.
        reason: SessionError,
    },
}

/// Outcome of [`Session::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// In-order bytes.
    Data(Bytes),
    /// Nothing to read now; [`Event::StreamReadable`] will say when.
    WouldBlock,
    /// The peer finished its direction: end of stream.
    Fin,
}

/// Counters of a session, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Frames re-sent because their tunnel died.
    pub frames_resent: u64,
    /// Stream bytes held by this end right now (unsent, unacknowledged and unread).
    pub buffered_bytes: u64,
    /// Live streams.
    pub streams: usize,
    /// Tunnels carrying frames.
    pub active_tunnels: usize,
}

/// A reliable frame as the session remembers it: enough to send it again, on any tunnel.
#[derive(Debug, Clone)]
enum Reliable {
    Data {
        stream: StreamId,
        offset: u64,
        fin: bool,
        payload: Bytes,
    },
    Open {
        stream: StreamId,
    },
    Reset {
        stream: StreamId,
        final_offset: u64,
        code: u32,
    },
    StreamWindow {
        stream: StreamId,
    },
    SessionWindow,
    MaxStreams,
    GoAway {
        code: u32,
    },
}

impl Reliable {
    /// The stream whose completion waits for this frame's acknowledgement.
    fn counted_stream(&self) -> Option<StreamId> {
        match self {
            Reliable::Data { stream, .. } | Reliable::Open { stream } => Some(*stream),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Retained {
    frame: Reliable,
    wire_len: u64,
    sent_at: Instant,
    delivered_at_send: u64,
    /// The tunnel was not being kept full when this frame was sent.
    app_limited: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TunnelState {
    /// Not connected. Client: re-dial at `redial_at`.
    Down { redial_at: Option<Instant> },
    /// Client: the driver was asked to connect.
    Dialing { since: Instant },
    /// Client: ClientHello sent, ServerHello awaited.
    Handshaking {
        since: Instant,
        nonce: [u8; NONCE_LEN],
    },
    /// Carries frames.
    Active,
    /// Beyond the negotiated pool; never used again.
    Retired,
}

#[derive(Debug)]
struct Tunnel {
    state: TunnelState,
    handshake_out: BytesMut,
    retained: VecDeque<Retained>,
    unacked_bytes: u64,
    sent_reliable: u64,
    acked_reliable: u64,
    recv_reliable: u64,
    ack_sent: u64,
    delivered: u64,
    last_recv: Instant,
    next_ping: Instant,
    ping_due: bool,
    ping_outstanding: bool,
    pong_due: Option<u64>,
    close_pending: Option<(u32, Bytes)>,
    path: PathEstimate,
    /// The last transmit filled the room the driver offered: the tunnel is running full, so
    /// its delivery-rate samples measure the path.
    saturated: bool,
    dial_failures: u32,
}

impl Tunnel {
    fn new(now: Instant, initial_rate: f64) -> Self {
        Self {
            state: TunnelState::Down { redial_at: None },
            handshake_out: BytesMut::new(),
            retained: VecDeque::new(),
            unacked_bytes: 0,
            sent_reliable: 0,
            acked_reliable: 0,
            recv_reliable: 0,
            ack_sent: 0,
            delivered: 0,
            last_recv: now,
            next_ping: now,
            ping_due: false,
            ping_outstanding: false,
            pong_due: None,
            close_pending: None,
            path: PathEstimate::new(initial_rate),
            saturated: false,
            dial_failures: 0,
        }
    }

    fn is_active(&self) -> bool {
        self.state == TunnelState::Active
    }

    /// Forgets the connection: counters restart with the next one.
    fn reset_connection(&mut self, now: Instant) {
        self.handshake_out.clear();
        self.unacked_bytes = 0;
        self.sent_reliable = 0;
        self.acked_reliable = 0;
        self.recv_reliable = 0;
        self.ack_sent = 0;
        self.last_recv = now;
        self.ping_due = false;
        self.ping_outstanding = false;
        self.pong_due = None;
        self.close_pending = None;
        self.saturated = false;
    }
}

#[derive(Debug)]
struct Stream {
    local: bool,
    target: Option<Bytes>,
    /// Peer-opened: the OPEN arrived and the application was told.
    announced: bool,
    // Send direction.
    send_queue: VecDeque<Bytes>,
    send_queued: usize,
    send_offset: u64,
    send_max: u64,
    fin_requested: bool,
    fin_sent: bool,
    unacked_frames: u32,
    write_blocked: bool,
    in_ready: bool,
    // Receive direction.
    recv: ReorderBuffer,
    recv_highest: u64,
    /// Bytes of this stream counted as consumed for session credit.
    recv_consumed: u64,
    recv_max_advertised: u64,
    final_size: Option<u64>,
    fin_read: bool,
    readable_signalled: bool,
    window_update_queued: bool,
    // Reset.
    reset_sent: bool,
    peer_reset: Option<u32>,
    local_reset: Option<u32>,
}

impl Stream {
    fn new(local: bool, send_max: u64, recv_window: u64) -> Self {
        Self {
            local,
            target: None,
            announced: local,
            send_queue: VecDeque::new(),
            send_queued: 0,
            send_offset: 0,
            send_max,
            fin_requested: false,
            fin_sent: false,
            unacked_frames: 0,
            write_blocked: false,
            in_ready: false,
            recv: ReorderBuffer::new(),
            recv_highest: 0,
            recv_consumed: 0,
            recv_max_advertised: recv_window,
            final_size: None,
            fin_read: false,
            readable_signalled: false,
            window_update_queued: false,
            reset_sent: false,
            peer_reset: None,
            local_reset: None,
        }
    }

    fn reset_code(&self) -> Option<u32> {
        self.peer_reset.or(self.local_reset)
    }

    fn has_sendable(&self) -> bool {
        !self.reset_sent && (self.send_queued > 0 || (self.fin_requested && !self.fin_sent))
    }

    fn send_done(&self) -> bool {
        self.reset_sent || (self.fin_sent && self.unacked_frames == 0 && self.send_queued == 0)
    }

    fn recv_done(&self) -> bool {
        self.peer_reset.is_some()
            || (self.local_reset.is_some() && self.final_size.is_some())
            || (self.final_size.is_some() && self.fin_read)
    }

    fn readable(&self) -> bool {
        self.recv.readable_len() > 0 || self.final_size == Some(self.recv.read_offset())
    }
}

/// One end of an mtcpd session.
#[derive(Debug)]
pub struct Session {
    role: Role,
    config: Arc<Config>,
    id: SessionId,
    rng: StdRng,
    epoch: Instant,
    closed: Option<SessionError>,
    established: bool,
    peer_params: Option<TransportParams>,
    tunnels: Vec<Tunnel>,
    streams: HashMap<StreamId, Stream>,
    next_local_index: u64,
    local_stream_limit: u64,
    peer_streams_seen: u64,
    /// Peer stream indices below `peer_streams_seen` that no frame has named yet: start → end.
    peer_unseen: BTreeMap<u64, u64>,
    peer_streams_closed: u64,
    peer_stream_limit: u64,
    max_streams_queued: bool,
    ready: VecDeque<StreamId>,
    retransmit: VecDeque<Reliable>,
    control: VecDeque<Reliable>,
    send_data_total: u64,
    /// Stream bytes written by the application and not yet framed.
    backlog: u64,
    peer_max_data: u64,
    recv_data_total: u64,
    recv_consumed_total: u64,
    recv_max_data: u64,
    session_window_queued: bool,
    going_away_local: bool,
    going_away_peer: bool,
    no_tunnel_since: Option<Instant>,
    events: VecDeque<Event>,
    scheduler: Box<dyn Scheduler>,
    views: Vec<PathView>,
    scratch: BytesMut,
    frames_resent: u64,
}

impl Session {
    /// A client session for deterministic tests and simulations: everything random (session id,
    /// nonces, backoff jitter) comes from `seed`. Real clients use [`Session::client_seeded`]
    /// with 32 bytes from the OS.
    pub fn client(config: Arc<Config>, now: Instant, seed: u64) -> Self {
        let mut bytes = [0; 32];
        StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
        Self::client_seeded(config, now, bytes)
    }

    /// A client session: picks a random 128-bit session id from `seed` and asks the driver to
    /// dial every slot.
    pub fn client_seeded(config: Arc<Config>, now: Instant, seed: [u8; 32]) -> Self {
        let mut rng = StdRng::from_seed(seed);
        let mut id = [0; 16];
        rng.fill_bytes(&mut id);
        let pool = config.pool_size.max(1) as usize;
        let mut session = Self::new(Role::Client, config, id, rng, now, pool);
        for t in 0..pool {
            session.tunnels[t].state = TunnelState::Dialing { since: now };
            session.events.push_back(Event::Dial { tunnel: t as u16 });
        }
        session.no_tunnel_since = Some(now);
        session
    }

    /// A server session, created for the first tunnel its client completed a handshake on.
    pub fn server(config: Arc<Config>, now: Instant, first: &AcceptedTunnel, seed: u64) -> Self {
        let rng = StdRng::seed_from_u64(seed);
        let pool = first.pool_size.max(1) as usize;
        let mut session = Self::new(Role::Server, config, first.session_id, rng, now, pool);
        session.peer_params = Some(first.peer_params);
        session.apply_peer_params(first.peer_params);
        session.established = true;
        session.attach_tunnel(now, first);
        session
    }

    fn new(
        role: Role,
        config: Arc<Config>,
        id: SessionId,
        rng: StdRng,
        now: Instant,
        pool: usize,
    ) -> Self {
        let tunnels = (0..pool)
            .map(|_| Tunnel::new(now, config.initial_rate))
            .collect();
        Self {
            role,
            id,
            rng,
            epoch: now,
            closed: None,
            established: false,
            peer_params: None,
            tunnels,
            streams: HashMap::new(),
            next_local_index: 0,
            local_stream_limit: 0,
            peer_streams_seen: 0,
            peer_unseen: BTreeMap::new(),
            peer_streams_closed: 0,
            peer_stream_limit: config.max_streams,
            max_streams_queued: false,
            ready: VecDeque::new(),
            retransmit: VecDeque::new(),
            control: VecDeque::new(),
            send_data_total: 0,
            backlog: 0,
            peer_max_data: 0,
            recv_data_total: 0,
            recv_consumed_total: 0,
            recv_max_data: config.session_window,
            session_window_queued: false,
            going_away_local: false,
            going_away_peer: false,
            no_tunnel_since: None,
            events: VecDeque::new(),
            scheduler: config.scheduler.build(),
            views: Vec::with_capacity(pool),
            scratch: BytesMut::with_capacity(4096),
            frames_resent: 0,
            config,
        }
    }

    fn apply_peer_params(&mut self, p: TransportParams) {
        self.local_stream_limit = p.max_streams;
        self.peer_max_data = p.session_window;
    }

    // ----- Introspection -------------------------------------------------------------------

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The session id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// Tunnel slots (the negotiated pool size once known).
    pub fn tunnel_count(&self) -> usize {
        self.tunnels.len()
    }

    /// Whether tunnel `t` carries frames.
    pub fn tunnel_is_active(&self, t: usize) -> bool {
        self.tunnels.get(t).is_some_and(Tunnel::is_active)
    }

    /// Path estimate of tunnel `t` (RTT and rate).
    pub fn tunnel_path(&self, t: usize) -> Option<&PathEstimate> {
        self.tunnels.get(t).map(|x| &x.path)
    }

    /// Bytes of frames delivered (acknowledged) over tunnel slot `t`, across its connections.
    pub fn tunnel_delivered(&self, t: usize) -> u64 {
        self.tunnels.get(t).map_or(0, |x| x.delivered)
    }

    /// Lets a driver that reads TCP_INFO override tunnel `t`'s estimates.
    pub fn set_tunnel_path(&mut self, t: usize, rtt: Duration, rate: f64, now: Instant) {
        if let Some(x) = self.tunnels.get_mut(t) {
            x.path.set_external(rtt, rate, now);
        }
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<&SessionError> {
        self.closed.as_ref()
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// True once a tunnel has completed a handshake (the peer's limits are known).
    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Live stream ids.
    pub fn stream_ids(&self) -> impl Iterator<Item = StreamId> + '_ {
        self.streams.keys().copied()
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        let mut buffered = 0u64;
        for s in self.streams.values() {
            buffered += s.send_queued as u64 + s.recv.buffered() as u64;
        }
        for t in &self.tunnels {
            for r in &t.retained {
                if let Reliable::Data { payload, .. } = &r.frame {
                    buffered += payload.len() as u64;
                }
            }
        }
        SessionStats {
            frames_resent: self.frames_resent,
            buffered_bytes: buffered,
            streams: self.streams.len(),
            active_tunnels: self.tunnels.iter().filter(|t| t.is_active()).count(),
        }
    }

    /// Bytes held for stream `id` (unsent plus unread), or `None` if unknown.
    pub fn stream_buffered(&self, id: StreamId) -> Option<(usize, usize)> {
        self.streams
            .get(&id)
            .map(|s| (s.send_queued, s.recv.buffered()))
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ----- Tunnels -------------------------------------------------------------------------

    /// Client: the driver connected slot `t`; the handshake starts.
    pub fn tunnel_connected(&mut self, now: Instant, t: usize) {
        if self.role != Role::Client || self.closed.is_some() {
            return;
        }
        let resume = self.established;
        let Some(tun) = self.tunnels.get_mut(t) else {
            return;
        };
        if !matches!(tun.state, TunnelState::Dialing { .. }) {
            return;
        }
        tun.reset_connection(now);
        let mut nonce = [0; NONCE_LEN];
        self.rng.fill_bytes(&mut nonce);
        ClientHello {
            version: PROTOCOL_VERSION,
            flags: if resume { HELLO_FLAG_RESUME } else { 0 },
            session_id: self.id,
            tunnel_index: t as u16,
            pool_size: self.config.pool_size,
            capabilities: 0,
            nonce,
            params: self.config.transport_params(),
        }
        .encode(&mut tun.handshake_out);
        tun.state = TunnelState::Handshaking { since: now, nonce };
    }

    /// Client: dialing slot `t` failed; it is retried after a backoff.
    pub fn tunnel_dial_failed(&mut self, now: Instant, t: usize, why: &str) {
        if let Some(tun) = self.tunnels.get(t)
            && matches!(tun.state, TunnelState::Dialing { .. })
        {
            self.tunnel_down(now, t, TunnelError::ConnectionLost(why.to_string()));
        }
    }

    /// Server: attach a tunnel whose handshake [`crate::handshake::ServerHandshake`] accepted.
    /// A live tunnel in the same slot is replaced (the client re-dialed it).
    pub fn attach_tunnel(&mut self, now: Instant, accepted: &AcceptedTunnel) {
        if self.role != Role::Server || self.closed.is_some() {
            return;
        }
        let t = accepted.tunnel_index as usize;
        if t >= self.tunnels.len() {
            let rate = self.config.initial_rate;
            self.tunnels.resize_with(t + 1, || Tunnel::new(now, rate));
        }
        if self.tunnels[t].is_active() {
            self.tunnel_down(now, t, TunnelError::Replaced);
        }
        let keepalive = self.config.keepalive_interval;
        let tun = &mut self.tunnels[t];
        tun.reset_connection(now);
        tun.state = TunnelState::Active;
        tun.next_ping = now + keepalive;
        tun.path.on_rtt_sample(accepted.rtt, now);
        self.no_tunnel_since = None;
        self.events.push_back(Event::TunnelUp {
            tunnel: t as u16,
            rtt: accepted.rtt,
        });
    }

    /// The driver saw tunnel `t`'s connection fail or close.
    pub fn tunnel_lost(&mut self, now: Instant, t: usize, why: &str) {
        if self.tunnels.get(t).is_some_and(|x| {
            matches!(
                x.state,
                TunnelState::Active | TunnelState::Handshaking { .. } | TunnelState::Dialing { .. }
            )
        }) {
            self.tunnel_down(now, t, TunnelError::ConnectionLost(why.to_string()));
        }
    }

    /// Declares tunnel `t` dead: its unacknowledged frames go to the resend queue.
    fn tunnel_down(&mut self, now: Instant, t: usize, reason: TunnelError) {
        let client = self.role == Role::Client && self.closed.is_none();
        let retire = matches!(reason, TunnelError::Retired);
        let (min, max) = (
            self.config.redial_backoff_min,
            self.config.redial_backoff_max,
        );
        let tun = &mut self.tunnels[t];
        let was_active = tun.is_active();
        while let Some(r) = tun.retained.pop_front() {
            self.frames_resent += 1;
            self.retransmit.push_back(r.frame);
        }
        tun.reset_connection(now);
        if was_active {
            tun.dial_failures = 0;
        } else {
            tun.dial_failures = tun.dial_failures.saturating_add(1);
        }
        tun.state = if retire {
            TunnelState::Retired
        } else if client {
            // Exponential backoff with jitter: a uniform draw in [d/2, d].
            let exp = tun.dial_failures.min(16);
            let d = min.saturating_mul(1u32 << exp).min(max);
            let jitter = self.rng.random_range(0.5..=1.0);
            TunnelState::Down {
                redial_at: Some(now + d.mul_f64(jitter)),
            }
        } else {
            TunnelState::Down { redial_at: None }
        };
        self.events.push_back(Event::TunnelDown {
            tunnel: t as u16,
            reason,
        });
        if !self.tunnels.iter().any(Tunnel::is_active) && self.no_tunnel_since.is_none() {
            self.no_tunnel_since = Some(now);
        }
    }

    // ----- Input ---------------------------------------------------------------------------

    /// Consumes bytes read from tunnel `t`. Complete frames are split off the front of `buf`
    /// (zero-copy); a partial frame stays for the next call. An `Err` means the session is now
    /// closed (the peer broke the protocol); the error is also reported as an event.
    pub fn handle_input(
        &mut self,
        now: Instant,
        t: usize,
        buf: &mut BytesMut,
    ) -> Result<(), SessionError> {
        if self.closed.is_some() || t >= self.tunnels.len() {
            buf.clear();
            return Ok(());
        }
        if let TunnelState::Handshaking { since, nonce } = self.tunnels[t].state {
            match ServerHello::decode(buf) {
                Ok(None) => return Ok(()),
                Ok(Some(hello)) => {
                    if let Err(e) = self.on_server_hello(now, t, since, nonce, hello) {
                        buf.clear();
                        return self.on_handshake_failure(now, t, e);
                    }
                }
                Err(e) => {
                    buf.clear();
                    return self.on_handshake_failure(now, t, e);
                }
            }
        }
        if !self.tunnels[t].is_active() {
            buf.clear();
            return Ok(());
        }
        let max_body = self.config.max_frame_body;
        loop {
            match wire::decode(buf, max_body) {
                Ok(Some(frame)) => {
                    let tun = &mut self.tunnels[t];
                    tun.last_recv = now;
                    if frame.is_reliable() {
                        tun.recv_reliable += 1;
                    }
                    if let Err(e) = self.on_frame(now, t, frame) {
                        buf.clear();
                        return Err(self.fail(now, e));
                    }
                    if self.closed.is_some() || !self.tunnels[t].is_active() {
                        buf.clear();
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(source) => {
                    buf.clear();
                    let e = SessionError::Frame {
                        tunnel: t as u16,
                        source,
                    };
                    return Err(self.fail(now, e));
                }
            }
        }
    }

    /// A client tunnel's handshake failed. Refusals that cannot heal by retrying (wrong key,
    /// unsupported version, a server that speaks something else) end a session that never got
    /// established, with that error, instead of re-dialing forever; once established, the session
    /// rides on its other tunnels and the slot is re-dialed. A server that forgot the session
    /// (restart) means its streams are gone: the session ends.
    fn on_handshake_failure(
        &mut self,
        now: Instant,
        t: usize,
        e: HandshakeError,
    ) -> Result<(), SessionError> {
        let permanent = matches!(
            e,
            HandshakeError::WrongKey
                | HandshakeError::UnsupportedVersion { .. }
                | HandshakeError::BadMagic
                | HandshakeError::Malformed(_)
        );
        match e {
            HandshakeError::Refused(HelloStatus::UnknownSession) => {
                Err(self.fail(now, SessionError::SessionLost))
            }
            HandshakeError::Refused(HelloStatus::TunnelIndexOutOfRange) => {
                self.tunnel_down(now, t, TunnelError::Retired);
                Ok(())
            }
            e if permanent && !self.established => {
                self.tunnel_down(now, t, TunnelError::Handshake(e.clone()));
                Err(self.fail(now, SessionError::Handshake(e)))
            }
            e => {
                self.tunnel_down(now, t, TunnelError::Handshake(e));
                Ok(())
            }
        }
    }

    fn on_server_hello(
        &mut self,
        now: Instant,
        t: usize,
        since: Instant,
        nonce: [u8; NONCE_LEN],
        hello: ServerHello,
    ) -> Result<(), HandshakeError> {
        if hello.version != PROTOCOL_VERSION || hello.status == HelloStatus::UnsupportedVersion {
            return Err(HandshakeError::UnsupportedVersion {
                peer: hello.version,
            });
        }
        // Refusals are signed like acceptances, so nobody without the key can end a session by
        // injecting one.
        if !verify_proof(
            &self.config.psk,
            ProofLabel::Server,
            &self.id,
            t as u16,
            &nonce,
            &hello.nonce,
            hello.status,
            &hello.proof,
        ) {
            return Err(HandshakeError::WrongKey);
        }
        if hello.status != HelloStatus::Ok {
            return Err(HandshakeError::Refused(hello.status));
        }
        if hello.pool_size == 0 {
            return Err(HandshakeError::Malformed("ServerHello pool size 0"));
        }
        hello.params.validate()?;
        let client_proof = proof(
            &self.config.psk,
            ProofLabel::Client,
            &self.id,
            t as u16,
            &nonce,
            &hello.nonce,
            HelloStatus::Ok,
        );
        if self.peer_params.is_none() {
            self.peer_params = Some(hello.params);
            self.apply_peer_params(hello.params);
        }
        self.established = true;
        let keepalive = self.config.keepalive_interval;
        let rtt = now.saturating_duration_since(since);
        let tun = &mut self.tunnels[t];
        encode_client_auth(&client_proof, &mut tun.handshake_out);
        tun.state = TunnelState::Active;
        tun.last_recv = now;
        tun.next_ping = now + keepalive;
        tun.path.on_rtt_sample(rtt, now);
        self.no_tunnel_since = None;
        self.events.push_back(Event::TunnelUp {
            tunnel: t as u16,
            rtt,
        });
        // The server caps the pool: retire the slots beyond it.
        let pool = hello.pool_size as usize;
        for extra in pool..self.tunnels.len() {
            if self.tunnels[extra].state != TunnelState::Retired {
                self.tunnel_down(now, extra, TunnelError::Retired);
            }
        }
        Ok(())
    }

    /// Checks a frame's stream id and creates peer streams it implies. `Ok(false)` means the
    /// stream is finished and forgotten: the frame is a late duplicate and is ignored.
    fn admit_stream(&mut self, id: StreamId) -> Result<bool, SessionError> {
        let local_parity = match self.role {
            Role::Client => 0,
            Role::Server => 1,
        };
        let index = id >> 1;
        if id & 1 == local_parity {
            if index >= self.next_local_index {
                return Err(SessionError::UnknownStream(id));
            }
            return Ok(self.streams.contains_key(&id));
        }
        if index >= self.peer_stream_limit {
            return Err(SessionError::StreamLimit {
                stream: id,
                limit: self.peer_stream_limit,
            });
        }
        // Frames overtake each other across tunnels, so a later stream's frame may come first.
        // Peer streams are created when a frame first names them; the indices skipped below the
        // highest seen are remembered as ranges, so an early frame for a far stream allocates
        // nothing for the ones in between, and a frame for a forgotten stream is told apart
        // from one for a stream not yet seen.
        let fresh = if index >= self.peer_streams_seen {
            if index > self.peer_streams_seen {
                self.peer_unseen.insert(self.peer_streams_seen, index);
            }
            self.peer_streams_seen = index + 1;
            true
        } else {
            self.take_unseen(index)
        };
        if fresh {
            let send_max = self.peer_params.map_or(0, |p| p.stream_window);
            self.streams
                .insert(id, Stream::new(false, send_max, self.config.stream_window));
        }
        Ok(self.streams.contains_key(&id))
    }

    /// Removes `index` from the skipped ranges; true if it was there (never seen before).
    fn take_unseen(&mut self, index: u64) -> bool {
        let Some((&start, &end)) = self.peer_unseen.range(..=index).next_back() else {
            return false;
        };
        if index >= end {
            return false;
        }
        self.peer_unseen.remove(&start);
        if start < index {
            self.peer_unseen.insert(start, index);
        }
        if index + 1 < end {
            self.peer_unseen.insert(index + 1, end);
        }
        true
    }

    fn on_frame(&mut self, now: Instant, t: usize, frame: Frame) -> Result<(), SessionError> {
        match frame {
            Frame::Data {
                stream,
                offset,
                fin,
                payload,
            } => self.on_data(stream, offset, fin, payload),
            Frame::Open { stream, target } => {
                if stream & 1 == self.local_parity() {
                    return Err(SessionError::Protocol(format!(
                        "OPEN for stream {stream}, which belongs to this end"
                    )));
                }
                if !self.admit_stream(stream)? {
                    return Ok(());
                }
                let Some(s) = self.streams.get_mut(&stream) else {
                    return Ok(());
                };
                if s.announced || s.reset_code().is_some() {
                    return Ok(());
                }
                s.announced = true;
                s.target = target.clone();
                let target = target.map(|b| String::from_utf8_lossy(&b).into_owned());
                self.events
                    .push_back(Event::StreamOpened { stream, target });
                self.signal_readable(stream);
                Ok(())
            }
            Frame::Reset {
                stream,
                final_offset,
                code,
            } => self.on_reset(stream, final_offset, code),
            Frame::StreamWindow { stream, max_offset } => {
                if !self.admit_stream(stream)? {
                    return Ok(());
                }
                if let Some(s) = self.streams.get_mut(&stream)
                    && max_offset > s.send_max
                {
                    s.send_max = max_offset;
                    if s.has_sendable() && !s.in_ready {
                        s.in_ready = true;
                        self.ready.push_back(stream);
                    }
                }
                Ok(())
            }
            Frame::SessionWindow { max_data } => {
                self.peer_max_data = self.peer_max_data.max(max_data);
                Ok(())
            }
            Frame::MaxStreams { count } => {
                self.local_stream_limit = self.local_stream_limit.max(count);
                Ok(())
            }
            Frame::Ack { frames } => self.on_ack(now, t, frames),
            Frame::Ping { token } => {
                self.tunnels[t].pong_due = Some(token);
                Ok(())
            }
            Frame::Pong { token } => {
                let tun = &mut self.tunnels[t];
                // Only an answer to our outstanding PING is an RTT sample.
                if tun.ping_outstanding {
                    tun.ping_outstanding = false;
                    let sent = self.epoch + Duration::from_micros(token);
                    if sent <= now {
                        tun.path.on_rtt_sample(now - sent, now);
                    }
                }
                Ok(())
            }
            Frame::GoAway { code } => {
                if !self.going_away_peer {
                    self.going_away_peer = true;
                    self.events.push_back(Event::GoAway { code });
                }
                self.maybe_finish_going_away(now);
                Ok(())
            }
            Frame::Close { code, reason } => {
                let reason = String::from_utf8_lossy(&reason).into_owned();
                self.finish(SessionError::PeerClosed { code, reason });
                Ok(())
            }
        }
    }

    fn local_parity(&self) -> u64 {
        match self.role {
            Role::Client => 0,
            Role::Server => 1,
        }
    }

    fn on_data(
        &mut self,
        stream: StreamId,
        offset: u64,
        fin: bool,
        payload: Bytes,
    ) -> Result<(), SessionError> {
        if !self.admit_stream(stream)? {
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return Ok(());
        };
        let end = offset + payload.len() as u64;
        if s.peer_reset.is_some() {
            return Ok(());
        }
        if end > s.recv_max_advertised {
            return Err(SessionError::FlowControl {
                stream,
                offset: end,
                limit: s.recv_max_advertised,
            });
        }
        if let Some(size) = s.final_size
            && (end > size || (fin && end != size))
        {
            return Err(SessionError::Protocol(format!(
                "stream {stream}: data to {end} conflicts with its final size {size}"
            )));
        }
        if fin {
            if s.recv_highest > end {
                return Err(SessionError::Protocol(format!(
                    "stream {stream}: FIN at {end} below data already received"
                )));
            }
            s.final_size = Some(end);
        }
        if end > s.recv_highest {
            self.recv_data_total += end - s.recv_highest;
            s.recv_highest = end;
            if self.recv_data_total > self.recv_max_data {
                return Err(SessionError::SessionFlowControl {
                    received: self.recv_data_total,
                    limit: self.recv_max_data,
                });
            }
        }
        if s.local_reset.is_some() {
            // Reset here, not yet confirmed by the peer: count the bytes as consumed at once.
            let newly = s.recv_highest - s.recv_consumed;
            s.recv_consumed = s.recv_highest;
            self.recv_consumed_total += newly;
            self.maybe_update_session_window();
            self.maybe_remove(stream);
            return Ok(());
        }
        s.recv.insert(offset, payload);
        self.signal_readable(stream);
        Ok(())
    }

    fn signal_readable(&mut self, stream: StreamId) {
        if let Some(s) = self.streams.get_mut(&stream)
            && s.announced
            && !s.readable_signalled
            && s.readable()
        {
            s.readable_signalled = true;
            self.events.push_back(Event::StreamReadable { stream });
        }
    }

    fn on_reset(
        &mut self,
        stream: StreamId,
        final_offset: u64,
        code: u32,
    ) -> Result<(), SessionError> {
        if !self.admit_stream(stream)? {
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return Ok(());
        };
        if s.peer_reset.is_some() {
            return Ok(());
        }
        if final_offset < s.recv_highest || s.final_size.is_some_and(|f| f != final_offset) {
            return Err(SessionError::Protocol(format!(
                "stream {stream}: RESET final offset {final_offset} contradicts data received"
            )));
        }
        if final_offset > s.recv_max_advertised {
            return Err(SessionError::FlowControl {
                stream,
                offset: final_offset,
                limit: s.recv_max_advertised,
            });
        }
        self.recv_data_total += final_offset - s.recv_highest;
        if self.recv_data_total > self.recv_max_data {
            return Err(SessionError::SessionFlowControl {
                received: self.recv_data_total,
                limit: self.recv_max_data,
            });
        }
        s.recv_highest = final_offset;
        s.final_size = Some(final_offset);
        self.recv_consumed_total += final_offset - s.recv_consumed;
        s.recv_consumed = final_offset;
        s.recv.discard();
        s.peer_reset = Some(code);
        let announce = s.announced && s.local_reset.is_none();
        Self::abandon_send(s, &mut self.backlog);
        if !s.reset_sent {
            s.reset_sent = true;
            let final_sent = s.send_offset;
            self.control.push_back(Reliable::Reset {
                stream,
                final_offset: final_sent,
                code,
            });
        }
        if announce {
            self.events.push_back(Event::StreamReset { stream, code });
        }
        self.maybe_update_session_window();
        self.maybe_remove(stream);
        Ok(())
    }

    fn abandon_send(s: &mut Stream, backlog: &mut u64) {
        *backlog -= s.send_queued as u64;
        s.send_queue.clear();
        s.send_queued = 0;
    }

    fn on_ack(&mut self, now: Instant, t: usize, frames: u64) -> Result<(), SessionError> {
        let tun = &mut self.tunnels[t];
        if frames <= tun.acked_reliable {
            return Ok(());
        }
        if frames > tun.sent_reliable {
            return Err(SessionError::Protocol(format!(
                "ACK of {frames} frames on tunnel {t}, only {} sent",
                tun.sent_reliable
            )));
        }
        let count = frames - tun.acked_reliable;
        tun.acked_reliable = frames;
        let mut last = None;
        let mut finished = Vec::new();
        for _ in 0..count {
            let Some(r) = tun.retained.pop_front() else {
                break;
            };
            tun.unacked_bytes -= r.wire_len;
            tun.delivered += r.wire_len;
            if let Some(sid) = r.frame.counted_stream()
                && let Some(s) = self.streams.get_mut(&sid)
            {
                s.unacked_frames = s.unacked_frames.saturating_sub(1);
                if s.unacked_frames == 0 {
                    finished.push(sid);
                }
            }
            last = Some(r);
        }
        if let Some(r) = last {
            let elapsed = now.saturating_duration_since(r.sent_at);
            tun.path.on_rtt_sample(elapsed, now);
            if !elapsed.is_zero() {
                let rate = (tun.delivered - r.delivered_at_send) as f64 / elapsed.as_secs_f64();
                tun.path.on_rate_sample(rate, r.app_limited, now);
            }
        }
        for sid in finished {
            self.maybe_remove(sid);
        }
        Ok(())
    }

    /// Forgets a stream once both directions are complete.
    fn maybe_remove(&mut self, id: StreamId) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        if !(s.send_done() && s.recv_done()) {
            return;
        }
        let local = s.local;
        let (sent, received) = (s.send_offset, s.recv_highest);
        // Bytes read or discarded are consumed; anything still buffered is freed with the stream.
        let unconsumed = s.recv_highest - s.recv_consumed;
        self.streams.remove(&id);
        self.recv_consumed_total += unconsumed;
        self.events.push_back(Event::StreamClosed {
            stream: id,
            sent,
            received,
        });
        if !local {
            self.peer_streams_closed += 1;
            let target = self.peer_streams_closed + self.config.max_streams;
            let step = (self.config.max_streams / 8).max(1);
            if target >= self.peer_stream_limit + step && !self.going_away_local {
                self.peer_stream_limit = target;
                if !self.max_streams_queued {
                    self.max_streams_queued = true;
                    self.control.push_back(Reliable::MaxStreams);
                }
            }
        }
        self.maybe_update_session_window();
        if self.streams.is_empty() && (self.going_away_local || self.going_away_peer) {
            self.close(code::NO_ERROR, "going away: all streams finished");
        }
    }

    fn maybe_update_session_window(&mut self) {
        let window = self.config.session_window;
        if self.recv_max_data - self.recv_consumed_total.min(self.recv_max_data) <= window / 2 {
            self.recv_max_data = self.recv_consumed_total + window;
            if !self.session_window_queued {
                self.session_window_queued = true;
                self.control.push_back(Reliable::SessionWindow);
            }
        }
    }

    fn maybe_finish_going_away(&mut self, _now: Instant) {
        if (self.going_away_local || self.going_away_peer) && self.streams.is_empty() {
            self.close(code::NO_ERROR, "going away: all streams finished");
        }
    }

    // ----- Timers --------------------------------------------------------------------------

    /// The next instant [`Session::handle_timeout`] must be called at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        let c = &self.config;
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for tun in &self.tunnels {
            match tun.state {
                TunnelState::Down {
                    redial_at: Some(at),
                } => consider(at),
                TunnelState::Dialing { since } | TunnelState::Handshaking { since, .. } => {
                    consider(since + c.handshake_timeout)
                }
                TunnelState::Active => {
                    consider(tun.last_recv + c.tunnel_idle_timeout);
                    if !tun.ping_outstanding && !tun.ping_due {
                        consider(tun.next_ping);
                    }
                }
                _ => {}
            }
        }
        if self.established
            && let Some(since) = self.no_tunnel_since
        {
            consider(since + c.session_grace);
        }
        next
    }

    /// Fires every timer due at `now`: handshake and idle timeouts, re-dials, keepalives, and the
    /// session's grace period.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        let (hs, idle) = (
            self.config.handshake_timeout,
            self.config.tunnel_idle_timeout,
        );
        for t in 0..self.tunnels.len() {
            match self.tunnels[t].state {
                TunnelState::Down {
                    redial_at: Some(at),
                } if at <= now => {
                    self.tunnels[t].state = TunnelState::Dialing { since: now };
                    self.events.push_back(Event::Dial { tunnel: t as u16 });
                }
                TunnelState::Dialing { since } | TunnelState::Handshaking { since, .. }
                    if since + hs <= now =>
                {
                    self.tunnel_down(now, t, TunnelError::Handshake(HandshakeError::Timeout));
                }
                TunnelState::Active if self.tunnels[t].last_recv + idle <= now => {
                    self.tunnel_down(now, t, TunnelError::IdleTimeout(idle));
                }
                TunnelState::Active => {
                    // The PING goes out with the tunnel's next transmit; the timer is re-armed
                    // now so that a tunnel with a full send buffer cannot make it fire forever.
                    let tun = &mut self.tunnels[t];
                    if !tun.ping_outstanding && !tun.ping_due && tun.next_ping <= now {
                        tun.ping_due = true;
                        tun.next_ping = now + self.config.keepalive_interval;
                    }
                }
                _ => {}
            }
        }
        if self.established
            && let Some(since) = self.no_tunnel_since
            && since + self.config.session_grace <= now
        {
            self.finish(SessionError::AllTunnelsLost(self.config.session_grace));
        }
    }

    // ----- Output --------------------------------------------------------------------------

    /// Whether tunnel `t` has bytes to send now (a hint for drivers that poll lazily).
    pub fn wants_transmit(&self, t: usize) -> bool {
        let Some(tun) = self.tunnels.get(t) else {
            return false;
        };
        if !tun.handshake_out.is_empty() || tun.close_pending.is_some() {
            return true;
        }
        if !tun.is_active() || self.closed.is_some() {
            return false;
        }
        tun.recv_reliable > tun.ack_sent
            || tun.pong_due.is_some()
            || tun.ping_due
            || !self.retransmit.is_empty()
            || !self.control.is_empty()
            || !self.ready.is_empty()
    }

    /// Appends to `out` the bytes to write to tunnel `t` now, about `max_bytes` of them (a frame
    /// may overshoot); returns how many were appended. Frames are committed to the tunnel when
    /// returned: the driver must write all of them, in order.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        t: usize,
        max_bytes: usize,
        out: &mut Vec<Bytes>,
    ) -> usize {
        let Some(tun) = self.tunnels.get_mut(t) else {
            return 0;
        };
        let mut written = 0;
        if !tun.handshake_out.is_empty() {
            let hs = tun.handshake_out.split().freeze();
            written += hs.len();
            out.push(hs);
        }
        if let Some((code, reason)) = tun.close_pending.take() {
            let f = Frame::Close { code, reason };
            written += f.encoded_len();
            f.encode(&mut self.scratch, usize::MAX, out);
            tun.state = TunnelState::Down { redial_at: None };
            return written;
        }
        if !tun.is_active() || self.closed.is_some() {
            return written;
        }
        let copy_below = self.config.copy_threshold;
        // Unreliable control first: acknowledgements free the peer's memory.
        if tun.recv_reliable > tun.ack_sent {
            tun.ack_sent = tun.recv_reliable;
            let f = Frame::Ack {
                frames: tun.recv_reliable,
            };
            written += f.encoded_len();
            f.encode(&mut self.scratch, copy_below, out);
        }
        if let Some(token) = tun.pong_due.take() {
            let f = Frame::Pong { token };
            written += f.encoded_len();
            f.encode(&mut self.scratch, copy_below, out);
        }
        if tun.ping_due {
            tun.ping_due = false;
            tun.ping_outstanding = true;
            let token = now.saturating_duration_since(self.epoch).as_micros() as u64;
            let f = Frame::Ping { token };
            written += f.encoded_len();
            f.encode(&mut self.scratch, copy_below, out);
        }
        self.build_views(t);
        while written < max_bytes {
            let Some(sent) = self.send_one_reliable(now, t, out) else {
                break;
            };
            written += sent;
        }
        self.tunnels[t].saturated = written >= max_bytes;
        written
    }

    fn build_views(&mut self, polled: usize) {
        self.views.clear();
        for (i, tun) in self.tunnels.iter().enumerate() {
            let full_now = tun.saturated && i != polled;
            self.views.push(PathView {
                usable: tun.is_active() && tun.close_pending.is_none(),
                unacked_bytes: tun.unacked_bytes,
                rate: tun.path.rate(),
                rtt: tun.path.min_rtt(),
                waiting_bytes: if full_now { self.backlog } else { 0 },
            });
        }
    }

    /// Sends the next reliable frame on `t` if the scheduler picks `t` for it. `None` when there
    /// is nothing to send or it belongs on another tunnel.
    fn send_one_reliable(&mut self, now: Instant, t: usize, out: &mut Vec<Bytes>) -> Option<usize> {
        // Resends first (they are the oldest), then control, then new stream data.
        while let Some(r) = self.retransmit.front() {
            match self.materialize(r) {
                Some(frame) => {
                    if !self.scheduled_here(t, frame.encoded_len()) {
                        return None;
                    }
                    let r = self.retransmit.pop_front()?;
                    return Some(self.emit(now, t, r, frame, out));
                }
                None => {
                    self.retransmit.pop_front();
                }
            }
        }
        while let Some(r) = self.control.front() {
            match self.materialize(r) {
                Some(frame) => {
                    if !self.scheduled_here(t, frame.encoded_len()) {
                        return None;
                    }
                    let r = self.control.pop_front()?;
                    self.clear_queued_flag(&r);
                    return Some(self.emit(now, t, r, frame, out));
                }
                None => {
                    if let Some(r) = self.control.pop_front() {
                        self.clear_queued_flag(&r);
                    }
                }
            }
        }
        self.send_stream_data(now, t, out)
    }

    fn clear_queued_flag(&mut self, r: &Reliable) {
        match r {
            Reliable::StreamWindow { stream } => {
                if let Some(s) = self.streams.get_mut(stream) {
                    s.window_update_queued = false;
                }
            }
            Reliable::SessionWindow => self.session_window_queued = false,
            Reliable::MaxStreams => self.max_streams_queued = false,
            _ => {}
        }
    }

    /// The frame to send for a remembered reliable frame, with current values; `None` when it
    /// is obsolete (its stream is gone or reset).
    fn materialize(&self, r: &Reliable) -> Option<Frame> {
        let live = |id: &StreamId| self.streams.get(id).filter(|s| !s.reset_sent);
        Some(match r {
            Reliable::Data {
                stream,
                offset,
                fin,
                payload,
            } => {
                live(stream)?;
                Frame::Data {
                    stream: *stream,
                    offset: *offset,
                    fin: *fin,
                    payload: payload.clone(),
                }
            }
            Reliable::Open { stream } => Frame::Open {
                stream: *stream,
                target: live(stream)?.target.clone(),
            },
            Reliable::Reset {
                stream,
                final_offset,
                code,
            } => Frame::Reset {
                stream: *stream,
                final_offset: *final_offset,
                code: *code,
            },
            Reliable::StreamWindow { stream } => {
                let s = self.streams.get(stream)?;
                if s.reset_code().is_some() || s.final_size.is_some() {
                    return None;
                }
                Frame::StreamWindow {
                    stream: *stream,
                    max_offset: s.recv_max_advertised,
                }
            }
            Reliable::SessionWindow => Frame::SessionWindow {
                max_data: self.recv_max_data,
            },
            Reliable::MaxStreams => Frame::MaxStreams {
                count: self.peer_stream_limit,
            },
            Reliable::GoAway { code } => Frame::GoAway { code: *code },
        })
    }

    fn scheduled_here(&mut self, t: usize, frame_len: usize) -> bool {
        self.scheduler.accept(t, &self.views, frame_len)
    }

    fn emit(
        &mut self,
        now: Instant,
        t: usize,
        r: Reliable,
        frame: Frame,
        out: &mut Vec<Bytes>,
    ) -> usize {
        let len = frame.encoded_len();
        frame.encode(&mut self.scratch, self.config.copy_threshold, out);
        let tun = &mut self.tunnels[t];
        tun.unacked_bytes += len as u64;
        tun.sent_reliable += 1;
        tun.retained.push_back(Retained {
            frame: r,
            wire_len: len as u64,
            sent_at: now,
            delivered_at_send: tun.delivered,
            app_limited: !tun.saturated,
        });
        self.views[t].unacked_bytes += len as u64;
        self.scheduler.on_sent(t);
        len
    }

    fn send_stream_data(&mut self, now: Instant, t: usize, out: &mut Vec<Bytes>) -> Option<usize> {
        let payload_limit = self
            .config
            .payload_limit(self.peer_params.map_or(0, |p| p.max_frame_body));
        while let Some(&id) = self.ready.front() {
            let session_credit = self.peer_max_data.saturating_sub(self.send_data_total);
            let Some(s) = self.streams.get_mut(&id) else {
                self.ready.pop_front();
                continue;
            };
            if !s.has_sendable() {
                s.in_ready = false;
                self.ready.pop_front();
                continue;
            }
            let stream_credit = s.send_max.saturating_sub(s.send_offset);
            let front_len = s.send_queue.front().map_or(0, Bytes::len);
            let n = front_len
                .min(payload_limit)
                .min(stream_credit.min(usize::MAX as u64) as usize)
                .min(session_credit.min(usize::MAX as u64) as usize);
            let fin_only = s.send_queued == 0;
            if n == 0 && !fin_only {
                if stream_credit == 0 {
                    // Waits for a STREAM_WINDOW, which puts it back.
                    s.in_ready = false;
                    self.ready.pop_front();
                    continue;
                }
                // Out of session credit: everything waits for a SESSION_WINDOW.
                return None;
            }
            let frame_len = FRAME_HEADER_LEN + wire::DATA_FIXED_LEN + n;
            if !self.scheduler_picks(t, frame_len) {
                return None;
            }
            let s = self.streams.get_mut(&id)?;
            let payload = if n == 0 {
                Bytes::new()
            } else {
                let front = s.send_queue.front_mut()?;
                if front.len() == n {
                    s.send_queue.pop_front()?
                } else {
                    front.split_to(n)
                }
            };
            s.send_queued -= n;
            self.backlog -= n as u64;
            let fin = s.fin_requested && s.send_queued == 0;
            let offset = s.send_offset;
            s.send_offset += n as u64;
            s.fin_sent |= fin;
            s.unacked_frames += 1;
            self.send_data_total += n as u64;
            let mut writable = false;
            if s.write_blocked && s.send_queued <= self.config.stream_send_buffer / 2 {
                s.write_blocked = false;
                writable = true;
            }
            self.ready.pop_front();
            if s.has_sendable() {
                self.ready.push_back(id);
            } else {
                s.in_ready = false;
            }
            if writable {
                self.events.push_back(Event::StreamWritable { stream: id });
            }
            let frame = Frame::Data {
                stream: id,
                offset,
                fin,
                payload: payload.clone(),
            };
            let r = Reliable::Data {
                stream: id,
                offset,
                fin,
                payload,
            };
            return Some(self.emit(now, t, r, frame, out));
        }
        None
    }

    fn scheduler_picks(&mut self, t: usize, frame_len: usize) -> bool {
        self.scheduled_here(t, frame_len)
    }

    // ----- Streams -------------------------------------------------------------------------

    /// Opens a stream; `target` (`host:port`) tells the far end where to connect. Data written
    /// at once travels with the OPEN: no round trip is waited for.
    pub fn open_stream(&mut self, target: Option<&str>) -> Result<StreamId, StreamError> {
        if self.closed.is_some() {
            return Err(StreamError::SessionClosed);
        }
        if self.going_away_local || self.going_away_peer {
            return Err(StreamError::GoingAway);
        }
        let Some(peer) = self.peer_params else {
            return Err(StreamError::NotReady);
        };
        if self.next_local_index >= self.local_stream_limit {
            return Err(StreamError::StreamLimit);
        }
        if target.is_some_and(|t| t.len() > MAX_TARGET_LEN) {
            return Err(StreamError::TargetTooLong(MAX_TARGET_LEN));
        }
        let id = (self.next_local_index << 1) | self.local_parity();
        self.next_local_index += 1;
        let mut s = Stream::new(true, peer.stream_window, self.config.stream_window);
        s.target = target.map(|t| Bytes::copy_from_slice(t.as_bytes()));
        s.unacked_frames = 1;
        self.streams.insert(id, s);
        self.control.push_back(Reliable::Open { stream: id });
        Ok(id)
    }

    fn stream_mut(&mut self, id: StreamId) -> Result<&mut Stream, StreamError> {
        if self.closed.is_some() {
            return Err(StreamError::SessionClosed);
        }
        let s = self
            .streams
            .get_mut(&id)
            .ok_or(StreamError::UnknownStream(id))?;
        if let Some(code) = s.reset_code() {
            return Err(StreamError::Reset(code));
        }
        Ok(s)
    }

    /// Queues bytes on a stream; returns how many were taken (fewer when the send buffer is
    /// full: [`Event::StreamWritable`] says when to try again). Zero-copy: the `Bytes` is kept.
    pub fn write(&mut self, id: StreamId, data: Bytes) -> Result<usize, StreamError> {
        let limit = self.config.stream_send_buffer;
        let s = self.stream_mut(id)?;
        if s.fin_requested {
            return Err(StreamError::Finished);
        }
        let room = limit.saturating_sub(s.send_queued);
        let n = room.min(data.len());
        if n < data.len() {
            s.write_blocked = true;
        }
        if n == 0 {
            return Ok(0);
        }
        s.send_queued += n;
        s.send_queue.push_back(data.slice(..n));
        if !s.in_ready {
            s.in_ready = true;
            self.ready.push_back(id);
        }
        self.backlog += n as u64;
        Ok(n)
    }

    /// Like [`Session::write`], copying from a slice (only the part taken is copied).
    pub fn write_slice(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let limit = self.config.stream_send_buffer;
        let room = {
            let s = self.stream_mut(id)?;
            limit.saturating_sub(s.send_queued)
        };
        let n = room.min(data.len());
        let taken = self.write(id, Bytes::copy_from_slice(&data[..n]))?;
        if n < data.len()
            && let Some(s) = self.streams.get_mut(&id)
        {
            s.write_blocked = true;
        }
        Ok(taken)
    }

    /// Ends this end's direction of the stream (half-close): the peer reads EOF after the bytes
    /// already written; its direction stays open.
    pub fn shutdown(&mut self, id: StreamId) -> Result<(), StreamError> {
        let s = self.stream_mut(id)?;
        if s.fin_requested {
            return Ok(());
        }
        s.fin_requested = true;
        if !s.in_ready {
            s.in_ready = true;
            self.ready.push_back(id);
        }
        Ok(())
    }

    /// Aborts both directions of the stream; the peer sees [`Event::StreamReset`] with `code`.
    pub fn reset(&mut self, id: StreamId, code: u32) -> Result<(), StreamError> {
        if self.closed.is_some() {
            return Err(StreamError::SessionClosed);
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return Err(StreamError::UnknownStream(id));
        };
        if s.reset_code().is_some() {
            return Ok(());
        }
        s.local_reset = Some(code);
        Self::abandon_send(s, &mut self.backlog);
        s.recv.discard();
        let consumed = s.recv_highest - s.recv_consumed;
        s.recv_consumed = s.recv_highest;
        self.recv_consumed_total += consumed;
        if !s.reset_sent {
            s.reset_sent = true;
            let final_offset = s.send_offset;
            self.control.push_back(Reliable::Reset {
                stream: id,
                final_offset,
                code,
            });
        }
        self.maybe_update_session_window();
        self.maybe_remove(id);
        Ok(())
    }

    /// Reads up to `max` bytes in order, returning credit to the peer as the reader consumes.
    pub fn read(&mut self, id: StreamId, max: usize) -> Result<ReadOutcome, StreamError> {
        let window = self.config.stream_window;
        let s = self.stream_mut(id)?;
        if let Some(data) = s.recv.read(max.max(1)) {
            let n = data.len() as u64;
            s.recv_consumed += n;
            if s.recv.readable_len() == 0 {
                s.readable_signalled = false;
            }
            let mut queue_window = false;
            if s.final_size.is_none() && s.recv_max_advertised - s.recv.read_offset() <= window / 2
            {
                s.recv_max_advertised = s.recv.read_offset() + window;
                if !s.window_update_queued {
                    s.window_update_queued = true;
                    queue_window = true;
                }
            }
            self.recv_consumed_total += n;
            if queue_window {
                self.control
                    .push_back(Reliable::StreamWindow { stream: id });
            }
            self.maybe_update_session_window();
            return Ok(ReadOutcome::Data(data));
        }
        if s.final_size == Some(s.recv.read_offset()) {
            s.fin_read = true;
            self.maybe_remove(id);
            return Ok(ReadOutcome::Fin);
        }
        s.readable_signalled = false;
        Ok(ReadOutcome::WouldBlock)
    }

    // ----- Session close -------------------------------------------------------------------

    /// Stops new streams in both directions; existing streams finish, then the session closes.
    pub fn go_away(&mut self, now: Instant) {
        if self.closed.is_some() || self.going_away_local {
            return;
        }
        self.going_away_local = true;
        self.control.push_back(Reliable::GoAway {
            code: code::NO_ERROR,
        });
        self.maybe_finish_going_away(now);
    }

    /// Closes the session now: a CLOSE frame goes out on every live tunnel.
    pub fn close(&mut self, code: u32, reason: &str) {
        if self.closed.is_some() {
            return;
        }
        let reason: String = reason.chars().take(wire::MAX_REASON_LEN / 4).collect();
        let bytes = Bytes::from(reason.clone().into_bytes());
        for tun in &mut self.tunnels {
            if tun.is_active() {
                tun.close_pending = Some((code, bytes.clone()));
            }
        }
        self.finish(SessionError::LocallyClosed { code, reason });
    }

    /// Closes with an error: tells the peer why, and returns the error.
    fn fail(&mut self, _now: Instant, e: SessionError) -> SessionError {
        if self.closed.is_none() {
            let reason = e.to_string();
            let bytes = Bytes::from(
                reason
                    .chars()
                    .take(wire::MAX_REASON_LEN / 4)
                    .collect::<String>(),
            );
            for tun in &mut self.tunnels {
                if tun.is_active() {
                    tun.close_pending = Some((e.code(), bytes.clone()));
                }
            }
            self.finish(e.clone());
        }
        e
    }

    fn finish(&mut self, reason: SessionError) {
        if self.closed.is_some() {
            return;
        }
        for (t, tun) in self.tunnels.iter_mut().enumerate() {
            tun.retained.clear();
            if tun.close_pending.is_none()
                && matches!(
                    tun.state,
                    TunnelState::Active
                        | TunnelState::Handshaking { .. }
                        | TunnelState::Dialing { .. }
                )
            {
                tun.state = TunnelState::Down { redial_at: None };
                self.events.push_back(Event::TunnelDown {
                    tunnel: t as u16,
                    reason: TunnelError::SessionClosed,
                });
            } else if tun.close_pending.is_none() {
                tun.state = TunnelState::Down { redial_at: None };
            }
        }
        self.streams.clear();
        self.backlog = 0;
        self.ready.clear();
        self.retransmit.clear();
        self.control.clear();
        self.closed = Some(reason.clone());
        self.events.push_back(Event::SessionClosed { reason });
    }
}
