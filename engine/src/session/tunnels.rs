//! The session's tunnels: their states, the client half of the handshake, connect / lost / down,
//! the pool's first dial (zero-RTT, or at the first stream), and the re-dial backoff.
//!
//! Owns: [`Tunnel`] (one slot of the pool, across its successive connections) and
//! [`TunnelState`], and every transition between states. Must not touch: the handshake's bytes
//! (that is [`crate::handshake::ClientHandshake`], driven from here) or frames (the unacknowledged
//! frames of a dead tunnel are handed to `retransmit`; timers fire transitions from `timers`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::Rng;

use super::retransmit::Retained;
use super::{Event, Role, Session};
use crate::error::{SessionError, TunnelError};
use crate::handshake::{
    AcceptedTunnel, ChannelBinding, ClientHandshake, ClientOffer, ClientProgress, HandshakeError,
    HelloStatus, ServerAccepted,
};
use crate::path::PathEstimate;

/// Where one tunnel slot is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TunnelState {
    /// Not connected. Client: re-dial at `redial_at`.
    Down { redial_at: Option<Instant> },
    /// Client: the driver was asked to connect.
    Dialing { since: Instant },
    /// Client: ClientHello sent, ServerHello awaited.
    Handshaking(ClientHandshake),
    /// Carries frames.
    Active,
    /// Beyond the negotiated pool; never used again.
    Retired,
}

/// A tunnel's bytes on the path as the driver last read them from the kernel
/// ([`crate::path::TcpReport::held_bytes`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct KernelHeld {
    pub(super) bytes: u64,
    /// [`Tunnel::framed_total`] when it was read.
    pub(super) sent_mark: u64,
    /// The most the kernel has counted of the bytes the peer received
    /// ([`crate::path::TcpReport::delivered_bytes`]): the session's delivery rate counts from
    /// here (`coupled`).
    pub(super) delivered_mark: u64,
}

/// One slot of the pool. The per-connection counters restart with each connection
/// ([`Tunnel::reset_connection`]); the path estimate and delivery count live across them.
#[derive(Debug)]
pub(super) struct Tunnel {
    pub(super) state: TunnelState,
    /// Handshake bytes to write before any frame (the ClientHello).
    pub(super) handshake_out: BytesMut,
    /// Reliable frames sent on this connection and not yet acknowledged, oldest first.
    pub(super) retained: VecDeque<Retained>,
    pub(super) unacked_bytes: u64,
    /// With `coupled_pacing`: the kernel's last count of this connection's bytes on the path
    /// (see `coupled`).
    pub(super) kernel_held: Option<KernelHeld>,
    pub(super) sent_reliable: u64,
    pub(super) acked_reliable: u64,
    pub(super) recv_reliable: u64,
    pub(super) ack_sent: u64,
    pub(super) delivered: u64,
    pub(super) last_recv: Instant,
    pub(super) next_ping: Instant,
    pub(super) ping_due: bool,
    pub(super) ping_outstanding: bool,
    pub(super) pong_due: Option<u64>,
    pub(super) close_pending: Option<(u32, Bytes)>,
    pub(super) path: PathEstimate,
    /// The last transmit filled the room the driver offered: the tunnel is running full, so
    /// its delivery-rate samples measure the path.
    pub(super) saturated: bool,
    /// With `coupled_pacing`: this tunnel's connection lost a segment while the shared queue
    /// was nearly empty, since the coupled cap last engaged (see `coupled`).
    pub(super) quiet_loss: bool,
    /// When the driver last reported the connection's TCP_INFO (see `coupled`).
    pub(super) tcp_info_at: Option<Instant>,
    /// Client, adaptive pool: beyond the pool's target; no new reliable frame goes on it, and
    /// it is closed once everything sent on it is acknowledged (`pool_auto`). Server: the
    /// client said so (TUNNEL_DRAIN); no new reliable frame goes on it either.
    pub(super) draining: bool,
    /// Client: the draining state the server was last told with TUNNEL_DRAIN (`pool_auto`).
    pub(super) drain_told: bool,
    /// Client: the PING token (µs since the session's epoch) sent right behind the last
    /// TUNNEL_DRAIN(1); a PONG echoing it or a later one proves the server read the frame.
    pub(super) drain_token: u64,
    /// Client: that PONG came back; the tunnel may close (`pool_auto`).
    pub(super) drain_heard: bool,
    /// This connection came up while the session's delivery rate was already measured (the
    /// pool grew in full flight): until the slot is measured itself, the scheduler counts on
    /// what its congestion window sends (`transmit`).
    pub(super) joined_in_flight: bool,
    /// The kernel's last report showed the connection's congestion window collapsed
    /// (`handoff`).
    pub(super) cwnd_collapsed: bool,
    dial_failures: u32,
}

