//! The session state machine: one end of a set of tunnels sharing a session id, and the streams
//! multiplexed over them. Sans-IO: the caller passes `now`, feeds bytes read from tunnel `i`,
//! polls bytes to write to tunnel `i`, the next timeout and events, and issues stream commands.
//!
//! Owns (this file): [`Session`] and its fields, the public types ([`Event`], [`ReadOutcome`],
//! [`Role`], [`SessionStats`]), the constructors and the read-only accessors. The behaviour is
//! split by concept, one `impl Session` block per file:
//!
//! - `tunnels`: tunnel states, the client half of the handshake (driving
//!   [`crate::handshake::ClientHandshake`]), connect / lost / down, the pool's first dial
//!   (zero-RTT or at the first stream), re-dial backoff, keepalive answers.
//! - `input`: [`Session::handle_input`] and frame dispatch; stream-id admission.
//! - `streams`: stream state; `streams::send` the write / shutdown / reset API and opening,
//!   `streams::recv` the read API and DATA / RESET on receive.
//! - `flow_control`: credit in both directions and the window updates that return it.
//! - `retransmit`: retention of reliable frames per tunnel, acknowledgement, resend.
//! - `transmit`: [`Session::poll_transmit`], scheduling across tunnels, emitting frames.
//! - `timers`: [`Session::poll_timeout`] and [`Session::handle_timeout`].
//! - `close`: GO_AWAY, close, failure and the end of the session.
//! - `expose`: a client's exposed services (reverse tunnels) and the server's view of them.
//!
//! Must not touch: sockets, clocks, threads, or the byte layout of frames (that is `wire` and
//! `handshake`).
//!
//! # Driver contract
//! - After any call that may have produced output (input, timeout, a stream command), call
//!   [`Session::poll_transmit`] for every tunnel that can take bytes, and drain
//!   [`Session::poll_event`].
//! - Call [`Session::handle_timeout`] when [`Session::poll_timeout`] is reached.
//! - Keep each tunnel socket's TCP_NOTSENT_LOWAT at [`Session::tunnel_unsent_limit`] (it
//!   changes with the tunnel's rate).
//! - On [`Event::Dial`] (client), connect that tunnel slot and report [`Session::tunnel_connected`]
//!   or [`Session::tunnel_dial_failed`]. On [`Event::TunnelDown`], close that socket. When a socket
//!   fails, report [`Session::tunnel_lost`].
//! - A client asks for its first dials at once, or, with [`Config::zero_rtt`] off, when the
//!   first [`Session::open_stream`] is tried (it returns
//!   [`StreamError::NotReady`](crate::error::StreamError::NotReady) until a tunnel
//!   is up: retry after [`Event::TunnelUp`]).