impl Tunnel {
    pub(super) fn new(now: Instant, initial_rate: f64) -> Self {
        Self {
            state: TunnelState::Down { redial_at: None },
            handshake_out: BytesMut::new(),
            retained: VecDeque::new(),
            unacked_bytes: 0,
            kernel_held: None,
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
            quiet_loss: false,
            tcp_info_at: None,
            draining: false,
            drain_told: false,
            drain_token: 0,
            drain_heard: false,
            joined_in_flight: false,
            cwnd_collapsed: false,
            dial_failures: 0,
        }
    }

    /// The next failure starts the backoff from its shortest delay again.
    pub(super) fn forget_dial_failures(&mut self) {
        self.dial_failures = 0;
    }

    pub(super) fn is_active(&self) -> bool {
        self.state == TunnelState::Active
    }

    /// This connection's bytes on the path (in flight or waiting to enter it): the kernel's
    /// last count plus what was framed since, at most the unacknowledged bytes (which is also
    /// the count before the first report). Unlike the unacknowledged bytes it leaves out what
    /// the receiver's TCP holds behind a hole and what waits for the peer's ACK frame (about
    /// one RTT of data each under random loss). What the path delivered since the report is
    /// not taken off: the tunnel's rate estimate is optimistic by design (`path`), and taking
    /// it off let slow start overrun the queue on the simulator; reports come often enough
    /// ([`super::coupled`]'s interval, an eighth of the RTT) that this costs little.
    pub(super) fn held_on_path(&self) -> u64 {
        let Some(k) = self.kernel_held else {
            return self.unacked_bytes;
        };
        k.bytes
            .saturating_add(self.framed_total().saturating_sub(k.sent_mark))
            .min(self.unacked_bytes)
    }

    /// Encoded bytes of reliable frames framed on this slot that were acknowledged or still
    /// wait for it. An ACK moves bytes from one to the other, so within one connection this
    /// grows by exactly what is framed (the mark of [`KernelHeld`], cleared with the
    /// connection).
    pub(super) fn framed_total(&self) -> u64 {
        self.delivered + self.unacked_bytes
    }

    /// Client: when the current connection attempt started, while it has not completed.
    pub(super) fn handshake_started(&self) -> Option<Instant> {
        match &self.state {
            TunnelState::Dialing { since } => Some(*since),
            TunnelState::Handshaking(hs) => Some(hs.started()),
            _ => None,
        }
    }

    /// Forgets the connection: counters restart with the next one.
    fn reset_connection(&mut self, now: Instant) {
        self.handshake_out.clear();
        self.unacked_bytes = 0;
        self.kernel_held = None;
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
        self.draining = false;
        self.drain_told = false;
        self.drain_heard = false;
        self.cwnd_collapsed = false;
    }

    /// The connection carries frames from `now`.
    /// A zero `rtt` is "not measured" (the server's side of a version 2 handshake): a PING
    /// leaves with the ServerHello to measure it, so the sample arrives with the client's first
    /// frames, when version 1's ClientAuth gave it.
    fn activate(&mut self, now: Instant, rtt: Duration, keepalive: Duration, in_flight: bool) {
        self.state = TunnelState::Active;
        self.joined_in_flight = in_flight;
        self.last_recv = now;
        self.next_ping = now + keepalive;
        if rtt.is_zero() {
            self.ping_due = true;
        } else {
            self.path.on_rtt_sample(rtt, now);
        }
    }
}

impl Session {
    /// Client: asks the driver to dial every slot now (a zero-RTT session, at its start).
    /// Before the session's first allowed dial, every slot waits for it instead.
    pub(super) fn dial_pool(&mut self, now: Instant) {
        self.pool_deferred = false;
        let first_dial = self.first_dial;
        let target = self.pool_target();
        for (t, tun) in self.tunnels.iter_mut().enumerate() {
            if t >= target {
                // The adaptive pool starts small: the other slots wait, parked.
                tun.state = TunnelState::Down { redial_at: None };
            } else if first_dial > now {
                tun.state = TunnelState::Down {
                    redial_at: Some(first_dial),
                };
            } else {
                tun.state = TunnelState::Dialing { since: now };
                self.events.push_back(Event::Dial { tunnel: t as u16 });
            }
        }
    }

    /// Client without zero-RTT: the first stream wants the pool. Every slot's dial becomes due
    /// at once, so the next [`Session::handle_timeout`] asks for it, stamped with the driver's
    /// clock (a stream command carries no `now`).
    pub(super) fn dial_pool_soon(&mut self) {
        self.pool_deferred = false;
        let target = self.pool_target();
        for tun in self.tunnels.iter_mut().take(target) {
            tun.state = TunnelState::Down {
                redial_at: Some(self.epoch.max(self.first_dial)),
            };
        }
    }