mod close;
mod coupled;
mod expose;
mod flow_control;
mod handoff;
mod input;
mod pool;
mod pool_auto;
mod relief;
mod retransmit;
mod rtt_probe;
mod streams;
#[cfg(test)]
mod tests;
mod timers;
mod transmit;
mod tunnels;
mod unsent;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::config::Config;
use crate::error::{SessionError, TunnelError};
use crate::handshake::{
    AcceptedTunnel, SessionId, SessionSecret, TransportParams, session_secrets_equal,
};
use crate::id_hash::IdMap;
use crate::path::{PathEstimate, TcpReport};
use crate::pool_control::{PoolChange, PoolController};
use crate::scheduler::{PathView, Scheduler};
pub use coupled::CoupledStats;
use coupled::{AggregateRate, StartUp};
pub use expose::ExposeError;
pub use flow_control::WindowStats;
pub use relief::ReliefStats;
use retransmit::Reliable;
use streams::Stream;
use tunnels::{KernelHeld, Tunnel};

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
    /// The peer confirmed a stream this end opened: its first DATA or STREAM_WINDOW for it
    /// arrived, which a server sends once the stream's target is connected (PROTOCOL.md §4.8).
    /// Raised once per stream, before any `StreamReadable` the same frame causes.
    StreamConfirmed {
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
    /// Client, adaptive pool (`Config::pool_auto`): the pool changes size, or settles at its
    /// size (`from == to`). Slots beyond the new size drain and close; new ones are dialed
    /// ([`Event::Dial`]).
    PoolResized {
        /// From, to, and why.
        change: PoolChange,
    },
    /// Server: the client's set of exposed services (reverse tunnels) is now `names` (raised
    /// when its EXPOSE frame arrives, and again only if a later one changes the set).
    PeerExposed {
        /// The names, as the client sent them.
        names: Vec<String>,
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
    /// Encoded bytes of reliable frames kept for resend: sent and unacknowledged on every
    /// tunnel, plus the resend queue (capped by [`Config::max_unacked_bytes`]).
    pub retained_bytes: u64,
    /// Out-of-order pieces held by every stream's reorder buffer.
    pub reorder_pieces: u64,
    /// What those pieces are charged: their bytes (at most the session window, by the offset
    /// accounting) plus [`crate::reorder::PIECE_OVERHEAD`] each (also at most the session
    /// window).
    pub reorder_charged: u64,
    /// Streams opened so far, by either end.
    pub streams_opened: u64,
    /// Stream bytes sent to the peer so far (every stream, closed or live).
    pub stream_bytes_sent: u64,
    /// Stream bytes received from the peer so far (every stream, closed or live).
    pub stream_bytes_received: u64,
    /// Head-of-line relief: reports sent and received, frames re-sent.
    pub relief: ReliefStats,
    /// Receive-window auto-tuning and credit waits.
    pub window: WindowStats,
}

/// One end of an mtcpd session.
#[derive(Debug)]
pub struct Session {
    role: Role,
    config: Arc<Config>,
    id: SessionId,
    /// Client: drawn at start, sent masked on every tunnel. Server: the one the creating tunnel
    /// carried; every later tunnel must carry the same.
    secret: SessionSecret,
    rng: StdRng,
    epoch: Instant,
    closed: Option<SessionError>,
    established: bool,
    peer_params: Option<TransportParams>,
    /// Capability bits the peer announced (its first hello).
    peer_capabilities: u32,
    /// Head-of-line relief, both halves (`relief`).
    relief: relief::Relief,
    tunnels: Vec<Tunnel>,
    /// Boxed: a table slot is 16 bytes, so the table's spare capacity (up to half of it
    /// after a growth) costs little per stream, and an idle stream's state is one allocation.
    streams: IdMap<StreamId, Box<Stream>>,
    next_local_index: u64,
    /// Streams this end opened that are not forgotten yet (capped by `config.max_streams`).
    local_open: u64,
    local_stream_limit: u64,
    peer_streams_seen: u64,
    /// Peer stream indices below `peer_streams_seen` that no frame has named yet: start → end.
    peer_unseen: BTreeMap<u64, u64>,
    peer_streams_closed: u64,
    peer_stream_limit: u64,
    max_streams_queued: bool,
    ready: VecDeque<StreamId>,
    /// Frames of dead tunnels waiting to be sent again, with their encoded length.
    retransmit: VecDeque<(Reliable, u64)>,
    /// Encoded bytes in `retransmit` (with the tunnels' unacknowledged bytes, what
    /// [`Config::max_unacked_bytes`] caps).
    retransmit_bytes: u64,
    /// With `coupled_pacing`: whether the coupled cap applies (the shared bottleneck's queue is
    /// building, or no loss has shown it is not); `None` until the driver reported a tunnel's
    /// TCP_INFO (a driver that cannot, like the simulator without a bottleneck, never couples).
    /// See `coupled`.
    queue_building: Option<bool>,
    /// When random loss last released the coupled cap (`coupled`).
    released_at: Option<Instant>,
    /// The deepest bottleneck queue the tunnels reported lately, and when (`coupled`).
    queue_peak: Option<(Duration, Instant)>,
    /// The coupled cap's multiplier, `None` when it does not bind (`coupled`).
    cap_scale: Option<f64>,
    /// The delivery rate over every tunnel, for the coupled cap (`coupled`).
    aggregate_rate: AggregateRate,
    /// The driver reports the kernel's count of delivered bytes: it, not ACK frames, feeds
    /// `aggregate_rate` (`coupled`).
    kernel_delivery: bool,
    /// When a frame last left with nothing more to frame behind it: the session was
    /// application-limited then (`coupled`).
    app_limited_at: Option<Instant>,
    /// Whether the session's delivery rate still grows: the coupled cap's gain (`coupled`).
    startup: StartUp,
    /// The coupled cap's RTT, measured with the queue drained (`rtt_probe`).
    rtt_probe: rtt_probe::RttProbe,
    /// Σ of every stream's [`crate::reorder::ReorderBuffer::pending_overhead`]: at most the
    /// session window (the pieces' bytes are bounded by the offset accounting).
    reorder_overhead: u64,
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
    /// Client with zero-RTT off: the pool is not dialed until the first stream is tried.
    pool_deferred: bool,
    /// Client: no tunnel is dialed before this instant.
    first_dial: Instant,
    events: VecDeque<Event>,
    scheduler: Box<dyn Scheduler>,
    views: Vec<PathView>,
    scratch: BytesMut,
    frames_resent: u64,
    /// Credit waits and window growth (`flow_control`).
    window_stats: WindowStats,
    /// Client: the EXPOSE body of the services it exposes (`Session::expose`).
    exposed: Option<Bytes>,
    /// Server: the names the client's last EXPOSE carried.
    peer_exposed: Vec<String>,
    /// Client with `pool_auto`: how many tunnels to keep (`pool_auto`).
    pool_control: Option<PoolController>,
    /// When `pool_control` is fed next.
    pool_next_tick: Instant,
    /// `recv_data_total` at the last pool tick.
    pool_last_received: u64,
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
    /// dial every slot: at once, or, with [`Config::zero_rtt`] off, once the first stream is
    /// tried with [`Session::open_stream`].
    pub fn client_seeded(config: Arc<Config>, now: Instant, seed: [u8; 32]) -> Self {
        Self::client_dialing_at(config, now, seed, now)
    }

    /// [`Session::client_seeded`] whose tunnels are dialed no sooner than `first_dial` (the
    /// server refused the previous session for good: [`crate::endpoint::RefusalBackoff`]).
    pub fn client_dialing_at(
        config: Arc<Config>,
        now: Instant,
        seed: [u8; 32],
        first_dial: Instant,
    ) -> Self {
        let mut rng = StdRng::from_seed(seed);
        let mut id = [0; 16];
        rng.fill_bytes(&mut id);
        let mut secret = [0; 32];
        rng.fill_bytes(&mut secret);
        let pool = config.pool_size.max(1) as usize;
        let pool_control = Self::pool_controller(&config, pool);
        let mut session = Self::new(Role::Client, config, (id, secret), rng, now, pool);
        session.pool_control = pool_control;
        session.first_dial = first_dial;
        if session.config.zero_rtt {
            session.dial_pool(now);
        } else {
            session.pool_deferred = true;
        }
        session.no_tunnel_since = Some(now);
        session
    }

    /// A server session, created for the first tunnel its client completed a handshake on.
    pub fn server(config: Arc<Config>, now: Instant, first: &AcceptedTunnel, seed: u64) -> Self {
        let rng = StdRng::seed_from_u64(seed);
        let pool = first.pool_size.max(1) as usize;
        let identity = (first.session_id, first.session_secret);
        let mut session = Self::new(Role::Server, config, identity, rng, now, pool);
        session.peer_params = Some(first.peer_params);
        session.apply_peer_params(first.peer_params);
        session.peer_capabilities = first.peer_capabilities;
        session.established = true;
        session.attach_tunnel(now, first);
        session
    }

    fn new(
        role: Role,
        config: Arc<Config>,
        (id, secret): (SessionId, SessionSecret),
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
            secret,
            rng,
            epoch: now,
            closed: None,
            established: false,
            peer_params: None,
            peer_capabilities: 0,
            relief: relief::Relief::default(),
            tunnels,
            streams: IdMap::default(),
            next_local_index: 0,
            local_open: 0,
            local_stream_limit: 0,
            peer_streams_seen: 0,
            peer_unseen: BTreeMap::new(),
            peer_streams_closed: 0,
            peer_stream_limit: config.max_streams,
            max_streams_queued: false,
            ready: VecDeque::new(),
            retransmit: VecDeque::new(),
            retransmit_bytes: 0,
            queue_building: None,
            released_at: None,
            queue_peak: None,
            cap_scale: None,
            aggregate_rate: AggregateRate::default(),
            kernel_delivery: false,
            app_limited_at: None,
            startup: StartUp::default(),
            rtt_probe: rtt_probe::RttProbe::default(),
            reorder_overhead: 0,
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
            pool_deferred: false,
            first_dial: now,
            events: VecDeque::new(),
            scheduler: config.scheduler.build(),
            views: Vec::with_capacity(pool),
            scratch: BytesMut::with_capacity(4096),
            frames_resent: 0,
            window_stats: WindowStats::default(),
            exposed: None,
            peer_exposed: Vec::new(),
            pool_control: None,
            pool_next_tick: now,
            pool_last_received: 0,
            config,
        }
    }

    /// Takes the peer's limits, clamped to what this end would ever announce itself.
    fn apply_peer_params(&mut self, p: TransportParams) {
        let p = Config::clamp_peer_params(p);
        self.peer_params = Some(p);
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

    /// Whether `secret` is this session's secret (constant time): a tunnel that does not carry
    /// it may not join the session.
    pub fn secret_matches(&self, secret: &SessionSecret) -> bool {
        session_secrets_equal(&self.secret, secret)
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

    /// Reports the kernel's view of tunnel `t`'s connection (TCP_INFO, see [`TcpReport`]):
    /// with `coupled_pacing` it tells a building bottleneck queue from random loss, counts the
    /// bytes the coupled cap weighs and the delivery rate it is set from, and times the cap's
    /// RTT probe.
    pub fn set_tunnel_tcp_info(&mut self, t: usize, now: Instant, report: TcpReport) {
        self.on_kernel_delivery(t, &report, now);
        if let Some(x) = self.tunnels.get_mut(t) {
            x.tcp_info_at = Some(now);
            let delivered_mark = x.kernel_held.map_or(0, |k| k.delivered_mark);
            x.kernel_held = Some(KernelHeld {
                bytes: report.held_bytes,
                sent_mark: x.framed_total(),
                delivered_mark: delivered_mark.max(report.delivered_bytes),
            });
            let cwnd_before = x.path.tcp_cwnd();
            let lost = x.path.set_tcp_info(&report);
            self.update_queue_building(t, lost, now);
            self.update_rtt_probe(t, now);
            self.on_window_report(t, &report, cwnd_before);
        }
    }

    /// Whether the coupled cap binds now (`coupled_pacing` on, two tunnels or more active, and
    /// the queue building).
    pub fn coupled_cap_engaged(&self) -> bool {
        self.couples() && self.queue_building == Some(true)
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
        let (mut reorder_pieces, mut reorder_charged) = (0u64, 0u64);
        for s in self.streams.values() {
            reorder_pieces += s.recv.pending_pieces() as u64;
            reorder_charged += s.recv.pending_charge();
        }
        SessionStats {
            retained_bytes: self.retained_bytes(),
            reorder_pieces,
            reorder_charged,
            frames_resent: self.frames_resent,
            relief: self.relief.stats,
            window: self.window_stats,
            buffered_bytes: buffered,
            streams: self.streams.len(),
            active_tunnels: self.tunnels.iter().filter(|t| t.is_active()).count(),
            streams_opened: self.next_local_index + self.peer_streams_seen,
            stream_bytes_sent: self.send_data_total,
            stream_bytes_received: self.recv_data_total,
        }
    }

    /// Bytes held for stream `id` (unsent plus unread), or `None` if unknown.
    pub fn stream_buffered(&self, id: StreamId) -> Option<(usize, usize)> {
        self.streams
            .get(&id)
            .map(|s| (s.send_queued, s.recv.buffered()))
    }

    /// Next event, if any. Once there is none, the session's queues that a burst left empty
    /// give their memory back (the crate's `drained` module).
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        if event.is_none() {
            self.release_drained_queues();
        }
        event
    }

    fn release_drained_queues(&mut self) {
        use crate::drained::release_if_drained;
        release_if_drained(&mut self.events);
        release_if_drained(&mut self.control);
        release_if_drained(&mut self.ready);
        release_if_drained(&mut self.retransmit);
        for t in &mut self.tunnels {
            release_if_drained(&mut t.retained);
        }
    }
}