    /// Client: the driver connected slot `t` (and, unless plaintext, finished TLS on it, whose
    /// exporter is `binding`); the handshake starts.
    pub fn tunnel_connected(&mut self, now: Instant, t: usize, binding: &ChannelBinding) {
        if self.role != Role::Client || self.closed.is_some() {
            return;
        }
        let offer = ClientOffer {
            session_id: self.id,
            session_secret: self.secret,
            tunnel_index: t as u16,
            resume: self.established,
            pool_size: self.config.pool_size,
            params: self.config.transport_params(),
            capabilities: self.config.capabilities(),
        };
        let Some(tun) = self.tunnels.get_mut(t) else {
            return;
        };
        if !matches!(tun.state, TunnelState::Dialing { .. }) {
            return;
        }
        tun.reset_connection(now);
        let hs = ClientHandshake::start(
            offer,
            &self.config.psk,
            binding,
            now,
            &mut self.rng,
            &mut tun.handshake_out,
        );
        tun.state = TunnelState::Handshaking(hs);
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
    /// A live tunnel in the same slot is replaced (the client re-dialed it). A tunnel that does
    /// not carry the session's secret is ignored (the endpoint refuses it before this).
    pub fn attach_tunnel(&mut self, now: Instant, accepted: &AcceptedTunnel) {
        if self.role != Role::Server
            || self.closed.is_some()
            || !self.secret_matches(&accepted.session_secret)
        {
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
        self.tunnels[t].reset_connection(now);
        self.activate_tunnel(now, t, accepted.rtt);
    }

    /// Tunnel `t`'s connection carries frames from `now` (either side's handshake is done;
    /// `rtt` as [`Tunnel::activate`] takes it), and the application hears of it.
    fn activate_tunnel(&mut self, now: Instant, t: usize, rtt: Duration) {
        let keepalive = self.config.keepalive_interval;
        let in_flight = self.aggregate_rate.rate().is_some();
        self.tunnels[t].activate(now, rtt, keepalive, in_flight);
        self.no_tunnel_since = None;
        self.events.push_back(Event::TunnelUp {
            tunnel: t as u16,
            rtt,
        });
    }

    /// The driver saw tunnel `t`'s connection fail or close. At the server, the close of a
    /// tunnel the client said it was draining (TUNNEL_DRAIN) is its planned retirement.
    pub fn tunnel_lost(&mut self, now: Instant, t: usize, why: &str) {
        let Some(tun) = self.tunnels.get(t) else {
            return;
        };
        if matches!(
            tun.state,
            TunnelState::Active | TunnelState::Handshaking(_) | TunnelState::Dialing { .. }
        ) {
            let reason = if self.role == Role::Server && tun.draining {
                TunnelError::Retired
            } else {
                TunnelError::ConnectionLost(why.to_string())
            };
            self.tunnel_down(now, t, reason);
        }
    }

    /// Declares tunnel `t` dead: its unacknowledged frames go to the resend queue.
    pub(super) fn tunnel_down(&mut self, now: Instant, t: usize, reason: TunnelError) {
        let client = self.role == Role::Client && self.closed.is_none();
        let retire = matches!(reason, TunnelError::Retired);
        // Beyond the adaptive pool's target but within what the server granted: parked, so a
        // later growth can dial it again.
        let parked = client
            && self.beyond_pool_target(t)
            && self.pool_control.as_ref().is_some_and(|c| t < c.max());
        let (min, max) = (
            self.config.redial_backoff_min,
            self.config.redial_backoff_max,
        );
        self.requeue_unacknowledged(t);
        let tun = &mut self.tunnels[t];
        let was_active = tun.is_active();
        tun.reset_connection(now);
        if was_active {
            tun.dial_failures = 0;
        } else {
            tun.dial_failures = tun.dial_failures.saturating_add(1);
        }
        tun.state = if parked || !client {
            TunnelState::Down { redial_at: None }
        } else if retire {
            TunnelState::Retired
        } else {
            // Exponential backoff with jitter: a uniform draw in [d/2, d].
            let exp = tun.dial_failures.min(16);
            let d = min.saturating_mul(1u32 << exp).min(max);
            let jitter = self.rng.random_range(0.5..=1.0);
            TunnelState::Down {
                redial_at: Some(now + d.mul_f64(jitter)),
            }
        };
        self.events.push_back(Event::TunnelDown {
            tunnel: t as u16,
            reason,
        });
        if !self.tunnels.iter().any(Tunnel::is_active) && self.no_tunnel_since.is_none() {
            self.no_tunnel_since = Some(now);
        }
    }

    /// Client: feeds the server's handshake bytes on tunnel `t` to its [`ClientHandshake`].
    /// Bytes after the ServerHello stay in `buf` (they are frames). An `Err` means the session
    /// is now closed.
    pub(super) fn client_handshake_input(
        &mut self,
        now: Instant,
        t: usize,
        buf: &mut BytesMut,
    ) -> Result<(), SessionError> {
        let tun = &mut self.tunnels[t];
        let TunnelState::Handshaking(hs) = &mut tun.state else {
            return Ok(());
        };
        match hs.handle_input(&self.config.psk, now, buf) {
            Ok(ClientProgress::Pending) => Ok(()),
            Ok(ClientProgress::Accepted(granted)) => {
                self.on_tunnel_accepted(now, t, granted);
                Ok(())
            }
            Err(e) => {
                buf.clear();
                self.on_handshake_failure(now, t, e)
            }
        }
    }

    /// Client: the server accepted tunnel `t`: it carries frames now.
    fn on_tunnel_accepted(&mut self, now: Instant, t: usize, granted: ServerAccepted) {
        if self.peer_params.is_none() {
            self.peer_params = Some(granted.params);
            self.apply_peer_params(granted.params);
            self.peer_capabilities = granted.capabilities;
        }
        self.established = true;
        self.activate_tunnel(now, t, granted.rtt);
        // The server caps the pool: retire the slots beyond it.
        let pool = granted.pool_size as usize;
        self.cap_adaptive_pool(now, pool);
        for extra in pool..self.tunnels.len() {
            if self.tunnels[extra].state != TunnelState::Retired {
                self.tunnel_down(now, extra, TunnelError::Retired);
            }
        }
        self.redial_waiting_slots(now);
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
                | HandshakeError::Refused(HelloStatus::AuthFailed)
                | HandshakeError::UnsupportedVersion { .. }
                | HandshakeError::BadMagic
                | HandshakeError::Malformed(_)
        );
        match e {
            // The server forgot the session, or holds another one under its id: either way
            // this session's streams are not there.
            HandshakeError::Refused(
                HelloStatus::UnknownSession | HelloStatus::SessionSecretMismatch,
            ) => Err(self.fail(now, SessionError::SessionLost)),
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

    /// The token of a PING sent at `now`: microseconds since the session's epoch (`on_pong`
    /// turns it back into the send time).
    pub(super) fn ping_token(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// A PONG arrived on tunnel `t`: only an answer to our outstanding PING is an RTT sample.
    pub(super) fn on_pong(&mut self, now: Instant, t: usize, token: u64) {
        let tun = &mut self.tunnels[t];
        if tun.drain_told && token >= tun.drain_token {
            tun.drain_heard = true;
        }
        if tun.ping_outstanding {
            tun.ping_outstanding = false;
            let sent = self.epoch + Duration::from_micros(token);
            if sent <= now {
                tun.path.on_rtt_sample(now - sent, now);
            }
        }
    }
}
